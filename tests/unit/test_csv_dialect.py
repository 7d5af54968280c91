"""CSV files as spreadsheets in other languages and databases write them: `;`, tabs or `|` between values, and
decimal commas (`1.234,50`) where the separator is not a comma."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steps.lib.csv_dialect import COMMAS, CsvDialect, csv_dialect, decimal_evidence
from steps.lib.errors import PipelineError
from steps.lib.tables import read_batches, read_data


@pytest.mark.parametrize(
    ("value", "mark"),
    [
        ("3,5", ","),
        ("0,250", ","),  # a leading zero is never a thousands group
        ("1234,5", ","),
        ("1.234,50", ","),
        ("−1,5", ","),
        ("1.234.567", ","),  # thousands dots: the decimal is the comma
        ("3.5", "."),
        ("1,234.50", "."),
        ("1,234,567", "."),
        ("1.234", None),  # 1234 or 1.234: decides nothing
        ("1,234", None),
        ("12.03.2024", None),  # a date, not thousands
        ("1.2.3", None),
        ("2024", None),
        ("n/a", None),
        ("13:45", None),
    ],
)
def test_a_number_is_evidence_of_a_decimal_mark_only_when_it_reads_one_way(value, mark):
    assert decimal_evidence(value) == mark


def german(frame: pd.DataFrame) -> str:
    """The frame as a spreadsheet set to German saves it: `;`, decimal commas, thousands dots, dates d.m.Y."""
    out = frame.copy()
    for name in out.select_dtypes("number").columns:
        out[name] = [
            "" if pd.isna(v) else f"{v:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".") for v in out[name]
        ]
    return out.to_csv(sep=";", index=False)


def users(rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "Income ($)": rng.gamma(2.0, 20_000, rows).round(2),
            "share": rng.random(rows).round(2),
            "city": rng.choice(["Köln", "München", "Berlin"], rows),
            "joined": (pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 500, rows), unit="D")).strftime(
                "%d.%m.%Y"
            ),
            "y": rng.choice(["<=50K", ">50K"], rows),
        }
    )
    frame.loc[[5, 17], "share"] = np.nan
    return frame


def test_a_german_spreadsheets_csv_reads_as_its_comma_twin(tmp_path, caplog):
    """`;`, `1.234,50` and `31.05.2024`: the numbers are the numbers, the dates stay text (featurize reads them as
    dates), in load's whole read and in predict's and monitor's batches alike."""
    frame = users()
    (tmp_path / "de.csv").write_text(german(frame), encoding="utf-8")
    frame.to_csv(tmp_path / "en.csv", index=False)
    assert csv_dialect(tmp_path / "de.csv", "de.csv") == CsvDialect(";", ",", ".")
    assert csv_dialect(tmp_path / "en.csv", "en.csv") == COMMAS
    with caplog.at_level("INFO", logger="steps.tables"):
        read, twin = read_data(str(tmp_path / "de.csv")), read_data(str(tmp_path / "en.csv"))
    assert caplog.messages == [f"'{tmp_path / 'de.csv'}' is read as separated by semicolons, decimal commas"]
    pd.testing.assert_frame_equal(read, twin)
    assert read["joined"].iloc[0] == frame["joined"].iloc[0] and read["Income ($)"].max() > 1000
    types = {"Income ($)": "double", "share": "double", "city": "string", "joined": "string"}
    batches = list(read_batches(str(tmp_path / "de.csv"), types, 150))
    assert [len(b) for b in batches] == [150, 150, 100]
    whole = pd.concat(batches, ignore_index=True)
    pd.testing.assert_frame_equal(whole[list(types)], twin[list(types)], check_dtype=False)


@pytest.mark.parametrize(
    ("text", "dialect", "expected"),
    [
        ("a;b;y\n1.5;x;1\n2.25;y;0\n", CsvDialect(";"), {"a": [1.5, 2.25], "b": ["x", "y"], "y": [1, 0]}),
        ("a\tb\ty\n1.5\tx\t1\n", CsvDialect("\t"), {"a": [1.5], "b": ["x"], "y": [1]}),
        ("a|b|y\n1,5|x|1\n", CsvDialect("|", ",", "."), {"a": [1.5], "b": ["x"], "y": [1]}),
        # a name holding a comma: the separator that splits the header into the most columns
        (
            "Income ($), net;city;y\n1,5;x;1\n",
            CsvDialect(";", ",", "."),
            {"Income ($), net": [1.5], "city": ["x"], "y": [1]},
        ),
        # no evidence either way: `;` is how decimal-comma languages separate, any other separator reads points
        ("a;b;y\n1.234;x;1\n", CsvDialect(";", ",", "."), {"a": [1234.0], "b": ["x"], "y": [1]}),
        ("a|b|y\n1.234|x|1\n", CsvDialect("|"), {"a": [1.234], "b": ["x"], "y": [1]}),
        # R's write.csv2: exponents with decimal commas; `05.2024` is a month, no evidence of decimal points
        (
            "a;m;y\n1,5E-05;05.2024;1\n3,5;06.2024;0\n",
            CsvDialect(";", ",", "."),
            {"a": [1.5e-05, 3.5], "m": ["05.2024", "06.2024"], "y": [1, 0]},
        ),
        ("a,b;c,y\n1,2,3\n", COMMAS, {"a": [1], "b;c": [2], "y": [3]}),
    ],
)
def test_the_separator_comes_from_the_header_and_the_decimal_mark_from_the_numbers(tmp_path, text, dialect, expected):
    (tmp_path / "t.csv").write_text(text, encoding="utf-8")
    assert csv_dialect(tmp_path / "t.csv", "t.csv") == dialect
    assert read_data(str(tmp_path / "t.csv")).to_dict("list") == expected


def test_a_file_with_both_decimal_marks_or_a_value_that_is_no_number_is_one_line(tmp_path):
    (tmp_path / "both.csv").write_text("a;b;y\n1,5;2.25;1\n", encoding="utf-8")
    message = (
        "'{}' (separated by semicolons) writes numbers with decimal commas ('1,5') and with decimal points ('2.25')"
    )
    with pytest.raises(PipelineError, match=re.escape(message.format(tmp_path / "both.csv"))):
        read_data(str(tmp_path / "both.csv"))
    (tmp_path / "lots.csv").write_text("Income ($);city\n1.234,50;Köln\nlots;Berlin\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=re.escape("column 'Income ($)' must be numeric (double) as in the model")):
        list(read_batches(str(tmp_path / "lots.csv"), {"Income ($)": "double", "city": "string"}, 10))
    # read whole (load), a column with text among its numbers stays text: featurize decides what it is
    assert read_data(str(tmp_path / "lots.csv"))["Income ($)"].tolist() == ["1.234,50", "lots"]


def test_integers_with_thousands_marks_are_the_signatures_integers(tmp_path):
    Path(tmp_path / "n.csv").write_text("count;city\n1.234;Köln\n7;Berlin\n0,5;Bonn\n", encoding="utf-8")
    [batch] = read_batches(str(tmp_path / "n.csv"), {"count": "double", "city": "string"}, 10)
    assert batch["count"].tolist() == [1234.0, 7.0, 0.5]


def test_batches_read_the_signatures_types_exactly_and_refuse_a_fraction_in_a_whole_number(tmp_path):
    """Whole numbers exactly (not through a float: 2^53 + 1 stays itself), float32 and int32 as the signature
    says (MLflow will not narrow float64 for a regressor), a fraction in a whole-number column refused."""
    (tmp_path / "n.csv").write_text("id;n;f;i\n9.007.199.254.740.993;1.234;2,5;7\n2;7;0,25;-3\n", encoding="utf-8")
    types = {"id": "long", "n": "long", "f": "float", "i": "integer"}
    [batch] = read_batches(str(tmp_path / "n.csv"), types, 10)
    assert batch["id"].tolist() == [9_007_199_254_740_993, 2] and batch["n"].tolist() == [1234, 7]
    assert batch.dtypes.astype(str).to_dict() == {"id": "int64", "n": "int64", "f": "float32", "i": "int32"}
    (tmp_path / "fraction.csv").write_text("n;c\n1;x\n2,7;y\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=re.escape("column 'n' must be a whole number (long) as in the model's")):
        list(read_batches(str(tmp_path / "fraction.csv"), {"n": "long"}, 10))
    (tmp_path / "gaps.csv").write_text("n;c\n1.234;x\n;y\n", encoding="utf-8")
    [batch] = read_batches(str(tmp_path / "gaps.csv"), {"n": "long"}, 10)
    assert batch["n"].tolist()[0] == 1234 and np.isnan(batch["n"].tolist()[1])  # missing: a float column, as Arrow


def test_monitors_numeric_columns_read_as_text_come_with_decimal_points(tmp_path):
    """monitor reads numeric features as text (text there is a reported schema change): in a decimal-comma file
    their numbers are rewritten with decimal points, the rest left as it is for the drift table to name."""
    (tmp_path / "m.csv").write_text("a;b;y\n3,5;x;1,5\n1.234,5;y;2,5\nlots;z;3\n", encoding="utf-8")
    [batch] = read_batches(str(tmp_path / "m.csv"), {"a": "string", "b": "string", "y": "double"}, 10, ["a"])
    assert batch["a"].tolist() == ["3.5", "1234.5", "lots"] and batch["y"].tolist() == [1.5, 2.5, 3.0]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_excels_csv_in_windows_1252_reads_as_written(tmp_path, suffix, caplog):
    """Excel's "CSV" in German saves Windows-1252 (`K\\xf6ln`), not UTF-8: read as such, whole and in batches."""
    frame = users(50)
    path = tmp_path / f"de{suffix}"
    frame.to_csv(path, sep=";", decimal=",", index=False, encoding="cp1252")
    assert csv_dialect(path, "de") == CsvDialect(";", ",", ".", "cp1252")
    with caplog.at_level("INFO", logger="steps.tables"):
        read = read_data(str(path))
    assert "Windows-1252 text (not UTF-8)" in caplog.messages[0]
    pd.testing.assert_frame_equal(read, frame)
    [batch] = read_batches(str(path), {"city": "string", "Income ($)": "double"}, 100)
    assert set(batch["city"]) == {"Köln", "München", "Berlin"} and np.allclose(batch["Income ($)"], frame["Income ($)"])


@pytest.mark.parametrize(("encoding", "suffix"), [("utf-16", ".csv"), ("utf-16-be", ".csv.gz"), ("utf-32", ".csv")])
def test_utf_16_with_a_byte_order_mark_reads_as_written(tmp_path, encoding, suffix, caplog):
    """PowerShell's `Out-File` and Notepad's "Unicode" save UTF-16 with a byte-order mark: read as such (it was read
    as Windows-1252, every name and value full of NULs), whole and in batches; without the mark, one line."""
    frame = users(50)
    path = tmp_path / f"u{suffix}"
    text = frame.to_csv(sep=";", decimal=",", index=False)
    data = ("\ufeff" + text).encode(encoding) if encoding.endswith("-be") else text.encode(encoding)
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)  # utf-16/-32 write their own mark
    assert csv_dialect(path, "u").encoding == encoding.removesuffix("-be")
    with caplog.at_level("INFO", logger="steps.tables"):
        read = read_data(str(path))
    assert f"{encoding.removesuffix('-be').upper()} text" in caplog.messages[0]
    pd.testing.assert_frame_equal(read, frame)
    [batch] = read_batches(str(path), {"city": "string", "Income ($)": "double"}, 100)
    assert batch["city"].tolist() == frame["city"].tolist() and np.allclose(batch["Income ($)"], frame["Income ($)"])
    (tmp_path / "no-mark.csv").write_bytes(text.encode("utf-16-le"))
    with pytest.raises(PipelineError, match=r"^'.*/no-mark.csv' has NUL bytes, .* save it as CSV UTF-8$"):
        read_data(str(tmp_path / "no-mark.csv"))


def test_money_text_with_commas_from_a_decimal_comma_file_stays_text():
    """`1,799 €` is 1.799 in a file written with decimal commas: the model's reader of numbers in text (commas as
    thousands marks) would make it 1799, so featurize leaves such a column text; load records the file's dialect
    in its metadata for featurize to know."""
    from steps.lib.features import numbers_in_text

    prices = pd.Series(["1,799 €", "12 €", "2,350 €", "27 €"] * 50)
    assert numbers_in_text(prices) is not None
    assert numbers_in_text(prices, decimal_comma=True) is None
    assert numbers_in_text(pd.Series(["12 €", "27 €", "45%"] * 50), decimal_comma=True) is not None


def test_load_records_how_its_csv_was_written(tmp_path, tracking_uri):
    import json

    import mlflow

    from steps.load import run_load

    (tmp_path / "de.csv").write_text(german(users()), encoding="utf-8")
    with mlflow.start_run() as run:
        run_load(str(tmp_path / "de.csv"), "y")
    meta = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/data/meta.json"))
    assert meta["csv"] == {"separator": ";", "decimal": ",", "thousands": ".", "encoding": "utf-8"}


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ("a,b\n1,2,3\n", None),  # pandas took `1` for an index and shifted the rest: a = [2], b = [3]
        ("a\n1,5\n2,5\n", None),  # one column whose values hold a comma: a = [5, 5] indexed 1, 2
        ("a;b\n1;2;\n3;4;\n", {"a": [1, 3], "b": [2, 4]}),  # a separator ending each row (the header's aside)
        ("a,b,c\n1,2\n", {"a": [1], "b": [2], "c": [None]}),  # a short row: a missing value, as pandas has it
    ],
)
def test_a_row_longer_than_the_header_is_refused_not_shifted(tmp_path, text, read):
    (tmp_path / "t.csv").write_text(text, encoding="utf-8")
    if read is None:
        with pytest.raises(PipelineError, match="has rows with more values than its header has columns"):
            read_data(str(tmp_path / "t.csv"))
    else:
        frame = read_data(str(tmp_path / "t.csv"))
        assert frame.astype(object).where(frame.notna(), None).to_dict("list") == read


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
@pytest.mark.parametrize(
    ("lines", "types", "columns"),
    [
        (["a,b,y,", "1,2.5,yes,", "3,,no,"], {"a": "long", "b": "double"}, ["a", "b", "y"]),  # every line
        (["a,b,y", "1,2.5,yes,", "3,,no,"], {"a": "long", "b": "double"}, ["a", "b", "y"]),  # the rows only
        (["a;b;y;", "1;2,5;yes;", "3;;no;"], {"a": "long", "b": "double"}, ["a", "b", "y"]),  # German Excel's
        # a header name with a line break in it (Alt+Enter in Excel): Arrow skips lines, not rows
        (['a,"b', 'in 2 lines",y,', "1,2.5,yes,", "3,,no,"], {"a": "long"}, ["a", "b\nin 2 lines", "y"]),
        (["a,,y", "1,2.5,yes", "3,,no"], {"a": "long", "Unnamed: 1": "double"}, ["a", "Unnamed: 1", "y"]),
        # an unnamed last column that holds a value in a row: a column of the table, which the model then has
        (["a,b,y,", "1,2.5,yes,7", "3,,no,"], {"a": "long", "Unnamed: 3": "double"}, ["a", "b", "y", "Unnamed: 3"]),
    ],
)
def test_a_separator_ending_every_line_makes_no_column_whole_or_in_batches(tmp_path, suffix, lines, types, columns):
    """Some exports end every line (or every row) with a separator: load read such a file, then predict and monitor
    refused the same file (Arrow counted one column too many, and named the header's empty last one `` where load
    had `Unnamed: 3`, which the model's signature then asked for). Whole and in batches, the same columns now."""
    path = tmp_path / f"t{suffix}"
    with (gzip.open if suffix.endswith(".gz") else open)(path, "wt", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    whole = read_data(str(path))
    assert whole.columns.tolist() == columns
    [batch] = read_batches(str(path), types, 10)
    assert batch.columns.tolist() == columns
    pd.testing.assert_frame_equal(batch[["a", "y"]], whole[["a", "y"]], check_dtype=False)
    assert batch[columns[1]].tolist()[0] == 2.5 and batch[columns[1]].isna().tolist() == [False, True]


def test_rows_that_end_with_a_separator_only_some_of_the_time_are_refused_in_one_line(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2,\n3,4\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=r"^cannot read '.*t.csv' as csv: CSV parse error: Expected 3 columns"):
        list(read_batches(str(tmp_path / "t.csv"), {"a": "long", "b": "long"}, 10))


def test_what_pandas_read_in_one_chunk_and_left_as_text_in_another_is_read_alike():
    """pandas types a long file chunk by chunk: `3,5` read as 3.5 in one, `1.234,5` left as text in another make
    one object column of both; it is read as the numbers it holds, and `+5` is a whole number."""
    dialect = CsvDialect(";", ",", ".")
    mixed = pd.DataFrame({"a": pd.Series([5, 3.5, "1.234,5", None, np.int64(7)], dtype=object)})
    assert dialect.marked_numbers(mixed)["a"].tolist()[:3] == [5.0, 3.5, 1234.5]
    assert dialect.number(pd.Series(["+5", "-3", "1.234"]), "long").tolist() == [5, -3, 1234]


def test_in_a_decimal_comma_file_money_text_with_a_dot_stays_text_too():
    from steps.lib.features import numbers_in_text

    prices = pd.Series(["1.299 €", "999 €", "12.500 €", "27 €"] * 50)  # 1299 and 12500 there, not 1.299 and 12.5
    assert numbers_in_text(prices) is not None and numbers_in_text(prices, decimal_comma=True) is None


@pytest.mark.parametrize(
    ("value", "number", "whole"),
    [
        ("1.234,50", True, False),
        ("1.234", True, True),
        ("-7", True, True),
        ("+5", True, True),
        ("1,5", True, False),
        (",5", True, False),
        ("1,5E-05", True, False),
        ("31.05.2024", False, False),
        ("1.5", False, False),
        ("12.34.567", False, False),
    ],
)
def test_one_pattern_for_the_local_backend_and_spark(value, number, whole):
    """The pattern is plain enough for Python's re, Arrow's RE2 and Java's regex to read alike (Spark uses it)."""
    dialect = CsvDialect(";", ",", ".")
    assert bool(re.fullmatch(dialect.pattern(), value)) is number
    assert bool(re.fullmatch(dialect.pattern(whole_only=True), value)) is whole

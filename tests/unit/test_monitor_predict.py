"""Drift statistics, the drift rule, and predict's batch checks, in process."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from steps.lib.drift import DriftRule, as_numbers, categorical_drift, drift_table, numeric_drift, psi
from steps.lib.errors import PipelineError
from steps.lib.features import build_feature_spec
from steps.lib.scoring import check_batch, prediction_summary, signature_columns
from steps.lib.tables import load_bundled_frame
from steps.monitor import check_columns
from tests.conftest import logged_model_of, users_rows


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    same = np.array([0.25, 0.25, 0.5])
    assert psi(same, same) == 0
    assert 0 < psi(same, np.array([0.3, 0.2, 0.5])) < psi(same, np.array([0.6, 0.1, 0.3]))
    assert np.isfinite(psi(same, np.array([0.0, 0.5, 0.5])))  # an empty bin does not blow up


def test_numeric_and_categorical_tests_see_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    reference = pd.Series(rng.normal(0, 1, 2000))
    calm = numeric_drift(reference, pd.Series(rng.normal(0, 1, 500)))
    moved = numeric_drift(reference, pd.Series(rng.normal(1, 1, 500)))
    assert calm["p_value"] > 0.01 and calm["psi"] < 0.1
    assert moved["p_value"] < 1e-10 and moved["psi"] > 0.5
    plans = pd.Series(rng.choice(["basic", "plus", "pro"], 2000, p=[0.5, 0.3, 0.2]))
    same = categorical_drift(plans, pd.Series(rng.choice(["basic", "plus", "pro"], 500, p=[0.5, 0.3, 0.2])))
    other = categorical_drift(plans, pd.Series(rng.choice(["basic", "pro", "max"], 500, p=[0.2, 0.4, 0.4])))
    assert same["p_value"] > 0.01 and same["unseen"] == []
    assert other["p_value"] < 1e-10 and other["unseen"] == ["max"]


def test_drift_rule_needs_significance_and_size():
    rule = DriftRule(p_value=0.01, min_psi=0.1)
    assert rule.drifts({"p_value": 0.0001, "psi": 0.3}, n_tests=4)
    assert not rule.drifts({"p_value": 0.004, "psi": 0.3}, n_tests=4)  # Bonferroni: 0.01 / 4
    assert not rule.drifts({"p_value": 1e-9, "psi": 0.05}, n_tests=4)  # significant but tiny
    assert not rule.drifts({"p_value": float("nan"), "psi": 0.5}, n_tests=4)


def test_drift_table_flags_the_shifted_columns_missing_values_and_type_changes():
    frame, target = load_bundled_frame("iris")
    spec = build_feature_spec(frame, target)
    reference, batch = frame.iloc[::2], frame.iloc[1::2].copy()
    table = drift_table(reference, batch, spec.numeric, spec.categorical, DriftRule())
    assert not table["drifted"].any()
    batch["petal_length_cm"] += 3
    batch.loc[batch.index[:30], "sepal_width_cm"] = np.nan  # 40 % missing now
    batch["sepal_length_cm"] = batch["sepal_length_cm"].astype(object)
    batch.loc[batch.index[0], "sepal_length_cm"] = "n.a."
    table = drift_table(reference, batch, spec.numeric, spec.categorical, DriftRule()).set_index("column")
    assert table.loc["petal_length_cm", "drifted"] and table.loc["petal_length_cm", "psi"] > 1
    assert table.loc["sepal_width_cm", "drifted"]
    assert table.loc["sepal_width_cm", "missing_change"] == pytest.approx(0.4)
    assert table.loc["sepal_length_cm", "schema_change"].startswith("type changed")
    assert not table.loc["petal_width_cm", "drifted"]


def test_a_time_splits_column_is_compared_with_its_missing_share_before_the_split():
    """featurize drops the rows without a time from a time split, so the training split (monitor's reference) has
    none missing: a batch from the same file, a fifth of its times missing, was always reported as drift."""
    from steps.lib.splits import split_frame
    from tests.unit.test_featurize import timed_frame

    frame = timed_frame(n=1000)
    frame.loc[frame.index[:200], "at"] = None  # a fifth of the times missing, in the file and in the batch
    spec = build_feature_spec(frame, "label")
    splits = split_frame(frame, spec, seed=0, validation_size=0.2, test_size=0.2, split="time", column="at")
    assert spec.missing_before_split() == {"at": 0.2} and splits.train["at"].notna().all()
    times = spec.time_formats()
    was = drift_table(splits.train, frame, spec.numeric, spec.categorical, DriftRule(), times).set_index("column")
    assert was.loc["at", "drifted"] and was.loc["at", "missing_reference"] == 0.0  # the bug
    table = drift_table(
        splits.train, frame, spec.numeric, spec.categorical, DriftRule(), times, spec.missing_before_split()
    ).set_index("column")
    assert table.loc["at", "missing_reference"] == 0.2 and table.loc["at", "missing_change"] == 0.0
    assert not table.loc["at", "drifted"]
    frame.loc[frame.index[200:600], "at"] = None  # 60 % missing now: drift still shows
    table = drift_table(
        splits.train, frame, spec.numeric, spec.categorical, DriftRule(), times, spec.missing_before_split()
    ).set_index("column")
    assert table.loc["at", "drifted"] and table.loc["at", "missing_change"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    "split",
    [
        {"kind": "random", "column": None, "rows_without_value": 0},
        {"kind": "time", "column": "at", "rows_without_value": 0, "labelled_rows": 10},
        {"kind": "time", "column": "at", "rows_without_value": 3},  # a spec from before labelled_rows
        {"kind": "time", "column": "at", "rows_without_value": 11, "labelled_rows": 10},
        {"kind": "time", "column": "at", "rows_without_value": "3", "labelled_rows": 10},
        {"kind": "time", "column": "at", "rows_without_value": True, "labelled_rows": 10},
        {"kind": "time", "column": ["at"], "rows_without_value": 3, "labelled_rows": 10},
    ],
)
def test_a_split_record_that_does_not_add_up_changes_no_reference(split):
    """feature_spec.json is anyone's to write: only two counts that fit move a reference share."""
    spec = build_feature_spec(*load_bundled_frame("iris"))
    spec.split = split
    assert spec.missing_before_split() == {}


def test_columns_are_checked_against_the_training_spec():
    frame, target = load_bundled_frame("iris")
    spec = build_feature_spec(frame, target)
    assert check_columns(frame, spec) is True and check_columns(frame.drop(columns=[target]), spec) is False
    with pytest.raises(PipelineError, match=r"lacks column.*; add them \(empty where the values are unknown"):
        check_columns(frame.drop(columns=["petal_width_cm"]), spec)
    with pytest.raises(PipelineError, match="'shop' that the model was not trained on"):
        check_columns(frame.assign(shop=1), spec)
    with pytest.raises(PipelineError, match="no rows"):
        check_columns(frame.head(0), spec)
    assert as_numbers(pd.Series(["1.5", None, "2"])).tolist()[::2] == [1.5, 2.0]
    assert as_numbers(pd.Series(["1.5", "x"])) is None


@pytest.mark.parametrize("dtype", ["str", object])
def test_text_read_as_numbers_is_what_pandas_makes_of_it(dtype):
    """pyarrow parses first (fast), pandas where pyarrow refuses: the same numbers, and the same refusals."""
    rng = np.random.default_rng(3)
    values = [repr(float(v)) for v in rng.normal(size=500) * 1e3] + ["1e5", "-0", "+2", "inf", "1.5e-400", None]
    series = pd.Series(values, dtype=dtype)
    expected = pd.to_numeric(series, errors="coerce").astype(float)
    np.testing.assert_array_equal(as_numbers(series).to_numpy(), expected.to_numpy())
    assert as_numbers(series).index.equals(series.index)
    for taken_by_pandas_only in (" 1", "1 "):
        assert as_numbers(pd.Series(["2.5", taken_by_pandas_only], dtype=dtype)).tolist() == [2.5, 1.0]
    for not_a_number in ("nan", "NaN", "", "1,5", "ten", "0x10"):
        assert as_numbers(pd.Series(["2.5", not_a_number, None], dtype=dtype)) is None
    assert as_numbers(pd.Series([1, "ten"], dtype=object)) is None


def test_predict_checks_the_batch_against_the_signature():
    columns = [("a", "double"), ("b", "string")]
    check_batch(pd.DataFrame({"a": [1.0], "b": ["x"], "extra": [0]}), columns)
    check_batch(pd.DataFrame({"a": ["1.5"], "b": ["x"]}), columns)  # numbers as text are fine
    with pytest.raises(PipelineError, match="lacks column 'b'"):
        check_batch(pd.DataFrame({"a": [1.0]}), columns)
    with pytest.raises(PipelineError, match=r"column 'a' must be numeric .* found 'abc' in row 0"):
        check_batch(pd.DataFrame({"a": ["abc"], "b": ["x"]}), columns)
    with pytest.raises(PipelineError, match="no rows"):
        check_batch(pd.DataFrame({"a": [], "b": []}), columns)
    for infinite in ([1.0, np.nan, -np.inf], ["1.5", None, "inf"]):  # read as a number, or as text that is one
        with pytest.raises(PipelineError, match=r"^column 'a' holds an infinite value in row 12; the model takes"):
            check_batch(pd.DataFrame({"a": infinite, "b": ["x"] * 3}), columns, first_row=10)
    shares = prediction_summary(pd.Series(["x", "y", "y", "y"]), classifier=True)
    assert shares == {"pred_share_x": 0.25, "pred_share_y": 0.75}
    spread = prediction_summary(pd.Series([1.0, 2.0, 3.0]), classifier=False)
    assert spread["pred_mean"] == 2.0 and spread["pred_p50"] == 2.0


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_scoring_in_batches_equals_scoring_the_whole_table(tracking_uri, tmp_path, kind):
    """Batches of 700 rows (pyarrow, the signature's types in every block) give the very rows, predictions,
    probabilities and metrics that one batch of the whole table gives."""
    import mlflow

    from steps.predict import run_predict

    model_uri = logged_model_of(users_rows(3000, 1), "income class")
    batch = users_rows(2500, 2).drop(columns="income class")
    path = tmp_path / f"batch.{kind}"
    batch.to_csv(path, index=False) if kind == "csv" else batch.to_parquet(path, index=False)
    outputs = []
    for rows in (700, 100_000):
        with mlflow.start_run() as run:
            metrics = run_predict(str(path), model_uri=model_uri, batch_rows=rows)
        folder = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/predictions", dst_path=str(tmp_path))
        outputs.append(
            (metrics, pd.read_parquet(f"{folder}/predictions.parquet"), pd.read_csv(f"{folder}/predictions.csv"))
        )
    (small, small_table, small_csv), (whole, whole_table, whole_csv) = outputs
    assert small == whole and small["n_rows"] == 2500
    pd.testing.assert_frame_equal(small_table, whole_table)
    pd.testing.assert_frame_equal(small_csv, whole_csv)
    assert list(whole_table.columns[:5]) == list(batch.columns) and "proba_<=50K" in whole_table.columns
    expected = mlflow.pyfunc.load_model(model_uri).predict(batch)
    assert (whole_table["prediction"].to_numpy() == np.asarray(expected)).all()


@pytest.mark.parametrize(("csv_rows", "batches", "written"), [(1000, 1, 700), (1000, 2, None), (None, 3, 2100)])
def test_the_csv_is_written_up_to_its_row_limit_and_not_at_all_past_it(tmp_path, csv_rows, batches, written):
    from steps.predict import ScoredWriter

    writer = ScoredWriter(tmp_path, csv_rows)
    piece = pd.DataFrame({"Income ($)": np.arange(700.0), "prediction": ["<=50K"] * 700})
    for _ in range(batches):
        writer.write(piece)
    writer.close()
    assert len(pd.read_parquet(tmp_path / "predictions.parquet")) == 700 * batches
    assert writer.wrote_csv == (written is not None)
    if written is None:
        assert not (tmp_path / "predictions.csv").exists()
    else:
        assert len(pd.read_csv(tmp_path / "predictions.csv")) == written


def test_the_written_predictions_keep_the_inputs_types_a_column_empty_at_first_takes_the_signatures(tmp_path):
    """pandas' nullable types come back as written; a true/false column with no value in the first batch (Arrow's
    null type, which no later value fits) is written as the signature's boolean, an untyped one as text, and its
    later values (True, 1.5) as text too."""
    from steps.predict import ScoredWriter

    writer = ScoredWriter(tmp_path, 0, {"member": "boolean"})
    for first in (True, False):
        writer.write(
            pd.DataFrame(
                {
                    "count": pd.array([1, None] if first else [3, 4], dtype="Int64"),
                    "member": [None, None] if first else [True, False],
                    "note": [None, None] if first else ["a", "b"],
                    "flag": [None, None] if first else [True, None],  # a pass-through column, typed later
                    "amount": [None, None] if first else [1.5, 2.0],
                }
            )
        )
    writer.close()
    back = pd.read_parquet(tmp_path / "predictions.parquet")
    assert str(back["count"].dtype) == "Int64" and back["count"].tolist()[2:] == [3, 4]
    assert back["member"].tolist() == [None, None, True, False] and back["note"].tolist()[2:] == ["a", "b"]
    assert back["flag"].tolist()[2] == "True" and pd.isna(back["flag"].tolist()[3])
    assert back["amount"].tolist()[2:] == ["1.5", "2.0"]


def test_the_csv_choice_is_checked():
    from steps.predict import SPREADSHEET_ROWS, csv_row_limit

    assert (csv_row_limit("auto"), csv_row_limit("true"), csv_row_limit("false")) == (SPREADSHEET_ROWS, None, 0)
    with pytest.raises(PipelineError, match="csv must be one of auto, true, false; got 'yes'"):
        csv_row_limit("yes")


def test_a_bad_value_in_a_late_batch_is_named_in_one_line(tracking_uri, tmp_path):
    import mlflow

    from steps.predict import run_predict

    model_uri = logged_model_of(users_rows(1000, 1), "income class")
    batch = users_rows(2000, 3).drop(columns="income class").astype({"seniority (years)": object})
    batch.loc[1500, "seniority (years)"] = "ten"
    batch.to_csv(tmp_path / "batch.csv", index=False)
    with mlflow.start_run(), pytest.raises(PipelineError) as raised:
        run_predict(str(tmp_path / "batch.csv"), model_uri=model_uri, batch_rows=500)
    message = str(raised.value)
    assert message == "column 'seniority (years)' must be numeric (long) as in the model's signature; found 'ten'"


def test_monitor_tallies_every_row_in_pieces_and_tests_a_seeded_sample():
    """Pieces of 300 rows give the very PSI, chi-square, missing shares and schema changes of one piece; the KS
    sample is the same whatever the piece size; at most sample_rows rows, in the batch's order."""
    from steps.lib.drift import BatchProfile

    reference = users_rows(3000, 1)
    batch = users_rows(2000, 5)
    batch["Income ($)"] = batch["Income ($)"] * 1.5
    batch = batch.astype({"seniority (years)": object})
    batch.loc[1700, "seniority (years)"] = "ten"
    numeric, categorical = ["Income ($)", "seniority (years)"], ["plan", "city"]

    def profile(piece_rows: int, sample_rows: int) -> BatchProfile:
        tallied = BatchProfile(reference, numeric, categorical, sample_rows, seed=0)
        for start in range(0, len(batch), piece_rows):
            tallied.add(batch.iloc[start : start + piece_rows])
        return tallied

    whole = drift_table(reference, batch, numeric, categorical, DriftRule()).set_index("column")
    pieces = drift_table(reference, profile(300, 5000), numeric, categorical, DriftRule()).set_index("column")
    pd.testing.assert_frame_equal(whole, pieces)
    assert whole.loc["Income ($)", "drifted"] and whole.loc["seniority (years)", "schema_change"].startswith(
        "type changed: numeric in training, text here ('ten')"
    )
    small, other = profile(300, 500), profile(1000, 500)
    assert len(small.sampled()) == 500 and small.sampled().equals(other.sampled())
    assert small.sampled().index.is_monotonic_increasing and small.rows == 2000
    sampled = drift_table(reference, small, numeric, categorical, DriftRule()).set_index("column")
    assert sampled.loc["Income ($)", "psi"] == whole.loc["Income ($)", "psi"]  # PSI over every row, still
    assert sampled.loc["city", "p_value"] == whole.loc["city", "p_value"]


@pytest.mark.parametrize(
    ("fmt", "found", "other"),
    [("%Y-%m-%dT%H:%M:%S", "ISO8601", "05/01/2024"), ("%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M", "2024-05-01T00:00:00")],
)
def test_a_date_time_column_reports_its_spans_and_values_that_do_not_parse_not_a_distribution_test(fmt, found, other):
    """A later batch is no drift (times move on); text the model cannot read as a time (in the format featurize
    found) is, named with its count; missing values count as in any column; pieces give the whole batch's
    figures; and the date column takes no share of the other columns' Bonferroni correction."""
    from steps.lib.drift import TIMES, BatchProfile

    def times(start: str, n: int, seed: int) -> pd.Series:
        hours = np.random.default_rng(seed).integers(0, 24 * 90, n)
        return (pd.Timestamp(start) + pd.to_timedelta(hours, unit="h")).strftime(fmt).to_series()

    reference = users_rows(3000, 1).assign(**{"signed up": times("2023-01-01", 3000, 1).to_numpy()})
    batch = users_rows(2000, 5).assign(**{"signed up": times("2024-06-01", 2000, 5).to_numpy()})
    numeric, categorical = ["Income ($)", "seniority (years)"], ["plan", "city"]
    plain = drift_table(reference, batch.drop(columns="signed up"), numeric, categorical, DriftRule())
    table = drift_table(reference, batch, numeric, categorical, DriftRule(), {"signed up": found}).set_index("column")
    row = table.loc["signed up"]
    assert row["kind"] == TIMES and row["test"] == "none (times move on)" and not row["drifted"]
    assert row["span_reference"].startswith("2023-01-01") and row["span_batch"].startswith("2024-06-01")
    assert row["span_batch"].split(" .. ")[1] < "2024-09-01"
    assert plain.set_index("column")["drifted"].equals(table.drop(index="signed up")["drifted"])
    assert plain.attrs["n_tests"] == table.attrs["n_tests"] == 4  # the Bonferroni divisor: tested columns only

    batch.loc[[500, 1500], "signed up"] = other  # not in the column's format: the model reads it as missing
    batch.loc[batch.index[:400], "signed up"] = None  # 20 % missing now
    pieces = BatchProfile(reference, numeric, categorical, 5000, seed=0, times={"signed up": found})
    for start in range(0, len(batch), 300):
        pieces.add(batch.iloc[start : start + 300])
    for current in (batch, pieces):
        row = drift_table(reference, current, numeric, categorical, DriftRule(), {"signed up": found})
        row = row.set_index("column").loc["signed up"]
        assert row["drifted"] and row["missing_change"] == pytest.approx(0.2)
        message = f"2 value(s) do not parse as date/time ({other!r}); the model reads them as missing"
        assert row["schema_change"] == message
    # A profile knows its own date/time columns; one built without a column asked for is said plainly.
    told = drift_table(reference, pieces, numeric, categorical, DriftRule(), {"signed up": found})
    pd.testing.assert_frame_equal(drift_table(reference, pieces, numeric, categorical, DriftRule()), told)
    without = BatchProfile(reference, numeric, categorical, 5000, seed=0)
    with pytest.raises(ValueError, match=r"built without column\(s\) \['signed up'\]"):
        drift_table(reference, without, numeric, categorical, DriftRule(), {"signed up": found})


def test_the_drift_figures_have_a_panel_per_column_drifted_ones_in_red_and_ten_levels_at_most(tmp_path):
    from xml.etree import ElementTree

    from steps.monitor import MAX_LEVELS_SHOWN, plot_drift

    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {"Income ($)": rng.normal(50, 10, 600), "city": rng.choice([f"c{i}" for i in range(40)], 600), "gone": 1.0}
    )
    batch = reference.iloc[:300].assign(**{"Income ($)": lambda f: f["Income ($)"] + 30, "gone": np.nan})
    table = drift_table(reference, batch, ["Income ($)", "gone"], ["city"], DriftRule())
    distributions, bars = plot_drift(reference, batch, table, tmp_path)
    svg = "{http://www.w3.org/2000/svg}"
    titles = {
        t.text: t.get("fill")
        for t in ElementTree.parse(distributions).getroot().iter(f"{svg}text")
        if t.get("font-weight") == "600"
    }
    assert titles["Income ($) (drift)"] == "#c0392b" and set(titles) == {"Income ($) (drift)", "city", "gone (drift)"}
    city = table.set_index("column").loc["city"]
    assert not city["drifted"]
    levels = [t for t in ElementTree.parse(distributions).getroot().iter(f"{svg}text") if t.get("transform")]
    assert len([t for t in levels if "rotate(-40" in t.get("transform")]) == MAX_LEVELS_SHOWN
    rows = [t.text for t in ElementTree.parse(bars).getroot().iter(f"{svg}text")]
    assert {"Income ($)", "city", "gone", "PSI (batch vs training)"} <= set(rows)


def test_predict_on_spark_makes_the_local_backends_checks_of_the_file_before_spark_starts(
    tracking_uri, tmp_path, capsys, monkeypatch
):
    """Repeated headers (Spark's CSV reader would rename them `id0`, `id2`), nested Parquet columns and a FIFO:
    the same one line as the local backend, FAILED, no artifact, and no Spark session (no Java needed)."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    pytest.importorskip("pyspark")
    from tests.unit.test_bad_input_steps import assert_failed_cleanly

    def no_spark(*args: object) -> None:
        raise AssertionError("Spark started before the file's checks")

    monkeypatch.setattr("steps.lib.spark_scoring.spark_session", no_spark)
    model_uri = logged_model_of(users_rows(500, 1), "income class")
    (tmp_path / "twice.csv").write_text("id,Income ($),id\n1,2,3\n")
    (tmp_path / "cased.csv").write_text("ID,Income ($),id\n1,2,3\n")
    pq.write_table(pa.table({"tags": [[1], [2]], "x": [1, 2]}), tmp_path / "nested.parquet")
    os.mkfifo(tmp_path / "stream.csv")
    for name, message in (
        ("twice.csv", "has duplicate column names: 'id' (2 times)"),
        ("cased.csv", "has column names that differ only in case ('ID', 'id'), which Spark takes for one name"),
        ("nested.parquet", "nested Parquet column(s) 'tags'"),
        ("stream.csv", "is a FIFO, not a regular file"),
    ):
        flags = ["--data-uri", str(tmp_path / name), "--model-uri", model_uri, "--backend", "spark"]
        assert_failed_cleanly(capsys, "predict", flags, message)


def test_on_a_clusters_storage_spark_gets_the_same_checks_of_names_and_nesting():
    """refuse_spark_columns, with Spark's own types and a stand-in session (no Java): nested Parquet columns
    named, repeated CSV headers and headers equal but for case (unless spark.sql.caseSensitive), an empty file."""
    pytest.importorskip("pyspark")
    from types import SimpleNamespace

    from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType

    from steps.lib.spark_scoring import refuse_spark_columns

    def session(first_line: str | None, case_sensitive: str = "false") -> SimpleNamespace:
        line = None if first_line is None else SimpleNamespace(value=first_line)
        text = SimpleNamespace(first=lambda: line)
        conf = SimpleNamespace(get=lambda key, default: case_sensitive)
        return SimpleNamespace(read=SimpleNamespace(text=lambda uri: text), conf=conf)

    nested = SimpleNamespace(
        schema=StructType([StructField("tags", ArrayType(LongType())), StructField("x", StringType())])
    )
    with pytest.raises(PipelineError, match=r"nested Parquet column\(s\) 'tags' \(array<bigint>\)"):
        refuse_spark_columns(session("unused"), nested, "s3a://bucket/batch.parquet")
    flat = SimpleNamespace(schema=StructType([StructField("x", StringType())]))
    refuse_spark_columns(session("unused"), flat, "s3a://bucket/batch.parquet")
    with pytest.raises(PipelineError, match="duplicate column names: 'id' \\(2 times\\)"):
        refuse_spark_columns(session('id,"Income ($)",id'), flat, "hdfs://nn/batch.csv")
    with pytest.raises(PipelineError, match="differ only in case \\('ID', 'id'\\)"):
        refuse_spark_columns(session("ID,x,id"), flat, "hdfs://nn/batch.csv")
    refuse_spark_columns(session("ID,x,id", case_sensitive="true"), flat, "hdfs://nn/batch.csv")
    refuse_spark_columns(session('"a,b",a,b'), flat, "hdfs://nn/batch.csv")  # a quoted comma is one name
    with pytest.raises(PipelineError, match="is empty: it has no header and no rows"):
        refuse_spark_columns(session(None), flat, "gs://bucket/batch.csv")
    with pytest.raises(PipelineError, match="is separated by semicolons: a CSV in a cluster's store is read as comma"):
        refuse_spark_columns(session("Income ($);city"), flat, "hdfs://nn/batch.csv")


def test_monitor_reads_text_and_times_as_the_signature_says_in_every_block(tracking_uri, tmp_path):
    """A CSV past pyarrow's first 4 MiB block: early `plan` codes that look numeric and ISO times would fix those
    columns' types from the first block, and a later `pro` or `05/01/2024` would fail the read. Read with the
    signature's text types they are text throughout: the late time is tallied as one that does not parse."""
    from steps.lib.drift import BatchProfile
    from steps.lib.model_loading import load_model
    from steps.lib.tables import read_batches
    from steps.monitor import read_types

    def with_times(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
        hours = np.random.default_rng(seed).integers(0, 24 * 90, len(frame))
        stamps = pd.Timestamp("2024-01-01") + pd.to_timedelta(hours, unit="h")
        return frame.assign(**{"signed up": stamps.strftime("%Y-%m-%dT%H:%M:%S").to_numpy()})

    training = with_times(users_rows(1000, 1), 1)
    loaded = load_model(logged_model_of(training, "income class"))
    spec = build_feature_spec(training, "income class")
    types = read_types(loaded.pyfunc, spec)
    assert {types[c] for c in ("signed up", "plan", "city", "Income ($)")} == {"string"}
    batch = with_times(users_rows(120_000, 2), 2).drop(columns="income class")
    batch["plan"] = np.where(np.arange(len(batch)) < 110_000, "1", "pro")
    batch.loc[115_000, "signed up"] = "05/01/2024"
    batch.to_csv(tmp_path / "batch.csv", index=False)
    with open(tmp_path / "batch.csv", "rb") as text:  # the late values are past pyarrow's first block (4 MiB)
        assert sum(len(next(text)) for _ in range(110_001)) > 1 << 22
    profile = BatchProfile(training, spec.numeric, spec.categorical, 1000, seed=0, times=spec.time_formats())
    for piece in read_batches(str(tmp_path / "batch.csv"), types, 50_000):
        profile.add(piece)
    assert profile.tallies["signed up"].unparsed == 1 and profile.tallies["plan"].categories["pro"] == 10_000
    with pytest.raises(PipelineError, match=r"signed up|plan"):  # as the first block would have it: a failed read
        for _ in read_batches(str(tmp_path / "batch.csv"), dict.fromkeys(spec.numeric, "string"), 50_000):
            pass


@pytest.mark.parametrize("first_block", ["empty", "0/1"])
def test_a_true_false_column_is_taken_as_true_false_in_every_block(tracking_uri, tmp_path, first_block):
    """A column the model was fitted on as True/False: pyarrow would type it from the first 4 MiB block (all
    missing there: null, and a later `True` fails the read; `0`/`1` there: integers, and a later `True` fails
    too). predict reads it as the signature's boolean and monitor as text it turns into True/False: both score
    every row as the model scores the frame in memory (gaps as missing). A value neither true nor false is named
    in one line by predict, and tallied by monitor as an unseen category."""
    import mlflow

    from steps.lib.drift import BatchProfile
    from steps.lib.model_loading import load_model
    from steps.lib.tables import read_batches
    from steps.monitor import read_types, true_false_columns, with_predictions
    from steps.predict import run_predict

    training = users_rows(1000, 1).assign(member=np.arange(1000) % 3 == 0)
    training.loc[training["member"], "income class"] = ">50K"  # the model leans on it
    model_uri = logged_model_of(training, "income class")
    loaded = load_model(model_uri)
    spec = build_feature_spec(training, "income class")
    assert true_false_columns(loaded.pyfunc) == ("member",) and read_types(loaded.pyfunc, spec)["member"] == "string"
    rows, early = 17_000, 14_500
    member = pd.Series(np.arange(rows) % 2 == 0, dtype=object)
    written = member.map({True: "True", False: "False"})
    written[:early] = None if first_block == "empty" else member[:early].map({True: "1", False: "0"})
    batch = users_rows(rows, 2).drop(columns="income class").assign(comment="a long remark " * 20)
    batch.assign(member=written.to_numpy()).to_csv(tmp_path / "batch.csv", index=False)
    with open(tmp_path / "batch.csv", "rb") as text:  # past the first block (4 MiB), only True/False
        assert sum(len(next(text)) for _ in range(early + 1)) > 1 << 22
    in_memory = batch.assign(member=member.where(written.notna(), None) if first_block == "empty" else member)
    expected = loaded.sklearn.predict(in_memory[spec.input_columns])

    with mlflow.start_run() as run:
        run_predict(str(tmp_path / "batch.csv"), model_uri=model_uri, batch_rows=10_000)
    scored = pd.read_parquet(
        mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/predictions/predictions.parquet")
    )
    assert (scored["prediction"].to_numpy() == expected).all() and len(set(expected)) == 2
    pieces = read_batches(str(tmp_path / "batch.csv"), read_types(loaded.pyfunc, spec), 7_000)
    monitored = pd.concat(with_predictions(loaded.sklearn, spec, piece, "p", ("member",)) for piece in pieces)
    assert (monitored["p"].to_numpy() == expected).all()
    assert monitored["member"].tolist() == in_memory["member"].tolist()

    written[rows - 10] = "maybe"
    batch.assign(member=written.to_numpy()).to_csv(tmp_path / "batch.csv", index=False)
    with mlflow.start_run(), pytest.raises(PipelineError) as raised:
        run_predict(str(tmp_path / "batch.csv"), model_uri=model_uri, batch_rows=10_000)
    assert str(raised.value) == (
        "column 'member' must be true or false (boolean) as in the model's signature; found 'maybe'"
    )
    profile = BatchProfile(training, spec.numeric, spec.categorical, 1000, seed=0, times=spec.time_formats())
    for piece in read_batches(str(tmp_path / "batch.csv"), read_types(loaded.pyfunc, spec), 7_000):
        profile.add(with_predictions(loaded.sklearn, spec, piece, "p", ("member",)))
    assert profile.tallies["member"].categories["maybe"] == 1
    true_rows = (rows - early) // 2 - 1 + (0 if first_block == "empty" else early // 2)  # `maybe` was a True
    assert profile.tallies["member"].categories["True"] == true_rows


def test_numbers_written_as_text_are_scored_as_the_model_reads_them_and_tallied_as_numbers(tracking_uri, tmp_path):
    """`Income ($)` as `$51,885.95` (`?` where missing): predict scores the CSV as the model scores the frame
    in memory; monitor reads the column as the model does (a number) in the training rows and in the batch, so
    it gets a distribution test, not a schema change; a batch that writes it another way (`51.885,95`) shows as
    values gone missing."""
    import mlflow

    from steps.lib.drift import BatchProfile
    from steps.lib.model_loading import load_model
    from steps.lib.tables import read_batches
    from steps.monitor import read_types, reference_predictions, with_predictions
    from steps.predict import run_predict

    def as_money(frame: pd.DataFrame) -> pd.DataFrame:
        income = frame["Income ($)"]
        return frame.assign(**{"Income ($)": [None if v != v else f"${v:,.2f}" if v % 50 else "?" for v in income]})

    training = as_money(users_rows(1000, 1))
    model_uri = logged_model_of(training, "income class")
    loaded = load_model(model_uri)
    spec = build_feature_spec(training, "income class")
    assert spec.numbers_in_text() == ["Income ($)"] and read_types(loaded.pyfunc, spec)["Income ($)"] == "string"
    batch = as_money(users_rows(3000, 2)).drop(columns="income class")
    batch.to_csv(tmp_path / "batch.csv", index=False)
    expected = loaded.sklearn.predict(batch[spec.input_columns])
    with mlflow.start_run() as run:
        run_predict(str(tmp_path / "batch.csv"), model_uri=model_uri, batch_rows=1_000)
    scored = pd.read_parquet(
        mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/predictions/predictions.parquet")
    )
    assert (scored["prediction"].to_numpy() == expected).all() and scored["Income ($)"].equals(batch["Income ($)"])

    class Reference:  # what monitor's find_reference gives: the training rows and their spec
        train = training

    Reference.spec = spec
    reference, _ = reference_predictions(loaded.sklearn, Reference, 1_000)
    unknown = training["Income ($)"].eq("?") | training["Income ($)"].isna()
    assert reference["Income ($)"].dtype == float and reference["Income ($)"].isna().eq(unknown).all() and unknown.any()
    numeric, categorical = spec.numeric, spec.categorical
    for written, drifted in ((batch, False), (batch.assign(**{"Income ($)": "51.885,95"}), True)):
        written.to_csv(tmp_path / "batch.csv", index=False)
        profile = BatchProfile(reference, numeric, categorical, 1000, seed=0)
        pieces = []
        for piece in read_batches(str(tmp_path / "batch.csv"), read_types(loaded.pyfunc, spec), 1_000):
            if len(piece):  # as monitor's profile_batch: a reader may end on an empty piece
                pieces.append(with_predictions(loaded.sklearn, spec, piece, "p"))
                profile.add(pieces[-1])
        assert (pd.concat(pieces)["p"].to_numpy() == loaded.sklearn.predict(written[spec.input_columns])).all()
        row = drift_table(reference, profile, numeric, categorical, DriftRule()).set_index("column").loc["Income ($)"]
        assert row["test"] == "ks" and not row["schema_change"]
        assert row["drifted"] == drifted and (row["missing_batch"] == 1.0) == drifted


def test_a_model_that_reads_numbers_from_text_takes_numbers_from_a_parquet_batch(tracking_uri, tmp_path):
    """A regressor fitted on `balance` as `$1,234.50` text: its signature says string, and MLflow's pyfunc refuses
    numbers for a string column. A Parquet batch that holds the balance as numbers is scored all the same, to the
    predictions of the same rows written as text."""
    import mlflow

    from steps.lib.model_loading import load_model
    from steps.predict import run_predict

    rng = np.random.default_rng(7)
    balance = rng.normal(800, 2_000, 1_000).round(2)
    rows = users_rows(1_000, 1).assign(balance=[f"${v:,.2f}" if v >= 0 else f"(${-v:,.2f})" for v in balance])
    rows["seniority (years)"] = (balance / 100 + rng.normal(0, 3, 1_000)).round(1)
    model_uri = logged_model_of(rows, "seniority (years)")
    loaded = load_model(model_uri)
    features = rows.drop(columns="seniority (years)")
    expected = loaded.sklearn.predict(features[loaded.sklearn.feature_names_in_])
    features.assign(balance=balance).to_parquet(tmp_path / "batch.parquet")
    with mlflow.start_run() as run:
        run_predict(str(tmp_path / "batch.parquet"), model_uri=model_uri, batch_rows=400)
    scored = pd.read_parquet(
        mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/predictions/predictions.parquet")
    )
    assert np.allclose(scored["prediction"].to_numpy(), expected) and (scored["balance"] == balance).all()


def test_monitor_reads_the_label_as_the_training_rows_had_it():
    """Numbers for numeric classes and for a regression, text for text classes: a label column empty through
    the first block is not read as text when its classes are 0 and 1 (the live metric would mix the two)."""
    from steps.monitor import read_types

    class Unsigned:
        class metadata:  # noqa: N801 (a stand-in for a pyfunc's metadata)
            @staticmethod
            def get_input_schema() -> None:
                return None

    labels = {"x": np.arange(60.0), "y": np.arange(60) % 2, "t": np.where(np.arange(60) % 2, "a", "b")}
    for target, expected in (("y", "double"), ("t", "string"), ("x", "double")):
        spec = build_feature_spec(pd.DataFrame({"z": np.arange(60) % 7, target: labels[target]}), target)
        assert read_types(Unsigned(), spec)[target] == expected, target


def test_a_column_with_no_value_in_the_first_block_is_read_as_text_in_every_block(tmp_path):
    """A column the signature does not type (one the model does not take, passed through to the output), empty
    for the first 4 MiB: pyarrow types it null there, and a later value failed the whole read."""
    from steps.lib.tables import read_batches

    rows, early = 30_000, 25_000
    remark = pd.Series([None] * early + [f"call back {i}" for i in range(rows - early)], dtype=object)
    frame = pd.DataFrame({"padding": ["a long remark " * 20] * rows, "remark": remark})
    frame.to_csv(tmp_path / "batch.csv", index=False)
    with open(tmp_path / "batch.csv", "rb") as text:
        assert sum(len(next(text)) for _ in range(early + 1)) > 1 << 22
    read = pd.concat(read_batches(str(tmp_path / "batch.csv"), {}, 10_000), ignore_index=True)
    assert read["remark"].iloc[early:].tolist() == remark.iloc[early:].tolist()
    assert read["remark"].iloc[:early].isna().all()


def test_monitor_refuses_infinite_numbers_as_predict_does():
    """An `inf` in a batch reached the model's predict, and monitor ended in scikit-learn's traceback."""
    from steps.monitor import with_predictions

    training = users_rows(300, 1)
    spec = build_feature_spec(training, "income class")
    column = spec.numeric[0]

    class Constant:
        def predict(self, rows: pd.DataFrame) -> np.ndarray:
            return np.zeros(len(rows))

    batch = users_rows(50, 2).drop(columns="income class")
    assert (with_predictions(Constant(), spec, batch, "p")["p"] == 0).all()
    for infinite in (np.inf, "-inf"):  # read as a number, or as text in a batch whose column is text
        planted = batch.astype({column: object}) if isinstance(infinite, str) else batch.copy()
        planted.loc[7, column] = infinite
        with pytest.raises(PipelineError, match=rf"^column '{re.escape(column)}' holds infinite values; the model"):
            with_predictions(Constant(), spec, planted, "p")


def test_a_spark_executor_refuses_an_infinite_value_its_pieces_hold(tracking_uri, monkeypatch):
    """The driver checks the first rows; a piece scored on an executor is checked the same way, so an `inf` in
    row 5,000,000 is refused naming its column (its row is not known there), not with scikit-learn's traceback."""
    pytest.importorskip("pyspark")
    import mlflow
    from pyspark import SparkFiles

    from steps.lib.spark_scoring import scorer

    model_uri = logged_model_of(users_rows(300, 1), "income class")
    local_model = mlflow.artifacts.download_artifacts(model_uri)
    monkeypatch.setattr(SparkFiles, "_is_running_on_worker", True)  # as on an executor: addFile's folder
    monkeypatch.setattr(SparkFiles, "_root_directory", str(Path(local_model).parent))
    columns = signature_columns(mlflow.pyfunc.load_model(model_uri))
    batch = users_rows(40, 2).drop(columns="income class")
    score_pieces = scorer(Path(local_model).name, columns, schema=SimpleNamespace(fields=[]))
    assert [len(table) for table in score_pieces(iter([batch.head(20), batch.iloc[:0], batch.tail(20)]))] == [20, 20]
    planted = batch.copy()
    planted.loc[33, "Income ($)"] = -np.inf
    with pytest.raises(PipelineError, match=r"^column 'Income \(\$\)' holds an infinite value; the model takes"):
        list(score_pieces(iter([planted.head(20), planted.tail(20)])))


@pytest.mark.parametrize("labels", ["text", "numbers"])
def test_a_labelled_batch_with_a_class_the_model_never_saw_keeps_its_report(labels, caplog):
    """A monitored batch whose labels hold a new class ('=50K', or 2 beside 0 and 1) ended monitor in
    scikit-learn's traceback (log loss: 'y_true contains values not belonging to the passed labels'). The live
    metric is now on the rows of known classes, the rows of the new ones counted and named in a warning."""
    from steps.lib.metrics import compute_metrics
    from steps.lib.models import MODEL_FAMILIES, fit_model
    from steps.lib.splits import Splits
    from steps.monitor import Reference, live_performance

    training = users_rows(400, 1)
    if labels == "numbers":
        training["income class"] = (training["income class"] == ">50K").astype(float)
    spec = build_feature_spec(training, "income class")
    family = MODEL_FAMILIES["logistic_regression"]
    model = fit_model(Splits(training, training.head(50), training.head(50)), spec, family, family.resolve({}), 0)
    batch = users_rows(120, 2)
    if labels == "numbers":
        batch["income class"] = (batch["income class"] == ">50K").astype(float)
    batch.loc[[3, 40, 41, 90], "income class"] = "=50K" if labels == "text" else 2.0
    reference = Reference("models:/m/1", "1", training, spec, "f1_macro", 0.8)
    with caplog.at_level("WARNING", logger="steps.monitor"):
        found = live_performance(model, reference, batch)
    kept = batch.drop(index=[3, 40, 41, 90])
    expected = compute_metrics(spec.task, kept["income class"], model.predict(kept), None, None, only="f1_macro")
    assert found["n_rows_of_unseen_classes"] == 4 and found["live_f1_macro"] == expected["f1_macro"]
    new = "'=50K'" if labels == "text" else "'2.0'"
    said = f"class(es) the model was not trained on ({new}: 4 rows); the live f1_macro is on the other 116"
    assert said in caplog.text


def test_a_whole_number_column_takes_a_zero_fraction_as_pandas_writes_it_beside_a_gap(tmp_path):
    """A batch saved by pandas with one age missing writes every age as `70.0`: Arrow's int64 refused it
    ("must be numeric (long) ... found '70.0'"). Whole numbers are read exactly (an ID of 19 digits too); a real
    fraction and a word are still refused, each naming the column."""
    from steps.lib.tables import read_batches

    def read(ages: list[str]) -> pd.DataFrame:
        lines = ["age,id", *[f"{age},1234567890123456789" for age in ages]]
        (tmp_path / "batch.csv").write_text("\n".join(lines) + "\n")
        batches = read_batches(str(tmp_path / "batch.csv"), {"age": "long", "id": "long"}, 2)
        return pd.concat([batch for batch in batches if len(batch)], ignore_index=True)  # as predict takes them

    read_back = read(["70.0", "", "71", "+3.00"])
    assert read_back["age"].tolist()[:1] + read_back["age"].tolist()[2:] == [70, 71, 3]
    assert read_back["age"].isna().tolist() == [False, True, False, False]
    assert read_back["id"].tolist() == [1234567890123456789] * 4 and read_back["id"].dtype == "int64"
    assert read(["70", "71"])["age"].dtype == "int64"
    with pytest.raises(PipelineError, match=r"^column 'age' must be a whole number \(long\) as in the model's signa"):
        read(["70.0", "70.5"])
    with pytest.raises(PipelineError, match=r"^column 'age' must be numeric \(long\) as in the model's signature; fou"):
        read(["70.0", "old"])


def test_predict_warns_of_times_not_written_as_the_model_learned_them(tracking_uri, tmp_path, caplog, capsys):
    """A model that learned `31/05/2024` reads ISO dates as missing times: predict scored them without a word."""
    import mlflow

    from steps.predict import run_predict

    rng = np.random.default_rng(0)
    days = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 400, 300), unit="D")
    frame = pd.DataFrame(
        {"x": rng.normal(size=300), "when": days.strftime("%d/%m/%Y"), "y": rng.choice(["a", "b"], 300)}
    )
    model_uri = logged_model_of(frame, "y")
    frame.drop(columns="y").head(40).to_csv(tmp_path / "same.csv", index=False)
    frame.drop(columns="y").head(40).assign(when=days[:40].strftime("%Y-%m-%d")).to_csv(
        tmp_path / "iso.csv", index=False
    )
    for name, said in (("same", False), ("iso", True)):
        caplog.clear()
        with mlflow.start_run() as run:
            run_predict(str(tmp_path / f"{name}.csv"), model_uri=model_uri)
        warned = "column 'when': 40 of 40 values checked do not read as %d/%m/%Y, the format the model learned"
        assert (warned in caplog.text) is said, caplog.text[-2000:]
        described = mlflow.get_run(run.info.run_id).data.tags["mlflow.note.content"]
        assert (f"**Warning:** {warned}" in described) is said  # and on stderr, where the command was typed
    assert f"warning: predict: {warned}" in capsys.readouterr().err

"""Bounded encoding: the choice per column, widths that do not grow with levels or rows, date parts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from steps.lib.features import (
    DATE_PARTS,
    NUMBER_TEXT,
    NUMBERS_IN_TEXT,
    ONE_HOT,
    ONE_HOT_MAX_CATEGORIES,
    ONE_HOT_MAX_LEVELS,
    TARGET_ENCODING,
    TIME_FORMATS,
    TimeFormat,
    build_feature_spec,
    choose_columns,
    time_format_of,
)
from steps.lib.models import MODEL_FAMILIES, SHIPPED_CODE, SKOPS_TRUSTED_TYPES, build_model, shipped_code_paths
from steps.lib.text_values import FormattedDateParts, TextNumbers, parse_times, to_numbers
from steps.lib.transforms import CategoryCodes, DateParts
from tests.conftest import PROJECT_DIR


def levels_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """A label, a numeric, a colour of 4 levels + a rare one, a shop of 65 levels, a city of 5,000, times as text."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue", None], n).astype(object)
    colour[:3] = "mauve"  # 3 rows: under the rare-level threshold
    hours = rng.integers(0, 2 * 365 * 24, n)
    return pd.DataFrame(
        {
            "Income ($)": rng.normal(50, 10, n),
            "colour": colour,
            "shop": [f"shop {i % 65}" for i in range(n)],
            "city": [f"city {i}" for i in rng.integers(0, 5000, n)],
            "seen at": (pd.Timestamp("2022-01-01") + pd.to_timedelta(hours, unit="h")).strftime("%Y-%m-%d %H:%M"),
            "label": rng.choice(["<=50K", ">50K"], n),
        }
    )


def test_each_categorical_gets_a_bounded_encoding_recorded_with_its_reason_and_level_count():
    frame = levels_frame(20_000)
    frame["shop 64"] = [f"s{i % 64}" for i in range(len(frame))]  # exactly at the one-hot limit
    spec = build_feature_spec(frame, "label")
    assert spec.numeric == ["Income ($)"] and spec.datetime == ["seen at"]
    assert {c: spec.encoding(c) for c in spec.categorical} == {
        "colour": ONE_HOT,
        "shop": TARGET_ENCODING,
        "city": TARGET_ENCODING,
        "shop 64": ONE_HOT,
    }
    shop, city, colour = (spec.encodings[c] for c in ("shop", "city", "colour"))
    assert shop["levels"] == ONE_HOT_MAX_LEVELS + 1 and "target encoding, cross-fitted" in shop["reason"]
    assert city["levels"] == frame["city"].nunique() and colour["levels"] == 4 and "one-hot" in colour["reason"]
    seen_at = spec.encodings["seen at"]
    levels = frame["seen at"].nunique()
    assert (
        seen_at["encoding"] == DATE_PARTS
        and seen_at["levels"] == levels
        and f"{levels:,} distinct" in seen_at["reason"]
    )
    roundtrip = type(spec).from_dict(spec.to_dict())
    assert roundtrip.encodings == spec.encodings
    old = type(spec).from_dict({k: v for k, v in spec.to_dict().items() if k not in ("encodings", "datetime")})
    assert old.encoding("city") == ONE_HOT  # a spec written before encodings were recorded


@pytest.mark.parametrize("family", ["logistic_regression", "random_forest", "hist_gradient_boosting"])
def test_the_encoded_width_does_not_grow_with_levels_or_rows(family):
    """Whatever the rows and levels: numeric + one-hot columns (at most the cap) + one per target-encoded
    column + the varying date parts; unseen and rare levels take the infrequent column, not a new one."""
    widths = []
    for n in (2_000, 40_000):
        frame = levels_frame(n, seed=n)
        spec = build_feature_spec(frame, "label")
        chosen = MODEL_FAMILIES[family]
        params = chosen.resolve({"n_estimators": 5} if family == "random_forest" else {})
        model = build_model(spec, chosen, params, seed=0).fit(frame[spec.input_columns], frame["label"])
        unseen = frame.head(50).assign(colour="violet", city="nowhere", shop="new shop")
        encoded = model[:-1].transform(unseen[spec.input_columns])
        assert encoded.shape[1] <= 1 + ONE_HOT_MAX_CATEGORIES + 2 + 8
        assert len(model.predict(unseen[spec.input_columns])) == 50
        widths.append(encoded.shape[1])
        if family == "logistic_regression":
            categories = model[0].named_transformers_["categorical"]
            assert [list(levels) for levels in categories.infrequent_categories_] == [["mauve"]]
    assert widths[0] == widths[1]


def test_hist_gradient_boosting_takes_the_few_level_columns_as_its_own_categories():
    frame = levels_frame(3_000)
    spec = build_feature_spec(frame, "label")
    family = MODEL_FAMILIES["hist_gradient_boosting"]
    model = build_model(spec, family, family.resolve({}), seed=0).fit(frame[spec.input_columns], frame["label"])
    assert list(model[-1].categorical_features) == [0]  # colour, ordinal-encoded first
    assert not scipy.sparse.issparse(model[:-1].transform(frame[spec.input_columns]))
    rng = np.random.default_rng(0)  # mostly one-hot columns: sparse for the estimators that take it
    wide = pd.DataFrame({f"c{i}": rng.choice([f"v{j}" for j in range(30)], 3_000) for i in range(6)})
    wide["label"] = frame["label"]
    spec = build_feature_spec(wide, "label")
    for name, sparse in (("logistic_regression", True), ("hist_gradient_boosting", False)):
        family = MODEL_FAMILIES[name]
        model = build_model(spec, family, family.resolve({}), seed=0).fit(wide[spec.input_columns], wide["label"])
        assert scipy.sparse.issparse(model[:-1].transform(wide[spec.input_columns])) is sparse


def test_target_encoding_is_cross_fitted_on_the_training_rows():
    """A level seen once predicts its own label perfectly when encoded in-sample; cross-fitted it cannot."""
    rng = np.random.default_rng(1)
    n = 2_000
    frame = pd.DataFrame({"x": rng.normal(size=n), "code": [f"c{i}" for i in range(n // 2)] * 2})
    frame["label"] = rng.choice(["yes", "no"], n)
    spec = build_feature_spec(frame, "label")
    assert spec.encoding("code") == TARGET_ENCODING
    family = MODEL_FAMILIES["logistic_regression"]
    model = build_model(spec, family, family.resolve({}), seed=0).fit(frame[spec.input_columns], frame["label"])
    assert model.score(frame[spec.input_columns], frame["label"]) < 0.65  # pure noise stays noise


def test_many_levels_become_codes_that_the_target_encoder_encodes_exactly_as_it_does_the_text():
    """The same numbers out, for a level seen, one never seen, and a missing one; one row costs no pass over levels."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import TargetEncoder

    frame = levels_frame(6_000)[["city", "shop", "label"]]
    frame.loc[frame.index[:40], "city"] = None
    rows = frame.head(100).assign(city=["nowhere", None, *frame["city"].iloc[2:100]])[["city", "shop"]]

    def encoder():
        return TargetEncoder(cv=StratifiedKFold(5, shuffle=True, random_state=3))

    on_text, on_codes = encoder(), encoder()
    codes = CategoryCodes()
    fitted = on_codes.fit_transform(codes.fit_transform(frame[["city", "shop"]]), frame["label"])
    assert np.array_equal(on_text.fit_transform(frame[["city", "shop"]], frame["label"]), fitted)
    assert np.array_equal(on_text.transform(rows), on_codes.transform(codes.transform(rows)))
    assert codes.transform(rows)["city"].iloc[0] == -1 and np.isnan(codes.transform(rows)["city"].iloc[1])
    assert set(vars(codes)) == {"columns_", "levels_"}  # its lookup index is not in what a saved model holds
    assert list(codes.get_feature_names_out()) == ["city", "shop"]
    refitted = codes.fit(pd.DataFrame({"city": ["b", "a"], "shop": ["x", "y"]}))
    assert list(refitted.transform(pd.DataFrame({"city": ["a"], "shop": ["y"]})).iloc[0]) == [1.0, 1.0]


def test_a_model_with_many_level_columns_saves_and_loads_with_the_trusted_types_only():
    import skops.io

    frame = levels_frame(2_000).drop(columns="seen at")
    spec = build_feature_spec(frame, "label")
    assert spec.columns_encoded(TARGET_ENCODING) == ["shop", "city"] and not spec.datetime
    family = MODEL_FAMILIES["hist_gradient_boosting"]
    model = build_model(spec, family, family.resolve({}), seed=0).fit(frame[spec.input_columns], frame["label"])
    assert [name for name, _ in model[0].named_transformers_["many_levels"].steps] == ["codes", "target", "scale"]
    saved = skops.io.dumps(model)
    assert set(skops.io.get_untrusted_types(data=saved)) <= set(SKOPS_TRUSTED_TYPES)
    loaded = skops.io.loads(saved, trusted=list(SKOPS_TRUSTED_TYPES))
    assert (loaded.predict_proba(frame[spec.input_columns]) == model.predict_proba(frame[spec.input_columns])).all()


def spelled(times: pd.DatetimeIndex, fmt: str) -> pd.Series:
    return pd.Series(times.strftime(fmt), dtype=object)


# A year of times at 7 h 13 min steps: days over 12 and afternoons, so each spelling below is told from the others.
YEAR = pd.date_range("2023-03-01 00:07", periods=1200, freq="433min")


@pytest.mark.parametrize(
    ("fmt", "found"),
    [("%Y-%m-%dT%H:%M:%SZ", "ISO8601"), ("%Y-%m-%d", "ISO8601"), ("%Y-%m-%d %H:%M", "ISO8601")]
    + [(fmt, fmt) for fmt in TIME_FORMATS if fmt != "ISO8601"],
)
def test_text_in_a_common_date_format_is_a_time_and_its_format_is_found(fmt, found):
    text = spelled(YEAR, fmt)
    assert time_format_of(text).format == found and time_format_of(text).note == ""
    assert time_format_of(" " + text + " ").format == found  # as a spreadsheet pads them
    exact = pd.to_datetime(text, format=fmt, utc=True)  # to the format's own precision
    assert parse_times(" " + text, found).equals(exact) and exact.dt.year.nunique() == 2


def test_text_is_not_a_time_unless_nearly_all_of_it_is_one_in_one_format():
    iso = pd.Series(["2024-05-01", "2024-05-02T13:45:00Z", "2024-05-03 08:00", "2024-05-04T08:00:00+02:00"] * 30)
    assert time_format_of(iso).format == "ISO8601"
    assert time_format_of(pd.Series(["20240501", "20240502"] * 30)) is None  # a number or a code as much as a date
    assert time_format_of(pd.Series(["2024-05-01"] * 90 + ["soon"] * 10)) is None
    assert time_format_of(pd.concat([spelled(YEAR[:600], "%Y-%m-%d"), spelled(YEAR[600:], "%d/%m/%Y")])) is None
    assert time_format_of(pd.Series(["2024", "2025"] * 30)) is None  # a year alone: pandas' ISO parser takes it
    assert time_format_of(pd.Series(["A-12", "B-07", "13/20"] * 30)) is None
    assert time_format_of(pd.Series([1.5, 2.5] * 30)) is None
    assert time_format_of(pd.Series(YEAR)).format == "ISO8601"  # a datetime column: its format is for text of it


def test_day_or_month_first_is_decided_by_every_value_and_a_tie_is_said():
    early = pd.date_range("2024-01-01", periods=12, freq="D")  # days 1-12: 03/04 reads either way
    late = pd.date_range("2024-01-13", periods=12, freq="D")
    # the sample (every other value of 2,400) holds early days only; the rows between decide: day first
    mixed = pd.Series(
        np.ravel(np.column_stack([np.tile(spelled(early, "%d/%m/%Y"), 100), np.tile(spelled(late, "%d/%m/%Y"), 100)]))
    )
    assert len(mixed) == 2400 and time_format_of(mixed.iloc[::2]).note  # the sample alone: a tie
    assert time_format_of(mixed) == TimeFormat("%d/%m/%Y")
    tie = time_format_of(spelled(early, "%d/%m/%Y"))
    assert tie.format == "%m/%d/%Y" and tie.note == "read as %m/%d/%Y: every value also reads as %d/%m/%Y"
    may = time_format_of(pd.Series(["05 May 2024", "06 May 2024", "31 May 2024"] * 20))
    assert may.format == "%d %b %Y" and may.note == ""  # %d %B %Y reads the same times: nothing to say


def test_times_are_read_from_stripped_text_whatever_else_the_column_holds():
    for fmt, text in (("ISO8601", " 2024-05-31 "), ("%d/%m/%Y", " 31/05/2024 ")):
        read = parse_times(pd.Series([text, 7, None], dtype=object), fmt)
        assert read.tolist() == [pd.Timestamp("2024-05-31", tz="UTC"), pd.NaT, pd.NaT]


def test_fitting_reads_each_column_once_to_the_same_parts_as_fit_then_transform():
    frame = pd.DataFrame({"at": spelled(YEAR, "%m/%d/%Y %I:%M %p"), "on": spelled(YEAR[::-1], "%Y-%m-%d")})
    formats = {"at": "%m/%d/%Y %I:%M %p"}
    together = FormattedDateParts(formats)
    out = together.fit_transform(frame)
    apart = FormattedDateParts(formats).fit(frame)
    assert np.array_equal(out, apart.transform(frame), equal_nan=True) and together.parts_ == apart.parts_
    assert together.parts_ == {
        "at": ["year", "month", "day", "day_of_week", "hour", "minute", "days"],
        "on": ["year", "month", "day", "day_of_week", "days"],
    }


def test_a_date_format_is_recorded_in_the_spec_and_the_model_reads_the_raw_text_with_it():
    n = 800
    rng = np.random.default_rng(3)
    when = pd.Series(pd.date_range("2023-01-05 06:00", periods=n, freq="11h"))
    label = np.where((when.dt.day > 15) ^ (when.dt.hour >= 12), "late", "early")
    native = pd.DataFrame({"when (local)": when, "x": rng.normal(size=n), "y": label})
    text = native.assign(**{"when (local)": when.dt.strftime("%d/%m/%Y %I:%M %p")})
    spec = build_feature_spec(text, "y")
    encoding = spec.encodings["when (local)"]
    assert spec.datetime == ["when (local)"] and encoding["format"] == "%d/%m/%Y %I:%M %p"
    assert "text in format %d/%m/%Y %I:%M %p" in encoding["reason"] and spec.time_formats() == {
        "when (local)": "%d/%m/%Y %I:%M %p"
    }
    family = MODEL_FAMILIES["hist_gradient_boosting"]
    from_text = build_model(spec, family, family.resolve({}), seed=0).fit(text[spec.input_columns], text["y"])
    dates = from_text[0].named_transformers_["dates"][0]
    assert dates.formats_ == {"when (local)": "%d/%m/%Y %I:%M %p"}
    assert dates.parts_["when (local)"] == ["year", "month", "day", "day_of_week", "hour", "days"]
    on_native = build_model(build_feature_spec(native, "y"), family, family.resolve({}), seed=0)
    on_native.fit(native[spec.input_columns], native["y"])
    # the same parts from the text as from the datetimes: the same model, the same probabilities
    assert np.array_equal(
        from_text.predict_proba(text[spec.input_columns]), on_native.predict_proba(native[spec.input_columns])
    )
    assert from_text.score(text[spec.input_columns], text["y"]) > 0.95
    import skops.io

    saved = skops.io.loads(skops.io.dumps(from_text), trusted=list(SKOPS_TRUSTED_TYPES))
    assert np.array_equal(
        saved.predict_proba(text[spec.input_columns]), from_text.predict_proba(text[spec.input_columns])
    )


@pytest.mark.parametrize("transformer", [FormattedDateParts, DateParts])  # DateParts: in models logged before formats
def test_date_parts_keep_what_varies_and_leave_missing_times_missing(transformer):
    times = pd.Series(["2024-05-01T13:45:00Z", "2024-12-24T13:45:00+01:00", None, "not a time", "2025-02-03T13:45:00Z"])
    parts = transformer().fit(pd.DataFrame({"at": times}))
    assert parts.parts_ == {"at": ["year", "month", "day", "day_of_week", "hour", "days"]}  # minute, second: constant
    out = parts.transform(pd.DataFrame({"at": times}))
    assert out.shape == (5, 6)
    assert list(out[0]) == [2024, 5, 1, 2, 13, pytest.approx(19844 + 13.75 / 24)]
    assert out[1][4] == 12  # 13:45 at +01:00 is 12:45 UTC
    assert np.isnan(out[2]).all() and np.isnan(out[3]).all()
    assert list(parts.get_feature_names_out()) == [f"at.{p}" for p in parts.parts_["at"]]
    native = pd.DataFrame({"at": pd.to_datetime(times.iloc[[0, 4]], utc=True)})
    assert parse_times(native["at"]).equals(parse_times(times.iloc[[0, 4]]))


def test_a_datetime_column_is_featurized_and_the_model_takes_the_raw_column():
    n = 500
    rng = np.random.default_rng(2)
    when = pd.Series(pd.date_range("2023-01-01", periods=n, freq="D"))
    frame = pd.DataFrame({"when": when, "x": rng.normal(size=n), "y": np.where(when.dt.month > 6, "late", "early")})
    spec = build_feature_spec(frame, "y")
    assert choose_columns(frame, "y").datetime == ["when"] and spec.datetime == ["when"]
    family = MODEL_FAMILIES["hist_gradient_boosting"]
    model = build_model(spec, family, family.resolve({}), seed=0).fit(frame[spec.input_columns], frame["y"])
    assert model.score(frame[spec.input_columns], frame["y"]) > 0.95
    as_text = frame[spec.input_columns].assign(when=when.dt.strftime("%Y-%m-%d"))
    assert (model.predict(as_text) == model.predict(frame[spec.input_columns])).all()


def test_the_project_transformers_ship_with_the_model_byte_for_byte(tmp_path):
    with_dates = build_feature_spec(levels_frame(300), "label")
    [folder] = shipped_code_paths(with_dates, tmp_path)
    shipped = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.py"))
    assert shipped == sorted(SHIPPED_CODE)
    for relative in SHIPPED_CODE:
        assert (tmp_path / relative).read_bytes() == (PROJECT_DIR / relative).read_bytes()
    assert folder == str(tmp_path / "steps")
    source = (PROJECT_DIR / "steps/lib/transforms.py").read_text()
    assert "from steps" not in source and "import steps" not in source  # self-contained, as shipped
    project_imports = [
        line
        for line in (PROJECT_DIR / "steps/lib/text_values.py").read_text().splitlines()
        if " steps" in line and "import" in line
    ]
    assert project_imports == ["from steps.lib.transforms import DATE_PARTS, DateParts, date_part"]  # shipped too
    many_levels = build_feature_spec(levels_frame(300).drop(columns="seen at"), "label")  # shop and city: codes
    assert shipped_code_paths(many_levels, tmp_path / "codes") == [str(tmp_path / "codes" / "steps")]
    without = build_feature_spec(levels_frame(300).drop(columns=["seen at", "shop", "city"]), "label")
    assert shipped_code_paths(without, tmp_path / "none") is None


def test_the_numeric_imputer_fills_the_same_medians_as_scikit_learns_median_strategy():
    from sklearn.impute import SimpleImputer

    rng = np.random.default_rng(0)
    block = rng.normal(size=(5_000, 4))
    block[rng.random(block.shape) < 0.1] = np.nan
    block[:, 3] = np.nan  # a column with no values: dropped by both
    frame = pd.DataFrame(block, columns=["Income ($)", "a", "b", "empty"]).assign(label=rng.integers(0, 2, 5_000))
    spec = build_feature_spec(frame.drop(columns="empty"), "label")
    family = MODEL_FAMILIES["logistic_regression"]
    model = build_model(spec, family, family.resolve({}), seed=0).fit(frame[spec.input_columns], frame["label"])
    imputer = model[0].named_transformers_["numeric"]["impute"]
    reference = SimpleImputer(strategy="median").fit(frame[spec.numeric])
    assert np.array_equal(imputer.statistics_, reference.statistics_)
    with pytest.warns(RuntimeWarning):  # np.median of no values
        fitted = SimpleImputer(strategy=imputer.strategy).fit(block)
    assert np.array_equal(fitted.transform(block), SimpleImputer(strategy="median").fit(block).transform(block))


# --------------------------------------------------------------------------- numbers written as text


def money_frame(n: int = 600, seed: int = 5, gaps: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same table twice: numbers as numbers, and as a spreadsheet exports them ($51,885.95, 17%, (1,200),
    `n/a` for a missing income where `gaps`)."""
    rng = np.random.default_rng(seed)
    income = rng.normal(50_000, 15_000, n).round(2)
    share = rng.uniform(0, 100, n).round(0)
    change = rng.normal(0, 2_000, n).round(0)
    label = np.where(income / 1_000 + share / 4 + change / 500 + rng.normal(0, 5, n) > 62, "yes", "no")
    numbers = pd.DataFrame({"Income ($)": income, "share": share, "change": change, "y": label})
    if gaps:
        numbers.loc[::40, "Income ($)"] = np.nan
    text = numbers.assign(
        **{
            "Income ($)": [f"${v:,.2f}" if v == v else "n/a" for v in numbers["Income ($)"]],
            "share": [f"{v:.0f}%" for v in share],
            "change": [f"({-v:,.0f})" if v < 0 else f"{v:,.0f}" for v in change],
        }
    )
    return numbers, text


@pytest.mark.parametrize(
    ("written", "number"),
    [
        ("$1,234.50", 1234.5),
        (" -3.5 ", -3.5),
        ("45%", 45.0),
        ("(1,200)", -1200.0),
        ("($1,234.50)", -1234.5),
        ("$ 5", 5.0),
        ("12 €", 12.0),
        ("-$5", -5.0),
        ("$-5", -5.0),
        ("−5", -5.0),  # the minus sign of typesetting
        ("1.2E+05", 120000.0),
        (".5", 0.5),
        ("1.", 1.0),
        (7, 7.0),  # a number among text (a served row)
        (1e-05, 1e-05),
        *((text, np.nan) for text in ("n/a", None, "?", "3+", "1.234,50", "1,23", "(-5)", "(5", "-−5", "$ -", "")),
    ],
)
def test_numbers_written_as_text_are_read_as_numbers(written, number):
    read = to_numbers(pd.Series(["$2", written, "$3"], dtype=object))
    assert np.array_equal(read.to_numpy(), [2.0, number, 3.0], equal_nan=True)


def test_numbers_are_read_from_any_kind_of_column_and_both_modules_find_the_same():
    assert to_numbers(pd.Series([1, 2])).tolist() == [1.0, 2.0] and to_numbers(pd.Series([], dtype=object)).empty
    assert to_numbers(pd.Series(["1,000", None], dtype="str")).tolist()[0] == 1000.0
    assert to_numbers(pd.Series([None, None])).isna().all()
    from steps.lib import text_values

    assert text_values.NUMBER_TEXT.pattern == NUMBER_TEXT.pattern  # featurize finds what the model reads


def test_a_column_of_numbers_written_as_text_is_a_numeric_feature_not_an_id_or_levels(tmp_path):
    _, text = money_frame()
    rng = np.random.default_rng(0)
    frame = text.assign(
        european=[f"{v * 1_000:,.2f}".replace(",", " ").replace(".", ",") for v in np.arange(600) % 50],
        notes=["about 5", "n/a", "12", "many"] * 150,
        zip=[f"{v:05d}" for v in rng.integers(1_000, 3_000, 600)],  # 01234: a code, not a number
        account=[str(v) for v in rng.permutation(10**6)[:600] + 10**7],  # bare, all distinct: an identifier
        children=[str(v) for v in rng.integers(0, 3, 600)[:-15]] + ["3+"] * 15,
        **{"order id": [f"{i:,}" for i in range(1_000, 1_600)], "Body Mass Index": rng.normal(27, 4, 600)},
    )
    choice = choose_columns(frame, "y")
    assert choice.numeric == ["Income ($)", "share", "change", "children", "Body Mass Index"]
    assert set(choice.categorical) == {"european", "notes", "zip"}
    assert choice.dropped == {
        "account": "ID-like (text unique per row)",
        "order id": "ID-like (unique per row, named like an identifier)",
    }
    income = choice.encodings["Income ($)"]
    assert income["encoding"] == NUMBERS_IN_TEXT and income["reason"].endswith("; other values ('n/a') are missing")
    assert choice.encodings["children"]["reason"].endswith("; other values ('3+') are missing")
    spec = build_feature_spec(frame, "y")
    assert spec.numbers_in_text() == ["Income ($)", "share", "change", "children"]
    assert shipped_code_paths(build_feature_spec(text, "y"), tmp_path) == [str(tmp_path / "steps")]  # TextNumbers


@pytest.mark.parametrize("family_name", ["logistic_regression", "hist_gradient_boosting"])
def test_a_model_on_numbers_written_as_text_is_the_model_on_the_numbers(family_name):
    numbers, text = money_frame(gaps=False)
    spec = build_feature_spec(text, "y")
    family = MODEL_FAMILIES[family_name]
    from_text = build_model(spec, family, family.resolve({}), seed=0).fit(text[spec.input_columns], text["y"])
    plain = build_feature_spec(numbers, "y")
    assert plain.numeric == spec.numeric and not plain.numbers_in_text()
    on_numbers = build_model(plain, family, family.resolve({}), seed=0).fit(numbers[spec.input_columns], numbers["y"])
    expected = on_numbers.predict_proba(numbers[spec.input_columns])
    assert np.allclose(from_text.predict_proba(text[spec.input_columns]), expected)
    assert np.allclose(from_text.predict_proba(numbers[spec.input_columns]), expected)  # numbers are taken too
    assert from_text.score(text[spec.input_columns], text["y"]) > 0.8
    import skops.io

    saved = skops.io.loads(skops.io.dumps(from_text), trusted=list(SKOPS_TRUSTED_TYPES))
    assert np.array_equal(
        saved.predict_proba(text[spec.input_columns]), from_text.predict_proba(text[spec.input_columns])
    )
    reads = from_text[0].named_transformers_["numbers_in_text"]
    assert isinstance(reads[0], TextNumbers) and list(reads.get_feature_names_out()) == spec.numeric


def test_a_value_that_is_not_a_number_is_missing_with_an_indicator_the_model_can_use():
    _, text = money_frame()  # `n/a` in every 40th income
    spec = build_feature_spec(text, "y")
    family = MODEL_FAMILIES["logistic_regression"]
    model = build_model(spec, family, family.resolve({}), seed=0).fit(text[spec.input_columns], text["y"])
    names = list(model[0].named_transformers_["numbers_in_text"].get_feature_names_out())
    assert names == [*spec.numeric, "missingindicator_Income ($)"]

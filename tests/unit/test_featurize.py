"""Step featurize: column choice, task, splits."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from steps.lib.errors import PipelineError
from steps.lib.features import CLASSIFICATION, REGRESSION, build_feature_spec, choose_columns
from steps.lib.splits import SPLIT_NAMES, drawn_parts, label_strata, split_frame
from tests.conftest import PROJECT_DIR


def test_choose_columns_drops_constant_empty_and_id_like(mixed_frame):
    frame = mixed_frame.assign(
        order_no=np.random.default_rng(1).permutation(60) + 1, token=[f"t{i}" for i in range(60)]
    )
    choice = choose_columns(frame, "label")
    assert choice.numeric == ["x1", "x2"]
    assert choice.categorical == ["colour"] and choice.datetime == []
    assert set(choice.dropped) == {"customer_id", "constant", "empty", "order_no", "token"}
    assert choice.dropped["constant"] == "constant" and choice.dropped["empty"] == "all values missing"


def test_unique_floats_are_features_not_ids():
    frame = pd.DataFrame({"measurement": np.linspace(0, 1, 30), "y": [0, 1, 2] * 10})
    assert choose_columns(frame, "y").numeric == ["measurement"]


def test_feature_spec_detects_task_and_classes(mixed_frame):
    spec = build_feature_spec(mixed_frame, "label")
    assert spec.task == CLASSIFICATION and spec.classes == ["a", "b", "c"]
    assert "customer_id" in spec.input_columns and "label" not in spec.input_columns
    regression = build_feature_spec(mixed_frame.assign(label=mixed_frame["x1"] * 1.5), "label")
    assert regression.task == REGRESSION and regression.classes is None


def test_task_override_and_its_errors(mixed_frame):
    assert build_feature_spec(mixed_frame.assign(label=[0, 1] * 30), "label", "regression").task == REGRESSION
    with pytest.raises(PipelineError, match="cannot be a regression target"):
        build_feature_spec(mixed_frame, "label", "regression")
    with pytest.raises(PipelineError, match="unknown task"):
        build_feature_spec(mixed_frame, "label", "ranking")


def test_rare_classes_are_refused(mixed_frame):
    frame = mixed_frame.copy()
    frame.loc[0, "label"] = "rare"
    with pytest.raises(PipelineError, match="'rare' have fewer than 3 rows"):
        build_feature_spec(frame, "label")


def test_split_is_stratified_deterministic_and_drops_unlabelled_rows(mixed_frame):
    frame = mixed_frame.copy()
    frame.loc[:5, "label"] = None
    frame.loc[:5, "label"] = frame.loc[:5, "label"].astype(object)
    spec = build_feature_spec(frame, "label")
    splits = split_frame(frame, spec, seed=3, validation_size=0.2, test_size=0.2)
    again = split_frame(frame, spec, seed=3, validation_size=0.2, test_size=0.2)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 54
    pd.testing.assert_frame_equal(splits.test, again.test)
    for part in (splits.train, splits.validation, splits.test):
        assert set(part["label"]) == {"a", "b", "c"}
    assert not split_frame(frame, spec, seed=4, validation_size=0.2, test_size=0.2).test.equals(splits.test)


def test_the_random_split_keeps_each_class_share_in_every_split_whatever_the_label_order():
    rng = np.random.default_rng(0)
    values = rng.choice(["<=50K", ">50K", "b"], 5003, p=[0.7, 0.25, 0.05])
    labels = pd.Categorical(values, categories=["b", ">50K", "<=50K"])
    frame = pd.DataFrame({"x": np.arange(5003.0), "label": labels})  # categories not in sorted order
    spec = build_feature_spec(frame, "label")
    splits = split_frame(frame, spec, seed=7, validation_size=0.25, test_size=0.2)
    # scikit-learn's counts: test ceil(0.2 n), validation ceil(0.25 / 0.8 of the rest), train the rest
    assert [len(splits[name]) for name in SPLIT_NAMES] == [2751, 1251, 1001]
    rows = np.concatenate([splits[name]["x"].to_numpy() for name in SPLIT_NAMES])
    assert sorted(rows) == list(frame["x"])  # every labelled row once
    whole = frame["label"].value_counts()
    for name in SPLIT_NAMES:
        part = splits[name]
        expected = whole * len(part) / len(frame)
        assert (part["label"].value_counts().reindex(whole.index) - expected).abs().max() < 1  # up to rounding
        assert part["x"].is_monotonic_increasing  # in the table's order, not grouped by class
        assert (part["x"].diff().dropna() > 1).any()  # drawn from the whole table, not a block of it
    again = split_frame(frame.assign(label=values), spec, seed=7, validation_size=0.25, test_size=0.2)
    pd.testing.assert_series_equal(again.test["x"], splits.test["x"])  # the classes' order does not matter


def test_a_random_split_with_fewer_rows_than_classes_is_refused_in_one_line():
    frame = pd.DataFrame({"x": np.linspace(0, 1, 12), "label": ["a", "b", "c"] * 4})
    spec = build_feature_spec(frame, "label")
    with pytest.raises(PipelineError) as refused:
        split_frame(frame, spec, seed=0, validation_size=0.2, test_size=0.1)
    assert str(refused.value) == (
        "cannot split 12 rows into 7 train, 3 validation and 2 test rows (a split of fewer rows than the 3 classes); "
        "use more data, or raise the smallest of validation_size and test_size"
    )


def test_the_strata_are_the_labels_codes_in_sorted_order_whatever_their_dtype():
    """Text labels are coded in Arrow, the rest as values: the codes (and so a seed's split) as before, a
    categorical's own order of categories notwithstanding."""
    words = np.random.default_rng(0).choice(["b", "A", "a", "é", "Z", "<=50K", ">50K"], 2_000)
    for labels in (
        pd.Series(words, dtype="str"),
        pd.Series(pd.Categorical(words, categories=["Z", "b", "a", "A", "é", "<=50K", ">50K"])),
        pd.Series(words, dtype=object),
        pd.Series(np.arange(2_000) % 3 == 0),
    ):
        codes = label_strata(labels)
        assert codes.tolist() == pd.factorize(labels.to_numpy(), sort=True)[0].tolist()
        assert set(labels.to_numpy()[codes == 0]) == {min(labels.to_numpy())}  # the first label in sorted order


def test_drawn_parts_share_out_each_class_by_largest_remainders():
    strata = np.repeat([0, 1, 2], [5, 3, 2])
    for seed in range(20):
        first, second, rest = drawn_parts(10, strata, (3, 4), np.random.default_rng(seed))
        assert sorted(np.concatenate([first, second, rest])) == list(range(10))
        assert all((np.diff(part) > 0).all() for part in (first, second, rest))  # ascending positions
        # 3 of 10 rows: 1.5, 0.9, 0.6 of the classes; floors 1, 0, 0 and the two largest remainders one more
        assert np.bincount(strata[first], minlength=3).tolist() == [1, 1, 1]
        assert np.bincount(strata[second], minlength=3).tolist() == [2, 1, 1]  # 4 of the 4, 2, 1 left
        assert np.bincount(strata[rest], minlength=3).tolist() == [2, 1, 0]
    plain = drawn_parts(10, None, (3, 4), np.random.default_rng(0))
    assert [len(part) for part in plain] == [3, 4, 3] and sorted(np.concatenate(plain)) == list(range(10))
    assert all((np.diff(part) > 0).all() for part in plain)
    drawn = {tuple(drawn_parts(10, None, (3, 4), np.random.default_rng(seed))[0]) for seed in range(20)}
    assert len(drawn) > 10  # drawn at random, not cut in blocks
    # equal remainders are equal in integers: the larger class first (2 of 4, 1, 1 rows: 1.33, 0.33, 0.33)
    strata_of = np.repeat([0, 1, 2], [4, 1, 1])
    first, _ = drawn_parts(6, strata_of, (2,), np.random.default_rng(0))
    assert np.bincount(strata_of[first], minlength=3).tolist() == [2, 0, 0]
    everything, nothing, rest = drawn_parts(10, strata, (10, 0), np.random.default_rng(0))  # a size of all rows
    assert len(everything) == 10 and len(nothing) == 0 and len(rest) == 0


@pytest.mark.parametrize("step", ["load", "featurize"])
def test_the_data_steps_import_no_scikit_learn(step):
    # ~0.9 s of each run; bench/noop (the data floor's no-op step) imports what these two import
    code = f"import sys, steps.{step}; sys.exit('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR).returncode == 0


def test_a_float_column_is_checked_for_being_constant_without_counting_its_values():
    frame = pd.DataFrame({"flat": [2.5] * 30, "wavy": np.linspace(0, 1, 30), "y": [0, 1, 2] * 10})
    choice = choose_columns(frame, "y")
    assert choice.dropped == {"flat": "constant"} and choice.numeric == ["wavy"]


@pytest.mark.parametrize(("validation_size", "test_size"), [(0, 0.2), (0.2, 1.0), (0.5, 0.45)])
def test_split_sizes_are_checked(mixed_frame, validation_size, test_size):
    spec = build_feature_spec(mixed_frame, "label")
    with pytest.raises(PipelineError):
        split_frame(mixed_frame, spec, 0, validation_size, test_size)


# --------------------------------------------------------------------------- splits by time and by group


ISO = "%Y-%m-%dT%H:%M:%S"
# Day first: sorted as text, or read month first, 02/01 (2 January) would come after 01/02 (1 February).
DAY_FIRST = "%d/%m/%Y %H:%M"


def timed_frame(n: int = 600, seed: int = 0, fmt: str = ISO) -> pd.DataFrame:
    """Rows at times 7 h apart (as text in `fmt`, a few missing, many shared by two rows), customers of 3-9 rows
    each."""
    rng = np.random.default_rng(seed)
    hours = np.sort(rng.integers(0, n // 2, n)) * 7
    times = (pd.Timestamp("2024-01-01") + pd.to_timedelta(hours, unit="h")).strftime(fmt)
    frame = pd.DataFrame(
        {
            "at": pd.Series(times, dtype=object),
            "customer": [f"cust {i}" for i in np.repeat(np.arange(n), rng.integers(3, 10, n))[:n]],
            "x": rng.normal(size=n),
            "label": rng.choice(["yes", "no"], n),
        }
    ).sample(frac=1, random_state=seed)
    frame.loc[frame.index[:7], "at"] = None
    return frame.reset_index(drop=True)


@pytest.mark.parametrize(("fmt", "found"), [(ISO, "ISO8601"), (DAY_FIRST, DAY_FIRST)])
def test_a_time_split_trains_on_the_oldest_rows_and_tests_on_the_newest_equal_times_never_straddle(fmt, found):
    frame = timed_frame(fmt=fmt)
    spec = build_feature_spec(frame, "label")
    splits = split_frame(frame, spec, seed=0, validation_size=0.2, test_size=0.2, split="time", column="at")
    times = {name: pd.to_datetime(splits[name]["at"], format=fmt) for name in ("train", "validation", "test")}
    assert times["train"].max() < times["validation"].min() and times["validation"].max() < times["test"].min()
    assert sum(len(splits[name]) for name in times) == len(frame) - 7
    assert spec.split == {
        "kind": "time", "column": "at", "rows_without_value": 7, "labelled_rows": len(frame), "format": found
    }  # fmt: skip
    assert spec.time_formats() == {"at": found}  # the same column as a feature: the same format
    assert abs(len(splits.test) / (len(frame) - 7) - 0.2) < 0.02


def test_a_time_split_reads_its_column_in_the_format_featurize_found_on_every_row():
    """The labelled rows alone read either way round (days 1-12); two unlabelled ones (31/05) decide: day first,
    for the model and for the split, so no later row trains."""
    days = [f"{day:02d}/{month:02d}/2024" for month in range(1, 13) for day in range(1, 13)]
    frame = pd.DataFrame(
        {
            "at": [*days, "31/05/2024", "30/06/2024"],
            "x": np.arange(len(days) + 2, dtype=float),
            "y": [float(i % 7) for i in range(len(days))] + [np.nan] * 2,
        }
    )
    spec = build_feature_spec(frame, "y", "regression")
    assert spec.time_formats() == {"at": "%d/%m/%Y"}
    splits = split_frame(frame, spec, seed=0, validation_size=0.2, test_size=0.2, split="time", column="at")
    assert spec.split["format"] == "%d/%m/%Y"
    read = {name: pd.to_datetime(splits[name]["at"], format="%d/%m/%Y") for name in ("train", "test")}
    assert read["train"].max() < read["test"].min()


def test_a_group_split_puts_each_group_in_one_split_only():
    frame = timed_frame()
    spec = build_feature_spec(frame, "label")
    splits = split_frame(frame, spec, seed=1, validation_size=0.2, test_size=0.2, split="group", column="customer")
    groups = [set(splits[name]["customer"]) for name in ("train", "validation", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(len(g) for g in groups) == frame["customer"].nunique()
    assert 0.1 < len(splits.test) / len(frame) < 0.3
    again = split_frame(frame, spec, seed=1, validation_size=0.2, test_size=0.2, split="group", column="customer")
    assert again.test.equals(splits.test)  # seeded


@pytest.mark.parametrize("fmt", [ISO, DAY_FIRST])
def test_cross_validation_folds_follow_the_split(fmt):
    from steps.lib.splits import cv_folds_of, describe_scoring

    frame = timed_frame(fmt=fmt)
    spec = build_feature_spec(frame, "label")
    splits = split_frame(frame, spec, seed=0, validation_size=0.2, test_size=0.2, split="time", column="at")
    train_times = pd.to_datetime(splits.train["at"], format=fmt).to_numpy()
    folds = cv_folds_of(splits.train, spec, 3, seed=0)
    assert len(folds) == 3
    for fit_rows, score_rows in folds:  # each fold scores later times than it fits on
        assert train_times[fit_rows].max() < train_times[score_rows].min()
    assert describe_scoring(spec, 3) == "3 folds in time order on 'at': each scores the next block of time"
    splits = split_frame(frame, spec, seed=0, validation_size=0.2, test_size=0.2, split="group", column="customer")
    for fit_rows, score_rows in cv_folds_of(splits.train, spec, 3, seed=0):
        customers = splits.train["customer"].to_numpy()
        assert not set(customers[fit_rows]) & set(customers[score_rows])
    assert describe_scoring(spec, 3) == "3 folds by group on 'customer': no group in two folds"
    assert describe_scoring(spec, 0) == "the validation split"
    assert (
        describe_scoring(build_feature_spec(frame, "label"), 5) == "5 stratified shuffled folds of the training split"
    )


@pytest.mark.parametrize(
    ("split", "column", "change", "message"),
    [
        ("time", None, None, "split=time needs the column that orders the rows; pass -P time_column=<column>"),
        ("group", None, None, "split=group needs the column that names each row's group"),
        ("time", "when", None, "time_column 'when' is not in the data"),
        (
            "time",
            "customer",
            None,
            "time_column 'customer' does not parse as dates/times (600 of 600 values, e.g. 'cust",
        ),
        ("time", "at", {"at": "yesterday"}, "time_column 'at' does not parse as dates/times (593 of 593 values"),
        ("group", "customer", {"customer": "everyone"}, "group_column 'customer' has 1 group(s)"),
        ("sideways", None, None, "unknown split 'sideways'; use one of random, time, group"),
        ("random", "at", None, "time_column and group_column apply to split=time and split=group"),
    ],
)
def test_a_split_that_cannot_be_made_is_refused_in_one_line(split, column, change, message):
    from steps.lib.split_options import SplitOptions

    frame = timed_frame()
    if change:
        frame = frame.assign(**{k: frame[k].where(frame[k].isna(), v) for k, v in change.items()})
    spec = build_feature_spec(frame, "label")
    with pytest.raises(PipelineError, match="^" + re.escape(message)) as raised:
        options = SplitOptions(split, column if split != "group" else None, column if split == "group" else None)
        options.check()
        split_frame(frame, spec, seed=0, validation_size=0.2, test_size=0.2, split=split, column=column)
    assert "\n" not in str(raised.value)


def test_trials_fit_on_a_seeded_stratified_sample_of_at_most_max_tune_rows():
    from steps.lib.splits import sample_rows

    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"x": rng.normal(size=5000), "label": np.where(rng.random(5000) < 0.1, "rare", "common")})
    spec = build_feature_spec(frame, "label")
    sample = sample_rows(frame, spec, 1000, seed=3)
    assert len(sample) == 1000 and sample.equals(sample_rows(frame, spec, 1000, seed=3))
    share = (frame["label"] == "rare").mean()
    assert abs((sample["label"] == "rare").mean() - share) < 0.002  # stratified: the class shares kept
    assert sample_rows(frame, spec, 0, seed=3) is frame and sample_rows(frame, spec, 9000, seed=3) is frame
    assert not sample.equals(sample_rows(frame, spec, 1000, seed=4))


def test_a_step_reads_only_the_splits_it_uses_the_others_keep_their_columns(tmp_path, mixed_frame):
    """monitor reads the training rows alone, tune never the test rows: the other splits come with no rows."""
    import json

    from steps.lib.names import FEATURE_SPEC
    from steps.lib.splits import read_splits

    spec = build_feature_spec(mixed_frame, "label")
    splits = split_frame(mixed_frame, spec, seed=1, validation_size=0.2, test_size=0.2)
    for name in SPLIT_NAMES:
        splits[name].to_parquet(tmp_path / f"{name}.parquet")
    (tmp_path / FEATURE_SPEC).write_text(json.dumps(spec.to_dict()))
    whole, _ = read_splits(str(tmp_path))
    some, read_spec = read_splits(str(tmp_path), parts=("train",))
    assert read_spec.to_dict() == spec.to_dict()
    pd.testing.assert_frame_equal(some.train, whole.train)
    for name in ("validation", "test"):
        assert len(whole[name]) > 0 and len(some[name]) == 0
        assert list(some[name].columns) == list(whole[name].columns)
        assert some[name].dtypes.equals(whole[name].dtypes)


def test_featurize_takes_loads_distinct_counts_and_counts_again_what_is_implausible(mixed_frame):
    """load counted each column's distinct values (its meta.json carries them): featurize decides from them, the
    same spec as counting again; a count that cannot be (not an integer, none, more than the values) is
    counted again, as the file came from a store anyone on the team can write to."""
    from steps.load import distinct_counts

    counted = distinct_counts(mixed_frame)
    assert build_feature_spec(mixed_frame, "label", counted=counted) == build_feature_spec(mixed_frame, "label")
    present = int(mixed_frame["colour"].notna().sum())
    said_unique = build_feature_spec(mixed_frame, "label", counted=counted | {"colour": present})
    assert said_unique.dropped["colour"] == "ID-like (text unique per row)"  # the count decides: it is used
    for impossible in ("2", 2.0, True, 0, -1, present + 1, None):
        again = build_feature_spec(mixed_frame, "label", counted=counted | {"colour": impossible})
        assert "colour" in again.categorical and again.encodings["colour"]["levels"] == 2


@pytest.mark.parametrize(
    ("record", "commas"),
    [
        ({"separator": ";", "decimal": ",", "thousands": ".", "encoding": "utf-8"}, True),
        ({"separator": ",", "decimal": ".", "thousands": None, "encoding": "utf-8"}, False),
        (None, False),  # not a CSV: no record
        ("decimal=,", False),  # planted in the store: a string, not load's mapping (was an AttributeError)
        ([",", "decimal"], False),
        ({"decimal": [","]}, False),
    ],
)
def test_featurize_reads_loads_csv_record_only_as_load_writes_it(record, commas):
    from steps.featurize import written_with_decimal_commas

    meta = {"name": "t", "target": "y"} | ({} if record is None else {"csv": record})
    assert written_with_decimal_commas(meta) is commas


def test_a_number_label_with_a_few_words_is_told_in_one_short_line():
    """Sales figures with three `—` in them read as text: every figure became a class of one row, and the error
    listed them all (cut at 500 characters before its advice); as a regression target they were 'not numeric'
    with the advice to classify."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=300), "sales": rng.gamma(2, 10, 300).round(2).astype(str)})
    frame.loc[[4, 90, 200], "sales"] = "—"
    with pytest.raises(PipelineError) as refused:
        build_feature_spec(frame, "sales")
    message = str(refused.value)
    assert len(message) < 300 and "more have fewer than 3 rows" in message, message
    assert message.endswith("; the label is mostly numbers: pass -P task=regression (and clean the rest)")
    with pytest.raises(PipelineError) as refused:
        build_feature_spec(frame, "sales", "regression")
    assert str(refused.value) == (
        "target 'sales' is not numeric, so it cannot be a regression target: 3 of 300 labels are not numbers ('—'); "
        "clean them (an empty cell is an unlabelled row), or use -P task=classification"
    )


def test_a_label_of_amounts_written_as_text_is_told_to_be_written_as_numbers():
    """Prices as `$1,019.70`: a feature of them is read as numbers, but as the label every price became a class of
    one row and the error said 'drop or merge them'; with task=regression, 'clean them ... or classify'."""
    rng = np.random.default_rng(0)
    prices = (1000 + 300 * rng.normal(size=300)).round(2)
    frame = pd.DataFrame({"x": rng.normal(size=300), "price": [f"${p:,.2f}" for p in prices]})
    told = (
        "they are numbers written as text (a currency sign, thousands separators, %), which a label is not read "
        "as: to predict the amount, write them as plain numbers (1234.5) in the data"
    )
    with pytest.raises(PipelineError) as refused:
        build_feature_spec(frame, "price")
    message = str(refused.value)
    assert "more have fewer than 3 rows" in message and message.endswith(f"; {told}, or merge them into classes")
    assert len(message) < 400, message
    with pytest.raises(PipelineError) as refused:
        build_feature_spec(frame, "price", REGRESSION)
    assert str(refused.value).startswith("target 'price' is not numeric, so it cannot be a regression target: 300 of")
    assert str(refused.value).endswith(f"; {told}")
    # Classes that happen to be amounts, enough rows each: a classification, as written.
    tiers = frame.assign(price=rng.choice(["$10", "$20", "$50"], 300))
    assert build_feature_spec(tiers, "price").classes == ["$10", "$20", "$50"]
    # A few rare classes among amounts: the usual advice (they may be classes).
    tiers.loc[[0, 1], "price"] = ["$1,000", "$2,000"]
    with pytest.raises(PipelineError, match=r"too few for a stratified .*; drop or merge them$"):
        build_feature_spec(tiers, "price")


def test_classes_that_differ_only_in_case_or_spaces_are_warned_of(caplog):
    """' yes', 'Yes', 'YES ' and 'yes' were four classes without a word (test f1 0.19, promoted all the same)."""
    rng = np.random.default_rng(0)
    labels = rng.choice([" yes", "Yes", "YES ", "yes", "no", " No", "maybe"], 300)
    frame = pd.DataFrame({"x": rng.normal(size=300), "answer": labels})
    with caplog.at_level("WARNING", logger="steps.features"):
        spec = build_feature_spec(frame, "answer")
    assert len(spec.classes) == 7  # warned of, not merged: the user says what is one class
    assert [r.getMessage() for r in caplog.records] == [
        "label 'answer' has classes that differ only in case or spaces, each a class of its own: ' No' = 'no'; "
        "' yes' = 'YES ' = 'Yes' = 'yes'; if they are one class, write them alike"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="steps.features"):
        build_feature_spec(frame.assign(answer=np.where(labels == "maybe", "maybe", "no")), "answer")
    assert not caplog.records


def test_a_unique_column_of_numbers_or_dates_not_read_is_dropped_with_a_warning_saying_why(caplog):
    """`7 106,23` (a space for thousands) and dates in two formats are read neither as numbers nor as dates, and
    unique per row they were dropped as IDs without a word: the only predictive column of a table, once."""
    rng = np.random.default_rng(0)
    amounts = [f"{v:,.2f}".replace(",", " ").replace(".", ",") for v in rng.uniform(1_000, 9_000, 400)]
    days = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.permutation(400), unit="D")
    signed = [d.strftime("%Y-%m-%d" if i % 3 else "%d/%m/%Y") for i, d in enumerate(days)]
    frame = pd.DataFrame({"amount": amounts, "signed": signed, "code": [f"C-{i:05d}x" for i in range(400)]})
    frame["label"] = rng.choice(["a", "b"], 400)
    frame["x"] = rng.normal(size=400)
    with caplog.at_level("WARNING", logger="steps.features"):
        spec = build_feature_spec(frame, "label", decimal_comma=True)
    assert spec.dropped["code"] == "ID-like (text unique per row)"  # an ID as IDs are: no warning
    for column in ("amount", "signed"):
        assert spec.dropped[column].startswith("ID-like (text unique per row); nearly all digits and marks, such as ")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and warned[0].startswith("column 'amount' dropped as ID-like (text unique per row); ")
    assert warned[0].endswith("if it matters, write it as plain numbers (1234.5) or ISO dates (2024-05-31)")


def test_a_target_of_dates_is_refused_in_one_line_naming_what_to_do():
    """A time as the label sent the user in a loop: 'not numeric ... 0 of 400 are not numbers' with
    task=regression, 'mostly numbers: pass -P task=regression' without."""
    frame = pd.DataFrame({"x": np.arange(40.0), "when": pd.date_range("2024-01-01", periods=40, tz="Asia/Tokyo")})
    for task in (None, REGRESSION, CLASSIFICATION):
        with pytest.raises(PipelineError, match="target 'when' holds dates/times: a model here predicts classes or"):
            build_feature_spec(frame, "when", task)

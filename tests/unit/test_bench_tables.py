"""bench/strong.py's tables are what its docstring says they are: the tasks, the mess, and the columns whose
encoding the comparison with the strong baseline is meant to exercise."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from steps.lib.features import (
    CLASSIFICATION,
    DATE_PARTS,
    ONE_HOT,
    REGRESSION,
    TARGET_ENCODING,
    choose_columns,
    detect_task,
)
from tests.conftest import PROJECT_DIR


@pytest.fixture(scope="module")
def strong():
    spec = importlib.util.spec_from_file_location("strong", PROJECT_DIR / "bench" / "strong.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TASKS = {
    "churn": CLASSIFICATION,
    "credit": CLASSIFICATION,
    "prices": REGRESSION,
    "demand": REGRESSION,
    "segments": CLASSIFICATION,
    "linear": CLASSIFICATION,
}


@pytest.mark.parametrize("name", TASKS)
def test_each_table_is_seeded_and_of_its_task(strong, name):
    frame, target = strong.GENERATED[name](3000, np.random.default_rng([0, 1]))
    again, _ = strong.GENERATED[name](3000, np.random.default_rng([0, 1]))
    pd.testing.assert_frame_equal(frame, again)
    assert len(frame) == 3000 and target in frame.columns
    assert detect_task(frame[target].dropna()) == TASKS[name]
    choice = choose_columns(frame, target)
    assert not choice.dropped, choice.dropped  # every column is a feature: the comparison is on all of them
    if TASKS[name] == CLASSIFICATION:
        shares = frame[target].value_counts(normalize=True)
        assert shares.min() > 0.05, shares  # no class so rare that the decision metric is noise


def test_the_tables_exercise_the_bounded_encodings_and_the_date_parts(strong):
    credit, target = strong.credit(10_000, np.random.default_rng(0))
    choice = choose_columns(credit, target)
    assert choice.encodings["employer"]["encoding"] == TARGET_ENCODING
    assert choice.encodings["education"]["encoding"] == ONE_HOT
    assert set(credit[target].dropna()) == {"<=50K", ">50K"} and credit[target].isna().any()
    assert credit["seniority (years)"].isna().any()
    demand, target = strong.demand(3000, np.random.default_rng(0))
    choice = choose_columns(demand, target)
    assert choice.encodings["date"]["encoding"] == DATE_PARTS
    assert choice.encodings["store"]["encoding"] == TARGET_ENCODING


def test_the_gap_is_positive_when_the_model_is_better_in_either_direction(strong):
    assert strong.relative_gap("f1_macro", 0.82, 0.80) == pytest.approx(0.025)
    assert strong.relative_gap("rmse", 9.0, 10.0) == pytest.approx(0.1)
    assert strong.relative_gap("rmse", 11.0, 10.0) == pytest.approx(-0.1)

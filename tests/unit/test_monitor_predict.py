"""Drift statistics, the drift rule, and predict's batch checks, in process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steps.lib.errors import PipelineError
from steps.lib.features import build_feature_spec
from steps.lib.tables import load_bundled_frame
from steps.monitor import DriftRule, as_numbers, categorical_drift, check_columns, drift_table, numeric_drift, psi
from steps.predict import check_batch, prediction_summary


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
    table = drift_table(reference, batch, spec, DriftRule())
    assert not table["drifted"].any()
    batch["petal_length_cm"] += 3
    batch.loc[batch.index[:30], "sepal_width_cm"] = np.nan  # 40 % missing now
    batch["sepal_length_cm"] = batch["sepal_length_cm"].astype(object)
    batch.loc[batch.index[0], "sepal_length_cm"] = "n.a."
    table = drift_table(reference, batch, spec, DriftRule()).set_index("column")
    assert table.loc["petal_length_cm", "drifted"] and table.loc["petal_length_cm", "psi"] > 1
    assert table.loc["sepal_width_cm", "drifted"]
    assert table.loc["sepal_width_cm", "missing_change"] == pytest.approx(0.4)
    assert table.loc["sepal_length_cm", "schema_change"].startswith("type changed")
    assert not table.loc["petal_width_cm", "drifted"]


def test_columns_are_checked_against_the_training_spec():
    frame, target = load_bundled_frame("iris")
    spec = build_feature_spec(frame, target)
    assert check_columns(frame, spec) is True and check_columns(frame.drop(columns=[target]), spec) is False
    with pytest.raises(PipelineError, match="lacks column"):
        check_columns(frame.drop(columns=["petal_width_cm"]), spec)
    with pytest.raises(PipelineError, match="'shop' that the model was not trained on"):
        check_columns(frame.assign(shop=1), spec)
    with pytest.raises(PipelineError, match="no rows"):
        check_columns(frame.head(0), spec)
    assert as_numbers(pd.Series(["1.5", None, "2"])).tolist()[::2] == [1.5, 2.0]
    assert as_numbers(pd.Series(["1.5", "x"])) is None


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
    shares = prediction_summary(pd.Series(["x", "y", "y", "y"]), classifier=True)
    assert shares == {"pred_share_x": 0.25, "pred_share_y": 0.75}
    spread = prediction_summary(pd.Series([1.0, 2.0, 3.0]), classifier=False)
    assert spread["pred_mean"] == 2.0 and spread["pred_p50"] == 2.0

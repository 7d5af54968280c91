"""Step featurize: column choice, task, splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steps.lib.errors import PipelineError
from steps.lib.features import CLASSIFICATION, REGRESSION, build_feature_spec, choose_columns
from steps.lib.splits import split_frame


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


@pytest.mark.parametrize(("validation_size", "test_size"), [(0, 0.2), (0.2, 1.0), (0.5, 0.45)])
def test_split_sizes_are_checked(mixed_frame, validation_size, test_size):
    spec = build_feature_spec(mixed_frame, "label")
    with pytest.raises(PipelineError):
        split_frame(mixed_frame, spec, 0, validation_size, test_size)

"""Step evaluate: baseline, predictions table, and the champion decision on a real registry."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from steps.common import MODEL_FAMILIES, SKOPS_TRUSTED_TYPES, fit_model, load_bundled_frame, model_pip_requirements
from steps.evaluate import (
    compare_with_baseline,
    decide_champion,
    fit_baseline,
    is_better,
    predictions_table,
)
from steps.featurize import build_feature_spec, split_frame


def test_direction_aware_comparisons():
    assert is_better(0.9, 0.8, "accuracy") and not is_better(0.8, 0.8, "accuracy")
    assert is_better(1.0, 2.0, "rmse") and not is_better(0.3, 0.2, "log_loss")
    table = compare_with_baseline({"accuracy": 0.9, "log_loss": 0.3}, {"accuracy": 0.33, "log_loss": 1.1})
    assert table["model_beats_baseline"].all()


@pytest.fixture
def iris():
    frame, target = load_bundled_frame("iris")
    spec = build_feature_spec(frame, target)
    return split_frame(frame, spec, 42, 0.2, 0.2), spec


def test_baseline_and_predictions_table(iris):
    splits, spec = iris
    baseline = fit_baseline(splits, spec)
    assert len(set(baseline.predict(splits.test[spec.input_columns]))) == 1
    table = predictions_table(baseline, splits.test, spec)
    assert {"actual", "predicted", "correct"} <= set(table.columns) and len(table) == len(splits.test)
    assert set(spec.input_columns) <= set(table.columns)


def register(splits, spec, family, params, name):
    model = fit_model(splits, spec, MODEL_FAMILIES[family], MODEL_FAMILIES[family].resolve(params), 0)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            pip_requirements=model_pip_requirements(),
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        )
    return mlflow.register_model(info.model_uri, name).version


def test_champion_moves_only_to_a_better_model(tracking_uri, iris):
    splits, spec = iris
    client = MlflowClient()
    decision = decide_champion(client, "m", "accuracy", 0.5, splits.test, spec)
    assert decision.promote and "first version" in decision.reason
    weak = register(splits, spec, "logistic_regression", {"C": "0.0001"}, "m")
    client.set_registered_model_alias("m", "champion", weak)
    better = decide_champion(client, "m", "accuracy", 1.0, splits.test, spec)
    assert better.promote and better.previous_version == weak and better.previous_value < 1.0
    worse = decide_champion(client, "m", "accuracy", 0.0, splits.test, spec)
    assert not worse.promote and "does not beat" in worse.reason


def test_a_champion_of_another_data_set_is_not_replaced_blindly(tracking_uri, iris):
    splits, spec = iris
    wine, wine_target = load_bundled_frame("wine")
    wine_spec = build_feature_spec(wine, wine_target)
    version = register(split_frame(wine, wine_spec, 0, 0.2, 0.2), wine_spec, "logistic_regression", {}, "m")
    MlflowClient().set_registered_model_alias("m", "champion", version)
    decision = decide_champion(MlflowClient(), "m", "accuracy", 1.0, splits.test, spec)
    assert not decision.promote and "cannot score these test rows" in decision.reason

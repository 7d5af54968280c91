"""Step `evaluate`: score on the held-out test rows, beat a baseline, register, crown a champion."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from steps.common import (
    CLASSIFICATION,
    DEFAULT_REGISTERED_MODEL_NAME,
    OUTPUT_DIGEST_TAG,
    FeatureSpec,
    PipelineError,
    Splits,
    dataset_source,
    digest_json,
    features_and_target,
    greater_is_better,
    one_line,
    read_splits,
    resolve_metric,
    run_cli,
    score_model,
    step_run,
)

logger = logging.getLogger("steps.evaluate")
CHAMPION = "champion"


def fit_baseline(splits: Splits, spec: FeatureSpec) -> Any:
    """The null model: the class prior for classification, the training mean for regression."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    features, labels = features_and_target(splits.train, spec)
    dummy = DummyClassifier(strategy="prior") if spec.task == CLASSIFICATION else DummyRegressor(strategy="mean")
    return dummy.fit(features, labels)


def is_better(candidate: float, reference: float, metric: str) -> bool:
    """Strictly better in the metric's own direction."""
    return candidate > reference if greater_is_better(metric) else candidate < reference


def compare_with_baseline(model_scores: dict[str, float], baseline_scores: dict[str, float]) -> pd.DataFrame:
    """One row per metric: model, baseline, and whether the model beats it."""
    return pd.DataFrame(
        [
            {
                "metric": name,
                "model": value,
                "baseline": baseline_scores.get(name),
                "model_beats_baseline": name in baseline_scores and is_better(value, baseline_scores[name], name),
            }
            for name, value in model_scores.items()
        ]
    )


def predictions_table(model: Any, test: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The test rows with `actual` and `predicted` columns (and per-row correctness or error)."""
    features, labels = features_and_target(test, spec)
    table = features.copy()
    table["actual"] = labels.to_numpy()
    table["predicted"] = model.predict(features)
    if spec.task == CLASSIFICATION:
        table["correct"] = table["actual"] == table["predicted"]
    else:
        table["error"] = table["predicted"] - table["actual"]
    return table


@dataclass
class ChampionDecision:
    promote: bool
    reason: str
    previous_version: str | None = None
    previous_value: float | None = None


def decide_champion(
    client: MlflowClient, name: str, metric: str, value: float, test: pd.DataFrame, spec: FeatureSpec
) -> ChampionDecision:
    """Promote when there is no champion yet, or when the new model beats it on these test rows."""
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return ChampionDecision(True, "first version: no champion yet")
    try:
        champion_model = mlflow.sklearn.load_model(f"models:/{name}@{CHAMPION}")
        champion_value = score_model(champion_model, test, spec)[metric]
    except Exception as error:  # e.g. the champion was trained on another data set's columns
        return ChampionDecision(
            False,
            f"champion v{current.version} cannot score these test rows ({one_line(str(error), 120)}); "
            "use another registered_model_name for a different data set",
            current.version,
        )
    if is_better(value, champion_value, metric):
        reason = f"{metric} {value:.4f} beats champion v{current.version}'s {champion_value:.4f} on the same test rows"
        return ChampionDecision(True, reason, current.version, champion_value)
    reason = f"{metric} {value:.4f} does not beat champion v{current.version}'s {champion_value:.4f}"
    return ChampionDecision(False, reason, current.version, champion_value)


def load_sklearn_model(model_uri: str) -> Any:
    try:
        return mlflow.sklearn.load_model(model_uri)
    except Exception as error:
        raise PipelineError(f"cannot load model '{model_uri}': {one_line(str(error), 200)}") from None


def run_evaluate(model_uri: str, splits_uri: str, registered_model_name: str, metric: str) -> dict[str, Any]:
    """The whole step inside the active run; returns the registration outcome."""
    if not registered_model_name.strip():
        raise PipelineError("registered_model_name is empty; pass -P registered_model_name=<name>")
    splits, spec = read_splits(splits_uri)
    metric = resolve_metric(metric, spec.task)
    model = load_sklearn_model(model_uri)
    test_scores = score_model(model, splits.test, spec)
    baseline_scores = score_model(fit_baseline(splits, spec), splits.test, spec)
    comparison = compare_with_baseline(test_scores, baseline_scores)

    test_frame = splits.test[[*spec.input_columns, spec.target]]
    test_dataset = mlflow.data.from_pandas(
        test_frame, source=dataset_source(f"{splits_uri.rstrip('/')}/test.parquet"), name="test", targets=spec.target
    )
    evaluator_config: dict[str, Any] = {"log_model_explainability": False}
    if spec.task == CLASSIFICATION and spec.classes and len(spec.classes) == 2:
        evaluator_config["pos_label"] = spec.classes[1]
    mlflow.models.evaluate(
        model=model_uri,
        data=test_dataset,
        model_type="classifier" if spec.task == CLASSIFICATION else "regressor",
        evaluator_config=evaluator_config,
    )
    mlflow.log_metrics({f"test_{k}": v for k, v in test_scores.items()})
    mlflow.log_metrics({f"baseline_test_{k}": v for k, v in baseline_scores.items()})
    beats_baseline = bool(comparison.loc[comparison.metric == metric, "model_beats_baseline"].all())
    table = predictions_table(model, splits.test, spec)
    mlflow.log_table(table, artifact_file="evaluation/test_predictions.json")
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp, "test_predictions.csv"), index=False)
        comparison.to_csv(Path(tmp, "baseline_comparison.csv"), index=False)
        mlflow.log_artifacts(tmp, "evaluation")

    client = MlflowClient()
    value = test_scores[metric]
    version = mlflow.register_model(
        model_uri,
        registered_model_name,
        tags={"evaluate_run_id": mlflow.active_run().info.run_id, f"test_{metric}": f"{value:.6g}"},
    )
    check_registered_model(f"models:/{registered_model_name}/{version.version}", model, splits.test, spec)
    decision = decide_champion(client, registered_model_name, metric, value, splits.test, spec)
    if decision.promote:
        client.set_registered_model_alias(registered_model_name, CHAMPION, version.version)
    client.set_model_version_tag(registered_model_name, version.version, "champion_decision", decision.reason)
    outcome = {
        "registered_model.name": registered_model_name,
        "registered_model.version": str(version.version),
        "registered_model.champion": str(decision.promote).lower(),
        "registered_model.alias": CHAMPION if decision.promote else "",
        "champion.decision": decision.reason,
        "champion.previous_version": decision.previous_version or "",
        "metric": metric,
        "beats_baseline": str(beats_baseline).lower(),
    }
    mlflow.set_tags(outcome | {OUTPUT_DIGEST_TAG: digest_json(outcome)})
    if not beats_baseline:
        logger.warning("the model does not beat the dummy baseline on test %s", metric)
    logger.info(
        "test %s = %.4f (baseline %.4f); registered %s v%s; %s",
        metric,
        value,
        baseline_scores.get(metric, float("nan")),
        registered_model_name,
        version.version,
        decision.reason,
    )
    return outcome


def check_registered_model(registered_uri: str, model: Any, test: pd.DataFrame, spec: FeatureSpec) -> None:
    """Load the registered version back as a pyfunc and check it predicts what the model predicts."""
    features, _ = features_and_target(test, spec)
    served = np.asarray(mlflow.pyfunc.load_model(registered_uri).predict(features))
    expected = np.asarray(model.predict(features))
    same = np.array_equal(served, expected) if spec.task == CLASSIFICATION else np.allclose(served, expected)
    if not same:
        raise RuntimeError(f"{registered_uri} loaded as a pyfunc predicts differently from the trained model")


@click.command()
@click.option("--model-uri", required=True, help="train's model, e.g. runs:/<train run>/model.")
@click.option("--splits-uri", required=True, help="featurize's artifact URI, e.g. runs:/<featurize run>/splits.")
@click.option("--registered-model-name", default=DEFAULT_REGISTERED_MODEL_NAME, show_default=True)
@click.option("--metric", default="auto", help="The metric that decides the champion; auto: f1_macro or rmse.")
def main(model_uri: str, splits_uri: str, registered_model_name: str, metric: str) -> None:
    with step_run("evaluate"):
        run_evaluate(model_uri, splits_uri, registered_model_name, metric)


if __name__ == "__main__":
    run_cli(main, "evaluate")

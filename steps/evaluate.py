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
    METRICS,
    OUTPUT_DIGEST_TAG,
    FeatureSpec,
    PipelineError,
    Splits,
    artifact_uri,
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
    tracking_unreachable,
)
from steps.model_card import CARD_DIR, build_card, card_summary, log_card
from steps.registry_lock import LOCK_SUFFIX, champion_lock

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


CHALLENGER = "challenger"
# Threshold params: metric -> (param name, the bound it sets). Each is checked only when given.
THRESHOLD_PARAMS = {
    "accuracy": "min_accuracy",
    "f1_macro": "min_f1_macro",
    "roc_auc_ovr": "min_roc_auc_ovr",
    "log_loss": "max_log_loss",
    "rmse": "max_rmse",
    "mae": "max_mae",
    "r2": "min_r2",
}
STRICTLY_BETTER = 1e-9  # min_delta 0 means "better", and MLflow's min_absolute_change must be > 0


def parse_thresholds(given: dict[str, str], task: str) -> dict[str, float]:
    """The threshold params that were set (not `none`), as metric -> bound; each must fit the task."""
    thresholds = {}
    for metric, param in THRESHOLD_PARAMS.items():
        raw = str(given.get(param, "none")).strip().lower()
        if raw in ("", "none"):
            continue
        try:
            value = float(raw)
        except ValueError:
            raise PipelineError(f"{param} must be a number or none; got {given[param]!r}") from None
        if METRICS[metric][0] != task:
            fitting = ", ".join(THRESHOLD_PARAMS[m] for m, (kind, _) in METRICS.items() if kind == task)
            raise PipelineError(f"{param} does not fit a {task} task; use {fitting}")
        thresholds[metric] = value
    return thresholds


@dataclass
class Gate:
    name: str  # "thresholds", "baseline" or "champion"
    passed: bool
    reason: str


def run_gate(
    name: str, thresholds: dict[str, Any], candidate: dict[str, float], reference: dict[str, float] | None
) -> Gate:
    """One gate through MLflow's own validation API; its failure message is the reason."""
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    try:
        mlflow.validate_evaluation_results(
            thresholds,
            EvaluationResult(candidate, {}),
            EvaluationResult(reference, {}) if reference is not None else None,
        )
    except ModelValidationFailedException as failure:
        return Gate(name, False, one_line(str(failure), 400))
    return Gate(name, True, "passed")


def threshold_gate(scores: dict[str, float], thresholds: dict[str, float]) -> Gate:
    """Each given bound (min_accuracy, max_rmse, ...) on the test rows."""
    from mlflow.models import MetricThreshold

    if not thresholds:
        return Gate("thresholds", True, "no thresholds set")
    checks = {m: MetricThreshold(threshold=v, greater_is_better=greater_is_better(m)) for m, v in thresholds.items()}
    gate = run_gate("thresholds", checks, scores, None)
    bounds = ", ".join(f"{THRESHOLD_PARAMS[m]}={v:g} ({m} {scores[m]:.4f})" for m, v in thresholds.items())
    gate.reason = f"passed: {bounds}" if gate.passed else f"{bounds}: {gate.reason}"
    return gate


def better_than_gate(
    name: str, metric: str, scores: dict[str, float], reference: dict[str, float], min_delta: float, what: str
) -> Gate:
    """The decision metric beats `reference` on the same test rows by at least min_delta (or at all)."""
    from mlflow.models import MetricThreshold

    check = MetricThreshold(
        min_absolute_change=max(min_delta, STRICTLY_BETTER), greater_is_better=greater_is_better(metric)
    )
    gate = run_gate(name, {metric: check}, {metric: scores[metric]}, {metric: reference[metric]})
    by = f" by at least {min_delta:g}" if min_delta > 0 else ""
    verdict = "beats" if gate.passed else "does not beat"
    gate.reason = f"{metric} {scores[metric]:.4f} {verdict} {what}'s {reference[metric]:.4f}{by} on the same test rows"
    return gate


@dataclass
class ChampionDecision:
    promote: bool
    reason: str
    gates: list[Gate]
    previous_version: str | None = None


def decide_champion(
    client: MlflowClient,
    name: str,
    metric: str,
    scores: dict[str, float],
    baseline_scores: dict[str, float],
    thresholds: dict[str, float],
    min_delta: float,
    test: pd.DataFrame,
    spec: FeatureSpec,
) -> ChampionDecision:
    """The gates: thresholds, the dummy baseline, then the current champion (if any). All must pass."""
    gates = [
        threshold_gate(scores, thresholds),
        better_than_gate("baseline", metric, scores, baseline_scores, 0.0, "the dummy baseline"),
    ]
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is None:
        gates.append(Gate("champion", True, "no champion yet"))
    else:
        try:
            champion_model = mlflow.sklearn.load_model(f"models:/{name}@{CHAMPION}")
            champion_scores = score_model(champion_model, test, spec)
        except Exception as error:  # e.g. the champion was trained on another data set's columns
            gates.append(
                Gate(
                    "champion",
                    False,
                    f"champion v{current.version} cannot score these test rows ({one_line(str(error), 120)}); "
                    "use another registered_model_name for a different data set",
                )
            )
        else:
            what = f"champion v{current.version}"
            gates.append(better_than_gate("champion", metric, scores, champion_scores, min_delta, what))
    failed = [g for g in gates if not g.passed]
    reason = "; ".join(f"{g.name}: {g.reason}" for g in failed) if failed else "all gates passed"
    return ChampionDecision(not failed, reason, gates, current.version if current else None)


def load_sklearn_model(model_uri: str) -> Any:
    try:
        return mlflow.sklearn.load_model(model_uri)
    except Exception as error:
        raise PipelineError(f"cannot load model '{model_uri}': {one_line(str(error), 200)}") from None


def parse_min_delta(min_delta: str | float) -> float:
    try:
        value = float(min_delta)
    except ValueError:
        raise PipelineError(f"min_delta must be a number (0 or more); got {min_delta!r}") from None
    if not value >= 0:
        raise PipelineError(f"min_delta must be 0 or more; got {min_delta}")
    return value


def run_evaluate(
    model_uri: str,
    splits_uri: str,
    registered_model_name: str,
    metric: str,
    gates: dict[str, str] | None = None,
    min_delta: str | float = 0.0,
) -> dict[str, Any]:
    """The whole step inside the active run; returns the registration outcome.

    `gates` holds the threshold params (min_accuracy, max_rmse, ...; `none` = not set).
    """
    if not registered_model_name.strip():
        raise PipelineError("registered_model_name is empty; pass -P registered_model_name=<name>")
    if registered_model_name.endswith(LOCK_SUFFIX):
        raise PipelineError(f"registered_model_name may not end in '{LOCK_SUFFIX}' (the champion lock); pick another")
    delta = parse_min_delta(min_delta)
    splits, spec = read_splits(splits_uri)
    metric = resolve_metric(metric, spec.task)
    thresholds = parse_thresholds(gates or {}, spec.task)
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
    evaluation = mlflow.models.evaluate(
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
    run_id = mlflow.active_run().info.run_id
    value = test_scores[metric]
    version = mlflow.register_model(
        model_uri, registered_model_name, tags={"evaluate_run_id": run_id, f"test_{metric}": f"{value:.6g}"}
    )
    try:  # nothing half-registered: a version that fails here is deleted again
        check_registered_model(f"models:/{registered_model_name}/{version.version}", model, splits.test, spec)
        # Read the champion, compare, move the alias: one at a time per model name (concurrent mains).
        with champion_lock(client, registered_model_name):
            decision = decide_champion(
                client,
                registered_model_name,
                metric,
                test_scores,
                baseline_scores,
                thresholds,
                delta,
                splits.test,
                spec,
            )
            alias = CHAMPION if decision.promote else CHALLENGER
            gate_tags = {"gates.passed": str(decision.promote).lower()} | {
                f"gate.{gate.name}": gate.reason if gate.passed else f"failed: {gate.reason}" for gate in decision.gates
            }
            for name, text in gate_tags.items():
                client.set_model_version_tag(registered_model_name, version.version, name, text)
            client.set_model_version_tag(registered_model_name, version.version, "champion_decision", decision.reason)
            client.set_registered_model_alias(registered_model_name, alias, version.version)
    except BaseException as error:
        # Without a server the delete cannot happen either: the next main deletes the version (no gates tag).
        if not tracking_unreachable(error):
            client.delete_model_version(registered_model_name, version.version)
        raise
    outcome = {
        "registered_model.name": registered_model_name,
        "registered_model.version": str(version.version),
        "registered_model.champion": str(decision.promote).lower(),
        "registered_model.alias": alias,
        "champion.decision": decision.reason,
        "champion.previous_version": decision.previous_version or "",
        "metric": metric,
        "beats_baseline": str(beats_baseline).lower(),
    } | gate_tags
    mlflow.set_tags(outcome | {OUTPUT_DIGEST_TAG: digest_json(outcome)})
    card, plots = build_card(
        registered_model_name,
        str(version.version),
        alias,
        metric,
        model_uri,
        splits_uri,
        spec,
        test_dataset,
        comparison,
        [(gate.name, gate.passed, gate.reason) for gate in decision.gates],
        decision.reason,
        evaluation.artifacts,
    )
    log_card(card, plots)
    client.set_model_version_tag(
        registered_model_name, version.version, "model_card", artifact_uri(run_id, f"{CARD_DIR}/model_card.md")
    )
    client.update_model_version(registered_model_name, version.version, description=card_summary(card))
    if not beats_baseline:
        logger.warning("the model does not beat the dummy baseline on test %s", metric)
    logger.info(
        "test %s = %.4f (baseline %.4f); registered %s v%s as @%s; %s",
        metric,
        value,
        baseline_scores.get(metric, float("nan")),
        registered_model_name,
        version.version,
        alias,
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


def threshold_options(command: Any) -> Any:
    """--min-accuracy, --max-rmse, ...: one option per threshold param, `none` when not set."""
    for metric, param in reversed(THRESHOLD_PARAMS.items()):
        bound = "at least" if param.startswith("min_") else "at most"
        command = click.option(
            f"--{param.replace('_', '-')}", default="none", help=f"Gate: test {metric} must be {bound} this."
        )(command)
    return command


@click.command()
@click.option("--model-uri", required=True, help="train's model, e.g. runs:/<train run>/model.")
@click.option("--splits-uri", required=True, help="featurize's artifact URI, e.g. runs:/<featurize run>/splits.")
@click.option("--registered-model-name", default=DEFAULT_REGISTERED_MODEL_NAME, show_default=True)
@click.option("--metric", default="auto", help="The metric that decides the champion; auto: f1_macro or rmse.")
@click.option("--min-delta", default="0", help="Gate: beat the champion's metric by at least this; 0: at all.")
@threshold_options
def main(
    model_uri: str, splits_uri: str, registered_model_name: str, metric: str, min_delta: str, **gates: str
) -> None:
    with step_run("evaluate"):
        run_evaluate(model_uri, splits_uri, registered_model_name, metric, gates, min_delta)


if __name__ == "__main__":
    run_cli(main, "evaluate")

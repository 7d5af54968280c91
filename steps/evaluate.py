"""Step `evaluate`: score on the held-out test rows, beat a baseline, register, crown a champion."""

from __future__ import annotations

# Before MLflow, as it loads the model with skops: see steps/lib/model_loading.py, SCAN_BEFORE_MLFLOW.
import scipy.special  # noqa: F401

# isort: split

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from threadpoolctl import threadpool_limits

from steps.lib.artifacts import digest_json
from steps.lib.explain import (
    EXPLANATIONS_DIR,
    IMPORTANCE_FILE,
    IMPORTANCE_PLOT,
    permutation_importance_table,
    plot_importance,
)
from steps.lib.features import CLASSIFICATION, FeatureSpec
from steps.lib.gates import Challenger, ChampionDecision, GateOptions, decide_champion, gate_options
from steps.lib.keys import unused_name
from steps.lib.metrics import is_better, resolve_metric
from steps.lib.model_card import build_card, card_summary, log_card
from steps.lib.model_loading import load_model
from steps.lib.models import MODEL_FAMILIES, REFITS, fit_model, resolve_threads, score_model
from steps.lib.names import CARD_DIR, EVALUATE_RUN_TAG, EVALUATION_DIR, GATES_PASSED_TAG, OUTPUT_DIGEST_TAG
from steps.lib.registry import CHALLENGER, CHAMPION, DEFAULT_REGISTERED_MODEL_NAME, champion_lock, check_model_name
from steps.lib.runner import INT, run_cli, step_run, tracking_unreachable, unset_is_none
from steps.lib.signing import file_manifest, record_manifest, run_root
from steps.lib.sources import dataset_source, once_more_on_a_clash, table_dataset
from steps.lib.splits import Splits, features_and_target, read_splits
from steps.lib.step_cards import evaluate_card
from steps.lib.story import evaluate_story
from steps.lib.uris import artifact_uri

logger = logging.getLogger("steps.evaluate")
TABLE_VIEW_ROWS = 10_000  # test rows in evaluation/test_predictions.json (the CSV has them all)


def fit_baseline(splits: Splits, spec: FeatureSpec) -> Any:
    """The null model: the class prior for classification, the training mean for regression."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    features, labels = features_and_target(splits.train, spec)
    dummy = DummyClassifier(strategy="prior") if spec.task == CLASSIFICATION else DummyRegressor(strategy="mean")
    return dummy.fit(features, labels)


def fit_strong_baseline(splits: Splits, spec: FeatureSpec, seed: int, threads: int, refit: str) -> Any:
    """A default HistGradientBoosting with the pipeline's own bounded encoding (its native categories), fitted
    on the rows the model was fitted on: what a tuned model should beat."""
    family = MODEL_FAMILIES["hist_gradient_boosting"]
    return fit_model(splits, spec, family, family.resolve({}), seed, threads=threads, refit=refit)


def model_refit(model_uri: str) -> str:
    """The rows train fitted the model on (its run's `refit` param; a run from before it: train only)."""
    try:
        run_id = mlflow.models.get_model_info(model_uri).run_id
        refit = MlflowClient().get_run(run_id).data.params.get("refit", "train") if run_id else "train"
    except Exception:  # a model logged outside train: compare on the training rows
        return "train"
    return refit if refit in REFITS else "train"  # a param is anyone's to write: only a known value is used


def compare_with_baseline(
    model_scores: dict[str, float], baseline_scores: dict[str, float], strong_scores: dict[str, float] | None = None
) -> pd.DataFrame:
    """One row per metric: model, the baseline (and the strong one), and whether the model beats each."""
    strong = strong_scores or {}
    return pd.DataFrame(
        [
            {
                "metric": name,
                "model": value,
                "baseline": baseline_scores.get(name),
                "model_beats_baseline": name in baseline_scores and is_better(value, baseline_scores[name], name),
                "strong_baseline": strong.get(name),
                "model_beats_strong_baseline": name in strong and is_better(value, strong[name], name),
            }
            for name, value in model_scores.items()
        ]
    )


def predictions_table(model: Any, test: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The test rows with `actual` and `predicted` columns (and per-row correctness or error).

    A feature of the same name is never overwritten: the added column is called `actual_2` (...) instead.
    """
    features, labels = features_and_target(test, spec)
    table = features.copy()
    actual = unused_name("actual", table.columns)
    table[actual] = labels.to_numpy()
    predicted = unused_name("predicted", table.columns)
    table[predicted] = model.predict(features)
    if spec.task == CLASSIFICATION:
        table[unused_name("correct", table.columns)] = table[actual] == table[predicted]
    else:
        table[unused_name("error", table.columns)] = table[predicted] - table[actual]
    return table


def check_registered_model(registered_uri: str, model: Any, test: pd.DataFrame, spec: FeatureSpec) -> None:
    """Load the registered version back as a pyfunc and check it predicts what the model predicts."""
    features, _ = features_and_target(test, spec)
    served = np.asarray(load_model(registered_uri).pyfunc.predict(features))
    expected = np.asarray(model.predict(features))
    same = np.array_equal(served, expected) if spec.task == CLASSIFICATION else np.allclose(served, expected)
    if not same:
        raise RuntimeError(f"{registered_uri} loaded as a pyfunc predicts differently from the trained model")


@dataclass
class Scored:
    """The candidate on the test rows, beside the baseline."""

    model: Any
    splits: Splits
    spec: FeatureSpec
    metric: str
    thresholds: dict[str, float]
    test_scores: dict[str, float]
    baseline_scores: dict[str, float]
    strong_scores: dict[str, float]
    comparison: pd.DataFrame
    test_dataset: Any
    evaluation: Any  # mlflow.models.evaluate's result
    splits_uri: str = ""  # what the model was trained on: the champion gate tells the test rows new to the champion


# --------------------------------------------------------------------------- the phases


def score(
    model_uri: str, splits_uri: str, metric: str | None, gates: GateOptions, seed: int = 42, threads: int = 0
) -> Scored:
    """Read the splits and the model; score it and the baselines on the test rows; MLflow's own evaluation."""
    threads = resolve_threads(threads)
    splits, spec = read_splits(splits_uri)
    metric = resolve_metric(metric, spec.task)
    thresholds = gates.thresholds(spec.task)
    loaded = load_model(model_uri)  # checked: only a model this project logs, with no code of its own
    model = loaded.sklearn
    test_scores = score_model(model, splits.test, spec)
    baseline_scores = score_model(fit_baseline(splits, spec), splits.test, spec)
    refit = model_refit(model_uri)
    strong_scores = score_model(fit_strong_baseline(splits, spec, seed, threads, refit), splits.test, spec)
    mlflow.log_params({"threads": str(threads), "strong_baseline.refit": refit})
    test_dataset = table_dataset(
        splits.test[[*spec.input_columns, spec.target]],
        source=dataset_source(f"{splits_uri.rstrip('/')}/test.parquet"),
        name="test",
        targets=spec.target,
    )
    evaluator_config: dict[str, Any] = {"log_model_explainability": False}
    if spec.task == CLASSIFICATION and spec.classes and len(spec.classes) == 2:
        evaluator_config["pos_label"] = spec.classes[1]
    # MLflow logs the test rows as a dataset input first (before any metric): another main evaluating the
    # same rows at the same moment can make that insert clash.
    evaluation = once_more_on_a_clash(
        lambda: mlflow.models.evaluate(
            model=loaded.pyfunc,  # the model loaded above: MLflow's loader would follow the model's own MLmodel
            data=test_dataset,
            model_type="classifier" if spec.task == CLASSIFICATION else "regressor",
            evaluator_config=evaluator_config,
        )
    )
    comparison = compare_with_baseline(test_scores, baseline_scores, strong_scores)
    return Scored(
        model,
        splits,
        spec,
        metric,
        thresholds,
        test_scores,
        baseline_scores,
        strong_scores,
        comparison,
        test_dataset,
        evaluation,
        splits_uri,
    )


def log_scores(scored: Scored) -> None:
    """Test metrics beside the baseline's, the per-row predictions, and the comparison table."""
    mlflow.log_metrics({f"test_{k}": v for k, v in scored.test_scores.items()})
    mlflow.log_metrics({f"baseline_test_{k}": v for k, v in scored.baseline_scores.items()})
    mlflow.log_metrics({f"strong_baseline_test_{k}": v for k, v in scored.strong_scores.items()})
    table = predictions_table(scored.model, scored.splits.test, scored.spec)
    # The UI's table view loads the whole JSON into the browser: a seeded sample of rows there (in their order:
    # a split keeps the table's, which may be sorted), every row in the CSV (200,000 test rows were ~8 s of JSON
    # and a file no browser tab opens).
    shown = table if len(table) <= TABLE_VIEW_ROWS else table.sample(n=TABLE_VIEW_ROWS, random_state=0).sort_index()
    mlflow.log_table(shown, artifact_file=f"{EVALUATION_DIR}/test_predictions.json")
    with tempfile.TemporaryDirectory() as tmp:
        # Arrow's writer, as predict's: pandas' to_csv took 3.7 s for 200,000 rows of 33 columns, this 0.35 s.
        pyarrow.csv.write_csv(pa.Table.from_pandas(table, preserve_index=False), Path(tmp, "test_predictions.csv"))
        scored.comparison.to_csv(Path(tmp, "baseline_comparison.csv"), index=False)
        record_manifest(run_root(EVALUATION_DIR), file_manifest(Path(tmp)))
        mlflow.log_artifacts(tmp, EVALUATION_DIR)


def register_and_decide(
    client: MlflowClient, model_uri: str, name: str, scored: Scored, min_delta: float, beat_strong: bool = False
) -> tuple[ModelVersion, ChampionDecision, dict[str, str]]:
    """Register the model, pass it through the gates, move the alias; nothing half-registered on failure."""
    run_id = mlflow.active_run().info.run_id
    value = scored.test_scores[scored.metric]
    version = mlflow.register_model(
        model_uri, name, tags={EVALUATE_RUN_TAG: run_id, f"test_{scored.metric}": f"{value:.6g}"}
    )
    try:  # nothing half-registered: a version that fails here is deleted again
        check_registered_model(f"models:/{name}/{version.version}", scored.model, scored.splits.test, scored.spec)
        # Read the champion, compare, move the alias: one at a time per model name (concurrent mains).
        with champion_lock(client, name) as lock:
            decision = decide_champion(
                client,
                name,
                metric=scored.metric,
                scores=scored.test_scores,
                baseline_scores=scored.baseline_scores,
                strong_scores=scored.strong_scores if beat_strong else None,
                thresholds=scored.thresholds,
                min_delta=min_delta,
                test=scored.splits.test,
                spec=scored.spec,
                challenger=Challenger(
                    scored.model, scored.splits_uri, pd.concat([scored.splits.train, scored.splits.validation])
                ),
            )
            gate_tags = {GATES_PASSED_TAG: str(decision.promote).lower()} | {
                f"gate.{gate.name}": gate.reason if gate.passed else f"failed: {gate.reason}" for gate in decision.gates
            }
            for tag, text in gate_tags.items():
                client.set_model_version_tag(name, version.version, tag, text)
            client.set_model_version_tag(name, version.version, "champion_decision", decision.reason)
            lock.check()  # the alias moves only while the lock is still this evaluate's
            client.set_registered_model_alias(name, CHAMPION if decision.promote else CHALLENGER, version.version)
    except BaseException as error:
        # Without a server the delete cannot happen either: the next main deletes the version (no gates tag).
        if not tracking_unreachable(error):
            client.delete_model_version(name, version.version)
        raise
    return version, decision, gate_tags


def log_importance(scored: Scored, seed: int, threads: int) -> pd.DataFrame:
    """Permutation importance of the raw input columns on the test rows: explanations/permutation_importance.csv
    and its bar chart; the table, for the card."""
    with threadpool_limits(limits=threads):  # the step's thread count, as its fits
        table = permutation_importance_table(scored.model, scored.splits.test, scored.spec, scored.metric, seed)
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp, IMPORTANCE_FILE), index=False)
        plot_importance(table, Path(tmp, IMPORTANCE_PLOT))
        mlflow.log_artifacts(tmp, EXPLANATIONS_DIR)
    return table


def log_outcome(
    client: MlflowClient,
    model_uri: str,
    splits_uri: str,
    scored: Scored,
    version: ModelVersion,
    decision: ChampionDecision,
    importance: pd.DataFrame | None = None,
) -> None:
    """The model card in the run, linked from the version (its tag) and summarised (its description); the run's
    card and description."""
    alias = CHAMPION if decision.promote else CHALLENGER
    gates = [(gate.name, gate.passed, gate.reason) for gate in decision.gates]
    registered = (version.name, str(version.version), alias, decision.reason)
    with tempfile.TemporaryDirectory(prefix="card-") as folder:  # removed also when a card step below fails
        card, plots = build_card(
            name=version.name,
            version=str(version.version),
            alias=alias,
            metric=scored.metric,
            model_uri=model_uri,
            splits_uri=splits_uri,
            spec=scored.spec,
            test_dataset=scored.test_dataset,
            comparison=scored.comparison,
            gates=gates,
            decision=decision.reason,
            evaluation_artifacts=scored.evaluation.artifacts,
            importance=importance,
            folder=Path(folder),
        )
        evaluate_card(scored, registered, gates, plots, card)
        evaluate_story(scored, registered, gates)
        log_card(card, plots)
    run_id = mlflow.active_run().info.run_id
    card_uri = artifact_uri(run_id, f"{CARD_DIR}/model_card.md")
    client.set_model_version_tag(version.name, version.version, "model_card", card_uri)
    client.update_model_version(version.name, version.version, description=card_summary(card))


def run_evaluate(
    model_uri: str,
    splits_uri: str,
    registered_model_name: str = DEFAULT_REGISTERED_MODEL_NAME,
    metric: str | None = None,
    gates: GateOptions | None = None,
    seed: int = 42,
    threads: int = 0,
) -> dict[str, Any]:
    """The whole step inside the active run; returns the registration outcome. `metric` None: the task's default.

    `threads` (0: this machine's cores) and `seed`: the strong baseline's fit.
    """
    check_model_name(registered_model_name)
    gates = gates or GateOptions()
    scored = score(model_uri, splits_uri, metric, gates, seed, threads)
    log_scores(scored)
    importance = log_importance(scored, seed, resolve_threads(threads))
    decisive = scored.comparison[scored.comparison.metric == scored.metric]  # the decision metric's row
    beats_baseline = bool(decisive["model_beats_baseline"].all())
    client = MlflowClient()
    version, decision, gate_tags = register_and_decide(
        client, model_uri, registered_model_name, scored, gates.min_delta, gates.beat_strong_baseline
    )
    outcome = {
        "registered_model.name": registered_model_name,
        "registered_model.version": str(version.version),
        "registered_model.champion": str(decision.promote).lower(),
        "registered_model.alias": CHAMPION if decision.promote else CHALLENGER,
        "champion.decision": decision.reason,
        "champion.previous_version": decision.previous_version or "",
        "metric": scored.metric,
        "beats_baseline": str(beats_baseline).lower(),
        "beats_strong_baseline": str(bool(decisive["model_beats_strong_baseline"].all())).lower(),
    } | gate_tags
    mlflow.set_tags(outcome | {OUTPUT_DIGEST_TAG: digest_json(outcome)})
    log_outcome(client, model_uri, splits_uri, scored, version, decision, importance)
    if not beats_baseline:
        logger.warning("the model does not beat the dummy baseline on test %s", scored.metric)
    logger.info(
        "test %s = %.4f (baseline %.4f, default HistGradientBoosting %.4f); registered %s v%s as @%s; %s",
        scored.metric,
        scored.test_scores[scored.metric],
        scored.baseline_scores.get(scored.metric, float("nan")),
        scored.strong_scores.get(scored.metric, float("nan")),
        registered_model_name,
        version.version,
        outcome["registered_model.alias"],
        decision.reason,
    )
    return outcome


@click.command()
@click.option("--model-uri", required=True, help="train's model, e.g. runs:/<train run>/model.")
@click.option("--splits-uri", required=True, help="featurize's artifact URI, e.g. runs:/<featurize run>/splits.")
@click.option("--registered-model-name", default=DEFAULT_REGISTERED_MODEL_NAME, show_default=True)
@click.option(
    "--metric",
    default="auto",
    callback=unset_is_none,
    help="The metric that decides the champion; auto: f1_macro or rmse.",
)
@gate_options
@click.option("--seed", default=42, type=INT)
@click.option("--threads", default=0, type=INT, help="Threads of the baselines' fits; 0: this machine's cores.")
def main(
    model_uri: str,
    splits_uri: str,
    registered_model_name: str,
    metric: str | None,
    seed: int,
    threads: int,
    **gates: Any,
) -> None:
    with step_run("evaluate"):
        run_evaluate(
            model_uri,
            splits_uri,
            registered_model_name=registered_model_name,
            metric=metric,
            gates=GateOptions.from_cli(gates),
            seed=seed,
            threads=threads,
        )


if __name__ == "__main__":
    run_cli(main, "evaluate")

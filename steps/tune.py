"""Step `tune`: hyperopt TPE search over the model families, each trial a nested run in this process."""

from __future__ import annotations

import itertools
import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import mlflow
import numpy as np
import pandas as pd
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, hp, tpe
from hyperopt.pyll import scope
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from steps.common import (
    DEFAULT_DATA_URI,
    INT,
    MODEL_FAMILIES,
    OUTPUT_DIGEST_TAG,
    PARENT_TAG,
    RUN_NAME_TAG,
    STEP_TAG,
    FeatureSpec,
    PipelineError,
    Splits,
    artifact_uri,
    digest_json,
    fit_model,
    hyperparam_params,
    latest_finished_step_run,
    metric_loss,
    one_line,
    read_splits,
    resolve_metric,
    run_cli,
    score_model,
    step_run,
    write_json,
)

logger = logging.getLogger("steps.tune")


def family_space(name: str) -> dict[str, Any]:
    """Each family's search ranges: log-uniform for strengths and rates, integers for sizes."""
    log = math.log
    spaces: dict[str, dict[str, Any]] = {
        "logistic_regression": {"C": hp.loguniform("logistic_regression.C", log(1e-3), log(1e3))},
        "ridge": {"alpha": hp.loguniform("ridge.alpha", log(1e-4), log(1e3))},
        "random_forest": {
            "n_estimators": scope.int(hp.quniform("random_forest.n_estimators", 50, 300, 25)),
            "max_depth": hp.choice(
                "random_forest.max_depth",
                [None, scope.int(hp.quniform("random_forest.max_depth_limit", 2, 20, 1))],
            ),
            "min_samples_leaf": scope.int(hp.quniform("random_forest.min_samples_leaf", 1, 10, 1)),
            "max_features": hp.uniform("random_forest.max_features", 0.2, 1.0),
        },
        "hist_gradient_boosting": {
            "learning_rate": hp.loguniform("hist_gradient_boosting.learning_rate", log(0.01), log(0.5)),
            "max_iter": scope.int(hp.quniform("hist_gradient_boosting.max_iter", 50, 300, 25)),
            "max_leaf_nodes": scope.int(hp.quniform("hist_gradient_boosting.max_leaf_nodes", 4, 64, 1)),
            "min_samples_leaf": scope.int(hp.quniform("hist_gradient_boosting.min_samples_leaf", 2, 40, 1)),
            "l2_regularization": hp.loguniform("hist_gradient_boosting.l2_regularization", log(1e-6), log(10.0)),
        },
    }
    return spaces[name]


def build_search_space(task: str) -> Any:
    """One conditional space: first the family, then that family's hyperparameters."""
    families = [name for name, family in MODEL_FAMILIES.items() if task in family.tasks]
    return hp.choice("model", [{"model": name, **family_space(name)} for name in families])


TrialLogger = Callable[[int, dict[str, str], dict[str, float], str], str]


def run_search(
    splits: Splits,
    spec: FeatureSpec,
    metric: str,
    max_evals: int,
    seed: int,
    log_trial: TrialLogger | None = None,
    show_progress: bool = False,
) -> Trials:
    """TPE search; every trial fits on train and scores `metric` on validation, in this process."""
    if max_evals < 1:
        raise PipelineError(f"max_evals must be at least 1; got {max_evals}")

    counter = itertools.count()

    def objective(sample: dict[str, Any]) -> dict[str, Any]:
        number = next(counter)
        family = MODEL_FAMILIES[sample["model"]]
        hyperparams = family.resolve({k: v for k, v in sample.items() if k != "model"})
        params = hyperparam_params(family, hyperparams)
        started = time.perf_counter()
        try:
            scores = score_model(fit_model(splits, spec, family, hyperparams, seed), splits.validation, spec)
        except Exception as error:  # a failed configuration is a failed trial, not a failed search
            if log_trial:
                log_trial(number, params, {}, "FAILED")
            return {"status": STATUS_FAIL, "error": one_line(str(error), 200)}
        if metric not in scores:
            if log_trial:
                log_trial(number, params, scores, "FAILED")
            return {"status": STATUS_FAIL, "error": f"{metric} undefined on the validation rows"}
        value = scores[metric]
        loss = metric_loss(metric, value)
        run_id = ""
        if log_trial:
            metrics = {f"val_{k}": v for k, v in scores.items()} | {
                "loss": loss,
                "fit_seconds": time.perf_counter() - started,
            }
            run_id = log_trial(number, params, metrics, "FINISHED")
        return {
            "status": STATUS_OK,
            "loss": loss,
            "value": value,
            "model": family.name,
            "params": hyperparams,
            "run_id": run_id,
        }

    trials = Trials()
    fmin(
        objective,
        build_search_space(spec.task),
        algo=tpe.suggest,
        max_evals=max_evals,
        trials=trials,
        rstate=np.random.default_rng(seed),
        show_progressbar=show_progress,
    )
    if not any(result.get("status") == STATUS_OK for result in trials.results):
        errors = {result.get("error") for result in trials.results}
        raise PipelineError(f"all {len(trials.trials)} trials failed: {'; '.join(map(str, errors))}")
    return trials


def best_result(trials: Trials) -> dict[str, Any]:
    """The best successful trial (the earliest one on ties)."""
    return trials.best_trial["result"]


def leaderboard(trials: Trials, metric: str) -> pd.DataFrame:
    """All trials, best first."""
    rows = []
    for number, result in enumerate(trials.results):
        row = {
            "trial": number + 1,
            "status": result.get("status"),
            "run_id": result.get("run_id", ""),
            "model": result.get("model", ""),
            metric: result.get("value"),
            "loss": result.get("loss"),
            "params": str(result.get("params", "")),
            "error": result.get("error", ""),
        }
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["loss", "trial"], na_position="last").reset_index(drop=True)


def nested_trial_logger(client: MlflowClient, experiment_id: str, parent_run_id: str) -> TrialLogger:
    """Log each trial as a child run of the tune run: create, one batch, terminate."""

    def log_trial(number: int, params: dict[str, str], metrics: dict[str, float], status: str) -> str:
        run = client.create_run(
            experiment_id,
            tags={PARENT_TAG: parent_run_id, STEP_TAG: "trial", RUN_NAME_TAG: f"trial-{number + 1:03d}"},
        )
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag("trial", str(number + 1))],
        )
        client.set_terminated(run.info.run_id, status=status)
        return run.info.run_id

    return log_trial


def prepare_default_splits(seed: int) -> str:
    """No featurize output in the experiment yet: load and featurize the embedded data set here."""
    from steps.featurize import run_featurize
    from steps.load import run_load

    logger.info("no finished featurize run in this experiment: preparing %s first", DEFAULT_DATA_URI)
    with step_run("load", nested=True) as load_run:
        run_load(DEFAULT_DATA_URI, "auto")
    with step_run("featurize", nested=True) as featurize_run:
        run_featurize(artifact_uri(load_run.info.run_id, "data"), "auto", seed, 0.2, 0.2)
    return artifact_uri(featurize_run.info.run_id, "splits")


def find_splits_uri(experiment_id: str, seed: int) -> str:
    """The newest finished featurize output of the experiment, or a fresh one of the default data."""
    run = latest_finished_step_run(experiment_id, "featurize")
    if run is not None:
        uri = artifact_uri(run.info.run_id, "splits")
        logger.info("using the newest finished featurize output: %s", uri)
        return uri
    return prepare_default_splits(seed)


def run_tune(splits_uri: str, max_evals: int, metric: str, seed: int) -> dict[str, Any]:
    """The whole step inside the active run; returns the best-params payload."""
    if max_evals < 1:
        raise PipelineError(f"max_evals must be at least 1; got {max_evals}")
    active = mlflow.active_run()
    if splits_uri in ("", "auto"):
        splits_uri = find_splits_uri(active.info.experiment_id, seed)
        mlflow.set_tag("splits_uri", splits_uri)
    splits, spec = read_splits(splits_uri)
    metric = resolve_metric(metric, spec.task)
    log_trial = nested_trial_logger(MlflowClient(), active.info.experiment_id, active.info.run_id)
    started = time.perf_counter()
    trials = run_search(splits, spec, metric, max_evals, seed, log_trial, show_progress=True)
    best = best_result(trials)
    payload = {
        "model": best["model"],
        "params": best["params"],
        "metric": metric,
        "value": best["value"],
        "best_trial_run_id": best["run_id"],
        "splits_uri": splits_uri,
    }
    n_failed = sum(result.get("status") != STATUS_OK for result in trials.results)
    best_family = MODEL_FAMILIES[best["model"]]
    with tempfile.TemporaryDirectory() as tmp:
        write_json(Path(tmp, "best_params.json"), payload)
        leaderboard(trials, metric).to_csv(Path(tmp, "trials.csv"), index=False)
        mlflow.log_metrics(
            {
                f"best_val_{metric}": best["value"],
                "best_loss": best["loss"],
                "n_trials": len(trials.trials),
                "n_failed_trials": n_failed,
                "search_seconds": time.perf_counter() - started,
            }
        )
        mlflow.set_tags(
            {"best_trial_run_id": best["run_id"], "metric": metric, "task": spec.task}
            | {f"best.{k}": v for k, v in hyperparam_params(best_family, best["params"]).items()}
        )
        mlflow.log_artifact(str(Path(tmp, "trials.csv")))
        mlflow.log_artifact(str(Path(tmp, "best_params.json")))
    # What train consumes from the file; run ids inside it differ from one run to the next.
    mlflow.set_tag(OUTPUT_DIGEST_TAG, digest_json({k: payload[k] for k in ("model", "params", "metric")}))
    logger.info(
        "best of %d trials: %s %s, val %s = %.4f",
        len(trials.trials),
        best["model"],
        best["params"],
        metric,
        best["value"],
    )
    return payload


@click.command()
@click.option("--splits-uri", default="auto", help="featurize's artifact URI; auto: the newest in the experiment.")
@click.option("--max-evals", default=20, type=INT, show_default=True)
@click.option("--metric", default="auto", help="accuracy, f1_macro, roc_auc_ovr, log_loss, rmse, mae, r2 or auto.")
@click.option("--seed", default=42, type=INT)
def main(splits_uri: str, max_evals: int, metric: str, seed: int) -> None:
    with step_run("tune"):
        run_tune(splits_uri, max_evals, metric, seed)


if __name__ == "__main__":
    run_cli(main, "tune")

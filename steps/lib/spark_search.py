"""tune's `backend=spark`: hyperopt's SparkTrials runs each trial as a Spark task.

The driver (the tune run's process) asks hyperopt for configurations; each one is evaluated in a
Spark executor, which reads the splits from a broadcast variable (sent once per executor, not once
per trial) and logs the trial as a child run of the tune run, straight to the tracking server.
pyspark is an optional extra: `pip install -r requirements-spark.txt`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
from hyperopt import JOB_STATE_DONE, STATUS_FAIL, Trials, fmin, space_eval
from hyperopt.early_stop import no_progress_loss
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from steps.lib.errors import one_line
from steps.lib.features import FeatureSpec
from steps.lib.names import RUN_NAME_TAG, TRIAL_TAG
from steps.lib.search import SearchOutcome, check_some_trial_succeeded, log_result, seed_sequence, trial_settings
from steps.lib.search_options import SearchConfig
from steps.lib.search_results import trials_from_records
from steps.lib.search_space import search_setup
from steps.lib.spark import absolute_tracking_uri, ship_steps_package, spark_session
from steps.lib.splits import Splits
from steps.lib.trial_logger import nested_trial_logger
from steps.lib.trials import evaluate_sample

logger = logging.getLogger("steps.tune")


def make_objective(data: Any, tracking_uri: str | None, experiment_id: str, parent_run_id: str) -> Any:
    """What one Spark task runs: evaluate the sample on the broadcast splits, log it as a child run."""

    def objective(sample: dict[str, Any]) -> dict[str, Any]:
        splits, spec, config = data.value
        result = evaluate_sample(splits, spec, sample, trial_settings(config))
        if tracking_uri is not None:
            log_trial = nested_trial_logger(MlflowClient(tracking_uri), experiment_id, parent_run_id)
            result["run_id"] = log_result(log_trial, None, result, config.metric)
        return result

    return objective


def run_spark_search(
    splits: Splits,
    spec: FeatureSpec,
    config: SearchConfig,
    master: str | None = None,
    log_runs: bool = True,
    show_progress: bool = False,
    previous: Trials | None = None,
) -> SearchOutcome:
    """hyperopt's fmin over SparkTrials; returns the same outcome as the local search."""
    from hyperopt import SparkTrials

    setup = search_setup(spec, config, previous)
    session = spark_session(master)
    ship_steps_package(session)
    data = session.sparkContext.broadcast((splits, spec, config))
    tracking_uri = experiment_id = parent_run_id = None
    active = mlflow.active_run()
    if log_runs and active is not None:
        tracking_uri = absolute_tracking_uri(mlflow.get_tracking_uri())
        experiment_id, parent_run_id = active.info.experiment_id, active.info.run_id
    options = config.options
    parallel = options.parallelism or None  # 0: SparkTrials' own choice (the cluster's cores)
    trials = SparkTrials(parallelism=parallel, timeout=options.timeout, spark_session=session)
    if previous is not None:
        trials.insert_trial_docs(previous.trials)
        trials.refresh()
    rng = seed_sequence(config.seed, setup.done_before)
    started = time.monotonic()
    fmin(
        make_objective(data, tracking_uri, experiment_id or "", parent_run_id or ""),
        setup.space,
        setup.suggest,
        setup.target,
        trials=trials,
        rstate=rng,
        max_queue_len=trials.parallelism,
        early_stop_fn=no_progress_loss(options.early_stop_rounds) if options.early_stop_rounds else None,
        show_progressbar=show_progress,
        return_argmin=False,  # all trials may have failed: reported below, in one line
    )
    data.unpersist()
    finished = collect_trials(trials, setup.space, config.metric)
    if tracking_uri is not None:
        name_trial_runs(MlflowClient(tracking_uri), finished, setup.done_before)
    reason = trials.fmin_cancelled_reason or ""
    stopped_by = setup.stopped_by
    if "timeout" in reason:
        stopped_by = "timeout"
    elif "early stop" in reason:
        stopped_by = "early_stop"
    logger.info("Spark search: %d trials in %.1f s", len(finished.trials), time.monotonic() - started)
    check_some_trial_succeeded(finished)
    return SearchOutcome(finished, stopped_by, len(finished.trials) - setup.done_before)


def collect_trials(spark_trials: Any, space: Any, metric: str) -> Trials:
    """The search as plain Trials, in trial-id order: results as the local search records them.

    A trial whose Spark task failed (or was cancelled by the timeout) becomes a failed trial with the
    task's error, so the leaderboard shows it.
    """
    records = []
    # `trials` leaves out the errored and cancelled ones; the full list is kept in `_dynamic_trials`.
    for doc in sorted(spark_trials._dynamic_trials, key=lambda d: d["tid"]):
        result = dict(doc.get("result") or {})
        if doc["state"] != JOB_STATE_DONE or "model" not in result:
            sample = space_eval(space, {k: v[0] for k, v in doc["misc"]["vals"].items() if v})
            error = doc["misc"].get("error") or ("", "the Spark task did not finish")
            result = {
                "status": STATUS_FAIL,
                "model": sample.get("model", ""),
                "params": {k: v for k, v in sample.items() if k != "model"},
                "scores": {},
                "error": one_line(str(error[1]).strip().splitlines()[-1] if error[1] else str(error[0]), 200),
            }
        result["trial"] = doc["tid"] + 1
        result.setdefault("run_id", "")
        records.append({"tid": doc["tid"], "idxs": doc["misc"]["idxs"], "vals": doc["misc"]["vals"], "result": result})
    return trials_from_records(records)


def name_trial_runs(client: MlflowClient, trials: Trials, done_before: int) -> None:
    """Executors cannot know the trial number hyperopt gave their task: name the new child runs now."""
    for result in trials.results[done_before:]:
        if result.get("run_id"):
            number = result["trial"]
            client.log_batch(
                result["run_id"], tags=[RunTag(TRIAL_TAG, str(number)), RunTag(RUN_NAME_TAG, f"trial-{number:03d}")]
            )

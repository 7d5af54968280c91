"""Step `tune`: hyperopt search over the model families; each trial a nested run, evaluated in process.

The search itself lives in steps/lib (space, loop, results, the Spark backend); this module reads
the splits (or, on a fresh store, prepares the default data by running load and featurize nested
here), runs the search, and logs what it found.
"""

from __future__ import annotations

import logging
import tempfile
import time
import urllib.parse
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import mlflow
from hyperopt import STATUS_OK, Trials
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from steps.lib.artifacts import digest_json, write_json
from steps.lib.errors import PipelineError
from steps.lib.features import FeatureSpec
from steps.lib.metrics import resolve_metric
from steps.lib.models import MODEL_FAMILIES, hyperparam_params, resolve_threads
from steps.lib.names import (
    BEST_PARAMS,
    DATA_DIR,
    FIGURES_DIR,
    LEADERBOARD,
    OUTPUT_DIGEST_TAG,
    SPLITS_DIR,
    STEP_TAG,
    TRIALS_FILE,
)
from steps.lib.runner import INT, run_cli, step_run, unset_is_none
from steps.lib.search import (
    SearchOutcome,
    StartedWorkers,
    best_result,
    run_search,
    started_workers,
    workers_to_start_early,
)
from steps.lib.search_options import SearchConfig, TuneOptions, effective_parallelism, tune_options
from steps.lib.search_results import leaderboard, load_previous_search, plot_search, trials_to_records
from steps.lib.search_space import grid_points, task_families
from steps.lib.signing import file_manifest, record_manifest, run_root
from steps.lib.splits import Splits, describe_scoring, read_splits, sample_rows
from steps.lib.step_cards import tune_card
from steps.lib.story import tune_story
from steps.lib.tables import DEFAULT_DATA_URI
from steps.lib.trial_logger import TrialLogProcess, nested_trial_logger
from steps.lib.uris import artifact_uri

logger = logging.getLogger("steps.tune")
LOG_PROCESS_MIN_EVALS = 10  # from here on, trials are logged by a separate process (its ~3 s start overlaps)
# Stores whose writes take no network round trip: a logger process does not pay for its start-up there (iris,
# SQLite, 20 and 60 evals: the same wall time, ~4-5 s more CPU; over HTTP 60 evals took 19.5 s against 27 s).
LOCAL_STORE_SCHEMES = ("", "file", "sqlite")


@dataclass
class TuneInputs:
    """What the search runs on: the splits, their URI, and the search it continues (if any)."""

    splits: Splits
    spec: FeatureSpec
    splits_uri: str
    metric: str
    previous: Trials | None


# --------------------------------------------------------------------------- reading


def prepare_default_splits(seed: int) -> str:
    """No featurize output in the experiment yet: load and featurize the embedded data set here."""
    from steps.featurize import run_featurize
    from steps.load import run_load

    logger.info("no finished featurize run in this experiment: preparing %s first", DEFAULT_DATA_URI)
    with step_run("load", nested=True) as load_run:
        run_load(DEFAULT_DATA_URI)
    with step_run("featurize", nested=True) as featurize_run:
        run_featurize(artifact_uri(load_run.info.run_id, DATA_DIR), seed=seed)
    return artifact_uri(featurize_run.info.run_id, SPLITS_DIR)


def latest_finished_step_run(experiment_id: str, step: str) -> Run | None:
    """The newest FINISHED run of a step in the experiment, or None."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{STEP_TAG}` = '{step}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def find_splits_uri(experiment_id: str, seed: int) -> str:
    """The newest finished featurize output of the experiment, or a fresh one of the default data."""
    run = latest_finished_step_run(experiment_id, "featurize")
    if run is not None:
        uri = artifact_uri(run.info.run_id, SPLITS_DIR)
        logger.info("using the newest finished featurize output: %s", uri)
        return uri
    return prepare_default_splits(seed)


def read_inputs(splits_uri: str | None, metric: str | None, seed: int, resume_from: str | None) -> TuneInputs:
    """The splits to search on and the metric; a resumed search brings its own splits, metric and trials."""
    previous_run = previous = None
    if resume_from is not None:
        previous_run, previous = load_previous_search(MlflowClient(), resume_from)
        splits_uri = splits_uri or previous_run.data.tags.get("splits_uri")
        metric = metric or previous_run.data.tags.get("metric")
        mlflow.set_tags({"resumed_from": resume_from, "resumed_trials": str(len(previous.trials))})
    splits_uri = splits_uri or find_splits_uri(mlflow.active_run().info.experiment_id, seed)
    mlflow.set_tag("splits_uri", splits_uri)
    splits, spec = read_splits(splits_uri, parts=("train", "validation"))  # never the test rows
    metric = resolve_metric(metric, spec.task)
    if previous_run is not None and metric != previous_run.data.tags.get("metric"):
        raise PipelineError(
            f"resume_from '{resume_from}' optimised {previous_run.data.tags.get('metric')}, not {metric}; "
            "resume with the same metric"
        )
    return TuneInputs(splits, spec, splits_uri, metric, previous)


# --------------------------------------------------------------------------- searching


def note_grid(config: SearchConfig) -> None:
    """How much of the grid max_evals lets the search walk, as a tag and a log line."""
    size, max_evals = len(grid_points(list(config.families))), config.options.max_evals
    note = (
        f"grid of {size} points; max_evals={max_evals} caps it"
        if max_evals < size
        else f"grid of {size} points, all tried (max_evals={max_evals} is not reached)"
    )
    logger.info(note)
    mlflow.set_tags({"grid.size": str(size), "grid.note": note})


def search(
    inputs: TuneInputs,
    config: SearchConfig,
    spark_master: str | None,
    cleanup: ExitStack,
    early_workers: StartedWorkers | None = None,
) -> SearchOutcome:
    """The search on the chosen backend, its trials logged as child runs of the active run.

    Trials fitted one at a time here: from LOG_PROCESS_MIN_EVALS trials on, into a store reached over the
    network (an `mlflow server`, a database server), a logger process logs them on the other core (it lives
    until `cleanup` ends); into a local store (SQLite, files) this process logs them, ~36 ms a trial. Trials
    side by side (parallelism > 1: one on a thread here, the others in worker processes; or trial_timeout: all
    in workers): this process's main thread only waits, so it logs them itself (~36 ms a trial on SQLite,
    beside one trial's fit); a logger process would take a core's worth of start-up (MLflow) from the trials.
    """
    if config.options.backend == "spark":
        from steps.lib.spark_search import run_spark_search

        return run_spark_search(
            inputs.splits, inputs.spec, config, spark_master, show_progress=True, previous=inputs.previous
        )
    active = mlflow.active_run()
    ids = (active.info.experiment_id, active.info.run_id)
    log_process = None
    fitted_here = config.options.parallelism == 1 and config.options.trial_timeout is None
    if config.options.max_evals >= LOG_PROCESS_MIN_EVALS and fitted_here and store_over_network():
        log_process = cleanup.enter_context(closing(TrialLogProcess(mlflow.get_tracking_uri(), *ids)))
    log_trial = log_process or nested_trial_logger(MlflowClient(), *ids)
    return run_search(
        inputs.splits,
        inputs.spec,
        config,
        log_trial,
        show_progress=True,
        previous=inputs.previous,
        early_workers=early_workers,
    )


def store_over_network(tracking_uri: str | None = None) -> bool:
    """Whether the tracking store's writes cross a network (http(s), databricks, a database server), where
    each trial's three calls wait on round trips; not for SQLite or a file store (None: the current one)."""
    from mlflow.utils.uri import is_databricks_uri

    uri = tracking_uri or mlflow.get_tracking_uri()
    scheme = urllib.parse.urlsplit(uri).scheme.lower().split("+")[0]
    return is_databricks_uri(uri) or (scheme not in LOCAL_STORE_SCHEMES and len(scheme) > 1)  # C: is a path


# --------------------------------------------------------------------------- logging


def log_search(
    outcome: SearchOutcome,
    inputs: TuneInputs,
    seconds: float,
    at_once: str = "",
) -> dict[str, Any]:
    """The best params, the trial records, the leaderboard, the figures, the summary metrics and tags, the card
    and the run's description (`at_once`: how the trials ran, in words).
    """
    trials, metric = outcome.trials, inputs.metric
    best = best_result(trials)
    failed = sum(result.get("status") != STATUS_OK for result in trials.results)
    payload = {
        "model": best["model"],
        "params": best["params"],
        "metric": metric,
        "value": best["value"],
        "best_trial_run_id": best["run_id"],
        "splits_uri": inputs.splits_uri,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_json(out / BEST_PARAMS, payload)
        write_json(out / TRIALS_FILE, trials_to_records(trials))
        board = leaderboard(trials, metric)
        board.to_csv(out / LEADERBOARD, index=False)
        (out / FIGURES_DIR).mkdir()
        plot_search(trials.results, metric, out / FIGURES_DIR)
        mlflow.log_metrics(
            {
                f"best_val_{metric}": best["value"],
                "best_loss": best["loss"],
                "n_trials": len(trials.trials),
                "n_new_trials": outcome.new_trials,
                "n_failed_trials": failed,
                "search_seconds": seconds,
            }
        )
        best_params = hyperparam_params(MODEL_FAMILIES[best["model"]], best["params"])
        mlflow.set_tags(
            {
                "best_trial_run_id": best["run_id"],
                "best_trial": str(best["trial"]),
                "metric": metric,
                "task": inputs.spec.task,
                "stopped_by": outcome.stopped_by,
            }
            | {f"best.{k}": v for k, v in best_params.items()}
        )
        mlflow.log_artifacts(str(out / FIGURES_DIR), FIGURES_DIR)
        for name in (LEADERBOARD, TRIALS_FILE, BEST_PARAMS):
            mlflow.log_artifact(str(out / name))
        record_manifest(run_root(), file_manifest(out, [TRIALS_FILE, BEST_PARAMS]))  # what train and resume read
        facts = [("trials", len(trials.trials)), ("failed", failed), ("stopped by", outcome.stopped_by)]
        tune_card(board.head(50), out / FIGURES_DIR, best, metric, [*facts, ("best trial", best["trial"])])
    tune_story(best, metric, len(trials.trials), failed, outcome.stopped_by, at_once)
    # What train consumes from the file; run ids inside it differ from one run to the next.
    mlflow.set_tag(OUTPUT_DIGEST_TAG, digest_json({k: payload[k] for k in ("model", "params", "metric")}))
    return payload


def sample_for_trials(inputs: TuneInputs, most: int, seed: int) -> TuneInputs:
    """Trials fit on at most `most` training rows (a seeded, stratified sample); train refits on all of them."""
    rows = len(inputs.splits.train)
    sampled = sample_rows(inputs.splits.train, inputs.spec, most, seed)
    mlflow.log_metrics({"n_train_rows": rows, "n_tune_rows": len(sampled)})
    if len(sampled) < rows:
        logger.info("trials fit on a sample of %d of the %d training rows (max_tune_rows)", len(sampled), rows)
    return replace(inputs, splits=Splits(sampled, inputs.splits.validation, inputs.splits.test))


def run_tune(
    splits_uri: str | None = None,
    options: TuneOptions | None = None,
    seed: int = 42,
    resume_from: str | None = None,
    spark_master: str | None = None,
) -> dict[str, Any]:
    """The whole step inside the active run; returns the best-params payload.

    `splits_uri` None: the newest featurize output of the experiment (or the default data, prepared here);
    `resume_from`: a tune run whose search to continue; `spark_master` None: Spark's own choice.
    """
    options = options or TuneOptions()
    options.check()
    with ExitStack() as early:
        started = None
        if options.backend == "local" and options.trial_timeout is None:
            count = workers_to_start_early(options.parallelism, resolve_threads(0))
            started = early.enter_context(started_workers(count)) if count else None
        return tune_with(splits_uri, options, seed, resume_from, spark_master, started)


def tune_with(
    splits_uri: str | None,
    options: TuneOptions,
    seed: int,
    resume_from: str | None,
    spark_master: str | None,
    early_workers: StartedWorkers | None,
) -> dict[str, Any]:
    """run_tune's work, with the worker processes it may have started already."""
    inputs = read_inputs(splits_uri, options.metric, seed, resume_from)
    inputs = sample_for_trials(inputs, options.max_tune_rows, seed)
    if options.backend == "local":  # resolved once here: run_search and search() see the number of workers
        workers = effective_parallelism(options.parallelism, len(inputs.splits.train), resolve_threads(0))
        if options.parallelism and workers < options.parallelism:
            logger.warning("parallelism %d capped at %d: one trial per core", options.parallelism, workers)
        mlflow.set_tag("parallelism.effective", str(workers))
        options = replace(options, parallelism=workers)
    families = tuple(task_families(inputs.spec.task, options.models))
    config = SearchConfig(metric=inputs.metric, seed=seed, families=families, options=options)
    if options.algo == "grid":
        note_grid(config)
    started = time.perf_counter()
    mlflow.set_tags({"backend": options.backend, "scored_on": describe_scoring(inputs.spec, options.cv_folds)})
    with ExitStack() as cleanup:  # the logger process, if there is one, ends with this step
        outcome = search(inputs, config, spark_master, cleanup, early_workers)
        at_once = (
            f"{options.parallelism} at a time"
            if options.backend == "local"
            else f"on Spark ({spark_master or 'local'})"
        )
        best = log_search(outcome, inputs, time.perf_counter() - started, at_once)
    logger.info(
        "best of %d trials (stopped by %s): %s %s, %s = %.4f",
        len(outcome.trials.trials),
        outcome.stopped_by,
        best["model"],
        best["params"],
        inputs.metric,
        best["value"],
    )
    return best


@click.command()
@click.option(
    "--splits-uri",
    default="auto",
    callback=unset_is_none,
    help="featurize's artifact URI; auto: the newest in the experiment.",
)
@tune_options
@click.option("--seed", default=42, type=INT)
@click.option("--resume-from", default="none", callback=unset_is_none, help="A tune run id whose search to continue.")
@click.option(
    "--spark-master",
    default="auto",
    callback=unset_is_none,
    help="backend=spark: a Spark master URL; auto: Spark's own choice.",
)
def main(splits_uri: str | None, seed: int, resume_from: str | None, spark_master: str | None, **options: Any) -> None:
    with step_run("tune"):
        run_tune(
            splits_uri,
            options=TuneOptions.from_cli(options),
            seed=seed,
            resume_from=resume_from,
            spark_master=spark_master,
        )


if __name__ == "__main__":
    run_cli(main, "tune")

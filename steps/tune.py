"""Step `tune`: hyperopt search over the model families; each trial a nested run, evaluated in process."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import mlflow
import numpy as np
import pandas as pd
from hyperopt import JOB_STATE_DONE, STATUS_FAIL, STATUS_OK, Trials, anneal, hp, rand, space_eval, tpe
from hyperopt.base import Domain
from hyperopt.early_stop import no_progress_loss
from hyperopt.pyll import scope
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from steps.common import (
    CLASSIFICATION,
    DEFAULT_DATA_URI,
    INT,
    MODEL_FAMILIES,
    OUTPUT_DIGEST_TAG,
    STEP_TAG,
    FeatureSpec,
    PipelineError,
    Splits,
    artifact_uri,
    check_metric_name,
    digest_json,
    download_dir,
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
from steps.trial_logger import TrialLogger, TrialLogProcess, nested_trial_logger

logger = logging.getLogger("steps.tune")
ALGOS = ("tpe", "random", "anneal", "grid")
BACKENDS = ("local", "spark")
LOG_PROCESS_MIN_EVALS = 10
TRIALS_FILE = "trials.json"


# --------------------------------------------------------------------------- the search space


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


# The discrete grid of `algo=grid`, one family at a time (the classic one-run-per-combination sweep).
FAMILY_GRIDS: dict[str, dict[str, list[Any]]] = {
    "logistic_regression": {"C": [0.01, 0.1, 1.0, 10.0, 100.0]},
    "ridge": {"alpha": [0.01, 0.1, 1.0, 10.0, 100.0]},
    "random_forest": {"n_estimators": [100, 300], "max_depth": [None, 5, 10], "min_samples_leaf": [1, 5]},
    "hist_gradient_boosting": {
        "learning_rate": [0.03, 0.1, 0.3],
        "max_leaf_nodes": [15, 31],
        "min_samples_leaf": [5, 20],
    },
}


def task_families(task: str, models: str = "all") -> list[str]:
    """The families to search: all that fit the task, or the comma-separated ones asked for."""
    fitting = [name for name, family in MODEL_FAMILIES.items() if task in family.tasks]
    if models.strip().lower() in ("", "all", "auto"):
        return fitting
    chosen = [name.strip() for name in models.split(",") if name.strip()]
    for name in chosen:
        if name not in MODEL_FAMILIES:
            raise PipelineError(f"unknown model family '{name}' in models; use any of {', '.join(fitting)}")
        if name not in fitting:
            raise PipelineError(f"model family '{name}' does not fit a {task} task; use any of {', '.join(fitting)}")
    return list(dict.fromkeys(chosen))


def build_search_space(task: str, families: list[str] | None = None) -> Any:
    """One conditional space: first the family, then that family's hyperparameters."""
    names = families or task_families(task)
    return hp.choice("model", [{"model": name, **family_space(name)} for name in names])


def grid_points(families: list[str]) -> list[dict[str, Any]]:
    """Every combination of the families' grids, family by family."""
    points = []
    for name in families:
        grid = FAMILY_GRIDS[name]
        for values in itertools.product(*grid.values()):
            points.append({"model": name, **dict(zip(grid, values, strict=True))})
    return points


def grid_suggest(new_ids: list[int], domain: Domain, trials: Trials, seed: int) -> list[dict[str, Any]]:
    """A hyperopt algorithm that walks the grid in trial-id order (a resumed search continues the ids)."""
    docs = []
    for new_id in new_ids:
        misc = {
            "tid": new_id,
            "cmd": domain.cmd,
            "workdir": domain.workdir,
            "idxs": {"grid_point": [new_id]},
            "vals": {"grid_point": [new_id]},
        }
        docs.extend(trials.new_trial_docs([new_id], [None], [domain.new_result()], [misc]))
    return docs


# --------------------------------------------------------------------------- one trial


@dataclass(frozen=True)
class SearchConfig:
    """What the search optimises and how."""

    metric: str
    max_evals: int
    seed: int
    families: tuple[str, ...]
    algo: str = "tpe"
    early_stop_rounds: int = 0
    timeout: float | None = None
    cv_folds: int = 0
    parallelism: int = 1


def cross_validated_scores(
    splits: Splits, spec: FeatureSpec, family: Any, hyperparams: dict[str, Any], seed: int, folds: int
) -> dict[str, float]:
    """Mean of each metric over `folds` folds of the training split (stratified for classification)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = (StratifiedKFold if spec.task == CLASSIFICATION else KFold)(folds, shuffle=True, random_state=seed)
    train = splits.train
    per_fold = []
    for fit_rows, score_rows in splitter.split(train, train[spec.target]):
        fold = Splits(train.iloc[fit_rows], train.iloc[score_rows], splits.test)
        per_fold.append(score_model(fit_model(fold, spec, family, hyperparams, seed), fold.validation, spec))
    common = set.intersection(*(set(scores) for scores in per_fold))
    return {name: float(np.mean([scores[name] for scores in per_fold])) for name in sorted(common)}


def evaluate_sample(splits: Splits, spec: FeatureSpec, sample: dict[str, Any], config: SearchConfig) -> dict[str, Any]:
    """Fit and score one configuration; a failure is a failed trial, not a failed search."""
    family = MODEL_FAMILIES[sample["model"]]
    hyperparams = family.resolve({k: v for k, v in sample.items() if k != "model"})
    started = time.perf_counter()
    outcome: dict[str, Any] = {"model": family.name, "params": hyperparams}
    try:
        if config.cv_folds >= 2:
            scores = cross_validated_scores(splits, spec, family, hyperparams, config.seed, config.cv_folds)
        else:
            scores = score_model(fit_model(splits, spec, family, hyperparams, config.seed), splits.validation, spec)
    except Exception as error:
        return outcome | {
            "status": STATUS_FAIL,
            "error": one_line(str(error), 200),
            "scores": {},
            "seconds": time.perf_counter() - started,
        }
    outcome |= {"scores": scores, "seconds": time.perf_counter() - started}
    if config.metric not in scores:
        return outcome | {"status": STATUS_FAIL, "error": f"{config.metric} undefined on the scoring rows"}
    value = scores[config.metric]
    return outcome | {"status": STATUS_OK, "value": value, "loss": metric_loss(config.metric, value)}


_WORKER: dict[str, Any] = {}


def _start_worker(splits: Splits, spec: FeatureSpec, config: SearchConfig, parent: int) -> None:
    """Each worker process receives the data once, not once per trial; it ends when tune does, even by kill -9."""
    _WORKER.update(splits=splits, spec=spec, config=config)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="watch-parent", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A pool worker waits for work forever: when its tune process is gone, end it (no orphans)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _evaluate_in_worker(sample: dict[str, Any]) -> dict[str, Any]:
    return evaluate_sample(_WORKER["splits"], _WORKER["spec"], sample, _WORKER["config"])


# --------------------------------------------------------------------------- the search loop


@dataclass
class SearchOutcome:
    trials: Trials
    stopped_by: str  # "max_evals", "grid", "early_stop" or "timeout"
    new_trials: int


@dataclass(frozen=True)
class SearchSetup:
    """What both backends derive from the config: the space, the algorithm and how many trials in all."""

    space: Any
    suggest: Callable[..., Any]
    target: int  # trials in all, those of a resumed search included
    done_before: int
    stopped_by: str  # what ends the search if nothing stops it early: "max_evals" or "grid"


def search_setup(spec: FeatureSpec, config: SearchConfig, previous: Trials | None) -> SearchSetup:
    if config.max_evals < 1:
        raise PipelineError(f"max_evals must be at least 1; got {config.max_evals}")
    done_before = len(previous.trials) if previous is not None else 0
    if config.algo == "grid":
        points = grid_points(list(config.families))
        target = min(len(points), done_before + config.max_evals)
        ends_by = "grid" if target < done_before + config.max_evals else "max_evals"
        return SearchSetup(hp.choice("grid_point", points), grid_suggest, target, done_before, ends_by)
    suggest = {"tpe": tpe.suggest, "random": rand.suggest, "anneal": anneal.suggest}[config.algo]
    space = build_search_space(spec.task, list(config.families))
    return SearchSetup(space, suggest, done_before + config.max_evals, done_before, "max_evals")


class _Done(concurrent.futures.Future):
    """A future that is already resolved: the sequential evaluator's answer."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.set_result(value)


@contextmanager
def _evaluator(splits: Splits, spec: FeatureSpec, config: SearchConfig) -> Iterator[Callable[[Any], Any]]:
    """Submit one sample for evaluation: in this process, or to one of `parallelism` worker processes."""
    if config.parallelism == 1:
        yield lambda sample: _Done(evaluate_sample(splits, spec, sample, config))
        return
    import multiprocessing

    # spawn, not fork: a forked child of a process that already ran OpenMP (HistGradientBoosting) hangs.
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        config.parallelism, mp_context=context, initializer=_start_worker, initargs=(splits, spec, config, os.getpid())
    )
    with pool:
        with one_thread_per_library_in_children():
            # Start every worker now, while the environment says one thread each (BLAS and OpenMP read it at load).
            concurrent.futures.wait([pool.submit(int) for _ in range(config.parallelism)])
        yield lambda sample: pool.submit(_evaluate_in_worker, sample)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


@contextmanager
def one_thread_per_library_in_children() -> Iterator[None]:
    """Child processes started inside see one BLAS/OpenMP thread; this process's own pools are already set."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_search(
    splits: Splits,
    spec: FeatureSpec,
    config: SearchConfig,
    log_trial: TrialLogger | None = None,
    show_progress: bool = False,
    previous: Trials | None = None,
) -> SearchOutcome:
    """Keep `parallelism` trials running; each time one finishes, tell hyperopt and ask for the next.

    With parallelism 1 this is hyperopt's own sequential loop: the same seed gives the same trials.
    With more, a new configuration is asked for while others are still running, so TPE has not seen
    their losses yet: it adapts less per trial (see the measured trade-off in the README).
    """
    setup = search_setup(spec, config, previous)
    trials = previous if previous is not None else Trials()
    space, suggest, target, done_before = setup.space, setup.suggest, setup.target, setup.done_before
    domain = Domain(lambda sample: None, space)
    rng = seed_sequence(config.seed, done_before)
    stop_fn = no_progress_loss(config.early_stop_rounds) if config.early_stop_rounds else None
    stop_args: list[Any] = []
    stopped_by = setup.stopped_by
    started = time.monotonic()
    progress = _progress_bar(target - done_before, show_progress)
    issued = done_before
    running: dict[concurrent.futures.Future, dict[str, Any]] = {}
    stopping = False
    with _evaluator(splits, spec, config) as submit:
        while True:
            while not stopping and issued < target and len(running) < config.parallelism:
                if config.timeout is not None and time.monotonic() - started >= config.timeout:
                    stopped_by, stopping = "timeout", True
                    break
                [new_id] = trials.new_trial_ids(1)
                trials.refresh()
                # one seed draw per suggestion, as hyperopt's fmin does; running trials are not in `trials` yet
                [doc] = suggest([new_id], domain, trials, int(rng.integers(2**31 - 1)))
                sample = space_eval(space, {k: v[0] for k, v in doc["misc"]["vals"].items() if v})
                running[submit(sample)] = doc
                issued += 1
            if not running:
                break
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: running[f]["tid"]):
                doc, result = running.pop(future), future.result()
                number = doc["tid"] + 1
                result["run_id"] = log_result(log_trial, number, result, config.metric)
                result["trial"] = number
                doc["result"], doc["state"] = result, JOB_STATE_DONE
                trials.insert_trial_doc(doc)
                trials.refresh()
                progress.update(1)
                progress.set_postfix_str(f"best loss {_best_loss(trials):.4g}")
                if stop_fn and result["status"] == STATUS_OK and not stopping:
                    stop, stop_args = stop_fn(trials, *stop_args)
                    if stop:
                        stopped_by, stopping = "early_stop", True
    progress.close()
    finish = getattr(log_trial, "finish", None)
    if finish is not None:  # a TrialLogProcess: wait for its runs, then record their ids
        run_ids = finish()
        for result in trials.results[done_before:]:
            result["run_id"] = run_ids.get(result["trial"], result.get("run_id", ""))
    check_some_trial_succeeded(trials)
    return SearchOutcome(trials, stopped_by, len(trials.trials) - done_before)


def seed_sequence(seed: int, done_before: int) -> np.random.Generator:
    """hyperopt's per-trial seeds; a resumed search continues the sequence where it stopped."""
    rng = np.random.default_rng(seed)
    for _ in range(done_before):
        rng.integers(2**31 - 1)
    return rng


def check_some_trial_succeeded(trials: Trials) -> None:
    if not any(result.get("status") == STATUS_OK for result in trials.results):
        errors = {result.get("error") for result in trials.results}
        raise PipelineError(f"all {len(trials.trials)} trials failed: {'; '.join(map(str, errors))}")


def log_result(log_trial: TrialLogger | None, number: int | None, result: dict[str, Any], metric: str) -> str:
    """Log one evaluated trial through `log_trial`; its run id, or "" when nothing is logged."""
    if log_trial is None:
        return ""
    params = hyperparam_params(MODEL_FAMILIES[result["model"]], result["params"])
    metrics = {f"val_{k}": v for k, v in result["scores"].items()} | {"fit_seconds": result["seconds"]}
    if result["status"] == STATUS_OK:
        metrics["loss"] = result["loss"]
    return log_trial(number, params, metrics, "FINISHED" if result["status"] == STATUS_OK else "FAILED")


def _best_loss(trials: Trials) -> float:
    losses = [r["loss"] for r in trials.results if r.get("status") == STATUS_OK]
    return min(losses) if losses else math.nan


def _progress_bar(total: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not show, desc="tune", unit="trial", file=sys.stderr)


def best_result(trials: Trials) -> dict[str, Any]:
    """The best successful trial (the earliest one on ties)."""
    ok = [r for r in trials.results if r.get("status") == STATUS_OK]
    return min(ok, key=lambda r: (r["loss"], r["trial"]))


def leaderboard(trials: Trials, metric: str) -> pd.DataFrame:
    """All trials, best first; one column per hyperparameter."""
    rows = []
    for result in trials.results:
        row = {
            "trial": result.get("trial"),
            "status": result.get("status"),
            "run_id": result.get("run_id", ""),
            "model": result.get("model", ""),
            metric: result.get("value"),
            "loss": result.get("loss"),
            "fit_seconds": result.get("seconds"),
            "error": result.get("error", ""),
        }
        row |= {f"{result.get('model')}.{k}": v for k, v in result.get("params", {}).items()}
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["loss", "trial"], na_position="last").reset_index(drop=True)


# --------------------------------------------------------------------------- resume


def trials_to_records(trials: Trials) -> list[dict[str, Any]]:
    """What a later search needs to continue this one: each trial's sampled values and result, as JSON."""
    return [
        _plain({"tid": doc["tid"], "idxs": doc["misc"]["idxs"], "vals": doc["misc"]["vals"], "result": doc["result"]})
        for doc in trials.trials
    ]


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, recursively, so JSON keeps their type (tids must stay ints)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def trials_from_records(records: list[dict[str, Any]]) -> Trials:
    """Rebuild a hyperopt Trials object from `trials_to_records` output (no pickle involved)."""
    trials = Trials()
    for record in records:
        misc = {
            "tid": record["tid"],
            "cmd": ("domain_attachment", "FMinIter_Domain"),
            "workdir": None,
            "idxs": record["idxs"],
            "vals": record["vals"],
        }
        [doc] = trials.new_trial_docs([record["tid"]], [None], [record["result"]], [misc])
        doc["state"] = JOB_STATE_DONE
        trials.insert_trial_doc(doc)
    trials.refresh()
    return trials


def load_previous_search(client: MlflowClient, run_id: str) -> tuple[Run, Trials]:
    """The tune run to resume and its trials."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PipelineError(f"resume_from '{run_id}' does not exist; pass the run id of a tune run") from None
    if run.data.tags.get(STEP_TAG) != "tune":
        raise PipelineError(f"resume_from '{run_id}' is not a tune run; pass the run id of a tune run")
    path = download_dir(artifact_uri(run_id, TRIALS_FILE), "the trials to resume")
    return run, trials_from_records(json.loads(path.read_text()))


# --------------------------------------------------------------------------- figures


def plot_search(results: list[dict[str, Any]], metric: str, out: Path) -> list[Path]:
    """Loss per trial with the running best, and each hyperparameter against the loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullLocator

    ok = sorted((r for r in results if r.get("status") == STATUS_OK), key=lambda r: r["trial"])
    numbers = [r["trial"] for r in ok]
    losses = [r["loss"] for r in ok]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(numbers, losses, s=18, label="trial loss")
    ax.step(numbers, np.minimum.accumulate(losses), where="post", color="crimson", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"loss ({'-' if metric_loss(metric, 1.0) < 0 else ''}{metric})")
    ax.legend()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.95)  # tight_layout costs ~0.5 s a figure
    history = out / "loss_history.png"
    fig.savefig(history, dpi=80)
    plt.close(fig)

    numeric = {(r["model"], k) for r in ok for k, v in r["params"].items() if isinstance(v, int | float)}
    # Only what the search varied (e.g. not logistic_regression's fixed max_iter).
    params = sorted(p for p in numeric if len({r["params"].get(p[1]) for r in ok if r["model"] == p[0]}) > 1)
    columns = min(3, max(1, len(params)))
    rows = max(1, math.ceil(len(params) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, (model, name) in zip(axes.flat, params, strict=False):
        points = [(r["params"][name], r["loss"]) for r in ok if r["model"] == model and r["params"][name] is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), s=14)
            if min(p[0] for p in points) > 0 and max(p[0] for p in points) / min(p[0] for p in points) > 100:
                ax.set_xscale("log")
        ax.set_title(f"{model}.{name}", fontsize=9)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(4))  # tick labels are most of the drawing time
        if ax.get_xscale() == "linear":
            ax.xaxis.set_major_locator(MaxNLocator(4))
        else:
            ax.xaxis.set_minor_locator(NullLocator())
    for ax in list(axes.flat)[len(params) :]:
        ax.set_visible(False)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.05, top=0.95, hspace=0.45, wspace=0.3)
    versus = out / "hyperparams_vs_loss.png"
    fig.savefig(versus, dpi=80)
    plt.close(fig)
    return [history, versus]


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


def parse_timeout(timeout: str) -> float | None:
    """Seconds, or none for no limit; a limit must be positive."""
    if str(timeout).strip().lower() in ("", "none"):
        return None
    try:
        seconds = float(timeout)
    except ValueError:
        raise PipelineError(f"timeout must be a number of seconds or none; got {timeout!r}") from None
    if not seconds > 0:
        raise PipelineError(f"timeout must be more than 0 seconds; got {timeout}")
    return seconds


def validate_search_options(
    algo: str,
    max_evals: int,
    parallelism: int,
    early_stop_rounds: int,
    cv_folds: int,
    metric: str = "auto",
    models: str = "all",
    backend: str = "local",
) -> None:
    """The checks that need no data, made before anything is read."""
    check_metric_name(metric)
    unknown = [m.strip() for m in models.split(",") if m.strip() and m.strip() not in (*MODEL_FAMILIES, "all", "auto")]
    if unknown:
        raise PipelineError(f"unknown model family '{unknown[0]}' in models; use any of {', '.join(MODEL_FAMILIES)}")
    if algo not in ALGOS:
        raise PipelineError(f"unknown algo '{algo}'; use one of {', '.join(ALGOS)}")
    if backend not in BACKENDS:
        raise PipelineError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if max_evals < 1:
        raise PipelineError(f"max_evals must be at least 1; got {max_evals}")
    if parallelism < 1:
        raise PipelineError(f"parallelism must be at least 1; got {parallelism}")
    if early_stop_rounds < 0:
        raise PipelineError(f"early_stop_rounds must be 0 (off) or more; got {early_stop_rounds}")
    if cv_folds < 0 or cv_folds == 1:
        raise PipelineError(f"cv_folds must be 0 (score on validation) or at least 2; got {cv_folds}")


def run_tune(
    splits_uri: str,
    max_evals: int,
    metric: str,
    seed: int,
    algo: str = "tpe",
    models: str = "all",
    early_stop_rounds: int = 0,
    timeout: str = "none",
    cv_folds: int = 0,
    parallelism: int = 1,
    resume_from: str = "none",
    backend: str = "local",
    spark_master: str = "auto",
) -> dict[str, Any]:
    """The whole step inside the active run; returns the best-params payload."""
    validate_search_options(algo, max_evals, parallelism, early_stop_rounds, cv_folds, metric, models, backend)
    time_limit = parse_timeout(timeout)
    client = MlflowClient()
    active = mlflow.active_run()
    previous = None
    if resume_from not in ("", "none"):
        previous_run, previous = load_previous_search(client, resume_from)
        if splits_uri in ("", "auto"):
            splits_uri = previous_run.data.tags.get("splits_uri", splits_uri)
        if metric in ("", "auto"):
            metric = previous_run.data.tags.get("metric", metric)
        mlflow.set_tags({"resumed_from": resume_from, "resumed_trials": str(len(previous.trials))})
    if splits_uri in ("", "auto"):
        splits_uri = find_splits_uri(active.info.experiment_id, seed)
    mlflow.set_tag("splits_uri", splits_uri)
    splits, spec = read_splits(splits_uri)
    metric = resolve_metric(metric, spec.task)
    if previous is not None and metric != previous_run.data.tags.get("metric"):
        raise PipelineError(
            f"resume_from '{resume_from}' optimised {previous_run.data.tags.get('metric')}, not {metric}; "
            "resume with the same metric"
        )
    config = SearchConfig(
        metric,
        max_evals,
        seed,
        tuple(task_families(spec.task, models)),
        algo,
        early_stop_rounds,
        time_limit,
        cv_folds,
        parallelism,
    )
    if algo == "grid":
        size = len(grid_points(list(config.families)))
        note = (
            f"grid of {size} points; max_evals={max_evals} caps it"
            if max_evals < size
            else f"grid of {size} points, all tried (max_evals={max_evals} is not reached)"
        )
        logger.info(note)
        mlflow.set_tags({"grid.size": str(size), "grid.note": note})
    started = time.perf_counter()
    mlflow.set_tag("backend", backend)
    with ExitStack() as cleanup:  # the logger process, if there is one, ends with this step
        log_trial: Any = None
        if backend == "spark":
            from steps.spark_backend import run_spark_search

            outcome = run_spark_search(splits, spec, config, spark_master, show_progress=True, previous=previous)
        else:
            ids = (active.info.experiment_id, active.info.run_id)
            if max_evals >= LOG_PROCESS_MIN_EVALS:  # worth the logger process's ~3 s start, which overlaps the fits
                log_trial = cleanup.enter_context(closing(TrialLogProcess(mlflow.get_tracking_uri(), *ids)))
            else:
                log_trial = nested_trial_logger(client, *ids)
            outcome = run_search(splits, spec, config, log_trial, show_progress=True, previous=previous)
        trials = outcome.trials
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
            out = Path(tmp)
            write_json(out / "best_params.json", payload)
            write_json(out / TRIALS_FILE, trials_to_records(trials))
            leaderboard(trials, metric).to_csv(out / "trials.csv", index=False)
            (out / "figures").mkdir()
            if isinstance(log_trial, TrialLogProcess):  # it has matplotlib loaded already, and time to spare
                log_trial.call(plot_search, trials.results, metric, out / "figures")
            else:
                plot_search(trials.results, metric, out / "figures")
            mlflow.log_metrics(
                {
                    f"best_val_{metric}": best["value"],
                    "best_loss": best["loss"],
                    "n_trials": len(trials.trials),
                    "n_new_trials": outcome.new_trials,
                    "n_failed_trials": n_failed,
                    "search_seconds": time.perf_counter() - started,
                }
            )
            mlflow.set_tags(
                {
                    "best_trial_run_id": best["run_id"],
                    "best_trial": str(best["trial"]),
                    "metric": metric,
                    "task": spec.task,
                    "stopped_by": outcome.stopped_by,
                }
                | {f"best.{k}": v for k, v in hyperparam_params(best_family, best["params"]).items()}
            )
            mlflow.log_artifacts(str(out / "figures"), "figures")
            for name in ("trials.csv", TRIALS_FILE, "best_params.json"):
                mlflow.log_artifact(str(out / name))
        # What train consumes from the file; run ids inside it differ from one run to the next.
        mlflow.set_tag(OUTPUT_DIGEST_TAG, digest_json({k: payload[k] for k in ("model", "params", "metric")}))
        logger.info(
            "best of %d trials (stopped by %s): %s %s, %s = %.4f",
            len(trials.trials),
            outcome.stopped_by,
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
@click.option("--algo", default="tpe", help="tpe, random, anneal or grid.")
@click.option("--models", default="all", help="Comma-separated model families to search; all: every one.")
@click.option("--early-stop-rounds", default=0, type=INT, help="Stop after this many trials without progress.")
@click.option("--timeout", default="none", help="Stop starting trials after this many seconds.")
@click.option("--cv-folds", default=0, type=INT, help="k-fold CV on the training split; 0: score on validation.")
@click.option("--parallelism", default=1, type=INT, help="Trials evaluated at once, in worker processes.")
@click.option("--resume-from", default="none", help="A tune run id whose search to continue.")
@click.option("--backend", default="local", help="local: worker processes here; spark: hyperopt's SparkTrials.")
@click.option("--spark-master", default="auto", help="backend=spark: a Spark master URL; auto: Spark's own choice.")
def main(
    splits_uri: str,
    max_evals: int,
    metric: str,
    seed: int,
    algo: str,
    models: str,
    early_stop_rounds: int,
    timeout: str,
    cv_folds: int,
    parallelism: int,
    resume_from: str,
    backend: str,
    spark_master: str,
) -> None:
    with step_run("tune"):
        run_tune(
            splits_uri,
            max_evals,
            metric,
            seed,
            algo,
            models,
            early_stop_rounds,
            timeout,
            cv_folds,
            parallelism,
            resume_from,
            backend,
            spark_master,
        )


if __name__ == "__main__":
    run_cli(main, "tune")

"""tune's search loop: trials evaluated in this process or in worker processes, told to hyperopt as they end."""

from __future__ import annotations

import concurrent.futures
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from hyperopt import JOB_STATE_DONE, STATUS_FAIL, STATUS_OK, Trials, space_eval
from hyperopt.base import Domain
from hyperopt.early_stop import no_progress_loss

from steps.lib.errors import PipelineError, one_line
from steps.lib.features import FeatureSpec
from steps.lib.metrics import metric_loss
from steps.lib.models import MODEL_FAMILIES, ModelFamily, fit_model, hyperparam_params, resolve_threads, score_model
from steps.lib.search_options import SearchConfig, effective_parallelism
from steps.lib.search_space import search_setup
from steps.lib.splits import Splits, cv_folds_of
from steps.lib.trial_logger import TrialLogger


def cross_validated_scores(
    splits: Splits, spec: FeatureSpec, family: ModelFamily, hyperparams: dict[str, Any], seed: int, folds: int
) -> dict[str, float]:
    """Mean of each metric over `folds` folds of the training split, made as the split was (see cv_folds_of)."""
    train = splits.train
    per_fold = []
    for fit_rows, score_rows in cv_folds_of(train, spec, folds, seed):
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
        if config.options.cv_folds >= 2:
            scores = cross_validated_scores(splits, spec, family, hyperparams, config.seed, config.options.cv_folds)
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


class _Done(concurrent.futures.Future):
    """A future that is already resolved: the sequential evaluator's answer."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.set_result(value)


@contextmanager
def _evaluator(splits: Splits, spec: FeatureSpec, config: SearchConfig) -> Iterator[Callable[[Any], Any]]:
    """Submit one sample for evaluation: in this process, or to one of `parallelism` worker processes."""
    if config.options.parallelism == 1:
        yield lambda sample: _Done(evaluate_sample(splits, spec, sample, config))
        return
    with worker_pool(splits, spec, config) as pool:
        yield lambda sample: pool.submit(_evaluate_in_worker, sample)


@contextmanager
def worker_pool(splits: Splits, spec: FeatureSpec, config: SearchConfig) -> Iterator[ProcessPoolExecutor]:
    """`parallelism` spawned worker processes, each holding the data and one BLAS/OpenMP thread, all started."""
    import multiprocessing

    # spawn, not fork: a forked child of a process that already ran OpenMP (HistGradientBoosting) hangs.
    context = multiprocessing.get_context("spawn")
    workers = config.options.parallelism
    initargs = (splits, spec, config, os.getpid())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=initargs) as pool:
        with one_thread_per_library_in_children():
            # Start every worker now, while the environment says one thread each (BLAS and OpenMP read it at load).
            concurrent.futures.wait([pool.submit(int) for _ in range(workers)])
        yield pool


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
    workers = effective_parallelism(config.options.parallelism, len(splits.train), resolve_threads(0))
    config = replace(config, options=replace(config.options, parallelism=workers))
    setup = search_setup(spec, config, previous)
    trials = previous if previous is not None else Trials()
    space, suggest, target, done_before = setup.space, setup.suggest, setup.target, setup.done_before
    domain = Domain(lambda sample: None, space)
    rng = seed_sequence(config.seed, done_before)
    stop_fn = no_progress_loss(config.options.early_stop_rounds) if config.options.early_stop_rounds else None
    stop_args: list[Any] = []
    stopped_by = setup.stopped_by
    started = time.monotonic()
    progress = _progress_bar(target - done_before, show_progress)
    issued = done_before
    running: dict[concurrent.futures.Future, dict[str, Any]] = {}
    stopping = False
    with _evaluator(splits, spec, config) as submit:
        while True:
            while not stopping and issued < target and len(running) < config.options.parallelism:
                if config.options.timeout is not None and time.monotonic() - started >= config.options.timeout:
                    stopped_by, stopping = "timeout", True
                    break
                doc, sample = _suggest_next(trials, domain, space, suggest, rng)
                running[submit(sample)] = doc
                issued += 1
            if not running:
                break
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: running[f]["tid"]):
                result = _record_trial(trials, running.pop(future), future.result(), log_trial, config.metric)
                progress.update(1)
                progress.set_postfix_str(f"best loss {_best_loss(trials):.4g}")
                if stop_fn and result["status"] == STATUS_OK and not stopping:
                    stop, stop_args = stop_fn(trials, *stop_args)
                    if stop:
                        stopped_by, stopping = "early_stop", True
    progress.close()
    _collect_run_ids(log_trial, trials, done_before)
    check_some_trial_succeeded(trials)
    return SearchOutcome(trials, stopped_by, len(trials.trials) - done_before)


def _suggest_next(
    trials: Trials, domain: Domain, space: Any, suggest: Callable[..., Any], rng: np.random.Generator
) -> tuple[dict[str, Any], dict[str, Any]]:
    """hyperopt's next trial document and the configuration it stands for."""
    [new_id] = trials.new_trial_ids(1)
    trials.refresh()
    # one seed draw per suggestion, as hyperopt's fmin does; running trials are not in `trials` yet
    [doc] = suggest([new_id], domain, trials, int(rng.integers(2**31 - 1)))
    return doc, space_eval(space, {k: v[0] for k, v in doc["misc"]["vals"].items() if v})


def _record_trial(
    trials: Trials, doc: dict[str, Any], result: dict[str, Any], log_trial: TrialLogger | None, metric: str
) -> dict[str, Any]:
    """Log a finished trial and tell hyperopt its result."""
    number = doc["tid"] + 1
    result["run_id"] = log_result(log_trial, number, result, metric)
    result["trial"] = number
    doc["result"], doc["state"] = result, JOB_STATE_DONE
    trials.insert_trial_doc(doc)
    trials.refresh()
    return result


def _collect_run_ids(log_trial: TrialLogger | None, trials: Trials, done_before: int) -> None:
    """A TrialLogProcess logs behind the search: wait for its runs, then record their ids."""
    finish = getattr(log_trial, "finish", None)
    if finish is not None:
        run_ids = finish()
        for result in trials.results[done_before:]:
            result["run_id"] = run_ids.get(result["trial"], result.get("run_id", ""))


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

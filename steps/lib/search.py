"""tune's search loop: trials evaluated in this process or in worker processes, told to hyperopt as they end."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from hyperopt import JOB_STATE_DONE, STATUS_OK, Trials, space_eval
from hyperopt.base import Domain
from hyperopt.early_stop import no_progress_loss

from steps.lib.errors import PipelineError
from steps.lib.features import FeatureSpec
from steps.lib.models import MODEL_FAMILIES, hyperparam_params, resolve_threads
from steps.lib.process import compiled_at_each_import, main_module_unseen_by_children
from steps.lib.search_options import SearchConfig, effective_parallelism
from steps.lib.search_space import search_setup
from steps.lib.splits import Splits
from steps.lib.timed_trials import TimedSlots, TimedWorker
from steps.lib.trial_logger import TrialLogger
from steps.lib.trials import (
    TrialSettings,
    evaluate_in_worker,
    evaluate_sample,
    serve_trials,
    start_worker,
    write_for_workers,
    write_worker_data,
)

# --------------------------------------------------------------------------- the search loop


logger = logging.getLogger("steps.tune")


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
def _evaluator(
    splits: Splits, spec: FeatureSpec, config: SearchConfig, started: StartedWorkers | None = None
) -> Iterator[Callable[[Any], Any]]:
    """Submit one sample for evaluation: in this process, or in one of `parallelism` slots.

    With parallelism N, this process is one of the N slots (a thread: the loop here only waits while trials
    run) and N - 1 spawned worker processes are the others. Its first trial starts at once, while the
    workers import scikit-learn (~1.7 s each), and there is one start-up fewer to pay on the same cores.
    """
    settings = trial_settings(config)
    if config.options.trial_timeout is not None:
        with worker_data_file(splits, spec, config) as data_file:
            slots = TimedSlots(
                lambda: start_timed_worker(data_file), config.options.parallelism, config.options.trial_timeout
            )
            try:
                yield slots.submit
            finally:
                slots.close()
        return
    if config.options.parallelism == 1:
        yield lambda sample: _Done(evaluate_sample(splits, spec, sample, settings))
        return
    with (
        ThreadPoolExecutor(1, thread_name_prefix="trial") as own,
        worker_pool(splits, spec, config, workers=config.options.parallelism - 1, started=started) as pool,
    ):
        here: list[concurrent.futures.Future] = []

        def submit(sample: dict[str, Any]) -> concurrent.futures.Future:
            if here and not here[-1].done():  # this process's slot is busy: a worker's is free
                return pool.submit(evaluate_in_worker, sample)
            here[:] = [own.submit(evaluate_sample, splits, spec, sample, settings)]
            return here[-1]

        yield submit


@dataclass
class StartedWorkers:
    """Worker processes started before the data they are to hold exists (see `started_workers`)."""

    pool: ProcessPoolExecutor
    data_file: Path
    count: int
    handed: bool = False

    def hand_over(self, splits: Splits, spec: FeatureSpec, config: SearchConfig) -> None:
        write_worker_data(self.data_file, held_by_workers(splits), spec, trial_settings(config))
        self.handed = True


def workers_to_start_early(asked: int, cores: int) -> int:
    """How many worker processes tune can start before it reads its data: only with a parallelism asked for
    (auto depends on the number of rows), one fewer than the trials at once (this process is a slot too)."""
    return effective_parallelism(asked, 0, cores) - 1 if asked > 0 else 0


@contextmanager
def started_workers(count: int) -> Iterator[StartedWorkers]:
    """`count` worker processes started now: they import what a fit needs while this process reads and samples
    the data, then wait for the file `hand_over` writes. A search that never starts tells them to end."""
    with tempfile.TemporaryDirectory(prefix="tune-workers-") as folder:
        data_file = Path(folder, "trial-data.pickle")
        with spawned_pool(count, data_file) as pool:
            started = StartedWorkers(pool, data_file, count)
            try:
                yield started
            finally:
                if not started.handed:
                    write_for_workers(data_file, None)


@contextmanager
def spawned_pool(workers: int, data_file: Path) -> Iterator[ProcessPoolExecutor]:
    """`workers` spawned processes that will hold the data of `data_file`, one BLAS/OpenMP thread each; started
    (not waited for) with the environment that says so."""
    import multiprocessing

    warn_if_workers_compile_their_imports()
    # spawn, not fork: a forked child of a process that already ran OpenMP (HistGradientBoosting) hangs.
    context = multiprocessing.get_context("spawn")
    initargs = (str(data_file), os.getpid())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=start_worker, initargs=initargs) as pool:
        with one_thread_per_library_in_children(), main_module_unseen_by_children():
            # A submit starts a worker while none is idle: every worker is started here, while the
            # environment says one thread each (BLAS and OpenMP read it when they load).
            for _ in range(workers):
                pool.submit(int)
        yield pool


@contextmanager
def worker_pool(
    splits: Splits,
    spec: FeatureSpec,
    config: SearchConfig,
    workers: int | None = None,
    started: StartedWorkers | None = None,
) -> Iterator[ProcessPoolExecutor]:
    """`workers` (None: `parallelism`) worker processes holding the data: those `started` early if there are as
    many, else new ones."""
    workers = workers or config.options.parallelism
    if started is not None and started.count == workers and not started.handed:
        started.hand_over(splits, spec, config)
        yield started.pool
        started.pool.shutdown(wait=True)  # the search is over: the workers let go of the data
        return
    with worker_data_file(splits, spec, config) as data_file, spawned_pool(workers, data_file) as pool:
        yield pool


def held_by_workers(splits: Splits) -> Splits:
    """Only what trials use: the (sampled) training rows and the validation rows, not the test rows."""
    return Splits(splits.train, splits.validation, splits.test.iloc[:0])


@contextmanager
def worker_data_file(splits: Splits, spec: FeatureSpec, config: SearchConfig) -> Iterator[Path]:
    """What the worker processes hold, in a file of a private temporary folder, removed when the search ends.

    Handed over in a file: as start-up arguments they go down a pipe that each child reads only as it imports
    what unpickling them needs, so this process would wait ~1 s per worker instead of starting its own trial.
    """
    with tempfile.TemporaryDirectory(prefix="tune-workers-") as folder:
        data_file = Path(folder, "trial-data.pickle")
        write_worker_data(data_file, held_by_workers(splits), spec, trial_settings(config))
        yield data_file


@functools.cache
def warn_if_workers_compile_their_imports() -> None:
    """Once per process: a worker that compiles scikit-learn from source starts ~2 s later (measured: its imports
    took 3.5-3.8 s in a virtualenv made by `uv pip install`, 1.7-2.0 s in one made by pip, parallelism 2 gave
    1.37-1.49x there against 1.66-1.72x)."""
    import sklearn

    if compiled_at_each_import(sklearn.__file__):
        logger.warning(
            "every trial worker compiles scikit-learn from source as it starts (~2 s): this environment has no "
            "bytecode for it and PYTHONDONTWRITEBYTECODE is set; install it with pip, or with uv pip install "
            "--compile-bytecode (UV_COMPILE_BYTECODE=1)"
        )


def start_timed_worker(data_file: Path) -> TimedWorker:
    """One worker process for trial_timeout's slots, started as the pool's workers are (spawn, one thread)."""
    import multiprocessing

    warn_if_workers_compile_their_imports()
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(
        target=serve_trials, args=(str(data_file), os.getpid(), theirs), name="trial-worker", daemon=True
    )
    with one_thread_per_library_in_children(), main_module_unseen_by_children():
        process.start()
    theirs.close()
    return TimedWorker(process, ours)


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


def trial_settings(config: SearchConfig) -> TrialSettings:
    return TrialSettings(config.metric, config.seed, config.options.cv_folds)


def run_search(
    splits: Splits,
    spec: FeatureSpec,
    config: SearchConfig,
    log_trial: TrialLogger | None = None,
    show_progress: bool = False,
    previous: Trials | None = None,
    early_workers: StartedWorkers | None = None,
) -> SearchOutcome:
    """Keep `parallelism` trials running; each time one finishes, tell hyperopt and ask for the next.
    `early_workers`: worker processes started before the data was read (`started_workers`), used if as many.

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
    told: list[dict[str, Any]] = []  # results hyperopt has, not yet logged
    stopping = False
    with _evaluator(splits, spec, config, early_workers) as submit:
        while True:
            while not stopping and issued < target and len(running) < config.options.parallelism:
                if config.options.timeout is not None and time.monotonic() - started >= config.options.timeout:
                    stopped_by, stopping = "timeout", True
                    break
                doc, sample = _suggest_next(trials, domain, space, suggest, rng)
                running[submit(sample)] = doc
                issued += 1
            # logged once the free slots have their next trials: a slot does not wait for the tracking store
            for result in told:
                result["run_id"] = log_result(log_trial, result["trial"], result, config.metric)
                progress.update(1)
            told.clear()
            if not running:
                break
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: running[f]["tid"]):
                result = _tell(trials, running.pop(future), future.result())
                told.append(result)
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


def _tell(trials: Trials, doc: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Tell hyperopt a finished trial's result; the result as `trials` holds it (its run id is set when logged)."""
    result["trial"], result["run_id"] = doc["tid"] + 1, ""
    doc["result"], doc["state"] = result, JOB_STATE_DONE
    trials.insert_trial_doc(doc)
    trials.refresh()
    return trials.trials[-1]["result"]


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
    """tune's progress: a bar redrawn in place on a terminal; elsewhere (a log, a pipe) one line at the end."""
    from tqdm import tqdm

    from steps.lib.console import terminal

    if show and not terminal().isatty():
        return FinalLine(total)
    return tqdm(total=total, disable=not show, desc="tune", unit="trial", file=terminal())


class FinalLine:
    """The progress bar's interface, printing one line when it closes: trials done, seconds, the best loss."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.postfix, self.started = total, 0, "", time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        seconds = time.monotonic() - self.started
        best = f", {self.postfix}" if self.postfix else ""
        from steps.lib.console import terminal

        print(f"tune: {self.done}/{self.total} trials in {seconds:.1f} s{best}", file=terminal(), flush=True)


def best_result(trials: Trials) -> dict[str, Any]:
    """The best successful trial (the earliest one on ties)."""
    ok = [r for r in trials.results if r.get("status") == STATUS_OK]
    return min(ok, key=lambda r: (r["loss"], r["trial"]))

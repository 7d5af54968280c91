"""Log tune's trial runs from a separate process, so the tracking store's writes overlap the fits.

Each trial is one message to the logger process, which makes its three calls there (create the
child run with its tags, one `log_batch` of params and metrics, terminate it) while the search goes
on. In a thread they would compete with the fits for the GIL; in a process they use the other core.
The run ids come back in order when the search ends.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from steps.lib.console import route_child_logs
from steps.lib.errors import PipelineError, TrackingUnreachableError
from steps.lib.names import PARENT_TAG, RUN_NAME_TAG, STEP_TAG, TRIAL_TAG
from steps.lib.process import main_module_unseen_by_children, no_collection_at_exit
from steps.lib.runner import tracking_unreachable

TrialLogger = Callable[[int | None, dict[str, str], dict[str, float], str], str]

STOP = None
POLL_SECONDS = 1.0
TRIAL_GRACE_SECONDS = 10.0  # how long tune's exit waits for the trial being logged
QUIET_LINKS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def nested_trial_logger(client: MlflowClient, experiment_id: str, parent_run_id: str) -> TrialLogger:
    """Log each trial as a child run of the tune run: create, one batch, terminate."""

    def log_trial(number: int | None, params: dict[str, str], metrics: dict[str, float], status: str) -> str:
        # number None: not known where the trial ran (a Spark executor); the driver names the run later.
        name = "trial" if number is None else f"trial-{number:03d}"
        run = client.create_run(experiment_id, tags={PARENT_TAG: parent_run_id, STEP_TAG: "trial", RUN_NAME_TAG: name})
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=[] if number is None else [RunTag(TRIAL_TAG, str(number))],
        )
        with no_run_links():
            client.set_terminated(run.info.run_id, status=status)
        return run.info.run_id

    return log_trial


@contextmanager
def no_run_links() -> Iterator[None]:
    """Over HTTP MLflow prints two "View run" lines per run it ends: for every trial, that is noise."""
    saved = os.environ.get(QUIET_LINKS)
    os.environ[QUIET_LINKS] = "true"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[QUIET_LINKS]
        else:
            os.environ[QUIET_LINKS] = saved


def _serve(tracking_uri: str, experiment_id: str, parent_run_id: str, inbox: Any, outbox: Any, parent: int) -> None:
    """The logger process: log each trial it is sent; exit on STOP or if its parent is gone.

    A trial's run is logged whole or not at all, so none is left RUNNING: Ctrl-C (SIGINT, sent to every process
    of the terminal's group) is the tune process's to handle, and the SIGTERM with which multiprocessing ends this
    daemon as tune exits stops it after the trial at hand (at most TRIAL_GRACE_SECONDS later)."""
    route_child_logs()  # into tune's log; MLflow's retries show (urllib3 warns "Retrying ..." when the server is away)
    no_collection_at_exit()
    ended = threading.Event()

    def end_after_the_trial(*_: Any) -> None:  # within a bound: a store that does not answer is retried for minutes
        ended.set()
        limit = threading.Timer(TRIAL_GRACE_SECONDS, os._exit, args=(1,))
        limit.daemon = True
        limit.start()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, end_after_the_trial)
    log_trial = nested_trial_logger(MlflowClient(tracking_uri), experiment_id, parent_run_id)
    outbox.put(("ready", None))
    while not ended.is_set():
        try:
            message = inbox.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:  # the tune process died (e.g. kill -9): do not linger
                return
            continue
        if message is STOP:
            return
        number, params, metrics, status = message
        try:
            outbox.put(("logged", (number, log_trial(number, params, metrics, status))))
        except Exception as error:  # reported in the tune process, in one line
            unreachable = tracking_unreachable(error)
            if unreachable:  # the same for every trial: the tune process stops on it
                outbox.put(("unreachable", unreachable))
                continue
            outbox.put(("error", f"trial {number}: {type(error).__name__}: {error}"))


class TrialLogProcess:
    """A TrialLogger whose calls return at once; `finish()` waits for every run and returns their ids."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._inbox, self._outbox = context.Queue(), context.Queue()
        self._process = context.Process(
            target=_serve,
            args=(tracking_uri, experiment_id, parent_run_id, self._inbox, self._outbox, os.getpid()),
            name="trial-logger",
            daemon=True,
        )
        with main_module_unseen_by_children():  # it needs MLflow's client, not steps.tune and its hyperopt
            self._process.start()
        self._pending = 0
        self._run_ids: dict[int, str] = {}
        self._errors: list[tuple[str, str]] = []

    def __call__(self, number: int | None, params: dict[str, str], metrics: dict[str, float], status: str) -> str:
        self._collect(block=False)  # an earlier trial could not be logged (e.g. no tracking server): stop now
        self._raise_errors()
        self._inbox.put((number, params, metrics, status))
        self._pending += 1
        return ""  # the run id is known when finish() collects it

    def finish(self, timeout: float = 300) -> dict[int, str]:
        """Wait for every trial sent so far to be logged; trial number -> run id."""
        while self._pending:
            self._collect(block=True, timeout=timeout)
        self._raise_errors()
        run_ids, self._run_ids = self._run_ids, {}
        return run_ids

    def _collect(self, block: bool, timeout: float = 300) -> None:
        """Take one answer (block) or every answer already there (not block) from the logger process."""
        while self._pending:
            if block:
                kind, value = self._receive(timeout)
            else:
                try:
                    kind, value = self._outbox.get_nowait()
                except queue.Empty:
                    return
                if kind == "ready":
                    continue
            if kind == "logged":
                self._run_ids[value[0]] = value[1]
            else:  # "error" or "unreachable"
                self._errors.append((kind, value))
            self._pending -= 1
            if block:
                return

    def _raise_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            unreachable = [text for kind, text in errors if kind == "unreachable"]
            if unreachable:
                raise TrackingUnreachableError(unreachable[0])
            raise PipelineError(f"could not log {len(errors)} trial run(s): {errors[0][1]}")

    def _receive(self, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, value = self._outbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self._process.is_alive():
                    raise PipelineError(f"the trial logger process exited (code {self._process.exitcode})") from None
                if time.monotonic() > deadline:
                    raise PipelineError(f"the trial logger did not answer within {timeout:.0f} s") from None
                continue
            if kind != "ready":
                return kind, value

    def close(self) -> None:
        """Tell the process to stop after what is queued; not waited for (its own exit takes ~1 s).

        It is a daemon process: if this process exits first, multiprocessing ends it.
        """
        if self._process.is_alive():
            self._inbox.put(STOP)

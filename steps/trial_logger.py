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
import time
from collections.abc import Callable
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from steps.common import PARENT_TAG, RUN_NAME_TAG, STEP_TAG, PipelineError

TrialLogger = Callable[[int | None, dict[str, str], dict[str, float], str], str]
TRIAL_TAG = "trial"

STOP = None
POLL_SECONDS = 1.0


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
        client.set_terminated(run.info.run_id, status=status)
        return run.info.run_id

    return log_trial


def _serve(tracking_uri: str, experiment_id: str, parent_run_id: str, inbox: Any, outbox: Any, parent: int) -> None:
    """The logger process: log each trial it is sent; exit on STOP or when its parent is gone."""
    log_trial = nested_trial_logger(MlflowClient(tracking_uri), experiment_id, parent_run_id)
    outbox.put(("ready", None))
    while True:
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
            outbox.put((number, log_trial(number, params, metrics, status)))
        except Exception as error:  # reported to the search when it collects the run ids
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
        self._process.start()
        self._sent = 0

    def __call__(self, number: int | None, params: dict[str, str], metrics: dict[str, float], status: str) -> str:
        self._inbox.put((number, params, metrics, status))
        self._sent += 1
        return ""  # the run id is known when finish() collects it

    def finish(self, timeout: float = 300) -> dict[int, str]:
        """Wait for every trial sent so far to be logged; trial number -> run id."""
        self._inbox.put(STOP)
        run_ids: dict[int, str] = {}
        errors: list[str] = []
        deadline = time.monotonic() + timeout
        while len(run_ids) + len(errors) < self._sent:
            try:
                key, value = self._outbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self._process.is_alive() and self._outbox.empty():
                    errors.append(f"the trial logger process exited with code {self._process.exitcode}")
                    break
                if time.monotonic() > deadline:
                    errors.append(f"the trial logger did not finish within {timeout:.0f} s")
                    break
                continue
            if key == "error":
                errors.append(value)
            elif key != "ready":
                run_ids[key] = value
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        if errors:
            raise PipelineError(f"could not log {len(errors)} trial run(s): {errors[0]}")
        return run_ids

    def close(self) -> None:
        """Stop the process without waiting for what is queued (after a failed search)."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=10)

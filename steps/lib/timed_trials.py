"""tune's trial_timeout: trials in worker processes that are stopped, and replaced, when one runs too long.

A scikit-learn fit cannot be interrupted from inside its process, so each slot is a worker process that
runs one trial at a time; a trial past the limit has its process killed (its memory goes with it) and a
new one started in its place, and becomes a failed trial. Off by default: with it, which trials finish
depends on the machine's speed.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from steps.lib.trials import stopped_trial

READY_SECONDS = 300.0  # a new worker's start-up (imports, the data) is not part of any trial's time


@dataclass
class TimedWorker:
    """One worker process and this process's end of its pipe."""

    process: Any
    connection: Any
    ready: bool = False

    def wait_ready(self) -> None:
        if not self.ready:
            if not self.connection.poll(READY_SECONDS) or self.connection.recv() != "ready":
                raise OSError(f"a trial worker did not start within {READY_SECONDS:.0f} s")
            self.ready = True

    def stop(self) -> None:
        self.connection.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=30)


class TimedSlots:
    """`slots` worker processes, one trial each at a time; a trial past `limit` seconds is stopped and fails."""

    def __init__(self, start: Callable[[], TimedWorker], slots: int, limit: float) -> None:
        self._start, self._limit = start, limit
        self._lock = threading.Lock()
        self._workers: list[TimedWorker] = []
        self._idle: queue.Queue[TimedWorker] = queue.Queue()
        self._runner = ThreadPoolExecutor(slots, thread_name_prefix="timed-trial")
        try:
            for _ in range(slots):
                self._idle.put(self._new_worker())
        except BaseException:
            self.close()
            raise

    def _new_worker(self) -> TimedWorker:
        with self._lock:  # starting a worker changes this process's environment for a moment
            worker = self._start()
            self._workers.append(worker)
            return worker

    def submit(self, sample: dict[str, Any]) -> Future:
        return self._runner.submit(self._run, sample)

    def _run(self, sample: dict[str, Any]) -> dict[str, Any]:
        worker, healthy = self._idle.get(), False
        try:
            worker.wait_ready()
            started = time.perf_counter()
            worker.connection.send(sample)
            if worker.connection.poll(self._limit):
                result, healthy = worker.connection.recv(), True
            else:
                seconds = time.perf_counter() - started
                result = stopped_trial(sample, seconds, f"stopped by trial_timeout after {self._limit:g} s")
        except (EOFError, OSError) as error:  # the worker died (e.g. killed for memory): this trial fails
            result = stopped_trial(sample, 0.0, f"the trial's worker process ended ({type(error).__name__})")
        finally:
            if not healthy:  # stopped or dead: a new worker takes its place
                worker.stop()
                # If no new worker starts, the stopped one goes back: the next trial fails on it and tries again.
                with contextlib.suppress(Exception):
                    worker = self._new_worker()
            self._idle.put(worker)
        return result

    def close(self) -> None:
        self._runner.shutdown(wait=True, cancel_futures=True)
        for worker in self._workers:
            worker.stop()

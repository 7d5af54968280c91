"""What a person sees: a quiet console, and every step's full log kept as its run's artifact `logs/<step>.log`.

At the default level a step process prints nothing but its one-line error (and tune its progress bar);
everything logged - the project's own lines, MLflow's and hyperopt's INFO lines, Python warnings of any
library - goes to the step's log file, redacted, and the file is logged with the run whether the step
succeeds or fails. PIPELINE_VERBOSE=true (main: -P verbose=true) prints it all on stderr as well.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from steps.lib.uris import redact_uri

VERBOSE_VARIABLE = "PIPELINE_VERBOSE"
STEP_LOG_VARIABLE = "PIPELINE_STEP_LOG"  # the running step's log file: its worker processes append to it
LOG_DIR = "logs"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIETER = ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "urllib3.connectionpool")
# A scheme is at most 32 characters: unbounded, a long run of letters and digits (a card's inlined SVG, base64)
# was tried from each of its positions to its end, quadratic (7 s for load's histograms at 90,000 characters).
# Not anchored to a word start: `MY_URI_https://u:p@h` and `地址https://...` are redacted too.
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}://[^\s'\"<>]+")


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE, "").strip().lower() in {"1", "true", "yes", "on"}


def redact_text(text: str) -> str:
    """Every URI in `text` with its secrets replaced by *** (see redact_uri)."""
    return URL.sub(lambda match: redact_uri(match.group(0)), text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class WarningCounter(logging.Handler):
    """Counts the project's own warnings (loggers `steps.*`), for the step's line in main's output."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "steps" or record.name.startswith("steps."):
            self.count += 1


def route_logs(log_file: Path | None, *extra: logging.Handler) -> None:
    """Send every log record and Python warning of this process to `log_file` (appended), and to stderr too
    when verbose or when there is no file. MLflow's own logger keeps its records to itself: it gets the same."""
    formatter = RedactingFormatter(FORMAT)
    handlers: list[logging.Handler] = list(extra)
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    if verbose() or log_file is None:
        handlers.append(logging.StreamHandler(sys.stderr))
    else:  # a tracking server that stops answering shows at once: urllib3's "Retrying ..." while MLflow retries
        outage = logging.StreamHandler(sys.stderr)
        outage.setLevel(logging.WARNING)
        outage.addFilter(lambda record: record.name.startswith("urllib3"))
        handlers.append(outage)
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    for noisy in QUIETER:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("mlflow").handlers = list(handlers)  # MLflow's logger does not propagate to the root
    logging.captureWarnings(False)  # (a no-op if already on, even after someone reset warnings.showwarning)
    logging.captureWarnings(True)
    if not verbose():  # MLflow's "View run ... at: <url>" lines of an HTTP store
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Per-file download bars drown the step logs; child step processes inherit this.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def route_child_logs() -> None:
    """In a process a step started (a trial worker, the trial logger): log into the step's file."""
    path = os.environ.get(STEP_LOG_VARIABLE)
    route_logs(Path(path) if path and Path(path).parent.is_dir() else None)


_TERMINAL: list[tuple[TextIO, TextIO]] = []  # the console's (stdout, stderr) while library output goes to the log


def terminal(err: bool = True) -> TextIO:
    """Where the step's own lines go (main's table, tune's progress): the console's stderr (or stdout), even
    while what libraries print is sent to the step's log."""
    if _TERMINAL:
        return _TERMINAL[-1][err]
    return sys.stderr if err else sys.stdout


def say(text: str, err: bool = False, end: str = "\n") -> None:
    """A line of the step's own for the person at the console (stdout unless `err`)."""
    print(text, file=terminal(err), end=end, flush=True)


class LogStream(io.TextIOBase):
    """A stream whose lines become INFO records of one logger: what libraries print (MLflow's "Successfully
    registered model ..." goes straight to stderr) lands in the step's log."""

    def __init__(self, name: str) -> None:
        self.logger, self.pending, self.lock = logging.getLogger(name), "", threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:  # tune's trial thread and its main thread may both print
            *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip():
                self.logger.info("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, ""
        if pending.strip():
            self.logger.info("%s", pending.rstrip())


@contextmanager
def output_into_log() -> Iterator[None]:
    """What the step's libraries print goes to its log (and to the console too when verbose)."""
    if verbose():
        yield
        return
    _TERMINAL.append((sys.stdout, sys.stderr))
    out, err = LogStream("stdout"), LogStream("stderr")
    try:
        with redirect_stdout(out), redirect_stderr(err):
            yield
    finally:
        out.flush()
        err.flush()
        _TERMINAL.pop()


LOG_FOLDER_PREFIX = "pipeline-log-"


@dataclass
class StepLog:
    """The log file of one step process, in a private temporary folder until it is logged with the run."""

    step: str
    path: Path
    warnings: WarningCounter = field(default_factory=WarningCounter)
    saved: tuple = ()  # the logging set-up before the step: put back when the file closes

    @classmethod
    def start(cls, step: str) -> StepLog:
        folder = Path(tempfile.mkdtemp(prefix=f"pipeline-{step}-log-"))
        log = cls(step, folder / f"{step}.log")
        log.path.touch(mode=0o600)
        root, own = logging.getLogger(), logging.getLogger("mlflow")
        log.saved = (root.handlers[:], root.level, own.handlers[:], os.environ.get(STEP_LOG_VARIABLE))
        os.environ[STEP_LOG_VARIABLE] = str(log.path)
        route_logs(log.path, log.warnings)
        return log

    def name_after(self, run_id: str) -> None:
        """Rename the log's folder after the step's run (`pipeline-log-<run id>-...`), so that main can find
        and log what a killed step process wrote (see runner.clean_up_after). Open handles follow the file;
        processes the step starts from now on are told the new path."""
        folder = self.path.parent
        named = folder.with_name(f"{LOG_FOLDER_PREFIX}{run_id}-{folder.name.rsplit('-', 1)[-1]}")
        try:
            folder.rename(named)
        except OSError as error:  # the name taken first, the folder cleaned away: the log goes on where it is
            logging.getLogger("steps").warning("the step's log stays at %s: %s", self.path, error)
            return
        self.path = named / self.path.name
        if self.saved:
            os.environ[STEP_LOG_VARIABLE] = str(self.path)

    def close(self) -> Path:
        """Stop writing to the file and put back the logging set-up from before the step (once); its path."""
        if not self.saved:
            return self.path
        root, own = logging.getLogger(), logging.getLogger("mlflow")
        for handler in root.handlers:
            handler.close()
        root.handlers, level, own.handlers, variable = self.saved
        root.setLevel(level)
        logging.captureWarnings(False)
        if variable is None:
            os.environ.pop(STEP_LOG_VARIABLE, None)
        else:
            os.environ[STEP_LOG_VARIABLE] = variable
        self.saved = ()
        return self.path

    def log_to_run(self) -> None:
        """Close the file, log it as logs/<step>.log of the active run, and remove it."""
        import mlflow

        self.close()
        mlflow.log_artifact(str(self.path), LOG_DIR)
        self.remove()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.path.parent, ignore_errors=True)

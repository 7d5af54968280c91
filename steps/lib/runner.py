"""The step runner: one run per step, bad input as one line and a FAILED run, and the CLI's own types."""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import click
import mlflow

from steps.lib.console import LOG_DIR, LOG_FOLDER_PREFIX, StepLog, output_into_log, terminal
from steps.lib.errors import PipelineError, TrackingUnreachableError, one_line
from steps.lib.names import ERROR_TAG, PROCESS_TAG, RUN_NAME_TAG, STEP_TAG, WARNINGS_TAG
from steps.lib.process import no_collection_at_exit, process_identity, small_pages_for_arrays
from steps.lib.story import NOTE_TAG
from steps.lib.uris import move_tracking_credentials, redact_uri

logger = logging.getLogger("steps")


@contextmanager
def step_run(step: str, nested: bool = False) -> Iterator[mlflow.ActiveRun]:
    """Open (or resume, under `mlflow run`) the step's run; turn a PipelineError into a FAILED run.

    On bad input the run gets the tag `pipeline.error`, stderr gets one line `error: ...`, and the
    process exits with status 1. A failed run keeps its log (logs/<step>.log) and a card saying what failed,
    never an output a later step could trust. A nested step run (one step run inside another's process)
    re-raises instead, so its parent fails too. The step's log file is removed however the step ends (kept,
    and its path printed, only when the tracking server is gone).
    """
    log = StepLog.start(step) if not nested else None
    try:
        if log is not None:
            move_tracking_credentials()
        with mlflow.start_run(run_name=step, nested=nested) as run:
            mlflow.set_tags(
                {
                    STEP_TAG: step,
                    RUN_NAME_TAG: step,
                    PROCESS_TAG: process_identity(),
                    "runtime.python": sys.executable,
                    "runtime.prefix": sys.prefix,
                }
            )
            if log is not None:
                log.name_after(run.info.run_id)
                logger.info("step %s: run %s, process %s", step, run.info.run_id, os.getpid())
            try:
                with output_into_log() if log is not None else nullcontext(), run_temp_folder(run, nested):
                    yield run
                if log is not None:
                    log_peak_memory()
                    mlflow.set_tag(WARNINGS_TAG, str(log.warnings.count))
                    log.log_to_run()
            except (PipelineError, OSError) as error:
                if isinstance(error, OSError) and error.errno not in DISK_FULL:
                    record_unexpected(step, error, log)
                    raise
                exit_if_unreachable(step, error, log)  # a TrackingUnreachableError: nothing can be recorded
                message = one_line(str(error) if isinstance(error, PipelineError) else disk_full(error))
                record_failure(step, message, log, "FAILED")
                if nested:
                    raise
                print(f"error: {step}: {message}", file=sys.stderr, flush=True)
                sys.exit(1)
            except KeyboardInterrupt as stop:
                record_failure(step, interruption(stop), log, "KILLED")
                raise
            except Exception as error:
                record_unexpected(step, error, log)
                raise
    finally:
        if log is not None:
            log.remove()


RUN_TEMP_PREFIX = "pipeline-run-"


@contextmanager
def run_temp_folder(run: mlflow.ActiveRun, nested: bool) -> Iterator[None]:
    """The step process's own temporary files (its outputs before they are logged: a million rows of splits
    are ~170 MB; MLflow's downloads) in one private folder named after its run, removed when the step ends. A
    process killed before that (the out-of-memory killer) cannot remove it: main removes it by the run's id
    (`clean_up_after`). A nested step run uses its parent's. Child processes (tune's workers, Spark)
    keep using TMPDIR: they hold no outputs."""
    if nested:
        yield
        return
    before = tempfile.tempdir
    folder = tempfile.mkdtemp(prefix=f"{RUN_TEMP_PREFIX}{run.info.run_id}-", dir=base_temp_dir())  # 0700, unique
    tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = before
        shutil.rmtree(folder, ignore_errors=True)


def own_temp_folder() -> Path | None:
    """The folder of the step run this process is in (run_temp_folder), or None outside one."""
    current = Path(tempfile.gettempdir())
    return current if current.name.startswith(RUN_TEMP_PREFIX) else None


def base_temp_dir() -> Path:
    """The temporary directory outside any step's own folder (main runs inside its own step run too)."""
    own = own_temp_folder()
    return own.parent if own is not None else Path(tempfile.gettempdir())


def clean_up_after(client: mlflow.MlflowClient, run_id: str) -> None:
    """What a killed step process left on this machine: its log (StepLog.name_after), logged as its run's
    logs/<step>.log, and its temporary files (run_temp_folder), removed. Only folders of this user, not
    followed through links; the log's name is the file's own (never a tag's: anyone can write those)."""
    for prefix in (LOG_FOLDER_PREFIX, RUN_TEMP_PREFIX):
        for folder in base_temp_dir().glob(f"{prefix}{run_id}-*"):
            if not owned_folder(folder):
                continue
            try:
                for log in folder.glob("*.log") if prefix == LOG_FOLDER_PREFIX else ():
                    if stat.S_ISREG(log.lstat().st_mode):
                        client.log_artifact(run_id, str(log), LOG_DIR)
            except Exception as error:  # best effort: the store refused it, or is gone; the log stays here
                logger.warning("could not log %s to run %s: %s", folder, run_id, one_line(str(error), 200))
                continue
            shutil.rmtree(folder, ignore_errors=True)


def owned_folder(path: Path) -> bool:
    """A directory of this user's, not a link to one."""
    try:
        info = path.lstat()
    except FileNotFoundError:  # removed meanwhile
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: OSError) -> str:
    """A full disk (or quota) in one line, with where temporary files go: a big table's files are written
    there before they are logged."""
    where = f" writing '{error.filename}'" if error.filename else ""
    return (
        f"no space left on the device{where}; free disk space, or point TMPDIR at a larger disk (temporary files "
        f"go to {base_temp_dir()}) and the tracking store's artifacts to one with room"
    )


def record_unexpected(step: str, error: Exception, log: StepLog | None) -> None:
    """An error that is not the input's: recorded (its traceback in the step's log); the caller raises it."""
    exit_if_unreachable(step, error, log)
    if log is not None:
        logger.exception("unexpected error")
    record_failure(step, one_line(f"unexpected {type(error).__name__}: {error}"), log, None)


def record_failure(step: str, message: str, log: StepLog | None, status: str | None) -> None:
    """What a failed step leaves: the error tag and note, its card (unless the step made one: e.g. monitor's
    drift report before fail_on_drift) and its log; the run ended with `status` (None: left to the caller)."""
    from steps.lib.cards import CARD_FILE, log_card

    logger.error("%s", message)
    try:
        mlflow.set_tags({ERROR_TAG: message, NOTE_TAG: f"**{step} failed**: {message}"})
        if log is not None:
            run_id = mlflow.active_run().info.run_id
            if CARD_FILE not in {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}:
                log_card(step, "failed", [], [], status="FAILED", error=message)
            log.log_to_run()
        if status is not None:
            mlflow.end_run(status=status)
    except Exception as recording:
        exit_if_unreachable(step, recording, log)
        raise


def log_peak_memory() -> None:
    """The step process's peak resident memory (and its largest finished child's, e.g. a trial worker), in MB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    mlflow.log_metrics(
        {"peak_rss_mb": round(own, 1)} | ({"peak_rss_children_mb": round(children, 1)} if children else {})
    )


def exit_if_unreachable(step: str, error: BaseException, log: StepLog | None = None) -> None:
    """If `error` is MLflow giving up on the tracking server, exit as exit_unrecorded does."""
    unreachable = tracking_unreachable(error)
    if unreachable:
        exit_unrecorded(step, unreachable, log)


def exit_unrecorded(step: str, message: str, log: StepLog | None = None) -> None:
    """The tracking server is gone: say so in one line and exit 1 at once.

    Nothing more can be recorded (not even FAILED: the run stays RUNNING until the next `main` marks
    it KILLED, logging the step's log), and a normal exit would try the server again for minutes (MLflow's
    atexit end_run). The step's log stays on disk until then: its path is printed after the error.
    """
    print(f"error: {step}: {one_line(message)}", file=terminal(), flush=True)
    if log is not None:
        logger.error("%s", one_line(message))
        print(f"{step}'s log: {log.close()}", file=terminal(), flush=True)
    if (own := own_temp_folder()) is not None:  # os._exit skips run_temp_folder's finally
        shutil.rmtree(own, ignore_errors=True)
    os._exit(1)


def tracking_unreachable(error: BaseException) -> str:
    """A one-line reason if `error` is MLflow giving up on the tracking server (or says so already), else ''."""
    if isinstance(error, TrackingUnreachableError):
        return str(error)
    text = str(error)
    if not (isinstance(error, mlflow.exceptions.MlflowException) and text.startswith("API request to")):
        return ""
    if "Connection refused" in text or "NewConnectionError" in text:
        cause = "connection refused"
    elif "timed out" in text or "timeout" in text:
        cause = "timed out"
    elif "Max retries exceeded" in text or "ConnectionError" in text:
        cause = "no answer"
    else:
        return ""
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    called = re.match(r"API request to (?:endpoint )?(\S+?)/api/", text)
    server = called.group(1) if called else mlflow.get_tracking_uri()
    return (
        f"the tracking server {redact_uri(server)} is unreachable ({cause}, "
        f"after MLFLOW_HTTP_REQUEST_MAX_RETRIES={retries} retries); start it again and re-run: "
        "finished steps are reused"
    )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (`kill`, `timeout`, MLflow cancelling a run): the step ends its run KILLED."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal = signal_name


def terminated(stop: BaseException) -> bool:
    return isinstance(stop, Interrupted) and stop.signal == "SIGTERM"


def interruption(stop: BaseException) -> str:
    return "interrupted (SIGTERM)" if terminated(stop) else "interrupted (Ctrl-C)"


def end_on_signals() -> None:
    """SIGTERM ends a step as Ctrl-C does (its run KILLED, saying which), not in the middle of a write with its
    run left RUNNING; the first of the two ends it, and the rest are ignored so that ending is not cut short (a
    terminal's Ctrl-C reaches main, and then `mlflow run` terminates it). A signal ignored as the process started
    (a background job's SIGINT) stays ignored."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    for each, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(each) is default:
            signal.signal(each, stop)


def run_cli(command: click.Command, step: str) -> None:
    """Run a step's click command; a bad option value gets the same one-line error and FAILED run."""
    move_tracking_credentials()
    small_pages_for_arrays()
    no_collection_at_exit()
    end_on_signals()
    try:
        command.main(standalone_mode=False)
    except click.exceptions.Exit as done:  # --help
        sys.exit(done.exit_code)
    except click.Abort as error:  # click's name for a KeyboardInterrupt: step_run ended the run KILLED, said why
        if isinstance(error.__context__, KeyboardInterrupt):
            print(f"error: {step}: {interruption(error.__context__)}", file=sys.stderr, flush=True)
            sys.exit(143 if terminated(error.__context__) else 130)  # 128 + the signal's number, as shells say
        raise
    except click.ClickException as error:
        message = one_line(error.format_message())
        log = StepLog.start(step)
        try:
            with mlflow.start_run():
                mlflow.set_tags({STEP_TAG: step, RUN_NAME_TAG: step})
                record_failure(step, message, log, "FAILED")
        finally:
            log.remove()
        print(f"error: {step}: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


class WholeNumber(click.ParamType):
    """An int param that also accepts the same number written as 3.0 or 1e2 (as the cache key does)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not number.is_integer():
            self.fail(f"{value!r} is not a valid integer", param, ctx)
        return int(number)


INT = WholeNumber()


def parse_bool(name: str, value: str | bool) -> bool:
    """Parse a boolean param the way users type it."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in {"true", "1", "yes", "on"}:
        return True
    if lowered in {"false", "0", "no", "off"}:
        return False
    raise PipelineError(f"{name} must be true or false, got {value!r}")


def flag(ctx: click.Context | None, param: click.Parameter | None, value: str) -> bool:
    """A click callback for a true/false option: a bad value is the CLI's own one-line error."""
    try:
        return parse_bool(param.name if param is not None else "value", value)
    except PipelineError as error:
        raise click.BadParameter(str(error)) from None


# How a param leaves a choice to the pipeline. Turned into None at the CLI boundary, never checked deeper.
UNSET = ("", "auto", "none")


def unset_is_none(ctx: click.Context | None, param: click.Parameter | None, value: Any) -> Any:
    """A click callback: `auto`, `none` or nothing becomes None."""
    return None if value is None or str(value).strip().lower() in UNSET else value


def as_param(value: Any, unset: str = "auto") -> str:
    """The inverse, for passing a value on as an MLflow param: None becomes the declared sentinel."""
    if value is None:
        return unset
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)

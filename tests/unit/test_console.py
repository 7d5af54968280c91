"""A quiet console: a step prints its one-line error and tune's progress, and keeps everything else in its log."""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from steps.lib.console import STEP_LOG_VARIABLE, VERBOSE_VARIABLE, redact_text
from steps.lib.errors import PipelineError
from steps.lib.runner import clean_up_after, step_run
from tests.conftest import PROJECT_DIR

NOISE = {
    "project": "steps.demo: the step's own line",
    "mlflow": "mlflow.store: an INFO line of MLflow's",
    "hyperopt": "hyperopt.tpe: build_posterior_wrapper took 0.001 seconds",
    "warning": "UserWarning: a library's warning",
    "printed": "printed by a library on stderr",
    "stdout": "printed by a library on stdout",
    "secret": "reading https://alice:***@data.example/x.csv",
}


def noisy_step(fail: bool = False) -> str:
    """A step whose libraries log, warn and print as MLflow, hyperopt and scikit-learn do; its run id."""
    with step_run("demo") as run:
        logging.getLogger("steps.demo").info("the step's own line")
        logging.getLogger("mlflow.store").info("an INFO line of MLflow's")
        logging.getLogger("hyperopt.tpe").info("build_posterior_wrapper took 0.001 seconds")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
        print("printed by a library on stderr", file=sys.stderr)
        print("printed by a library on stdout")
        logging.getLogger("steps.demo").warning("reading %s", "https://alice:pa55word@data.example/x.csv")
        if fail:
            raise PipelineError("the data is bad; fix it")
    return run.info.run_id


def step_log(run_id: str) -> str:
    return mlflow.artifacts.load_text(f"runs:/{run_id}/logs/demo.log")


def test_a_step_prints_nothing_and_keeps_everything_in_its_log_redacted(tracking_uri, capfd, monkeypatch):
    monkeypatch.delenv(VERBOSE_VARIABLE, raising=False)
    run_id = noisy_step()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    log = step_log(run_id)
    for line in NOISE.values():
        assert line in log, line
    assert "pa55word" not in log
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.warnings"] == "1"


def test_verbose_brings_everything_back_to_the_console(tracking_uri, capfd, monkeypatch):
    monkeypatch.setenv(VERBOSE_VARIABLE, "true")
    run_id = noisy_step()
    out, err = capfd.readouterr()
    for name, line in NOISE.items():
        assert line in (out if name == "stdout" else err), name
    assert "pa55word" not in step_log(run_id)


def test_a_failed_step_prints_its_error_alone_and_logs_it(tracking_uri, capfd, monkeypatch):
    monkeypatch.delenv(VERBOSE_VARIABLE, raising=False)
    with pytest.raises(SystemExit):
        noisy_step(fail=True)
    out, err = capfd.readouterr()
    assert out == "" and err == "error: demo: the data is bad; fix it\n"
    [run] = MlflowClient().search_runs(["0"])
    assert run.info.status == "FAILED"
    log = step_log(run.info.run_id)
    assert "ERROR steps: the data is bad; fix it" in log and NOISE["hyperopt"] in log


def test_a_full_disk_is_one_line_and_a_failed_run_other_os_errors_stay_unexpected(tracking_uri, capfd, monkeypatch):
    monkeypatch.delenv(VERBOSE_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as stopped, step_run("demo"):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/x/raw.parquet")  # as a write raises it
    assert stopped.value.code == 1
    [line] = capfd.readouterr().err.splitlines()
    assert line.startswith(
        "error: demo: no space left on the device writing '/tmp/x/raw.parquet'; free disk space, or point TMPDIR at "
    )
    [run] = MlflowClient().search_runs(["0"])
    assert run.info.status == "FAILED" and run.data.tags["pipeline.error"] == line.removeprefix("error: demo: ")
    with pytest.raises(PermissionError), step_run("demo"):  # not the input's fault: raised as it is, recorded
        raise PermissionError(13, "Permission denied", "/etc/shadow")
    failed = MlflowClient().search_runs(["0"], order_by=["start_time DESC"])[0]
    assert failed.data.tags["pipeline.error"].startswith("unexpected PermissionError: [Errno 13] Permission denied")


def test_a_step_keeps_its_temporary_files_in_a_private_folder_of_its_run_removed_at_the_end(tracking_uri, tmp_path):
    before = tempfile.gettempdir()
    with step_run("demo") as run:
        folder = Path(tempfile.gettempdir())
        assert folder.parent == Path(before) and folder.name.startswith(f"pipeline-run-{run.info.run_id}-")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        with step_run("inner", nested=True):
            assert tempfile.gettempdir() == str(folder)  # a nested step run uses its parent's
        (folder / "split.parquet").write_bytes(b"rows")
    assert tempfile.gettempdir() == before and not folder.exists()
    # what a killed process left: main (itself inside its step run) logs its log and removes the run's folders,
    # and nothing else
    left = Path(tempfile.mkdtemp(prefix=f"pipeline-run-{run.info.run_id}-"))
    (left / "train.parquet").write_bytes(b"rows")
    log = Path(tempfile.mkdtemp(prefix=f"pipeline-log-{run.info.run_id}-"))
    (log / "demo.log").write_text("INFO steps.demo: fitting trial 3 of 8\n")
    other = Path(tempfile.mkdtemp(prefix="pipeline-run-someone-else-"))
    with step_run("main"):
        clean_up_after(MlflowClient(), run.info.run_id)
    assert not left.exists() and not log.exists() and other.exists()
    other.rmdir()
    assert "fitting trial 3 of 8" in mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/logs/demo.log")


def test_a_steps_log_folder_is_named_after_its_run_for_the_processes_it_starts(tracking_uri, monkeypatch):
    monkeypatch.delenv(VERBOSE_VARIABLE, raising=False)
    with step_run("demo") as run:
        path = Path(os.environ[STEP_LOG_VARIABLE])
        assert path.parent.name.startswith(f"pipeline-log-{run.info.run_id}-") and path.name == "demo.log"
        logging.getLogger("steps.demo").info("written after the rename")
        worker = "from steps.lib.console import route_child_logs; import logging; route_child_logs(); "
        worker += "logging.getLogger('steps.worker').info('a worker started after the rename')"
        subprocess.run([sys.executable, "-c", worker], check=True, cwd=PROJECT_DIR)  # as tune starts a worker
    assert not path.parent.exists()
    log = step_log(run.info.run_id)
    assert "written after the rename" in log  # the open handle followed the file
    assert "a worker started after the rename" in log  # a process started afterwards was told the new path


def test_tunes_progress_is_one_final_line_off_a_terminal(capsys):
    from steps.lib.search import _progress_bar

    bar = _progress_bar(3, show=True)
    for _ in range(3):
        bar.update(1)
        bar.set_postfix_str("best loss -0.9667")
    bar.close()
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune: 3/3 trials in ") and line.endswith(" s, best loss -0.9667")


def test_redact_text_hides_every_uri_secret_in_a_line():
    text = "GET https://bob:hunter2@h/x.csv?X-Amz-Signature=abc&v=1 then s3://bucket/k and ${TOKEN}@h"
    shown = redact_text(text)
    assert "hunter2" not in shown and "abc" not in shown
    assert "https://bob:***@h/x.csv?X-Amz-Signature=***&v=1" in shown and "s3://bucket/k" in shown


def test_redact_text_reads_a_long_run_of_letters_once():
    """A card inlines its SVG charts as base64: 200,000 letters and digits without a '/' (the unbounded scheme
    pattern tried each position to the end of the run: minutes here; now milliseconds)."""
    import time

    run = "PHN2ZyB4bWxucz0iaHR0cDov" * 8_000 + " mlflow-artifacts://bob:pw@h/x"
    started = time.perf_counter()
    shown = redact_text(run)
    assert time.perf_counter() - started < 2.0  # linear: ~0.01 s; quadratic: > 60 s
    assert shown.endswith("mlflow-artifacts://bob:***@h/x")


@pytest.mark.parametrize("before", ["", "x=", "_", "MY_URI_", "123", "地址", "é", "a" * 40])
def test_a_uri_glued_to_what_precedes_it_is_redacted_too(before):
    assert "pw" not in redact_text(f"{before}https://bob:pw@h/x and {before}s3://u:pw@bucket/k")

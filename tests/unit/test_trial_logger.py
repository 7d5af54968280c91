"""The trial logger process: trials are logged as child runs, in order, and errors come back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from mlflow.tracking import MlflowClient

from steps.lib.errors import PipelineError, TrackingUnreachableError
from steps.lib.trial_logger import TrialLogProcess
from tests.conftest import PROJECT_DIR, fresh_store


def test_trials_are_logged_as_children_and_their_ids_come_back(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tune")
    parent = client.create_run(experiment).info.run_id
    logger = TrialLogProcess(uri, experiment, parent)
    for number in (1, 2, 3):
        assert logger(number, {"model_family": "ridge"}, {"val_rmse": 1.0 / number}, "FINISHED") == ""
    logger(4, {"model_family": "ridge"}, {}, "FAILED")
    run_ids = logger.finish()
    assert sorted(run_ids) == [1, 2, 3, 4]
    for number, run_id in run_ids.items():
        run = client.get_run(run_id)
        assert run.info.run_name == f"trial-{number:03d}" and run.data.tags["trial"] == str(number)
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.status == ("FAILED" if number == 4 else "FINISHED")
    assert client.get_run(run_ids[2]).data.metrics["val_rmse"] == 0.5


def test_a_logging_error_is_reported_in_one_line(tmp_path):
    logger = TrialLogProcess(f"sqlite:///{tmp_path / 'mlflow.db'}", "no-such-experiment", "no-such-run")
    logger(1, {}, {"loss": 0.1}, "FINISHED")
    with pytest.raises(PipelineError, match=r"could not log 1 trial run\(s\): trial 1: "):
        logger.finish()


def test_a_lost_tracking_server_stops_the_next_trial_not_the_end_of_the_search(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # inherited by the spawned logger process
    logger = TrialLogProcess("http://127.0.0.1:9", "0", "0" * 32)  # nothing listens on the discard port
    try:
        logger(1, {}, {"loss": 0.1}, "FINISHED")
        deadline = time.monotonic() + 120
        with pytest.raises(TrackingUnreachableError, match=r"^the tracking server http://127.0.0.1:9 is unreachable"):
            while time.monotonic() < deadline:  # each new trial first looks for answers already back
                logger(2, {}, {"loss": 0.1}, "FINISHED")
                time.sleep(0.2)
    finally:
        logger.close()


PARENT_SCRIPT = """
import os, sys
if __name__ == "__mp_main__":  # this script, imported again by a spawned child as multiprocessing's main module
    open(os.environ["IMPORTED_BY_A_CHILD"], "w").close()
if __name__ == "__main__":
    from mlflow.tracking import MlflowClient
    from steps.lib.trial_logger import TrialLogProcess
    client = MlflowClient(sys.argv[1])
    parent = client.create_run("0").info.run_id
    logger = TrialLogProcess(sys.argv[1], "0", parent)
    logger(1, {"model_family": "ridge"}, {"val_rmse": 1.0}, "FINISHED")
    print(len(logger.finish()))
"""


def test_the_logger_process_does_not_import_the_main_module_of_tune(tmp_path, store_template):
    """A spawned child imports its parent's main module unless told not to: for `python -m steps.tune` that is
    MLflow, hyperopt and click again (~1-2.5 s of CPU) in a process that needs MLflow's client alone."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT_SCRIPT))
    marker = tmp_path / "imported"
    env = {**os.environ, "IMPORTED_BY_A_CHILD": str(marker), "PYTHONPATH": str(PROJECT_DIR)}
    done = subprocess.run(
        [sys.executable, str(script), fresh_store(store_template, tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.split() == ["1"], done.stderr[-2000:]
    assert not marker.exists()


def test_ctrl_c_is_left_to_tune_and_tunes_exit_stops_the_logger_between_trials(tmp_path, store_template):
    """Ctrl-C reaches every process of the terminal's group: the logger, ended mid-trial by it (or by the SIGTERM
    with which multiprocessing ends a daemon as tune exits), left that trial's run RUNNING for good. It now
    ignores SIGINT (tune handles it) and ends on SIGTERM once the trial at hand is logged."""
    import signal

    uri = fresh_store(store_template, tmp_path)
    client = MlflowClient(uri)
    parent = client.create_run("0").info.run_id
    logger = TrialLogProcess(uri, "0", parent)
    logger(1, {"model_family": "ridge"}, {"val_rmse": 1.0}, "FINISHED")
    logger.finish()  # it is up, its signal handlers set
    os.kill(logger._process.pid, signal.SIGINT)
    logger(2, {"model_family": "ridge"}, {"val_rmse": 0.5}, "FINISHED")
    [second] = logger.finish().values()
    assert client.get_run(second).info.status == "FINISHED"
    os.kill(logger._process.pid, signal.SIGTERM)
    logger._process.join(timeout=10)
    assert logger._process.exitcode == 0

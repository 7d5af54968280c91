"""Faults in team mode, against scripts/tracking-server.sh: kill -9 during tune, and a server restart mid-step."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from steps.lib.names import TRIAL_TAG
from steps.lib.runner import base_temp_dir
from tests.integration.conftest import TrackingServer, children, mlflow_env, mlflow_run

STEPS = ("load", "featurize", "tune", "train", "evaluate")


def main_command(project: Path, *params: str) -> list[str]:
    flags = [item for param in params for item in ("-P", param)]
    return [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local", "-e", "main", *flags]


def start_main(
    project: Path, server: TrackingServer, experiment: str, log: Path, *params: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`mlflow run . -e main` in its own process group (so kill -9 can take the whole tree)."""
    with log.open("w") as out:
        return subprocess.Popen(
            main_command(project, *params),
            cwd=project,
            env=mlflow_env(server.uri, {"MLFLOW_EXPERIMENT_NAME": experiment, **(env or {})}),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_trials(client: MlflowClient, experiment: str, process: subprocess.Popen, log: Path, count: int) -> Run:
    """The RUNNING tune run once it has logged `count` trials (bounded: 300 s)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        found = client.get_experiment_by_name(experiment)
        runs = (
            client.search_runs([found.experiment_id], "tags.`pipeline.step` = 'tune' and attributes.status = 'RUNNING'")
            if found
            else []
        )
        if runs and len([r for r in children(client, runs[0]) if TRIAL_TAG in r.data.tags]) >= count:
            return runs[0]
        time.sleep(0.5)
    pytest.fail(f"tune did not log {count} trials within 300 s: {log.read_text()[-2000:]}")


def test_kill_9_during_tune_then_rerun(project, server, tmp_path):
    client = MlflowClient(server.uri)
    params = ("max_evals=25", "registered_model_name=killed-model")
    process = start_main(project, server, "kill", tmp_path / "killed.log", *params)
    try:
        killed_tune = wait_for_trials(client, "kill", process, tmp_path / "killed.log", 2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the CLI, main, tune, its workers and trial logger
        process.wait(timeout=60)
    killed_main = client.get_run(killed_tune.data.tags["mlflow.parentRunId"])
    assert (killed_main.info.status, client.get_run(killed_tune.info.run_id).info.status) == ("RUNNING", "RUNNING")

    rerun_args = ["-e", "main", *[f"-P{p}" for p in params]]
    rerun = mlflow_run(project, rerun_args, server.uri, extra_env={"MLFLOW_EXPERIMENT_NAME": "kill"})
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    experiment = client.get_experiment_by_name("kill").experiment_id
    [new_main] = client.search_runs([experiment], "tags.`pipeline.step` = 'main' and attributes.status = 'FINISHED'")
    tags = new_main.data.tags
    assert (tags["steps.load.cached"], tags["steps.featurize.cached"]) == ("true", "true")  # finished steps reused
    assert tags["steps.tune.cached"] == "false" and tags["steps.tune.run_id"] != killed_tune.info.run_id
    for run_id, step in ((killed_main.info.run_id, "main"), (killed_tune.info.run_id, "tune")):  # marked KILLED
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", run.info
        assert f"marked KILLED by main run {new_main.info.run_id}" in run.data.tags["pipeline.error"]
        # what the dead process left on this machine: its log so far logged, its folders removed
        log = Path(client.download_artifacts(run_id, f"logs/{step}.log", str(tmp_path)))
        assert f"step {step}: run {run_id}, process" in log.read_text()
        assert not [p for prefix in ("run", "log") for p in base_temp_dir().glob(f"pipeline-{prefix}-{run_id}-*")]
    new_tune = client.get_run(tags["steps.tune.run_id"])
    assert new_tune.info.status == "FINISHED"
    assert len([r for r in children(client, new_tune) if TRIAL_TAG in r.data.tags]) == 25
    assert client.get_model_version_by_alias("killed-model", "champion").run_id == tags["steps.train.run_id"]


def test_a_server_restart_during_tune_is_ridden_out_by_mlflows_retries(project, server, tmp_path):
    client = MlflowClient(server.uri)
    log = tmp_path / "restart.log"
    # MLflow's retries, with waits of 0, 2, 4, 8, ... s (BACKOFF_FACTOR 1; 2 by default): ~2 min in all.
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    process = start_main(
        project, server, "restart", log, "max_evals=12", "registered_model_name=restart-model", env=retries
    )
    try:
        tune = wait_for_trials(client, "restart", process, log, 1)
        down = time.monotonic()
        server.stop()  # mlflow server and PostgreSQL
        deadline = time.monotonic() + 120  # a step meets the outage (it cannot finish without the server)
        while "Retrying (Retry(" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        server.start()
        downtime = time.monotonic() - down
        assert process.wait(timeout=900) == 0, log.read_text()[-4000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "Retrying (Retry(" in log.read_text()  # the outage was met, and ridden out by MLflow's retries
    main = client.get_run(tune.data.tags["mlflow.parentRunId"])
    steps = children(client, main)
    assert main.info.status == "FINISHED", downtime
    assert [(r.info.run_name, r.info.status) for r in steps] == [(s, "FINISHED") for s in STEPS]
    assert len([r for r in children(client, steps[2]) if TRIAL_TAG in r.data.tags]) == 12  # no trial lost
    [found] = client.search_model_versions("name = 'restart-model'")  # one version, fully registered
    version = client.get_model_version("restart-model", found.version)
    assert version.aliases == ["champion"] and version.tags["evaluate_run_id"] == steps[4].info.run_id
    assert version.tags["gates.passed"] == "true" and "model_card" in version.tags
    assert not client.search_model_versions("name = 'restart-model.champion-lock'")  # no ticket left


def test_a_server_down_past_the_retries_fails_the_step_in_one_line(project, server, tmp_path):
    log = tmp_path / "down.log"
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    process = start_main(project, server, "down", log, "max_evals=40", "registered_model_name=down-model", env=retries)
    client = MlflowClient(server.uri)
    try:
        tune = wait_for_trials(client, "down", process, log, 1)
        server.stop()
        try:
            assert process.wait(timeout=300) != 0
        finally:
            server.start()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    expected = (
        f"the tracking server {server.uri} is unreachable (connection refused, after "
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES=1 retries); start it again and re-run: finished steps are reused"
    )
    assert errors and errors[0] == f"error: tune: {expected}", output[-3000:]
    assert f"error: main: {expected}" in errors
    # Nothing can be logged to the store: the step's log stays on disk, its path printed after the error.
    kept = [
        Path(line.split(": ", 1)[1])
        for line in output.splitlines()
        if line.startswith(("tune's log: ", "main's log: "))
    ]
    assert [log.name for log in kept] == ["tune.log", "main.log"], output[-3000:]
    assert all(expected in log.read_text() for log in kept)
    for log in kept:  # the next main would log and remove them (test above); none runs here
        shutil.rmtree(log.parent)
    # Not FINISHED (nor FAILED: the server was gone); the next main marks both KILLED (test above).
    assert client.get_run(tune.info.run_id).info.status == "RUNNING"
    assert client.get_run(tune.data.tags["mlflow.parentRunId"]).info.status == "RUNNING"
    assert not client.search_model_versions("name = 'down-model'")

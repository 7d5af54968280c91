"""The pipeline, unchanged, against a real `mlflow server` on 127.0.0.1 that proxies artifacts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import children, mlflow_run, runs_by_step


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def test_main_against_a_tracking_server(project, server, tmp_path):
    result = mlflow_run(project, ["-e", "main", "-P", "max_evals=3"], server)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"open {server} in a browser" in result.stdout
    client = MlflowClient(server)
    [main] = runs_by_step(client, "main")
    steps = children(client, main)
    assert [(r.info.run_name, r.info.status) for r in steps] == [
        (name, "FINISHED") for name in ("load", "featurize", "tune", "train", "evaluate")
    ]
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in steps)  # served by the server
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()
    mlflow.set_tracking_uri(server)
    try:
        version = client.get_model_version_by_alias("pipeline-model", "champion")
        assert version.run_id == steps[3].info.run_id
        model = mlflow.pyfunc.load_model("models:/pipeline-model@champion")
        test_rows = pd.read_parquet(
            mlflow.artifacts.download_artifacts(f"runs:/{steps[1].info.run_id}/splits/test.parquet")
        )
        assert (model.predict(test_rows.drop(columns="species")) == test_rows["species"]).mean() >= 0.85
    finally:
        mlflow.set_tracking_uri(None)

"""The pipeline, unchanged, against scripts/tracking-server.sh: `mlflow server` on 127.0.0.1 over PostgreSQL."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import children, mlflow_run, runs_by_step


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "tracking-server.sh"


@pytest.fixture
def server(tmp_path):
    """scripts/tracking-server.sh: mlflow server on 127.0.0.1 over PostgreSQL, artifacts served by the server."""
    port = free_port()
    # Run as root, the script runs PostgreSQL as the postgres user, who cannot enter pytest's 0700 tmp dirs.
    data_dir = Path(tempfile.mkdtemp(prefix="tracking-server-", dir="/tmp"))
    data_dir.chmod(0o755)
    args = ["--port", str(port), "--data-dir", str(data_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHON"] = sys.executable
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", *args], env=env, capture_output=True, text=True, timeout=180
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        uri = started.stdout.strip().splitlines()[-1]
        assert uri == f"http://127.0.0.1:{port}"
        yield uri
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", *args], env=env, capture_output=True, timeout=120)
        status = subprocess.run(["bash", str(SCRIPT), "status", *args], env=env, capture_output=True, text=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        assert status.returncode != 0 and "mlflow server: not running" in status.stdout


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

"""Real `mlflow run` subprocesses against a temporary tracking store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_DIR

pytestmark = pytest.mark.integration
COPY_IGNORE = shutil.ignore_patterns(
    "mlflow.db", "mlruns", "mlartifacts", ".pytest_cache", "__pycache__", ".ruff_cache", ".venv", "*.pyc"
)


def copy_project(destination: Path) -> Path:
    """A copy of the project (git history included), so runs never touch the developer's tree."""
    shutil.copytree(PROJECT_DIR, destination, ignore=COPY_IGNORE)
    return destination


def mlflow_env(tracking_uri: str | None) -> dict[str, str]:
    """This interpreter first on PATH (the steps run `python -m ...`), no inherited MLflow run state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def mlflow_run(
    project: Path, args: Sequence[str], tracking_uri: str | None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`mlflow run <project> <args>` as a user types it (local env manager unless given); output captured."""
    manager = [] if "--env-manager" in args else ["--env-manager", "local"]
    command = [sys.executable, "-m", "mlflow", "run", str(project), *manager, *args]
    return subprocess.run(
        command, cwd=cwd or project, env=mlflow_env(tracking_uri), capture_output=True, text=True, timeout=timeout
    )


def runs_by_step(client: MlflowClient, step: str) -> list[Run]:
    """Every run of a step (newest first) in any experiment of the store."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(
        experiments, filter_string=f"tags.`pipeline.step` = '{step}'", order_by=["attributes.start_time DESC"]
    )


def children(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("checkout") / "project")


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"

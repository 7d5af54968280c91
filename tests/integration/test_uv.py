"""`--env-manager uv`: MLflow builds the environment from python_env.yaml, and main passes it on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import children, mlflow_run, runs_by_step

pytestmark = pytest.mark.uv


def test_main_under_uv_builds_the_project_environment_for_every_step(project, store, tmp_path):
    result = mlflow_run(
        project,
        ["-e", "main", "--env-manager", "uv", "-P", "max_evals=2"],
        store,
        extra_env={"MLFLOW_ENV_ROOT": str(tmp_path / "envs")},  # built here, not reused
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(store)
    [main] = runs_by_step(client, "main")
    steps = children(client, main)
    assert [r.info.run_name for r in steps] == ["load", "featurize", "tune", "train", "evaluate"]
    prefixes = set()
    for run in [main, *steps]:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.project.env"] == "uv", run.info.run_name  # passed on to every child
        prefixes.add(run.data.tags["runtime.prefix"])
    [prefix] = prefixes  # one environment, built once from python_env.yaml and reused by every step
    assert Path(prefix) != Path(sys.prefix)
    assert Path(prefix).parent == tmp_path / "envs" and Path(prefix).name.startswith("mlflow-")
    installed = Path(prefix) / "lib" / "python3.11" / "site-packages"
    pins = [line for line in (project / "requirements.txt").read_text().splitlines() if "==" in line]
    for pin in pins:  # every pin of requirements.txt, at its exact version
        name, version = pin.split("==")
        dist = name.replace("-", "_").lower()
        assert any(p.name.lower() == f"{dist}-{version}.dist-info" for p in installed.iterdir()), pin

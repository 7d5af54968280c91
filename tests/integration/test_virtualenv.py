"""`--env-manager virtualenv`: pyenv provides the pinned Python, virtualenv + pip install the lock."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import children, mlflow_run, runs_by_step

pytestmark = pytest.mark.skipif(shutil.which("pyenv") is None, reason="the virtualenv env manager needs pyenv")


def test_main_under_virtualenv_runs_every_step_in_the_project_environment(project, store, tmp_path):
    result = mlflow_run(
        project,
        ["-e", "main", "--env-manager", "virtualenv", "-P", "max_evals=1"],
        store,
        extra_env={"MLFLOW_ENV_ROOT": str(tmp_path / "envs")},  # built here, not reused
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(store)
    [main] = runs_by_step(client, "main")
    steps = children(client, main)
    assert [r.info.run_name for r in steps] == ["load", "featurize", "tune", "train", "evaluate"]
    prefixes = set()
    for run in [main, *steps]:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.project.env"] == "virtualenv", run.info.run_name
        prefixes.add(run.data.tags["runtime.prefix"])
    [prefix] = map(Path, prefixes)
    assert prefix.parent == tmp_path / "envs" and prefix.name.startswith("mlflow-")
    assert (prefix / "lib" / "python3.11" / "site-packages" / "mlflow-3.17.2.dist-info").is_dir()

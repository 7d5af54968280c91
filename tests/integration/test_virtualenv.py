"""`--env-manager virtualenv`: pyenv provides the pinned Python, virtualenv + pip install the lock.

One step is enough here: that main passes its env manager on to every step is test_git.py's to show (uv).
"""

from __future__ import annotations

import shutil

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import (
    assert_the_project_environment_was_built,
    run_in_a_built_environment,
    runs_by_step,
)

pytestmark = pytest.mark.skipif(shutil.which("pyenv") is None, reason="the virtualenv env manager needs pyenv")


def test_a_step_under_virtualenv_runs_in_the_project_environment(project, store, tmp_path):
    result = run_in_a_built_environment(project, store, tmp_path / "envs", "virtualenv", ["-e", "load"])
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(store)
    [load] = runs_by_step(client, "load")
    assert_the_project_environment_was_built(client, load, tmp_path / "envs", "virtualenv")

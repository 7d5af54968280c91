"""`--env-manager virtualenv`: pyenv provides the pinned Python, virtualenv + pip install the lock."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.conftest import assert_main_builds_its_environment

pytestmark = pytest.mark.skipif(shutil.which("pyenv") is None, reason="the virtualenv env manager needs pyenv")


def test_main_under_virtualenv_runs_every_step_in_the_project_environment(project, store, tmp_path):
    assert_main_builds_its_environment(project, store, tmp_path / "envs", "virtualenv")

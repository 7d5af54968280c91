"""`--env-manager uv`: MLflow builds the environment from python_env.yaml, and main passes it on."""

from __future__ import annotations

import pytest

from tests.integration.conftest import assert_main_builds_its_environment

pytestmark = pytest.mark.uv


def test_main_under_uv_builds_the_project_environment_for_every_step(project, store, tmp_path):
    assert_main_builds_its_environment(project, store, tmp_path / "envs", "uv")

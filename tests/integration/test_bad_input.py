"""Bad input through real `mlflow run`: one-line error, non-zero exit, the step's run FAILED, nothing left.

Representative cases per kind (a step's own check, a param click rejects, main before and after its
steps); tests/unit/test_bad_input_steps.py runs every case through the same command lines in-process.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import children, mlflow_run, runs_by_step


def assert_failed_cleanly(result, store: str, step: str, message: str):
    """The contract for bad input, checked on the process and on the tracking store."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"error: {step}:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert message in errors[0]
    client = MlflowClient(store)
    run = runs_by_step(client, step)[0]
    assert run.info.status == "FAILED"
    assert message in run.data.tags["pipeline.error"]
    assert client.list_artifacts(run.info.run_id) == []
    return run


def test_missing_data(project, store, tmp_path):
    result = mlflow_run(project, ["-e", "load", "-P", f"data_uri={tmp_path / 'nope.csv'}"], store)
    assert_failed_cleanly(result, store, "load", "data not found at")


def test_max_evals_that_is_not_a_number(project, store):
    result = mlflow_run(project, ["-e", "tune", "-P", "max_evals=many"], store)
    assert_failed_cleanly(result, store, "tune", "'many' is not a valid integer")


@pytest.mark.parametrize(
    ("params", "message"),
    [(["parallelism=0"], "parallelism must be at least 1")],  # every tune option: tests/unit/test_bad_input_steps.py
)
def test_bad_tune_options(project, store, params, message):
    result = mlflow_run(project, ["-e", "tune", *[x for p in params for x in ("-P", p)]], store)
    assert_failed_cleanly(result, store, "tune", message)
    assert runs_by_step(MlflowClient(store), "featurize") == []  # refused before any work


def test_main_fails_naming_the_failed_step(project, store, tmp_path):
    result = mlflow_run(project, ["-e", "main", "-P", f"data_uri={tmp_path / 'nope.csv'}"], store)
    load = assert_failed_cleanly(result, store, "load", "data not found at")
    client = MlflowClient(store)
    [main] = runs_by_step(client, "main")
    assert main.info.status == "FAILED"
    assert main.data.tags["pipeline.error"].startswith("step 'load' failed: data not found at")
    assert main.data.tags["steps.load.run_id"] == load.info.run_id
    assert [r.info.run_name for r in children(client, main)] == ["load"]
    assert any(line.startswith("error: main: step 'load' failed") for line in result.stderr.splitlines())


def test_main_checks_tune_options_before_any_step(project, store):
    result = mlflow_run(project, ["-e", "main", "-P", "max_evals=0"], store)
    main = assert_failed_cleanly(result, store, "main", "max_evals must be at least 1")
    assert children(MlflowClient(store), main) == []


def test_main_stops_at_a_later_failed_step(project, store):
    # Only tune can tell that rmse does not fit iris: the task is known once featurize has run.
    result = mlflow_run(project, ["-e", "main", "-P", "metric=rmse"], store)
    assert_failed_cleanly(result, store, "tune", "metric 'rmse' does not fit a classification task")
    client = MlflowClient(store)
    [main] = runs_by_step(client, "main")
    assert main.info.status == "FAILED" and main.data.tags["pipeline.error"].startswith("step 'tune' failed")
    statuses = [(r.info.run_name, r.info.status) for r in children(client, main)]
    assert statuses == [("load", "FINISHED"), ("featurize", "FINISHED"), ("tune", "FAILED")]

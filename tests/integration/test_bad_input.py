"""Bad input through real `mlflow run`: one-line error, non-zero exit, the step's run FAILED, nothing left.

One case per path: a value click rejects (tune's own command line), and a step that fails inside main
(main then fails naming it). tests/unit/test_bad_input_steps.py runs every case through the same command
lines in-process; tests/integration/test_cache.py has a step that fails after others have run.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from tests.integration.conftest import assert_failed_cleanly, children, mlflow_run, runs_by_step


def test_max_evals_that_is_not_a_number(project, store):
    result = mlflow_run(project, ["-e", "tune", "-P", "max_evals=many"], store)
    assert_failed_cleanly(result, store, "tune", "'many' is not a valid integer")


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

"""Bad input: one-line error, non-zero exit, the step's run FAILED, nothing left for a later step."""

from __future__ import annotations

import pandas as pd
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


@pytest.fixture
def csv(tmp_path):
    def write(frame: pd.DataFrame, name: str = "data.csv") -> str:
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return str(path)

    return write


def test_missing_data(project, store, tmp_path):
    result = mlflow_run(project, ["-e", "load", "-P", f"data_uri={tmp_path / 'nope.csv'}"], store)
    assert_failed_cleanly(result, store, "load", "data not found at")


def test_unreadable_data(project, store, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("this is not parquet")
    result = mlflow_run(project, ["-e", "load", "-P", f"data_uri={path}", "-P", "target=y"], store)
    assert_failed_cleanly(result, store, "load", "cannot read")


def test_target_column_that_does_not_exist(project, store, csv):
    uri = csv(pd.DataFrame({"x": range(10), "y": [0, 1] * 5}))
    result = mlflow_run(project, ["-e", "load", "-P", f"data_uri={uri}", "-P", "target=label"], store)
    assert_failed_cleanly(result, store, "load", "target column 'label' is not in the data")


def test_single_class_target(project, store, csv):
    uri = csv(pd.DataFrame({"x": range(10), "y": ["yes"] * 10}))
    result = mlflow_run(project, ["-e", "load", "-P", f"data_uri={uri}", "-P", "target=y"], store)
    assert_failed_cleanly(result, store, "load", "has a single value")


def test_empty_table(project, store, csv):
    uri = csv(pd.DataFrame({"x": [], "y": []}))
    result = mlflow_run(project, ["-e", "load", "-P", f"data_uri={uri}", "-P", "target=y"], store)
    assert_failed_cleanly(result, store, "load", "has no rows")


def test_max_evals_below_one(project, store):
    result = mlflow_run(project, ["-e", "tune", "-P", "max_evals=0"], store)
    assert_failed_cleanly(result, store, "tune", "max_evals must be at least 1")
    assert runs_by_step(MlflowClient(store), "featurize") == []  # refused before any work


def test_max_evals_that_is_not_a_number(project, store):
    result = mlflow_run(project, ["-e", "tune", "-P", "max_evals=many"], store)
    assert_failed_cleanly(result, store, "tune", "'many' is not a valid integer")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["metric=auc"], "unknown metric 'auc'"),
        (["algo=bayes"], "unknown algo 'bayes'"),
        (["parallelism=0"], "parallelism must be at least 1"),
        (["models=random_forest,svm"], "unknown model family 'svm'"),
        (["timeout=0"], "timeout must be more than 0 seconds"),
        (["resume_from=0123456789abcdef0123456789abcdef"], "does not exist"),
    ],
)
def test_bad_tune_options(project, store, params, message):
    result = mlflow_run(project, ["-e", "tune", *[x for p in params for x in ("-P", p)]], store)
    assert_failed_cleanly(result, store, "tune", message)
    assert runs_by_step(MlflowClient(store), "featurize") == []  # refused before any work


def test_tune_metric_that_does_not_fit_the_task_and_resume_from_another_step(project, store):
    result = mlflow_run(project, ["-e", "tune", "-P", "metric=rmse"], store)  # iris is a classification task
    assert_failed_cleanly(result, store, "tune", "metric 'rmse' does not fit a classification task")
    client = MlflowClient(store)
    featurize = runs_by_step(client, "featurize")[0]
    result = mlflow_run(project, ["-e", "tune", "-P", f"resume_from={featurize.info.run_id}"], store)
    assert_failed_cleanly(result, store, "tune", "is not a tune run")


def test_unknown_model(project, store):
    result = mlflow_run(project, ["-e", "train", "-P", "splits_uri=runs:/0/splits", "-P", "model=xgboost"], store)
    assert_failed_cleanly(result, store, "train", "unknown model 'xgboost'")


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

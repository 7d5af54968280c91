"""The README's main command, exactly as written, on the embedded default data and the default store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from steps.lib.tables import load_bundled_frame
from tests.conftest import PROJECT_DIR
from tests.integration.conftest import children, copy_project, mlflow_env

STEPS = ["load", "featurize", "tune", "train", "evaluate"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run `mlflow run . -e main --env-manager local` in a fresh copy, with no tracking URI set."""
    project = copy_project(tmp_path_factory.mktemp("readme") / "project")
    result = subprocess.run(
        ["mlflow", "run", ".", "-e", "main", "--env-manager", "local"],
        cwd=project,
        env=mlflow_env(None),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (project / "mlflow.db").exists(), "the default store is sqlite:///mlflow.db in the working directory"
    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    [main] = client.search_runs(["0"], filter_string="tags.`pipeline.step` = 'main'")
    steps = {run.info.run_name: run for run in children(client, main)}
    yield {"result": result, "client": client, "main": main, "steps": steps, "uri": uri}
    mlflow.set_tracking_uri(None)


def test_run_tree_is_the_pipeline(pipeline):
    main, steps, client = pipeline["main"], pipeline["steps"], pipeline["client"]
    assert main.info.status == "FINISHED" and main.info.run_name == "main"
    assert list(steps) == STEPS
    for name, run in steps.items():
        assert run.info.status == "FINISHED", name
        assert run.data.tags["mlflow.project.entryPoint"] == name
        assert main.data.tags[f"steps.{name}.run_id"] == run.info.run_id
    trials = children(client, steps["tune"])
    assert sorted(t.info.run_name for t in trials) == [f"trial-{i:03d}" for i in range(1, 21)]
    assert all(t.info.status == "FINISHED" and "loss" in t.data.metrics for t in trials)
    assert {t.data.params["model_family"] for t in trials} >= {"logistic_regression"}


def test_artifact_uris_pass_from_step_to_step(pipeline):
    steps, client = pipeline["steps"], pipeline["client"]
    run_id = {name: run.info.run_id for name, run in steps.items()}
    params = {name: run.data.params for name, run in steps.items()}
    splits_uri = f"runs:/{run_id['featurize']}/splits"
    assert params["featurize"]["raw_data_uri"] == f"runs:/{run_id['load']}/data"
    assert params["tune"]["splits_uri"] == splits_uri
    assert params["train"]["splits_uri"] == splits_uri
    assert params["train"]["params_uri"] == f"runs:/{run_id['tune']}/best_params.json"
    assert params["evaluate"]["splits_uri"] == splits_uri
    model_uri = steps["train"].data.tags["model_uri"]
    assert params["evaluate"]["model_uri"] == model_uri
    assert mlflow.models.get_model_info(model_uri).run_id == run_id["train"]
    for uri in (params["featurize"]["raw_data_uri"], splits_uri, params["train"]["params_uri"]):
        assert not uri.startswith(("/", "file:"))
    best = json.loads(mlflow.artifacts.load_text(params["train"]["params_uri"]))
    assert steps["train"].data.params["model_family"] == best["model"]
    assert best["best_trial_run_id"] == steps["tune"].data.tags["best_trial_run_id"]
    assert client.get_run(best["best_trial_run_id"]).data.tags["mlflow.parentRunId"] == run_id["tune"]


def test_each_step_records_what_it_promises(pipeline):
    steps, client = pipeline["steps"], pipeline["client"]
    load = steps["load"]
    [raw] = load.inputs.dataset_inputs
    assert raw.dataset.name == "iris" and raw.dataset.digest == load.data.tags["data.digest"]
    assert load.data.metrics["n_rows"] == 150
    profile = {a.path for a in client.list_artifacts(load.info.run_id, "profile")}
    assert "profile/histograms.png" in profile
    featurize = steps["featurize"]
    assert featurize.data.tags["task"] == "classification"
    contexts = sorted(
        t.value for d in featurize.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"
    )
    assert contexts == ["testing", "training", "validation"]
    tune = steps["tune"]
    assert tune.data.metrics["n_trials"] == 20
    assert any(key.startswith("best.") for key in tune.data.tags)
    train = steps["train"]
    assert "Training Info" in train.data.tags and any(k.startswith("val_") for k in train.data.metrics)
    info = mlflow.models.get_model_info(train.data.tags["model_uri"])
    assert info.signature is not None and info.saved_input_example_info is not None
    assert "sepal_length_cm" in info.signature.inputs.input_names()
    evaluate = steps["evaluate"]
    assert evaluate.data.metrics["test_accuracy"] > evaluate.data.metrics["baseline_test_accuracy"]
    assert "accuracy_score" in evaluate.data.metrics  # from mlflow.models.evaluate
    table = mlflow.artifacts.load_text(f"runs:/{evaluate.info.run_id}/evaluation/test_predictions.csv")
    assert table.splitlines()[0].endswith("actual,predicted,correct")


def test_registered_champion_predicts_iris(pipeline):
    client = pipeline["client"]
    version = client.get_model_version_by_alias("pipeline-model", "champion")
    assert str(version.version) == "1" and version.run_id == pipeline["steps"]["train"].info.run_id
    assert pipeline["steps"]["evaluate"].data.tags["registered_model.champion"] == "true"
    frame, target = load_bundled_frame("iris")
    model = mlflow.pyfunc.load_model("models:/pipeline-model@champion")
    accuracy = (model.predict(frame.drop(columns=target)) == frame[target]).mean()
    assert accuracy >= 0.9


def test_summary_names_steps_model_and_ui(pipeline):
    out = pipeline["result"].stdout
    for name, run in pipeline["steps"].items():
        assert any(line.split()[:3] == [name, run.info.run_id, "FINISHED"] for line in out.splitlines())
    assert "registered model: pipeline-model version 1@champion" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out and str(Path("mlflow.db")) in out


def test_readme_client_example_lists_steps_and_best_trial(pipeline):
    readme = (PROJECT_DIR / "README.md").read_text()
    snippet = readme.split("<!-- client-example -->\n```python\n", 1)[1].split("```", 1)[0]
    project = Path(pipeline["uri"].removeprefix("sqlite:///")).parent
    result = subprocess.run(
        [sys.executable, "-c", snippet], cwd=project, env=mlflow_env(None), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:5]] == STEPS
    assert lines[5].startswith("best trial: trial-")

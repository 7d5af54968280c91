"""The step cache: reuse what is done, re-run what changed and what follows it, resume after a failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from steps.lib.tables import load_bundled_frame
from tests.integration.conftest import mlflow_run, runs_by_step

STEPS = ["load", "featurize", "tune", "train", "evaluate"]


@pytest.fixture(scope="module")
def workspace(project, tmp_path_factory):
    """One store and one data file for the whole story, told in order."""
    root = tmp_path_factory.mktemp("cache")
    frame, _ = load_bundled_frame("iris")
    frame.to_csv(root / "iris.csv", index=False)
    return {"project": project, "store": f"sqlite:///{root / 'mlflow.db'}", "data": root / "iris.csv", "root": root}


def run_main(workspace, *params: str, expect_ok: bool = True):
    values = {"data_uri": str(workspace["data"]), "target": "species", "max_evals": "3"}
    values |= dict(param.split("=", 1) for param in params)
    args = ["-e", "main"]
    for name, value in values.items():
        args += ["-P", f"{name}={value}"]
    result = mlflow_run(workspace["project"], args, workspace["store"])
    assert (result.returncode == 0) == expect_ok, result.stderr[-3000:]
    client = MlflowClient(workspace["store"])
    main = runs_by_step(client, "main")[0]
    tags = main.data.tags
    ids = {s: tags.get(f"steps.{s}.run_id") for s in STEPS}
    cached = {s: tags.get(f"steps.{s}.cached") for s in STEPS}
    return main, ids, cached, result


def ran(cached, *steps):
    """The cache outcome expected when exactly `steps` ran."""
    return {s: ("false" if s in steps else "true") for s in STEPS}


def test_1_first_run_runs_everything(workspace):
    _, ids, cached, result = run_main(workspace)
    assert cached == ran(cached, *STEPS)
    workspace["first"] = ids
    assert result.stdout.count(" ran") >= 5


def test_2_nothing_changed_reuses_every_step(workspace):
    main, ids, cached, result = run_main(workspace, "max_evals=3.0")  # the same int, typed differently
    assert cached == ran(cached)
    assert ids == workspace["first"]
    assert main.info.status == "FINISHED"
    for step in STEPS:
        assert f"cached ({ids[step]})" in result.stdout


def test_3_a_param_reruns_its_step_only(workspace):
    _, ids, cached, _ = run_main(workspace, "registered_model_name=iris-cache")
    assert cached == ran(cached, "evaluate")
    assert ids["train"] == workspace["first"]["train"] and ids["evaluate"] != workspace["first"]["evaluate"]


def test_4_changed_data_reruns_everything(workspace):
    data = workspace["data"]
    original = data.read_text()
    data.write_text(original.replace("5.1,3.5,1.4,0.2", "5.2,3.5,1.4,0.2", 1))
    try:
        _, _, cached, _ = run_main(workspace)
        assert cached == ran(cached, *STEPS)
    finally:
        data.write_text(original)


def test_5_changed_code_reruns_that_step_and_what_follows(workspace):
    evaluate = Path(workspace["project"]) / "steps" / "evaluate.py"
    evaluate.write_text(evaluate.read_text() + "\n# a change to evaluate's code\n")
    _, _, cached, _ = run_main(workspace)
    assert cached == ran(cached, "evaluate")


def test_6_failed_step_resumes_after_the_fix(workspace):
    main, ids, cached, _ = run_main(workspace, "metric=rmse", expect_ok=False)  # tune refuses rmse for iris
    assert main.info.status == "FAILED" and main.data.tags["pipeline.error"].startswith("step 'tune' failed")
    assert cached["load"] == cached["featurize"] == "true"
    client = MlflowClient(workspace["store"])
    assert client.get_run(ids["tune"]).info.status == "FAILED"
    main, fixed_ids, cached, _ = run_main(workspace, "metric=accuracy")
    assert main.info.status == "FINISHED"
    assert cached == ran(cached, "tune", "train", "evaluate") or cached == ran(cached, "tune", "evaluate")
    assert fixed_ids["tune"] != ids["tune"]  # the FAILED run is never reused


def test_7_missing_artifacts_are_not_reused(workspace):
    client = MlflowClient(workspace["store"])
    load_id = workspace["first"]["load"]
    artifact_dir = Path(client.get_run(load_id).info.artifact_uri.removeprefix("file://"))
    shutil.rmtree(artifact_dir / "data")
    _, ids, cached, _ = run_main(workspace)
    assert cached["load"] == "false" and ids["load"] != load_id
    # load wrote the same bytes again, so featurize's inputs did not change: it stays cached
    assert cached["featurize"] == "true"


def test_8_use_cache_false_runs_everything(workspace):
    _, _, cached, _ = run_main(workspace, "use_cache=false")
    assert cached == ran(cached, *STEPS)


def test_9_use_cache_must_be_a_boolean(workspace):
    main, _, _, result = run_main(workspace, "use_cache=sometimes", expect_ok=False)
    assert "error: main: use_cache must be true or false, got 'sometimes'" in result.stderr
    assert main.info.status == "FAILED"

"""The step cache through real `mlflow run`s: reuse what is done, re-run what changed, resume after a failure.

One store and one data file for the module, and a first main run on them. Each test compares with the
newest finished main of the same params (whichever test made it), so each passes alone (`-k`) and in any
order. The cache's decisions in-process (changed data, use_cache=false): tests/unit/test_main.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from steps.lib.cache import cache_key, data_digest
from steps.lib.names import PIPELINE_STEPS
from steps.lib.tables import load_bundled_frame
from tests.integration.conftest import assert_failed_cleanly, mlflow_run, runs_by_step


@pytest.fixture(scope="module")
def workspace(project, tmp_path_factory):
    """The store, the data file, and a first main run on them (every step ran)."""
    root = tmp_path_factory.mktemp("cache")
    frame, _ = load_bundled_frame("iris")
    frame.to_csv(root / "iris.csv", index=False)
    workspace = {"project": project, "store": f"sqlite:///{root / 'mlflow.db'}", "data": root / "iris.csv"}
    workspace["first"] = run_main(workspace)
    return workspace


DEFAULTS = {"metric": "auto", "registered_model_name": "pipeline-model", "use_cache": "true"}


def load_key(workspace) -> str:
    """The cache key main gives load for the workspace's data, with the project's code as it is now."""
    data = str(workspace["data"])
    params, inputs = {"data_uri": data, "target": "species"}, {"data": data_digest(data)}
    return cache_key(Path(workspace["project"]), "load", params, inputs, "local")


def last_default_main(workspace) -> dict[str, str]:
    """The step run ids of the newest finished main with the default params and today's code: what the next reuses."""
    client = MlflowClient(workspace["store"])
    conditions = [f"params.{name} = '{value}'" for name, value in DEFAULTS.items()]
    query = " and ".join(["tags.`pipeline.step` = 'main'", "attributes.status = 'FINISHED'", *conditions])
    experiments = [e.experiment_id for e in client.search_experiments()]
    key = load_key(workspace)
    for main in client.search_runs(experiments, query, order_by=["attributes.start_time DESC"]):
        ids = {step: main.data.tags[f"steps.{step}.run_id"] for step in PIPELINE_STEPS}
        if client.get_run(ids["load"]).data.tags.get("cache.key") == key:
            return ids
    raise AssertionError("no finished main with the default params and the current code")


def run_main(workspace, *params: str, expect_ok: bool = True) -> dict:
    """`mlflow run . -e main` on the workspace's data; its run, each step's run id and whether it was cached."""
    values = {"data_uri": str(workspace["data"]), "target": "species", "max_evals": "3"}
    values |= dict(param.split("=", 1) for param in params)
    args = ["-e", "main", *[item for name, value in values.items() for item in ("-P", f"{name}={value}")]]
    result = mlflow_run(workspace["project"], args, workspace["store"])
    assert (result.returncode == 0) == expect_ok, result.stderr[-3000:]
    main = runs_by_step(MlflowClient(workspace["store"]), "main")[0]
    tags = main.data.tags
    return {
        "main": main,
        "ids": {step: tags.get(f"steps.{step}.run_id") for step in PIPELINE_STEPS},
        "cached": {step: tags.get(f"steps.{step}.cached") for step in PIPELINE_STEPS},
        "result": result,
    }


def ran(*steps: str) -> dict[str, str | None]:
    """The cache outcome of a main in which exactly `steps` ran and the others were reused."""
    return {step: "false" if step in steps else "true" for step in PIPELINE_STEPS}


def test_a_first_run_runs_every_step(workspace):
    first = workspace["first"]
    assert first["cached"] == ran(*PIPELINE_STEPS)
    rows = [line.split() for line in first["result"].stdout.splitlines()]
    assert [row[-1] for row in rows if row[:2] in ([s, first["ids"][s]] for s in PIPELINE_STEPS)] == ["ran"] * 5


def test_nothing_changed_reuses_every_step(workspace):
    before = last_default_main(workspace)
    again = run_main(workspace, "max_evals=3.0")  # the same int, typed differently
    assert again["cached"] == ran() and again["ids"] == before
    assert again["main"].info.status == "FINISHED"
    for step in PIPELINE_STEPS:
        assert f"cached ({again['ids'][step]})" in again["result"].stdout


def test_a_param_reruns_its_step_only(workspace):
    before = last_default_main(workspace)
    changed = run_main(workspace, "registered_model_name=cache-param")
    assert changed["cached"] == ran("evaluate")
    assert changed["ids"]["train"] == before["train"] and changed["ids"]["evaluate"] != before["evaluate"]


def test_a_comment_in_load_reruns_load_only_as_its_output_is_the_same(workspace):
    """A code change re-runs its step; the same bytes out keep every later step cached (early cut-off)."""
    before = last_default_main(workspace)
    load = Path(workspace["project"]) / "steps" / "load.py"
    original = load.read_text()
    load.write_text(original + "\n# a cosmetic change to load's code\n")
    try:
        after = run_main(workspace)
    finally:
        load.write_text(original)
    assert after["cached"] == ran("load")
    assert after["ids"]["load"] != before["load"] and after["ids"]["tune"] == before["tune"]


def test_a_failed_step_fails_main_in_one_line_and_resumes_after_the_fix(workspace):
    # Only tune can tell that rmse does not fit iris: the task is known once featurize has run.
    failed = run_main(workspace, "metric=rmse", expect_ok=False)
    tune = assert_failed_cleanly(failed["result"], workspace["store"], "tune", "metric 'rmse' does not fit")
    main = failed["main"]
    assert main.info.status == "FAILED" and main.data.tags["pipeline.error"].startswith("step 'tune' failed")
    assert any(line.startswith("error: main: step 'tune' failed") for line in failed["result"].stderr.splitlines())
    assert failed["cached"] == {"load": "true", "featurize": "true", "tune": "false", "train": None, "evaluate": None}
    assert failed["ids"]["tune"] == tune.info.run_id
    fixed = run_main(workspace, "metric=log_loss")
    assert fixed["main"].info.status == "FINISHED"
    # tune's output names its metric, so train's input changed too
    assert fixed["cached"] == ran("tune", "train", "evaluate")
    assert fixed["ids"]["tune"] != failed["ids"]["tune"]  # the FAILED run is never reused


def test_missing_artifacts_are_not_reused(workspace):
    before = last_default_main(workspace)
    client = MlflowClient(workspace["store"])
    experiment = client.get_run(before["load"]).info.experiment_id
    for run in client.search_runs([experiment], f"tags.`cache.key` = '{load_key(workspace)}'"):
        shutil.rmtree(Path(run.info.artifact_uri.removeprefix("file://")) / "data")  # every run it could reuse
    after = run_main(workspace)
    assert after["cached"]["load"] == "false" and after["ids"]["load"] != before["load"]
    # load wrote the same bytes again, so featurize's inputs did not change: it stays cached
    assert after["cached"]["featurize"] == "true" and after["ids"]["featurize"] == before["featurize"]

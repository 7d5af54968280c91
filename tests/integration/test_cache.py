"""The step cache through real `mlflow run`s: reuse what is done, re-run what changed, resume after a failure.

The module goes on with the README run's store and project copy (a session fixture, shared with
test_main_pipeline.py): its main ran every step. Each test compares with the newest finished main of the
README's params and the code as it is now (whichever test made it), so each passes alone (`-k`) and in any
order. The cache's decisions in-process (changed data, use_cache=false, outputs gone): tests/unit/test_main.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from steps.lib.cache import cache_key, data_digest
from steps.lib.names import PIPELINE_STEPS
from tests.integration.conftest import assert_failed_cleanly, mlflow_run

DATA_URI = "sklearn:iris"  # the README run's data, the default


@pytest.fixture(scope="module")
def workspace(readme_run):
    return {"project": readme_run["project"], "store": readme_run["uri"], "first": readme_run}


def load_key(workspace) -> str:
    """The cache key main gives load for the default data, with the project's code as it is now."""
    params, inputs = {"data_uri": DATA_URI, "target": "auto"}, {"data": data_digest(DATA_URI)}
    return cache_key(Path(workspace["project"]), "load", params, inputs, "local")


def last_readme_like_main(workspace) -> dict[str, str]:
    """The step run ids of the newest finished main with the README run's params and today's code: what the next
    such main reuses."""
    client = MlflowClient(workspace["store"])
    readme_params = workspace["first"]["main"].data.params
    key = load_key(workspace)
    query = "tags.`pipeline.step` = 'main' and attributes.status = 'FINISHED'"
    for main in client.search_runs(["0"], query, order_by=["attributes.start_time DESC"]):
        ids = {step: main.data.tags[f"steps.{step}.run_id"] for step in PIPELINE_STEPS}
        if main.data.params == readme_params and client.get_run(ids["load"]).data.tags.get("cache.key") == key:
            return ids
    raise AssertionError("no finished main with the README run's params and the current code")


def run_main(workspace, *params: str, expect_ok: bool = True) -> dict:
    """`mlflow run . -e main` with `params` on top of the defaults; its run, each step's run id and whether it
    was cached."""
    args = ["-e", "main", *[item for param in params for item in ("-P", param)]]
    result = mlflow_run(workspace["project"], args, workspace["store"])
    assert (result.returncode == 0) == expect_ok, result.stderr[-3000:]
    client = MlflowClient(workspace["store"])
    query = "tags.`pipeline.step` = 'main'"
    [main] = client.search_runs(["0"], query, order_by=["attributes.start_time DESC"], max_results=1)
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
    tags = first["main"].data.tags
    assert {step: tags[f"steps.{step}.cached"] for step in PIPELINE_STEPS} == ran(*PIPELINE_STEPS)
    ids = {step: tags[f"steps.{step}.run_id"] for step in PIPELINE_STEPS}
    rows = [line.split() for line in first["result"].stdout.splitlines()]
    assert [row[-1] for row in rows if row[:2] in ([s, ids[s]] for s in PIPELINE_STEPS)] == ["ran"] * 5


def test_nothing_changed_reuses_every_step(workspace):
    before = last_readme_like_main(workspace)
    again = run_main(workspace, "max_evals=20.0")  # the default, typed differently
    assert again["cached"] == ran() and again["ids"] == before
    assert again["main"].info.status == "FINISHED"
    for step in PIPELINE_STEPS:
        assert f"cached ({again['ids'][step]})" in again["result"].stdout


def test_the_cache_keys_on_resolved_values_not_on_a_profile(workspace, tmp_path):
    """A profile giving the README run's values (and a -P beside it): every step reused; main logs what it
    resolved and where each value came from."""
    before = last_readme_like_main(workspace)
    profile = tmp_path / "same.yaml"
    profile.write_text("max_evals: 20\nalgo: tpe\nmodels: [all]\nseed: 7\n")
    again = run_main(workspace, f"profile={profile}", "seed=42")
    assert again["cached"] == ran() and again["ids"] == before
    params = again["main"].data.params
    assert params["resolved.max_evals"] == "20" and params["resolved.seed"] == "42"
    assert again["main"].data.tags["profile"] == str(profile)
    client = MlflowClient(workspace["store"])
    with tempfile.TemporaryDirectory() as folder:
        resolved = yaml.safe_load(
            Path(client.download_artifacts(again["main"].info.run_id, "profile/resolved.yaml", folder)).read_text()
        )
    assert resolved["from"]["max_evals"] == "profile" and resolved["from"]["seed"] == "typed"
    assert resolved["from"]["data_uri"] == "default" and resolved["params"]["models"] == "all"


def test_a_param_reruns_its_step_only(workspace):
    """(verbose=true, which is no step's param: the cache is the same; every log line on the console too)"""
    before = last_readme_like_main(workspace)
    changed = run_main(workspace, "registered_model_name=cache-param", "verbose=true")
    assert changed["cached"] == ran("evaluate")
    assert changed["ids"]["train"] == before["train"] and changed["ids"]["evaluate"] != before["evaluate"]
    console = changed["result"].stderr
    assert "INFO steps.main: step load: reusing run" in console  # main's own log lines
    assert "INFO mlflow.projects.backend.local: === Running command 'python -m steps.evaluate" in console  # MLflow's
    assert "INFO steps.evaluate:" in console and "Successfully registered model 'cache-param'" in console


def test_a_comment_in_load_reruns_load_only_as_its_output_is_the_same(workspace):
    """A code change re-runs its step; the same bytes out keep every later step cached (early cut-off)."""
    before = last_readme_like_main(workspace)
    load = Path(workspace["project"]) / "steps" / "load.py"
    original = load.read_text()
    load.write_text(original + "\n# a cosmetic change to load's code\n")
    try:
        after = run_main(workspace)
    finally:
        load.write_text(original)
    assert after["cached"] == ran("load")
    assert after["ids"]["load"] != before["load"] and after["ids"]["tune"] == before["tune"]


def test_a_bound_of_the_other_task_fails_main_before_tune(workspace):
    """`max_rmse` on iris was refused by evaluate, after the whole tune and train: main checks the bounds as
    soon as featurize has told the task."""
    failed = run_main(workspace, "max_rmse=0.5", expect_ok=False)
    errors = [line for line in failed["result"].stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: main: max_rmse does not fit a classification task; use min_accuracy, min_f1_macro, "
        "min_roc_auc_ovr, max_log_loss"
    ], failed["result"].stderr[-2000:]
    assert failed["main"].info.status == "FAILED"
    assert failed["cached"] == {"load": "true", "featurize": "true", "tune": None, "train": None, "evaluate": None}


def test_a_failed_step_fails_main_in_one_line_and_resumes_after_the_fix(workspace):
    # Only tune can tell that rmse does not fit iris: the task is known once featurize has run.
    failed = run_main(workspace, "metric=rmse", expect_ok=False)
    tune = assert_failed_cleanly(failed["result"], workspace["store"], "tune", "metric 'rmse' does not fit")
    main = failed["main"]
    assert main.info.status == "FAILED" and main.data.tags["pipeline.error"].startswith("step 'tune' failed")
    assert any(line.startswith("error: main: step 'tune' failed") for line in failed["result"].stderr.splitlines())
    assert failed["cached"] == {"load": "true", "featurize": "true", "tune": "false", "train": None, "evaluate": None}
    assert failed["ids"]["tune"] == tune.info.run_id
    fixed = run_main(workspace, "metric=log_loss", "registered_model_name=cache-fix", "max_evals=3")
    assert fixed["main"].info.status == "FINISHED"
    # tune's output names its metric, so train's input changed too
    assert fixed["cached"] == ran("tune", "train", "evaluate")
    assert fixed["ids"]["tune"] != failed["ids"]["tune"]  # the FAILED run is never reused

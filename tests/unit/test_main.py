"""Entry point main: its summary and hints."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import steps.main as main_module
from steps.lib.cache import cache_key, data_digest, normalise_params, sign_step_run
from steps.lib.errors import PipelineError
from steps.lib.gates import GateOptions
from steps.lib.models import FitOptions
from steps.lib.names import CACHE_KEY_TAG, MODEL_URI_TAG, OUTPUT_DIGEST_TAG, PIPELINE_STEPS
from steps.lib.search_options import TuneOptions
from steps.lib.signing import SECRET_FILE_VARIABLE, file_manifest, record_manifest, run_root
from steps.lib.split_options import SplitOptions
from steps.main import StepResult, format_summary, run_steps, ui_hint
from tests.conftest import PROJECT_DIR


def test_summary_table_lists_every_step():
    text = format_summary(
        [
            StepResult("load", "abc", "FINISHED", 8.04, "n_rows=150", cached=True),
            StepResult("featurize", "def", "FAILED", 2.0, "", "boom"),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["step", "run", "id", "status", "seconds", "key", "metric", "cache"]
    assert lines[2].split() == ["load", "abc", "FINISHED", "8.0", "n_rows=150", "cached", "(abc)"]
    assert lines[3].split() == ["featurize", "def", "FAILED", "2.0", "ran"]


def test_ui_hint():
    assert ui_hint("sqlite:////tmp/mlflow.db").startswith("mlflow ui --backend-store-uri sqlite:////tmp/mlflow.db")
    assert ui_hint("http://u:pw@127.0.0.1:8080") == "open http://u:***@127.0.0.1:8080 in a browser"


def test_params_are_normalised_by_declared_type():
    def normalised(entry_point, params):
        return normalise_params(PROJECT_DIR, entry_point, params)

    assert normalised("tune", {"max_evals": "3.0", "seed": 42, "metric": "auto", "splits_uri": "runs:/x"}) == (
        normalised("tune", {"max_evals": 3, "seed": "42", "metric": "auto", "splits_uri": "runs:/y"})
    )
    assert normalised("featurize", {"test_size": "1e-01"}) == normalised("featurize", {"test_size": 0.1})
    assert normalised("tune", {"max_evals": 3}) != normalised("tune", {"max_evals": 4})


def test_cache_key_changes_with_params_inputs_code_and_environment(tmp_path):
    import shutil

    project = tmp_path / "project"
    shutil.copytree(PROJECT_DIR / "steps", project / "steps")
    for name in ("MLproject", "python_env.yaml", "requirements.txt"):
        shutil.copy(PROJECT_DIR / name, project / name)

    def key(**overrides):
        args = {"parameters": {"task": "auto", "seed": 1}, "inputs": {"raw_data": "abc"}, "env_manager": "local"}
        return cache_key(project, "featurize", **(args | overrides))

    base = key()
    assert key() == base
    assert key(parameters={"task": "auto", "seed": 2}) != base
    assert key(parameters={"task": "auto", "seed": "1", "raw_data_uri": "runs:/other/data"}) == base
    assert key(inputs={"raw_data": "abd"}) != base
    assert key(env_manager="uv") != base
    (project / "steps" / "train.py").write_text("# another step's code\n")
    assert key() == base
    (project / "steps" / "featurize.py").write_text((project / "steps" / "featurize.py").read_text() + "\n# edit\n")
    edited = key()
    assert edited != base
    (project / "requirements.txt").write_text("mlflow==3.17.1\n")
    assert key() != edited


def test_data_digest_follows_the_content(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x,y\n1,2\n")
    first = data_digest(str(path))
    path.write_text("x,y\n1,3\n")
    assert data_digest(str(path)) != first
    assert data_digest("sklearn:iris").startswith("sklearn:iris@scikit-learn==")
    assert data_digest(str(tmp_path / "missing.csv")).startswith("unavailable:")


def recorded_step_runs(data_uri: str) -> dict[str, tuple[dict, dict]]:
    """What main hands each step (params, cache inputs), with each step's run made up: its id and digest."""
    calls = {}

    class Recorder:
        def step(self, entry_point: str, parameters: dict, inputs: dict) -> SimpleNamespace:
            calls[entry_point] = (parameters, inputs)
            tags = {OUTPUT_DIGEST_TAG: f"{entry_point}-digest", MODEL_URI_TAG: "models:/m-1"}
            return SimpleNamespace(info=SimpleNamespace(run_id=f"{entry_point}-run"), data=SimpleNamespace(tags=tags))

    gates = GateOptions(min_delta=0.01, bounds={"min_accuracy": 0.9})
    tune = TuneOptions(max_evals=5, models=("ridge",))
    split, fit = SplitOptions("time", "at"), FitOptions("train", 3)
    run_steps(Recorder(), data_uri, None, "regression", "name", 7, tune, gates, split, fit)
    return calls


def test_main_keys_load_by_the_data_and_each_later_step_by_what_came_before(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x,y\n1,2\n")
    calls = recorded_step_runs(str(path))
    assert list(calls) == list(PIPELINE_STEPS)
    inputs = {step: given for step, (_, given) in calls.items()}
    assert inputs["load"] == {"data": data_digest(str(path))}
    assert inputs["featurize"] == {"raw_data": "load-digest"}
    assert inputs["tune"] == {"splits": "featurize-digest"}
    assert inputs["train"] == {"splits": "featurize-digest", "best_params": "tune-digest"}
    assert inputs["evaluate"] == {"model": "train-digest", "splits": "featurize-digest"}
    path.write_text("x,y\n1,3\n")  # other bytes: another key for load, and so for every step after it
    assert recorded_step_runs(str(path))["load"][1] != inputs["load"]
    params = {step: given for step, (given, _) in calls.items()}
    assert params["load"] == {"data_uri": str(path), "target": "auto", "data_copy": "none"}
    assert params["featurize"] == {
        "raw_data_uri": "runs:/load-run/data",
        "task": "regression",
        "seed": 7,
        "split": "time",
        "time_column": "at",
        "group_column": "none",
    }
    assert params["tune"]["models"] == "ridge" and params["tune"]["max_evals"] == "5"
    assert params["train"]["params_uri"] == "runs:/tune-run/best_params.json"
    assert params["train"]["refit"] == "train" and params["train"]["threads"] == params["evaluate"]["threads"] == 3
    assert params["evaluate"]["model_uri"] == "models:/m-1" and params["evaluate"]["min_accuracy"] == "0.9"


REUSE_CASES = {
    "reused": None,
    "use_cache=false": None,
    "outputs gone": None,
    "planted by another user": "its cache record is not signed with your secret",
    "key set by hand": "its cache record is not signed with your secret",
    "output changed after the run": "its outputs do not match their manifest (raw.parquet was changed after the run)",
    "no manifest": "it has no output manifest",
}


@pytest.mark.parametrize("case", list(REUSE_CASES))
def test_a_finished_run_is_reused_only_with_its_key_its_signature_and_its_outputs(
    tracking_uri, tmp_path, monkeypatch, case
):
    """A tag is anyone's to write on a shared store: a run is reused only if its cache record is signed with
    this user's secret and its outputs re-hash to its manifest; the summary says why another was not."""
    client = MlflowClient()
    params, inputs = {"data_uri": "sklearn:iris", "target": "auto"}, {"data": "digest-of-the-data"}
    key = cache_key(main_module.PROJECT_DIR, "load", params, inputs, "local")
    monkeypatch.setenv(SECRET_FILE_VARIABLE, str(tmp_path / "my-secret"))
    with mlflow.start_run(run_name="load") as earlier:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "raw.parquet").write_text("rows")
        if case != "no manifest":
            record_manifest(run_root("data"), file_manifest(tmp_path / "data"))
        mlflow.log_artifacts(str(tmp_path / "data"), "data")
        mlflow.set_tag(OUTPUT_DIGEST_TAG, "abc")
    if case == "planted by another user":
        monkeypatch.setenv(SECRET_FILE_VARIABLE, str(tmp_path / "their-secret"))
    if case == "key set by hand":
        client.set_tag(earlier.info.run_id, CACHE_KEY_TAG, key)
    else:
        sign_step_run(client, earlier.info.run_id, key)  # as main does once the step has finished
    monkeypatch.setenv(SECRET_FILE_VARIABLE, str(tmp_path / "my-secret"))
    stored = Path(earlier.info.artifact_uri.removeprefix("file://")) / "data"
    if case == "outputs gone":
        shutil.rmtree(stored)
    if case == "output changed after the run":
        (stored / "raw.parquet").write_text("other rows")
    launched = []

    def launch(entry_point: str, *args: object) -> StepResult:
        with mlflow.start_run(run_name=entry_point, nested=True) as run:
            record_manifest(run_root("data"), {"raw.parquet": "0" * 64})
        launched.append(run.info.run_id)
        return StepResult(entry_point, run.info.run_id, "FINISHED", 0.1)

    monkeypatch.setattr(main_module, "launch_step", launch)
    with mlflow.start_run(run_name="main"):
        main_run_id = mlflow.active_run().info.run_id
        pipeline = main_module.Pipeline(client, "0", main_run_id, "local", case != "use_cache=false", {})
        run = pipeline.step("load", params, inputs)
    if case == "reused":
        assert launched == [] and run.info.run_id == earlier.info.run_id and pipeline.results[0].cached
        return
    assert launched == [run.info.run_id] and run.info.run_id != earlier.info.run_id
    tags = client.get_run(run.info.run_id).data.tags
    assert tags[CACHE_KEY_TAG] == key and tags["cache.signature"]  # the next main may reuse it
    summary = main_module.format_summary(pipeline.results)
    if REUSE_CASES[case] is not None:
        assert f"load: run {earlier.info.run_id} not reused: {REUSE_CASES[case]}" in summary
    else:
        assert "not reused" not in summary


def test_the_signing_secret_is_made_once_for_its_user_only_and_refused_when_others_can_read_it(tmp_path, monkeypatch):
    import os
    import stat

    from steps.lib.signing import user_secret

    monkeypatch.setenv(SECRET_FILE_VARIABLE, str(tmp_path / "config" / "cache-secret"))
    first = user_secret()
    path = tmp_path / "config" / "cache-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 64 and user_secret() == first
    os.chmod(path, 0o644)
    with pytest.raises(PipelineError, match=f"the cache secret {path} is readable by other users; run `chmod 600"):
        user_secret()


def test_main_digests_a_bundled_data_set_without_importing_scikit_learn():
    """The README's default data: its digest is its name and scikit-learn's installed version, read from the
    package's metadata (importing scikit-learn cost main ~1.3 s of every run); the same string as before."""
    import sklearn

    code = "import sys, steps.main; from steps.lib.cache import data_digest; d = data_digest('sklearn:iris'); "
    code += "print(d, 'sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == [f"sklearn:iris@scikit-learn=={sklearn.__version__}", "False"], done.stderr[-2000:]


def test_the_summary_shows_a_huge_figure_in_four_digits():
    """An rmse of labels near 1e300 filled the summary's line with 309 digits."""
    from types import SimpleNamespace

    from steps.main import key_metric

    def run(metrics: dict[str, float]) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(metrics=metrics, tags={}))

    assert key_metric("tune", run({"best_val_rmse": 1.7976931348623157e308}), "rmse") == "best_val_rmse=1.798e+308"
    assert key_metric("evaluate", run({"test_rmse": 12345.678}), "rmse") == "test_rmse=12345.6780"
    assert key_metric("load", run({"n_rows": 150.0}), "f1_macro") == "n_rows=150"

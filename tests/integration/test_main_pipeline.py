"""The README's main command, exactly as written, on the embedded default data and the default store; then
what comes after it on that store: gated promotion, batch scoring, online serving over real HTTP, drift.
(tests/integration/test_cache.py goes on with the same store, after these.)"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from steps.lib.names import PIPELINE_STEPS
from steps.lib.tables import load_bundled_frame
from tests.conftest import PROJECT_DIR, pages_in_chromium
from tests.integration.conftest import children, mlflow_env, mlflow_run, model_server, post, runs_by_step

STEPS = list(PIPELINE_STEPS)
NAME = "pipeline-model"
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


@pytest.fixture(scope="module")
def pipeline(readme_run):
    """The README's main run (tests/integration/conftest.py), its store the tracking URI of this module."""
    mlflow.set_tracking_uri(readme_run["uri"])
    yield readme_run
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
    assert "profile/histograms.svg" in profile
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
    header = pd.read_csv(io.StringIO(table), nrows=0).columns  # Arrow's CSV writer quotes every name
    assert list(header[-3:]) == ["actual", "predicted", "correct"]


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


def own_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The console lines of main and its steps: all but the outer `mlflow run` process's own INFO lines."""
    stamp = r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\."
    outer = re.compile(
        stamp + r"(store\.db\.utils: |projects\.utils: === Created directory |projects\.backend\.local: === Running "
        r"command 'python -m steps\.main |projects: === Run \(ID '[0-9a-f]+'\) succeeded)"
    )
    return [line for line in (result.stdout + result.stderr).splitlines() if not outer.match(line)]


def test_the_console_is_quiet_and_every_step_keeps_its_full_log(pipeline):
    """At most 25 lines of main's and its steps' own, no library warning, no hyperopt line, tune's progress on
    one line; what was not printed is in each run's logs/<step>.log."""
    lines = own_lines(pipeline["result"])
    assert len(lines) <= 25, "\n".join(lines)
    text = "\n".join(lines)
    assert "Warning" not in text and "hyperopt" not in text and "TPE using" not in text, text
    [progress] = [line for line in lines if line.startswith("tune: ")]  # on stderr, not a terminal: one line
    assert progress.startswith("tune: 20/20 trials in ") and "best loss" in progress
    client = pipeline["client"]
    logs = {}
    for name, run in [("main", pipeline["main"]), *pipeline["steps"].items()]:
        assert [a.path for a in client.list_artifacts(run.info.run_id, "logs")] == [f"logs/{name}.log"]
        logs[name] = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/logs/{name}.log")
    assert "build_posterior_wrapper took" in logs["tune"]  # hyperopt's INFO lines: kept, not printed
    assert "=== Running command" in logs["main"] and "Successfully registered model" in logs["evaluate"]


def test_the_runs_tell_their_story_in_the_ui(pipeline):
    """main's description: every step linked to its run, the version and its alias, the gates; the figures
    pipelines are compared by, on main; a description on every step run."""
    main, steps = pipeline["main"], pipeline["steps"]
    note = main.data.tags["mlflow.note.content"]
    for name, run in steps.items():
        assert f"| {name} | FINISHED |" in note
        assert f"(#/experiments/{run.info.experiment_id}/runs/{run.info.run_id})" in note
    assert "[pipeline-model version 1](#/models/pipeline-model/versions/1) **@champion**" in note
    assert "all gates passed" in note and "Failed gates" not in note
    metric = steps["evaluate"].data.tags["metric"]
    assert main.data.metrics[f"test_{metric}"] == steps["evaluate"].data.metrics[f"test_{metric}"]
    assert main.data.metrics[f"baseline_test_{metric}"] == steps["evaluate"].data.metrics[f"baseline_test_{metric}"]
    assert main.data.metrics["promoted"] == 1.0 and main.data.metrics["n_cached_steps"] == 0
    assert main.data.metrics["n_trials"] == 20 and main.data.tags["champion.decision"]
    assert {f"seconds_{name}" for name in steps} <= set(main.data.metrics)
    for name, run in steps.items():
        assert run.data.tags["mlflow.note.content"].startswith(f"**{name}**"), name
    assert (
        "Split random (stratified by the label): train 90, validation 30, test 30 rows"
        in (steps["featurize"].data.tags["mlflow.note.content"])
    )


def test_every_run_has_a_card_a_browser_shows_whole(pipeline, tmp_path):
    """card.html of main and of each step: every image decoded, no request to any other address (Chromium)."""
    client = pipeline["client"]
    runs = [("main", pipeline["main"]), *pipeline["steps"].items()]
    paths = [Path(client.download_artifacts(run.info.run_id, "card.html", str(tmp_path / name))) for name, run in runs]
    seen = dict(zip([name for name, _ in runs], pages_in_chromium(paths), strict=True))
    for name, page in seen.items():
        assert page["requests"] == [] and page["decoded"] == page["images"], (name, page)
        assert page["title"].startswith(f"{name}: "), page
    assert seen["load"]["images"] == 1 and seen["tune"]["images"] == 2 and seen["evaluate"]["images"] >= 3
    main_card = paths[0].read_text()
    assert "<svg" in main_card and all(run.info.run_id in main_card for _, run in runs[1:])


def test_readme_client_example_lists_steps_and_best_trial(pipeline):
    readme = (PROJECT_DIR / "README.md").read_text()
    snippet = readme.split("<!-- client-example -->\n```python\n", 1)[1].split("```", 1)[0]
    folder = pipeline["project"].parent
    env = mlflow_env(f"sqlite:///{folder / 'after-main.db'}")
    result = subprocess.run(
        [sys.executable, "-c", snippet], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:5]] == STEPS
    assert lines[5].startswith("best trial: trial-")


# --------------------------------------------------------------------------- after main


@pytest.fixture(scope="module")
def registry(pipeline, tmp_path_factory):
    """The README run's store (it registered version 1 as champion), and the batches the tests score."""
    folder = tmp_path_factory.mktemp("lifecycle")
    store, client, project = pipeline["uri"], pipeline["client"], pipeline["project"]
    splits = f"{pipeline['steps']['featurize'].info.artifact_uri}/splits"
    mlflow.set_tracking_uri(store)
    held_out = pd.read_parquet(mlflow.artifacts.download_artifacts(f"{splits}/test.parquet", dst_path=str(folder)))
    frame = load_bundled_frame("iris")[0]
    shifted = frame.sample(40, random_state=2).drop(columns=["species"])
    shifted["petal_length_cm"] += 2.5  # a new season: longer petals, wider sepals
    shifted["sepal_width_cm"] *= 1.3
    batches = {"held_out": held_out, "shifted": shifted}
    batches["missing_column"] = held_out.drop(columns=["petal_width_cm"])
    batches["extra_column"] = held_out.assign(store_id=7)
    batches["empty"] = held_out.head(0)
    batches["text_in_numbers"] = held_out.astype({"sepal_length_cm": object})
    batches["text_in_numbers"].loc[batches["text_in_numbers"].index[2], "sepal_length_cm"] = "abc"
    paths = {}
    for name, batch in batches.items():
        paths[name] = folder / f"{name}.csv"
        batch.to_csv(paths[name], index=False)
    return {"store": store, "client": client, "paths": paths, "held_out": held_out, "project": project}


def run_step(registry, *args: str) -> subprocess.CompletedProcess[str]:
    return mlflow_run(registry["project"], list(args), registry["store"])


def newest(registry, step: str):
    return runs_by_step(registry["client"], step)[0]


def one_error_line(result: subprocess.CompletedProcess[str] | str) -> str:
    stderr = result if isinstance(result, str) else result.stderr
    [line] = [x for x in stderr.splitlines() if x.startswith("error: ")]
    return line


def in_process(registry, cli_on, step: str, batch: str, *args: str) -> tuple[int, str]:
    """A step's command line run in this process against the registry's store, on one of the batches."""
    return cli_on(registry["store"], step, "--data-uri", str(registry["paths"][batch]), *args)


def test_predict_writes_predictions_and_probabilities_next_to_the_inputs(registry, tmp_path):
    result = run_step(registry, "-e", "predict", "-P", f"data_uri={registry['paths']['held_out']}")
    assert result.returncode == 0, result.stderr[-3000:]
    run = newest(registry, "predict")
    assert run.info.status == "FINISHED" and run.data.tags["model_uri"] == f"models:/{NAME}@champion"
    held_out = registry["held_out"]
    assert run.data.metrics["n_rows"] == len(held_out)
    shares = {k: v for k, v in run.data.metrics.items() if k.startswith("pred_share_")}
    assert set(shares) <= {"pred_share_setosa", "pred_share_versicolor", "pred_share_virginica"}
    assert abs(sum(shares.values()) - 1) < 1e-9
    folder = mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/predictions", dst_path=str(tmp_path))
    table = pd.read_parquet(f"{folder}/predictions.parquet")
    assert list(table.columns[: len(held_out.columns)]) == list(held_out.columns)  # the inputs first
    assert {"prediction", "proba_setosa", "proba_versicolor", "proba_virginica"} <= set(table.columns)
    assert np.allclose(table.filter(like="proba_").sum(axis=1), 1)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert list(table["prediction"]) == list(pyfunc.predict(held_out[FEATURES]))
    assert len(pd.read_csv(f"{folder}/predictions.csv")) == len(held_out)
    # The one line predict prints says what was scored and how to get it; the command works as printed.
    command = f"mlflow artifacts download -r {run.info.run_id} -a predictions -d ."
    assert f"predict: {len(held_out):,} rows scored with models:/{NAME}@champion; the predictions: {command}" in (
        result.stdout.splitlines()
    )
    (tmp_path / "got").mkdir()
    env = mlflow_env(registry["store"])
    got = subprocess.run([sys.executable, "-m", *command.split()], cwd=tmp_path / "got", env=env, capture_output=True)
    assert got.returncode == 0, got.stderr[-2000:]
    assert pd.read_parquet(tmp_path / "got" / "predictions" / "predictions.parquet").equals(table)


@pytest.mark.parametrize(
    ("batch", "model_uri", "message"),
    [
        ("missing_column", "auto", "the batch lacks column 'petal_width_cm' that the model's signature needs"),
        ("text_in_numbers", "auto", "column 'sepal_length_cm' must be numeric (double)"),
        ("held_out", f"models:/{NAME}@nope", f"model 'models:/{NAME}@nope' cannot be loaded"),
    ],
)
def test_predict_bad_input_is_one_line_and_a_failed_run(registry, batch, model_uri, message, cli_on):
    code, stderr = in_process(registry, cli_on, "predict", batch, "--model-uri", model_uri)
    assert code == 1
    assert one_error_line(stderr).startswith(f"error: predict: {message}")
    run = newest(registry, "predict")
    assert run.info.status == "FAILED" and not registry["client"].list_artifacts(run.info.run_id, "predictions")


def test_shifted_batch_is_flagged_and_a_held_out_one_is_not(registry, cli_on, tmp_path):
    # The calm and the shifted batch through monitor's command line in-process; failing on drift through `mlflow run`.
    code, stderr = in_process(registry, cli_on, "monitor", "held_out")
    assert code == 0, stderr[-3000:]
    calm = newest(registry, "monitor")
    assert calm.data.tags["drift_detected"] == "false" and calm.data.tags["labelled"] == "true"
    # with labels, the live metric sits beside the evaluated one (here the same rows: equal)
    assert calm.data.metrics["live_f1_macro"] == pytest.approx(calm.data.metrics["evaluated_f1_macro"])
    for column in FEATURES:
        assert f"drift.{column}.psi" in calm.data.metrics and f"drift.{column}.p_value" in calm.data.metrics
    artifacts = {a.path for a in registry["client"].list_artifacts(calm.info.run_id, "drift")}
    assert {"drift/drift_table.csv", "drift/summary.json", "drift/figures"} <= artifacts

    code, stderr = in_process(registry, cli_on, "monitor", "shifted")
    assert code == 0, stderr[-3000:]
    shifted = newest(registry, "monitor")
    assert shifted.data.tags["drift_detected"] == "true" and shifted.data.tags["labelled"] == "false"
    drifted = set(shifted.data.tags["drifted_columns"].split(","))
    assert {"petal_length_cm", "sepal_width_cm"} <= drifted and "sepal_length_cm" not in drifted
    assert "prediction" in drifted  # longer petals push predictions towards virginica
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            f"{shifted.info.artifact_uri}/drift/drift_table.csv", dst_path=str(tmp_path)
        )
    )
    assert set(table.loc[table.drifted, "column"]) == drifted

    # fail_on_drift: the same finding, but a non-zero exit and a FAILED run that still holds the report
    args = ["-e", "monitor", "-P", f"data_uri={registry['paths']['shifted']}", "-P", "fail_on_drift=true"]
    result = run_step(registry, *args)
    assert result.returncode != 0
    assert one_error_line(result).startswith("error: monitor: drift detected in ")
    failed = newest(registry, "monitor")
    assert failed.info.status == "FAILED" and failed.data.tags["drift_detected"] == "true"


@pytest.mark.parametrize(
    ("batch", "extra", "message"),
    [
        ("missing_column", [], "the batch lacks column(s) 'petal_width_cm'"),
        ("extra_column", [], "the batch has column(s) 'store_id' that the model was not trained on"),
        ("empty", [], "the batch has no rows"),
        ("held_out", ["--fail-on-drift", "maybe"], "fail_on_drift must be true or false, got 'maybe'"),
        ("held_out", ["--model-uri", f"models:/{NAME}@nope"], f"model 'models:/{NAME}@nope' does not exist"),
    ],
)
def test_monitor_bad_input_is_one_line_and_a_failed_run(registry, batch, extra, message, cli_on):
    code, stderr = in_process(registry, cli_on, "monitor", batch, *extra)
    assert code == 1
    assert one_error_line(stderr).startswith(f"error: monitor: {message}")
    assert newest(registry, "monitor").info.status == "FAILED"


def test_predict_and_monitor_cards_and_a_failed_steps_card_show_whole(registry, tmp_path):
    """(after the predict and monitor tests above) their cards in Chromium, finished and failed ones."""
    client, runs = registry["client"], {}
    for step in ("predict", "monitor"):
        for status in ("FINISHED", "FAILED"):
            runs[f"{step} {status}"] = next(r for r in runs_by_step(client, step) if r.info.status == status)
    paths = [
        Path(client.download_artifacts(run.info.run_id, "card.html", str(tmp_path / name.replace(" ", "-"))))
        for name, run in runs.items()
    ]
    seen = dict(zip(runs, pages_in_chromium(paths), strict=True))
    for name, page in seen.items():
        assert page["requests"] == [] and page["decoded"] == page["images"], (name, page)
    assert seen["monitor FINISHED"]["images"] >= 1 and seen["predict FAILED"]["title"] == "predict: failed"
    failed = paths[1].read_text()
    assert "FAILED" in failed and "error" in failed


def test_a_failing_gate_leaves_the_champion_where_it_was(registry):
    client = registry["client"]
    champion = client.get_model_version_by_alias(NAME, "champion")
    # main again with an unreachable threshold: only evaluate re-runs (the other steps come from the cache)
    result = run_step(registry, "-e", "main", "-P", "min_accuracy=1.01")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not champion" in result.stdout
    evaluate = newest(registry, "evaluate")
    version = evaluate.data.tags["registered_model.version"]
    assert version != str(champion.version)
    # the summary loads what this run registered (no champion may exist), and says why once
    assert f"load it: mlflow.pyfunc.load_model('models:/{NAME}/{version}')" in result.stdout
    assert result.stdout.count("thresholds: min_accuracy=1.01") == 1, result.stdout[-2000:]
    assert client.get_model_version_by_alias(NAME, "champion").version == champion.version
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == version
    tags = client.get_model_version(NAME, version).tags
    assert tags["gates.passed"] == "false" and tags["gate.thresholds"].startswith("failed: ")
    assert evaluate.data.tags["gates.passed"] == "false"
    assert evaluate.data.tags["registered_model.alias"] == "challenger"
    card = mlflow.artifacts.load_text(tags["model_card"])
    assert f"# Model card: {NAME} version {version}" in card and "| thresholds | FAILED |" in card
    for section in ("## Data", "## Parameters", "## Test metrics against the baseline", "## Gates", "## Plots"):
        assert section in card
    assert "min_accuracy" in card and "mlflow models serve" in card
    # Crowning the challenger by hand, then restoring the previous champion: moving the alias, as the README shows.
    client.set_registered_model_alias(NAME, "champion", version)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == version
    client.set_registered_model_alias(NAME, "champion", champion.version)
    assert client.get_model_version_by_alias(NAME, "champion").version == champion.version
    assert client.get_model_version(NAME, version).aliases == ["challenger"]


def test_serving_answers_over_http_as_the_pyfunc_does(registry, tmp_path):
    with model_server(f"models:/{NAME}@champion", registry["store"], tmp_path) as base:
        rows = registry["held_out"][FEATURES]
        expected = list(mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(rows))
        split = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        records = {"dataframe_records": json.loads(rows.to_json(orient="records"))}
        for payload in (split, records):
            status, body = post(f"{base}/invocations", payload)
            assert status == 200 and body["predictions"] == expected
        status, body = post(f"{base}/invocations", {"dataframe_records": [{"sepal_length_cm": 5.1}]})
        assert status == 400 and "missing inputs" in body["message"]
        status, body = post(f"{base}/invocations", {"rows": [[1, 2, 3, 4]]})
        assert 400 <= status < 500 and "dataframe_split" in body["message"]

"""After main: gated promotion, batch scoring, online serving over real HTTP, drift monitoring."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from steps.lib.tables import load_bundled_frame
from tests.conftest import run_step_cli
from tests.integration.conftest import free_port, mlflow_env, mlflow_run, runs_by_step

NAME = "pipeline-model"
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


@pytest.fixture(scope="module")
def registry(project, tmp_path_factory):
    """A store where `main` registered version 1 as champion, and the batches the tests score."""
    folder = tmp_path_factory.mktemp("lifecycle")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    result = mlflow_run(project, ["-e", "main", "-P", "max_evals=3"], store)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(store)
    [main] = runs_by_step(client, "main")
    splits = f"{client.get_run(main.data.tags['steps.featurize.run_id']).info.artifact_uri}/splits"
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


def in_process(registry, capsys, monkeypatch, step: str, batch: str, *args: str) -> tuple[int, str]:
    """A step's command line run in this process against the registry's store (bad input: no need for a process).

    The real `mlflow run` path of predict and monitor is exercised by the tests around these.
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["store"])
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(registry["store"])
    return run_step_cli(capsys, step, "--data-uri", str(registry["paths"][batch]), *args)


def test_predict_writes_predictions_and_probabilities_next_to_the_inputs(registry):
    result = run_step(registry, "-e", "predict", "-P", f"data_uri={registry['paths']['held_out']}")
    assert result.returncode == 0, result.stderr[-3000:]
    run = newest(registry, "predict")
    assert run.info.status == "FINISHED" and run.data.tags["model_uri"] == f"models:/{NAME}@champion"
    held_out = registry["held_out"]
    assert run.data.metrics["n_rows"] == len(held_out)
    shares = {k: v for k, v in run.data.metrics.items() if k.startswith("pred_share_")}
    assert set(shares) <= {"pred_share_setosa", "pred_share_versicolor", "pred_share_virginica"}
    assert abs(sum(shares.values()) - 1) < 1e-9
    folder = mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/predictions")
    table = pd.read_parquet(f"{folder}/predictions.parquet")
    assert list(table.columns[: len(held_out.columns)]) == list(held_out.columns)  # the inputs first
    assert {"prediction", "proba_setosa", "proba_versicolor", "proba_virginica"} <= set(table.columns)
    assert np.allclose(table.filter(like="proba_").sum(axis=1), 1)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert list(table["prediction"]) == list(pyfunc.predict(held_out[FEATURES]))
    assert len(pd.read_csv(f"{folder}/predictions.csv")) == len(held_out)


@pytest.mark.parametrize(
    ("batch", "model_uri", "message"),
    [
        ("missing_column", "auto", "the batch lacks column 'petal_width_cm' that the model's signature needs"),
        ("text_in_numbers", "auto", "column 'sepal_length_cm' must be numeric (double)"),
        ("held_out", f"models:/{NAME}@nope", f"model 'models:/{NAME}@nope' cannot be loaded"),
    ],
)
def test_predict_bad_input_is_one_line_and_a_failed_run(registry, batch, model_uri, message, capsys, monkeypatch):
    code, stderr = in_process(registry, capsys, monkeypatch, "predict", batch, "--model-uri", model_uri)
    assert code == 1
    assert one_error_line(stderr).startswith(f"error: predict: {message}")
    run = newest(registry, "predict")
    assert run.info.status == "FAILED" and not registry["client"].list_artifacts(run.info.run_id, "predictions")


def test_shifted_batch_is_flagged_and_a_held_out_one_is_not(registry):
    result = run_step(registry, "-e", "monitor", "-P", f"data_uri={registry['paths']['held_out']}")
    assert result.returncode == 0, result.stderr[-3000:]
    calm = newest(registry, "monitor")
    assert calm.data.tags["drift_detected"] == "false" and calm.data.tags["labelled"] == "true"
    # with labels, the live metric sits beside the evaluated one (here the same rows: equal)
    assert calm.data.metrics["live_f1_macro"] == pytest.approx(calm.data.metrics["evaluated_f1_macro"])
    for column in FEATURES:
        assert f"drift.{column}.psi" in calm.data.metrics and f"drift.{column}.p_value" in calm.data.metrics
    artifacts = {a.path for a in registry["client"].list_artifacts(calm.info.run_id, "drift")}
    assert {"drift/drift_table.csv", "drift/summary.json", "drift/figures"} <= artifacts

    result = run_step(registry, "-e", "monitor", "-P", f"data_uri={registry['paths']['shifted']}")
    assert result.returncode == 0, result.stderr[-3000:]
    shifted = newest(registry, "monitor")
    assert shifted.data.tags["drift_detected"] == "true" and shifted.data.tags["labelled"] == "false"
    drifted = set(shifted.data.tags["drifted_columns"].split(","))
    assert {"petal_length_cm", "sepal_width_cm"} <= drifted and "sepal_length_cm" not in drifted
    assert "prediction" in drifted  # longer petals push predictions towards virginica
    table = pd.read_csv(mlflow.artifacts.download_artifacts(f"{shifted.info.artifact_uri}/drift/drift_table.csv"))
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
def test_monitor_bad_input_is_one_line_and_a_failed_run(registry, batch, extra, message, capsys, monkeypatch):
    code, stderr = in_process(registry, capsys, monkeypatch, "monitor", batch, *extra)
    assert code == 1
    assert one_error_line(stderr).startswith(f"error: monitor: {message}")
    assert newest(registry, "monitor").info.status == "FAILED"


def test_a_failing_gate_leaves_the_champion_where_it_was(registry):
    client = registry["client"]
    champion = client.get_model_version_by_alias(NAME, "champion")
    # main again with an unreachable threshold: only evaluate re-runs (the other steps come from the cache)
    result = run_step(registry, "-e", "main", "-P", "max_evals=3", "-P", "min_accuracy=1.01")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not champion" in result.stdout
    evaluate = newest(registry, "evaluate")
    version = evaluate.data.tags["registered_model.version"]
    assert version != str(champion.version)
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
    # Restoring (here: re-asserting) a champion is moving the alias back, as the README shows.
    client.set_registered_model_alias(NAME, "champion", champion.version)
    assert client.get_model_version_by_alias(NAME, "champion").version == champion.version


def test_serving_answers_over_http_as_the_pyfunc_does(registry):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", *serve_args(port)],
        env=mlflow_env(registry["store"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "the server did not answer /ping within 120 s"
                time.sleep(0.5)
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
    finally:
        server.terminate()
        server.wait(timeout=30)


def serve_args(port: int) -> list[str]:
    return ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())

"""`tune -P backend=spark`: hyperopt's SparkTrials in Spark local[2] mode, trials logged from the executors."""

from __future__ import annotations

import csv
import io
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import children, runs_by_step

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java 17+ (CI installs it)"),
]
SPARK_ENV = {"PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}


def finished_tune(client: MlflowClient):
    [run] = runs_by_step(client, "tune")[:1]
    assert run.info.status == "FINISHED", run.data.tags.get("pipeline.error")
    return run


@pytest.fixture
def tune_here(store, cli_on, monkeypatch):
    """tune's command line in this process (one Spark driver, started once for both searches)."""
    for name, value in SPARK_ENV.items():
        monkeypatch.setenv(name, value)

    def tune(*args: str) -> None:
        flags = ["--backend", "spark", "--spark-master", "local[2]", "--parallelism", "2"]
        code, stderr = cli_on(store, "tune", *flags, *args)
        assert code == 0, stderr[-4000:]

    return tune


def test_spark_backend_nests_trials_under_the_tune_run_and_resumes(store, tune_here):
    """The `mlflow run` wrapper proves nothing more here: tune's command line runs in this process."""
    pytest.importorskip("pyspark")
    tune_here("--max-evals", "6")
    client = MlflowClient(store)
    tune = finished_tune(client)
    assert tune.data.tags["backend"] == "spark" and tune.data.tags["stopped_by"] == "max_evals"
    trials = [r for r in children(client, tune) if r.data.tags.get("pipeline.step") == "trial"]
    # Logged by the executors, named by the driver once hyperopt's trial numbers are known.
    assert sorted(r.info.run_name for r in trials) == [f"trial-{i:03d}" for i in range(1, 7)]
    assert all(r.info.status == "FINISHED" and r.data.tags["trial"] == r.info.run_name[-1] for r in trials)
    assert all("val_f1_macro" in r.data.metrics and "model_family" in r.data.params for r in trials)
    best = client.get_run(tune.data.tags["best_trial_run_id"])
    assert best.data.tags["mlflow.parentRunId"] == tune.info.run_id
    assert (
        best.data.metrics["val_f1_macro"]
        == tune.data.metrics["best_val_f1_macro"]
        == max(r.data.metrics["val_f1_macro"] for r in trials)
    )
    board = list(csv.DictReader(io.StringIO(_text(client, tune.info.run_id, "trials.csv"))))
    assert len(board) == 6 and {row["run_id"] for row in board} == {r.info.run_id for r in trials}

    # Resume on Spark: the 6 trials go into SparkTrials, 2 more run.
    tune_here("--max-evals", "2", "--resume-from", tune.info.run_id)
    resumed = finished_tune(client)
    assert resumed.info.run_id != tune.info.run_id
    assert resumed.data.metrics["n_trials"] == 8 and resumed.data.metrics["n_new_trials"] == 2
    assert sorted(r.info.run_name for r in children(client, resumed)) == ["trial-007", "trial-008"]


def _text(client: MlflowClient, run_id: str, path: str) -> str:
    return mlflow.artifacts.load_text(f"{client.get_run(run_id).info.artifact_uri}/{path}")


def test_predict_on_spark_writes_the_local_backends_columns_and_values(store, tmp_path, cli_on, monkeypatch):
    """`predict -P backend=spark` in local[2]: a Parquet dataset with the inputs, `prediction` and `proba_<class>`,
    the same values as the local backend on the same rows (a `;`-separated file with decimal commas, a `;` ending
    each line, in UTF-16; the model's whole numbers written `12,0`, as pandas writes them beside a gap, which
    Spark's own cast refuses); a bad value fails in one line."""
    pytest.importorskip("pyspark")
    import pandas as pd

    from tests.conftest import logged_model_of, users_rows

    for name, value in SPARK_ENV.items():
        monkeypatch.setenv(name, value)
    mlflow.set_tracking_uri(store)
    model_uri = logged_model_of(users_rows(2000, 1), "income class")
    batch = users_rows(1500, 4).drop(columns="income class")
    batch["seniority (years)"] = batch["seniority (years)"].astype(float)  # whole numbers written `12,0` / `12.0`
    # As a German spreadsheet saves it, a `;` ending every line as some exports write (Spark names that `_c9`), in
    # UTF-16 as PowerShell's Out-File saves text
    lines = batch.assign(**{"": None}).to_csv(index=False, sep=";", decimal=",").splitlines()
    lines[11] = "NA;" + lines[11].split(";", 1)[1]  # a missing income as R's write.csv2 writes it
    (tmp_path / "batch.csv").write_text("\n".join(lines) + "\n", encoding="utf-16")
    outputs = {}
    for backend in ("local", "spark"):
        flags = ["--data-uri", str(tmp_path / "batch.csv"), "--model-uri", model_uri, "--backend", backend]
        code, stderr = cli_on(store, "predict", *flags, "--spark-master", "local[2]")
        assert code == 0, stderr[-4000:]
        [run] = runs_by_step(MlflowClient(store), "predict")[:1]
        (tmp_path / backend).mkdir()
        folder = mlflow.artifacts.download_artifacts(
            f"{run.info.artifact_uri}/predictions/predictions.parquet", dst_path=str(tmp_path / backend)
        )
        outputs[backend] = (run, pd.read_parquet(folder))
    (local_run, local), (spark_run, spark) = outputs["local"], outputs["spark"]
    assert spark_run.data.tags["backend"] == "spark" and len(list(Path(folder).glob("part-*.parquet"))) >= 1
    assert list(spark.columns) == list(local.columns)
    assert str(spark.dtypes["seniority (years)"]) == str(local.dtypes["seniority (years)"]) == "int64"
    merged = local.merge(spark, on=list(batch.columns), suffixes=("", "_spark"))
    assert len(spark) == len(local) == 1500
    assert (merged["prediction"] == merged["prediction_spark"]).mean() > 0.99  # rows may repeat: merge pairs them
    for label in ("<=50K", ">50K"):
        assert abs(spark[f"proba_{label}"].sum() - local[f"proba_{label}"].sum()) < 1e-6
    shares = {k: v for k, v in spark_run.data.metrics.items() if k.startswith("pred_share_")}
    assert shares == {k: v for k, v in local_run.data.metrics.items() if k.startswith("pred_share_")}
    assert spark_run.data.metrics["n_rows"] == 1500
    assert spark_run.data.tags["mlflow.note.content"].startswith("**predict** scored 1,500 rows")
    assert "card.html" in {a.path for a in MlflowClient(store).list_artifacts(spark_run.info.run_id)}

    lines = (tmp_path / "batch.csv").read_text(encoding="utf-16").splitlines()  # one income written `lots`
    lines[701] = "lots;" + lines[701].split(";", 1)[1]
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    code, stderr = cli_on(
        store,
        "predict",
        "--data-uri",
        str(tmp_path / "bad.csv"),
        "--model-uri",
        model_uri,
        "--backend",
        "spark",
        "--spark-master",
        "local[2]",
    )
    errors = [line for line in stderr.splitlines() if line.startswith("error: predict: ")]
    refused = "column 'Income ($)' must be numeric (double) as in the model's signature; found 'lots'"
    assert code == 1 and errors == [f"error: predict: scoring on Spark failed: {refused}"], stderr[-3000:]

    wordy = batch.astype({"Income ($)": object})  # a word past the rows the driver checks, in a plain CSV
    wordy.loc[1300, "Income ($)"] = "lots"
    wordy.to_csv(tmp_path / "wordy.csv", index=False)
    flags = ["--data-uri", str(tmp_path / "wordy.csv"), "--model-uri", model_uri, "--backend", "spark"]
    code, stderr = cli_on(store, "predict", *flags, "--spark-master", "local[2]")
    errors = [line for line in stderr.splitlines() if line.startswith("error: predict: ")]
    refused = "column 'Income ($)' must be numeric (double) as in the model's signature; found 'lots'"
    assert code == 1 and errors == [f"error: predict: scoring on Spark failed: {refused}"], stderr[-3000:]

    infinite = batch.copy()  # an infinity past the rows the driver checks, in a plain CSV: Spark reads it as one
    infinite.loc[1200, "Income ($)"] = np.inf
    infinite.to_csv(tmp_path / "infinite.csv", index=False)
    flags = ["--data-uri", str(tmp_path / "infinite.csv"), "--model-uri", model_uri, "--backend", "spark"]
    code, stderr = cli_on(store, "predict", *flags, "--spark-master", "local[2]")
    errors = [line for line in stderr.splitlines() if line.startswith("error: predict: ")]
    refused = (
        "column 'Income ($)' holds an infinite value; the model takes numbers and missing values: replace it with "
        "a number, or leave the cell empty"
    )
    assert code == 1 and errors == [f"error: predict: scoring on Spark failed: {refused}"], stderr[-3000:]

"""Each entry point on its own, as a user chains them by hand on their own CSV; tune exactly as typed."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import steps.main as main_module
from steps.lib.names import ERROR_TAG, PROCESS_TAG
from steps.lib.runner import base_temp_dir, step_run
from tests.integration.conftest import children, mlflow_run, model_server, post, runs_by_step


def churn_csv(path, **written: str) -> pd.DataFrame:
    """A small churn table: an ID, numeric and categorical columns with gaps, a text label (`written`: how the
    CSV is written, e.g. `sep=";", decimal=","` as a spreadsheet set to German saves it)."""
    rng = np.random.default_rng(5)
    n = 240
    tenure = rng.integers(1, 72, n)
    plan = rng.choice(["basic", "plus", "pro"], n)
    monthly = rng.normal(50, 15, n).round(2)
    churned = np.where((tenure < 12) & (plan == "basic") | (monthly > 70), "yes", "no")
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "tenure": tenure,
            "plan": plan,
            "monthly_charges": monthly,
            "churned": churned,
        }
    )
    frame.loc[rng.choice(n, 20, replace=False), "plan"] = None
    frame.loc[rng.choice(n, 15, replace=False), "monthly_charges"] = None
    frame.to_csv(path, index=False, **written)
    return frame


def newest(client: MlflowClient, step: str):
    [run] = runs_by_step(client, step)[:1]
    assert run.info.status == "FINISHED", run.data.tags.get("pipeline.error")
    return run


@pytest.fixture
def in_process(store, cli_on):
    """A step's command line, run in this process against `store`, that must succeed."""

    def run(step: str, *args: str) -> None:
        code, stderr = cli_on(store, step, *args)
        assert code == 0, stderr[-3000:]

    return run


def test_steps_chained_by_hand_on_your_own_csv(project, store, tmp_path, in_process):
    """load, featurize and evaluate by their command lines in-process; train through `mlflow run`, whose
    undeclared params (-P n_estimators=40) MLflow hands over as extra options. The CSV as a spreadsheet set to
    German saves it: `;` between values, decimal commas (`49,87`); load reads the numbers as numbers."""
    frame = churn_csv(tmp_path / "churn.csv", sep=";", decimal=",")
    client = MlflowClient(store)
    in_process("load", "--data-uri", str(tmp_path / "churn.csv"), "--target", "churned")
    load = newest(client, "load")
    assert load.data.tags["data.name"] == "churn" and load.data.metrics["n_missing_cells"] == 35
    in_process("featurize", "--raw-data-uri", f"runs:/{load.info.run_id}/data", "--seed", "1")
    featurize = newest(client, "featurize")
    spec = json.loads(mlflow.artifacts.load_text(f"runs:/{featurize.info.run_id}/splits/feature_spec.json"))
    assert list(spec["dropped"]) == ["customer_id"] and spec["dropped"]["customer_id"].startswith("ID-like")
    assert spec["categorical"] == ["plan"] and spec["numeric"] == ["tenure", "monthly_charges"]
    splits_uri = f"runs:/{featurize.info.run_id}/splits"
    params = {"splits_uri": splits_uri, "model": "random_forest", "n_estimators": "40", "max_depth": "6"}
    params |= {"refit": "train", "threads": "1"}
    args = ["-e", "train", *[item for name, value in params.items() for item in ("-P", f"{name}={value}")]]
    result = mlflow_run(project, args, store)
    assert result.returncode == 0, result.stderr[-3000:]
    train = newest(client, "train")
    assert train.data.params["random_forest.n_estimators"] == "40"
    assert train.data.params["random_forest.max_depth"] == "6"
    assert train.data.metrics["val_accuracy"] > 0.8 and train.data.params["threads"] == "1"
    model_uri = train.data.tags["model_uri"]
    flags = ["--model-uri", model_uri, "--splits-uri", splits_uri, "--registered-model-name", "churn"]
    in_process("evaluate", *flags, "--metric", "accuracy")
    evaluate = newest(client, "evaluate")
    assert evaluate.data.tags["registered_model.alias"] == "champion"
    model = mlflow.pyfunc.load_model("models:/churn@champion")
    raw_rows = frame.drop(columns="churned").head(20)  # exactly as load read them, ID included
    assert set(model.predict(raw_rows)) <= {"yes", "no"}


def test_parquet_types_mlflow_refuses_are_read_plain_through_to_a_champion(store, tmp_path, in_process):
    """A Parquet file of times with a time zone, a categorical, unsigned 64-bit integers, decimals, a column
    without a name and a nullable true/false label with gaps: evaluate's check of the registered model failed
    with a traceback (MLflow refused the time zone and the categorical), the signature became `Any` (uint64),
    train's input example failed (decimals), and the model predicted 1.0/0.0. Now a champion that predicts
    True/False, and monitor of a labelled CSV batch of it (its labels read as true/false, not as text)."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    n = 400
    x = rng.normal(size=n)
    label = pd.array(x + rng.normal(scale=0.5, size=n) > 0, dtype="boolean")
    label[rng.choice(n, 20, replace=False)] = pd.NA
    table = pa.table(
        {
            "x": x,
            "seen at": pa.array(pd.date_range("2024-01-01", periods=n, freq="h", tz="Europe/Berlin")),
            "region": pa.array(rng.choice(["north", "south", "east"], n)).dictionary_encode(),
            "count": pa.array(rng.integers(0, 100, n).astype(np.uint64)),
            "price": pa.array([decimal.Decimal(f"{v:.2f}") for v in rng.normal(100, 10, n)], pa.decimal128(10, 2)),
            "": rng.normal(size=n),
            "member": pa.array(label),
        }
    )
    pq.write_table(table, tmp_path / "types.parquet")
    client = MlflowClient(store)
    in_process("load", "--data-uri", str(tmp_path / "types.parquet"), "--target", "member")
    load = newest(client, "load")
    in_process("featurize", "--raw-data-uri", f"runs:/{load.info.run_id}/data")
    featurize = newest(client, "featurize")
    spec = json.loads(mlflow.artifacts.load_text(f"runs:/{featurize.info.run_id}/splits/feature_spec.json"))
    assert spec["classes"] == [False, True] and "Unnamed: 5" in spec["input_columns"]
    splits_uri = f"runs:/{featurize.info.run_id}/splits"
    in_process("train", "--splits-uri", splits_uri, "--model", "hist_gradient_boosting", "--threads", "1")
    train = newest(client, "train")
    signature = mlflow.models.get_model_info(train.data.tags["model_uri"]).signature.inputs.to_dict()
    assert {column["name"]: column["type"] for column in signature} == {
        "x": "double", "seen at": "datetime", "region": "string", "count": "long", "price": "double",
        "Unnamed: 5": "double",
    }  # fmt: skip
    flags = ["--model-uri", train.data.tags["model_uri"], "--splits-uri", splits_uri]
    in_process("evaluate", *flags, "--registered-model-name", "types")
    assert newest(client, "evaluate").data.tags["registered_model.alias"] == "champion"
    rows = pd.read_parquet(tmp_path / "types.parquet").head(60)
    rows.to_csv(tmp_path / "batch.csv", index=False)  # times as text with their offset, True/False, empty labels
    in_process("predict", "--data-uri", str(tmp_path / "batch.csv"), "--model-uri", "models:/types@champion")
    predicted = mlflow.artifacts.load_text(f"runs:/{newest(client, 'predict').info.run_id}/predictions/predictions.csv")
    assert "proba_True" in predicted.splitlines()[0] and "proba_1.0" not in predicted
    in_process("monitor", "--data-uri", str(tmp_path / "batch.csv"), "--registered-model-name", "types")
    assert any(key.startswith("live_") for key in newest(client, "monitor").data.metrics)  # the labels were read


def test_the_champion_is_scored_only_on_test_rows_it_was_not_trained_on(store, tmp_path, in_process):
    """A champion trained on another seed's split had most of the new test rows among its training rows: a random
    forest scored 0.955 there against 0.737 on its own test rows, and no better model could beat it. Both are now
    scored on the test rows new to the champion, and the reason says how many."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 4))
    label = np.where(x[:, 0] + x[:, 1] + rng.normal(scale=1.2, size=1500) > 0, "pos", "neg")
    pd.DataFrame(x, columns=["a", "b", "c", "d"]).assign(label=label).to_csv(tmp_path / "noisy.csv", index=False)
    client = MlflowClient(store)
    in_process("load", "--data-uri", str(tmp_path / "noisy.csv"), "--target", "label")
    raw = f"runs:/{newest(client, 'load').info.run_id}/data"
    reasons = []
    for seed in ("1", "2"):
        in_process("featurize", "--raw-data-uri", raw, "--seed", seed)
        splits_uri = f"runs:/{newest(client, 'featurize').info.run_id}/splits"
        flags = ["--model", "random_forest", "--n_estimators", "40", "--threads", "1", "--refit", "train"]
        in_process("train", "--splits-uri", splits_uri, *flags)
        model_uri = newest(client, "train").data.tags["model_uri"]
        flags = ["--model-uri", model_uri, "--splits-uri", splits_uri, "--registered-model-name", "noisy"]
        in_process("evaluate", *flags, "--metric", "accuracy")
        reasons.append(client.get_model_version("noisy", str(len(reasons) + 1)).tags["gate.champion"])
    assert reasons[0] == "no champion yet"
    found = re.search(
        r"champion v1's (0\.\d+) on the ([\d,]+) of 300 test rows it was not trained on \(or both were\)$", reasons[1]
    )
    assert found, reasons[1]
    assert int(found.group(2).replace(",", "")) < 300 and float(found.group(1)) < 0.85  # not the memorised rows


def test_a_refresh_of_a_table_of_few_distinct_rows_can_replace_the_champion(store, tmp_path, in_process):
    """Four columns of three levels: 81 distinct feature rows. After rows were appended, nearly every new test row
    had values in the champion's training rows, and the gate refused every retrain ("trained on 499 of these 500
    test rows"); the new model's training rows hold those values too, so both are scored on them."""
    rng = np.random.default_rng(4)
    n = 1500
    frame = pd.DataFrame({name: rng.choice(["lo", "mid", "hi"], n) for name in ("plan", "region", "tier", "usage")})
    frame["churn"] = np.where((frame["plan"] == "lo") ^ (rng.random(n) < 0.2), "yes", "no")
    frame.head(1200).to_csv(tmp_path / "first.csv", index=False)
    frame.to_csv(tmp_path / "refreshed.csv", index=False)
    client = MlflowClient(store)
    for name in ("first", "refreshed"):
        in_process("load", "--data-uri", str(tmp_path / f"{name}.csv"), "--target", "churn")
        in_process("featurize", "--raw-data-uri", f"runs:/{newest(client, 'load').info.run_id}/data", "--seed", "1")
        splits_uri = f"runs:/{newest(client, 'featurize').info.run_id}/splits"
        in_process("train", "--splits-uri", splits_uri, "--model", "logistic_regression", "--threads", "1")
        flags = ["--model-uri", newest(client, "train").data.tags["model_uri"], "--splits-uri", splits_uri]
        in_process("evaluate", *flags, "--registered-model-name", "few", "--metric", "accuracy")
    reason = client.get_model_version("few", "2").tags["gate.champion"]
    assert "no fair comparison" not in reason and "of 300 test rows it was not trained on (or both were)" in reason


def test_regression_data_set_trains_its_regression_families(store, in_process):
    client = MlflowClient(store)
    in_process("load", "--data-uri", "sklearn:diabetes")
    load = newest(client, "load")
    in_process("featurize", "--raw-data-uri", f"runs:/{load.info.run_id}/data")
    featurize = newest(client, "featurize")
    assert featurize.data.tags["task"] == "regression"
    splits_uri = f"runs:/{featurize.info.run_id}/splits"
    in_process("train", "--splits-uri", splits_uri, "--model", "hist_gradient_boosting", "--learning_rate", "0.05")
    train = newest(client, "train")
    assert train.data.params["model_family"] == "hist_gradient_boosting"
    assert train.data.params["hist_gradient_boosting.learning_rate"] == "0.05"
    # refit on train + validation (the default): its validation metrics are in-sample, and named so
    assert {"val_in_sample_rmse", "val_in_sample_mae", "val_in_sample_r2"} <= set(train.data.metrics)
    assert train.data.params["refit"] == "train+validation" and int(train.data.params["threads"]) >= 1
    assert "val_rmse" not in train.data.metrics


def test_tune_exactly_as_typed_on_a_fresh_store(project, store, in_process):
    """`mlflow run . -e tune -P max_evals=50` with nothing in the store prepares the default data first."""
    result = mlflow_run(project, ["-e", "tune", "-P", "max_evals=50"], store)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(store)
    tune = newest(client, "tune")
    kids = children(client, tune)
    assert [r.info.run_name for r in kids[:2]] == ["load", "featurize"]
    assert all(r.info.status == "FINISHED" for r in kids)
    trials = kids[2:]
    assert sorted(r.info.run_name for r in trials) == [f"trial-{i:03d}" for i in range(1, 51)]
    assert len({r.data.params["model_family"] for r in trials}) == 3  # the space spans the families
    assert tune.data.tags["splits_uri"] == f"runs:/{kids[1].info.run_id}/splits"
    assert tune.data.metrics["n_trials"] == 50 and tune.data.metrics["best_val_f1_macro"] >= 0.9
    best = client.get_run(tune.data.tags["best_trial_run_id"])
    assert best.data.metrics["val_f1_macro"] == tune.data.metrics["best_val_f1_macro"]
    assert best.data.params["model_family"] == tune.data.tags["best.model_family"]
    figures = {a.path for a in client.list_artifacts(tune.info.run_id, "figures")}
    assert figures == {"figures/loss_history.svg", "figures/hyperparams_vs_loss.svg"}

    # The same command line in this process (the `mlflow run` wrapper proves nothing more): resume that
    # search with 2 more trials (the 50 are loaded, not run again), then a new search in two worker processes.
    in_process("tune", "--max-evals", "2", "--resume-from", tune.info.run_id)
    resumed = newest(client, "tune")
    assert resumed.data.tags["resumed_from"] == tune.info.run_id
    assert resumed.data.metrics["n_trials"] == 52 and resumed.data.metrics["n_new_trials"] == 2
    assert sorted(r.info.run_name for r in children(client, resumed)) == ["trial-051", "trial-052"]
    assert resumed.data.metrics["best_val_f1_macro"] >= tune.data.metrics["best_val_f1_macro"]
    board = mlflow.artifacts.load_text(f"runs:/{resumed.info.run_id}/trials.csv").splitlines()
    assert len(board) == 53  # the whole history: header + 52 trials
    # A new search reuses the newest finished featurize output.
    in_process("tune", "--max-evals", "2", "--parallelism", "2")
    again = newest(client, "tune")
    assert again.data.tags["splits_uri"] == tune.data.tags["splits_uri"]
    assert sorted(r.info.run_name for r in children(client, again)) == ["trial-001", "trial-002"]


def test_column_names_and_labels_as_users_write_them(store, tmp_path, in_process):
    """`Income ($)`, `seniority (years)`, labels `<=50K` / `>50K`, a feature called `prediction`, a text ID, a
    city of many levels, a sign-up time as ISO text and a last visit as US text (`03/14/2024 01:45 PM`), a balance
    as a spreadsheet writes money (`$1,234.50`, `(80.00)` when negative), a separator ending every line: main
    (load, featurize, tune, train, evaluate) takes them,
    then predict, monitor and a served model do; metric keys are cleaned, the real names stay in the artifacts,
    no output overwrites an input, and the model served from another folder takes the raw rows (the date
    transformer ships inside it); served in place, it is still the champion predict scores."""
    rng = np.random.default_rng(3)
    n = 400
    income = rng.normal(50, 15, n).round(1)
    signed_up = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 3 * 365 * 24, n), unit="h")
    frame = pd.DataFrame(
        {
            "customer id": [f"K-{i:06d}" for i in rng.permutation(n)],
            "Income ($)": income,
            "seniority (years)": rng.integers(0, 40, n),
            "plan type": rng.choice(["basic", "pro"], n),
            "city": rng.choice([f"town {i}" for i in range(120)], n),
            "signed up": signed_up.strftime("%Y-%m-%dT%H:%M:%S"),
            "last visit": (signed_up + pd.to_timedelta(rng.integers(1, 900, n), unit="h")).strftime(
                "%m/%d/%Y %I:%M %p"
            ),
            "prediction": rng.normal(size=n),  # a column of the user's, as it happens, named like predict's output
            "balance": [f"${v:,.2f}" if v >= 0 else f"(${-v:,.2f})" for v in rng.normal(800, 2_000, n).round(2)],
            "income class": np.where(income > 50, ">50K", "<=50K"),
        }
    )
    frame.assign(**{"": None}).to_csv(tmp_path / "people.csv", index=False)  # as some exports: `,` ends every line
    client = MlflowClient(store)
    in_process(
        "main",
        *("--data-uri", str(tmp_path / "people.csv"), "--target", "income class", "--registered-model-name", "people"),
        *("--max-evals", "3", "--models", "hist_gradient_boosting,logistic_regression"),
    )
    main = newest(client, "main")
    assert [r.info.status for r in children(client, main)] == ["FINISHED"] * 5
    splits_uri = f"runs:/{newest(client, 'featurize').info.run_id}/splits"
    spec = json.loads(mlflow.artifacts.load_text(f"{splits_uri}/feature_spec.json"))
    assert spec["dropped"] == {"customer id": "ID-like (unique per row, named like an identifier)"}
    assert [spec["encodings"][c]["encoding"] for c in ("plan type", "city", "signed up")] == [
        "one-hot",
        "target",
        "date parts",
    ]
    assert spec["datetime"] == ["signed up", "last visit"]
    assert spec["encodings"]["city"]["levels"] == frame["city"].nunique()
    assert [spec["encodings"][c]["format"] for c in spec["datetime"]] == ["ISO8601", "%m/%d/%Y %I:%M %p"]
    assert spec["encodings"]["balance"]["encoding"] == "numbers in text" and "balance" in spec["numeric"]
    tune = newest(client, "tune")  # trials' params and metrics under the odd names: keys made valid, none lost
    trials = pd.read_csv(mlflow.artifacts.download_artifacts(f"runs:/{tune.info.run_id}/trials.csv"))
    assert len(trials) == 3 and tune.data.metrics["best_val_f1_macro"] > 0.5
    evaluate = newest(client, "evaluate")
    strong, tuned = evaluate.data.metrics["strong_baseline_test_f1_macro"], evaluate.data.metrics["test_f1_macro"]
    assert evaluate.data.tags["beats_strong_baseline"] == str(tuned > strong).lower()

    in_process("predict", "--data-uri", str(tmp_path / "people.csv"), "--registered-model-name", "people")
    predict = newest(client, "predict")
    assert predict.data.tags["prediction_column"] == "prediction_2"
    assert {"pred_share___50K", "pred_share__50K"} >= set(k for k in predict.data.metrics if k.startswith("pred_"))
    scored = f"{predict.info.artifact_uri}/predictions/predictions.parquet"
    table = pd.read_parquet(mlflow.artifacts.download_artifacts(scored, dst_path=str(tmp_path)))
    assert (table["prediction"] == frame["prediction"]).all()  # the input column, untouched
    assert set(table["prediction_2"]) <= {"<=50K", ">50K"} and {"proba_<=50K", "proba_>50K"} <= set(table.columns)
    assert not table.columns.str.startswith("Unnamed").any()  # the separator ending each line made no column

    batch = frame.drop(columns="income class")
    header, *rows = batch.to_csv(index=False).splitlines()
    (tmp_path / "batch.csv").write_text("\n".join([header, *(row + "," for row in rows)]) + "\n")  # the rows' only
    in_process("monitor", "--data-uri", str(tmp_path / "batch.csv"), "--registered-model-name", "people")
    monitor = newest(client, "monitor")
    keys = {"drift.Income ___.psi", "drift.seniority _years_.psi", "drift.prediction.psi", "drift.prediction_2.psi"}
    assert keys <= set(monitor.data.metrics)
    drift = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            f"{monitor.info.artifact_uri}/drift/drift_table.csv", dst_path=str(tmp_path)
        )
    )
    features = {"Income ($)", "seniority (years)", "plan type", "city", "signed up", "last visit", "balance"}
    assert features | {"prediction", "prediction_2"} == set(drift["column"])
    signed_up = drift.set_index("column").loc["signed up"]  # every row, training's among them: no drift
    assert signed_up["kind"] == "date/time" and not signed_up["drifted"]
    (train_first, train_last), (first, last) = (signed_up[f"span_{s}"].split(" .. ") for s in ("reference", "batch"))
    assert first <= train_first < train_last <= last
    last_visit = drift.set_index("column").loc["last visit"]  # read in its own format: every value parses
    assert last_visit["kind"] == "date/time" and not last_visit["drifted"] and pd.isna(last_visit["schema_change"])
    balance = drift.set_index("column").loc["balance"]  # read as the model reads it: numbers, tested as numbers
    assert balance["kind"] == "numeric" and balance["test"] == "ks" and not balance["drifted"]

    elsewhere = tmp_path / "elsewhere"  # no steps package here: the model's own copy of the transformer serves
    elsewhere.mkdir()
    rows = batch.head(5).copy()
    rows.loc[rows.index[0], "city"] = "a town never seen"
    rows.loc[rows.index[1], "signed up"] = None
    rows.loc[rows.index[1], "last visit"] = "sometime"
    rows.loc[rows.index[1], "balance"] = "n/a"
    expected = table["prediction_2"].head(5).tolist()
    with model_server("models:/people@champion", store, elsewhere) as base:
        status, body = post(f"{base}/invocations", {"dataframe_split": json.loads(rows.to_json(orient="split"))})
    assert status == 200, body
    assert [p in {"<=50K", ">50K"} for p in body["predictions"]] == [True] * 5
    assert body["predictions"][2:] == expected[2:]
    # Served in place from this local store, the model's code got Python's bytecode beside it: still the champion
    assert list(tmp_path.glob("mlruns/*/models/*/artifacts/code/steps/lib/__pycache__/transforms.*.pyc"))
    in_process("predict", "--data-uri", str(tmp_path / "batch.csv"), "--registered-model-name", "people")
    assert newest(client, "predict").data.metrics["n_rows"] == len(batch)


def test_main_splits_by_time_and_by_group(store, tmp_path, in_process):
    """split=time through main: the newest rows test (equal times in one split, rows without a time dropped and
    counted), cross-validation in time order, the card says so; then split=group through main on the same data
    (load reused from the cache), folds by group: no customer in two splits, the card says so."""
    rng = np.random.default_rng(8)
    n = 360
    hours = np.sort(rng.integers(0, 200, n))
    frame = pd.DataFrame(
        {
            "ordered at": (pd.Timestamp("2024-03-01") + pd.to_timedelta(hours, unit="h")).strftime("%Y-%m-%d %H:%M"),
            "customer": [f"C{i % 45:03d}" for i in rng.permutation(n)],
            "basket ($)": rng.gamma(2, 20, n).round(2),
        }
    )
    frame["returned"] = np.where(frame["basket ($)"] + rng.normal(0, 10, n) > 45, "yes", "no")
    frame.loc[[3, 50, 200], "ordered at"] = None
    frame.to_csv(tmp_path / "orders.csv", index=False)
    client = MlflowClient(store)
    in_process(
        "main",
        *("--data-uri", str(tmp_path / "orders.csv"), "--target", "returned", "--registered-model-name", "orders"),
        *("--max-evals", "2", "--models", "logistic_regression", "--cv-folds", "2"),
        *("--split", "time", "--time-column", "ordered at"),
    )
    featurize = newest(client, "featurize")
    told = "by time on 'ordered at': oldest rows train, newest test; 3 rows without a time dropped"
    assert featurize.data.tags["split"] == told
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{featurize.info.run_id}/splits", dst_path=str(tmp_path)))
    parts = {name: pd.read_parquet(folder / f"{name}.parquet") for name in ("train", "validation", "test")}
    when = {name: pd.to_datetime(part["ordered at"]) for name, part in parts.items()}
    assert when["train"].max() < when["validation"].min() and when["validation"].max() < when["test"].min()
    assert sum(len(part) for part in parts.values()) == n - 3
    spec = json.loads((folder / "feature_spec.json").read_text())
    assert spec["split"] == {
        "kind": "time", "column": "ordered at", "rows_without_value": 3, "labelled_rows": n, "format": "ISO8601"
    }  # fmt: skip
    tune = newest(client, "tune")
    assert tune.data.params["cv_folds"] == "2"
    assert tune.data.tags["scored_on"] == "2 folds in time order on 'ordered at': each scores the next block of time"
    card = mlflow.artifacts.load_text(f"runs:/{newest(client, 'evaluate').info.run_id}/model_card/model_card.md")
    assert "- split: `by time on 'ordered at'" in card

    in_process(
        "main",
        *("--data-uri", str(tmp_path / "orders.csv"), "--target", "returned", "--registered-model-name", "by-customer"),
        *("--max-evals", "2", "--models", "logistic_regression", "--cv-folds", "3"),
        *("--split", "group", "--group-column", "customer"),
    )
    assert len(client.search_runs([featurize.info.experiment_id], "tags.`pipeline.step` = 'load'")) == 1  # reused
    featurize = newest(client, "featurize")
    assert featurize.data.tags["split"] == "by group on 'customer': no group in two splits"
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{featurize.info.run_id}/splits", dst_path=str(tmp_path)))
    customers = [
        set(pd.read_parquet(folder / f"{part}.parquet")["customer"]) for part in ("train", "validation", "test")
    ]
    assert not (customers[0] & customers[1] or customers[0] & customers[2] or customers[1] & customers[2])
    tune = newest(client, "tune")
    assert tune.data.params["cv_folds"] == "3"
    assert tune.data.tags["scored_on"] == "3 folds by group on 'customer': no group in two folds"
    card = mlflow.artifacts.load_text(f"runs:/{newest(client, 'evaluate').info.run_id}/model_card/model_card.md")
    assert "- split: `by group on 'customer': no group in two splits`" in card
    assert newest(client, "tune").data.metrics["best_val_f1_macro"] > 0.5


def test_a_step_killed_before_it_could_say_why_gets_the_likely_causes(store, tmp_path, monkeypatch):
    """As the out-of-memory killer ends a step: SIGKILL to the step process alone, mid-work. MLflow's wait marks
    its run FAILED and says nothing; main gives the likely causes, as the run's error and description."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300_000, 8)), columns=[f"x{i}" for i in range(8)])
    frame.assign(y=rng.integers(0, 2, len(frame))).to_csv(tmp_path / "big.csv", index=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    client = MlflowClient(store)
    killed: list[int] = []

    def kill_the_step_once_it_works() -> None:
        for _ in range(600):  # at most 60 s
            try:
                runs = client.search_runs(["0"], filter_string="tags.`pipeline.step` = 'load'")
            except Exception:  # the store busy with the step's own writes: ask again
                runs = []
            for run in runs:
                temp = list(base_temp_dir().glob(f"pipeline-run-{run.info.run_id}-*"))
                if PROCESS_TAG in run.data.tags and temp and list(temp[0].rglob("raw.parquet")):  # not yet logged
                    pid = int(run.data.tags[PROCESS_TAG].split(":")[1])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_step_once_it_works)
    killer.start()
    try:
        with step_run("main") as parent:  # as main launches its steps: inside its own step run
            result = main_module.launch_step(
                "load", {"data_uri": str(tmp_path / "big.csv"), "target": "y"}, "local", "0", parent.info.run_id
            )
    finally:
        killer.join()
    assert killed, "the load step never started"
    assert result.status == "FAILED" and result.error == main_module.SILENT_FAILURE
    run = client.get_run(result.run_id)
    assert run.info.status == "FAILED" and run.data.tags[ERROR_TAG] == result.error
    assert "out-of-memory killer" in run.data.tags["mlflow.note.content"]
    assert not [a for a in client.list_artifacts(result.run_id) if a.path == "data"]  # nothing a later step trusts
    assert not list(base_temp_dir().glob(f"pipeline-run-{result.run_id}-*"))  # its temp files removed
    assert not list(base_temp_dir().glob(f"pipeline-log-{result.run_id}-*"))
    log = mlflow.artifacts.load_text(f"runs:/{result.run_id}/logs/load.log")  # what it wrote until it was killed
    assert f"step load: run {result.run_id}, process {killed[0]}" in log and "loaded" not in log  # so far, no more

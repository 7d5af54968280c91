"""Shared helpers: data reading, tasks, metrics, model families."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steps.lib.errors import PipelineError
from steps.lib.features import CLASSIFICATION, REGRESSION, FeatureSpec, detect_task, validate_target
from steps.lib.metrics import compute_metrics, metric_loss, resolve_metric
from steps.lib.models import MODEL_FAMILIES, HyperParam, build_model, fit_model, get_family, score_model
from steps.lib.runner import parse_bool
from steps.lib.splits import Splits
from steps.lib.tables import BUNDLED_DATASETS, dataset_name, load_bundled_frame, read_data, snake_case
from steps.lib.uris import redact_uri
from tests.conftest import PROJECT_DIR


@pytest.mark.parametrize("name", sorted(BUNDLED_DATASETS))
def test_every_bundled_data_set_loads_with_its_label(name):
    frame, label = load_bundled_frame(name)
    assert label == BUNDLED_DATASETS[name][1]
    assert label in frame.columns and len(frame) > 100
    assert all(column == snake_case(column) for column in frame.columns)


def test_iris_labels_are_class_names():
    frame, label = load_bundled_frame("iris")
    assert sorted(frame[label].unique()) == ["setosa", "versicolor", "virginica"]
    assert "sepal_length_cm" in frame.columns


def test_unknown_bundled_set_names_the_known_ones():
    with pytest.raises(PipelineError, match="sklearn:iris"):
        read_data("sklearn:mnist")


def test_read_data_reads_csv_parquet_file_uri_and_a_directory(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "pq").mkdir()
    frame.to_parquet(tmp_path / "pq" / "t.parquet", index=False)
    for uri in (
        str(tmp_path / "t.csv"),
        (tmp_path / "t.csv").as_uri(),
        str(tmp_path / "pq" / "t.parquet"),
        str(tmp_path / "pq"),
    ):
        pd.testing.assert_frame_equal(read_data(uri), frame, check_dtype=False)


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.csv", "data not found"),
        ("", "empty.csv", "empty"),
        ("a,b\n", "header_only.csv", None),
        ("a\tb", "t.txt", "neither .csv nor .parquet"),
        ("not parquet", "t.parquet", "cannot read"),
    ],
)
def test_read_data_errors_are_one_line(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    if message is None:  # a header without rows reads fine; validate_target rejects it
        with pytest.raises(PipelineError, match="no rows"):
            validate_target(read_data(str(path)), "a")
        return
    with pytest.raises(PipelineError, match=message) as caught:
        read_data(str(path))
    assert "\n" not in str(caught.value)


def test_redact_uri_hides_passwords_only():
    assert redact_uri("https://bob:s3cret@host/data.csv") == "https://bob:***@host/data.csv"
    assert redact_uri("sklearn:iris") == "sklearn:iris"
    assert dataset_name("https://bob:s3cret@host/dir/My Data.csv.gz") == "my_data"


def test_parse_bool():
    assert parse_bool("x", "True") is True and parse_bool("x", "0") is False
    with pytest.raises(PipelineError, match="true or false"):
        parse_bool("use_cache", "maybe")


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b", "a"], CLASSIFICATION),
        ([True, False, True], CLASSIFICATION),
        ([0, 1, 2, 1], CLASSIFICATION),
        ([0.5, 1.25, 3.0], REGRESSION),
        (list(range(100)), REGRESSION),
    ],
)
def test_detect_task(values, task):
    assert detect_task(pd.Series(values)) == task


@pytest.mark.parametrize(
    ("frame", "target", "message"),
    [
        (pd.DataFrame(), "y", "no rows"),
        (pd.DataFrame({"x": [1, 2], "y": [0, 1]}), "z", "target column 'z' is not in the data"),
        (pd.DataFrame({"x": [1, 2], "y": [1, 1]}), "y", "single value"),
        (pd.DataFrame({"x": [1, 2], "y": [None, None]}), "y", "has no values"),
        (pd.DataFrame({"y": [0, 1]}), "y", "only the target"),
    ],
)
def test_validate_target(frame, target, message):
    with pytest.raises(PipelineError, match=message):
        validate_target(frame, target)


def test_resolve_metric_direction_and_task():
    assert resolve_metric(None, CLASSIFICATION) == "f1_macro"
    assert resolve_metric(None, REGRESSION) == "rmse"
    assert metric_loss("accuracy", 0.9) == -0.9 and metric_loss("rmse", 2.0) == 2.0
    with pytest.raises(PipelineError, match="unknown metric"):
        resolve_metric("auc", CLASSIFICATION)
    with pytest.raises(PipelineError, match="does not fit a regression task"):
        resolve_metric("accuracy", REGRESSION)


def test_compute_metrics_classification_and_regression():
    y = pd.Series(["a", "b", "a", "b"])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    scores = compute_metrics(CLASSIFICATION, y, np.array(["a", "b", "a", "b"]), proba, ["a", "b"])
    assert scores["accuracy"] == 1.0 and scores["roc_auc_ovr"] == 1.0 and 0 < scores["log_loss"] < 1
    reg = compute_metrics(REGRESSION, pd.Series([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]), None, None)
    assert reg["mae"] == pytest.approx(1 / 3) and reg["rmse"] == pytest.approx(np.sqrt(1 / 3))


def scikit_learn_metrics_on_the_labels_as_they_are(y_true, y_pred, proba, classes, monkeypatch):
    import steps.lib.metrics as metrics_module

    with monkeypatch.context() as patch:
        patch.setattr(metrics_module, "label_codes", lambda *labels: labels)
        return compute_metrics(CLASSIFICATION, y_true, y_pred, proba, classes)


@pytest.mark.parametrize("n_classes", [2, 3, 6])
def test_text_labels_scored_as_codes_give_the_same_metrics_to_the_last_bit(n_classes, monkeypatch):
    """Text labels become integer codes before scikit-learn sees them (~10x faster at 200,000 rows): the same
    figures, bit for bit, also when a class never appears among the true labels or the predictions."""
    rng = np.random.default_rng(n_classes)
    classes = sorted(["<=50K", ">50K", "a b", "Zebra", "été", "10"][:n_classes])
    proba = rng.dirichlet(np.ones(n_classes), 5_000)
    y_pred = np.array(classes, dtype=object)[proba.argmax(axis=1)]
    present = classes[:-1] if n_classes > 2 else classes  # the last class missing from the truth: AUC undefined
    y_true = pd.Series(rng.choice(present, 5_000), dtype="str")
    y_pred[:50] = classes[0]
    expected = scikit_learn_metrics_on_the_labels_as_they_are(y_true, y_pred, proba, classes, monkeypatch)
    assert compute_metrics(CLASSIFICATION, y_true, y_pred, proba, classes) == expected
    assert set(expected) >= {"accuracy", "f1_macro", "log_loss"}
    unseen = y_true.copy()
    unseen.iloc[0] = "a label the model never saw"
    with pytest.raises(ValueError) as before:
        scikit_learn_metrics_on_the_labels_as_they_are(unseen, y_pred, proba, classes, monkeypatch)
    with pytest.raises(ValueError, match="a label the model never saw") as after:
        compute_metrics(CLASSIFICATION, unseen, y_pred, proba, classes)
    assert str(after.value) == str(before.value)  # scikit-learn's own message, naming the labels


def test_labels_that_are_not_all_text_are_scikit_learns_to_judge():
    """Text truth against numeric predictions (a label column read as text, a model trained on 0/1): refused
    as scikit-learn refuses it, never scored as codes; a gap in the truth too."""
    truth = pd.Series(["0", "1", "1", "0"], dtype="str")
    with pytest.raises(ValueError, match="Mix of label input types"):
        compute_metrics(CLASSIFICATION, truth, np.array([0, 1, 1, 0]), None, None, only="accuracy")
    from steps.lib.metrics import label_codes

    gap = pd.Series(["a", None, "b"], dtype=object)
    assert label_codes(gap, np.array(["a", "a", "b"], dtype=object), None) is None
    assert label_codes(pd.Series(["a", "b"], dtype="category"), np.array(["a", "b"], dtype=object), None) is None
    assert label_codes(truth, np.array(["0", "1", "1", "0"], dtype=object), ["0", "1"]) is not None


@pytest.mark.parametrize("task", [CLASSIFICATION, REGRESSION])
def test_one_metric_alone_is_the_same_number_from_one_pass_through_the_model(task):
    """Permutation importance asks for one metric per shuffle: predicted classes or probabilities, not both."""
    from sklearn.datasets import load_diabetes, load_iris
    from sklearn.linear_model import LogisticRegression, Ridge

    from steps.lib.metrics import METRICS
    from steps.lib.models import metrics_on

    loaded = load_iris(as_frame=True) if task == CLASSIFICATION else load_diabetes(as_frame=True)
    features, labels = loaded.data, loaded.target
    model = (LogisticRegression(max_iter=500) if task == CLASSIFICATION else Ridge()).fit(features, labels)
    calls = []

    class Counted:  # the fitted model, counting its passes over the rows
        classes_ = getattr(model, "classes_", None)

        def predict(self, rows):
            calls.append("predict")
            return model.predict(rows)

        def predict_proba(self, rows):
            calls.append("predict_proba")
            return model.predict_proba(rows)

    every = metrics_on(Counted(), features, labels, task)
    for name, (metric_task, _) in METRICS.items():
        if metric_task == task:
            calls.clear()
            assert metrics_on(Counted(), features, labels, task, only=name) == {name: every[name]}
            assert len(calls) == 1


def test_hyperparam_parsing_and_bounds():
    depth = HyperParam("max_depth", int, None, low=1, allow_none=True)
    assert depth.parse("7", "rf") == 7 and depth.parse("None", "rf") is None and depth.parse(3.0, "rf") == 3
    with pytest.raises(PipelineError, match="must be an integer"):
        depth.parse("2.5", "rf")
    with pytest.raises(PipelineError, match=r"must lie in \[1"):
        depth.parse("0", "rf")
    assert HyperParam("C", float, 1.0, low=1e-12).parse("1e-05", "lr") == 0.00001


def test_family_lookup_errors():
    assert get_family("random_forest", REGRESSION).name == "random_forest"
    with pytest.raises(PipelineError, match="unknown model 'xgboost'"):
        get_family("xgboost", CLASSIFICATION)
    with pytest.raises(PipelineError, match="does not fit a regression task"):
        get_family("logistic_regression", REGRESSION)
    with pytest.raises(PipelineError, match="unknown hyperparameter"):
        MODEL_FAMILIES["ridge"].resolve({"C": "1"})


@pytest.mark.parametrize("family", sorted(MODEL_FAMILIES))
def test_every_family_fits_raw_rows_with_gaps_and_unseen_categories(family, mixed_frame):
    task = REGRESSION if family == "ridge" else CLASSIFICATION
    frame = mixed_frame.copy()
    if task == REGRESSION:
        frame["label"] = frame["x1"] * 2 + 1
    spec = FeatureSpec("label", task, ["x1", "x2"], ["colour"], {}, [c for c in frame.columns if c != "label"])
    splits = Splits(frame.iloc[:40], frame.iloc[40:50], frame.iloc[50:])
    model = fit_model(splits, spec, MODEL_FAMILIES[family], MODEL_FAMILIES[family].resolve({}), seed=0)
    scores = score_model(model, splits.validation, spec)
    assert scores
    unseen = splits.test.assign(colour="purple", x2=np.nan)
    assert len(model.predict(unseen[spec.input_columns])) == len(unseen)


def test_build_model_ignores_dropped_columns(mixed_frame):
    spec = FeatureSpec("label", CLASSIFICATION, ["x1"], [], {"customer_id": "ID-like"}, ["customer_id", "x1"])
    model = build_model(
        spec, MODEL_FAMILIES["logistic_regression"], {"C": 1.0, "max_iter": 100, "class_weight": None}, 0
    )
    model.fit(mixed_frame[["customer_id", "x1"]], mixed_frame["label"])
    assert model.named_steps["preprocess"].transform(mixed_frame[["customer_id", "x1"]]).shape[1] == 1


def test_read_data_over_http_and_from_an_mlflow_artifact_uri(tmp_path, tracking_uri):
    import functools
    import http.server
    import threading

    import mlflow

    frame = pd.DataFrame({"a": [1.5, 2.5], "b": ["x", "y"]})
    (tmp_path / "served").mkdir()
    frame.to_csv(tmp_path / "served" / "t.csv", index=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/t.csv"
        pd.testing.assert_frame_equal(read_data(url), frame)
        with pytest.raises(PipelineError, match="cannot download"):
            read_data(f"http://127.0.0.1:{server.server_address[1]}/missing.csv")
    finally:
        server.shutdown()
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "served" / "t.csv"), "inputs")
    pd.testing.assert_frame_equal(read_data(f"runs:/{run.info.run_id}/inputs/t.csv"), frame)
    with pytest.raises(PipelineError, match="cannot fetch"):
        read_data(f"runs:/{run.info.run_id}/inputs/nope.csv")


@pytest.mark.parametrize("told", [None, "1"])
def test_a_step_fills_arrays_in_small_pages_unless_told_and_so_do_the_processes_it_starts(told):
    """numpy's 2 MiB pages cost a new process seconds per GiB where the kernel compacts memory to make them
    (docs/performance.md): a step's command line turns them off for itself and for the processes it starts, as
    numpy's NUMPY_MADVISE_HUGEPAGE=0 would; a value the user set is kept."""
    import os
    import subprocess
    import sys

    step = (
        "import os, subprocess, sys, numpy; from steps.lib.runner import run_cli; import click;"
        "run_cli(click.Command('noop', callback=lambda: None), 'noop');"
        "child = 'import numpy; print(numpy._core.multiarray._get_madvise_hugepage())';"
        "print(numpy._core.multiarray._get_madvise_hugepage(), os.environ['NUMPY_MADVISE_HUGEPAGE'],"
        " subprocess.run([sys.executable, '-c', child], capture_output=True, text=True).stdout.strip())"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"} | (
        {} if told is None else {"NUMPY_MADVISE_HUGEPAGE": told}
    )
    ran = subprocess.run([sys.executable, "-c", step], env=env, capture_output=True, text=True, cwd=PROJECT_DIR)
    assert ran.returncode == 0, ran.stderr[-2000:]
    expected = "False 0 False" if told is None else "True 1 True"
    assert ran.stdout.split("\n")[-2] == expected, ran.stdout


def test_a_step_leaves_what_it_imported_out_of_the_collections_at_its_exit():
    """Python's shutdown collects garbage over the ~300,000 objects MLflow and pandas made as they were imported
    (~0.75 s at the exit of every step, docs/performance.md): a step's command line freezes them as it exits,
    after its own exit handlers. The handler registered first runs last, and sees them frozen."""
    import subprocess
    import sys

    step = (
        "import atexit, gc; atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0));"
        "import click; from steps.lib.runner import run_cli;"
        "run_cli(click.Command('noop', callback=lambda: None), 'noop');"
        "print('frozen before exit:', gc.get_freeze_count() > 0)"
    )
    ran = subprocess.run([sys.executable, "-c", step], capture_output=True, text=True, cwd=PROJECT_DIR)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.splitlines()[-2:] == ["frozen before exit: False", "frozen at exit: True"], ran.stdout


@pytest.mark.parametrize("sent", ["SIGTERM", "SIGINT"])
def test_a_step_ended_by_a_signal_ends_its_run_killed_and_says_which(sent, tmp_path, store_template):
    """SIGTERM (`kill`, `timeout`, MLflow cancelling a run) killed a step on the spot, its run left RUNNING; and a
    terminal's Ctrl-C reaches main, which `mlflow run` then terminates: main died mid-way without a word. Either
    signal now ends the run KILLED saying which, and a second one does not cut that short."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    from tests.conftest import fresh_store

    uri = fresh_store(store_template, tmp_path)
    ready = tmp_path / "ready"
    step = (
        "import pathlib, time, click; from steps.lib.runner import run_cli, step_run\n"
        "def work():\n"
        "    with step_run('noop'):\n"
        f"        pathlib.Path({str(ready)!r}).touch(); time.sleep(60)\n"
        "run_cli(click.Command('noop', callback=work), 'noop')\n"
    )
    env = os.environ | {"MLFLOW_TRACKING_URI": uri}
    child = subprocess.Popen([sys.executable, "-c", step], cwd=PROJECT_DIR, env=env, text=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), child.communicate()[1][-2000:]
    child.send_signal(getattr(signal, sent))
    time.sleep(0.05)
    child.send_signal(signal.SIGTERM)  # as `mlflow run` terminates main after a Ctrl-C
    _, stderr = child.communicate(timeout=60)
    said = "interrupted (SIGTERM)" if sent == "SIGTERM" else "interrupted (Ctrl-C)"
    assert child.returncode == (143 if sent == "SIGTERM" else 130), stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"error: noop: {said}"
    [run] = MlflowClient(uri).search_runs(["0"])
    assert (run.info.status, run.data.tags["pipeline.error"]) == ("KILLED", said)

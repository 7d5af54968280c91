"""Each step's bad-input contract, through its command line in-process: one line, exit 1, a FAILED run, no artifact.

tests/integration/test_bad_input.py checks the same contract through real `mlflow run` processes for
representative cases; this file covers every case without paying ~10 s of process start-up for each.
"""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import assert_only_its_log, run_step_cli, runs_by_step


def newest_run(step: str):
    runs = runs_by_step(MlflowClient(), step)
    return runs[0] if runs else None


def assert_failed_cleanly(capsys, step: str, args: list[str], message: str, secret: str | None = None):
    code, stderr = run_step_cli(capsys, step, *args)
    assert secret is None or secret not in stderr, "a secret was printed"
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {step}: "), stderr[-2000:]
    assert message in errors[0] and "Traceback" not in stderr
    run = newest_run(step)
    assert run.info.status == "FAILED" and message in run.data.tags["pipeline.error"]
    assert_only_its_log(MlflowClient(), run, step)
    return run


@pytest.fixture
def csv(tmp_path):
    def write(frame: pd.DataFrame, name: str = "data.csv") -> str:
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return str(path)

    return write


def test_load_refuses_unreadable_data(tracking_uri, capsys, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("this is not parquet")
    assert_failed_cleanly(capsys, "load", ["--data-uri", str(path), "--target", "y"], "cannot read")


@pytest.mark.parametrize(
    ("frame", "target", "message"),
    [
        (pd.DataFrame({"x": range(10), "y": [0, 1] * 5}), "label", "target column 'label' is not in the data"),
        (pd.DataFrame({"x": range(10), "y": ["yes"] * 10}), "y", "has a single value"),
        (pd.DataFrame({"x": [], "y": []}), "y", "has no rows"),
    ],
)
def test_load_refuses_a_bad_table(tracking_uri, capsys, csv, frame, target, message):
    assert_failed_cleanly(capsys, "load", ["--data-uri", csv(frame), "--target", target], message)


def test_load_refuses_a_password_in_clear_text(tracking_uri, capsys):
    uri = "https://alice:hunter2@127.0.0.1:9/data.csv"
    run = assert_failed_cleanly(capsys, "load", ["--data-uri", uri], "data_uri holds a password in clear text")
    assert "hunter2" not in run.data.tags["pipeline.error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-evals", "0"], "max_evals must be at least 1"),
        (["--metric", "auc"], "unknown metric 'auc'"),
        (["--algo", "bayes"], "unknown algo 'bayes'"),
        (["--parallelism", "-1"], "parallelism must be 0 (auto) or more"),
        (["--models", "random_forest,svm"], "unknown model family 'svm'"),
        (["--timeout", "0"], "timeout must be more than 0 seconds"),
        (["--resume-from", "0123456789abcdef0123456789abcdef"], "does not exist"),
    ],
)
def test_tune_refuses_bad_options_before_any_work(tracking_uri, capsys, args, message):
    assert_failed_cleanly(capsys, "tune", args, message)
    assert newest_run("featurize") is None  # refused before any work


def test_tune_metric_that_does_not_fit_the_task_and_resume_from_another_step(tracking_uri, capsys):
    assert_failed_cleanly(capsys, "tune", ["--metric", "rmse"], "metric 'rmse' does not fit a classification task")
    featurize = newest_run("featurize")  # splits_uri=auto made them first
    assert_failed_cleanly(capsys, "tune", ["--resume-from", featurize.info.run_id], "is not a tune run")


def test_train_refuses_an_unknown_model(tracking_uri, capsys):
    assert_failed_cleanly(
        capsys, "train", ["--splits-uri", "runs:/0/splits", "--model", "xgboost"], "unknown model 'xgboost'"
    )


def test_tune_refuses_an_unknown_backend(tracking_uri, capsys):
    run = assert_failed_cleanly(capsys, "tune", ["--backend", "dask"], "unknown backend 'dask'")
    assert run.data.tags["pipeline.error"] == "unknown backend 'dask'; use one of local, spark"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-evals", "0"], "max_evals must be at least 1"),
        (["--timeout", "soon"], "timeout must be a number of seconds or none; got 'soon'"),
        (["--min-delta", "-1"], "min_delta must be 0 or more"),
        (["--min-r2", "high"], "min_r2 must be a number or none; got 'high'"),
        (["--use-cache", "sometimes"], "use_cache must be true or false, got 'sometimes'"),
        (["--split", "time"], "split=time needs the column that orders the rows; pass -P time_column=<column>"),
        (["--split", "group"], "split=group needs the column that names each row's group"),
        (["--data-uri", "https://alice:hunter2@127.0.0.1:9/data.csv"], "data_uri holds a password in clear text"),
        (["--data-uri", "https://h.example/x.csv?X-Amz-Signature=abc"], "holds a secret in its query string"),
        (
            ["--registered-model-name", "churn@v2"],
            "registered_model_name 'churn@v2' cannot be used in a models:/ URI (it holds '@')",
        ),
        (["--registered-model-name", "a?b"], "registered_model_name 'a?b' cannot be used in a models:/ URI"),
        (["--registered-model-name", "m.champion-lock"], "may not end in '.champion-lock'"),
    ],
)
def test_main_refuses_bad_options_before_any_step(tracking_uri, capsys, args, message):
    main = assert_failed_cleanly(capsys, "main", args, message)
    assert (
        MlflowClient().search_runs([main.info.experiment_id], f"tags.`mlflow.parentRunId` = '{main.info.run_id}'") == []
    )
    assert newest_run("load") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "time"], "split=time needs the column that orders the rows"),
        (["--split", "time", "--time-column", "city"], "time_column 'city' does not parse as dates/times"),
        (["--split", "time", "--time-column", "when"], "time_column 'when' is not in the data"),
        (["--split", "group", "--group-column", "shop"], "group_column 'shop' is not in the data"),
    ],
)
def test_featurize_refuses_a_split_it_cannot_make(tracking_uri, capsys, csv, args, message):
    frame = pd.DataFrame({"city": ["Oslo", "Lima", "Pune"] * 10, "x": range(30), "y": ["a", "b"] * 15})
    code, stderr = run_step_cli(capsys, "load", "--data-uri", csv(frame), "--target", "y")
    assert code == 0, stderr
    raw = f"runs:/{newest_run('load').info.run_id}/data"
    assert_failed_cleanly(capsys, "featurize", ["--raw-data-uri", raw, *args], message)


@pytest.mark.parametrize(
    ("target", "task", "planted", "message"),
    [
        (
            "y",
            "auto",
            {4: "3,inf,1.5,b", 11: "10,-Inf,1.5,a"},
            "column 'ratio' holds infinite values (2 rows, the first",
        ),
        (
            "amount",
            "regression",
            {8: "7,0.5,inf,b"},
            "column 'amount' holds infinite values (1 rows, the first in row 7)",
        ),
    ],
)
def test_featurize_refuses_infinite_numbers(tracking_uri, capsys, tmp_path, target, task, planted, message):
    """`inf` (as pandas writes an infinite number) and `-Inf` (R's) read as numbers: scikit-learn refused them in
    every trial of tune; featurize names the column, a feature's or a regression target's."""
    frame = pd.DataFrame({"x": range(30), "ratio": [0.5] * 30, "amount": [1.5, 2.5] * 15, "y": ["a", "b"] * 15})
    lines = frame.to_csv(index=False).splitlines()
    for number, line in planted.items():
        lines[number] = line
    (tmp_path / "inf.csv").write_text("\n".join(lines) + "\n")
    code, stderr = run_step_cli(capsys, "load", "--data-uri", str(tmp_path / "inf.csv"), "--target", target)
    assert code == 0, stderr
    raw = f"runs:/{newest_run('load').info.run_id}/data"
    assert_failed_cleanly(capsys, "featurize", ["--raw-data-uri", raw, "--task", task], message)


@pytest.mark.parametrize("task", ["auto", "regression"])
def test_featurize_tells_a_label_of_amounts_written_as_text_to_be_written_as_numbers(tracking_uri, capsys, csv, task):
    prices = [f"${1000 + 37.5 * i:,.2f}" for i in range(60)]  # $1,000.00, $1,037.50, ...
    frame = pd.DataFrame({"x": [i % 7 * 0.5 for i in range(60)], "price": prices})
    code, stderr = run_step_cli(capsys, "load", "--data-uri", csv(frame), "--target", "price")
    assert code == 0, stderr
    raw = f"runs:/{newest_run('load').info.run_id}/data"
    told = "they are numbers written as text (a currency sign, thousands separators, %), which a label is not read as"
    assert_failed_cleanly(capsys, "featurize", ["--raw-data-uri", raw, "--task", task], told)


def test_a_column_that_is_not_there_shows_the_names_as_they_are_and_the_one_meant():
    """A header ` label ` printed as `label ` in the list of columns could not be told from `label`; the names
    are quoted now, and a name that is the one asked for but for case and spaces is pointed at."""
    from steps.lib.errors import PipelineError
    from steps.lib.features import validate_target
    from steps.lib.scoring import check_batch
    from steps.lib.splits import column_of

    frame = pd.DataFrame({"age ": [30, 40], " label ": ["a", "b"]})
    with pytest.raises(PipelineError) as refused:
        validate_target(frame, "label")
    assert str(refused.value) == (
        "target column 'label' is not in the data (columns: 'age ', ' label '; ' label ' differs only in case or "
        "spaces); pass -P target=<column>"
    )
    with pytest.raises(PipelineError, match=r"\(columns: 'age ', ' label '\); pass an existing column$"):
        column_of(frame, "when", "time_column")
    with pytest.raises(PipelineError) as refused:
        check_batch(frame, [("Age", "long"), (" label ", "string")])
    assert str(refused.value) == (
        "the batch lacks column 'Age' that the model's signature needs; the batch's 'age ' differs only in case or "
        "spaces; expected columns: 'Age', ' label '"
    )


@pytest.mark.parametrize("hint", ["sep=;", "\ufeffSEP=,"])
def test_excels_separator_line_is_named_in_one_line(tracking_uri, capsys, tmp_path, hint):
    """Excel writes (and reads) `sep=;` above the header; every other reader takes that line for the header, and
    load said the rows had more values than the header has columns."""
    separator = hint[-1]
    lines = [hint, separator.join(["Income ($)", "city", "y"]), separator.join(["1", "Oslo", "a"])]
    (tmp_path / "excel.csv").write_text("\n".join(lines * 1 + lines[2:] * 20) + "\n", encoding="utf-8")
    message = f"starts with Excel's separator line `{hint.lstrip(chr(0xFEFF))}`: delete that line"
    assert_failed_cleanly(capsys, "load", ["--data-uri", str(tmp_path / "excel.csv"), "--target", "y"], message)

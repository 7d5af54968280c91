"""The pipeline, unchanged, against scripts/tracking-server.sh (mlflow server on 127.0.0.1 over PostgreSQL):
the whole run tree over HTTP with passwords that must leak nowhere, and two mains at once on one model name."""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
from collections.abc import Iterator

import mlflow
import pandas as pd
import pytest
import sklearn.datasets
from mlflow.tracking import MlflowClient

from tests.conftest import served_behind_basic_auth
from tests.integration.conftest import children, mlflow_env, mlflow_run

TRACKING_PASSWORD = "trk-S3cret-42"
DATA_PASSWORD = "dat-S3cret-17"
STEPS = ("load", "featurize", "tune", "train", "evaluate")


@pytest.fixture(scope="module")
def iris_behind_basic_auth() -> Iterator[str]:
    """iris as CSV over HTTP on 127.0.0.1, only for alice with DATA_PASSWORD (401 otherwise)."""
    body = sklearn.datasets.load_iris(as_frame=True).frame.to_csv(index=False).encode()
    with served_behind_basic_auth(body, "alice", DATA_PASSWORD) as address:
        yield address


def secrets_in(text: str) -> list[str]:
    return [s for s in (TRACKING_PASSWORD, DATA_PASSWORD) if s in text or urllib.parse.quote(s) in text]


def test_main_over_http_records_everything_and_no_password(project, server, iris_behind_basic_auth, tmp_path):
    # The password in the tracking URI (MLflow sends it as basic auth) and the data password as a ${VAR}.
    tracking_uri = server.uri.replace("http://", f"http://bob:{TRACKING_PASSWORD}@")
    data_uri = f"http://alice:${{DATA_PASSWORD}}@{iris_behind_basic_auth}/iris.csv"
    params = [f"data_uri={data_uri}", "target=target", "max_evals=3", "registered_model_name=http-model"]
    result = mlflow_run(
        project,
        ["-e", "main", *[item for param in params for item in ("-P", param)]],
        tracking_uri,
        # MLflow's own CLI prints its tracking URI in "View run" links; README: silence it, or use the variables.
        extra_env={
            "DATA_PASSWORD": DATA_PASSWORD,
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
            "MLFLOW_EXPERIMENT_NAME": "http",
        },
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"open {server.uri} in a browser" in result.stdout
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("http").experiment_id
    [main] = client.search_runs([experiment], "tags.`pipeline.step` = 'main'")
    steps = children(client, main)
    assert [(r.info.run_name, r.info.status) for r in steps] == [(name, "FINISHED") for name in STEPS]
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in [main, *steps])  # served by the server
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()
    # The placeholder as typed (MLflow shell-quotes it: the shell must not expand ${DATA_PASSWORD} either).
    assert steps[0].data.params["data_uri"] == f"'{data_uri}'"
    mlflow.set_tracking_uri(server.uri)
    try:
        version = client.get_model_version_by_alias("http-model", "champion")
        assert version.run_id == steps[3].info.run_id
        assert version.tags["evaluate_run_id"] == steps[4].info.run_id
        model = mlflow.pyfunc.load_model("models:/http-model@champion")
        test_rows = pd.read_parquet(
            mlflow.artifacts.download_artifacts(f"runs:/{steps[1].info.run_id}/splits/test.parquet")
        )
        assert (model.predict(test_rows.drop(columns="target")) == test_rows["target"]).mean() >= 0.85
    finally:
        mlflow.set_tracking_uri(None)

    # No password anywhere: output, every param/tag/dataset row in PostgreSQL, every artifact file, server log.
    assert secrets_in(result.stdout + result.stderr) == []
    assert secrets_in(server.dump()) == []
    leaking = subprocess.run(
        ["grep", "-rlaF", "-e", TRACKING_PASSWORD, "-e", DATA_PASSWORD, str(server.data_dir)],
        capture_output=True,
        text=True,
    )
    assert leaking.stdout == "", leaking.stdout
    assert any(path.is_file() for path in (server.data_dir / "artifacts").rglob("MLmodel"))  # grep saw artifacts


def test_two_mains_at_once_on_one_model_name_lose_nothing(project, server, tmp_path):
    """Two model families on the same splits (one scores better); both evaluates race for the alias."""
    name = "team-model"
    shared = [f"registered_model_name={name}", "use_cache=false", "data_uri=sklearn:breast_cancer"]
    commands = {
        family: [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local", "-e", "main"]
        + [item for param in (f"models={family}", f"max_evals={evals}", *shared) for item in ("-P", param)]
        for family, evals in (("logistic_regression", 3), ("random_forest", 1))
    }
    # Created first, as a team does: two `mlflow run`s creating one new experiment at once race inside MLflow.
    MlflowClient(server.uri).create_experiment("concurrent")
    env = mlflow_env(server.uri, {"MLFLOW_EXPERIMENT_NAME": "concurrent"})
    logs = {family: tmp_path / f"{family}.log" for family in commands}
    processes = {}
    for family, command in commands.items():
        with logs[family].open("w") as log:
            processes[family] = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    for family, process in processes.items():
        assert process.wait(timeout=900) == 0, (family, logs[family].read_text()[-3000:])

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("concurrent").experiment_id
    mains = client.search_runs([experiment], filter_string="tags.`pipeline.step` = 'main'")
    assert sorted(r.data.params["models"] for r in mains) == ["logistic_regression", "random_forest"]
    versions = {}
    for main in mains:
        steps = children(client, main)
        assert main.info.status == "FINISHED"
        assert [(r.info.run_name, r.info.status) for r in steps] == [(s, "FINISHED") for s in STEPS]  # none lost
        evaluate = steps[-1]
        version = client.get_model_version(name, evaluate.data.tags["registered_model.version"])
        assert version.tags["evaluate_run_id"] == evaluate.info.run_id
        versions[version.version] = (evaluate.data.metrics[f"test_{evaluate.data.tags['metric']}"], version)
    assert len(versions) == 2  # two different version numbers
    assert len({score for score, _ in versions.values()}) == 2, versions  # so one of them is the better
    assert len(client.search_model_versions(f"name = '{name}'")) == 2  # and no other, none half-registered
    champion = client.get_model_version_by_alias(name, "champion")
    best = max(score for score, _ in versions.values())
    assert versions[champion.version][0] == best, {v: s for v, (s, _) in versions.items()}
    other = next(v for v in versions if v != champion.version)
    assert "champion" not in client.get_model_version(name, other).aliases
    assert not client.search_registered_models(f"name = '{name}.champion-lock'")  # the lock is released

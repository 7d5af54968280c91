"""The pipeline, unchanged, against scripts/tracking-server.sh (mlflow server on 127.0.0.1 over PostgreSQL): two
people with passwords run main at once on one model name behind `--auth`; the passwords leak nowhere."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from steps.lib.names import PIPELINE_STEPS
from steps.lib.registry import ACQUIRED_TAG, RELEASED, lock_name
from steps.lib.tables import load_bundled_frame
from tests.conftest import served_behind_basic_auth
from tests.integration.conftest import TrackingServer, children, mlflow_env

TRACKING_PASSWORD = "trk-S3cret-42"  # alice's, in her tracking URI
BOB_PASSWORD = "bob-S3cret-8"  # bob's, in MLFLOW_TRACKING_PASSWORD
DATA_PASSWORD = "dat-S3cret-17"


@pytest.fixture(scope="module")
def data_behind_basic_auth() -> Iterator[str]:
    """breast_cancer as CSV over HTTP on 127.0.0.1, only for alice with DATA_PASSWORD (401 otherwise)."""
    body = load_bundled_frame("breast_cancer")[0].to_csv(index=False).encode()
    with served_behind_basic_auth(body, "alice", DATA_PASSWORD) as address:
        yield f"http://alice:${{DATA_PASSWORD}}@{address}/breast_cancer.csv"


@contextmanager
def as_user(user: str, password: str) -> Iterator[None]:
    """This process's MLflow clients send `user`'s password (MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", user)
        patch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        yield


@pytest.fixture(scope="module")
def auth_server() -> Iterator[tuple[TrackingServer, str]]:
    """`start --auth`: MLflow's basic-auth app in front, the admin's password printed once at the first start (it is
    returned here); the admin makes one user per person (alice, bob: docs/team.md) and the team's experiment."""
    server = TrackingServer()
    try:
        started = server.script("start", 180, "--auth")
        assert started.returncode == 0, started.stderr[-3000:]
        shown = "basic auth on: user admin, password "
        [password] = [line[len(shown) :].split()[0] for line in started.stderr.splitlines() if line.startswith(shown)]
        with as_user("admin", password):
            from mlflow.server.auth.client import AuthServiceClient

            AuthServiceClient(server.uri).create_user("alice", TRACKING_PASSWORD)
            AuthServiceClient(server.uri).create_user("bob", BOB_PASSWORD)
            # Made first, as a team does: two `mlflow run`s creating one new experiment at once race inside MLflow.
            MlflowClient(server.uri).create_experiment("concurrent")
        yield server, password
    finally:
        server.stop_and_remove()


def secrets_in(text: str, secrets: tuple[str, ...]) -> list[str]:
    return [s for s in secrets if s in text or urllib.parse.quote(s) in text]


def test_with_auth_an_anonymous_request_is_refused_and_a_restart_shows_no_password(auth_server):
    import urllib.error
    import urllib.request

    server, _ = auth_server
    search = f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(search, timeout=30)
    assert refused.value.code == 401
    again = server.script("start", 180)  # running already (with auth: its data dir remembers): no password
    assert again.returncode == 0 and "password" not in again.stderr


def start_mains(project: Path, server, data_uri: str, logs: dict[str, Path]) -> dict[str, subprocess.Popen]:
    """alice: her password in the tracking URI (MLflow sends it as basic auth), logistic regression; bob: his in
    MLFLOW_TRACKING_USERNAME/PASSWORD, a random forest (so one of them scores better). Same data (the data password
    as a ${VAR}), same model name, at the same time."""
    name_and_data = ["registered_model_name=team-model", f"data_uri={data_uri}", "target=diagnosis", "use_cache=false"]
    bob = {"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": BOB_PASSWORD}
    users = {
        "alice": (server.uri.replace("http://", f"http://alice:{TRACKING_PASSWORD}@"), {}, "logistic_regression", 3),
        "bob": (server.uri, bob, "random_forest", 1),
    }
    processes = {}
    for user, (tracking_uri, credentials, family, evals) in users.items():
        params = [f"models={family}", f"max_evals={evals}", *name_and_data]
        command = [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local", "-e", "main"]
        command += [item for param in params for item in ("-P", param)]
        # MLflow's own CLI prints its tracking URI in "View run" links; README: silence it, or use the variables.
        quiet = {
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
            "DATA_PASSWORD": DATA_PASSWORD,
            "PIPELINE_SECRET_VARS": "DATA_PASSWORD",
        }
        env = mlflow_env(tracking_uri, {"MLFLOW_EXPERIMENT_NAME": "concurrent", **quiet, **credentials})
        with logs[user].open("w") as log:
            processes[user] = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    return processes


def test_two_people_at_once_over_http_lose_nothing_and_leak_no_password(
    project, auth_server, data_behind_basic_auth, tmp_path
):
    server, admin_password = auth_server
    logs = {user: tmp_path / f"{user}.log" for user in ("alice", "bob")}
    for user, process in start_mains(project, server, data_behind_basic_auth, logs).items():
        assert process.wait(timeout=900) == 0, (user, logs[user].read_text()[-3000:])
    assert f"open {server.uri} in a browser" in logs["alice"].read_text()

    with as_user("admin", admin_password):
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("concurrent").experiment_id
        mains = client.search_runs([experiment], filter_string="tags.`pipeline.step` = 'main'")
        assert sorted(r.data.params["models"] for r in mains) == ["logistic_regression", "random_forest"]
        versions = {}
        for main in mains:
            steps = children(client, main)
            assert main.info.status == "FINISHED"
            assert [(r.info.run_name, r.info.status) for r in steps] == [(s, "FINISHED") for s in PIPELINE_STEPS]
            assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in [main, *steps])  # served
            # The placeholder as typed (MLflow shell-quotes it: the shell must not expand ${DATA_PASSWORD} either).
            assert steps[0].data.params["data_uri"] == f"'{data_behind_basic_auth}'"
            evaluate = steps[-1]
            version = client.get_model_version("team-model", evaluate.data.tags["registered_model.version"])
            assert version.tags["evaluate_run_id"] == evaluate.info.run_id and version.run_id == steps[3].info.run_id
            versions[version.version] = (evaluate.data.metrics[f"test_{evaluate.data.tags['metric']}"], steps)
        assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()

        # Nothing lost, nothing half-registered, the better one is champion.
        assert len(versions) == 2  # two different version numbers
        assert len({score for score, _ in versions.values()}) == 2, versions  # so one of them is the better
        assert len(client.search_model_versions("name = 'team-model'")) == 2  # and no other
        champion = client.get_model_version_by_alias("team-model", "champion")
        assert versions[champion.version][0] == max(score for score, _ in versions.values())
        other = next(v for v in versions if v != champion.version)
        assert "champion" not in client.get_model_version("team-model", other).aliases
        # The lock is released: the one who made the lock model deleted their ticket; the other may not delete
        # there (EDIT, not MANAGE: docs/team.md) and released theirs by its time stamp.
        tickets = client.search_model_versions(f"name = '{lock_name('team-model')}'")
        assert len(tickets) <= 1 and all(t.tags[ACQUIRED_TAG] == RELEASED for t in tickets), tickets
        # Whoever registered first made the registered model and manages it; the other may edit it, not delete it.
        from mlflow.server.auth.client import AuthServiceClient

        users = AuthServiceClient(server.uri)
        permissions = [users.get_user_permission(user, "registered_model", "team-model") for user in ("alice", "bob")]
        assert sorted(permission.permission for permission in permissions) == ["EDIT", "MANAGE"]

        mlflow.set_tracking_uri(server.uri)
        try:
            model = mlflow.pyfunc.load_model("models:/team-model@champion")
            featurize = versions[champion.version][1][1]
            test_rows = pd.read_parquet(
                mlflow.artifacts.download_artifacts(
                    f"runs:/{featurize.info.run_id}/splits/test.parquet", dst_path=str(tmp_path)
                )
            )
            assert (model.predict(test_rows.drop(columns="diagnosis")) == test_rows["diagnosis"]).mean() >= 0.85
        finally:
            mlflow.set_tracking_uri(None)

    # No password anywhere: output, every param/tag/dataset row in PostgreSQL, every artifact file, server log (the
    # auth database keeps hashes only).
    secrets = (TRACKING_PASSWORD, BOB_PASSWORD, DATA_PASSWORD, admin_password)
    assert secrets_in(logs["alice"].read_text() + logs["bob"].read_text(), secrets) == []
    assert secrets_in(server.dump(), secrets) == []
    leaking = subprocess.run(
        ["grep", "-rlaF", *(f"-e{secret}" for secret in secrets), str(server.data_dir)], capture_output=True, text=True
    )
    assert leaking.stdout == "", leaking.stdout
    assert any(path.is_file() for path in (server.data_dir / "artifacts").rglob("MLmodel"))  # grep saw artifacts


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="making a throwaway OS user needs root")
def test_only_the_servers_user_reaches_its_database_and_the_script_checks_what_it_stops(server, tmp_path):
    """No `trust` line and a 0700 socket directory: another local user cannot connect, nor can this one
    without the password file; `start` refuses a port someone else listens on; `stop` kills no stranger."""
    import shutil
    import stat
    import uuid

    from tests.integration.conftest import TrackingServer

    paths = server.paths()
    [bin_dir] = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1:]
    psql = [str(bin_dir / "psql"), "-w", "-h", paths["socket_dir"], "-U", "mlflow", "-d", "mlflow", "-tAc", "SELECT 1"]
    assert subprocess.run(psql, env={**os.environ, "PGPASSFILE": paths["pgpass"]}, capture_output=True).returncode == 0
    no_password = subprocess.run(psql, env={**os.environ, "PGPASSFILE": str(tmp_path / "none")}, capture_output=True)
    assert no_password.returncode != 0 and b"no password supplied" in no_password.stderr
    hba = subprocess.run(["cat", str(Path(paths["pg_data"]) / "pg_hba.conf")], capture_output=True, text=True).stdout
    assert not [line for line in hba.splitlines() if "trust" in line.split("#")[0]]
    for folder in (paths["data_dir"], paths["socket_dir"], paths["pg_data"]):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
    assert stat.S_IMODE(os.stat(paths["pgpass"]).st_mode) == 0o600
    outsider = f"pipeline-outsider-{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", outsider], check=True)
    try:
        as_outsider = subprocess.run(["runuser", "-u", outsider, "--", *psql], capture_output=True, text=True)
    finally:
        subprocess.run(["userdel", outsider], check=True)
    assert as_outsider.returncode != 0 and "Permission denied" in as_outsider.stderr, as_outsider.stderr

    other = TrackingServer()
    other.port = server.port  # the shared server already listens there
    taken = other.script("start")
    assert taken.returncode == 1
    assert f"error: tracking-server: port {server.port} is taken by another process" in taken.stderr
    (other.data_dir / "mlflow-server.pid").write_text("1")  # a stale pid file naming some other process
    stopped = other.script("stop")
    assert stopped.returncode == 0 and "names no running mlflow server" in stopped.stderr
    assert server.script("status").returncode == 0  # the shared server was left alone
    shutil.rmtree(other.data_dir, ignore_errors=True)

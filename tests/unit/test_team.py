"""Team mode in-process: credentials kept out of URIs, dead runs reaped, the champion lock."""

from __future__ import annotations

import contextlib
import getpass
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from steps.lib.errors import PipelineError
from steps.lib.names import ERROR_TAG, PROCESS_TAG
from steps.lib.process import process_alive, process_identity
from steps.lib.reaper import reap_dead_runs
from steps.lib.registry import ACQUIRED_TAG, HOLDER_TAG, TOKEN_TAG, champion_lock, lock_name
from steps.lib.runner import tracking_unreachable
from steps.lib.tables import read_data
from steps.lib.uris import (
    check_uri_credentials,
    expand_placeholders,
    move_tracking_credentials,
    redact_uri,
    split_credentials,
)
from tests.conftest import served_behind_basic_auth

# --------------------------------------------------------------------------- credentials


def test_a_placeholder_is_no_secret_but_a_password_is():
    assert redact_uri("https://bob:${DATA_PASSWORD}@host/x.csv") == "https://bob:${DATA_PASSWORD}@host/x.csv"
    assert redact_uri("https://bob:pw@host/x.csv") == "https://bob:***@host/x.csv"
    check_uri_credentials("data_uri", "https://bob:${DATA_PASSWORD}@host/x.csv")
    check_uri_credentials("data_uri", "https://${TOKEN}@host/x.csv")
    with pytest.raises(PipelineError, match=r"clear text.*https://alice:\$\{DATA_PASSWORD\}@host/data.csv") as raised:
        check_uri_credentials("data_uri", "https://bob:s3cret@host/x.csv")
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("uri", "shown", "refusal"),
    [
        ("https://al:se#cret@host/x.csv", "https://***", "must be percent-encoded"),  # urlsplit sees no password
        ("https://al:12?x@host/x.csv", "https://***", "must be percent-encoded"),
        ("https://al:se/cret@host/x.csv", "https://***", "must be percent-encoded"),
        ("https://ghp_token@host/x.csv", "https://***@host/x.csv", "if it is a token, write it as ${TOKEN}@"),
        ("s3://al:${PW}@bucket/x.csv", "s3://al:${PW}@bucket/x.csv", "work for http(s) only"),
        ("https://host/people/al@example.com.csv", "https://host/people/al@example.com.csv", None),
        ("https://${TOKEN}@host/x.csv", "https://${TOKEN}@host/x.csv", None),
    ],
)
def test_credentials_urlsplit_would_miss_are_refused_and_hidden(uri, shown, refusal):
    assert redact_uri(uri) == shown
    if refusal is None:
        check_uri_credentials("data_uri", uri)
        return
    with pytest.raises(PipelineError, match=re.escape(refusal)) as raised:
        check_uri_credentials("data_uri", uri)
    assert "cret" not in str(raised.value) and "ghp_token" not in str(raised.value)


def test_placeholders_are_filled_from_the_environment_and_quoted(monkeypatch):
    monkeypatch.setenv("DATA_PASSWORD", "p@ss/w:rd")
    monkeypatch.setenv("PIPELINE_SECRET_VARS", "DATA_PASSWORD, SIG")
    filled = expand_placeholders("https://bob:${DATA_PASSWORD}@host/x.csv")
    assert filled == "https://bob:p%40ss%2Fw%3Ard@host/x.csv"
    assert split_credentials(filled) == ("https://host/x.csv", ("bob", "p@ss/w:rd"))
    assert expand_placeholders("/data/${DATA_PASSWORD}/x.csv") == "/data/${DATA_PASSWORD}/x.csv"  # user-info only
    assert expand_placeholders("https://host/${DATA_PASSWORD}.csv") == "https://host/${DATA_PASSWORD}.csv"
    monkeypatch.delenv("DATA_PASSWORD")
    with pytest.raises(PipelineError, match=r"refers to \$\{DATA_PASSWORD\}, which is not set; export DATA_PASSWORD"):
        expand_placeholders("https://bob:${DATA_PASSWORD}@host/x.csv")


def test_a_variable_the_user_did_not_allow_is_never_filled_in(monkeypatch):
    """A data URI replayed from someone else's run may name any variable: only PIPELINE_SECRET_VARS are sent."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("PIPELINE_SECRET_VARS", "DATA_PASSWORD")
    for uri in (
        "https://x:${AWS_SECRET_ACCESS_KEY}@evil.example/x.csv",
        "https://evil.example/x.csv?sig=${AWS_SECRET_ACCESS_KEY}",
    ):
        with pytest.raises(PipelineError) as raised:
            expand_placeholders(uri)
        assert str(raised.value) == (
            f"'{uri}' refers to ${{AWS_SECRET_ACCESS_KEY}}, which PIPELINE_SECRET_VARS does not allow to be sent to "
            "evil.example; if you wrote this URI, export PIPELINE_SECRET_VARS=AWS_SECRET_ACCESS_KEY"
        )


def test_secrets_in_a_query_string_are_hidden_refused_in_clear_and_filled_from_placeholders(monkeypatch):
    signed = "https://b.s3.amazonaws.com/x.csv?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc123&X-Amz-Expires=60"
    assert (
        redact_uri(signed)
        == "https://b.s3.amazonaws.com/x.csv?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60"
    )
    assert redact_uri("https://h/x?token=t0k&sig=s1g&page=2") == "https://h/x?token=***&sig=***&page=2"
    assert redact_uri("https://h/x?sig=${SIG}") == "https://h/x?sig=${SIG}"  # a placeholder is no secret
    with pytest.raises(PipelineError, match=r"data_uri holds a secret in its query string \(X-Amz-Credential=...\)"):
        check_uri_credentials("data_uri", signed)
    check_uri_credentials("data_uri", "https://h/x.csv?sig=${SIG}&page=2")
    monkeypatch.setenv("SIG", "a/b+c")
    monkeypatch.setenv("PIPELINE_SECRET_VARS", "SIG")
    assert expand_placeholders("https://h/x.csv?sig=${SIG}&page=2") == "https://h/x.csv?sig=a%2Fb%2Bc&page=2"


def test_a_tracking_password_moves_into_mlflows_credential_variables(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:s%40cret@127.0.0.1:5999")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    move_tracking_credentials()
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("bob", "s@cret")
    from mlflow.utils.credentials import get_default_host_creds

    creds = get_default_host_creds(os.environ["MLFLOW_TRACKING_URI"])  # what MLflow sends as basic auth
    assert (creds.host, creds.username, creds.password) == ("http://127.0.0.1:5999", "bob", "s@cret")


def test_a_database_tracking_uri_keeps_its_login(monkeypatch):
    uri = "postgresql+psycopg2://mlflow:pw@127.0.0.1:5432/mlflow"  # SQLAlchemy reads no MLFLOW_TRACKING_PASSWORD
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    move_tracking_credentials()
    assert os.environ["MLFLOW_TRACKING_URI"] == uri and "MLFLOW_TRACKING_PASSWORD" not in os.environ


@pytest.fixture
def csv_behind_basic_auth():
    with served_behind_basic_auth(b"a,b,label\n1,2,x\n3,4,y\n", "bob", "p@ss word") as address:
        yield address


def test_read_data_sends_the_placeholder_password_as_basic_auth(csv_behind_basic_auth, monkeypatch):
    monkeypatch.setenv("DATA_PASSWORD", "p@ss word")
    monkeypatch.setenv("PIPELINE_SECRET_VARS", "DATA_PASSWORD")
    frame = read_data(f"http://bob:${{DATA_PASSWORD}}@{csv_behind_basic_auth}/data.csv")
    assert list(frame.columns) == ["a", "b", "label"] and len(frame) == 2
    monkeypatch.setenv("DATA_PASSWORD", "wrong")
    with pytest.raises(PipelineError, match=r"cannot download .*\$\{DATA_PASSWORD\}.*401") as raised:
        read_data(f"http://bob:${{DATA_PASSWORD}}@{csv_behind_basic_auth}/data.csv")
    assert "wrong" not in str(raised.value)


def test_an_unreachable_server_is_one_line_without_the_password(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri("http://bob:hunter2@127.0.0.1:9")  # discard port: nothing listens
    try:
        with pytest.raises(mlflow.exceptions.MlflowException) as raised:
            MlflowClient().get_run("0" * 32)
        reason = tracking_unreachable(raised.value)
    finally:
        mlflow.set_tracking_uri(None)
    assert "hunter2" in str(raised.value)  # MLflow's own message carries it ...
    assert reason.startswith("the tracking server http://bob:***@127.0.0.1:9 is unreachable (connection refused")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=0" in reason and "\n" not in reason
    assert tracking_unreachable(mlflow.exceptions.MlflowException("RESOURCE_DOES_NOT_EXIST")) == ""


# --------------------------------------------------------------------------- dead runs


MINE = {"mlflow.user": getpass.getuser()}  # as MLflow tags every run it creates for this user


def dead_process_identity() -> str:
    """The identity of a process that has come and gone."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = process_identity(done.pid)
    done.wait()
    return identity


def test_process_identity_tells_live_dead_and_foreign_processes_apart():
    assert process_alive(process_identity()) is True
    assert process_alive(dead_process_identity()) is False
    host, pid, started = process_identity().split(":")
    assert process_alive(f"{host}:{pid}:{int(started) + 1}") is False  # a reused pid is another process
    assert process_alive(f"another-host:{pid}:{started}") is None


def test_a_killed_process_not_yet_reaped_by_its_parent_is_dead():
    """A zombie still has its pid and start time, and os.kill(pid, 0) succeeds on it: its state says it is gone."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = process_identity(child.pid)
    try:
        assert process_alive(identity) is True
        child.kill()
        for _ in range(200):  # bounded: the kernel makes it a zombie within milliseconds
            if Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                break
            time.sleep(0.01)
        assert process_alive(identity) is False
    finally:
        child.wait()


def test_liveness_is_unknown_whenever_it_cannot_be_sure(monkeypatch):
    """Unknown (None) means: leave it alone. Never os.kill on Windows (it ends the process)."""
    import steps.lib.process as process_module

    mine = process_identity()
    host, pid, _ = mine.split(":")
    assert process_alive(f"{host}:{pid}:") is None  # no start time recorded (no /proc): pid reuse undetectable
    with monkeypatch.context() as patch:  # /proc mounted hidepid=2, or another user's process
        patch.setattr(process_module, "proc_stat_fields", lambda pid: [])
        assert process_alive(mine) is None
    with monkeypatch.context() as patch:

        def ends_the_process(*args):
            raise AssertionError("os.kill called on Windows")

        patch.setattr(process_module.os, "name", "nt")
        patch.setattr(process_module.os, "kill", ends_the_process)
        assert process_alive(mine) is None


def test_main_marks_runs_of_dead_processes_killed_and_leaves_the_rest(tracking_uri):
    client = MlflowClient()
    experiment = client.get_experiment_by_name("Default").experiment_id
    dead = dead_process_identity()
    runs = {}
    owners = [("dead", dead), ("alive", process_identity()), ("foreign", "elsewhere:1:1"), ("untagged", "")]
    for name, identity in owners:
        tags = ({PROCESS_TAG: identity} if identity else {}) | MINE
        runs[name] = client.create_run(experiment, tags=tags, run_name=name).info.run_id
    tags = {PROCESS_TAG: dead, "mlflow.user": "another-user"}  # a dead process of someone else: theirs to reap
    runs["another user's"] = client.create_run(experiment, tags=tags).info.run_id
    main_run = client.create_run(experiment, tags={PROCESS_TAG: dead} | MINE).info.run_id  # itself: never reaped
    left = {kind: Path(tempfile.mkdtemp(prefix=f"pipeline-{kind}-{runs['dead']}-")) for kind in ("run", "log")}
    (left["log"] / "tune.log").write_text("INFO steps: what the dead step wrote\n")
    (left["log"] / "passwd.log").symlink_to("/etc/passwd")  # a link is not followed: never uploaded
    client.set_tag(runs["dead"], "pipeline.step", "../../../etc/passwd")  # a tag names no file here
    assert reap_dead_runs(client, experiment, main_run) == [runs["dead"]]
    assert not any(folder.exists() for folder in left.values())  # its log logged, its temporary files removed
    assert "what the dead step wrote" in mlflow.artifacts.load_text(f"runs:/{runs['dead']}/logs/tune.log")
    assert [a.path for a in client.list_artifacts(runs["dead"], "logs")] == ["logs/tune.log"]
    statuses = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert statuses == {
        "dead": "KILLED",
        "alive": "RUNNING",
        "foreign": "RUNNING",
        "untagged": "RUNNING",
        "another user's": "RUNNING",
    }
    assert "ended without closing the run" in client.get_run(runs["dead"]).data.tags[ERROR_TAG]
    assert reap_dead_runs(client, experiment, main_run) == []


def test_a_version_a_dead_evaluate_never_decided_on_is_deleted(tracking_uri):
    client = MlflowClient()
    experiment = client.get_experiment_by_name("Default").experiment_id
    dead = dead_process_identity()
    evaluates = [
        client.create_run(experiment, tags={PROCESS_TAG: dead, "pipeline.step": "evaluate"} | MINE).info.run_id
        for _ in range(2)
    ]
    client.create_registered_model("model")
    undecided = client.create_model_version("model", "file:///m", tags={"evaluate_run_id": evaluates[0]})
    decided = client.create_model_version(
        "model", "file:///m", tags={"evaluate_run_id": evaluates[1], "gates.passed": "true"}
    )
    main_run = client.create_run(experiment).info.run_id
    assert sorted(reap_dead_runs(client, experiment, main_run)) == sorted(evaluates)
    remaining = client.search_model_versions("name = 'model'")
    assert [(v.version, v.tags.get("evaluate_run_id")) for v in remaining] == [(decided.version, evaluates[1])]
    assert undecided.tags["evaluate_run_id"] == evaluates[0]  # the one gone is the undecided one


# --------------------------------------------------------------------------- the champion lock


def count_under_lock(tracking_uri: str, counter: str, rounds: int, start: Any) -> None:
    """Read-modify-write a file under the lock, with a pause that would lose updates without it.

    Every round starts on the barrier, so all the processes ask for the lock at the same moment.
    """
    client = MlflowClient(tracking_uri)
    for _ in range(rounds):
        start.wait(timeout=120)
        with champion_lock(client, "model", poll=0.05):
            value = int(Path(counter).read_text())
            time.sleep(0.05)
            Path(counter).write_text(str(value + 1))


def tickets(client: MlflowClient) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{lock_name('model')}'"))


def test_the_champion_lock_serialises_processes(tracking_uri, tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    MlflowClient().search_registered_models()  # create the SQLite schema once, before the processes race
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    workers = [context.Process(target=count_under_lock, args=(tracking_uri, str(counter), 4, start)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert counter.read_text() == "12"
    assert tickets(MlflowClient()) == []  # every ticket released


def plant_ticket(client: MlflowClient, **tags: str) -> str:
    from steps.lib.registry import TICKET_SOURCE

    with contextlib.suppress(mlflow.exceptions.MlflowException):  # made by an earlier ticket
        client.create_registered_model(lock_name("model"))
    return str(client.create_model_version(lock_name("model"), TICKET_SOURCE, tags=tags).version)


def test_a_stale_ticket_is_passed_over_and_a_live_one_times_out(tracking_uri):
    client = MlflowClient()
    now = time.time()
    stale = {
        "dead holder": {HOLDER_TAG: dead_process_identity(), TOKEN_TAG: "a", ACQUIRED_TAG: f"{now:.3f}"},
        "in the future": {HOLDER_TAG: "elsewhere:1:1", TOKEN_TAG: "b", ACQUIRED_TAG: f"{now + 86400:.3f}"},
        "unreadable time": {HOLDER_TAG: "elsewhere:1:1", TOKEN_TAG: "c", ACQUIRED_TAG: "soon"},
        "too old": {HOLDER_TAG: "elsewhere:1:1", TOKEN_TAG: "d", ACQUIRED_TAG: f"{now - 3600:.3f}"},
        "no tags": {},
    }
    for tags in stale.values():
        plant_ticket(client, **tags)
    with champion_lock(client, "model", timeout=5) as held:
        held.check()
        assert tickets(client) == [held.version]  # the holder removed the stale tickets below its own
        locked = pytest.raises(PipelineError, match="stayed locked for 1 s; if no evaluate is running, delete")
        with locked, champion_lock(client, "model", timeout=1, poll=0.1):
            pass
    assert tickets(client) == []


def test_a_ticket_its_holder_may_not_delete_is_released_by_its_time_stamp(tracking_uri, monkeypatch):
    """MLflow's basic auth lets a user add versions to a lock model someone else created but not delete them
    (seen on a real --auth server: 403): the holder's ticket is then stamped released, and the next evaluate,
    on another machine too (its holder's liveness unknown), enters at once."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    client = MlflowClient()

    def denied(name, version):
        raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(client, "delete_model_version", denied)
    with champion_lock(client, "model", timeout=5) as held:
        held.check()
    [ticket] = client.search_model_versions(f"name = '{lock_name('model')}'")
    assert ticket.tags[ACQUIRED_TAG] == "0"
    client.set_model_version_tag(lock_name("model"), ticket.version, HOLDER_TAG, "elsewhere:1:1")  # unknown liveness
    started = time.monotonic()
    with champion_lock(client, "model", timeout=5, poll=0.1) as held:
        held.check()
    assert time.monotonic() - started < 3


def test_a_holder_moves_the_alias_only_while_the_lock_is_still_its_own(tracking_uri):
    client = MlflowClient()
    with champion_lock(client, "model", stale_after=3600) as held:
        held.check()
        client.delete_model_version(lock_name("model"), held.version)  # removed by hand, or broken as stale
        with pytest.raises(PipelineError, match=r"is no longer this evaluate's .*the alias was not moved"):
            held.check()
    with champion_lock(client, "model", stale_after=3600) as held:
        held.refreshed -= 3600  # held past the time others may call it stale
        with pytest.raises(PipelineError, match="is no longer this evaluate's"):
            held.check()


def wait_and_enter(tracking_uri: str, entered: str, start: Any, name: str) -> None:
    """Wait on the barrier, then take the lock over a stale ticket and note when this process was inside."""
    client = MlflowClient(tracking_uri)
    start.wait(timeout=120)
    with champion_lock(client, "model", poll=0.02):
        Path(entered, f"{name}-in").write_text(f"{time.time():.6f}")
        time.sleep(0.5)
        Path(entered, f"{name}-out").write_text(f"{time.time():.6f}")


def test_two_processes_that_find_one_lock_stale_never_both_enter(tracking_uri, tmp_path):
    """Both start on a barrier facing the same stale ticket: their times inside never overlap."""
    client = MlflowClient()
    plant_ticket(client, **{HOLDER_TAG: dead_process_identity(), TOKEN_TAG: "gone", ACQUIRED_TAG: f"{time.time():.3f}"})
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=wait_and_enter, args=(tracking_uri, str(tmp_path), start, name)) for name in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert [w.exitcode for w in workers] == [0, 0]
    spans = sorted(
        (float((tmp_path / f"{n}-in").read_text()), float((tmp_path / f"{n}-out").read_text())) for n in "ab"
    )
    assert spans[0][1] <= spans[1][0], spans
    assert tickets(client) == []


def test_a_dataset_insert_that_clashes_with_another_run_is_tried_once_more():
    """Two mains logging one dataset at the same moment: the store's second insert fails on its unique key."""
    from mlflow.exceptions import MlflowException

    from steps.lib.sources import once_more_on_a_clash

    clash = MlflowException(
        'BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'
    )
    calls = []

    def log(fails_with: list[Exception]) -> str:
        calls.append(1)
        if fails_with:
            raise fails_with.pop(0)
        return "linked"

    errors = [clash]
    assert once_more_on_a_clash(lambda: log(errors)) == "linked" and len(calls) == 2
    calls.clear()
    with pytest.raises(MlflowException, match="duplicate key"):  # only once more: a second clash is an error
        errors = [clash, clash]
        once_more_on_a_clash(lambda: log(errors))
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):  # any other error: at once
        errors = [MlflowException("RESOURCE_DOES_NOT_EXIST")]
        once_more_on_a_clash(lambda: log(errors))
    assert len(calls) == 1


def test_trial_runs_left_running_by_a_tune_that_is_over_are_marked_killed(tracking_uri):
    """kill -9 of the whole process group can end tune's trial logger between opening a trial's run and closing
    it: that run stayed RUNNING for good (its tune KILLED). The next main marks it KILLED; a trial of a tune still
    running, and another user's, are left alone."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("Default").experiment_id
    ended = client.create_run(experiment, tags={"pipeline.step": "tune"} | MINE).info.run_id
    client.set_terminated(ended, status="KILLED")
    running = client.create_run(experiment, tags={"pipeline.step": "tune", PROCESS_TAG: process_identity()} | MINE)

    def trial(tune: str, user: dict[str, str] = MINE) -> str:
        tags = {"pipeline.step": "trial", "mlflow.parentRunId": tune} | user
        return client.create_run(experiment, tags=tags).info.run_id

    orphan, live, theirs = trial(ended), trial(running.info.run_id), trial(ended, {"mlflow.user": "another-user"})
    main_run = client.create_run(experiment, tags=MINE).info.run_id
    assert reap_dead_runs(client, experiment, main_run) == [orphan]
    assert [client.get_run(r).info.status for r in (orphan, live, theirs)] == ["KILLED", "RUNNING", "RUNNING"]
    said = f"its tune run {ended} ended (KILLED) before it was logged whole; marked KILLED by main run {main_run}"
    assert client.get_run(orphan).data.tags[ERROR_TAG] == said


def test_a_step_that_ended_itself_killed_is_killed_again_after_mlflow_wrote_failed_over_it(tracking_uri):
    """MLflow 3.17's mlflow.projects writes FAILED over a step run that ended itself KILLED after Ctrl-C or SIGTERM
    (it compares the run's status, text, with RunStatus' numbers): main sets it back; other failures stay."""
    from mlflow.entities import RunStatus

    from steps.lib.reaper import killed_as_recorded

    assert not RunStatus.is_terminated("KILLED")  # MLflow's slip: if a later MLflow fixes it, this note can go
    client = MlflowClient()
    runs = {}
    for name, error in (("interrupted", "interrupted (Ctrl-C)"), ("bad input", "the data has no rows")):
        runs[name] = client.create_run("0", tags={ERROR_TAG: error}).info.run_id
        client.set_terminated(runs[name], status="FAILED")
    assert killed_as_recorded(client, client.get_run(runs["interrupted"])).info.status == "KILLED"
    assert killed_as_recorded(client, client.get_run(runs["bad input"])).info.status == "FAILED"
    assert killed_as_recorded(client, None) is None

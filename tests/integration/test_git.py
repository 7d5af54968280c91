"""Runs straight from a git URL (served by `git daemon` on 127.0.0.1), and `reproduce`."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import children, mlflow_run, runs_by_step

STEPS = ["load", "featurize", "tune", "train", "evaluate"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('git-store') / 'mlflow.db'}"


def test_main_from_a_git_url_at_a_commit(git_server, store, tmp_path):
    repo = git_server["repos"]["project"]
    result = mlflow_run(
        None,
        ["-e", "main", "-v", repo["commit"], "-P", "max_evals=2"],
        store,
        cwd=tmp_path,
        uri=f"{git_server['url']}/project.git",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(store)
    [main] = runs_by_step(client, "main")
    steps = children(client, main)
    assert [(r.info.run_name, r.info.status) for r in steps] == [(s, "FINISHED") for s in STEPS]
    for run in [main, *steps]:  # the nested mlflow.run calls ran from the fetched checkout too
        assert run.data.tags["mlflow.source.git.commit"] == repo["commit"], run.info.run_name
    assert main.data.tags["git.dirty"] == "false"
    assert main.data.tags["mlflow.source.name"] == f"{git_server['url']}/project.git"


def test_main_from_a_subdirectory_and_a_branch(git_server, tmp_path):
    repo = git_server["repos"]["mono"]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    uri = f"{git_server['url']}/mono.git#{repo['subdir']}"
    result = mlflow_run(None, ["-e", "main", "-v", "feature", "-P", "max_evals=1"], store, cwd=tmp_path, uri=uri)
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(store)
    [main] = runs_by_step(client, "main")
    assert main.data.tags["mlflow.source.git.branch"] == "feature"
    steps = children(client, main)
    assert [r.info.status for r in steps] == ["FINISHED"] * 5
    assert {r.data.tags["mlflow.source.git.commit"] for r in [main, *steps]} == {repo["commit"]}


def test_reproduce_matches_every_metric(project, git_server, store):
    client = MlflowClient(store)
    [original] = runs_by_step(client, "main")
    client.set_tag(original.info.run_id, "git.dirty", "true")  # as if made from an uncommitted tree
    started = time.monotonic()
    result = mlflow_run(project, ["-e", "reproduce", "-P", f"run_id={original.info.run_id}"], store, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "reproduced: all" in result.stdout and "NO" not in result.stdout.split()
    assert "warning: reproduce: run" in result.stderr and "uncommitted changes" in result.stderr
    table = [line.split() for line in result.stdout.splitlines() if line.split()[:1] and line.split()[0] in STEPS]
    assert {row[0] for row in table} == set(STEPS) and len(table) > 20
    [reproduce] = runs_by_step(client, "reproduce")
    assert reproduce.info.status == "FINISHED" and reproduce.data.tags["reproduce.match"] == "true"
    assert reproduce.data.tags["reproduce.commit"] == git_server["repos"]["project"]["commit"]
    assert len(runs_by_step(client, "main")) == 1  # the re-run went to a temporary store
    assert time.monotonic() - started < 1200


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing run", "does not exist"),
        ("not main", "is a load run, not a main run"),
        ("missing commit", "does not exist in"),
        ("unreachable", "cannot reach git repository"),
    ],
)
def test_reproduce_bad_input(project, git_server, store, case, message):
    client = MlflowClient(store)
    original = runs_by_step(client, "main")[-1]  # the first, real one
    run_id = {
        "missing run": "0123456789abcdef0123456789abcdef",
        "not main": original.data.tags["steps.load.run_id"],
    }.get(case, original.info.run_id)
    args = ["-e", "reproduce", "-P", f"run_id={run_id}"]
    if case == "missing commit":
        fake = client.create_run(
            original.info.experiment_id,
            tags={
                "pipeline.step": "main",
                "mlflow.source.git.commit": "f" * 40,
                "mlflow.source.name": f"{git_server['url']}/project.git",
            },
        )
        client.set_terminated(fake.info.run_id)
        args = ["-e", "reproduce", "-P", f"run_id={fake.info.run_id}"]
    if case == "unreachable":
        args += ["-P", "source=git://127.0.0.1:9/nowhere.git"]
    result = mlflow_run(project, args, store)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: reproduce:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert runs_by_step(client, "reproduce")[0].info.status == "FAILED"

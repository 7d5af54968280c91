"""Runs straight from a git URL (served by `git daemon` on 127.0.0.1) under `--env-manager uv`, and `reproduce`.

The README's command for a run from git, `mlflow run <git url> -e main -v <commit> --env-manager uv`: MLflow
fetches the commit, builds the environment from python_env.yaml with uv, and main passes both on to every step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from steps.lib.names import PIPELINE_STEPS
from tests.conftest import pages_in_chromium
from tests.integration.conftest import (
    assert_the_project_environment_was_built,
    children,
    mlflow_run,
    run_in_a_built_environment,
    runs_by_step,
)

pytestmark = pytest.mark.uv


@pytest.fixture(scope="module")
def from_git(git_server, tmp_path_factory):
    """`main` straight from the git URL, the project in a subdirectory, at a commit, under uv: what reproduce
    starts from."""
    folder = tmp_path_factory.mktemp("git-store")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    repo = git_server["repos"]["mono"]
    uri = f"{git_server['url']}/mono.git#{repo['subdir']}"
    args = ["-e", "main", "-v", repo["commit"], "-P", "max_evals=2"]
    result = run_in_a_built_environment(None, store, folder / "envs", "uv", args, cwd=folder, uri=uri)
    assert result.returncode == 0, result.stderr[-4000:]
    [main] = runs_by_step(MlflowClient(store), "main")
    return {"store": store, "main": main, "uri": uri, "commit": repo["commit"], "envs": folder / "envs"}


def test_main_under_uv_builds_the_project_environment_for_every_step(from_git):
    client = MlflowClient(from_git["store"])
    assert_the_project_environment_was_built(client, from_git["main"], from_git["envs"], "uv")


def test_main_from_a_git_url_at_a_commit_in_a_subdirectory(from_git):
    client = MlflowClient(from_git["store"])
    main = client.get_run(from_git["main"].info.run_id)
    steps = children(client, main)
    assert [(r.info.run_name, r.info.status) for r in steps] == [(s, "FINISHED") for s in PIPELINE_STEPS]
    for run in [main, *steps]:  # the nested mlflow.run calls ran from the fetched checkout too
        assert run.data.tags["mlflow.source.git.commit"] == from_git["commit"], run.info.run_name
    assert main.data.tags["git.dirty"] == "false"
    assert main.data.tags["mlflow.source.name"] == from_git["uri"]


def test_reproduce_matches_every_metric(project, from_git, tmp_path):
    store, original = from_git["store"], from_git["main"]
    client = MlflowClient(store)
    client.set_tag(original.info.run_id, "git.dirty", "true")  # as if made from an uncommitted tree
    # The re-run's env manager goes to `mlflow run` as is; building an environment is the fixture's contract.
    args = ["-e", "reproduce", "-P", f"run_id={original.info.run_id}", "-P", "env_manager=local"]
    # The run was made from the git URL, not from this checkout: reproduce runs another source only when told.
    result = mlflow_run(project, [*args, "-P", f"source={from_git['uri']}"], store, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    url, _, subdir = from_git["uri"].partition("#")
    assert f"reproduce: running {url} at commit {from_git['commit']} (subdirectory {subdir})" in result.stdout
    assert "reproduced: all" in result.stdout and "NO" not in result.stdout.split()
    assert "warning: reproduce: run" in result.stderr and "uncommitted changes" in result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    table = [row for row in rows if row[:1] and row[0] in PIPELINE_STEPS]
    assert {row[0] for row in table} == set(PIPELINE_STEPS) and len(table) > 20
    assert all(row[-1] == "yes" for row in table)
    reproduce = runs_by_step(client, "reproduce")[0]
    assert reproduce.info.status == "FINISHED" and reproduce.data.tags["reproduce.match"] == "true"
    assert reproduce.data.tags["reproduce.commit"] == from_git["commit"]
    mains = [run.info.run_id for run in runs_by_step(client, "main") if "test.fake" not in run.data.tags]
    assert mains == [original.info.run_id]  # the re-run went to a temporary store
    [card] = pages_in_chromium([Path(client.download_artifacts(reproduce.info.run_id, "card.html", str(tmp_path)))])
    assert card["requests"] == [] and card["decoded"] == card["images"]
    assert card["title"] == "reproduce: every figure matches"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing run", "does not exist"),
        ("not main", "is a load run, not a main run"),
        ("missing commit", "does not exist in"),
        ("unreachable", "cannot reach git repository"),
        ("another source", "was made from 'git://127.0.0.1:"),
        ("an option as commit", "records commit '--upload-pack=touch /tmp/x', which is not a 40-hex git commit"),
    ],
)
def test_reproduce_bad_input(from_git, case, message, cli_on):
    """reproduce's command line in this process (bad input through a real `mlflow run`: test_bad_input.py)."""
    store, original = from_git["store"], from_git["main"]
    client = MlflowClient(store)
    run_id = {
        "missing run": "0123456789abcdef0123456789abcdef",
        "not main": original.data.tags["steps.load.run_id"],
    }.get(case, original.info.run_id)
    if case in ("missing commit", "an option as commit"):
        commit = "f" * 40 if case == "missing commit" else "--upload-pack=touch /tmp/x"
        tags = {"pipeline.step": "main", "test.fake": "true", "mlflow.source.git.commit": commit}
        fake = client.create_run(original.info.experiment_id, tags=tags | {"mlflow.source.name": from_git["uri"]})
        client.set_terminated(fake.info.run_id)
        run_id = fake.info.run_id
    source = {"unreachable": ["--source", "git://127.0.0.1:9/nowhere.git"], "another source": []}.get(
        case, ["--source", from_git["uri"]]
    )
    code, stderr = cli_on(store, "reproduce", "--run-id", run_id, "--env-manager", "local", *source)
    errors = [line for line in stderr.splitlines() if line.startswith("error: reproduce:")]
    assert code == 1 and len(errors) == 1 and message in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
    failed = runs_by_step(client, "reproduce")[0]
    assert failed.info.status == "FAILED" and message in failed.data.tags["pipeline.error"]

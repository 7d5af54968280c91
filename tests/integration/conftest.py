"""Real `mlflow run` subprocesses against a temporary tracking store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from steps.lib.names import PIPELINE_STEPS
from tests.conftest import PROJECT_DIR, assert_only_its_log, fresh_store, runs_by_step

COPY_IGNORE = shutil.ignore_patterns(
    "mlflow.db", "mlruns", "mlartifacts", ".pytest_cache", "__pycache__", ".ruff_cache", ".venv", "*.pyc"
)


def copy_project(destination: Path) -> Path:
    """A copy of the project (git history included), so runs never touch the developer's tree."""
    shutil.copytree(PROJECT_DIR, destination, ignore=COPY_IGNORE)
    return destination


def mlflow_env(tracking_uri: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This interpreter first on PATH (the steps run `python -m ...`), no inherited MLflow run state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | (extra or {})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def mlflow_run(
    project: Path | None,
    args: Sequence[str],
    tracking_uri: str | None,
    cwd: Path | None = None,
    timeout: float = 600,
    uri: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`mlflow run <project or uri> <args>` as a user types it (local env manager unless given)."""
    manager = [] if "--env-manager" in args else ["--env-manager", "local"]
    command = [sys.executable, "-m", "mlflow", "run", uri or str(project), *manager, *args]
    return subprocess.run(
        command,
        cwd=cwd or project,
        env=mlflow_env(tracking_uri, extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_failed_cleanly(result: subprocess.CompletedProcess[str], store: str, step: str, message: str) -> Run:
    """The contract for bad input, checked on the process and on the tracking store; the step's failed run."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"error: {step}:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert message in errors[0]
    client = MlflowClient(store)
    run = runs_by_step(client, step)[0]
    assert run.info.status == "FAILED"
    assert message in run.data.tags["pipeline.error"]
    assert_only_its_log(client, run, step)
    return run


def children(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )


@contextmanager
def model_server(model_uri: str, tracking_uri: str, cwd: Path) -> Iterator[str]:
    """`mlflow models serve` of a model on 127.0.0.1, started in `cwd`, answering /ping; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    server = subprocess.Popen(
        [*command, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=cwd,
        env=mlflow_env(tracking_uri),
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
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def post(url: str, payload: dict) -> tuple[int, dict]:
    """A JSON POST; (status, JSON answer), also for an HTTP error."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("checkout") / "project")


@pytest.fixture
def store(tmp_path: Path, store_template: Path) -> str:
    return fresh_store(store_template, tmp_path)


@pytest.fixture(scope="session")
def readme_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The README's main command, `mlflow run . -e main --env-manager local`, in a fresh copy with no tracking URI
    set: the pipeline on the embedded default into the default store. Shared by test_main_pipeline.py and
    test_cache.py (one xdist group: tests/conftest.py), which go on with its store and its copy."""
    project = copy_project(tmp_path_factory.mktemp("readme") / "project")
    result = subprocess.run(
        ["mlflow", "run", ".", "-e", "main", "--env-manager", "local"],
        cwd=project,
        env=mlflow_env(None),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (project / "mlflow.db").exists(), "the default store is sqlite:///mlflow.db in the working directory"
    # As the README run left it, for the client example (the tests after it add runs to the store).
    shutil.copy(project / "mlflow.db", project.parent / "after-main.db")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri)
    [main] = client.search_runs(["0"], filter_string="tags.`pipeline.step` = 'main'")
    steps = {run.info.run_name: run for run in children(client, main)}
    return {"result": result, "client": client, "main": main, "steps": steps, "uri": uri, "project": project}


def git(*args: str, cwd: Path) -> str:
    """Run git with a fixed identity; return its stdout."""
    command = ["git", "-c", "user.name=pipeline-tests", "-c", "user.email=tests@localhost", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def git_server(tmp_path_factory):
    """`git daemon` on 127.0.0.1 serving one repo, `mono`, with the project in its subdirectory `pipeline`."""
    import socket
    import time

    root = tmp_path_factory.mktemp("git")
    served = root / "served"
    served.mkdir()
    work = root / "mono-work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    copy_project(work / "pipeline")
    shutil.rmtree(work / "pipeline" / ".git", ignore_errors=True)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "snapshot of the project", cwd=work)
    bare = served / "mono.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    git("config", "uploadpack.allowReachableSHA1InWant", "true", cwd=bare)
    repos = {"mono": {"commit": git("rev-parse", "HEAD", cwd=work), "subdir": "pipeline"}}
    port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={served}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(served),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or daemon.poll() is not None:
                daemon.kill()
                pytest.fail("git daemon did not start")
            time.sleep(0.2)
    yield {"url": f"git://127.0.0.1:{port}", "repos": repos}
    daemon.terminate()
    daemon.wait(timeout=10)


def run_in_a_built_environment(
    project: Path | None, store: str, env_root: Path, env_manager: str, args: Sequence[str], **where: object
) -> subprocess.CompletedProcess[str]:
    """`mlflow run` under `env_manager` (uv, virtualenv): MLflow builds the environment under `env_root`."""
    return mlflow_run(
        project,
        ["--env-manager", env_manager, *args],
        store,
        # Built here, not reused from another test. pip's byte-compiling of every installed module (uv does none)
        # adds a third of the build's time and proves nothing here. Not PIP_NO_COMPILE=1: pip reads an environment
        # variable as the value of its option's destination, so that one means compile=1 (the lock under pip:
        # 73.6 s wall and 72 CPU-s with it, 49.5 s and 49 CPU-s with PIP_COMPILE=false).
        extra_env={"MLFLOW_ENV_ROOT": str(env_root), "PIP_COMPILE": "false"},
        timeout=1500,
        **where,
    )


def assert_the_project_environment_was_built(client: MlflowClient, run: Run, env_root: Path, env_manager: str) -> None:
    """MLflow built one env from python_env.yaml, with every direct pin at its version, and `run` ran in it; for a
    main run, so did every step (main passes its env manager on to them)."""
    steps = children(client, run)
    main = run.data.tags.get("pipeline.step") == "main"
    assert [r.info.run_name for r in steps] == (list(PIPELINE_STEPS) if main else [])
    prefixes = set()
    for each in [run, *steps]:
        assert each.info.status == "FINISHED"
        assert each.data.tags["mlflow.project.env"] == env_manager, each.info.run_name  # passed on to each child
        prefixes.add(each.data.tags["runtime.prefix"])
    [prefix] = map(Path, prefixes)  # one environment, built once and reused by every step
    assert prefix != Path(sys.prefix)
    assert prefix.parent == env_root and prefix.name.startswith("mlflow-")
    installed = {p.name.lower() for p in (prefix / "lib" / "python3.11" / "site-packages").iterdir()}
    for pin in [line for line in (PROJECT_DIR / "requirements.txt").read_text().splitlines() if "==" in line]:
        name, version = pin.split("==")  # every direct pin, at its exact version
        assert f"{name.replace('-', '_').lower()}-{version}.dist-info" in installed, pin


SERVER_SCRIPT = PROJECT_DIR / "scripts" / "tracking-server.sh"


class TrackingServer:
    """scripts/tracking-server.sh on a free port and a private data dir: mlflow server over PostgreSQL."""

    def __init__(self) -> None:
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="tracking-server-", dir="/tmp"))
        self.uri = f"http://127.0.0.1:{self.port}"

    def script(self, command: str, timeout: float = 180, *more: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["PYTHON"] = sys.executable
        args = ["bash", str(SERVER_SCRIPT), command, "--port", str(self.port), "--data-dir", str(self.data_dir), *more]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        started = self.script("start")
        assert started.returncode == 0, started.stderr[-3000:]
        assert started.stdout.strip().splitlines()[-1] == self.uri

    def stop(self) -> None:
        self.script("stop", timeout=120)

    def stop_and_remove(self) -> None:
        """Stop the server and remove what it kept (run as root, PostgreSQL's data lives outside data_dir)."""
        import shutil

        kept = Path(self.paths()["pg_data"]).parent
        self.stop()
        if kept.parent.name == "mlflow-pipeline":
            shutil.rmtree(kept, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def paths(self) -> dict[str, str]:
        """Where the script keeps PostgreSQL's data, its socket and the password file (its `paths` command)."""
        answer = self.script("paths")
        assert answer.returncode == 0, answer.stderr
        return dict(line.split("=", 1) for line in answer.stdout.splitlines())

    def dump(self) -> str:
        """Everything PostgreSQL holds for the server (pg_dump), to search it for secrets."""
        [bin_dir] = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1:]
        paths = self.paths()
        command = [str(bin_dir / "pg_dump"), "-w", "-h", paths["socket_dir"], "-U", "mlflow", "mlflow"]
        env = {**os.environ, "PGPASSFILE": paths["pgpass"]}
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120, env=env).stdout


@pytest.fixture(scope="session")
def server() -> Iterator[TrackingServer]:
    """One tracking server per test worker, started when a test first needs it.

    Each test keeps to an experiment and a registered model name of its own.
    """
    with tracking_server() as started:
        yield started


@contextmanager
def tracking_server() -> Iterator[TrackingServer]:
    """A started server, stopped (and checked stopped) and removed afterwards."""
    server = TrackingServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        status = server.script("status")
        pg_data = Path(server.paths()["pg_data"])
        shutil.rmtree(server.data_dir, ignore_errors=True)
        if not pg_data.is_relative_to(server.data_dir):  # run by root: PostgreSQL's own place, removed too
            shutil.rmtree(pg_data.parent, ignore_errors=True)
        assert status.returncode != 0 and "mlflow server: not running" in status.stdout

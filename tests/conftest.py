"""Fixtures every test may use: tiny frames and a private tracking store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

PROJECT_DIR = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """The step cache's signing secret of this test session (steps and `mlflow run` children inherit it),
    not the user's own in ~/.config."""
    import os
    import shutil
    import tempfile

    if "PIPELINE_CACHE_SECRET" not in os.environ:
        os.environ["PIPELINE_CACHE_SECRET"] = str(Path(tempfile.mkdtemp(prefix="pipeline-tests-")) / "cache-secret")
        config.add_cleanup(lambda: shutil.rmtree(Path(os.environ["PIPELINE_CACHE_SECRET"]).parent, ignore_errors=True))
    # As on a user's machine, Python writes the bytecode of what it imports (this machine sets
    # PYTHONDONTWRITEBYTECODE): every process the suite starts inherits that, and a bug that only bytecode shows
    # (a served model's code cached in the store, see test_model_loading.py) cannot hide; and the ~90 step
    # processes and ~30 trial workers and loggers it starts read the project's bytecode instead of compiling it
    # each (~0.3 s a process).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


# The longest test files first, so that the two workers end together; the rest fill the gaps.
# (xdist's own reordering, by number of tests, is off: see pyproject.toml.)
# test_cache.py goes on with the store of test_main_pipeline.py's README run (a session fixture): one group.
SHARED_GROUPS = {"test_cache.py": "readme-store", "test_main_pipeline.py": "readme-store"}
SLOWEST_FIRST = (
    "test_main_pipeline.py",
    "test_cache.py",
    "test_team_faults.py",
    "test_git.py",
    "test_virtualenv.py",
    "test_tracking_server.py",
    "test_steps.py",
    "test_spark.py",
    "test_bad_input.py",
    # the longest unit test files next: the small ones last fill the gaps, and no worker waits ~55 s at the end
    # for another to finish test_tune.py (as it did when unit files ran in the order of their names)
    "test_tune.py",
    "test_trial_logger.py",
    "test_team.py",
    "test_monitor_predict.py",
    "test_model_loading.py",
    "test_encoding.py",
    "test_data_in.py",
    "test_bad_input_steps.py",
)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark integration tests; one xdist group per test file (its module fixtures stay on one worker), but for
    files that share a session fixture; order the files slowest first.

    Everything under tests/integration is marked `integration`, so `-m "not integration"` is fast.
    """
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts:
            item.add_marker(pytest.mark.integration)
        item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(path.name, path.name)))

    def rank(item: pytest.Item) -> int:
        name = Path(str(item.fspath)).name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store with MLflow's schema in place (setting it up takes ~5 s; copying it, nothing)."""
    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def fresh_store(template: Path, folder: Path) -> str:
    """A private copy of the template in `folder`, its Default experiment's artifacts under `folder/mlruns`."""
    import shutil
    import sqlite3

    target = folder / "mlflow.db"
    shutil.copyfile(template, target)
    with closing(sqlite3.connect(target)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(folder / "mlruns/0"),))
    return f"sqlite:///{target}"


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_template: Path) -> Iterator[str]:
    """A fresh SQLite tracking store with local artifacts, private to the test."""
    uri = fresh_store(store_template, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    """60 rows: numeric, categorical with gaps, an ID, a constant, an all-missing column, a 3-class label."""
    rng = np.random.default_rng(0)
    n = 60
    label = np.array(["a", "b", "c"])[np.arange(n) % 3]
    return pd.DataFrame(
        {
            "customer_id": np.arange(1000, 1000 + n),
            "x1": rng.normal(size=n) + (label == "a") * 3,
            "x2": rng.normal(size=n),
            "colour": pd.Series(rng.choice(["red", "green", None], size=n), dtype=object),
            "constant": 7,
            "empty": np.nan,
            "label": label,
        }
    )


def run_step_cli(capsys: pytest.CaptureFixture[str], step: str, *args: str) -> tuple[int, str]:
    """A step's command line, in this process, as `python -m steps.<step> <args>` runs it: (exit code, stderr)."""
    import importlib
    import sys

    from steps.lib.runner import run_cli

    module = importlib.import_module(f"steps.{step}")
    saved = sys.argv
    sys.argv = [f"steps.{step}", *args]
    try:
        run_cli(module.main, step)
        code = 0
    except SystemExit as exited:
        code = exited.code if isinstance(exited.code, int) else 1
    finally:
        sys.argv = saved
        while mlflow.active_run():
            mlflow.end_run()
    return code, capsys.readouterr().err


@pytest.fixture
def cli_on(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """`cli_on(store, step, *args)`: a step's command line in this process against `store`, as
    `python -m steps.<step>` runs it; (exit code, stderr). For where an `mlflow run` around it proves nothing more."""

    def run(store: str, step: str, *args: str) -> tuple[int, str]:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(store)
        return run_step_cli(capsys, step, *args)

    yield run
    mlflow.set_tracking_uri(None)


@contextmanager
def served_behind_basic_auth(body: bytes, user: str, password: str) -> Iterator[str]:
    """`body` over HTTP on 127.0.0.1 for GET with the right basic auth (401 otherwise); yields host:port."""
    import base64
    import http.server

    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving_on_loopback(Handler) as address:
        yield address


@contextmanager
def serving_on_loopback(handler: type) -> Iterator[str]:
    """An HTTP request handler class served on 127.0.0.1 (a free port) from a thread; yields host:port."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def runs_by_step(client: MlflowClient, step: str) -> list[Run]:
    """Every run of a step (newest first) in any experiment of the store."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(
        experiments, filter_string=f"tags.`pipeline.step` = '{step}'", order_by=["attributes.start_time DESC"]
    )


def logged_model_of(frame: pd.DataFrame, target: str, family: str = "hist_gradient_boosting") -> str:
    """A model of the pipeline's own kind on `frame`, logged with its signature as train logs it; its URI."""
    from steps.lib.features import build_feature_spec
    from steps.lib.models import MODEL_FAMILIES, SKOPS_TRUSTED_TYPES, fit_model
    from steps.lib.splits import Splits

    spec = build_feature_spec(frame, target)
    labelled = frame[frame[target].notna()]
    splits = Splits(labelled, labelled.head(50), labelled.head(50))
    model = fit_model(splits, spec, MODEL_FAMILIES[family], MODEL_FAMILIES[family].resolve({}), 0)
    return log_as_train_does(model, labelled[spec.input_columns], SKOPS_TRUSTED_TYPES)


def log_as_train_does(
    model: Any, features: pd.DataFrame, trusted: Sequence[str], code_paths: list[str] | None = None
) -> str:
    """`model` logged in a run of its own as train logs one (skops, signature, exact pins); its URI."""
    import mlflow

    from steps.lib.models import model_pip_requirements

    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=mlflow.models.infer_signature(features, model.predict(features)),
            pip_requirements=model_pip_requirements(),
            serialization_format="skops",
            skops_trusted_types=list(trusted),
            code_paths=code_paths,
        )
    return info.model_uri


def users_rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.gamma(2, 20_000, n).round(0)
    frame = pd.DataFrame(
        {
            "Income ($)": income,
            "seniority (years)": rng.integers(0, 40, n),
            "plan": rng.choice(["basic", "plus", "pro", None], n),
            "city": [f"city {i}" for i in rng.integers(0, 300, n)],
            "note": rng.choice(["a", "b"], n),
        }
    )
    frame.loc[rng.random(n) < 0.05, "Income ($)"] = np.nan
    frame["income class"] = np.where(income > 40_000, ">50K", "<=50K")
    return frame


def assert_only_its_log(client: MlflowClient, run: Run, step: str) -> None:
    """A failed run keeps its log (logs/<step>.log) and its card (card.html), both naming the error, and no
    output artifact."""
    import html
    import tempfile

    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["card.html", "logs"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "logs")] == [f"logs/{step}.log"]
    error = run.data.tags["pipeline.error"]
    with tempfile.TemporaryDirectory() as folder:
        log = Path(client.download_artifacts(run.info.run_id, f"logs/{step}.log", folder))
        assert error in log.read_text(encoding="utf-8")
        card = Path(client.download_artifacts(run.info.run_id, "card.html", folder))
        assert error in html.unescape(card.read_text(encoding="utf-8"))


# Chromium's own background traffic (updates, safe browsing, sync, metrics) off: any request the page makes is
# then the page's own.
QUIET_CHROMIUM = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-sync",
    "--disable-extensions",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-pings",
]


def pages_in_chromium(paths: list[Path]) -> list[dict]:
    """Open each local HTML file in headless Chromium (Debian's, through Playwright): for each, its images
    (how many, how many decoded) and every request it made other than for itself and data: URIs."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is missing: apt-get install chromium (.ci/run installs it)"
    seen = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=QUIET_CHROMIUM)
        try:
            for path in paths:
                page = browser.new_page()
                requests: list[str] = []
                page.on("request", lambda request, into=requests: into.append(request.url))
                page.goto(path.resolve().as_uri(), wait_until="load", timeout=60_000)
                images = page.evaluate("() => Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
                own = path.resolve().as_uri()
                others = [url for url in requests if url != own and not url.startswith("data:")]
                seen.append({"images": len(images), "decoded": sum(images), "requests": others, "title": page.title()})
                page.close()
        finally:
            browser.close()
    return seen

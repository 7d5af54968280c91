"""The attack catalogue: what someone who can write to a shared store (or who hands a user a URI or a run id)
could try, each tried through the step's own command line against a store where it is planted.

Every row must end the same way: exit 1 with one `error: <step>: ...` line naming the problem, a FAILED run
with no output artifact (its log and card hold no secret), the payload never run, the loopback server never
asked, no secret in the output or the run. Attacks that are not a step's command line (the cache's
signature, the tracking server, liveness, the champion lock, the hashed locks) are listed in
docs/security.md's catalogue with the test of each; `test_every_catalogued_test_exists` keeps that list true.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from steps.lib.errors import PipelineError
from steps.lib.runner import run_cli
from tests.conftest import PROJECT_DIR, fresh_store, logged_model_of, serving_on_loopback, users_rows
from tests.unit.test_bad_input_steps import assert_failed_cleanly, newest_run
from tests.unit.test_model_loading import REFUSALS, plant

SECRET = "s3cr3t-value-9f2c"  # what a planted placeholder or query string would leak: never printed, never sent


@dataclass
class Store:
    """One store with a genuine pipeline (load, featurize, train), a model planted as the registered model
    'planted''s champion, and a loopback HTTP server that records every request it gets."""

    folder: Path
    splits_uri: str
    trained_uri: str
    planted_uri: str
    planted_folder: Path
    batch: Path
    server: str
    requests: list[str] = field(default_factory=list)

    def run_id(self, step: str) -> str:
        return newest_run(step).info.run_id


@dataclass(frozen=True)
class Attempt:
    step: str
    args: list[str]
    message: str  # in the one error line and the run's pipeline.error tag


def run_quietly(step: str, *args: str) -> None:
    import importlib
    import sys

    saved, sys.argv = sys.argv, [f"steps.{step}", *args]
    try:
        run_cli(importlib.import_module(f"steps.{step}").main, step)
    except SystemExit as exited:
        assert not exited.code, f"{step} failed while the store was set up"
    finally:
        sys.argv = saved
        while mlflow.active_run():
            mlflow.end_run()


@pytest.fixture(scope="module")
def store(store_template, tmp_path_factory) -> Iterator[Store]:
    folder = tmp_path_factory.mktemp("attacks")
    uri = fresh_store(store_template, folder)
    requests: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(f"{self.path} {self.headers.get('Authorization')}")
            self.send_response(302)  # anything it is asked for is sent on to an FTP server
            self.send_header("Location", "ftp://127.0.0.1/people.csv")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with pytest.MonkeyPatch.context() as patch, serving_on_loopback(Recorder) as address:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        patch.setenv("SECRET_TOKEN", SECRET)
        patch.chdir(folder)
        mlflow.set_tracking_uri(uri)
        frame = users_rows(400, 1)
        frame.to_csv(folder / "people.csv", index=False)
        frame.drop(columns="income class").to_csv(folder / "batch.csv", index=False)
        run_quietly("load", "--data-uri", str(folder / "people.csv"), "--target", "income class")
        run_quietly("featurize", "--raw-data-uri", f"runs:/{newest_run('load').info.run_id}/data")
        splits_uri = f"runs:/{newest_run('featurize').info.run_id}/splits"
        run_quietly("train", "--splits-uri", splits_uri)
        # Someone with write access logs a model of their own, dresses its run as a train run, makes it champion.
        planted_uri = logged_model_of(frame, "income class")
        planted = mlflow.get_logged_model(planted_uri.removeprefix("models:/"))
        client = MlflowClient()
        client.set_tag(planted.source_run_id, "splits_uri", splits_uri)
        version = mlflow.register_model(planted_uri, "planted")
        client.set_registered_model_alias("planted", "champion", version.version)
        yield Store(
            folder=folder,
            splits_uri=splits_uri,
            trained_uri=client.get_run(newest_run("train").info.run_id).data.tags["model_uri"],
            planted_uri=planted_uri,
            planted_folder=Path(planted.artifact_location.removeprefix("file://")),
            batch=folder / "batch.csv",
            server=address,
            requests=requests,
        )
        mlflow.set_tracking_uri(None)


def local_folder(artifact_uri: str) -> Path:
    return Path(artifact_uri.removeprefix("file://"))


# --- the rows: each plants its attack in the store (undone afterwards) and names the command that meets it ---


def planted_champion(kind: str, step: str) -> Callable[[Store, Path, Callable], Attempt]:
    def attack(store: Store, marker: Path, undo: Callable) -> Attempt:
        undo(store.planted_folder)
        plant(store.planted_folder, kind, marker)
        args = ["--data-uri", str(store.batch), "--registered-model-name", "planted"]
        uri = "models:/planted@champion"
        if step == "evaluate":
            uri = store.planted_uri
            args = ["--model-uri", uri, "--splits-uri", store.splits_uri, "--registered-model-name", "other"]
        return Attempt(step, args, f"model '{uri}' refused: {REFUSALS[kind]}")

    return attack


def trained_model_swapped(store: Store, marker: Path, undo: Callable) -> Attempt:
    trained = local_folder(mlflow.get_logged_model(store.trained_uri.removeprefix("models:/")).artifact_location)
    undo(trained)
    shutil.copyfile(store.planted_folder / "model.skops", trained / "model.skops")
    args = ["--data-uri", str(store.batch), "--model-uri", store.trained_uri]
    return Attempt("predict", args, f"model '{store.trained_uri}' refused: its model.skops differs from what its train")


def split_changed_after_featurize(store: Store, marker: Path, undo: Callable) -> Attempt:
    splits = local_folder(mlflow.get_run(store.run_id("featurize")).info.artifact_uri) / "splits"
    undo(splits)
    [train_file] = splits.glob("train*.parquet")
    shutil.copyfile(splits / "test.parquet", train_file)  # same columns, other rows: only the hash tells
    return Attempt("train", ["--splits-uri", store.splits_uri], "does not match its run's manifest")


def planted_trials(store: Store, marker: Path, undo: Callable) -> Attempt:
    records = json.loads((PROJECT_DIR / "tests" / "data" / "trials-tpe-before-layout.json").read_text())
    records[1]["result"]["model"] = "os.system"
    with mlflow.start_run() as run:
        mlflow.set_tag("pipeline.step", "tune")
        (marker.parent / "trials.json").write_text(json.dumps(records))
        mlflow.log_artifact(str(marker.parent / "trials.json"))
    args = ["--splits-uri", store.splits_uri, "--resume-from", run.info.run_id]
    return Attempt("tune", args, f"resume_from '{run.info.run_id}': trial record 2 is not valid (unknown model")


def placeholder_not_allowed(store: Store, marker: Path, undo: Callable) -> Attempt:
    uri = f"http://${{SECRET_TOKEN}}@{store.server}/people.csv"  # as a replayed param would carry it
    return Attempt("load", ["--data-uri", uri], "refers to ${SECRET_TOKEN}, which PIPELINE_SECRET_VARS does not allow")


def query_secret_in_clear(store: Store, marker: Path, undo: Callable) -> Attempt:
    uri = f"http://{store.server}/people.csv?X-Amz-Signature={SECRET}"
    return Attempt("load", ["--data-uri", uri], "holds a secret in its query string (X-Amz-Signature=...)")


def redirect_to_ftp(store: Store, marker: Path, undo: Callable) -> Attempt:
    return Attempt("load", ["--data-uri", f"http://{store.server}/people.csv"], "redirects to 'ftp://127.0.0.1/")


def model_name_breaking_uris(store: Store, marker: Path, undo: Callable) -> Attempt:
    args = ["--data-uri", str(store.batch), "--registered-model-name", "planted@champion"]
    return Attempt("predict", args, "registered_model_name 'planted@champion' cannot be used in a models:/ URI")


def planted_main_run(
    source: str, commit: str, why: str, tags: dict[str, str] | None = None
) -> Callable[[Store, Path, Callable], Attempt]:
    def attack(store: Store, marker: Path, undo: Callable) -> Attempt:
        with mlflow.start_run(run_name="main") as run:
            mlflow.set_tags({"pipeline.step": "main", "mlflow.source.name": source, "mlflow.source.git.commit": commit})
            mlflow.set_tags(tags or {})
        return Attempt("reproduce", ["--run-id", run.info.run_id, "--env-manager", "local"], why)

    return attack


# A commit the checkout has (reproduce clones it before it reads the step runs): HEAD, or none outside git.
HEAD = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True).stdout.strip()

CATALOGUE: dict[str, Callable[[Store, Path, Callable], Attempt]] = {
    "a pickle model made champion, scored": planted_champion("pickle", "predict"),
    "a pickle model made champion, monitored": planted_champion("pickle", "monitor"),
    "a skops model trusting its own types, evaluated": planted_champion("skops trusting its own types", "evaluate"),
    "a skops model trusting its own types, scored": planted_champion("skops trusting its own types", "predict"),
    "a model carrying code of its own": planted_champion("extra code", "predict"),
    "a model carrying a changed copy of the project's code": planted_champion(
        "changed copy of the project's code", "monitor"
    ),
    "a model loading through another pyfunc loader": planted_champion("another loader", "predict"),
    "a trained model's file swapped after its run": trained_model_swapped,
    "a split changed after featurize, passed by hand": split_changed_after_featurize,
    "a planted trials.json resumed": planted_trials,
    "a ${VAR} placeholder the user did not allow": placeholder_not_allowed,
    "a signature in a query string in clear text": query_secret_in_clear,
    "a download redirected to ftp": redirect_to_ftp,
    "a registered model name that breaks models:/ URIs": model_name_breaking_uris,
    "reproduce a run made from another repository": planted_main_run(
        "https://example.invalid/mallory/pipeline.git",
        "a" * 40,
        "was made from 'https://example.invalid/mallory/pipeline.git', not from this checkout",
    ),
    "reproduce a commit that is an option": planted_main_run(
        str(PROJECT_DIR), "--upload-pack=touch /tmp/x", "which is not a 40-hex git commit"
    ),
    # checked before anything is re-run (a KeyError after the whole pipeline had run again)
    "reproduce a run that records no load run": planted_main_run(
        str(PROJECT_DIR), HEAD, "records no load run (tag steps.load.run_id), so no data to compare"
    ),
    "reproduce a run whose step tag names no run": planted_main_run(
        str(PROJECT_DIR), HEAD, "records load run 'ffffffff", {"steps.load.run_id": "f" * 32}
    ),
}


@pytest.fixture
def undo(tmp_path) -> Iterator[Callable[[Path], None]]:
    """`undo(folder)`: the folder is put back as it is now when the test ends."""
    saved: list[tuple[Path, Path]] = []

    def keep(folder: Path) -> None:
        copy = tmp_path / f"saved-{len(saved)}"
        shutil.copytree(folder, copy)
        saved.append((folder, copy))

    yield keep
    for folder, copy in reversed(saved):
        shutil.rmtree(folder)
        shutil.copytree(copy, folder)


@pytest.mark.parametrize("attack", list(CATALOGUE))
def test_an_attack_is_refused_in_one_line_and_nothing_runs_or_leaks(store, attack, tmp_path, capsys, undo):
    marker = tmp_path / "payload-ran"
    store.requests.clear()
    attempt = CATALOGUE[attack](store, marker, undo)
    run = assert_failed_cleanly(capsys, attempt.step, attempt.args, attempt.message, secret=SECRET)
    assert not marker.exists(), "the payload ran"
    assert store.requests in ([], [f"/people.csv {None}"]), store.requests  # asked at most for the file, no auth
    if "redirect" not in attack:
        assert store.requests == [], store.requests
    # The user's own -P values are recorded as typed (MLflow's doing: the error tells them to delete the run);
    # the step adds no secret of its own to the run.
    assert SECRET not in json.dumps(run.data.tags)
    client = MlflowClient()
    for artifact in (f"logs/{attempt.step}.log", "card.html"):  # what the failed run keeps
        with tempfile.TemporaryDirectory() as folder:
            kept = Path(client.download_artifacts(run.info.run_id, artifact, folder)).read_text()
        assert SECRET not in kept, artifact
    if "in clear" not in attack:
        assert SECRET not in json.dumps(run.data.params)


def test_a_split_replaced_while_a_step_reads_it_in_place_is_not_what_it_reads(store, undo):
    """The race the catalogue's changed split cannot show: a local store is read in place, and its file is
    replaced after its hash was checked and before the step reads it. The step reads the file it checked, and
    is refused when the read ends (the checked file was unlinked: its change time moved)."""
    from steps.lib.artifacts import fetched
    from steps.lib.tables import read_frame

    splits = local_folder(mlflow.get_run(store.run_id("featurize")).info.artifact_uri) / "splits"
    undo(splits)
    [train_file] = splits.glob("train*.parquet")
    checked = read_frame(train_file)
    shutil.copyfile(splits / "test.parquet", splits / "planted.parquet")
    with pytest.raises(PipelineError, match="changed while it was read"), fetched(store.splits_uri, "x") as root:
        replacement = splits / "replacement.tmp"
        shutil.copyfile(splits / "test.parquet", replacement)
        os.replace(replacement, train_file)  # same columns, other rows, a new file under the old name
        assert read_frame(root / train_file.name).equals(checked)
        assert not (root / "planted.parquet").exists()  # what the manifest does not list is not there
    assert not read_frame(train_file).equals(checked)  # the store's file was replaced


def test_a_split_written_to_while_a_step_reads_it_in_place_is_refused(store, undo):
    """The same race with the file rewritten in place (same file, new bytes): refused when the read ends."""
    from steps.lib.artifacts import fetched

    splits = local_folder(mlflow.get_run(store.run_id("featurize")).info.artifact_uri) / "splits"
    undo(splits)
    [train_file] = splits.glob("train*.parquet")
    with pytest.raises(PipelineError) as raised, fetched(store.splits_uri, "the splits") as root:
        assert (root / train_file.name).read_bytes() == train_file.read_bytes()
        with train_file.open("r+b") as rewrite:
            rewrite.write((splits / "test.parquet").read_bytes())
    assert str(raised.value) == (
        f"the splits at '{store.splits_uri}' changed while it was read (splits/{train_file.name} was written to); "
        "run again, and find who writes to the run's artifacts"
    )


def test_every_catalogued_test_exists():
    """docs/security.md's catalogue names a test for each attack; each of those tests exists."""
    text = (PROJECT_DIR / "docs" / "security.md").read_text()
    catalogue = text[text.index("## The attack catalogue") :]
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", catalogue)
    assert len(named) >= 10
    for path, name in named:
        assert re.search(rf"^(async )?def {name}\(", (PROJECT_DIR / path).read_text(), re.M), f"{path}::{name}"
    for attack in CATALOGUE:
        assert attack in catalogue, f"docs/security.md's catalogue misses {attack!r}"

"""Artifacts between steps: download an earlier step's output, write JSON, and digest what was written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import mlflow
from mlflow.tracking import MlflowClient

from steps.lib.errors import PipelineError, one_line
from steps.lib.signing import MANIFEST_TAG, changed_file, parse_manifest, sha256_stream
from steps.lib.uris import redact_uri


class FetchError(PipelineError):
    """An artifact that cannot be fetched (`detail`: why, in one line)."""

    def __init__(self, what: str, shown: str, detail: str) -> None:
        super().__init__(f"cannot fetch {what} from '{shown}': {detail}")
        self.detail = detail


@contextmanager
def fetched(artifact_uri: str, what: str) -> Iterator[Path]:
    """An earlier step's artifact (file or directory) as a local path, for the block's duration.

    Read in place from a local artifact store (no copy: a split of a million rows is ~100 MB; see
    `checked_in_place` for how what is read stays what was checked); otherwise downloaded into a temporary
    folder removed afterwards, on success and on failure. MLflow's own download of a runs:/ URI goes to a new
    temporary folder that nobody removes: every step left its inputs in /tmp.
    """
    shown = redact_uri(artifact_uri)
    try:
        local = local_artifact_path(artifact_uri)
    except Exception as error:  # an unknown run, a malformed URI: MLflow raises several types
        raise FetchError(what, shown, one_line(str(error), 200)) from None
    if local is not None:
        if not local.exists():
            raise FetchError(what, shown, "no such artifact")
        with checked_in_place(artifact_uri, local, what) as path:
            yield path
        return
    with tempfile.TemporaryDirectory(prefix="pipeline-artifacts-") as folder:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=folder))
        except Exception as error:
            raise FetchError(what, shown, one_line(str(error), 200)) from None
        check_against_manifest(artifact_uri, path, what)
        yield path


def check_against_manifest(artifact_uri: str, path: Path, what: str) -> None:
    """The fetched files a step's output manifest lists (tag outputs.manifest) hash as it says: an artifact
    changed after its run finished is refused. Runs without a manifest (other tools, older runs) pass."""
    check_listed(artifact_uri, what, manifest_files(artifact_uri, path))


def check_listed(artifact_uri: str, what: str, listed: tuple[Path, dict[str, Listed]] | None) -> None:
    """check_against_manifest, given what manifest_files found."""
    if listed is None:
        return
    folder, files = listed
    changed = changed_file(folder, {local: entry.digest for local, entry in files.items()})
    if changed is not None:
        raise changed_after_run(artifact_uri, what, files[changed])


@dataclass(frozen=True)
class Listed:
    """A file a run's output manifest lists: its name in the run's artifacts, its key in the manifest, its hash."""

    full: str
    key: str
    digest: str


def manifest_files(artifact_uri: str, path: Path) -> tuple[Path, dict[str, Listed]] | None:
    """The fetched files that the output manifest of the run of a runs:/ URI lists: the folder they are in and,
    by their name in it, what the manifest says of each. None: no manifest applies."""
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    if not RunsArtifactRepository.is_runs_uri(artifact_uri):
        return None
    run_id, requested = RunsArtifactRepository.parse_runs_uri(artifact_uri)
    manifest = parse_manifest(MlflowClient().get_run(run_id).data.tags.get(MANIFEST_TAG))
    if manifest is None or not manifest["root"].startswith(f"runs:/{run_id}"):
        return None
    root = manifest["root"].removeprefix(f"runs:/{run_id}").strip("/")
    requested = (requested or "").strip("/")
    full_names = {f"{root}/{name}".strip("/"): name for name in manifest["files"]}
    if requested in full_names:  # one file was fetched: `path` is that file
        folder, read = path.parent, {path.name: requested}
    else:
        prefix = f"{requested}/" if requested else ""
        folder, read = path, {full.removeprefix(prefix): full for full in full_names if full.startswith(prefix)}
    files = {local: Listed(full, full_names[full], manifest["files"][full_names[full]]) for local, full in read.items()}
    return folder, files


def changed_after_run(artifact_uri: str, what: str, listed: Listed) -> PipelineError:
    error = PipelineError(
        f"{what} at '{redact_uri(artifact_uri)}' does not match its run's manifest ({listed.full} "
        "changed after the run finished); re-run the step that made it"
    )
    error.changed = listed.key  # type: ignore[attr-defined]  # for rehash_problem
    return error


OPEN_FILES = Path("/proc/self/fd")  # Linux: a link there opens the very file this process has open


@contextmanager
def checked_in_place(artifact_uri: str, path: Path, what: str) -> Iterator[Path]:
    """A local store's files, read where they are and checked against their run's manifest, so that what is
    read is what was checked: anyone with access to the store can write there while a step reads.

    Each file the manifest lists is opened once (not through a link), hashed through that open file, and left
    open; the path yielded is a private folder of links to those open files (/proc/self/fd), so a file
    replaced in the store meanwhile is not what the step reads, and one rewritten in place is refused when the
    block ends (its change time or size moved: the kernel keeps the change time, no user sets it). Files the
    manifest does not list are not in that folder. Without a manifest (or /proc), the store's own path."""
    listed = manifest_files(artifact_uri, path)
    if listed is None or not listed[1] or not OPEN_FILES.is_dir():  # nothing fetched is listed: nothing to pin
        check_listed(artifact_uri, what, listed)
        yield path
        return
    folder, files = listed
    with ExitStack() as stack:
        view = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pipeline-checked-")))
        opened = {}
        for local, entry in sorted(files.items()):
            handle = open_regular(folder / local, stack)
            if handle is None:
                raise changed_after_run(artifact_uri, what, entry)
            before = os.fstat(handle.fileno())  # before the hash: a write during it is seen at the end
            if sha256_stream(handle) != entry.digest:
                raise changed_after_run(artifact_uri, what, entry)
            opened[local] = (handle, before)
            link = view / local
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(OPEN_FILES / str(handle.fileno()))
        yield view if folder == path else view / path.name
        for local, (handle, before) in opened.items():
            now = os.fstat(handle.fileno())
            if (now.st_ctime_ns, now.st_size) != (before.st_ctime_ns, before.st_size):
                raise PipelineError(
                    f"{what} at '{redact_uri(artifact_uri)}' changed while it was read ({files[local].full} "
                    "was written to); run again, and find who writes to the run's artifacts"
                )


def open_regular(path: Path, stack: ExitStack) -> BinaryIO | None:
    """`path` opened for reading if it is a regular file (not a link; a FIFO planted there is not waited on),
    closed with `stack`; None otherwise."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    handle = stack.enter_context(os.fdopen(descriptor, "rb"))
    return handle if stat.S_ISREG(os.fstat(descriptor).st_mode) else None


def local_artifact_path(artifact_uri: str) -> Path | None:
    """Where a runs:/ or file artifact URI already is on this machine (its run's artifact store is a local
    folder); None when it has to be downloaded (an http(s) or mlflow-artifacts store, a cloud bucket)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    if RunsArtifactRepository.is_runs_uri(artifact_uri):
        run_id, artifact_path = RunsArtifactRepository.parse_runs_uri(artifact_uri)
        root = MlflowClient().get_run(run_id).info.artifact_uri
    else:
        root, artifact_path = artifact_uri, ""
    repo = get_artifact_repository(root)
    if not isinstance(repo, LocalArtifactRepository):
        return None
    return Path(repo.download_artifacts(artifact_path or "")) if artifact_path else Path(repo.artifact_dir)


def publish_artifacts(local_dir: Path, artifact_path: str) -> None:
    """mlflow.log_artifacts of a step's output folder; into a local artifact store the files are moved, not
    copied (a rename on the same file system: a million rows of Parquet is ~100 MB, ~0.4 s a copy), so
    `local_dir` is empty afterwards. Digest the output before publishing it."""
    target = local_artifact_path(mlflow.get_artifact_uri())
    if target is None:
        mlflow.log_artifacts(str(local_dir), artifact_path)
        return
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        destination = target / artifact_path / file.relative_to(local_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(file, destination)  # a rename, or a copy and a removal across file systems


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def digest_json(payload: Any) -> str:
    """sha256 of a JSON value in canonical form."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def digest_path(path: Path) -> str:
    """sha256 over a file, or over a directory's relative file names and contents in sorted order."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

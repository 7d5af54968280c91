"""Cache records signed with the user's own secret, and outputs checked against their manifests.

A shared tracking store cannot say who wrote a tag: anyone with access can set `cache.key` on any run. So a
step run is reused only if its cache record (run id, cache key, output manifest) carries an HMAC-SHA256 made
with the secret of the user running main (a 0600 file in the user's config directory, made on first use;
PIPELINE_CACHE_SECRET names another file, e.g. one a team shares on purpose), and its output files still hash
to that manifest. Nobody without the secret can forge a record that verifies; a store without authentication
still cannot prove who made a run (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from steps.lib.errors import PipelineError

SECRET_FILE_VARIABLE = "PIPELINE_CACHE_SECRET"
MANIFEST_TAG = "outputs.manifest"  # {"root": artifact URI of the output, "files": {relative path: sha256}}
SIGNATURE_TAG = "cache.signature"


def secret_file() -> Path:
    """PIPELINE_CACHE_SECRET, else <XDG_CONFIG_HOME or ~/.config>/mlflow-pipeline/cache-secret."""
    named = os.environ.get(SECRET_FILE_VARIABLE, "").strip()
    if named:
        return Path(named).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(config) / "mlflow-pipeline" / "cache-secret"


def user_secret() -> bytes:
    """The user's secret, made on first use (32 random bytes, hex, in a file only the user can read)."""
    path = secret_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made a moment ago by another step of the same user
            pass
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32) + "\n")
    info = path.stat()
    if os.name == "posix" and stat.S_IMODE(info.st_mode) & 0o077:
        raise PipelineError(f"the cache secret {path} is readable by other users; run `chmod 600 {path}`")
    secret = path.read_text().strip().encode()
    if len(secret) < 32:
        raise PipelineError(f"the cache secret {path} is too short; remove it and a new one is made")
    return secret


def cache_record(run_id: str, key: str, manifest: dict[str, Any]) -> bytes:
    return json.dumps({"run": run_id, "key": key, "manifest": manifest}, sort_keys=True).encode()


def sign(run_id: str, key: str, manifest: dict[str, Any]) -> str:
    return hmac.new(user_secret(), cache_record(run_id, key, manifest), hashlib.sha256).hexdigest()


def signature_verifies(run_id: str, key: str, manifest: dict[str, Any], signature: str) -> bool:
    return hmac.compare_digest(sign(run_id, key, manifest), signature)


def file_manifest(
    folder: Path, names: list[str] | None = None, known: Mapping[str, str] | None = None
) -> dict[str, str]:
    """sha256 of each file under `folder` (or of the named ones), by relative POSIX path. `known`: digests the
    thread that wrote a file took right after writing it (see `tables.write_parquet_digest`), not taken again."""
    files = [folder / name for name in names] if names is not None else sorted(folder.rglob("*"))
    known = known or {}
    manifest = {}
    for path in files:
        if path.is_file():
            name = path.relative_to(folder).as_posix()
            manifest[name] = known[name] if name in known else sha256_file(path)
    return manifest


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return sha256_stream(handle)


def sha256_stream(handle: BinaryIO) -> str:
    """The sha256 of what is left to read of an open file."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def manifest_tag(root: str, files: dict[str, str]) -> str:
    return json.dumps({"root": root, "files": files}, sort_keys=True)


def parse_manifest(tag: str | None) -> dict[str, Any] | None:
    """The manifest a tag holds, or None when it is missing or not one (a tag is anyone's to write)."""
    try:
        manifest = json.loads(tag or "")
        files = manifest["files"]
        assert isinstance(manifest["root"], str) and isinstance(files, dict) and files
        assert all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items())
        assert all(not Path(k).is_absolute() and ".." not in Path(k).parts for k in files)
    except (ValueError, KeyError, TypeError, AssertionError):
        return None
    return manifest


def changed_file(folder: Path, files: dict[str, str]) -> str | None:
    """The first of `files` (relative path: sha256) that is missing under `folder` or hashes otherwise."""
    for name, expected in sorted(files.items()):
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            return name
    return None


def rehash_problem(manifest: dict[str, Any], fetch: Any) -> str | None:
    """Why the files at the manifest's root do not match it (None: they all do). `fetch`: artifacts.fetched."""
    try:
        with fetch(manifest["root"], "the outputs") as folder:
            # a runs:/ root: fetch itself checked the files against the run's manifest (the one just verified)
            changed = None if manifest["root"].startswith("runs:/") else changed_file(folder, manifest["files"])
    except PipelineError as error:
        changed = getattr(error, "changed", None)
        if changed is None:
            return str(error)
    return None if changed is None else f"{changed} was changed after the run"


def record_manifest(root: str, files: dict[str, str]) -> None:
    """Tag the active run with the manifest of its output (main signs it once the step has finished)."""
    import mlflow

    mlflow.set_tag(MANIFEST_TAG, manifest_tag(root, files))


def run_root(artifact_path: str = "") -> str:
    """The runs:/ URI of an artifact folder of the active run."""
    import mlflow

    return f"runs:/{mlflow.active_run().info.run_id}" + (f"/{artifact_path}" if artifact_path else "")

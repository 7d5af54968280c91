"""Artifacts between steps: download an earlier step's output, write JSON, and digest what was written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow

from steps.lib.errors import PipelineError, one_line
from steps.lib.uris import redact_uri


def download_dir(artifact_uri: str, what: str) -> Path:
    """Download an artifact directory (or file) produced by an earlier step."""
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri))
    except Exception as error:
        raise PipelineError(
            f"cannot fetch {what} from '{redact_uri(artifact_uri)}': {one_line(str(error), 200)}"
        ) from None


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

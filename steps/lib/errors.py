"""The two errors a step reports in one line, and the one-line form of any message."""

from __future__ import annotations


class PipelineError(Exception):
    """Bad input: reported as one line naming the problem and the fix; the run is marked FAILED."""


class TrackingUnreachableError(PipelineError):
    """MLflow gave up on the tracking server: nothing more can be recorded, not even FAILED."""


def is_unique_key_clash(error: BaseException) -> bool:
    """Whether the store refused an insert because the same key was inserted meanwhile (SQLite, PostgreSQL,
    or either behind a tracking server)."""
    return any(clash in str(error) for clash in ("IntegrityError", "UNIQUE constraint", "duplicate key"))


def one_line(text: str, limit: int = 500) -> str:
    """Collapse whitespace so a message fits on one line (and in a tag)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."

"""The model registry: the champion and challenger aliases, model lookups, and the lock on the champion.

MLflow has no compare-and-set for aliases: two evaluate runs that each read the champion, compare
with it and move the alias can both "win", and the alias ends on whichever wrote last. Creating a
registered model is atomic (the name is the key, in SQLite, PostgreSQL or behind a server), so the
lock is a registered model `<name>.champion-lock`, held for the seconds evaluate needs to compare
with the champion and move the alias, then deleted. A lock whose holder process died (same host) or
that is older than STALE_AFTER_SECONDS (by the holder's clock: keep hosts in sync) is broken by the
next evaluate.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from steps.lib.errors import PipelineError, is_unique_key_clash, one_line
from steps.lib.process import process_alive, process_identity

logger = logging.getLogger("steps.registry")
DEFAULT_REGISTERED_MODEL_NAME = "pipeline-model"
CHAMPION = "champion"
CHALLENGER = "challenger"


# Characters that change what a models:/<name>@<alias> or models:/<name>/<version> URI means.
URI_BREAKING = ("@", "/", "?", "#", "%", "\\")


def check_model_name(registered_model_name: str) -> None:
    """A registered model name the pipeline can use in a models:/ URI; checked before any step runs."""
    if not registered_model_name.strip():
        raise PipelineError("registered_model_name is empty; pass -P registered_model_name=<name>")
    bad = next((c for c in registered_model_name if c in URI_BREAKING or not c.isprintable()), None)
    if bad is not None or registered_model_name != registered_model_name.strip():
        shown = repr(bad) if bad is not None else "a leading or trailing space"
        raise PipelineError(
            f"registered_model_name {registered_model_name!r} cannot be used in a models:/ URI (it holds {shown}); "
            "use letters, digits, spaces inside, '-', '_' or '.'"
        )
    if registered_model_name.endswith(LOCK_SUFFIX):
        raise PipelineError(f"registered_model_name may not end in '{LOCK_SUFFIX}' (the champion lock); pick another")


def resolve_model_uri(model_uri: str | None, registered_model_name: str) -> str:
    """The model to use: the given URI, or (None) the registered model's champion."""
    if model_uri is None:
        check_model_name(registered_model_name)
        return f"models:/{registered_model_name}@{CHAMPION}"
    return model_uri


def model_version_of(client: MlflowClient, uri: str) -> ModelVersion:
    """The registry version behind models:/<name>@<alias> or models:/<name>/<version>."""
    if not uri.startswith("models:/"):
        raise PipelineError(f"model_uri '{uri}' is not a registered model; use models:/<name>@<alias> or /<version>")
    path = uri.removeprefix("models:/")
    try:
        if "@" in path:
            name, alias = path.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = path.partition("/")
        return client.get_model_version(name, version)
    except MlflowException as error:
        raise PipelineError(
            f"model '{uri}' does not exist ({one_line(str(error.message), 120)}); "
            "check the registered model name and the alias or version"
        ) from None


# --------------------------------------------------------------------------- the champion lock

LOCK_SUFFIX = ".champion-lock"
HOLDER_TAG = "lock.holder"
ACQUIRED_TAG = "lock.acquired_at"
TOKEN_TAG = "lock.token"  # tells two holders in one process apart
STALE_AFTER_SECONDS = 600.0


def lock_name(registered_model_name: str) -> str:
    """The registered model that serves as the champion lock of `registered_model_name`."""
    return registered_model_name + LOCK_SUFFIX


def error_code(error: MlflowException) -> str:
    """MLflow's error code name (RESOURCE_ALREADY_EXISTS, ...), from a local store or a server alike."""
    return str(getattr(error, "error_code", ""))


def lost_the_race(error: MlflowException) -> bool:
    """Whether creating the lock failed because another process holds it (or just released it).

    The store may report it as RESOURCE_ALREADY_EXISTS, as the database's unique-key error (a clash
    found at commit), or as RESOURCE_DOES_NOT_EXIST (MLflow looks the clashing model up after the
    clash, and its holder may have deleted it in between).
    """
    return error_code(error) in {"RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"} or is_unique_key_clash(error)


def lock_tags(client: MlflowClient, lock: str) -> dict[str, str] | None:
    """The lock's tags; None if there is no lock."""
    try:
        return client.get_registered_model(lock).tags
    except MlflowException as error:
        if error_code(error) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def break_if_stale(client: MlflowClient, lock: str, stale_after: float) -> bool:
    """Delete the lock if its holder is dead or it is too old; True if it is gone now."""
    tags = lock_tags(client, lock)
    if tags is None:
        return True
    if TOKEN_TAG not in tags or ACQUIRED_TAG not in tags:
        # Read while its holder was deleting it (a store may read the model and its tags apart): look again.
        return False
    holder = tags.get(HOLDER_TAG, "")
    age = time.time() - float(tags[ACQUIRED_TAG])
    if process_alive(holder) is not False and age < stale_after:
        return False
    again = lock_tags(client, lock)
    if again is None or again.get(TOKEN_TAG) != tags[TOKEN_TAG]:  # released or replaced meanwhile: not stale
        return again is None
    logger.warning("breaking the stale lock %s (holder %s, %.0f s old)", lock, holder or "unknown", age)
    try:
        client.delete_registered_model(lock)
    except MlflowException as error:
        if error_code(error) != "RESOURCE_DOES_NOT_EXIST":  # another evaluate broke it first
            raise
    return True


@contextmanager
def champion_lock(
    client: MlflowClient,
    registered_model_name: str,
    timeout: float = 900.0,
    poll: float = 0.5,
    stale_after: float = STALE_AFTER_SECONDS,
) -> Iterator[None]:
    """Hold the champion lock of `registered_model_name` for the body of the with-block."""
    lock = lock_name(registered_model_name)
    holder, token = process_identity(), uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={HOLDER_TAG: holder, TOKEN_TAG: token, ACQUIRED_TAG: f"{time.time():.3f}"},
                description=f"Held by evaluate ({holder}) while it moves the champion alias of "
                f"{registered_model_name}; deleted when done. Safe to delete if no evaluate is running.",
            )
            break
        except MlflowException as error:
            if not lost_the_race(error):
                raise
            held = lock_tags(client, lock)
            if held is not None and held.get(TOKEN_TAG) == token:  # ours: a retried create whose answer was lost
                break
        if break_if_stale(client, lock, stale_after):
            continue
        if time.monotonic() > deadline:
            raise PipelineError(
                f"the champion of '{registered_model_name}' stayed locked for {timeout:.0f} s; if no evaluate "
                f"is running, delete the registered model '{lock}' and re-run"
            )
        if not waited:
            logger.info("another evaluate is deciding the champion of %s: waiting for it", registered_model_name)
            waited = True
        time.sleep(poll * (1 + random.random()))
    try:
        yield
    finally:
        release(client, lock, token)


def release(client: MlflowClient, lock: str, token: str) -> None:
    """Delete the lock if it is still ours; a failure only leaves it for the next evaluate to break.

    Raising here would undo the work the lock guarded (evaluate deletes a version that fails mid-way).
    """
    try:
        tags = lock_tags(client, lock)
        if tags is not None and tags.get(TOKEN_TAG) == token:  # not ours any more if broken as stale
            client.delete_registered_model(lock)
    except MlflowException as error:
        logger.warning("could not release %s (%s); the next evaluate breaks it when stale", lock, error)

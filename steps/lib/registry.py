"""The model registry: the champion and challenger aliases, model lookups, and the lock on the champion.

MLflow has no compare-and-set for aliases: two evaluate runs that each read the champion, compare
with it and move the alias can both "win", and the alias ends on whichever wrote last. Nor has it
compare-and-delete, so a lock that is one registered model, deleted by whoever finds it stale, lets two
waiters that broke it together delete each other's. The lock is a registered model `<name>.champion-lock`
whose versions are tickets: the store numbers a model's versions in order, and the lowest ticket that
is not stale holds the lock (see champion_lock). A ticket whose holder process died (same host), that is
older than STALE_AFTER_SECONDS, or whose time stamp cannot be read or lies in the future is stale.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
SKEW_SECONDS = 60.0  # a ticket stamped further in the future than this is not believed
# A ticket is a model version holding no model. Its source names nothing: an object-store URI, which MLflow's
# server takes as a version's source without reaching it (a local path, runs:/ or mlflow-artifacts: source
# must point inside a run of the request's run_id).
TICKET_SOURCE = "s3://mlflow-pipeline-champion-lock/ticket"


def lock_name(registered_model_name: str) -> str:
    """The registered model whose versions are the tickets of `registered_model_name`'s champion lock."""
    return registered_model_name + LOCK_SUFFIX


def error_code(error: MlflowException) -> str:
    """MLflow's error code name (RESOURCE_ALREADY_EXISTS, ...), from a local store or a server alike."""
    return str(getattr(error, "error_code", ""))


def lost_the_race(error: MlflowException) -> bool:
    """Whether creating a registered model failed because another process created it first.

    The store may report it as RESOURCE_ALREADY_EXISTS, or as the database's unique-key error (a clash
    found at commit).
    """
    return error_code(error) in {"RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"} or is_unique_key_clash(error)


def ticket_stale(tags: dict[str, str], stale_after: float, now: float | None = None) -> bool:
    """A ticket no longer counts: its holder is known dead, it is too old, or its time is unreadable or too far
    in the future (a tag is anyone's to write: a planted ticket must not block every evaluate)."""
    now = time.time() if now is None else now
    try:
        acquired = float(tags[ACQUIRED_TAG])
        assert acquired == acquired and HOLDER_TAG in tags and TOKEN_TAG in tags  # not NaN, a ticket of ours
    except (KeyError, ValueError, AssertionError):
        return True
    if acquired > now + SKEW_SECONDS or now - acquired >= stale_after:
        return True
    return process_alive(tags[HOLDER_TAG]) is False


@dataclass
class HeldLock:
    """The ticket this process holds; `check` says whether it is still the lock just before the alias moves."""

    client: MlflowClient
    lock: str
    version: str
    token: str
    refreshed: float  # time.monotonic() when its time stamp was last written
    stale_after: float

    def check(self) -> None:
        """Raise unless this ticket is still the lock: it exists, is ours, and nobody may call it stale yet."""
        try:
            tags = self.client.get_model_version(self.lock, self.version).tags
        except MlflowException:
            tags = {}
        young = time.monotonic() - self.refreshed < self.stale_after - SKEW_SECONDS
        if tags.get(TOKEN_TAG) != self.token or not young:
            raise PipelineError(
                f"the champion lock '{self.lock}' is no longer this evaluate's (held too long, or removed); "
                "the alias was not moved: re-run main"
            )


def take_ticket(client: MlflowClient, lock: str, holder: str, token: str, registered_model_name: str) -> str:
    """A new ticket (a model version of the lock model): versions are numbered in order, the lowest live one holds."""
    try:
        client.create_registered_model(
            lock,
            description=f"The champion lock of {registered_model_name}: each version is one evaluate's ticket, "
            "the lowest live one holds it; a ticket is deleted when its evaluate is done.",
        )
    except MlflowException as error:
        if not lost_the_race(error):
            raise
    tags = {HOLDER_TAG: holder, TOKEN_TAG: token, ACQUIRED_TAG: f"{time.time():.3f}"}
    return str(client.create_model_version(lock, TICKET_SOURCE, tags=tags).version)


@contextmanager
def champion_lock(
    client: MlflowClient,
    registered_model_name: str,
    timeout: float = 900.0,
    poll: float = 0.5,
    stale_after: float = STALE_AFTER_SECONDS,
) -> Iterator[HeldLock]:
    """Hold the champion lock of `registered_model_name` for the body of the with-block.

    MLflow has no compare-and-set nor compare-and-delete, but it numbers a model's versions in order: each
    evaluate takes a ticket (a version of the lock model) and holds the lock when its ticket is the lowest one
    that is not stale. Nobody deletes another's ticket while it could be recreated: a waiter only skips stale
    tickets, and the holder deletes those numbered below its own (no new ticket can take such a number while
    its own exists). Two processes that find one lock stale therefore never both enter. While waiting a
    ticket's time stamp is renewed, so a long wait does not make it stale.
    """
    lock = lock_name(registered_model_name)
    holder, token = process_identity(), uuid.uuid4().hex
    version = take_ticket(client, lock, holder, token, registered_model_name)
    refreshed = time.monotonic()
    deadline = refreshed + timeout
    waited = False
    try:
        while True:
            tickets = client.search_model_versions(f"name = '{lock}'")
            mine = [t for t in tickets if str(t.version) == version]
            if not mine:  # someone removed it (by hand: "safe to delete if no evaluate runs"): take another
                version, refreshed = take_ticket(client, lock, holder, token, registered_model_name), time.monotonic()
                continue
            now = time.time()
            live = [t for t in tickets if str(t.version) == version or not ticket_stale(t.tags, stale_after, now)]
            first = min(live, key=lambda t: int(t.version))
            if str(first.version) == version:
                for stale in (t for t in tickets if int(t.version) < int(version)):
                    delete_ticket(client, lock, str(stale.version))
                break
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"the champion of '{registered_model_name}' stayed locked for {timeout:.0f} s; if no evaluate "
                    f"is running, delete the registered model '{lock}' and re-run"
                )
            if not waited:
                logger.info("another evaluate is deciding the champion of %s: waiting for it", registered_model_name)
                waited = True
            if time.monotonic() - refreshed > stale_after / 3:  # still waiting: still alive
                client.set_model_version_tag(lock, version, ACQUIRED_TAG, f"{time.time():.3f}")
                refreshed = time.monotonic()
            time.sleep(poll * (1 + random.random()))
        client.set_model_version_tag(lock, version, ACQUIRED_TAG, f"{time.time():.3f}")
        yield HeldLock(client, lock, version, token, time.monotonic(), stale_after)
    finally:
        release(client, lock, version)


RELEASED = "0"  # a ticket's time stamp once its holder is done but could not delete it: stale at once


def delete_ticket(client: MlflowClient, lock: str, version: str) -> None:
    try:
        client.delete_model_version(lock, version)
    except MlflowException as error:
        if error_code(error) == "PERMISSION_DENIED":  # basic auth: only the lock model's creator may delete
            return  # it is stale already: every waiter passes it over
        if error_code(error) != "RESOURCE_DOES_NOT_EXIST":  # another holder cleaned it up first
            logger.warning("could not delete the stale ticket %s v%s: %s", lock, version, one_line(str(error), 120))


def release(client: MlflowClient, lock: str, version: str) -> None:
    """Delete this process's own ticket (its number is its own); a failure only leaves it to go stale.

    Under MLflow's basic auth a user may add versions to a model another user created but not delete them
    (EDIT, not MANAGE): the ticket is then released by its time stamp, which makes it stale at once. Raising
    here would undo the work the lock guarded (evaluate deletes a version that fails mid-way).
    """
    try:
        client.delete_model_version(lock, version)
    except MlflowException as error:
        if error_code(error) == "PERMISSION_DENIED":
            try:
                client.set_model_version_tag(lock, version, ACQUIRED_TAG, RELEASED)
                return
            except MlflowException as tagging:
                error = tagging
        if error_code(error) != "RESOURCE_DOES_NOT_EXIST":
            logger.warning("could not release %s v%s (%s); it goes stale by itself", lock, version, error)

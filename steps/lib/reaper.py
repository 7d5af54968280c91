"""The reaper: step runs whose process died (kill -9, a crash, a lost server) are marked KILLED by the next main."""

from __future__ import annotations

import logging

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from steps.lib.errors import one_line
from steps.lib.names import ERROR_TAG, EVALUATE_RUN_TAG, GATES_PASSED_TAG, PARENT_TAG, PROCESS_TAG, STEP_TAG
from steps.lib.process import process_alive
from steps.lib.runner import clean_up_after

logger = logging.getLogger("steps.reaper")


def reap_dead_runs(client: MlflowClient, experiment_id: str, main_run_id: str) -> list[str]:
    """Mark KILLED the RUNNING step runs whose process on this machine is gone (kill -9, a crash, a lost server).

    MLflow leaves such runs RUNNING forever; the cache never reuses them (it takes FINISHED runs only).
    Runs of live processes, of processes whose state is unknown (another machine, an unreadable start time),
    and of other users are left alone. A model version that a dead
    evaluate registered but never decided on (no `gates.passed` tag) is deleted: nothing half-registered. What
    the dead process left on this machine goes too: its log so far is logged, its temporary files removed.
    """
    reaped = []
    me = current_user()
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        identity = run.data.tags.get(PROCESS_TAG, "")
        if not identity or run.info.run_id == main_run_id or process_alive(identity) is not False:
            continue
        if not is_mine(run, me):  # never another user's runs
            continue
        try:
            if run.data.tags.get(STEP_TAG) == "evaluate":
                delete_undecided_versions(client, run.info.run_id)
            mark_killed(client, run.info.run_id, f"its process ({identity}) ended without closing the run", main_run_id)
            clean_up_after(client, run.info.run_id)  # its log so far logged, its temporary files removed
        except MlflowException as error:  # e.g. no permission on another user's run: not main's to fail over
            logger.warning("could not mark run %s KILLED: %s", run.info.run_id, one_line(str(error), 200))
            continue
        reaped.append(run.info.run_id)
    reaped += reap_trials_of_ended_tunes(client, experiment_id, main_run_id, me)
    if reaped:
        logger.warning("marked %d run(s) of dead processes KILLED: %s", len(reaped), ", ".join(reaped))
    return reaped


def reap_trials_of_ended_tunes(client: MlflowClient, experiment_id: str, main_run_id: str, me: str | None) -> list[str]:
    """Mark KILLED the RUNNING trial runs of a tune run that is over: their logger process was killed between
    opening a trial's run and closing it (kill -9 of the whole process group). A trial run names no process of
    its own; its tune run (KILLED by now, above, or by Ctrl-C) says it cannot still be logging."""
    reaped, status_of = [], {}
    found = f"attributes.status = 'RUNNING' and tags.`{STEP_TAG}` = 'trial'"
    for run in client.search_runs([experiment_id], filter_string=found, max_results=1000):
        tune = run.data.tags.get(PARENT_TAG, "")
        if not tune or not is_mine(run, me):
            continue
        if tune not in status_of:
            try:
                status_of[tune] = client.get_run(tune).info.status
            except MlflowException:  # deleted, or not readable: nothing is known
                status_of[tune] = None
        if status_of[tune] in (None, "RUNNING"):
            continue
        try:
            why = f"its tune run {tune} ended ({status_of[tune]}) before it was logged whole"
            mark_killed(client, run.info.run_id, why, main_run_id)
        except MlflowException as error:
            logger.warning("could not mark run %s KILLED: %s", run.info.run_id, one_line(str(error), 200))
            continue
        reaped.append(run.info.run_id)
    return reaped


def mark_killed(client: MlflowClient, run_id: str, why: str, main_run_id: str) -> None:
    """End a run KILLED, saying why and which main run marked it (`pipeline.error`)."""
    client.set_tag(run_id, ERROR_TAG, f"{why}; marked KILLED by main run {main_run_id}")
    client.set_terminated(run_id, status="KILLED")


def is_mine(run: Run, me: str | None) -> bool:
    """Whether this user (`current_user`) made the run: unknown is not mine."""
    return me is not None and run.data.tags.get("mlflow.user", run.info.user_id) == me


def current_user() -> str | None:
    """The user name MLflow records on this user's runs (tag mlflow.user); None if it cannot be told."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment nor the password database
        return None


def delete_undecided_versions(client: MlflowClient, evaluate_run_id: str) -> None:
    """Delete the versions a dead evaluate registered before its gates decided (so no alias points at them)."""
    for version in client.search_model_versions(f"tags.`{EVALUATE_RUN_TAG}` = '{evaluate_run_id}'"):
        if GATES_PASSED_TAG not in version.tags:
            logger.warning("deleting %s v%s: its evaluate died before deciding", version.name, version.version)
            client.delete_model_version(version.name, version.version)


def killed_as_recorded(client: MlflowClient, run: Run | None) -> Run | None:
    """A step run that ended itself KILLED (Ctrl-C or SIGTERM: `pipeline.error` `interrupted (...)`) set KILLED
    again: MLflow 3.17's `mlflow.projects` writes FAILED over it as it waits for or cancels the step (its
    `_maybe_set_run_terminated` compares the run's status, text, with `RunStatus`' numbers). The run, as it is now."""
    if run is None or run.info.status != "FAILED" or not run.data.tags.get(ERROR_TAG, "").startswith("interrupted ("):
        return run
    try:
        client.set_terminated(run.info.run_id, status="KILLED")
        return client.get_run(run.info.run_id)
    except MlflowException:  # the store is away: the reason is in pipeline.error all the same
        return run

"""Entry point `reproduce`: re-run a finished main run from git at its commit, and compare every metric."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from steps.lib.console import say, terminal
from steps.lib.errors import PipelineError, one_line
from steps.lib.names import DIRTY_TAG, PIPELINE_STEPS, STEP_TAG
from steps.lib.profiles import DEFAULTS
from steps.lib.runner import run_cli, step_run, unset_is_none
from steps.lib.step_cards import reproduce_card
from steps.lib.story import code, describe
from steps.lib.uris import redact_uri

logger = logging.getLogger("steps.reproduce")
PROJECT_DIR = Path(__file__).resolve().parents[1]
COMMIT_TAG = "mlflow.source.git.commit"
SOURCE_TAG = "mlflow.source.name"
# Wall-clock and memory figures differ from run to run by nature; everything else must match exactly.
VOLATILE_SUFFIXES = ("_seconds", "peak_rss_mb", "peak_rss_children_mb")
GIT_TIMEOUT = 120


@dataclass
class Original:
    run: Run
    commit: str
    source: str
    subdirectory: str
    params: dict[str, str]
    dirty: bool


def replay_threads(params: dict[str, str], resolved: str) -> None:
    """threads=0 meant that machine's cores: replay the number it resolved to, so the fits come out the same.

    The tag is anyone's to write: only a whole number from 1 to 1024 is used.
    """
    if params.get("threads") in ("0", "0.0") and resolved.isdigit() and 1 <= int(resolved) <= 1024:
        params["threads"] = resolved


def warn(message: str) -> None:
    """A warning in the step's log and, on one line, on stderr where the person who typed the command sees it."""
    logger.warning(message)
    say(f"warning: reproduce: {message}", err=True)


def replayed_params(run: Any) -> dict[str, str]:
    """The params to run main with again: the values it resolved (params resolved.<param>: what -P, its profile
    and the defaults gave; a param cannot be changed once logged), not its profile's path, which may have
    changed or be elsewhere; a main from before profiles: its params as typed. use_cache is left out (the
    re-run goes to a fresh store)."""
    given = run.data.params  # only main's own params are replayed
    resolved = {key: given[f"resolved.{key}"] for key in DEFAULTS if f"resolved.{key}" in given}
    if resolved:
        params = resolved | {"profile": "none"}
        if "verbose" in run.data.params:
            params["verbose"] = run.data.params["verbose"]
    else:
        params = {key: value for key, value in given.items() if not key.startswith("resolved.")}
    params.pop("use_cache", None)
    return params


def machine_dependence(params: dict[str, str]) -> str | None:
    """Why the re-run may differ on another machine however faithful it is, or None."""
    limit = unset_is_none(None, None, params.get("trial_timeout", "none"))
    if limit in (None, ""):
        return None
    return (
        f"the run tuned with trial_timeout={limit} s: which trials finished depended on that machine's speed, "
        "so tune's trials (and the model chosen) may differ here"
    )


def read_original(client: MlflowClient, run_id: str, source: str | None) -> Original:
    """The main run to reproduce: its commit, where its code came from, and its params."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PipelineError(f"run '{run_id}' does not exist in {redact_uri(mlflow.get_tracking_uri())}") from None
    step = run.data.tags.get(STEP_TAG, "")
    if step != "main":
        what = f"a {step} run" if step else "not a pipeline run"
        raise PipelineError(f"run '{run_id}' is {what}, not a main run; pass the run id of a main run")
    if run.info.status != "FINISHED":
        raise PipelineError(f"main run '{run_id}' is {run.info.status}; only a FINISHED run can be reproduced")
    commit = run.data.tags.get(COMMIT_TAG)
    if not commit:
        raise PipelineError(f"main run '{run_id}' has no git commit (it was not run from a git checkout)")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):  # a tag is anyone's to write: no options, no ranges
        raise PipelineError(f"main run '{run_id}' records commit {commit[:60]!r}, which is not a 40-hex git commit")
    recorded = run.data.tags.get(SOURCE_TAG, "")
    uri, _, subdirectory = (source or recorded).partition("#")
    if not uri:
        raise PipelineError(f"main run '{run_id}' records no source; pass -P source=<git URL>")
    if source is None and not same_source(uri, this_checkout_sources()):
        raise PipelineError(
            f"main run '{run_id}' was made from '{redact_uri(recorded)}', not from this checkout; look at that "
            f"code first, then pass -P source='{redact_uri(recorded)}' to run it"
        )
    if Path(subdirectory).is_absolute() or ".." in Path(subdirectory).parts:
        raise PipelineError(f"the source's subdirectory {subdirectory!r} leaves the repository; pass -P source=")
    params = replayed_params(run)
    replay_threads(params, run.data.tags.get("threads", ""))
    return Original(run, commit, uri, subdirectory, params, run.data.tags.get(DIRTY_TAG) == "true")


def this_checkout_sources() -> list[str]:
    """Where this project's code comes from: its folder, and its git remote `origin` if it has one."""
    sources = [str(PROJECT_DIR)]
    try:
        origin = subprocess.run(
            ["git", "remote", "get-url", "origin"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return sources
    return sources + ([origin.stdout.strip()] if origin.returncode == 0 and origin.stdout.strip() else [])


def same_source(uri: str, sources: list[str]) -> bool:
    """Whether a recorded source names one of `sources` (file:// or not, with or without .git or a slash)."""

    def plain(text: str) -> str:
        text = text.removeprefix("file://").rstrip("/").removesuffix(".git")
        return str(Path(text).resolve()) if "://" not in text and not text.startswith("git@") else text

    return plain(uri) in {plain(s) for s in sources}


def checkout(source: str, commit: str, destination: Path) -> Path:
    """Clone `source` into a new directory and check out `commit` there; the user's tree is untouched."""
    shown = redact_uri(source)
    try:
        clone = subprocess.run(
            ["git", "clone", "--quiet", "--no-checkout", "--", source, str(destination)],  # a source is no option
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except subprocess.TimeoutExpired:
        raise PipelineError(f"cannot reach git repository '{shown}': no answer in {GIT_TIMEOUT} s") from None
    if clone.returncode != 0:
        raise PipelineError(f"cannot reach git repository '{shown}': {one_line(clone.stderr, 200)}")
    found = subprocess.run(
        ["git", "checkout", "--quiet", "--detach", commit], cwd=destination, capture_output=True, text=True
    )
    if found.returncode != 0:
        raise PipelineError(f"commit '{commit}' does not exist in '{shown}'; was it pushed?")
    return destination


def rerun(project: Path, params: dict[str, str], env_manager: str, tracking_uri: str) -> subprocess.CompletedProcess:
    """`mlflow run <checkout> -e main` with the original params, into a fresh tracking store."""
    command = [sys.executable, "-m", "mlflow", "run", str(project), "-e", "main", "--env-manager", env_manager]
    for name, value in sorted(params.items()):
        command += ["-P", f"{name}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    logger.info("re-running main from %s into %s", project, tracking_uri)
    # The re-run's output goes to our stderr, so the user sees it progress.
    console = terminal(err=True)  # the re-run's own console lines, not into this step's log
    return subprocess.run(command, cwd=project, env=env, stdout=console, stderr=console)


def step_runs(client: MlflowClient, main_run: Run) -> dict[str, Run]:
    """The step runs a main run records (tags steps.<step>.run_id), by step. A tag is anyone's to write: one
    that names no run of the store, or no load run at all (the data's digest is load's), is refused in one line."""
    runs, run_id = {}, main_run.info.run_id
    for step in PIPELINE_STEPS:
        step_run_id = main_run.data.tags.get(f"steps.{step}.run_id")
        if step_run_id:
            try:
                found: Run | None = client.get_run(step_run_id)
            except MlflowException:
                found = None
            if found is not None and found.data.tags.get(STEP_TAG) == step:
                runs[step] = found
            else:  # absent, or another step's run
                raise PipelineError(
                    f"main run '{run_id}' records {step} run {step_run_id[:40]!r}, which is no {step} run of this "
                    "store; it cannot be compared: reproduce another main run, or run main again"
                )
    if "load" not in runs:
        raise PipelineError(
            f"main run '{run_id}' records no load run (tag steps.load.run_id), so no data to compare; reproduce "
            "another main run, or run main again"
        )
    return runs


def deleted_words(main_run: Run, runs: dict[str, Run]) -> str | None:
    """What of the run being reproduced is deleted (in the store's trash: `mlflow gc` removes its artifacts), with
    how to restore it; None when nothing is. The comparison still runs on what the store holds."""
    named = {"main": main_run, **runs}
    deleted = [run.info.run_id for run in named.values() if run.info.lifecycle_stage == "deleted"]
    if not deleted:
        return None
    which = ", ".join(f"{step} run {run.info.run_id}" for step, run in named.items() if run.info.run_id in deleted)
    restore = " and ".join(f"`mlflow runs restore --run-id {run_id}`" for run_id in deleted)
    verb = "is" if len(deleted) == 1 else "are"
    return f"{which} {verb} deleted (compared as the store holds it): restore with {restore} before `mlflow gc` runs"


def step_metrics(runs: dict[str, Run]) -> dict[str, dict[str, float]]:
    """Every step's metrics, by step (`step_runs`), without the volatile ones (times, memory)."""
    return {
        step: {k: v for k, v in run.data.metrics.items() if not k.endswith(VOLATILE_SUFFIXES)}
        for step, run in runs.items()
    }


def compare_metrics(original: dict[str, dict[str, float]], reproduced: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per (step, metric): both values and whether they are identical."""
    rows = []
    for step in PIPELINE_STEPS:
        names = sorted(set(original.get(step, {})) | set(reproduced.get(step, {})))
        for name in names:
            before, after = original.get(step, {}).get(name), reproduced.get(step, {}).get(name)
            rows.append(
                {
                    "step": step,
                    "metric": name,
                    "original": before,
                    "reproduced": after,
                    "match": before is not None and before == after,
                }
            )
    return pd.DataFrame(rows, columns=["step", "metric", "original", "reproduced", "match"])


def format_comparison(table: pd.DataFrame) -> str:
    lines = [f"{'step':<10} {'metric':<28} {'original':>14} {'reproduced':>14}  match"]
    for row in table.itertuples():

        def show(value: Any) -> str:  # a number, or a digest (its first characters)
            return "-" if value is None or pd.isna(value) else value[:12] if isinstance(value, str) else f"{value:.6g}"

        lines.append(
            f"{row.step:<10} {row.metric:<28} {show(row.original):>14} {show(row.reproduced):>14}  "
            f"{'yes' if row.match else 'NO'}"
        )
    return "\n".join(lines)


def run_reproduce(run_id: str, env_manager: str = "uv", source: str | None = None) -> pd.DataFrame:
    """The whole step inside the active run; returns the comparison table."""
    client = MlflowClient()
    original = read_original(client, run_id, source)
    if original.dirty:
        message = (
            f"run {run_id} was made from a working tree with uncommitted changes; "
            f"commit {original.commit[:12]} may not hold the code that produced it"
        )
        warn(message)
    dependence = machine_dependence(original.params)
    if dependence:
        warn(dependence)
    mlflow.set_tags(
        {
            "reproduce.machine_dependent": str(dependence is not None).lower(),
            "reproduce.of_run": run_id,
            "reproduce.commit": original.commit,
            "reproduce.source": redact_uri(original.source),
        }
    )
    where = f" (subdirectory {original.subdirectory})" if original.subdirectory else ""
    say(f"reproduce: running {redact_uri(original.source)} at commit {original.commit}{where}")
    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
        project = checkout(original.source, original.commit, Path(tmp) / "checkout")
        if original.subdirectory:
            project = project / original.subdirectory
        recorded = step_runs(client, original.run)  # before anything is re-run
        deleted = deleted_words(original.run, recorded)
        if deleted:
            warn(deleted)
        tracking_uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        result = rerun(project, original.params, env_manager, tracking_uri)
        fresh = MlflowClient(tracking_uri)
        runs = fresh.search_runs(
            [e.experiment_id for e in fresh.search_experiments()], f"tags.`{STEP_TAG}` = 'main'", max_results=1
        )
        if result.returncode != 0 or not runs or runs[0].info.status != "FINISHED":
            raise PipelineError(f"the re-run of commit {original.commit[:12]} failed; see its output above")
        rerun_steps = step_runs(fresh, runs[0])
        table = compare_metrics(step_metrics(recorded), step_metrics(rerun_steps))
        digests = [steps["load"].data.tags.get("data.digest") for steps in (recorded, rerun_steps)]
    table.loc[len(table)] = ["load", "data.digest (tag)", *digests, digests[0] is not None and digests[0] == digests[1]]
    say(format_comparison(table))
    mismatches = int((~table["match"]).sum())
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp, "comparison.csv"), index=False)
        mlflow.log_artifact(str(Path(tmp, "comparison.csv")))
    mlflow.log_metrics({"n_compared": len(table), "n_mismatched": mismatches})
    mlflow.set_tag("reproduce.match", str(mismatches == 0).lower())
    reproduce_card(table, run_id, original.source, original.commit, mismatches)
    describe(
        f"**reproduce** re-ran main run {code(run_id)} from {code(redact_uri(original.source))} at commit "
        f"{code(original.commit)}: {len(table) - mismatches} of {len(table)} figures match.",
        "The comparison is `comparison.csv`.",
    )
    if mismatches:
        raise PipelineError(f"{mismatches} of {len(table)} metrics differ from run {run_id}; see the table above")
    say(f"reproduced: all {len(table)} metrics of run {run_id} match at commit {original.commit[:12]}")
    return table


@click.command()
@click.option("--run-id", required=True, help="The id of a FINISHED main run.")
@click.option("--env-manager", default="uv", type=click.Choice(["uv", "virtualenv", "conda", "local"]))
@click.option(
    "--source",
    default="auto",
    callback=unset_is_none,
    help="git URL (or path) of the project; auto: the run's own source.",
)
def main(run_id: str, env_manager: str, source: str | None) -> None:
    with step_run("reproduce"):
        run_reproduce(run_id, env_manager=env_manager, source=source)


if __name__ == "__main__":
    run_cli(main, "reproduce")

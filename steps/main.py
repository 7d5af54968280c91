"""Entry point `main`: run load -> featurize -> tune -> train -> evaluate, each as a child MLflow run."""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import mlflow
from mlflow.entities import Run
from mlflow.exceptions import ExecutionException
from mlflow.tracking import MlflowClient

from steps.lib.artifacts import write_json
from steps.lib.cache import cache_key, data_digest, fetched_once, reusable_run, sign_step_run
from steps.lib.console import VERBOSE_VARIABLE, say, terminal
from steps.lib.errors import PipelineError, one_line
from steps.lib.gates import GateOptions, gate_options
from steps.lib.models import DEFAULT_REFIT, FitOptions
from steps.lib.names import (
    BEST_PARAMS,
    DATA_DIR,
    DIRTY_TAG,
    ENTRY_POINT_TAG,
    ENV_MANAGER_TAG,
    ERROR_TAG,
    MODEL_URI_TAG,
    OUTPUT_DIGEST_TAG,
    PARENT_TAG,
    PIPELINE_SUMMARY,
    PROCESS_TAG,
    SPLITS_DIR,
    WARNINGS_TAG,
)
from steps.lib.profiles import DEFAULTS, UNSET, read_profile, resolve, write_resolved
from steps.lib.reaper import killed_as_recorded, reap_dead_runs
from steps.lib.registry import CHAMPION, DEFAULT_REGISTERED_MODEL_NAME, check_model_name
from steps.lib.runner import INT, as_param, clean_up_after, flag, parse_bool, run_cli, step_run, unset_is_none
from steps.lib.search_options import TuneOptions, tune_options
from steps.lib.split_options import SplitOptions, split_options
from steps.lib.step_cards import main_card
from steps.lib.story import NOTE_TAG, four_places, main_story
from steps.lib.tables import DEFAULT_DATA_URI
from steps.lib.uris import artifact_uri, check_uri_credentials, redact_uri

logger = logging.getLogger("steps.main")
# Not resolved: under conda/ (whose steps/ is a symlink) the nested runs must use conda/MLproject.
PROJECT_DIR = Path(os.path.abspath(__file__)).parents[1]


@dataclass
class StepResult:
    step: str
    run_id: str
    status: str
    seconds: float
    key_metric: str = ""
    error: str = ""
    cached: bool = False
    rejected: tuple[str, ...] = ()  # runs with the same cache key that were not reused, and why
    warnings: int = 0  # how many warnings the step's run logged (its tag pipeline.warnings)


def key_metric(step: str, run: Any, metric_hint: str) -> str:
    """The one figure that sums up a step run, for the summary table."""
    metrics = run.data.metrics
    metric = run.data.tags.get("metric", metric_hint)
    name = {
        "load": "n_rows",
        "featurize": "n_train",
        "tune": f"best_val_{metric}",
        "train": f"val_{metric}" if f"val_{metric}" in metrics else f"val_in_sample_{metric}",
        "evaluate": f"test_{metric}",
    }[step]
    if name not in metrics:
        return ""
    value = metrics[name]
    whole = float(value).is_integer() and step in ("load", "featurize")
    return f"{name}={int(value)}" if whole else f"{name}={four_places(value)}"


def launch_step(
    entry_point: str,
    parameters: dict[str, Any],
    env_manager: str,
    experiment_id: str,
    parent_run_id: str,
    metric_hint: str = "",
) -> StepResult:
    """Run one entry point through MLflow Projects, as a child of the active run, and wait for it."""
    client = MlflowClient()
    started = time.monotonic()
    logger.info("running step %s with %s", entry_point, {k: redact_uri(str(v)) for k, v in parameters.items()})
    try:
        submitted = mlflow.projects.run(
            uri=str(PROJECT_DIR),
            entry_point=entry_point,
            parameters=parameters,
            env_manager=env_manager,
            experiment_id=experiment_id,
            run_name=entry_point,
            synchronous=True,
        )
        run_id = submitted.run_id
    except (ExecutionException, KeyboardInterrupt) as stop:
        children = client.search_runs(
            [experiment_id],
            filter_string=(f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{ENTRY_POINT_TAG}` = '{entry_point}'"),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not children or isinstance(stop, KeyboardInterrupt):
            killed_as_recorded(client, children[0] if children else None)
            raise
        run_id = children[0].info.run_id
    run = killed_as_recorded(client, said_why(client, client.get_run(run_id), entry_point))
    return StepResult(
        entry_point,
        run_id,
        run.info.status,
        round(time.monotonic() - started, 1),
        key_metric(entry_point, run, metric_hint) if run.info.status == "FINISHED" else "",
        run.data.tags.get(ERROR_TAG, ""),
        warnings=warnings_of(run),
    )


SILENT_FAILURE = (
    "its process ended before it could record why: killed (the out-of-memory killer does this when memory runs "
    "out; `dmesg` says so), crashed, or cut off from the tracking server; its output above says which: give "
    "the step more memory or a smaller table (tune: lower max_tune_rows or parallelism), or re-run with -P "
    "verbose=true"
)
NEVER_STARTED = (
    "its process ended before the step began (e.g. a module that does not import); its output above says why"
)


def said_why(client: MlflowClient, run: Run, step: str) -> Run:
    """A step run that failed without saying why (its process was killed or crashed; MLflow's wait marks it
    FAILED and nothing more) gets the likely causes as its error and its description, and the log its
    process wrote until then; the temporary files it could not remove are removed."""
    if run.info.status != "FAILED" or run.data.tags.get(ERROR_TAG):
        return run
    clean_up_after(client, run.info.run_id)
    why = SILENT_FAILURE if PROCESS_TAG in run.data.tags else NEVER_STARTED  # the tag is step_run's first act
    client.set_tag(run.info.run_id, ERROR_TAG, why)
    client.set_tag(run.info.run_id, NOTE_TAG, f"**{step} failed**: {why}")
    return client.get_run(run.info.run_id)


def announce_start(step: str) -> None:
    """On a terminal, the step's line as it starts (its end rewrites it in place); elsewhere its end only."""
    if terminal(err=False).isatty():
        say(f"{step:<9} running ...", end="")


def warnings_of(run: Run) -> int:
    """How many warnings a step run logged (its tag; 0 for a run from before step logs, or a bad value)."""
    count = run.data.tags.get(WARNINGS_TAG, "0")
    return int(count) if count.isdigit() else 0


def announce_end(result: StepResult) -> None:
    """One line per step as it ends: name, status, seconds, ran or cached, key metric, its warnings' count."""
    warnings = result.warnings
    noted = f"  ({warnings} warning{'s' * (warnings != 1)}: logs/{result.step}.log)" if warnings else ""
    cache = "cached" if result.cached else "ran"
    line = f"{result.step:<9} {result.status:<8} {result.seconds:6.1f} s  {cache:<6}  {result.key_metric}{noted}"
    say(("\r\033[K" if terminal(err=False).isatty() else "") + line.rstrip())


def git_dirty(directory: Path) -> bool | None:
    """Whether the git working tree has uncommitted changes (ignored files aside); None outside git."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=directory, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(status.stdout.strip()) if status.returncode == 0 else None


def format_summary(results: list[StepResult]) -> str:
    """The step table printed at the end of main."""
    header = ("step", "run id", "status", "seconds", "key metric", "cache")
    rows = [
        (r.step, r.run_id, r.status, f"{r.seconds:.1f}", r.key_metric, f"cached ({r.run_id})" if r.cached else "ran")
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines += [f"{r.step}: {why}" for r in results for why in r.rejected]
    return "\n".join(lines)


def ui_hint(tracking_uri: str) -> str:
    """How to look at the runs in the MLflow UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {redact_uri(tracking_uri)} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri}  (then open http://127.0.0.1:5000)"


@dataclass
class Pipeline:
    """One main run: where its steps go, how they run, and what they gave so far."""

    client: MlflowClient
    experiment_id: str
    main_run_id: str
    env_manager: str
    use_cache: bool
    run_tags: dict[str, str]  # set on every step run main starts
    results: list[StepResult] = field(default_factory=list)

    @classmethod
    def start(cls, use_cache: bool) -> Pipeline:
        """Inside main's run: reap the runs of dead processes, note the env manager and the git state."""
        client = MlflowClient()
        active = mlflow.active_run()
        main_run_id, experiment_id = active.info.run_id, active.info.experiment_id
        reap_dead_runs(client, experiment_id, main_run_id)
        # MLflow does not hand the parent's --env-manager to nested runs (mlflow#9174): pass it on.
        env_manager = client.get_run(main_run_id).data.tags.get(ENV_MANAGER_TAG, "local")
        mlflow.set_tag("env_manager", env_manager)
        dirty = git_dirty(PROJECT_DIR)
        run_tags = {} if dirty is None else {DIRTY_TAG: str(dirty).lower()}
        mlflow.set_tags(run_tags)
        if dirty:
            logger.warning("the working tree has uncommitted changes: these runs are flagged %s=true", DIRTY_TAG)
        return cls(client, experiment_id, main_run_id, env_manager, use_cache, run_tags)

    def step(self, entry_point: str, parameters: dict[str, Any], inputs: dict[str, str]) -> Run:
        """The step's FINISHED run: reused from the cache, or run now; a failed step ends the pipeline."""
        tuned_metric = next((r.key_metric for r in self.results if r.step == "tune"), "")
        metric_hint = tuned_metric.partition("=")[0].removeprefix("best_val_")
        started = time.monotonic()
        key = cache_key(PROJECT_DIR, entry_point, parameters, inputs, self.env_manager)
        announce_start(entry_point)
        cached, rejected = (None, [])
        if self.use_cache:
            cached, rejected = reusable_run(self.client, self.experiment_id, entry_point, key)
        for why in rejected:
            logger.warning("step %s: %s", entry_point, why)
        if cached is not None:
            logger.info("step %s: reusing run %s (same cache key)", entry_point, cached.info.run_id)
            seconds = round(time.monotonic() - started, 1)
            metric = key_metric(entry_point, cached, metric_hint)
            result = StepResult(
                entry_point, cached.info.run_id, "FINISHED", seconds, metric, cached=True, warnings=warnings_of(cached)
            )
        else:
            result = launch_step(
                entry_point, parameters, self.env_manager, self.experiment_id, self.main_run_id, metric_hint
            )
            for name, value in self.run_tags.items():
                self.client.set_tag(result.run_id, name, value)
            if result.status == "FINISHED":
                sign_step_run(self.client, result.run_id, key)
        result.rejected = tuple(rejected)
        self.results.append(result)
        announce_end(result)
        mlflow.set_tags(
            {f"steps.{entry_point}.run_id": result.run_id, f"steps.{entry_point}.cached": str(result.cached).lower()}
        )
        if result.status != "FINISHED":
            say(format_summary(self.results))
            raise PipelineError(f"step '{entry_point}' failed: {result.error or result.status}")
        return self.client.get_run(result.run_id)


def output_digest(run: Run) -> str:
    return run.data.tags[OUTPUT_DIGEST_TAG]


def run_steps(
    pipeline: Pipeline,
    data_uri: str,
    target: str | None,
    task: str | None,
    registered_model_name: str,
    seed: int,
    tune: TuneOptions,
    gates: GateOptions,
    split: SplitOptions,
    fit: FitOptions,
    data_copy: Path | None = None,
) -> Run:
    """load -> featurize -> tune -> train -> evaluate, each fed the artifact URIs of the one before; evaluate's run."""
    load_params = {"data_uri": data_uri, "target": as_param(target), "data_copy": as_param(data_copy, "none")}
    load = pipeline.step("load", load_params, {"data": data_digest(data_uri, data_copy)})
    featurize = pipeline.step(
        "featurize",
        {"raw_data_uri": artifact_uri(load.info.run_id, DATA_DIR), "task": as_param(task), "seed": seed}
        | split.as_params(),
        {"raw_data": output_digest(load)},
    )
    if featurize.data.tags.get("task") in ("classification", "regression"):  # a bound of the other task: said now
        gates.thresholds(featurize.data.tags["task"])
    splits_uri = artifact_uri(featurize.info.run_id, SPLITS_DIR)
    splits = {"splits": output_digest(featurize)}
    tuned = pipeline.step("tune", {"splits_uri": splits_uri, "seed": seed, **tune.as_params()}, splits)
    train = pipeline.step(
        "train",
        {"splits_uri": splits_uri, "params_uri": artifact_uri(tuned.info.run_id, BEST_PARAMS), "seed": seed}
        | {"refit": fit.refit, "threads": fit.threads},
        splits | {"best_params": output_digest(tuned)},
    )
    # MLflow 3 stores a logged model under its own id: pass the URI train recorded, models:/<model id>.
    evaluate_params = {
        "model_uri": train.data.tags[MODEL_URI_TAG],
        "splits_uri": splits_uri,
        "registered_model_name": registered_model_name,
        "metric": as_param(tune.metric),
        "seed": seed,
        "threads": fit.threads,
        **gates.as_params(),
    }
    return pipeline.step("evaluate", evaluate_params, {"model": output_digest(train)} | splits)


def record_outcome(pipeline: Pipeline, evaluate: Run) -> dict[str, str]:
    """The registered version and its alias as the registry has it now, as tags and in the summary artifact."""
    outcome = evaluate.data.tags
    registered = {k: outcome.get(f"registered_model.{k}", "") for k in ("name", "version")}
    # The alias as the registry has it now: a cached evaluate may predate a newer champion.
    aliases = pipeline.client.get_model_version(registered["name"], registered["version"]).aliases
    registered["alias"] = CHAMPION if CHAMPION in aliases else ""
    mlflow.set_tags({f"registered_model.{k}": v for k, v in registered.items()})
    with tempfile.TemporaryDirectory() as tmp:
        summary = {"steps": [asdict(r) for r in pipeline.results], "registered_model": registered}
        write_json(Path(tmp, PIPELINE_SUMMARY), summary)
        mlflow.log_artifact(str(Path(tmp, PIPELINE_SUMMARY)))
    return registered


def print_summary(pipeline: Pipeline, registered: dict[str, str], decision: str) -> None:
    """The human-readable end of main: the step table, the version, how to load it and see the runs."""
    name, version = registered["name"], registered["version"]
    say("\n" + format_summary(pipeline.results))
    alias = f"@{CHAMPION}" if registered["alias"] else " (not champion)"
    say(f"\nregistered model: {name} version {version}{alias}\n  {decision}")
    where = f"{name}@{CHAMPION}" if registered["alias"] else f"{name}/{version}"  # no champion may exist yet
    say(f"  load it: mlflow.pyfunc.load_model('models:/{where}')")
    say(f"main run: {pipeline.main_run_id}")
    say(f"open the UI: {ui_hint(mlflow.get_tracking_uri())}")


def run_main(
    data_uri: str = DEFAULT_DATA_URI,
    target: str | None = None,
    task: str | None = None,
    registered_model_name: str = DEFAULT_REGISTERED_MODEL_NAME,
    seed: int = 42,
    use_cache: bool = True,
    tune: TuneOptions | None = None,
    gates: GateOptions | None = None,
    split: SplitOptions | None = None,
    fit: FitOptions | None = None,
) -> list[StepResult]:
    """Chain the steps through `mlflow.projects.run`, passing artifact URIs from one to the next.

    A step whose cache key matches a FINISHED run with its outputs intact is not run again: that
    run is reused, so a re-run after a failure resumes at the failed step. `tune` goes to tune as
    its params (algo, models, parallelism, ...), `gates` to evaluate, `split` to featurize, `fit` to train
    and evaluate (threads resolved here: the number is recorded, as reproduce replays it).
    """
    pipeline = Pipeline.start(use_cache)
    tune, gates = tune or TuneOptions(), gates or GateOptions()
    split = (split or SplitOptions()).check()
    fit = (fit or FitOptions()).check()
    mlflow.set_tag("threads", str(fit.threads))
    with fetched_once(data_uri) as copy:  # a URL is downloaded once: for load's cache key and for load to read
        evaluate = run_steps(
            pipeline, data_uri, target, task, registered_model_name, seed, tune, gates, split, fit, copy
        )
    registered = record_outcome(pipeline, evaluate)
    main_story(pipeline.experiment_id, pipeline.results, registered, evaluate)
    main_card(pipeline.results, registered, evaluate.data.tags.get("champion.decision", ""))
    print_summary(pipeline, registered, evaluate.data.tags.get("champion.decision", ""))
    return pipeline.results


@click.command()
@click.option("--data-uri", default=DEFAULT_DATA_URI, show_default=True)
@click.option("--target", default="auto", callback=unset_is_none)
@click.option("--task", default="auto", callback=unset_is_none)
@click.option("--registered-model-name", default=DEFAULT_REGISTERED_MODEL_NAME, show_default=True)
@click.option("--seed", default=42, type=INT)
@click.option("--use-cache", default="true", help="false: run every step again.")
@tune_options
@gate_options
@split_options
@click.option("--refit", default=DEFAULT_REFIT, help="train fits on: train, or train+validation.")
@click.option("--threads", default=0, type=INT, help="Threads of train's fit and evaluate's; 0: this machine's cores.")
def typed_main(
    data_uri: str,
    target: str | None,
    task: str | None,
    registered_model_name: str,
    seed: int,
    use_cache: str,
    split: str,
    time_column: str | None,
    group_column: str | None,
    refit: str,
    threads: int,
    **options: Any,
) -> dict[str, Any]:
    """main's params, resolved (see `main`), with their types: checked; run_main's arguments."""
    check_model_name(registered_model_name)
    return {
        "data_uri": data_uri,
        "target": target,
        "task": task,
        "registered_model_name": registered_model_name,
        "seed": seed,
        "use_cache": parse_bool("use_cache", use_cache),
        "tune": TuneOptions.from_cli(options),
        "gates": GateOptions.from_cli(options),
        "split": SplitOptions(split, time_column, group_column).check(),
        "fit": FitOptions(refit, threads).check(),
    }


def resolve_params(where: str | None, typed: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """main's params as -P, the profile and the defaults give them (in that order), and where each came from."""
    values, sources = resolve(typed, read_profile(where) if where else {})
    check_uri_credentials("data_uri", values["data_uri"])  # before it is recorded anywhere
    return values, sources


def checked_arguments(values: dict[str, str], sources: dict[str, str]) -> dict[str, Any]:
    """run_main's arguments from the resolved values; a value of the wrong type is a one-line error naming the
    param and where it came from."""
    args = [item for key, value in values.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    try:
        context = typed_main.make_context("main", args)
    except click.ClickException as error:
        param = getattr(getattr(error, "param", None), "name", None)
        origin = f" (from the {sources[param]})" if param in sources and sources[param] != "typed" else ""
        raise PipelineError(one_line(error.format_message()) + origin) from None
    with context:
        return typed_main.invoke(context)


def record_resolved(where: str | None, values: dict[str, str], sources: dict[str, str]) -> None:
    """The resolved params, once checked: profile/resolved.yaml and the params resolved.<param> (what reproduce
    replays: params, unlike tags, cannot be changed once logged); the values a profile gave, in main's log."""
    mlflow.set_tag("profile", where or "none")
    mlflow.log_params({f"resolved.{key}": value for key, value in values.items()})
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(write_resolved(Path(tmp), where, values, sources)), "profile")
    for key, source in sources.items():
        if source == "profile":
            logger.info("%s = %s (from the profile %s)", key, values[key], where)


def profile_params(command: Any) -> Any:
    """One text option per param a profile may set, default `auto` (resolved in resolve_params)."""
    for key in reversed(DEFAULTS):
        command = click.option(f"--{key.replace('_', '-')}", "typed_" + key, default=UNSET)(command)
    return command


@click.command()
@click.option("--profile", default="none", callback=unset_is_none, help="A YAML file of main's params (path or URI).")
@click.option("--verbose", default="false", callback=flag, help="true: every step's full log on the console too.")
@profile_params
def main(profile: str | None, verbose: bool, **typed: str) -> None:
    if verbose:  # before main's log starts; its steps inherit it
        os.environ[VERBOSE_VARIABLE] = "true"
    with step_run("main"):
        given = {key.removeprefix("typed_"): value for key, value in typed.items()}
        values, sources = resolve_params(profile, given)
        arguments = checked_arguments(values, sources)
        record_resolved(profile, values, sources)
        run_main(**arguments)


if __name__ == "__main__":
    run_cli(main, "main")

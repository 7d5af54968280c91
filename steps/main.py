"""Entry point `main`: run load -> featurize -> tune -> train -> evaluate, each as a child MLflow run."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import mlflow
import yaml
from mlflow.entities import Run
from mlflow.exceptions import ExecutionException, MlflowException
from mlflow.tracking import MlflowClient

from steps.common import (
    DEFAULT_DATA_URI,
    DEFAULT_REGISTERED_MODEL_NAME,
    DIRTY_TAG,
    ERROR_TAG,
    INT,
    OUTPUT_DIGEST_TAG,
    PARENT_TAG,
    PROCESS_TAG,
    STEP_TAG,
    PipelineError,
    artifact_uri,
    check_uri_credentials,
    digest_json,
    digest_path,
    fetch_local,
    one_line,
    parse_bool,
    process_alive,
    redact_uri,
    run_cli,
    step_run,
    write_json,
)
from steps.evaluate import THRESHOLD_PARAMS, parse_min_delta, threshold_options
from steps.tune import parse_timeout, validate_search_options

logger = logging.getLogger("steps.main")
# Not resolved: under conda/ (whose steps/ is a symlink) the nested runs must use conda/MLproject.
PROJECT_DIR = Path(os.path.abspath(__file__)).parents[1]
ENV_MANAGER_TAG = "mlflow.project.env"  # set by `mlflow run` for every env manager but local


@dataclass
class StepResult:
    step: str
    run_id: str
    status: str
    seconds: float
    key_metric: str = ""
    error: str = ""
    cached: bool = False


# --------------------------------------------------------------------------- the step cache

CACHE_KEY_TAG = "cache.key"
# Params that point at an earlier step's run: the key uses what that run produced instead.
URI_PARAMS = frozenset({"raw_data_uri", "splits_uri", "params_uri", "model_uri"})
ENV_FILES = ("python_env.yaml", "conda.yaml", "requirements.txt", "requirements.lock")
SHARED_CODE = ("steps/__init__.py", "steps/common.py")


def entry_point_spec(entry_point: str) -> dict[str, Any]:
    """The entry point as MLproject declares it (params with types, command)."""
    project = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())
    return project["entry_points"][entry_point]


def normalise_value(kind: str, value: Any) -> Any:
    """A param as its declared type: 1e-05 and 0.00001 are the same float, "3" and 3 the same int."""
    if kind in ("int", "float"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        return int(number) if kind == "int" and number.is_integer() else number
    return str(value)


def normalise_params(entry_point: str, parameters: dict[str, Any]) -> dict[str, Any]:
    declared = entry_point_spec(entry_point)["parameters"]
    return {
        name: normalise_value(declared.get(name, {}).get("type", "string"), value)
        for name, value in sorted(parameters.items())
        if name not in URI_PARAMS
    }


def step_modules(entry_point: str) -> list[str]:
    """The step's module and every steps module it imports, directly or not (model_card for evaluate, ...)."""
    found: set[str] = set()
    pending = [f"steps/{entry_point}.py"]
    while pending:
        module = pending.pop()
        if module in found or not (PROJECT_DIR / module).exists():
            continue
        found.add(module)
        for node in ast.walk(ast.parse((PROJECT_DIR / module).read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            pending += [f"{name.replace('.', '/')}.py" for name in names if name.startswith("steps.")]
    return sorted(found | set(SHARED_CODE))


def code_digest(entry_point: str) -> str:
    """The step's modules (its own and those it imports), the shared module, and its MLproject declaration."""
    files = step_modules(entry_point)
    return digest_json(
        {"files": {f: digest_path(PROJECT_DIR / f) for f in files}, "entry_point": entry_point_spec(entry_point)}
    )


def env_digest() -> str:
    """The environment spec: python_env.yaml and the requirement files it installs."""
    return digest_json({f: digest_path(PROJECT_DIR / f) for f in ENV_FILES if (PROJECT_DIR / f).exists()})


def data_digest(data_uri: str) -> str:
    """The content of the data load will read (a bundled set: its name and scikit-learn's version)."""
    if data_uri.startswith("sklearn:"):
        import sklearn

        return f"{data_uri}@scikit-learn=={sklearn.__version__}"
    try:
        return digest_path(fetch_local(data_uri))
    except PipelineError:  # load itself reports the problem
        return f"unavailable:{redact_uri(data_uri)}"


def cache_key(entry_point: str, parameters: dict[str, Any], inputs: dict[str, str], env_manager: str) -> str:
    """What decides a step's output: entry point, typed params, code, environment, input digests."""
    return digest_json(
        {
            "entry_point": entry_point,
            "params": normalise_params(entry_point, parameters),
            "code": code_digest(entry_point),
            "env": env_digest(),
            "env_manager": env_manager,
            "inputs": inputs,
        }
    )


def outputs_exist(client: MlflowClient, entry_point: str, run: Run) -> bool:
    """Whether what the run produced is still there to be reused."""
    try:
        if entry_point == "train":
            return bool(mlflow.artifacts.list_artifacts(artifact_uri=run.data.tags["model_uri"]))
        if entry_point == "evaluate":
            tags = run.data.tags
            client.get_model_version(tags["registered_model.name"], tags["registered_model.version"])
            return bool(client.list_artifacts(run.info.run_id, "evaluation"))
        expected = {"load": "data", "featurize": "splits", "tune": "best_params.json"}[entry_point]
        return any(artifact.path == expected for artifact in client.list_artifacts(run.info.run_id))
    except Exception:  # a deleted run, artifact or model version: not reusable
        return False


def reusable_run(client: MlflowClient, experiment_id: str, entry_point: str, key: str) -> Run | None:
    """The newest FINISHED run with this cache key whose outputs still exist."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CACHE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=10,
    )
    return next(
        (run for run in runs if OUTPUT_DIGEST_TAG in run.data.tags and outputs_exist(client, entry_point, run)), None
    )


def reap_dead_runs(client: MlflowClient, experiment_id: str, main_run_id: str) -> list[str]:
    """Mark KILLED the RUNNING step runs whose process on this machine is gone (kill -9, a crash, a lost server).

    MLflow leaves such runs RUNNING forever; the cache never reuses them (it takes FINISHED runs only).
    Runs of live processes, and runs from other machines, are left alone. A model version that a dead
    evaluate registered but never decided on (no `gates.passed` tag) is deleted: nothing half-registered.
    """
    reaped = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        identity = run.data.tags.get(PROCESS_TAG, "")
        if not identity or run.info.run_id == main_run_id or process_alive(identity) is not False:
            continue
        try:
            if run.data.tags.get(STEP_TAG) == "evaluate":
                delete_undecided_versions(client, run.info.run_id)
            client.set_tag(
                run.info.run_id,
                ERROR_TAG,
                f"its process ({identity}) ended without closing the run; marked KILLED by main run {main_run_id}",
            )
            client.set_terminated(run.info.run_id, status="KILLED")
        except MlflowException as error:  # e.g. no permission on another user's run: not main's to fail over
            logger.warning("could not mark run %s KILLED: %s", run.info.run_id, one_line(str(error), 200))
            continue
        reaped.append(run.info.run_id)
    if reaped:
        logger.warning("marked %d run(s) of dead processes KILLED: %s", len(reaped), ", ".join(reaped))
    return reaped


def delete_undecided_versions(client: MlflowClient, evaluate_run_id: str) -> None:
    """Delete the versions a dead evaluate registered before its gates decided (so no alias points at them)."""
    for version in client.search_model_versions(f"tags.`evaluate_run_id` = '{evaluate_run_id}'"):
        if "gates.passed" not in version.tags:
            logger.warning("deleting %s v%s: its evaluate died before deciding", version.name, version.version)
            client.delete_model_version(version.name, version.version)


def key_metric(step: str, run: Any, metric_hint: str) -> str:
    """The one figure that sums up a step run, for the summary table."""
    metrics = run.data.metrics
    metric = run.data.tags.get("metric", metric_hint)
    name = {
        "load": "n_rows",
        "featurize": "n_train",
        "tune": f"best_val_{metric}",
        "train": f"val_{metric}",
        "evaluate": f"test_{metric}",
    }[step]
    if name not in metrics:
        return ""
    value = metrics[name]
    return (
        f"{name}={int(value)}" if float(value).is_integer() and step in ("load", "featurize") else f"{name}={value:.4f}"
    )


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
    except ExecutionException:
        children = client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`mlflow.project.entryPoint` = '{entry_point}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not children:
            raise
        run_id = children[0].info.run_id
    run = client.get_run(run_id)
    return StepResult(
        entry_point,
        run_id,
        run.info.status,
        round(time.monotonic() - started, 1),
        key_metric(entry_point, run, metric_hint) if run.info.status == "FINISHED" else "",
        run.data.tags.get(ERROR_TAG, ""),
    )


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
    return "\n".join(lines)


def ui_hint(tracking_uri: str) -> str:
    """How to look at the runs in the MLflow UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {redact_uri(tracking_uri)} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri}  (then open http://127.0.0.1:5000)"


def run_main(
    data_uri: str,
    target: str,
    task: str,
    max_evals: int,
    metric: str,
    registered_model_name: str,
    seed: int,
    use_cache: bool = True,
    tune_options: dict[str, Any] | None = None,
    evaluate_options: dict[str, Any] | None = None,
) -> list[StepResult]:
    """Chain the steps through `mlflow.projects.run`, passing artifact URIs from one to the next.

    A step whose cache key matches a FINISHED run with its outputs intact is not run again: that
    run is reused, so a re-run after a failure resumes at the failed step. `tune_options` go to tune
    as they are (algo, models, parallelism, ...), `evaluate_options` to evaluate (the gates).
    """
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
    results: list[StepResult] = []

    def step(entry_point: str, parameters: dict[str, Any], inputs: dict[str, str]) -> Run:
        tuned_metric = next((r.key_metric for r in results if r.step == "tune"), "")
        metric_hint = tuned_metric.partition("=")[0].removeprefix("best_val_")
        started = time.monotonic()
        key = cache_key(entry_point, parameters, inputs, env_manager)
        cached = reusable_run(client, experiment_id, entry_point, key) if use_cache else None
        if cached is not None:
            logger.info("step %s: reusing run %s (same cache key)", entry_point, cached.info.run_id)
            result = StepResult(
                entry_point,
                cached.info.run_id,
                "FINISHED",
                round(time.monotonic() - started, 1),
                key_metric(entry_point, cached, metric_hint),
                cached=True,
            )
        else:
            result = launch_step(entry_point, parameters, env_manager, experiment_id, main_run_id, metric_hint)
            for name, value in run_tags.items():
                client.set_tag(result.run_id, name, value)
            if result.status == "FINISHED":
                client.set_tag(result.run_id, CACHE_KEY_TAG, key)
        results.append(result)
        mlflow.set_tags(
            {f"steps.{entry_point}.run_id": result.run_id, f"steps.{entry_point}.cached": str(result.cached).lower()}
        )
        if result.status != "FINISHED":
            print(format_summary(results), flush=True)
            raise PipelineError(f"step '{entry_point}' failed: {result.error or result.status}")
        return client.get_run(result.run_id)

    def digest(run: Run) -> str:
        return run.data.tags[OUTPUT_DIGEST_TAG]

    load = step("load", {"data_uri": data_uri, "target": target}, {"data": data_digest(data_uri)})
    featurize = step(
        "featurize",
        {"raw_data_uri": artifact_uri(load.info.run_id, "data"), "task": task, "seed": seed},
        {"raw_data": digest(load)},
    )
    splits_uri = artifact_uri(featurize.info.run_id, "splits")
    tune = step(
        "tune",
        {"splits_uri": splits_uri, "max_evals": max_evals, "metric": metric, "seed": seed, **(tune_options or {})},
        {"splits": digest(featurize)},
    )
    train = step(
        "train",
        {"splits_uri": splits_uri, "params_uri": artifact_uri(tune.info.run_id, "best_params.json"), "seed": seed},
        {"splits": digest(featurize), "best_params": digest(tune)},
    )
    # MLflow 3 stores a logged model under its own id: pass the URI train recorded, models:/<model id>.
    evaluate = step(
        "evaluate",
        {
            "model_uri": train.data.tags["model_uri"],
            "splits_uri": splits_uri,
            "registered_model_name": registered_model_name,
            "metric": metric,
            **(evaluate_options or {}),
        },
        {"model": digest(train), "splits": digest(featurize)},
    )
    outcome = evaluate.data.tags
    registered = {k: outcome.get(f"registered_model.{k}", "") for k in ("name", "version")}
    # The alias as the registry has it now: a cached evaluate may predate a newer champion.
    aliases = client.get_model_version(registered["name"], registered["version"]).aliases
    registered["alias"] = "champion" if "champion" in aliases else ""
    mlflow.set_tags({f"registered_model.{k}": v for k, v in registered.items()})
    with tempfile.TemporaryDirectory() as tmp:
        write_json(
            Path(tmp, "pipeline_summary.json"), {"steps": [asdict(r) for r in results], "registered_model": registered}
        )
        mlflow.log_artifact(str(Path(tmp, "pipeline_summary.json")))

    alias = (
        f"@{registered['alias']}"
        if registered["alias"]
        else " (not champion: " + outcome.get("champion.decision", "") + ")"
    )
    print("\n" + format_summary(results))
    print(f"\nregistered model: {registered['name']} version {registered['version']}{alias}")
    print(f"  {outcome.get('champion.decision', '')}")
    print(f"  load it: mlflow.pyfunc.load_model('models:/{registered['name']}@champion')")
    print(f"main run: {main_run_id}")
    print(f"open the UI: {ui_hint(mlflow.get_tracking_uri())}", flush=True)
    return results


@click.command()
@click.option("--data-uri", default=DEFAULT_DATA_URI, show_default=True)
@click.option("--target", default="auto")
@click.option("--task", default="auto")
@click.option("--max-evals", default=20, type=INT, show_default=True)
@click.option("--metric", default="auto")
@click.option("--registered-model-name", default=DEFAULT_REGISTERED_MODEL_NAME, show_default=True)
@click.option("--seed", default=42, type=INT)
@click.option("--use-cache", default="true", help="false: run every step again.")
@click.option("--algo", default="tpe", help="tune: tpe, random, anneal or grid.")
@click.option("--models", default="all", help="tune: comma-separated model families; all: every one.")
@click.option("--parallelism", default=1, type=INT, help="tune: trials at once.")
@click.option("--early-stop-rounds", default=0, type=INT, help="tune: stop after this many trials without progress.")
@click.option("--timeout", default="none", help="tune: stop starting trials after this many seconds.")
@click.option("--cv-folds", default=0, type=INT, help="tune: k-fold CV on the training split; 0: validation.")
@click.option("--backend", default="local", help="tune: local or spark.")
@click.option("--min-delta", default="0", help="evaluate: beat the champion by at least this.")
@threshold_options
def main(
    data_uri: str,
    target: str,
    task: str,
    max_evals: int,
    metric: str,
    registered_model_name: str,
    seed: int,
    use_cache: str,
    **options: Any,
) -> None:
    evaluate_names = ("min_delta", *THRESHOLD_PARAMS.values())
    evaluate_options = {name: options.pop(name) for name in evaluate_names}
    chosen = {"tune_options": options, "evaluate_options": evaluate_options}
    with step_run("main"):
        check_uri_credentials("data_uri", data_uri)  # before any step records it as a param
        parse_min_delta(evaluate_options["min_delta"])
        cache = parse_bool("use_cache", use_cache)
        validate_search_options(
            options["algo"],
            max_evals,
            options["parallelism"],
            options["early_stop_rounds"],
            options["cv_folds"],
            metric,
            options["models"],
            options["backend"],
        )
        parse_timeout(options["timeout"])
        run_main(data_uri, target, task, max_evals, metric, registered_model_name, seed, cache, **chosen)


if __name__ == "__main__":
    run_cli(main, "main")

"""Entry point `main`: run load -> featurize -> tune -> train -> evaluate, each as a child MLflow run."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import mlflow
from mlflow.exceptions import ExecutionException
from mlflow.tracking import MlflowClient

from steps.common import (
    DEFAULT_DATA_URI,
    DEFAULT_REGISTERED_MODEL_NAME,
    ERROR_TAG,
    PARENT_TAG,
    PipelineError,
    artifact_uri,
    redact_uri,
    run_cli,
    step_run,
    write_json,
)

logger = logging.getLogger("steps.main")
PROJECT_DIR = Path(__file__).resolve().parents[1]
ENV_MANAGER_TAG = "mlflow.project.env"  # set by `mlflow run` for every env manager but local


@dataclass
class StepResult:
    step: str
    run_id: str
    status: str
    seconds: float
    key_metric: str = ""
    error: str = ""


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


def format_summary(results: list[StepResult]) -> str:
    """The step table printed at the end of main."""
    header = ("step", "run id", "status", "seconds", "key metric")
    rows = [(r.step, r.run_id, r.status, f"{r.seconds:.1f}", r.key_metric) for r in results]
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
    data_uri: str, target: str, task: str, max_evals: int, metric: str, registered_model_name: str, seed: int
) -> list[StepResult]:
    """Chain the steps through `mlflow.projects.run`, passing artifact URIs from one to the next."""
    client = MlflowClient()
    active = mlflow.active_run()
    main_run_id, experiment_id = active.info.run_id, active.info.experiment_id
    # MLflow does not hand the parent's --env-manager to nested runs (mlflow#9174): pass it on.
    env_manager = client.get_run(main_run_id).data.tags.get(ENV_MANAGER_TAG, "local")
    mlflow.set_tag("env_manager", env_manager)
    results: list[StepResult] = []

    def step(entry_point: str, parameters: dict[str, Any]) -> str:
        tuned_metric = next((r.key_metric for r in results if r.step == "tune"), "")
        metric_hint = tuned_metric.partition("=")[0].removeprefix("best_val_")
        result = launch_step(entry_point, parameters, env_manager, experiment_id, main_run_id, metric_hint)
        results.append(result)
        mlflow.set_tag(f"steps.{entry_point}.run_id", result.run_id)
        if result.status != "FINISHED":
            print(format_summary(results), flush=True)
            raise PipelineError(f"step '{entry_point}' failed: {result.error or result.status}")
        return result.run_id

    load_id = step("load", {"data_uri": data_uri, "target": target})
    featurize_id = step("featurize", {"raw_data_uri": artifact_uri(load_id, "data"), "task": task, "seed": seed})
    splits_uri = artifact_uri(featurize_id, "splits")
    tune_id = step("tune", {"splits_uri": splits_uri, "max_evals": max_evals, "metric": metric, "seed": seed})
    train_id = step(
        "train", {"splits_uri": splits_uri, "params_uri": artifact_uri(tune_id, "best_params.json"), "seed": seed}
    )
    # MLflow 3 stores a logged model under its own id: pass the URI train recorded, models:/<model id>.
    model_uri = client.get_run(train_id).data.tags["model_uri"]
    evaluate_id = step(
        "evaluate",
        {
            "model_uri": model_uri,
            "splits_uri": splits_uri,
            "registered_model_name": registered_model_name,
            "metric": metric,
        },
    )
    outcome = client.get_run(evaluate_id).data.tags
    registered = {k: outcome.get(f"registered_model.{k}", "") for k in ("name", "version", "alias")}
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
@click.option("--max-evals", default=20, type=int, show_default=True)
@click.option("--metric", default="auto")
@click.option("--registered-model-name", default=DEFAULT_REGISTERED_MODEL_NAME, show_default=True)
@click.option("--seed", default=42, type=int)
def main(
    data_uri: str, target: str, task: str, max_evals: int, metric: str, registered_model_name: str, seed: int
) -> None:
    with step_run("main"):
        run_main(data_uri, target, task, max_evals, metric, registered_model_name, seed)


if __name__ == "__main__":
    run_cli(main, "main")

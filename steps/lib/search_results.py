"""What a search leaves: the leaderboard, the trial records a later search resumes from, the figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hyperopt import JOB_STATE_DONE, STATUS_FAIL, STATUS_OK, Trials
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from steps.lib.artifacts import fetched
from steps.lib.errors import PipelineError
from steps.lib.metrics import metric_loss
from steps.lib.models import MODEL_FAMILIES
from steps.lib.names import STEP_TAG, TRIALS_FILE
from steps.lib.uris import artifact_uri


def leaderboard(trials: Trials, metric: str) -> pd.DataFrame:
    """All trials, best first; one column per hyperparameter."""
    rows = []
    for result in trials.results:
        row = {
            "trial": result.get("trial"),
            "status": result.get("status"),
            "run_id": result.get("run_id", ""),
            "model": result.get("model", ""),
            metric: result.get("value"),
            "loss": result.get("loss"),
            "fit_seconds": result.get("seconds"),
            "error": result.get("error", ""),
        }
        row |= {f"{result.get('model')}.{k}": v for k, v in result.get("params", {}).items()}
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["loss", "trial"], na_position="last").reset_index(drop=True)


def trials_to_records(trials: Trials) -> list[dict[str, Any]]:
    """What a later search needs to continue this one: each trial's sampled values and result, as JSON."""
    return [
        _plain({"tid": doc["tid"], "idxs": doc["misc"]["idxs"], "vals": doc["misc"]["vals"], "result": doc["result"]})
        for doc in trials.trials
    ]


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, recursively, so JSON keeps their type (tids must stay ints)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def trials_from_records(records: list[dict[str, Any]]) -> Trials:
    """Rebuild a hyperopt Trials object from `trials_to_records` output (no pickle involved)."""
    trials = Trials()
    for record in records:
        misc = {
            "tid": record["tid"],
            "cmd": ("domain_attachment", "FMinIter_Domain"),
            "workdir": None,
            "idxs": record["idxs"],
            "vals": record["vals"],
        }
        [doc] = trials.new_trial_docs([record["tid"]], [None], [record["result"]], [misc])
        doc["state"] = JOB_STATE_DONE
        trials.insert_trial_doc(doc)
    trials.refresh()
    return trials


def load_previous_search(client: MlflowClient, run_id: str) -> tuple[Run, Trials]:
    """The tune run to resume and its trials."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PipelineError(f"resume_from '{run_id}' does not exist; pass the run id of a tune run") from None
    if run.data.tags.get(STEP_TAG) != "tune":
        raise PipelineError(f"resume_from '{run_id}' is not a tune run; pass the run id of a tune run")
    with fetched(artifact_uri(run_id, TRIALS_FILE), "the trials to resume") as path:
        try:
            records = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise PipelineError(f"resume_from '{run_id}': its {TRIALS_FILE} is not JSON; start a new search") from None
    check_trial_records(records, f"resume_from '{run_id}'")
    return run, trials_from_records(records)


def check_trial_records(records: Any, shown: str) -> None:
    """Trial records read from a store are checked as fresh trials are: a known family, hyperparameters within
    the space's bounds, finite losses, well-formed hyperopt fields (anyone could have written the file)."""

    def bad(number: int, why: str) -> PipelineError:
        return PipelineError(
            f"{shown}: trial record {number} is not valid ({why}); resume from a tune run this pipeline logged, "
            "or start a new search"
        )

    if not isinstance(records, list) or not records:
        raise bad(0, "not a list of trials")
    seen: set[int] = set()
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("result"), dict):
            raise bad(number, "not a trial")
        tid = record.get("tid")
        if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0 or tid in seen:
            raise bad(number, f"tid {tid!r}")
        seen.add(tid)
        for field in ("idxs", "vals"):
            values = record.get(field)
            if not isinstance(values, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(plain_value(x) for x in v) for k, v in values.items()
            ):
                raise bad(number, f"its {field}")
        result = record["result"]
        if result.get("status") not in (STATUS_OK, STATUS_FAIL):
            raise bad(number, f"status {result.get('status')!r}")
        family = MODEL_FAMILIES.get(result.get("model"))  # type: ignore[arg-type]
        if family is None:
            raise bad(number, f"unknown model {result.get('model')!r}")
        params = result.get("params", {})
        try:
            if not isinstance(params, dict):
                raise PipelineError("params are not a mapping")
            family.resolve(params)
        except PipelineError as error:
            raise bad(number, str(error)) from None
        numbers = [result.get("loss"), result.get("value")] if result["status"] == STATUS_OK else []
        if "seconds" in result:
            numbers.append(result["seconds"])
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in numbers):
            raise bad(number, "a loss, value or time that is not a finite number")


def plain_value(value: Any) -> bool:
    """A sampled value as hyperopt records it: a finite number, a string or None."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    return isinstance(value, int | float) and math.isfinite(value)


def plot_search(results: list[dict[str, Any]], metric: str, out: Path) -> list[Path]:
    """Loss per trial with the running best, and each hyperparameter against the loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullLocator

    ok = sorted((r for r in results if r.get("status") == STATUS_OK), key=lambda r: r["trial"])
    numbers = [r["trial"] for r in ok]
    losses = [r["loss"] for r in ok]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(numbers, losses, s=18, label="trial loss")
    ax.step(numbers, np.minimum.accumulate(losses), where="post", color="crimson", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"loss ({'-' if metric_loss(metric, 1.0) < 0 else ''}{metric})")
    ax.legend()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.95)  # tight_layout costs ~0.5 s a figure
    history = out / "loss_history.png"
    fig.savefig(history, dpi=80)
    plt.close(fig)

    numeric = {(r["model"], k) for r in ok for k, v in r["params"].items() if isinstance(v, int | float)}
    # Only what the search varied (e.g. not logistic_regression's fixed max_iter).
    params = sorted(p for p in numeric if len({r["params"].get(p[1]) for r in ok if r["model"] == p[0]}) > 1)
    columns = min(3, max(1, len(params)))
    rows = max(1, math.ceil(len(params) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, (model, name) in zip(axes.flat, params, strict=False):
        points = [(r["params"][name], r["loss"]) for r in ok if r["model"] == model and r["params"][name] is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), s=14)
            if min(p[0] for p in points) > 0 and max(p[0] for p in points) / min(p[0] for p in points) > 100:
                ax.set_xscale("log")
        ax.set_title(f"{model}.{name}", fontsize=9)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(4))  # tick labels are most of the drawing time
        if ax.get_xscale() == "linear":
            ax.xaxis.set_major_locator(MaxNLocator(4))
        else:
            ax.xaxis.set_minor_locator(NullLocator())
    for ax in list(axes.flat)[len(params) :]:
        ax.set_visible(False)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.05, top=0.95, hspace=0.45, wspace=0.3)
    versus = out / "hyperparams_vs_loss.png"
    fig.savefig(versus, dpi=80)
    plt.close(fig)
    return [history, versus]

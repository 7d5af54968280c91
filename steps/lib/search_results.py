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
from steps.lib.charts import BLUE, RED, Panel, grid_svg
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
    """Loss per trial with the running best, and each hyperparameter against the loss (SVG files in `out`)."""
    ok = sorted((r for r in results if r.get("status") == STATUS_OK), key=lambda r: r["trial"])
    numbers = [r["trial"] for r in ok]
    losses = [r["loss"] for r in ok]
    history_panel = Panel(
        "loss per trial",
        points=list(zip(numbers, losses, strict=True)),
        line=list(zip(numbers, np.minimum.accumulate(losses).tolist(), strict=True)) if losses else [],
        x_label="trial",
        y_label=f"loss ({'-' if metric_loss(metric, 1.0) < 0 else ''}{metric})",
        legend=[("trial loss", BLUE, "dot"), ("best so far", RED, "line")],
    )
    history = out / "loss_history.svg"
    history.write_text(grid_svg([history_panel], columns=1, panel_size=(560, 320)), encoding="utf-8")

    numeric = {(r["model"], k) for r in ok for k, v in r["params"].items() if isinstance(v, int | float)}
    # Only what the search varied (e.g. not logistic_regression's fixed max_iter).
    params = sorted(p for p in numeric if len({r["params"].get(p[1]) for r in ok if r["model"] == p[0]}) > 1)
    panels = []
    for model, name in params:
        points = [(r["params"][name], r["loss"]) for r in ok if r["model"] == model and r["params"][name] is not None]
        xs = [x for x, _ in points]
        log_x = bool(points) and min(xs) > 0 and max(xs) / min(xs) > 100
        panels.append(Panel(f"{model}.{name}", points=points, log_x=log_x, y_label="loss"))
    versus = out / "hyperparams_vs_loss.svg"
    blank = [Panel("no hyperparameter varied", note="nothing to show")]
    versus.write_text(grid_svg(panels or blank, columns=3, panel_size=(320, 240)), encoding="utf-8")
    return [history, versus]

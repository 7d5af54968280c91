"""One trial: fit and score a configuration, in the tune process or in a worker process.

A worker process imports this module and what a fit needs (numpy, pandas, scikit-learn), not MLflow,
hyperopt or click: each of its ~2.5 s of imports would have been paid per worker, on the cores the
trials need. hyperopt's status strings are spelled here for the same reason.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steps.lib.console import route_child_logs
from steps.lib.errors import one_line
from steps.lib.features import FeatureSpec
from steps.lib.metrics import metric_loss
from steps.lib.models import MODEL_FAMILIES, ModelFamily, fit_model, score_model
from steps.lib.process import no_collection_at_exit
from steps.lib.splits import Splits, cv_folds_of

STATUS_OK, STATUS_FAIL = "ok", "fail"  # hyperopt's STATUS_OK and STATUS_FAIL


def cross_validated_scores(
    splits: Splits, spec: FeatureSpec, family: ModelFamily, hyperparams: dict[str, Any], seed: int, folds: int
) -> dict[str, float]:
    """Mean of each metric over `folds` folds of the training split, made as the split was (see cv_folds_of)."""
    train = splits.train
    per_fold = []
    for fit_rows, score_rows in cv_folds_of(train, spec, folds, seed):
        fold = Splits(train.iloc[fit_rows], train.iloc[score_rows], splits.test)
        per_fold.append(score_model(fit_model(fold, spec, family, hyperparams, seed), fold.validation, spec, 1))
    common = set.intersection(*(set(scores) for scores in per_fold))
    return {name: float(np.mean([scores[name] for scores in per_fold])) for name in sorted(common)}


@dataclass(frozen=True)
class TrialSettings:
    """What a trial needs of the search's configuration (plain values: a worker imports no more than a fit)."""

    metric: str
    seed: int
    cv_folds: int = 0


def evaluate_sample(splits: Splits, spec: FeatureSpec, sample: dict[str, Any], config: TrialSettings) -> dict[str, Any]:
    """Fit and score one configuration; a failure is a failed trial, not a failed search."""
    family = MODEL_FAMILIES[sample["model"]]
    hyperparams = family.resolve({k: v for k, v in sample.items() if k != "model"})
    started = time.perf_counter()
    outcome: dict[str, Any] = {"model": family.name, "params": hyperparams}
    try:
        if config.cv_folds >= 2:
            scores = cross_validated_scores(splits, spec, family, hyperparams, config.seed, config.cv_folds)
        else:
            scores = score_model(fit_model(splits, spec, family, hyperparams, config.seed), splits.validation, spec, 1)
    except Exception as error:
        return outcome | {
            "status": STATUS_FAIL,
            "error": one_line(str(error), 200),
            "scores": {},
            "seconds": time.perf_counter() - started,
        }
    outcome |= {"scores": scores, "seconds": time.perf_counter() - started}
    if config.metric not in scores:
        return outcome | {"status": STATUS_FAIL, "error": f"{config.metric} undefined on the scoring rows"}
    value = scores[config.metric]
    return outcome | {"status": STATUS_OK, "value": value, "loss": metric_loss(config.metric, value)}


_WORKER: dict[str, Any] = {}


def write_worker_data(path: Path, splits: Splits, spec: FeatureSpec, settings: TrialSettings) -> None:
    """What every worker holds, in a file of a private temporary folder that only this tune's workers read.

    pickle, as multiprocessing itself would have sent it: written by the tune process a moment before, never
    anything read from the tracking store.
    """
    write_for_workers(path, (splits, spec, settings))


def write_for_workers(path: Path, held: Any) -> None:
    """Written whole, then renamed into place: a worker that was started before it waits for the name."""
    part = path.with_name(path.name + ".part")
    with part.open("wb") as file:
        pickle.dump(held, file, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(part, path)


def start_worker(data_file: str, parent: int) -> None:
    """Each worker process reads the data once, not once per trial; it ends when tune does, even by kill -9.

    A worker may be started before tune has read its data (its imports overlap that work): it waits for the
    file; a file holding None means the search never started, and the worker ends.
    """
    route_child_logs()  # a library's warnings go to tune's log, not the console
    no_collection_at_exit()  # tune waits for its workers to exit
    while not os.path.exists(data_file):
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.005)
    with open(data_file, "rb") as file:
        held = pickle.load(file)  # written by the parent tune process: see write_worker_data
    if held is None:
        os._exit(0)
    splits, spec, settings = held
    _WORKER.update(splits=splits, spec=spec, settings=settings)
    threading.Thread(target=exit_with_parent, args=(parent,), name="watch-parent", daemon=True).start()


def exit_with_parent(parent: int) -> None:
    """A pool worker waits for work forever: when its tune process is gone, end it (no orphans)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def evaluate_in_worker(sample: dict[str, Any]) -> dict[str, Any]:
    return evaluate_sample(_WORKER["splits"], _WORKER["spec"], sample, _WORKER["settings"])


def serve_trials(data_file: str, parent: int, connection: Any) -> None:
    """A worker process of a search with trial_timeout: one trial at a time from `connection`, until it closes.

    The tune process kills it when a trial runs past the limit (a fit cannot be interrupted from inside).
    """
    start_worker(data_file, parent)
    connection.send("ready")
    while True:
        try:
            sample = connection.recv()
        except EOFError:  # the tune process closed its end: the search is over
            return
        connection.send(evaluate_in_worker(sample))


def stopped_trial(sample: dict[str, Any], seconds: float, why: str) -> dict[str, Any]:
    """The failed trial of a configuration that was stopped (trial_timeout) or whose worker died."""
    family = MODEL_FAMILIES[sample["model"]]
    hyperparams = family.resolve({k: v for k, v in sample.items() if k != "model"})
    outcome = {"model": family.name, "params": hyperparams, "scores": {}, "seconds": seconds}
    return outcome | {"status": STATUS_FAIL, "error": why}

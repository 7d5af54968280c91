"""Metrics: which ones each task has, their direction, and how they are computed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from steps.lib.errors import PipelineError
from steps.lib.features import CLASSIFICATION, REGRESSION

# name -> (task, greater is better)
METRICS: dict[str, tuple[str, bool]] = {
    "accuracy": (CLASSIFICATION, True),
    "f1_macro": (CLASSIFICATION, True),
    "roc_auc_ovr": (CLASSIFICATION, True),
    "log_loss": (CLASSIFICATION, False),
    "rmse": (REGRESSION, False),
    "mae": (REGRESSION, False),
    "r2": (REGRESSION, True),
}
DEFAULT_METRIC = {CLASSIFICATION: "f1_macro", REGRESSION: "rmse"}


def check_metric_name(metric: str | None) -> None:
    """Reject a metric name we do not know, before the task is known (None: the task's default)."""
    if metric is not None and metric not in METRICS:
        raise PipelineError(f"unknown metric '{metric}'; use auto or one of {', '.join(METRICS)}")


def resolve_metric(metric: str | None, task: str) -> str:
    """The metric to optimise and compare on: None picks the task's default."""
    check_metric_name(metric)
    if metric is None:
        return DEFAULT_METRIC[task]
    if METRICS[metric][0] != task:
        fits = ", ".join(name for name, (kind, _) in METRICS.items() if kind == task)
        raise PipelineError(f"metric '{metric}' does not fit a {task} task; use one of {fits}")
    return metric


def greater_is_better(metric: str) -> bool:
    return METRICS[metric][1]


def metric_loss(metric: str, value: float) -> float:
    """Turn a metric into a loss to minimise."""
    return -value if greater_is_better(metric) else value


def compute_metrics(
    task: str,
    y_true: pd.Series,
    y_pred: np.ndarray | None,
    proba: np.ndarray | None,
    classes: list[Any] | None,
    only: str | None = None,
) -> dict[str, float]:
    """Every metric of the task (`only`: that one); a metric that cannot be computed on these rows is left out.
    `y_pred` None: none of the metrics computed from predictions (a caller that wants only a probability one)."""
    from sklearn import metrics as skm

    def wanted(name: str) -> bool:
        return only is None or only == name

    scores: dict[str, float] = {}
    if task == REGRESSION:
        if wanted("rmse"):
            scores["rmse"] = float(np.sqrt(skm.mean_squared_error(y_true, y_pred)))
        if wanted("mae"):
            scores["mae"] = float(skm.mean_absolute_error(y_true, y_pred))
        if wanted("r2"):
            scores["r2"] = float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else math.nan
        return {name: value for name, value in scores.items() if not math.isnan(value)}
    coded = label_codes(y_true, y_pred, classes)
    if coded is not None:
        true_codes, pred_codes, class_codes = coded
        try:
            return classification_metrics(true_codes, pred_codes, proba, class_codes, wanted)
        except ValueError:  # e.g. a label the model never saw: scikit-learn's own message, naming the labels
            pass
    return classification_metrics(y_true, y_pred, proba, classes, wanted)


def classification_metrics(
    y_true: Any, y_pred: Any, proba: np.ndarray | None, classes: list[Any] | None, wanted: Callable[[str], bool]
) -> dict[str, float]:
    from sklearn import metrics as skm

    scores: dict[str, float] = {}
    if y_pred is not None and wanted("accuracy"):
        scores["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
    if y_pred is not None and wanted("f1_macro"):
        scores["f1_macro"] = float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    if proba is not None and classes is not None:
        labels = list(classes)
        if wanted("log_loss"):
            scores["log_loss"] = float(skm.log_loss(y_true, proba, labels=labels))
        try:
            if wanted("roc_auc_ovr"):
                scores["roc_auc_ovr"] = float(
                    skm.roc_auc_score(np.asarray(y_true) == labels[1], proba[:, 1])
                    if len(labels) == 2
                    else skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels)
                )
        except ValueError:  # a class absent from these rows: AUC is undefined
            pass
    return {name: value for name, value in scores.items() if not math.isnan(value)}


def label_codes(y_true: Any, y_pred: Any, classes: list[Any] | None) -> tuple[Any, Any, list[int] | None] | None:
    """Text labels as integer codes numbered in the labels' sorted order, the same for the true labels, the
    predictions and `classes`; None unless all three are text without a gap (scikit-learn's own rules then).
    scikit-learn's classification metrics sort the labels they see and compare them element by element: on
    Python strings that cost ~0.3 s a metric at 200,000 rows (evaluate spent ~7 s there at 1,000,000 rows), on
    codes milliseconds. Sorted the same way, every per-class figure comes in the same order, so the metrics are
    the same to the last bit (a test checks)."""
    given = [y_true, *([y_pred] if y_pred is not None else []), *([classes] if classes is not None else [])]
    if any(pd.api.types.infer_dtype(labels, skipna=False) != "string" for labels in given):
        return None
    parts = [np.asarray(labels, dtype=object) for labels in given]
    codes, _ = pd.factorize(np.concatenate(parts), sort=True)
    true_codes, *rest = np.split(codes, np.cumsum([len(part) for part in parts])[:-1])
    pred_codes = rest.pop(0) if y_pred is not None else None
    class_codes = [int(code) for code in rest[0]] if classes is not None else None
    return true_codes, pred_codes, class_codes


def is_number(value: Any) -> bool:
    """A class label that is a number (not True/False, which Python counts as one)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def among_classes(labels: pd.Series, classes: list[Any]) -> pd.Series:
    """Which labels are among a model's classes: numbers compared as numbers (`1.0` is class 1), text as text."""
    if all(is_number(c) for c in classes):
        return pd.to_numeric(labels, errors="coerce").isin([float(c) for c in classes])
    return labels.astype(str).isin([str(c) for c in classes])


PROBABILITY_METRICS = ("log_loss", "roc_auc_ovr")  # computed from class probabilities, not predicted classes


def is_better(candidate: float, reference: float, metric: str) -> bool:
    """Strictly better in the metric's own direction."""
    return candidate > reference if greater_is_better(metric) else candidate < reference

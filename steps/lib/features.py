"""Tasks and features: which raw columns feed the model and how (the feature spec), and the label checks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from steps.lib.errors import PipelineError

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
# An integer-valued target with at most this many distinct values is treated as class labels.
MAX_CLASSES_FOR_AUTO_TASK = 20
ID_NAME = re.compile(r"(^|_)(id|uuid|guid|key|index)$", re.IGNORECASE)
# A text column whose values are nearly all distinct carries no reusable signal.
ID_UNIQUE_RATIO = 0.95
MIN_ROWS_PER_CLASS = 3  # one each for train, validation and test


@dataclass
class FeatureSpec:
    """What featurize decided: which raw columns feed the model and how."""

    target: str
    task: str
    numeric: list[str]
    categorical: list[str]
    dropped: dict[str, str] = field(default_factory=dict)
    input_columns: list[str] = field(default_factory=list)
    classes: list[Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> FeatureSpec:
        return cls(**payload)


def detect_task(target: pd.Series) -> str:
    """Classification for labels (text, bool, or integers with few values), regression otherwise."""
    values = target.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return CLASSIFICATION
    integral = bool(np.all(np.mod(values.to_numpy(dtype=float), 1) == 0))
    if integral and values.nunique() <= MAX_CLASSES_FOR_AUTO_TASK:
        return CLASSIFICATION
    return REGRESSION


def validate_target(frame: pd.DataFrame, target: str, task: str | None = None) -> None:
    """The checks every step that sees the raw table makes on its label column."""
    if frame.empty or len(frame.columns) == 0:
        raise PipelineError("the data has no rows; point data_uri at a table with data")
    if target not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:20]))
        raise PipelineError(f"target column '{target}' is not in the data (columns: {shown}); pass -P target=<column>")
    labels = frame[target].dropna()
    if labels.empty:
        raise PipelineError(f"target column '{target}' has no values; choose another -P target")
    if labels.nunique() < 2:
        raise PipelineError(
            f"target column '{target}' has a single value ({labels.iloc[0]!r}); "
            "a model needs at least two classes or distinct values"
        )
    if len(frame.columns) < 2:
        raise PipelineError("the data has only the target column; it needs feature columns too")
    if task is not None and task not in TASKS:
        raise PipelineError(f"unknown task '{task}'; use auto, classification or regression")


def choose_columns(frame: pd.DataFrame, target: str) -> tuple[list[str], list[str], dict[str, str]]:
    """Split the non-target columns into numeric and categorical features, and those to drop (with why)."""
    numeric: list[str] = []
    categorical: list[str] = []
    dropped: dict[str, str] = {}
    n_rows = len(frame)
    for column in frame.columns:
        if column == target:
            continue
        values = frame[column]
        present = values.dropna()
        n_unique = present.nunique()
        is_bool = pd.api.types.is_bool_dtype(present.infer_objects())
        is_numeric = pd.api.types.is_numeric_dtype(values) and not is_bool
        if present.empty:
            dropped[column] = "all values missing"
        elif n_unique <= 1:
            dropped[column] = "constant"
        elif pd.api.types.is_datetime64_any_dtype(values):
            dropped[column] = "datetime (not featurized)"
        elif n_unique == n_rows and ID_NAME.search(str(column)):
            dropped[column] = "ID-like (unique per row, named like an identifier)"
        elif not is_numeric and n_rows >= 20 and n_unique >= ID_UNIQUE_RATIO * len(present):
            dropped[column] = "ID-like (text unique per row)"
        elif is_numeric and n_unique == n_rows and _is_row_counter(present):
            dropped[column] = "ID-like (a row counter)"
        elif is_numeric:
            numeric.append(column)
        else:
            categorical.append(column)
    return numeric, categorical, dropped


def _is_row_counter(values: pd.Series) -> bool:
    """An integer column that counts rows (1, 2, 3, ... in any order)."""
    if not pd.api.types.is_integer_dtype(values):
        return False
    ordered = values.sort_values().to_numpy()
    return len(ordered) > 2 and bool((ordered[1:] - ordered[:-1] == 1).all())


def build_feature_spec(frame: pd.DataFrame, target: str, task: str | None = None) -> FeatureSpec:
    """Validate the table and decide task (None: detected from the label) and features."""
    validate_target(frame, target, task)
    labels = frame[target].dropna()
    task = task or detect_task(labels)
    if task == "regression" and not pd.api.types.is_numeric_dtype(labels):
        raise PipelineError(
            f"target '{target}' is not numeric, so it cannot be a regression target; use -P task=classification"
        )
    numeric, categorical, dropped = choose_columns(frame, target)
    if not numeric and not categorical:
        raise PipelineError(f"no usable feature columns (dropped: {dropped}); the data needs informative columns")
    classes = None
    if task == CLASSIFICATION:
        counts = labels.value_counts()
        rare = counts[counts < MIN_ROWS_PER_CLASS]
        if not rare.empty:
            raise PipelineError(
                f"class(es) {', '.join(map(repr, rare.index.tolist()))} have fewer than {MIN_ROWS_PER_CLASS} rows, "
                "too few for a stratified train/validation/test split; drop or merge them"
            )
        classes = sorted(labels.unique().tolist(), key=lambda v: (str(type(v)), v))
        classes = [c.item() if hasattr(c, "item") else c for c in classes]
    input_columns = [str(c) for c in frame.columns if c != target]
    return FeatureSpec(target, task, numeric, categorical, dropped, input_columns, classes)

"""Scoring a table with a logged model, as predict does it on either backend: the checks and the columns added."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steps.lib.drift import is_numeric
from steps.lib.errors import PipelineError, one_line
from steps.lib.features import infinite_rows, same_but_for_case
from steps.lib.keys import key_parts, unused_name
from steps.lib.model_loading import load_model
from steps.lib.tables import NUMERIC_TYPES, not_as_signed

logger = logging.getLogger("steps.scoring")


def load_models(model_uri: str, folder: Path | None = None) -> tuple[Any, Any]:
    """The pyfunc (it carries the signature) and the scikit-learn model (for class probabilities), loaded by
    the project's safe loader (steps/lib/model_loading.py). `folder`: the model already fetched from the URI."""
    loaded = load_model(model_uri, folder)
    raw = loaded.sklearn
    sklearn_model = raw if hasattr(raw, "predict_proba") and hasattr(raw, "classes_") else None
    return loaded.pyfunc, sklearn_model


def signature_columns(pyfunc: Any) -> list[tuple[str, str]]:
    """The model's input columns and their types, from its signature."""
    schema = pyfunc.metadata.get_input_schema()
    if schema is None:
        raise PipelineError("the model has no input signature; log it with a signature to score batches")
    return [(spec.name, getattr(spec.type, "name", str(spec.type))) for spec in schema.inputs]


def check_batch(frame: pd.DataFrame, columns: list[tuple[str, str]], first_row: int | None = 0) -> None:
    """Every signature column present, and of a type the model can take; a clear error naming the column.

    `first_row`: the batch's first row in the whole table, to name the row of a bad value (None: a piece on a
    Spark executor, which does not know its place in the table).
    """

    def row(position: int) -> str:
        return "" if first_row is None else f" in row {first_row + position}"

    if frame.empty:
        raise PipelineError("the batch has no rows; pass a table with at least one row")
    missing = [name for name, _ in columns if name not in frame.columns]
    if missing:
        alike = same_but_for_case(missing[0], frame.columns)[:1]
        raise PipelineError(
            f"the batch lacks column '{missing[0]}' that the model's signature needs"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "".join(f"; the batch's {c!r} differs only in case or spaces" for c in alike)
            + f"; expected columns: {', '.join(repr(name) for name, _ in columns)}"
        )
    for name, kind in (column for column in columns if column[1] in NUMERIC_TYPES):
        numbers = frame[name]
        if not pd.api.types.is_numeric_dtype(numbers):  # numbers as text are fine; other text is not
            numbers = pd.to_numeric(frame[name], errors="coerce")
            bad = frame[name][numbers.isna() & frame[name].notna()]
            if len(bad):
                raise PipelineError(not_as_signed(name, kind) + f"{bad.iloc[0]!r}{row(bad.index[0])}")
        infinite = infinite_rows(numbers)
        if infinite.size:
            raise PipelineError(
                f"column '{name}' holds an infinite value{row(infinite[0])}; the model takes numbers "
                "and missing values: replace it with a number, or leave the cell empty"
            )


def as_text(numbers: pd.Series) -> pd.Series:
    """Numbers as the text the model's signature asks for (MLflow refuses numbers for a string column): whole
    numbers without a decimal point (3, not 3.0, as a CSV of them reads), missing ones missing."""
    return numbers.astype(object).map(
        lambda v: None if v != v else str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))
    )


def score_batch(
    frame: pd.DataFrame, pyfunc: Any, sklearn_model: Any, columns: list[tuple[str, str]]
) -> tuple[pd.DataFrame, str]:
    """The input columns, then `prediction`, then `proba_<class>` for a classifier; and the prediction's column.

    `columns`: the signature's (name, type). An input column of the same name is never overwritten: the output
    is called `prediction_2` (...) instead.
    """
    inputs = frame[[name for name, _ in columns]].copy()
    for name, kind in columns:  # numbers written as text (a CSV read as strings) become numbers, as checked
        if kind == "string" and is_numeric(inputs[name]):  # and numbers where the model takes text ($1,234.50)
            inputs[name] = as_text(inputs[name])
        if kind not in NUMERIC_TYPES or pd.api.types.is_numeric_dtype(inputs[name]):
            continue
        numbers = pd.to_numeric(inputs[name], errors="coerce")
        if numbers.notna().any() and not (numbers.isna() & inputs[name].notna()).any():
            inputs[name] = numbers
    proba = None
    try:
        if sklearn_model is not None and hasattr(sklearn_model, "predict_proba"):
            # One pass through the pipeline: a scikit-learn classifier predicts the class of highest probability.
            proba = sklearn_model.predict_proba(inputs)
            predictions = np.asarray(sklearn_model.classes_)[np.argmax(proba, axis=1)]
        else:
            predictions = np.asarray(pyfunc.predict(inputs))
    except Exception as error:
        raise PipelineError(f"the batch does not match the model's signature: {one_line(str(error), 300)}") from None
    table = frame.copy()
    prediction = unused_name("prediction", table.columns)
    table[prediction] = predictions
    if proba is not None:
        for index, label in enumerate(sklearn_model.classes_):
            table[unused_name(f"proba_{label}", table.columns)] = proba[:, index]
    return table, prediction


class PredictionTally:
    """What the metrics say about the predictions, gathered batch by batch: class counts, or the values."""

    def __init__(self, classifier: bool) -> None:
        self.classifier = classifier
        self.counts: pd.Series = pd.Series(dtype="int64")
        self.values: list[np.ndarray] = []
        self.rows = 0

    def add(self, predictions: pd.Series) -> None:
        self.rows += len(predictions)
        if self.classifier:
            self.counts = self.counts.add(predictions.astype(str).value_counts(), fill_value=0)
        else:
            self.values.append(predictions.to_numpy(dtype=float))

    def metrics(self) -> dict[str, float]:
        """Class shares, or mean, spread and quantiles (over every row: 8 bytes a row, not the table)."""
        if self.classifier:
            shares = (self.counts / self.counts.sum()).sort_index()
            keys = key_parts(shares.index)  # a label such as `<=50K` is no metric key as it is
            return {f"pred_share_{keys[label]}": float(share) for label, share in shares.items()}
        values = pd.Series(np.concatenate(self.values) if self.values else np.array([], dtype=float))
        summary = {"pred_mean": float(values.mean()), "pred_std": float(values.std(ddof=0))}
        summary |= {f"pred_p{q:02d}": float(values.quantile(q / 100)) for q in (5, 25, 50, 75, 95)}
        return summary


def prediction_summary(predictions: pd.Series, classifier: bool) -> dict[str, float]:
    """Metrics of the prediction distribution: class shares, or mean, spread and quantiles."""
    tally = PredictionTally(classifier)
    tally.add(predictions)
    return tally.metrics()


TIME_CHECK_ROWS = 1_000  # present values of each date/time column read per batch, to tell a format the model misses


class TimeReadings:
    """How many of a batch's date/time values the model reads in the format it learned, per column (a sample of
    each batch). A column written another way (ISO dates for a model that learned 31/05/2024) is read as missing
    times by the model: scored without a word, where monitor saw drift. predict warns of it."""

    def __init__(self, model: Any) -> None:
        self.formats = learned_time_formats(model)
        self.checked: dict[str, int] = dict.fromkeys(self.formats, 0)
        self.unread: dict[str, int] = dict.fromkeys(self.formats, 0)

    def add(self, frame: pd.DataFrame) -> None:
        from steps.lib.text_values import parse_times

        for column, time_format in self.formats.items():
            if column in frame.columns:
                present = frame[column].dropna().head(TIME_CHECK_ROWS)
                self.checked[column] += len(present)
                self.unread[column] += int(parse_times(present, time_format).isna().sum())

    def warnings(self) -> list[str]:
        """One line per column of which 1 % or more of the values checked did not read, each logged as a warning."""
        said = [
            f"column '{column}': {unread:,} of {self.checked[column]:,} values checked do not read as "
            f"{self.formats[column]}, the format the model learned: it takes them as missing times; write them as "
            "the training rows did"
            for column, unread in self.unread.items()
            if unread and unread >= 0.01 * self.checked[column]
        ]
        for line in said:
            logger.warning(line)
        return said


def learned_time_formats(model: Any) -> dict[str, str]:
    """The date/time columns a pipeline model reads (its DateParts) and the format of each (ISO 8601 for a model
    logged before formats were recorded); {} for a model without one, or no scikit-learn model at all."""
    from steps.lib.text_values import ISO8601, FormattedDateParts
    from steps.lib.transforms import DateParts

    found: dict[str, str] = {}
    for part in parts_of(model):
        if isinstance(part, FormattedDateParts):
            found |= dict(getattr(part, "formats_", {}))
        elif isinstance(part, DateParts):
            found |= dict.fromkeys(getattr(part, "columns_", []), ISO8601)
    return found


def parts_of(model: Any) -> list[Any]:
    """Every estimator inside a scikit-learn Pipeline or ColumnTransformer, nested ones too."""
    inner = [*getattr(model, "steps", []), *getattr(model, "transformers_", [])]
    return [model, *(part for item in inner for part in parts_of(item[1]))]

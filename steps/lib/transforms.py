"""The project's own transformers inside a logged model: date and time columns as numeric parts, and the
levels of a many-level text column as numeric codes for the target encoder.

This module ships with every model that uses it (`code_paths`, byte for byte), so a served model
takes the raw column. It must stay self-contained: numpy, pandas and scikit-learn only, no other
module of this project.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

# The parts a timestamp is split into, in this order; `days` is the time itself (days since 1970, UTC).
DATE_PARTS = ("year", "month", "day", "day_of_week", "hour", "minute", "second", "days")
NANOSECONDS_PER_DAY = 86_400 * 10**9


def parse_times(values: Any) -> pd.Series:
    """Timestamps (UTC) from datetime values or ISO 8601 text; NaT where a value is missing or does not parse."""
    series = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(series):
        return series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
    text = series.astype(object).where(series.notna(), None)
    return pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)


def date_part(times: pd.Series, part: str) -> np.ndarray:
    """One part of each timestamp as floats, NaN where the time is missing."""
    if part == "days":
        stamps = times.astype("datetime64[ns, UTC]")
        days = stamps.dt.tz_localize(None).to_numpy().astype("datetime64[ns]").astype("int64") / NANOSECONDS_PER_DAY
        return np.where(stamps.isna().to_numpy(), np.nan, days)
    accessor = "dayofweek" if part == "day_of_week" else part
    return getattr(times.dt, accessor).to_numpy(dtype=float, na_value=np.nan)


class DateParts(TransformerMixin, BaseEstimator):
    """Each date/time column becomes its parts that vary in the training rows (year, month, ..., hour, days)."""

    def fit(self, X: Any, y: Any = None) -> DateParts:  # noqa: N803 (scikit-learn's argument names)
        frame = pd.DataFrame(X)
        self.columns_ = [str(c) for c in frame.columns]
        self.parts_ = {}
        for name, column in zip(self.columns_, frame.columns, strict=True):
            times = parse_times(frame[column])
            varying = [p for p in DATE_PARTS if pd.Series(date_part(times, p)).nunique(dropna=True) > 1]
            self.parts_[name] = varying or ["days"]
        return self

    def transform(self, X: Any) -> np.ndarray:  # noqa: N803
        frame = pd.DataFrame(X)
        blocks = []
        for name, column in zip(self.columns_, frame.columns, strict=True):
            times = parse_times(frame[column])
            blocks += [date_part(times, part) for part in self.parts_[name]]
        return np.column_stack(blocks) if blocks else np.empty((len(frame), 0))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray([f"{name}.{part}" for name in self.columns_ for part in self.parts_[name]], dtype=object)


# Each fitted CategoryCodes' hash indexes of its levels, built on its first transform: kept out of the estimator's
# own state, so a saved model holds only plain arrays (and a refit cannot reuse stale ones: fit drops them).
_LEVEL_INDEXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CategoryCodes(TransformerMixin, BaseEstimator):
    """The levels of text columns as numeric codes, before the target encoder: the same encoding, in a fraction
    of the time. On text, scikit-learn's encoders build Python sets of every known level on each call (~60 ms
    for one row at 55,000 levels); on codes they compare arrays. Missing stays missing (NaN, its own category
    to the encoder, as on text); a level the fit never saw becomes -1, which the encoder has not seen either."""

    def fit(self, X: Any, y: Any = None) -> CategoryCodes:  # noqa: N803
        frame = pd.DataFrame(X)
        self.columns_ = [str(c) for c in frame.columns]
        self.levels_ = [np.asarray(pd.unique(frame[column].dropna()), dtype=object) for column in frame.columns]
        _LEVEL_INDEXES.pop(self, None)
        return self

    def transform(self, X: Any) -> pd.DataFrame:  # noqa: N803
        frame = pd.DataFrame(X)
        indexes = _LEVEL_INDEXES.get(self)
        if indexes is None:
            indexes = _LEVEL_INDEXES[self] = [pd.Index(levels, dtype=object) for levels in self.levels_]
        codes = {}
        for name, column, index in zip(self.columns_, frame.columns, indexes, strict=True):
            values = frame[column]
            found = index.get_indexer(values.astype(object)).astype(float)
            found[values.isna().to_numpy()] = np.nan
            codes[name] = found
        return pd.DataFrame(codes, index=frame.index)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.columns_, dtype=object)

"""Dates and times written as text in a known format (05/31/2024 01:45 PM, 31.05.2024 13:45, ...) as numeric
parts, inside a logged model: featurize finds each column's format and records it; the model, monitor and the
time split read the column in it.

This module ships with every model that uses it, beside steps/lib/transforms.py (`SHIPPED_CODE`, byte for byte),
so a served model takes the raw column. It imports numpy, pandas, scikit-learn and that module only. It is a
module of its own so that transforms.py stays as it was: a model logged before formats were known carries that
file, and the loader refuses a model whose copy of a shipped file differs from this checkout's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from steps.lib.transforms import DATE_PARTS, DateParts, date_part

ISO8601 = "ISO8601"  # pandas' name for the ISO 8601 family (with or without a time, an offset or Z)


def parse_times(values: Any, time_format: str = ISO8601) -> pd.Series:
    """Timestamps (UTC) from datetime values, or from text in `time_format` (pandas' "ISO8601", or a strftime
    format such as "%d/%m/%Y %H:%M"); NaT where a value is missing or does not parse. Text without an offset is
    taken as UTC."""
    series = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(series):
        return series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
    text = series.astype(object).where(series.notna(), None)
    kind = pd.api.types.infer_dtype(text, skipna=True)  # text is stripped, as featurize read it (" 2024-05-01 ")
    if kind in ("string", "empty"):
        text = text.str.strip()
    elif kind.startswith("mixed"):  # text among other values (a number): the text stripped, the rest as it is
        text = text.map(lambda value: value.strip() if isinstance(value, str) else value)
    if time_format == ISO8601:
        return pd.to_datetime(text, errors="coerce", format=time_format, utc=True)
    # strptime formats: each distinct value read once (pandas' own cache judges by the first values only)
    codes, distinct = pd.factorize(text)
    read = pd.to_datetime(pd.Series(distinct, dtype=object), errors="coerce", format=time_format, utc=True)
    return pd.Series(pd.DatetimeIndex(read).take(codes, allow_fill=True, fill_value=pd.NaT), index=series.index)


class FormattedDateParts(DateParts):
    """DateParts of text in a known format: each date/time column becomes its parts that vary in the training rows.

    `formats`: how each text column spells its times, by column name (ISO 8601 where a column is not named).
    """

    def __init__(self, formats: dict[str, str] | None = None):
        self.formats = formats

    def fit(self, X: Any, y: Any = None) -> FormattedDateParts:  # noqa: N803 (scikit-learn's argument names)
        self.fit_transform(X)
        return self

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:  # noqa: N803
        """Fit and transform reading each column once (~2.6 s per million distinct values in a strptime format)."""
        frame = pd.DataFrame(X)
        self.columns_ = [str(c) for c in frame.columns]
        self.formats_ = {name: (self.formats or {}).get(name, ISO8601) for name in self.columns_}
        self.parts_ = {}
        blocks = []
        for name, column in zip(self.columns_, frame.columns, strict=True):
            times = parse_times(frame[column], self.formats_[name])
            parts = {part: date_part(times, part) for part in DATE_PARTS}
            varying = [part for part in DATE_PARTS if pd.Series(parts[part]).nunique(dropna=True) > 1]
            self.parts_[name] = varying or ["days"]
            blocks += [parts[part] for part in self.parts_[name]]
        return np.column_stack(blocks) if blocks else np.empty((len(frame), 0))

    def transform(self, X: Any) -> np.ndarray:  # noqa: N803
        frame = pd.DataFrame(X)
        blocks = []
        for name, column in zip(self.columns_, frame.columns, strict=True):
            times = parse_times(frame[column], self.formats_[name])
            blocks += [date_part(times, part) for part in self.parts_[name]]
        return np.column_stack(blocks) if blocks else np.empty((len(frame), 0))

"""Values written as text, read inside a logged model: dates and times in a known format (05/31/2024 01:45 PM,
31.05.2024 13:45, ...) as numeric parts, and numbers with currency signs, thousands separators, percent signs or
accounting brackets ($1,234.50, 45%, (1,200)) as numbers. featurize finds which columns are which (and each date
column's format) and records it; the model, monitor and the time split read the columns so.

This module ships with every model that uses it, beside steps/lib/transforms.py (`SHIPPED_CODE`, byte for byte),
so a served model takes the raw columns. It imports numpy, pandas, scikit-learn and that module only. It is a
module of its own so that transforms.py stays as it was: a model logged before it carries that file, and the
loader refuses a model whose copy of a shipped file differs from this checkout's.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from steps.lib.transforms import DATE_PARTS, DateParts, date_part

ISO8601 = "ISO8601"  # pandas' name for the ISO 8601 family (with or without a time, an offset or Z)
# A number as spreadsheets and exports write it: a sign, a currency sign, thousands separated by commas, decimals
# after a point, a percent sign, or accounting brackets for a negative amount. The same pattern as
# steps/lib/features.py's NUMBER_TEXT (featurize finds such columns with it; tested to be equal).
NUMBER_TEXT = re.compile(r"^\(?[-+]?[$€£¥]?[-+]?(\d{1,3}(,\d{3})+(\.\d+)?|\d+(\.\d+)?|\.\d+)%?\)?$")


def stripped_text(values: pd.Series) -> pd.Series:
    """The values as text (object dtype), leading and trailing spaces off; a missing value None; a value that is
    not text (a number in a served row) as it is."""
    text = values.astype(object).where(values.notna(), None)
    kind = pd.api.types.infer_dtype(text, skipna=True)
    if kind in ("string", "empty"):
        return text.str.strip()
    if kind.startswith("mixed"):  # text among other values (a number): the text stripped, the rest as it is
        return text.map(lambda value: value.strip() if isinstance(value, str) else value)
    return text


def to_numbers(values: Any) -> pd.Series:
    """Numbers (float) from numbers, or from text such as `$1,234.50`, `-3.5`, `45%` (45.0) or `(1,200)` (-1200.0);
    NaN where a value is missing or is not a number so written (`n/a`, `?`, `1.234,50`)."""
    series = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.astype(float)
    text = stripped_text(series)
    if pd.api.types.infer_dtype(text, skipna=True) not in ("string", "empty"):  # a number among text: as text
        text = text.map(lambda value: value if value is None or isinstance(value, str) else str(value))
    written = text.str.match(NUMBER_TEXT).fillna(False).astype(bool)
    digits = text.where(written).str.replace(r"[()$€£¥,%]", "", regex=True)
    numbers = pd.to_numeric(digits, errors="coerce").astype(float)
    negative = (text.str.startswith("(") & text.str.endswith(")")).fillna(False).astype(bool)
    return numbers.where(~negative, -numbers)


class TextNumbers(TransformerMixin, BaseEstimator):
    """Columns of numbers written as text ($1,234.50, 45%) as numbers (see `to_numbers`), NaN where a value is not
    one; numbers pass as they are."""

    def fit(self, X: Any, y: Any = None) -> TextNumbers:  # noqa: N803 (scikit-learn's argument names)
        self.columns_ = [str(c) for c in pd.DataFrame(X).columns]
        return self

    def transform(self, X: Any) -> np.ndarray:  # noqa: N803
        frame = pd.DataFrame(X)
        blocks = [to_numbers(frame[column]).to_numpy() for column in frame.columns]
        return np.column_stack(blocks) if blocks else np.empty((len(frame), 0))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.columns_, dtype=object)


def parse_times(values: Any, time_format: str = ISO8601) -> pd.Series:
    """Timestamps (UTC) from datetime values, or from text in `time_format` (pandas' "ISO8601", or a strftime
    format such as "%d/%m/%Y %H:%M"); NaT where a value is missing or does not parse. Text without an offset is
    taken as UTC."""
    series = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(series):
        return series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
    text = stripped_text(series)  # as featurize read it (" 2024-05-01 ")
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

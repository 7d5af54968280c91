"""Values written as text, read inside a logged model: dates and times in a known format (05/31/2024 01:45 PM,
31.05.2024 13:45, ...) as numeric parts, and numbers with currency signs, thousands separators, percent signs or
accounting brackets ($1,234.50, 45%, (1,200)) as numbers. featurize finds which columns are which (and each date
column's format) and records it; the model, monitor and the time split read the columns so.

This module ships with every model that uses it, beside steps/lib/transforms.py (`SHIPPED_CODE`, byte for byte),
so a served model takes the raw columns. It imports numpy, pandas, pyarrow (MLflow's own requirement),
scikit-learn and that module only. It is a module of its own so that transforms.py stays as it was: a model
logged before it carries that file, and the loader refuses a model whose copy of a shipped file differs from
this checkout's.
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
NUMBER_DIGITS = r"([0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?|[0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?"  # 1,234.5 .5 1E+05
MONEY_SIGN = "[$€£¥]"
NUMBER_TEXT = re.compile(  # ASCII digits and spaces: the same matches in Python's re and in pyarrow's RE2
    rf"^\(({MONEY_SIGN} ?)?{NUMBER_DIGITS}( ?{MONEY_SIGN})?\)$"  # accounting brackets: negative, no sign inside
    rf"|^([-+−]?({MONEY_SIGN} ?)?|{MONEY_SIGN} ?[-+−]){NUMBER_DIGITS}( ?{MONEY_SIGN})?%?$"  # -3.5 $1,234.5 -$5 12 € 45%
)


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
    """Numbers (float) from numbers, or from text such as `$1,234.50`, `-3.5`, `45%` (45.0), `(1,200)` (-1200.0),
    `12 €` or `1.2E+05`; NaN where a value is missing or is not a number so written (`n/a`, `?`, `3+`,
    `1.234,50`). Each distinct text is read once."""
    series = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.astype(float)
    text = stripped_text(series)
    given = pd.Series(np.nan, index=text.index)
    if pd.api.types.infer_dtype(text, skipna=True) not in ("string", "empty"):  # numbers among text (a served row)
        number = text.map(lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)))
        given = pd.to_numeric(text.where(number), errors="coerce").astype(float)
        text = text.where(text.map(lambda v: isinstance(v, str)), None)
    import pyarrow as pa  # MLflow requires it, so every environment that loads the model has it
    import pyarrow.compute as pc

    codes, distinct = pd.factorize(text)
    words = pa.array(distinct, type=pa.string())  # RE2 in C++: ~0.7 s per million values, pandas' str ~4 s
    digits = pc.replace_substring(pc.replace_substring_regex(words, "[()$€£¥,% ]", ""), "−", "-")
    digits = pc.if_else(pc.match_substring_regex(words, NUMBER_TEXT.pattern), digits, pa.scalar(None, pa.string()))
    try:
        numbers = pc.cast(digits, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # not expected of what the pattern lets through; pandas then decides, value by value
        numbers = pd.to_numeric(digits.to_pandas(), errors="coerce").to_numpy(dtype=float)
    numbers = np.where(pc.starts_with(words, "(").to_numpy(zero_copy_only=False), -numbers, numbers)
    read = np.where(codes >= 0, numbers[np.maximum(codes, 0)] if len(numbers) else np.nan, np.nan)
    return pd.Series(read, index=text.index).fillna(given)


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

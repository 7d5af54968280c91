"""A user's Parquet columns as the steps, scikit-learn and MLflow's signatures take them.

Parquet holds types that MLflow's schema enforcement refuses when the model is called (times with a time zone,
categoricals: evaluate's check of the registered model failed with a traceback), that MLflow cannot type at all
(unsigned 64-bit integers: the whole signature became `Any`), or that no JSON holds (decimals: train's input
example failed). load reads them as plain columns, says so in its log, and every later step (and the model's
signature) sees only those. A column without a name gets the one pandas gives an empty CSV header.
"""

from __future__ import annotations

import decimal
import logging

import numpy as np
import pandas as pd

from steps.lib.errors import PipelineError

logger = logging.getLogger("steps.tables")
INT64_MAX = np.iinfo(np.int64).max


def plain_columns(frame: pd.DataFrame, shown: str) -> pd.DataFrame:
    """`frame` (read from the Parquet file `shown`) with pandas' names for unnamed columns and plain types."""
    frame = pandas_names(frame, shown)
    for name in frame.columns:
        values, why = plain_values(frame[name])
        if why:
            frame[name] = values
            logger.info("column '%s' of '%s': %s", name, shown, why)
    return frame


def pandas_names(frame: pd.DataFrame, shown: str) -> pd.DataFrame:
    """A column with an empty name as pandas names an empty CSV header (`Unnamed: 2`, by its position): MLflow
    takes a signature's column named '' for one without a name, and refused every row. The same in a batch."""
    if "" not in frame.columns:
        return frame
    names = [f"Unnamed: {position}" if name == "" else name for position, name in enumerate(frame.columns)]
    clash = sorted({name for name in names if names.count(name) > 1})
    if clash:
        listed = ", ".join(f"'{name}'" for name in clash)
        raise PipelineError(f"'{shown}' has a column without a name and another named {listed}; name the first")
    return frame.set_axis(names, axis=1)


def plain_values(values: pd.Series) -> tuple[pd.Series, str]:
    """The column in a plain type and why it was changed ('' if it was not)."""
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None), f"times in {dtype.tz}: read as UTC times"
    if isinstance(dtype, pd.CategoricalDtype):
        levels = dtype.categories.dtype
        if values.hasnans and levels.kind in "iub":  # whole numbers or true/false with gaps: as numbers with NaN
            levels = np.dtype("float64")
        return values.astype(levels), "categorical: read as its values"
    if str(dtype) in ("uint64", "UInt64"):  # numpy's, or pandas' nullable one (MLflow types neither)
        fits = values.dropna().empty or int(values.max()) <= INT64_MAX
        kind = ("int64" if fits else "float64") if dtype == np.uint64 else ("Int64" if fits else "Float64")
        return values.astype(kind), f"unsigned 64-bit integers: read as {kind}" + ("" if fits else " (past int64)")
    if dtype.kind == "O" and not isinstance(dtype, pd.StringDtype) and decimals(values):
        return pd.to_numeric(values).astype("float64"), "decimals: read as floating-point numbers"
    return values, ""


def decimals(values: pd.Series) -> bool:
    """Whether every present value is a Decimal (how pandas reads a Parquet decimal column)."""
    present = values.dropna()
    if present.empty or not isinstance(present.iloc[0], decimal.Decimal):  # the first value says no: not all read
        return False
    return bool(present.map(type).eq(decimal.Decimal).all())

"""Tasks and features: which raw columns feed the model and how (the feature spec), and the label checks."""

from __future__ import annotations

import logging
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
# order_id, row_index, Order ID, order-id (not "Body Mass Index", "UV-Index": measures, not identifiers)
ID_NAME = re.compile(r"(^|_)(id|uuid|guid|key|index)$|(^|[\s-])(id|uuid|guid)$", re.IGNORECASE)
# A text column whose values are nearly all distinct carries no reusable signal.
ID_UNIQUE_RATIO = 0.95
MIN_ROWS_PER_CLASS = 3  # one each for train, validation and test
# Categorical encodings. Up to ONE_HOT_MAX_LEVELS levels: one-hot (native categories for HistGradientBoosting),
# levels seen in fewer than RARE_LEVEL_ROWS training rows grouped as one "infrequent" level, at most
# ONE_HOT_MAX_CATEGORIES columns; more levels: target encoding, cross-fitted, one column (one per class).
ONE_HOT = "one-hot"
TARGET_ENCODING = "target"
DATE_PARTS = "date parts"
NUMBERS_IN_TEXT = "numbers in text"
ONE_HOT_MAX_LEVELS = 64
ONE_HOT_MAX_CATEGORIES = 32
RARE_LEVEL_ROWS = 5
# Text is a timestamp when this share of a sample of its values is in one of TIME_FORMATS: ISO 8601 (2024-05-01,
# 2024-05-01T13:45:00Z), or one of the common spellings of spreadsheets and exports below. The format is found
# once, at featurize, recorded in the feature spec, and every later read of the column uses it.
ISO8601 = "ISO8601"  # pandas' name for the ISO 8601 family (with or without a time, an offset or Z)
ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
# Month first before day first where both would read a value (03/04/2024), as pandas reads it by default.
CLOCKS = ("", " %H:%M", " %H:%M:%S", " %I:%M %p", " %I:%M:%S %p")
TIME_FORMATS = (
    ISO8601,
    *(f"{date}{clock}" for date in ("%m/%d/%Y", "%d/%m/%Y") for clock in CLOCKS),
    "%m/%d/%y",
    "%d/%m/%y",
    "%m-%d-%Y",
    "%d-%m-%Y",
    *(f"%d.%m.%Y{clock}" for clock in ("", " %H:%M", " %H:%M:%S")),
    *(f"%Y/%m/%d{clock}" for clock in ("", " %H:%M", " %H:%M:%S")),
    "%d %b %Y",
    "%d-%b-%Y",
    "%b %d, %Y",
    "%d %B %Y",
    "%B %d, %Y",
)
TIME_SHARE = 0.95
TIME_SAMPLE = 1000
# Text is numbers ($1,234.50, 45%, (1,200)) when this share of a sample of its values is a number so written; the
# pattern is steps/lib/text_values.py's, which reads them inside the model (tested to be the same).
NUMBER_DIGITS = r"([0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?|[0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?"  # 1,234.5 .5 1E+05
MONEY_SIGN = "[$€£¥]"
NUMBER_TEXT = re.compile(  # ASCII digits and spaces: the same matches in Python's re and in pyarrow's RE2
    rf"^\(({MONEY_SIGN} ?)?{NUMBER_DIGITS}( ?{MONEY_SIGN})?\)$"  # accounting brackets: negative, no sign inside
    rf"|^([-+−]?({MONEY_SIGN} ?)?|{MONEY_SIGN} ?[-+−]){NUMBER_DIGITS}( ?{MONEY_SIGN})?%?$"  # -3.5 $1,234.5 -$5 12 € 45%
)
NUMBER_SHARE = 0.95
# How every value of TIME_FORMATS begins: digits, a separator, digits or a month's name; or a month's name first.
DATE_SHAPE = re.compile(r"\d{1,4}[-/. ](\d{1,2}|[A-Za-z]{3,9})[-/. ]\d{2,4}|[A-Za-z]{3,9} \d{1,2}, \d{4}")


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
    datetime: list[str] = field(default_factory=list)
    # column -> {"encoding": one-hot | target | date parts, "levels": distinct values, "reason": why}
    encodings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # how featurize split the rows: {"kind": random | time | group, "column": ..., "rows_without_value": n,
    # "labelled_rows": the labelled rows it split, before those without a time or group were dropped}
    split: dict[str, Any] = field(default_factory=dict)

    def encoding(self, column: str) -> str:
        """How a categorical column is encoded (a spec written before encodings were recorded: one-hot)."""
        return self.encodings.get(column, {}).get("encoding", ONE_HOT)

    def time_formats(self) -> dict[str, str]:
        """Each date/time column's format as text (ISO 8601 where the spec predates formats)."""
        return {column: self.encodings.get(column, {}).get("format", ISO8601) for column in self.datetime}

    def missing_before_split(self) -> dict[str, float]:
        """The time or group column's share of missing values among the labelled rows, before featurize dropped
        the rows without one: the training split has none, and monitor compares a batch with this share instead.
        Empty where nothing was dropped, or the record is not two counts that fit (the spec is anyone's to write)."""
        column, dropped, rows = (self.split.get(key) for key in ("column", "rows_without_value", "labelled_rows"))
        counts = all(isinstance(n, int) and not isinstance(n, bool) for n in (dropped, rows))
        if not isinstance(column, str) or not counts or not 0 < dropped <= rows:
            return {}
        return {column: dropped / rows}

    def numbers_in_text(self) -> list[str]:
        """The numeric columns written as text ($1,234.50, 45%): the model reads them as numbers."""
        return [c for c in self.numeric if self.encodings.get(c, {}).get("encoding") == NUMBERS_IN_TEXT]

    def columns_encoded(self, encoding: str) -> list[str]:
        return [c for c in self.categorical if self.encoding(c) == encoding]

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


def folded(text: str) -> str:
    """Text without its case and with its spaces as one (`' Yes  no'` -> `yes no`): what tells alike names apart."""
    return " ".join(text.split()).casefold()


def same_but_for_case(name: str, columns: Any) -> list[str]:
    """The columns that are `name` but for case and spaces (`' label '` for `label`)."""
    return [str(c) for c in columns if folded(str(c)) == folded(name)]


def not_in_data(what: str, name: str, columns: Any, fix: str) -> PipelineError:
    """A column that is not there, the columns quoted (a space ending a header shows), and the one meant where a
    column is the same name but for case and spaces (`' label '` for `label`)."""
    alike = same_but_for_case(name, columns)
    meant = f"; {alike[0]!r} differs only in case or spaces" if alike else ""
    return PipelineError(f"{what} '{name}' is not in the data (columns: {quoted(map(str, columns), 20)}{meant}); {fix}")


def validate_target(frame: pd.DataFrame, target: str, task: str | None = None) -> None:
    """The checks every step that sees the raw table makes on its label column."""
    if frame.empty or len(frame.columns) == 0:
        raise PipelineError("the data has no rows; point data_uri at a table with data")
    if target not in frame.columns:
        raise not_in_data("target column", target, frame.columns, "pass -P target=<column>")
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


def quoted(values: Any, shown: int = 5) -> str:
    """The first values, quoted, and how many more: an error of one line, not thousands of labels."""
    values = list(values)
    more = f" and {len(values) - shown:,} more" if len(values) > shown else ""
    return ", ".join(map(repr, values[:shown])) + more


def warn_of_alike_classes(target: str, classes: list[Any]) -> None:
    """Labels that differ only in case or spaces (`' yes'`, `'Yes'`, `'YES '`) are separate classes to a model,
    and a spreadsheet typed by hand is full of them: said in a warning (counted on the run), not merged."""
    groups: dict[str, list[str]] = {}
    for label in (c for c in classes if isinstance(c, str)):
        groups.setdefault(folded(label), []).append(label)
    alike = [" = ".join(map(repr, group)) for group in groups.values() if len(group) > 1]
    if alike:
        logging.getLogger("steps.features").warning(
            "label '%s' has classes that differ only in case or spaces, each a class of its own: %s; if they are "
            "one class, write them alike",
            *(target, "; ".join(alike[:3]) + (f"; and {len(alike) - 3} more" if len(alike) > 3 else "")),
        )


def refuse_infinities(frame: pd.DataFrame, columns: list[str]) -> None:
    """No model here takes an infinite number (`inf`, as pandas writes one, or `Inf`, R's: read as numbers):
    scikit-learn refused it in every trial of tune. The first such column named in one line, with the fix."""
    for name in (name for name in columns if pd.api.types.is_float_dtype(frame[name])):  # others hold no infinity
        rows = infinite_rows(frame[name])
        if rows.size:
            raise PipelineError(
                f"column '{name}' holds infinite values ({rows.size:,} rows, the first in row {rows[0]}); no model "
                "takes them: replace them with numbers, or leave the cells empty (missing)"
            )


def infinite_rows(numbers: pd.Series) -> np.ndarray:
    """The positions of `numbers`' infinite values (featurize refuses to train on them, predict and monitor to
    score them)."""
    return np.flatnonzero(np.isinf(numbers.to_numpy(dtype=float, na_value=np.nan)))


@dataclass
class ColumnChoice:
    """Which non-target columns feed the model, how, and which are dropped (with why)."""

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    datetime: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    encodings: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class TimeFormat:
    """How a text column spells its dates/times (a format of TIME_FORMATS), and a note when the data leave the
    order of day and month open."""

    format: str
    note: str = ""


def text_sample(present: pd.Series) -> pd.Series | None:
    """A spread sample of the present values (every k-th: TIME_SAMPLE to twice as many) as stripped text; None
    for numbers, true/false or no values (no text to read dates or numbers from)."""
    if pd.api.types.is_numeric_dtype(present) or pd.api.types.is_bool_dtype(present) or present.empty:
        return None
    return present.iloc[:: max(1, len(present) // TIME_SAMPLE)].astype(str).str.strip()


def unread_numbers_or_dates(column: str, present: pd.Series) -> str:
    """Why a unique text column that is nearly all digits and marks (`7 106,23`, dates in two formats) was not read
    as numbers or dates: the end of its reason for being dropped, and a warning, as it may be the column that
    matters; '' for text that is not such."""
    sample = text_sample(present)
    if sample is None or sample.str.fullmatch(r"[\d\s.,:/%€$£+\-−()']+").mean() < NUMBER_SHARE:
        return ""
    if sample.str.fullmatch(r"[0-9]+").mean() >= NUMBER_SHARE:  # digits alone: account numbers, IDs as they are
        return ""
    words = f"; nearly all digits and marks, such as {quoted(sample.head(2))}: numbers or dates not read as such"
    logging.getLogger("steps.features").warning(
        "column '%s' dropped as ID-like (text unique per row)%s; if it matters, write it as plain numbers (1234.5) "
        "or ISO dates (2024-05-31)",
        *(column, words),
    )
    return words


def time_format_of(present: pd.Series) -> TimeFormat | None:
    """The format in which (a spread sample of) the present values are nearly all dates or timestamps; None if
    there is none. Where two formats read the sample equally well (03/04/2024: month or day first), every value
    decides, and if they still tie, month first, with a note saying so."""
    if pd.api.types.is_datetime64_any_dtype(present):
        return TimeFormat(ISO8601)
    sample = text_sample(present)
    if sample is None or sample.str.match(DATE_SHAPE).mean() < TIME_SHARE:  # not shaped like dates: no format tried
        return None
    if sample.str.match(ISO_TIME).mean() >= TIME_SHARE:  # no other format reads ISO 8601 text
        return TimeFormat(ISO8601)
    shares = {fmt: parsed(sample, fmt).notna().mean() for fmt in TIME_FORMATS}
    best = max(shares.values())
    if best < TIME_SHARE:
        return None
    tied = [fmt for fmt, share in shares.items() if share == best]
    if len(tied) == 1:
        return TimeFormat(tied[0])
    whole = present.astype(str).str.strip()
    times = {fmt: parsed(whole, fmt) for fmt in tied}
    most = max(found.notna().sum() for found in times.values())
    first, *others = [fmt for fmt in tied if times[fmt].notna().sum() == most]
    differ = [fmt for fmt in others if not times[fmt].equals(times[first])]  # "05 May" is both %b and %B
    return TimeFormat(first, f"read as {first}: every value also reads as {', '.join(differ)}" if differ else "")


def numbers_in_text(
    present: pd.Series, nearly_unique: bool = False, decimal_comma: bool = False
) -> dict[str, Any] | None:
    """The encoding of text whose values (a spread sample of them) are nearly all numbers as spreadsheets write
    them ($1,234.50, 45%, (1,200), or plain numbers among a few words such as `n/a`); None if it is not such text.

    Not numbers: codes with leading zeros (`007`, ZIP codes such as `02134`), and whole numbers without any
    formatting that are nearly all distinct (`nearly_unique`: account numbers; the ID rule drops them); and, in a
    file written with decimal commas (`decimal_comma`), text with a comma or a dot, which the model would read
    with decimal points (`1,799 €` is 1.799 there, not 1799; `1.299 €` is 1299, not 1.299): it stays text."""
    sample = text_sample(present)
    if sample is None:
        return None
    written = sample.str.match(NUMBER_TEXT)
    if written.mean() < NUMBER_SHARE or sample[written].str.match(r"^[-+−]?0[0-9]").any():
        return None
    if nearly_unique and sample[written].str.fullmatch(r"[0-9]+").all():
        return None
    if decimal_comma and sample[written].str.contains(r"[,.]").any():  # 1.234 is 1234 there, 1,5 is 1.5
        return None
    others = sorted(set(sample[~written]))[:3]
    reason = "numbers written as text ($, thousands separators, %, brackets for negatives): read as numbers, median-"
    reason += "imputed with a missing indicator, and scaled"
    reason += f"; other values ({', '.join(map(repr, others))}) are missing" if others else ""
    return {"encoding": NUMBERS_IN_TEXT, "reason": reason}


def numbers_written_as_text(labels: pd.Series, plain_share: float, decimal_comma: bool = False) -> str | None:
    """What to do with a label of numbers written as text (`$1,234.50`, `45%`): a feature of them is read as
    numbers inside the model, but a label is read as written (a class each); None if the labels are not such text
    (`plain_share`: the share of them pandas reads as plain numbers; plain numbers among a few words are not)."""
    if plain_share >= NUMBER_SHARE or numbers_in_text(labels, decimal_comma=decimal_comma) is None:
        return None
    return (
        "they are numbers written as text (a currency sign, thousands separators, %), which a label is not read "
        "as: to predict the amount, write them as plain numbers (1234.5) in the data"
    )


def parsed(text: pd.Series, fmt: str) -> pd.Series:
    """`text` as times in format `fmt`, NaT where a value is not one."""
    if fmt == ISO8601:  # the regex too: pandas' ISO parser also takes a bare year ("2024") or month ("2024-05")
        return pd.to_datetime(text.where(text.str.match(ISO_TIME)), format=fmt, errors="coerce", utc=True)
    return pd.to_datetime(text, format=fmt, errors="coerce", utc=True)


def date_parts_encoding(values: pd.Series, spelled: TimeFormat, n_unique: int) -> dict[str, Any]:
    """The encoding of a date/time column, its format (as text) and why."""
    written = "datetime values" if pd.api.types.is_datetime64_any_dtype(values) else f"text in format {spelled.format}"
    reason = (
        f"date/time ({written}), {n_unique:,} distinct values: year, month, day, day of week, hour, ... (those that "
        "vary) and the time in days"
    )
    encoding = {"encoding": DATE_PARTS, "levels": n_unique, "format": spelled.format, "reason": reason}
    return encoding | ({"reason": f"{reason}; {spelled.note}", "note": spelled.note} if spelled.note else {})


def categorical_encoding(n_levels: int) -> dict[str, Any]:
    """The bounded encoding of a categorical column with this many levels, and why."""
    if n_levels <= ONE_HOT_MAX_LEVELS:
        reason = (
            f"{n_levels:,} levels (at most {ONE_HOT_MAX_LEVELS}): one-hot, levels under {RARE_LEVEL_ROWS} "
            f"training rows grouped, at most {ONE_HOT_MAX_CATEGORIES} columns"
        )
        return {"encoding": ONE_HOT, "levels": n_levels, "reason": reason}
    reason = f"{n_levels:,} levels (over {ONE_HOT_MAX_LEVELS}): target encoding, cross-fitted"
    return {"encoding": TARGET_ENCODING, "levels": n_levels, "reason": reason}


def choose_columns(
    frame: pd.DataFrame, target: str, counted: Mapping[str, Any] | None = None, decimal_comma: bool = False
) -> ColumnChoice:
    """Split the non-target columns into numeric, categorical and date/time features, and those to drop.

    `counted`: distinct values per column as load counted them (its profile), where they are plausible;
    `decimal_comma`: the table came from a CSV written with decimal commas (see `numbers_in_text`)."""
    choice = ColumnChoice()
    n_rows = len(frame)
    for column in frame.columns:
        if column == target:
            continue
        values = frame[column]
        present = values.dropna()
        is_bool = pd.api.types.is_bool_dtype(present.infer_objects())
        is_numeric = pd.api.types.is_numeric_dtype(values) and not is_bool
        given = (counted or {}).get(str(column))
        plausible = type(given) is int and (0 < given <= len(present) or given == len(present) == 0)
        n_unique = given if plausible else distinct_count(present, column, is_numeric)
        nearly_unique = n_rows >= 20 and n_unique >= ID_UNIQUE_RATIO * len(present)
        if present.empty:
            choice.dropped[column] = "all values missing"
        elif n_unique <= 1:
            choice.dropped[column] = "constant"
        elif (spelled := None if is_numeric else time_format_of(present)) is not None:
            choice.datetime.append(column)
            choice.encodings[column] = date_parts_encoding(values, spelled, int(n_unique))
        elif n_unique == n_rows and ID_NAME.search(str(column)):
            choice.dropped[column] = "ID-like (unique per row, named like an identifier)"
        elif (as_numbers := None if is_numeric else numbers_in_text(present, nearly_unique, decimal_comma)) is not None:
            choice.numeric.append(column)
            choice.encodings[column] = as_numbers | {"levels": int(n_unique)}
        elif not is_numeric and nearly_unique:
            choice.dropped[column] = "ID-like (text unique per row)" + unread_numbers_or_dates(str(column), present)
        elif is_numeric and n_unique == n_rows and _is_row_counter(present):
            choice.dropped[column] = "ID-like (a row counter)"
        elif is_numeric:
            choice.numeric.append(column)
        else:
            choice.categorical.append(column)
            choice.encodings[column] = categorical_encoding(int(n_unique))
    return choice


def distinct_count(present: pd.Series, column: str, is_numeric: bool) -> int:
    """The number of distinct values, where a rule below needs it: for a float column not named like an ID,
    only whether it is constant (0, 1 or 2 for more), as hashing a million floats costs ~0.1 s a column."""
    if present.empty:
        return 0
    if is_numeric and not pd.api.types.is_integer_dtype(present) and not ID_NAME.search(str(column)):
        return 1 if present.min() == present.max() else 2
    return int(present.nunique())


def _is_row_counter(values: pd.Series) -> bool:
    """An integer column that counts rows (1, 2, 3, ... in any order)."""
    if not pd.api.types.is_integer_dtype(values):
        return False
    ordered = values.sort_values().to_numpy()
    return len(ordered) > 2 and bool((ordered[1:] - ordered[:-1] == 1).all())


def build_feature_spec(
    frame: pd.DataFrame,
    target: str,
    task: str | None = None,
    counted: Mapping[str, Any] | None = None,
    decimal_comma: bool = False,
) -> FeatureSpec:
    """Validate the table and decide task (None: detected from the label) and features (`counted`: load's
    distinct values per column, not counted again; `decimal_comma`: load read a CSV with decimal commas)."""
    validate_target(frame, target, task)
    labels = frame[target].dropna()
    if pd.api.types.is_datetime64_any_dtype(labels) or isinstance(labels.dtype, pd.PeriodDtype):
        raise PipelineError(
            f"target '{target}' holds dates/times: a model here predicts classes or numbers; pass another "
            "-P target=, or turn the time into a number (days since an event) in the data"
        )
    task = task or detect_task(labels)
    if task == "regression" and not pd.api.types.is_numeric_dtype(labels):
        plain = pd.to_numeric(labels, errors="coerce").notna()
        formatted = numbers_written_as_text(labels, plain.mean(), decimal_comma)
        words = labels[~plain]
        raise PipelineError(
            f"target '{target}' is not numeric, so it cannot be a regression target: {len(words):,} of "
            f"{len(labels):,} labels are not numbers ({quoted(words.unique())}); "
            + (formatted or "clean them (an empty cell is an unlabelled row), or use -P task=classification")
        )
    choice = choose_columns(frame, target, counted, decimal_comma)
    refuse_infinities(frame, [*choice.numeric, *([target] if task == "regression" else [])])
    if not choice.numeric and not choice.categorical and not choice.datetime:
        raise PipelineError(
            f"no usable feature columns (dropped: {choice.dropped}); the data needs informative columns"
        )
    classes = None
    if task == CLASSIFICATION:
        counts = labels.value_counts()
        rare = counts[counts < MIN_ROWS_PER_CLASS]
        if not rare.empty:
            advice = "drop or merge them"
            if len(rare) > 5:  # many one-off classes: maybe numbers
                plain_share = pd.to_numeric(labels, errors="coerce").notna().mean()
                if plain_share >= 0.5:
                    advice += "; the label is mostly numbers: pass -P task=regression (and clean the rest)"
                elif formatted := numbers_written_as_text(labels, plain_share, decimal_comma):
                    advice = f"{formatted}, or merge them into classes"
            raise PipelineError(
                f"class(es) {quoted(rare.index)} have fewer than {MIN_ROWS_PER_CLASS} rows, too few for a stratified "
                f"train/validation/test split; {advice}"
            )
        classes = sorted(labels.unique().tolist(), key=lambda v: (str(type(v)), v))
        classes = [c.item() if hasattr(c, "item") else c for c in classes]
        warn_of_alike_classes(target, classes)
    input_columns = [str(c) for c in frame.columns if c != target]
    return FeatureSpec(
        target,
        task,
        choice.numeric,
        choice.categorical,
        choice.dropped,
        input_columns,
        classes,
        datetime=choice.datetime,
        encodings=choice.encodings,
    )

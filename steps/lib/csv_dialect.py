"""How a CSV file is written: its separator and, when it is not commas, its decimal mark.

A spreadsheet set to a language with decimal commas (German, French, ...) saves `;`-separated CSV with numbers
like `1.234,50`; databases and other tools export tab- or `|`-separated text. The separator is read from the
header: the one of commas, `;`, tabs and `|` that splits it into the most columns (commas on a tie). The
decimal mark is then read from the numbers of the first rows, only on evidence: `3,5`, `0,25`, `1234,5` or
`1.234,50` are decimal commas; `3.5`, `0.25` or `1,234.50` decimal points; `1.234` alone could be either and
decides nothing (read as pandas reads it, a decimal point). A file with both is refused: no reading of it is
safe. Comma-separated files are read as pandas reads them, decimal points.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from steps.lib.errors import PipelineError

SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "bars"}  # what spreadsheets and databases also export
SNIFF_ROWS = 2_000  # rows whose numbers decide the decimal mark

NUMBER_LIKE = re.compile(r"[-+−]?\d[\d.,]*")  # digits with dots and commas: the candidates for a decimal mark
EITHER_WAY = re.compile(r"[1-9]\d{0,2}[.,]\d{3}")  # 1.234 or 1,234: a thousands group or a decimal, who knows


@dataclass(frozen=True)
class CsvDialect:
    """A CSV file's separator, decimal mark and thousands mark (None: no thousands marks are read)."""

    separator: str = ","
    decimal: str = "."
    thousands: str | None = None

    def pandas_options(self) -> dict[str, str]:
        """`pd.read_csv`'s keywords for this dialect. Not its `thousands`: pandas drops that mark from anything
        of digits, so `31.05.2024` would be 31052024; numbers with marks are read by `marked_numbers` instead."""
        return {"sep": self.separator, "decimal": self.decimal}

    def words(self) -> str:
        """The dialect in words, for logs and errors: 'separated by semicolons, decimal commas'."""
        marks = "decimal commas" if self.decimal == "," else "decimal points"
        return f"separated by {SEPARATORS.get(self.separator, 'commas')}, {marks}"

    def number(self, text: pd.Series) -> pd.Series:
        """Numbers written in this dialect (`1.234,50`, `-3,5`) as floats; NaN where missing or not such a number
        (`31.05.2024`, `n/a`). In Arrow (RE2), each value once: a million values in well under a second."""
        import pyarrow as pa
        import pyarrow.compute as pc

        words = pa.array(text.astype(object).where(text.notna(), None), type=pa.string(), from_pandas=True)
        words = pc.replace_substring(pc.utf8_trim_whitespace(words), "−", "-")
        whole = rf"(\d{{1,3}}({re.escape(self.thousands)}\d{{3}})+|\d+)" if self.thousands else r"\d+"
        pattern = rf"^[-+]?{whole}({re.escape(self.decimal)}\d+)?$"
        words = pc.if_else(pc.match_substring_regex(words, pattern), words, pa.scalar(None, pa.string()))
        if self.thousands:
            words = pc.replace_substring(words, self.thousands, "")
        numbers = pc.cast(pc.replace_substring(words, self.decimal, "."), pa.float64())
        return pd.Series(numbers.to_numpy(zero_copy_only=False), index=text.index)

    def marked_numbers(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Text columns whose every value is a number with thousands marks (`1.234,50`) as numbers; pandas read
        the rest (`3,5` is 3.5 already; `31.05.2024` stays text, for featurize to find it is a date). A column
        whose first values are not all such numbers is passed over without reading the rest."""
        if not self.thousands:
            return frame
        for name in frame.columns:
            values = frame[name]
            if not (pd.api.types.is_string_dtype(values) or values.dtype == object):
                continue
            present = values.dropna()
            if present.empty or self.number(present.head(SNIFF_ROWS)).isna().any():
                continue
            numbers = self.number(values)
            if numbers.notna().sum() == len(present):
                frame[name] = numbers
        return frame


COMMAS = CsvDialect()


def decimal_evidence(value: str) -> str | None:
    """',' or '.' when `value` is a number that can only be read with that decimal mark, None otherwise."""
    if not NUMBER_LIKE.fullmatch(value):
        return None
    digits = value.lstrip("-+−")
    if "," in digits and "." in digits:  # 1.234,50 or 1,234.50: the mark that comes last is the decimal
        return "," if digits.rfind(",") > digits.rfind(".") else "."
    for mark, other in ((",", "."), (".", ",")):
        if digits.count(mark) > 1:  # 1.234.567: thousands marks, so the decimal is the other one (not 12.03.2024)
            return other if re.fullmatch(rf"\d{{1,3}}(\{mark}\d{{3}})+", digits) else None
        if mark in digits:
            return None if EITHER_WAY.fullmatch(digits) else mark
    return None


def decimal_mark(values: Iterable[str], shown: str, separator: str) -> str | None:
    """The decimal mark the values show (None: no evidence either way); a file showing both is refused."""
    seen: dict[str, str] = {}
    for value in values:
        mark = decimal_evidence(value.strip())
        if mark is not None:
            seen.setdefault(mark, value.strip())
            if len(seen) == 2:
                raise PipelineError(
                    f"'{shown}' (separated by {SEPARATORS[separator]}) writes numbers with decimal commas "
                    f"({seen[',']!r}) and with decimal points ({seen['.']!r}); save it with one decimal mark, "
                    "or as Parquet"
                )
    return next(iter(seen), None)


def header_columns(path: Path, separator: str) -> int:
    """How many columns the header has when read with `separator`."""
    return pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, sep=separator).shape[1]


def csv_dialect(path: Path, shown: str) -> CsvDialect:
    """The file's dialect (see the module's docstring): the separator that splits the header into the most
    columns, commas on a tie (`Income ($), net;city;y` is three columns separated by semicolons)."""
    counts = {separator: header_columns(path, separator) for separator in (",", *SEPARATORS)}
    separator = max(counts, key=lambda each: (counts[each], each == ","))
    if separator == ",":
        return COMMAS
    sample = pd.read_csv(path, sep=separator, nrows=SNIFF_ROWS, dtype=str, keep_default_na=False)
    values = (value for column in sample.columns for value in sample[column].unique())
    if decimal_mark(values, shown, separator) == ",":
        return CsvDialect(separator, decimal=",", thousands=".")
    return CsvDialect(separator)

"""How a CSV file is written: its separator and, when it is not commas, its decimal mark.

A spreadsheet set to a language with decimal commas (German, French, ...) saves `;`-separated CSV with numbers
like `1.234,50`; databases and other tools export tab- or `|`-separated text. The separator is read from the
header: the one of commas, `;`, tabs and `|` that splits it into the most columns (commas on a tie). The
decimal mark is then read from the numbers of the first rows, only on evidence: `3,5`, `0,25`, `1234,5` or
`1.234,50` are decimal commas; `3.5`, `0.25` or `1,234.50` decimal points; `1.234` alone could be either and
decides nothing: a `;`-separated file is then read with decimal commas (the separator of the languages that
write them, and how a batch with no telling value reads as its training file did), any other with points. A
file with both is refused: no reading of it is safe. Comma-separated files are read as pandas reads them.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import lzma
import numbers
import re
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd

from steps.lib.errors import PipelineError

SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "bars"}  # what spreadsheets and databases also export
SNIFF_ROWS = 2_000  # rows whose numbers decide the decimal mark
WHOLE_TYPES = ("long", "integer")  # MLflow's signature types of whole numbers
EVIDENCE_VALUES = 200  # distinct values of a column looked at for it (3,000 columns: seconds, not minutes)

NUMBER_LIKE = re.compile(r"[-+−]?\d[\d.,]*")  # digits with dots and commas: the candidates for a decimal mark
EITHER_WAY = re.compile(r"[1-9]\d{0,2}[.,]\d{3}")  # 1.234 or 1,234: a thousands group or a decimal, who knows


@dataclass(frozen=True)
class CsvDialect:
    """A CSV file's separator, decimal mark and thousands mark (None: no thousands marks are read)."""

    separator: str = ","
    decimal: str = "."
    thousands: str | None = None
    encoding: str = "utf-8"  # or cp1252 (Excel's "CSV" in Western European languages), utf-16 or utf-32 (a BOM says)

    def pandas_options(self) -> dict[str, str]:
        """`pd.read_csv`'s keywords for this dialect. Not its `thousands`: pandas drops that mark from anything
        of digits, so `31.05.2024` would be 31052024; numbers with marks are read by `marked_numbers` instead."""
        return {"sep": self.separator, "decimal": self.decimal, "encoding": self.encoding}

    def words(self) -> str:
        """The dialect in words, for logs and errors: 'separated by semicolons, decimal commas'."""
        marks = "decimal commas" if self.decimal == "," else "decimal points"
        text = {"utf-8": "", "cp1252": ", Windows-1252 text (not UTF-8)"}.get(
            self.encoding, f", {self.encoding.upper()} text"
        )
        return f"separated by {SEPARATORS.get(self.separator, 'commas')}, {marks}{text}"

    def pattern(self, whole_only: bool = False) -> str:
        """A number as this dialect writes it (RE2, Java's regex alike): sign, digits in groups of three or not,
        a decimal part, an exponent (`1,5E-05`, as R's write.csv2 has it); `,5` too. `whole_only`: a whole
        number, sign and digits alone (`1.234`, `-7`), or with a fraction of zeros (`70.0`: pandas writes a column
        of whole numbers so once one of its values is missing)."""
        whole = rf"(\d{{1,3}}({re.escape(self.thousands)}\d{{3}})+|\d+)" if self.thousands else r"\d+"
        decimal = re.escape(self.decimal)
        if whole_only:
            return rf"^[-+]?{whole}({decimal}0*)?$"
        return rf"^[-+]?({whole}({decimal}\d*)?|{decimal}\d+)([eE][-+]?\d+)?$"

    def plain(self, text: pd.Series, whole_only: bool = False) -> Any:
        """The values as Arrow text with decimal points and no thousands marks (`1.234,50` -> `1234.50`); null
        where missing or not a number so written (`31.05.2024`, `n/a`; with `whole_only`, `1,5` too)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        words = pa.array(text.astype(object).where(text.notna(), None), type=pa.string(), from_pandas=True)
        words = pc.replace_substring(pc.utf8_trim_whitespace(words), "−", "-")
        matches = pc.match_substring_regex(words, self.pattern(whole_only))
        words = pc.if_else(matches, words, pa.scalar(None, pa.string()))
        if self.thousands:
            words = pc.replace_substring(words, self.thousands, "")
        return pc.replace_substring(words, self.decimal, ".")

    def number(self, text: pd.Series, kind: str = "double") -> pd.Series:
        """Numbers written in this dialect as `kind` (MLflow's: double, float, long, integer); NaN where missing
        or not such a number. Whole kinds are read as whole numbers, exactly (not through a float): a value with
        a fraction is NaN there. In Arrow (RE2), a million values in well under a second."""
        import pyarrow as pa
        import pyarrow.compute as pc

        words = self.plain(text, whole_only=kind in WHOLE_TYPES)
        if kind in WHOLE_TYPES:
            words = pc.replace_substring_regex(words, r"^\+|\.0*$", "")  # Arrow's cast takes no `+`, no `.0`
            numbers = pc.cast(words, pa.int64())
            if numbers.null_count == 0:
                return pd.Series(numbers.to_numpy(), index=text.index, dtype="int32" if kind == "integer" else "int64")
            return pd.Series(numbers.to_numpy(zero_copy_only=False), index=text.index, dtype="float64")
        numbers = pc.cast(words, pa.float64()).to_numpy(zero_copy_only=False)
        return pd.Series(numbers, index=text.index, dtype="float32" if kind == "float" else "float64")

    def plain_whole_numbers(self, batch: Any, kinds: dict[str, str]) -> Any:
        """An Arrow batch's whole-number columns (read as text: `70.0` is one too, see `number`) cast by Arrow
        where every value is plain digits, the common case: ~7 s of predict's 58 s at 10,000,000 rows went to
        reading them all through the patterns. A column Arrow cannot cast is left as text, for the patterns."""
        import pyarrow as pa
        import pyarrow.compute as pc

        for name, kind in kinds.items():
            index = batch.schema.get_field_index(name)
            if index >= 0 and kind in WHOLE_TYPES and pa.types.is_string(batch.schema.field(index).type):
                whole = pa.int32() if kind == "integer" else pa.int64()
                try:
                    batch = batch.set_column(index, name, pc.cast(batch.column(index), whole))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue
        return batch

    def with_points(self, text: pd.Series) -> pd.Series:
        """The values as text, numbers in this dialect rewritten with decimal points (`1.234,50` -> `1234.50`),
        anything else as it was: what a reader of comma-and-point CSV then takes as it would."""
        plain = pd.Series(self.plain(text).to_numpy(zero_copy_only=False), index=text.index, dtype=object)
        return plain.where(plain.notna(), text.astype(object))

    def written(self, value: Any) -> Any:
        """A value pandas already read as a number, written back in this dialect (3.5 -> `3,5`); text as it is."""
        if isinstance(value, (str, bool)) or not isinstance(value, numbers.Real):
            return value
        return str(value).replace(".", self.decimal)

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
            if values.dtype == object:  # pandas' chunks typed apart: 3.5 read in one, `1.234,5` left in another
                values = values.map(self.written, na_action="ignore")
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
    if re.match(r"0\d", digits):  # 05.2024, 007: a code or a date, not a number
        return None
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


def header_columns(path: Path, separator: str, encoding: str) -> int:
    """How many columns the header has when read with `separator`."""
    read = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, sep=separator, encoding=encoding)
    return read.shape[1]


OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
ENCODING_BYTES = 1 << 20  # the first MiB decides between UTF-8 and Windows-1252


UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
UTF32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)


def text_encoding(path: Path) -> str:
    """utf-8, or cp1252 when the file's first MiB is not UTF-8 (`K\xf6ln`: Excel's "CSV" in German, French,
    Spanish, ...): every byte is some Windows-1252 character but five, and a file that is neither fails its read;
    utf-16 or utf-32 where a byte-order mark says so; `binary` for a NUL byte (see `csv_dialect`)."""
    with opened_bytes(path) as handle:
        head = handle.read(ENCODING_BYTES)
    for encoding, marks in (("utf-32", UTF32_BOMS), ("utf-16", UTF16_BOMS)):  # UTF-32's little-endian BOM first:
        if head.startswith(marks):  # it begins as UTF-16's does (PowerShell's Out-File and Notepad save UTF-16)
            return encoding
    if b"\x00" in head:  # no text has a NUL: UTF-16 or UTF-32 without a byte-order mark, or not text at all
        return "binary"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def csv_dialect(path: Path, shown: str) -> CsvDialect:
    """The file's dialect (see the module's docstring): the separator that splits the header into the most
    columns, commas on a tie (`Income ($), net;city;y` is three columns separated by semicolons)."""
    encoding = text_encoding(path)
    if encoding == "binary":
        raise PipelineError(
            f"'{shown}' has NUL bytes, which no text has: UTF-16 without a byte-order mark, or not a CSV file; "
            "save it as CSV UTF-8"
        )
    with opened_text(path, encoding) as text:
        first = text.readline(200).strip().lstrip("\ufeff")
    if re.fullmatch(r"(?i)sep=.", first):  # Excel's hint, which Excel alone reads: every other reader takes a header
        raise PipelineError(
            f"'{shown}' starts with Excel's separator line `{first}`: delete that line (the header "
            "must come first; the separator is found without it)"
        )
    counts = {separator: header_columns(path, separator, encoding) for separator in (",", *SEPARATORS)}
    separator = max(counts, key=lambda each: (counts[each], each == ","))
    if separator == ",":
        return CsvDialect(encoding=encoding)
    sample = pd.read_csv(path, sep=separator, nrows=SNIFF_ROWS, dtype=str, keep_default_na=False, encoding=encoding)
    values = (value for column in sample.columns for value in sample[column].unique()[:EVIDENCE_VALUES])
    mark = decimal_mark(values, shown, separator)
    if mark == "," or (mark is None and separator == ";"):  # `;` is how decimal-comma locales separate
        return CsvDialect(separator, decimal=",", thousands=".", encoding=encoding)
    return CsvDialect(separator, encoding=encoding)


EXTRA_FIELD = "\x00separator at the end of the row"  # Arrow's name for the empty field after a row's last separator


def unnamed(names: list[str]) -> list[str]:
    """The header's names as pandas reads them: an empty one is `Unnamed: <position>` (Arrow would name it '')."""
    return [name or f"Unnamed: {position}" for position, name in enumerate(names)]


def rows_end_with_separator(path: Path, dialect: CsvDialect, columns: int) -> bool:
    """Whether the first row after the header ends with a separator the header does not have (`1,2,yes,` under
    `a,b,y`), as some exports write every row: pandas reads it as if the separator were not there (load's read
    of the file), Arrow would count one column too many."""
    with opened_text(path, dialect.encoding) as text:
        rows = csv.reader(text, delimiter=dialect.separator)
        next(rows, None)
        first = next(rows, [])
    return len(first) == columns + 1 and first[-1] == ""


@contextmanager
def opened_text(path: Path, encoding: str) -> Iterator[IO[str]]:
    """The file as text (see `opened_bytes`)."""
    with opened_bytes(path) as binary:
        yield io.TextIOWrapper(binary, encoding=encoding, newline="")


@contextmanager
def opened_bytes(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, uncompressed (the first member of a zip, as pandas reads it)."""
    if path.suffix.lower() != ".zip":
        with OPENERS.get(path.suffix.lower(), open)(path, "rb") as handle:
            yield handle
        return
    with zipfile.ZipFile(path) as archive, archive.open(archive.namelist()[0]) as member:
        yield member


def arrow_columns(
    path: Path, dialect: CsvDialect, names: list[str], keep: Iterable[str]
) -> tuple[list[str], list[str], int]:
    """What Arrow is told of the file: a name for every field of a row, the columns to read of them, and the lines
    the header takes (Arrow skips lines, not rows: a header name may hold a quoted line break, as Excel writes
    one). Named as pandas names them (load's read, which the model's signature took), without the field after a
    separator ending every row (given a name, not read), and without an unnamed last column unless `keep` has it
    (a separator ending the header too: load drops that column, empty in every row, see
    `without_trailing_column`)."""
    named = unnamed(names)
    fields = [*named, EXTRA_FIELD] if rows_end_with_separator(path, dialect, len(names)) else named
    trailing = bool(names) and not names[-1] and named[-1] not in set(keep)
    return fields, named[:-1] if trailing else named, 1 + sum(name.count("\n") for name in names)


def without_trailing_column(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """`frame` (read by pandas from a CSV with the header `names`) without its last column when that has no name
    and no value: the column a separator ending every row (the header's too) makes, not a column of the table."""
    if len(names) > 1 and not names[-1] and frame.iloc[:, -1].isna().all():
        return frame.iloc[:, :-1]
    return frame

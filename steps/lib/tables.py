"""Tables in: scikit-learn's bundled sets, local paths, file://, http(s):// and MLflow artifact URIs."""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from steps.lib.column_types import pandas_names, plain_columns
from steps.lib.csv_dialect import COMMAS, WHOLE_TYPES, CsvDialect, arrow_columns, csv_dialect, without_trailing_column
from steps.lib.errors import PipelineError, one_line
from steps.lib.signing import sha256_file
from steps.lib.uris import check_uri_credentials, expand_placeholders, redact_uri, split_credentials

DEFAULT_DATA_URI = "sklearn:iris"
logger = logging.getLogger("steps.tables")

# name -> (scikit-learn loader, label column name, whether labels are class names)
BUNDLED_DATASETS: dict[str, tuple[str, str, bool]] = {
    "iris": ("load_iris", "species", True),
    "wine": ("load_wine", "cultivar", True),
    "breast_cancer": ("load_breast_cancer", "diagnosis", True),
    "digits": ("load_digits", "digit", False),
    "diabetes": ("load_diabetes", "progression", False),
}
# Downloads: at most this many bytes (default 2 GiB) and this many seconds in all (default 900), read in chunks.
MAX_DOWNLOAD_BYTES = "PIPELINE_MAX_DOWNLOAD_BYTES"
DOWNLOAD_SECONDS = "PIPELINE_DOWNLOAD_SECONDS"
DEFAULT_MAX_DOWNLOAD_BYTES = 2 * 1024**3
DOWNLOAD_CHUNK = 1 << 20
DATA_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def snake_case(name: str) -> str:
    """'sepal length (cm)' -> 'sepal_length_cm'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def load_bundled_frame(name: str) -> tuple[pd.DataFrame, str]:
    """One of scikit-learn's bundled data sets as a frame with snake_case columns, and its label."""
    if name not in BUNDLED_DATASETS:
        raise PipelineError(
            f"unknown bundled data set 'sklearn:{name}'; use one of "
            + ", ".join(f"sklearn:{known}" for known in BUNDLED_DATASETS)
        )
    import sklearn.datasets

    loader, label, named_classes = BUNDLED_DATASETS[name]
    bunch = getattr(sklearn.datasets, loader)(as_frame=True)
    frame = bunch.data.rename(columns=snake_case)
    labels = bunch.target
    if named_classes:
        labels = pd.Series(np.asarray(bunch.target_names)[labels.to_numpy()], dtype=object)
    frame[label] = labels.to_numpy()
    return frame, label


def dataset_name(data_uri: str) -> str:
    """A short human name for the data: 'iris' for sklearn:iris, the file stem otherwise."""
    if data_uri.startswith("sklearn:"):
        return data_uri.split(":", 1)[1]
    path = urllib.parse.urlsplit(data_uri).path.rstrip("/") or data_uri
    stem = Path(path).name
    for suffix in (".gz", ".bz2", ".zip", ".xz", *DATA_SUFFIXES):
        stem = stem.removesuffix(suffix)
    return snake_case(stem) or "data"


def read_data(data_uri: str, copy: Path | None = None) -> pd.DataFrame:
    """Read a table from sklearn:<name>, a local path, file://, http(s):// or an MLflow artifact URI.

    `copy`: what main already fetched from `data_uri` (so a URL is downloaded once, and the cache digest is of
    the bytes read here); used when it is still there.
    """
    if not data_uri.strip():
        raise PipelineError("data_uri is empty; pass -P data_uri=<path, URL or sklearn:iris>")
    if data_uri.startswith("sklearn:"):
        return load_bundled_frame(data_uri.split(":", 1)[1])[0]
    if copy is not None and copy.exists():
        return read_table_file(find_data_file(copy, data_uri), data_uri)
    with local_copy(data_uri) as local:
        return read_table_file(find_data_file(local, data_uri), data_uri)


NUMERIC_TYPES = ("double", "float", *WHOLE_TYPES)  # MLflow's signature types of numbers


def not_as_signed(name: str, kind: str, what: str = "numeric") -> str:
    """The start of the one line for a value the model's signature does not take; the value follows."""
    return f"column '{name}' must be {what} ({kind}) as in the model's signature; found "


# Signature types (MLflow's names) -> the Arrow type a CSV column is read as, the same in every block.
ARROW_TYPES = {
    "double": "float64",
    "float": "float32",
    "long": "int64",
    "integer": "int32",
    "string": "string",
    "boolean": "bool",  # `True`/`true`/`1`, `False`/`false`/`0`: not the integers a first block of 0/1 would give
}


def read_batches(
    data_uri: str, types: dict[str, str], batch_rows: int, text_numbers: Collection[str] = ()
) -> Iterator[pd.DataFrame]:
    """The table in frames of at most `batch_rows` rows, memory bounded by the batch, not the file.

    `types`: column -> MLflow signature type; a CSV reads those columns as that type in every block (a
    value that does not convert is an error naming the column), the others as the first block has them.
    `text_numbers`: columns read as text that hold numbers (monitor's numeric features): in a CSV written with
    decimal commas, their numbers come with decimal points. A bundled set is small: one frame.
    """
    if data_uri.startswith("sklearn:"):
        yield read_data(data_uri)
        return
    with local_copy(data_uri) as local:
        path = find_data_file(local, data_uri)
        shown = redact_uri(data_uri)
        kind, names, dialect = checked_table_file(path, shown)
        try:
            if kind == "parquet":
                import pyarrow.parquet

                # pre_buffer (the default) kept each chunk read: 3,000,000 rows, 144 -> 397 MB; without, 105 MB
                parquet = pyarrow.parquet.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
                for batch in parquet.iter_batches(batch_size=batch_rows):
                    yield pandas_names(batch.to_pandas(), shown)
            else:
                yield from csv_batches(path, names, types, batch_rows, dialect, text_numbers)
        except PipelineError:
            raise
        except Exception as error:  # pyarrow's conversion and parse errors: the column by its name
            context = f"cannot read '{shown}' as {kind}"
            raise PipelineError(csv_error(str(error), names, types, context)) from None


def csv_error(text: str, names: list[str], types: dict[str, str], context: str) -> str:
    """pyarrow's error in one line, the column by its name; a value that does not convert, as the signature says."""
    numbered = re.search(r"CSV column #(\d+)", text)
    if not numbered or int(numbered.group(1)) >= len(names):
        return f"{context}: {one_line(text, 240)}"
    name = names[int(numbered.group(1))]
    invalid = re.search(r"conversion error to \w+: invalid value '(.*?)'", text)
    if invalid and types.get(name) in NUMERIC_TYPES:
        return not_as_signed(name, types[name]) + repr(invalid.group(1))
    if invalid and types.get(name) == "boolean":
        found = invalid.group(1)
        return not_as_signed(name, "boolean", "true or false") + repr(found)
    return f"{context}: {one_line(text.replace(numbered.group(0), f'column {name!r}'), 240)}"


def csv_batches(
    path: Path, names: list[str], types: dict[str, str], batch_rows: int, dialect: CsvDialect, in_text: Collection[str]
) -> Iterator[pd.DataFrame]:
    """A CSV file (its header `names`) in frames of `batch_rows` rows, every column of one Arrow type throughout."""
    import pyarrow as pa
    import pyarrow.csv

    fields, columns, header_lines = arrow_columns(path, dialect, names, types)

    def reader(column_types: dict[str, Any]) -> Any:
        convert = pyarrow.csv.ConvertOptions(
            column_types=column_types, strings_can_be_null=True, decimal_point=dialect.decimal, include_columns=columns
        )
        return pyarrow.csv.open_csv(
            path,
            read_options=pyarrow.csv.ReadOptions(
                block_size=1 << 22, encoding=dialect.encoding, column_names=fields, skip_rows=header_lines
            ),
            parse_options=pyarrow.csv.ParseOptions(delimiter=dialect.separator),
            convert_options=convert,
        )

    declared = {name: pa.type_for_alias(ARROW_TYPES[kind]) for name, kind in types.items() if kind in ARROW_TYPES}
    marked = marked_columns(types, dialect)  # `1.234,50`: read as text, then as numbers here (Arrow reads no marks)
    declared |= dict.fromkeys(marked, pa.string())
    first = reader(declared)
    fixed = dict(declared)
    for field in first.schema:  # what is not declared: as the first block has it, ints as floats (room for gaps),
        if field.name not in fixed:  # and a column with no value in the first block as text (any later value is)
            fixed[field.name] = pa.float64() if pa.types.is_integer(field.type) else field.type
            if pa.types.is_null(field.type):
                fixed[field.name] = pa.string()
    pending: list[pd.DataFrame] = []
    rows = read = 0
    for batch in reader(fixed):
        pending.append(
            numbers_read(dialect.plain_whole_numbers(batch, types).to_pandas(), marked, types, dialect, in_text)
        )
        rows, read = rows + batch.num_rows, read + batch.num_rows
        while rows >= batch_rows:
            whole = pd.concat(pending, ignore_index=True)
            yield whole.iloc[:batch_rows]
            pending, rows = [whole.iloc[batch_rows:]], len(whole) - batch_rows
    if rows:
        yield pd.concat(pending, ignore_index=True)
    elif not read:  # a header and no rows: an empty frame, the checks say so
        yield first.schema.empty_table().to_pandas()


def marked_columns(types: dict[str, str], dialect: CsvDialect) -> list[str]:
    """The signature's numbers read as text first: all with thousands marks, else the whole ones (`70.0`)."""
    return [name for name, kind in types.items() if kind in (NUMERIC_TYPES if dialect.thousands else WHOLE_TYPES)]


def numbers_read(
    frame: pd.DataFrame, marked: list[str], types: dict[str, str], dialect: CsvDialect, text_numbers: Collection[str]
) -> pd.DataFrame:
    """`marked` columns (text such as `1.234,50`) as the signature's numbers, a value that is not one an error
    naming the column, as Arrow's own conversion is; `text_numbers` columns (read as text) with their numbers
    written with decimal points, the rest of their values as they are."""
    for name in (n for n in marked if n in frame.columns and not pd.api.types.is_numeric_dtype(frame[n])):
        text, kind = frame[name], types[name]
        numbers = dialect.number(text, kind)
        bad = text.notna() & numbers.isna()
        if bad.any():
            found = text[bad].iloc[0]
            fraction = kind in WHOLE_TYPES and dialect.number(text[bad].head(1)).notna().all()
            raise PipelineError(not_as_signed(name, kind, "a whole number" if fraction else "numeric") + repr(found))
        frame[name] = numbers
    for name in (name for name in text_numbers if name in frame.columns and dialect.thousands):
        frame[name] = dialect.with_points(frame[name])
    return frame


def is_remote(uri: str) -> bool:
    """Whether reading `uri` means fetching it (http(s), an MLflow artifact URI), not opening a local path."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    return not (uri.startswith("sklearn:") or scheme in {"", "file"} or (len(scheme) == 1 and sys.platform == "win32"))


@contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path holding what `uri` names; a fetched copy is removed afterwards, on success or failure."""
    if not is_remote(uri):
        yield fetch_local(uri)
        return
    folder = Path(tempfile.mkdtemp(prefix="pipeline-data-"))
    try:
        yield fetch_local(uri, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fetch_local(uri: str, folder: Path | None = None) -> Path:
    """A local path holding what `uri` names: fetches http(s) and MLflow artifact URIs into `folder` (None: a
    new temporary folder the caller owns; see local_copy for one removed after use)."""
    shown = redact_uri(uri)
    check_uri_credentials("data_uri", uri)
    uri = expand_placeholders(uri)
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if not is_remote(uri):
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(uri).path)) if scheme else Path(uri)
        path = path.expanduser()
        if not path.exists():
            raise PipelineError(f"data not found at '{shown}'; check the path or data_uri")
        refuse_special_file(path, shown)
        return path
    target_dir = folder or Path(tempfile.mkdtemp(prefix="pipeline-data-"))
    if scheme in {"http", "https"}:
        return download(uri, target_dir / (Path(urllib.parse.urlsplit(uri).path).name or "data.csv"), shown)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target_dir)))
    except Exception as error:  # MLflow raises several types for a missing artifact
        raise PipelineError(f"cannot fetch '{shown}': {one_line(str(error), 200)}") from None


def download_limits() -> tuple[int, float]:
    """(most bytes, seconds in all) a download may take: PIPELINE_MAX_DOWNLOAD_BYTES, PIPELINE_DOWNLOAD_SECONDS."""
    limits = []
    for name, default, kind in (
        (MAX_DOWNLOAD_BYTES, DEFAULT_MAX_DOWNLOAD_BYTES, int),
        (DOWNLOAD_SECONDS, 900.0, float),
    ):
        raw = os.environ.get(name, "").strip()
        try:
            value = kind(raw) if raw else default
            assert value > 0
        except (ValueError, AssertionError):
            raise PipelineError(f"{name} must be a positive {kind.__name__}; got {raw!r}") from None
        limits.append(value)
    return int(limits[0]), float(limits[1])


class SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects to http(s) only, and never from https down to http (urllib also follows ftp, and downgrades)."""

    def __init__(self, shown: str) -> None:
        super().__init__()
        self.shown = shown

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        old_scheme = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new_scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        why = None
        if new_scheme not in ("http", "https"):
            why = f"to {new_scheme or 'a relative'}: only http(s) is followed"
        elif old_scheme == "https" and new_scheme == "http":
            why = "from https down to http: the data would travel unencrypted"
        if why is not None:
            raise PipelineError(
                f"'{self.shown}' redirects to '{redact_uri(newurl)}' ({why}); use the final https URL directly"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(uri: str, target: Path, shown: str) -> Path:
    """Stream an http(s) URL to `target` in chunks, under the size cap and the overall deadline.

    `shown`: the URL as errors may show it (placeholders unexpanded, no password).
    """
    cap, seconds = download_limits()
    bare, credentials = split_credentials(uri)
    request = urllib.request.Request(bare)
    if credentials is not None:  # basic auth from the user-info, which urllib does not do by itself
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {token}")  # not sent on to a redirect
    deadline = time.monotonic() + seconds
    too_big = (
        f"the download of '{shown}' is larger than the cap of {cap:,} bytes; raise {MAX_DOWNLOAD_BYTES} "
        "if the table is meant to be this big"
    )
    opener = urllib.request.build_opener(SafeRedirects(shown))
    try:
        with opener.open(request, timeout=min(60.0, seconds)) as response, target.open("wb") as out:
            if int(response.headers.get("Content-Length") or 0) > cap:
                raise PipelineError(too_big)
            written = 0
            while chunk := response.read1(DOWNLOAD_CHUNK):  # what has arrived: the deadline is checked often
                written += len(chunk)
                if written > cap:
                    raise PipelineError(too_big)
                if time.monotonic() > deadline:
                    raise PipelineError(
                        f"the download of '{shown}' took over {seconds:g} s ({written:,} bytes so far); raise "
                        f"{DOWNLOAD_SECONDS} or copy the file nearer"
                    )
                out.write(chunk)
    except PipelineError:
        target.unlink(missing_ok=True)
        raise
    except OSError as error:
        target.unlink(missing_ok=True)
        raise PipelineError(f"cannot download '{shown}': {one_line(str(error), 200)}") from None
    return target


def refuse_special_file(path: Path, shown: str) -> None:
    """Only regular files (and folders of them) are read: a FIFO or a device would block or never end."""
    mode = path.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special"
        )
        raise PipelineError(f"'{shown}' is {kind}, not a regular file; point data_uri at a CSV or Parquet file")


def find_data_file(path: Path, shown_uri: str) -> Path:
    """The data file itself, or the single CSV/Parquet file inside a directory."""
    if path.is_file():
        return path
    candidates = sorted(p for p in path.iterdir() if table_format(p) is not None)
    if len(candidates) != 1:
        raise PipelineError(
            f"'{redact_uri(shown_uri)}' is a directory with {len(candidates)} CSV/Parquet files; "
            "point data_uri at one file"
        )
    return candidates[0]


def table_format(path: Path) -> str | None:
    """'csv' or 'parquet' from the file name (compressed CSV included), None if neither."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in {".gz", ".bz2", ".zip", ".xz"}:
        suffixes = suffixes[:-1]
    return DATA_SUFFIXES.get(suffixes[-1]) if suffixes else None


def checked_table_file(path: Path, shown: str) -> tuple[str, list[str], CsvDialect]:
    """A file's kind (csv or parquet), column names and CSV dialect (separator and decimal mark), after the checks
    every reader makes: a regular file, a known format, a header (and no nested Parquet column), no repeated
    column name, one decimal mark."""
    kind = table_format(path)
    refuse_special_file(path, shown)
    if kind is None:
        raise PipelineError(f"'{shown}' is neither .csv nor .parquet; convert it or rename it")
    dialect = COMMAS
    try:
        if kind == "csv":
            dialect = csv_dialect(path, shown)
        names = header_names(path, kind, dialect)
    except pd.errors.EmptyDataError:
        raise PipelineError(f"'{shown}' is empty: it has no header and no rows") from None
    except PipelineError:
        raise
    except Exception as error:
        raise PipelineError(f"cannot read '{shown}' as {kind}: {one_line(str(error), 200)}") from None
    refuse_duplicate_headers(names, shown)
    if dialect != COMMAS:
        logger.info("'%s' is read as %s", shown, dialect.words())
    return kind, names, dialect


def read_table_file(path: Path, shown_uri: str) -> pd.DataFrame:
    """Read one CSV or Parquet file, turning parser failures into a one-line error."""
    shown = redact_uri(shown_uri)
    kind, names, dialect = checked_table_file(path, shown)
    try:
        if kind == "csv":
            with warnings.catch_warnings():  # a row longer than the header: an error, as batches have it
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(path, index_col=False, **dialect.pandas_options())
            frame = dialect.marked_numbers(without_trailing_column(frame, names))
            frame.attrs["csv_dialect"] = dataclasses.asdict(dialect)  # for load's metadata (featurize reads it)
            return frame
        frame = read_frame(path)
    except pd.errors.EmptyDataError:
        raise PipelineError(f"'{shown}' is empty: it has no header and no rows") from None
    except pd.errors.ParserWarning:  # pandas would take the first values as an index and shift the rest
        raise PipelineError(
            f"'{shown}' has rows with more values than its header has columns (a value holding the separator "
            "without quotes?); quote such values or fix those rows"
        ) from None
    except Exception as error:
        raise PipelineError(f"cannot read '{shown}' as {kind}: {one_line(str(error), 200)}") from None
    return plain_columns(frame, shown)


def read_frame(path: Path) -> pd.DataFrame:
    """A Parquet file as a frame equal to pandas' `read_parquet`, for every read of a whole table (load's, each
    step's of its splits): each column its own block (pandas copies the floats into one 2-D block) and Arrow's
    memory freed as each is converted (a million rows of 29 columns: 0.38-0.45 s, ~110 MB less peak, against
    0.72-1.05 s); each column chunk read as it is decoded (`pre_buffer` first reads the file: ~160 MB more)."""
    return pd.read_parquet(path, pre_buffer=False, to_pandas_kwargs={"split_blocks": True, "self_destruct": True})


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """`frame` as a Parquet file, written for the steps that read it whole: dictionary pages for text columns
    only (a million distinct floats fill a dictionary page and fall back to plain, after the work), and no
    min/max statistics (nothing here filters row groups). 1,000,000 x 29: 0.48 s against 0.71-0.82 s for
    pyarrow's defaults, the file the same size."""
    import pyarrow as pa
    import pyarrow.parquet

    table = pa.Table.from_pandas(frame, preserve_index=False)  # text columns: zero-copy from pandas' Arrow
    kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_dictionary)
    text = [field.name for field in table.schema if any(kind(field.type) for kind in kinds)]
    pyarrow.parquet.write_table(table, path, use_dictionary=text, write_statistics=False)


def write_parquet_digest(frame: pd.DataFrame, path: Path) -> str:
    """`write_parquet`, then the file's sha256 for the output manifest, on the same thread: a step writes on a
    thread beside its other work, so the hash (~0.15 s for a million rows' 164 MB) is taken there too, not after."""
    write_parquet(frame, path)
    return sha256_file(path)


def header_names(path: Path, kind: str, dialect: CsvDialect = COMMAS) -> list[str]:
    """The column names as the file has them (pandas would rename a repeated CSV header `x` to `x.1`)."""
    if kind == "csv":
        options = {"sep": dialect.separator, "encoding": dialect.encoding}
        first_row = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, **options).iloc[0]
        return [str(name) for name in first_row]
    import pyarrow.parquet
    import pyarrow.types

    schema = pyarrow.parquet.read_schema(path)
    nested = [(field.name, str(field.type)) for field in schema if pyarrow.types.is_nested(field.type)]
    if nested:
        listed = ", ".join(f"'{name}' ({kind})" for name, kind in nested)
        raise PipelineError(f"nested Parquet column(s) {listed}: a model takes flat columns; flatten or drop them")
    return list(schema.names)


def refuse_duplicate_headers(names: list[str], shown: str) -> None:
    counts = Counter(names)  # one pass: a table may have thousands of columns
    repeated = sorted(name for name, count in counts.items() if name and count > 1)  # pandas names empty ones
    if repeated:
        listed = ", ".join(f"'{name}' ({counts[name]} times)" for name in repeated)
        raise PipelineError(f"'{shown}' has duplicate column names: {listed}; give each column a name of its own")

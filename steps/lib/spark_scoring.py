"""predict's `backend=spark`: the model scores a table on Spark into a Parquet dataset.

The driver loads the model the way the local backend does and scores the first rows itself, which
checks the model and the table and gives the output's columns and types. Each executor then loads the
model once (shipped with `addFile`) and scores its partitions with `mapInPandas`: the same function
as the local backend (`steps.lib.scoring.score_batch`), so the columns are the same: the inputs,
`prediction` and `proba_<class>` per class (`mlflow.pyfunc.spark_udf` returns one column only).
"""

from __future__ import annotations

import re
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd

from steps.lib.artifacts import fetched
from steps.lib.csv_dialect import COMMAS, SEPARATORS, WHOLE_TYPES, CsvDialect
from steps.lib.errors import PipelineError, one_line
from steps.lib.scoring import PredictionTally, check_batch, load_models, score_batch, signature_columns
from steps.lib.spark import ship_steps_package, spark_session
from steps.lib.tables import (
    NUMERIC_TYPES,
    checked_table_file,
    find_data_file,
    local_copy,
    not_as_signed,
    refuse_duplicate_headers,
    table_format,
)
from steps.lib.uris import redact_uri

# Storage a Spark cluster reads itself: these URIs go to Spark as they are, not through a local copy.
SPARK_SCHEMES = ("s3a", "hdfs", "abfss", "gs", "dbfs", "wasbs")
SPARK_TYPES = {"double": "double", "float": "float", "long": "bigint", "integer": "int", "boolean": "boolean"}
CHECK_ROWS = 100


def read_table(
    session: Any, data_uri: str, path: str, columns: list[tuple[str, str]], dialect: CsvDialect = COMMAS
) -> Any:
    """The table as a Spark DataFrame: Parquet as typed; CSV (in `dialect`: its separator, its decimal and
    thousands marks) as text, the signature's columns cast to its types."""
    kind = table_format(Path(urllib.parse.urlsplit(path).path))
    if kind == "parquet":
        return session.read.parquet(path)
    if kind != "csv":
        raise PipelineError(f"'{data_uri}' is neither .csv nor .parquet; convert it or rename it")
    # Each file's header checked against the first's (enforceSchema=False: a folder of CSVs in another column order
    # fails); but for UTF-16 and UTF-32, which Spark reads whole (multiLine: it splits lines as bytes, and `\n` is
    # more than one byte there), where that check fails on an empty header name (`a;b;`).
    wide = dialect.encoding in ("utf-16", "utf-32")
    options = {"sep": dialect.separator, "encoding": dialect.encoding, "multiLine": wide, "enforceSchema": wide}
    frame = without_trailing_field(
        session.read.csv(path, header=True, inferSchema=False, **options), (n for n, _ in columns)
    )
    from pyspark.sql import functions as F  # noqa: N812 (Spark's own spelling)

    for name, kind in columns:
        if name in frame.columns and kind in SPARK_TYPES:
            column = F.col(f"`{name}`")
            if kind in NUMERIC_TYPES and (dialect.thousands or kind in WHOLE_TYPES):  # `1.234,50`, `70.0`: by pattern
                column = marked_number(F, column, dialect, name, kind)
            elif kind in NUMERIC_TYPES:
                column = named_cast(F, column, name, kind)
            frame = frame.withColumn(name, column.cast(SPARK_TYPES[kind]))
    return frame


def without_trailing_field(frame: Any, keep: Iterable[str]) -> Any:
    """A CSV read by Spark with its unnamed columns named as pandas names them (Spark: `_c<position>`, pandas:
    `Unnamed: <position>`), and without an unnamed last column the signature does not have: the one a separator
    ending the header and every row makes, which load drops (Spark already drops a field after a separator
    ending only the rows)."""
    renamed = frame.toDF(*(f"Unnamed: {i}" if name == f"_c{i}" else name for i, name in enumerate(frame.columns)))
    last = renamed.columns[-1] if renamed.columns else None
    return renamed.drop(last) if last == f"Unnamed: {len(renamed.columns) - 1}" and last not in set(keep) else renamed


def marked_number(F: Any, column: Any, dialect: CsvDialect, name: str, kind: str) -> Any:  # noqa: N803 (Spark's F)
    """A Spark column of text in `dialect` (`1.234,50`) as text with decimal points (`1234.50`), by the same
    pattern as the local backend (`31.05.2024` or `1.5` in a decimal-comma file is no number there either; `1,5`
    is no whole number for a long or integer column): a value that does not match fails the job, naming the
    column and the value. A whole number may end in a fraction of zeros (`70.0`, as pandas writes a column of
    whole numbers with a gap), as the local backend reads it: Spark's cast (ANSI, Spark 4's default) refuses it."""
    whole_only = kind in WHOLE_TYPES
    refusal = not_as_signed(name, kind, "a whole number" if whole_only else "numeric")
    text = F.regexp_replace(F.regexp_replace(column, r"^[\s\u00a0]+|[\s\u00a0]+$", ""), "−", "-")
    unmarked = F.regexp_replace(text, re.escape(dialect.thousands), "") if dialect.thousands else text
    plain = F.regexp_replace(unmarked, re.escape(dialect.decimal), ".")
    plain = F.regexp_replace(plain, r"^\+|\.0*$", "") if whole_only else plain
    found = F.raise_error(F.concat(F.lit(f"{refusal}'"), text, F.lit("'")))
    missing = text.isNull() | text.isin(*missing_text())  # as pandas and Arrow read them: `NA` (R's write.csv2), ...
    return F.when(missing, F.lit(None)).when(text.rlike(dialect.pattern(whole_only)), plain).otherwise(found)


def named_cast(F: Any, column: Any, name: str, kind: str) -> Any:  # noqa: N803 (Spark's F)
    """A Spark column of text cast to the signature's number type, where a value that is no number fails the
    job naming the column and the value, as the local backend says it (Spark's own cast names neither)."""
    typed = column.try_cast(SPARK_TYPES[kind])
    missing = column.isNull() | column.isin(*missing_text())
    found = F.raise_error(F.concat(F.lit(f"{not_as_signed(name, kind)}'"), column, F.lit("'")))
    return F.when(missing, F.lit(None)).when(typed.isNull(), found).otherwise(typed)


def missing_text() -> tuple[str, ...]:
    """What the local backend's readers take for a missing value: Arrow's defaults (its batches), and pandas'
    two more (load's reading of the training file). Spark's CSV reader takes only the empty field."""
    import pyarrow.csv

    return (*pyarrow.csv.ConvertOptions().null_values, "<NA>", "None")


def refuse_spark_columns(session: Any, frame: Any, data_uri: str) -> None:
    """For a table Spark reads from a cluster's store: what `checked_table_file` refuses in a local one. Nested
    Parquet columns by Spark's schema; repeated CSV headers by the file's first line (Spark's reader would
    rename them, `x0`, `x2`, as pandas' would `x.1`)."""
    import csv

    from pyspark.sql.types import ArrayType, MapType, StructType

    shown = redact_uri(data_uri)
    if table_format(Path(urllib.parse.urlsplit(data_uri).path)) == "parquet":
        nested = [f for f in frame.schema.fields if isinstance(f.dataType, (ArrayType, MapType, StructType))]
        if nested:
            listed = ", ".join(f"'{f.name}' ({f.dataType.simpleString()})" for f in nested)
            raise PipelineError(f"nested Parquet column(s) {listed}: a model takes flat columns; flatten or drop them")
        return
    first = session.read.text(data_uri).first()
    if first is None:
        raise PipelineError(f"'{shown}' is empty: it has no header and no rows")
    names = next(csv.reader([first.value]))
    found = [words for separator, words in SEPARATORS.items() if len(names) == 1 and separator in names[0]]
    if found:  # read in place by Spark, comma-separated: a local copy would have its dialect read
        raise PipelineError(
            f"'{shown}' is separated by {found[0]}: a CSV in a cluster's store is read as comma-separated; save it "
            "comma-separated or as Parquet, or score a local copy"
        )
    refuse_duplicate_headers(names, shown)
    if session.conf.get("spark.sql.caseSensitive", "false").lower() != "true":
        refuse_names_equal_but_for_case(names, shown)


def refuse_names_equal_but_for_case(names: list[str], shown: str) -> None:
    """Spark compares column names without case by default: `ID` and `id` would be one column to it (its CSV
    reader renames them, `ID0` and `id2`; a Parquet file is refused)."""
    folded = Counter(name.casefold() for name in names)
    clashing = [name for name in names if folded[name.casefold()] > 1]
    if clashing:
        listed = ", ".join(f"'{name}'" for name in clashing)
        raise PipelineError(
            f"'{shown}' has column names that differ only in case ({listed}), which Spark takes for one name; "
            "rename them, or score with backend=local"
        )


def scorer(model_file: str, columns: list[tuple[str, str]], schema: Any) -> Any:
    """What each Spark task runs on its partition's pieces: load the model once, score each piece."""

    def score_pieces(pieces: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import SparkFiles

        pyfunc, sklearn_model = load_models(SparkFiles.get(model_file))
        dtypes = {field.name: field.dataType.simpleString() for field in schema.fields}
        for piece in pieces:
            if piece.empty:  # nothing to score (scikit-learn refuses an empty frame)
                continue
            check_batch(piece, columns, first_row=None)  # as the driver checked the first rows: a bad value named
            table, _ = score_batch(piece, pyfunc, sklearn_model, columns)
            for name in table.columns:  # a piece of all-missing values must still fit the declared type
                if dtypes.get(name) in ("double", "float") and not pd.api.types.is_float_dtype(table[name]):
                    table[name] = pd.to_numeric(table[name], errors="coerce")
            yield table

    return score_pieces


def score_on_spark(data_uri: str, model_uri: str, out: Path, master: str | None) -> tuple[str, dict[str, float]]:
    """Score `data_uri` on Spark into the Parquet dataset `out`; the prediction column and the metrics."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema

    scheme, shown = urllib.parse.urlsplit(data_uri).scheme.lower(), redact_uri(data_uri)
    with (
        fetched(model_uri, "the model") as local_model,  # one download: checked here, shipped to the executors
        local_copy(data_uri) if scheme not in SPARK_SCHEMES else nullcontext(data_uri) as located,
    ):
        pyfunc, sklearn_model = load_models(model_uri, local_model)  # checked on the driver, as the local backend
        columns = signature_columns(pyfunc)
        path, dialect = located, COMMAS
        if isinstance(located, Path):  # the local backend's checks (regular file, header, names), before Spark
            path = find_data_file(located, data_uri)
            _, names, dialect = checked_table_file(path, shown)
            refuse_names_equal_but_for_case(names, shown)
        session = spark_session(master)
        ship_steps_package(session)
        session.sparkContext.addFile(str(local_model), recursive=True)
        try:
            frame = read_table(session, data_uri, str(path), columns, dialect)
            if not isinstance(located, Path):  # a cluster's store, read by Spark alone: the same checks through Spark
                refuse_spark_columns(session, frame, data_uri)
            head = frame.limit(CHECK_ROWS).toPandas()
        except PipelineError:
            raise
        except Exception as error:  # e.g. Spark's AnalysisException: a path it cannot read, repeated Parquet names
            raise PipelineError(f"Spark cannot read '{shown}': {spark_message(error)}") from None
        check_batch(head, columns)
        table, prediction = score_batch(head, pyfunc, sklearn_model, columns)
        schema = from_arrow_schema(pa.Schema.from_pandas(table, preserve_index=False))
        scored = frame.mapInPandas(scorer(local_model.name, columns, schema), schema=schema)
        try:
            scored.write.mode("overwrite").parquet(str(out))
        except Exception as error:  # an executor's PipelineError arrives wrapped in Spark's own
            raise PipelineError(f"scoring on Spark failed: {spark_message(error)}") from None
    written = session.read.parquet(str(out))
    return prediction, spark_metrics(written, prediction, sklearn_model is not None) | {
        "n_input_columns": len(frame.columns)
    }


def spark_message(error: Exception) -> str:
    """Spark's error in one line: ours where an executor raised one (a PipelineError, a refused value)."""
    message = str(error)
    for ours in ("PipelineError: ", "[USER_RAISED_EXCEPTION] "):
        message = message.split(ours)[-1] if ours in message else message
    if "[USER_RAISED_EXCEPTION] " in str(error):  # our words, then Spark's code and its stack: ours alone
        message = message.split(" SQLSTATE: ")[0]
    return one_line(message, 300)


def spark_metrics(scored: Any, prediction: str, classifier: bool) -> dict[str, float]:
    """The local backend's metrics, computed by Spark over the written predictions."""
    from pyspark.sql import functions as F  # noqa: N812

    rows = scored.count()
    metrics: dict[str, float] = {"n_rows": rows}
    if classifier:  # the class counts, told to the local backend's tally: the same keys and shares
        tally = PredictionTally(classifier=True)
        tally.counts = pd.Series({str(row[0]): row[1] for row in scored.groupBy(prediction).count().collect()})
        return metrics | tally.metrics()
    column = F.col(f"`{prediction}`")
    mean, std = scored.agg(F.mean(column), F.stddev_pop(column)).first()
    quantiles = scored.approxQuantile(prediction, [q / 100 for q in (5, 25, 50, 75, 95)], 0.001)
    return (
        metrics
        | {"pred_mean": mean, "pred_std": std}
        | {f"pred_p{q:02d}": value for q, value in zip((5, 25, 50, 75, 95), quantiles, strict=True)}
    )

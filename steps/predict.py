"""Step `predict`: batch scoring with a registered model (the champion unless told otherwise)."""

from __future__ import annotations

# Before MLflow, as it loads the model with skops: see steps/lib/model_loading.py, SCAN_BEFORE_MLFLOW.
import scipy.special  # noqa: F401

# isort: split

import logging
import tempfile
from pathlib import Path
from typing import Any

import click
import mlflow
import pandas as pd

from steps.lib.artifacts import digest_path, publish_artifacts
from steps.lib.console import say
from steps.lib.errors import PipelineError
from steps.lib.names import OUTPUT_DIGEST_TAG, PREDICTIONS_DIR
from steps.lib.registry import DEFAULT_REGISTERED_MODEL_NAME, resolve_model_uri
from steps.lib.runner import INT, run_cli, step_run, unset_is_none
from steps.lib.scoring import PredictionTally, TimeReadings, check_batch, load_models, score_batch, signature_columns
from steps.lib.step_cards import predict_card
from steps.lib.story import code, describe
from steps.lib.tables import ARROW_TYPES, DEFAULT_DATA_URI, read_batches
from steps.lib.uris import redact_uri

logger = logging.getLogger("steps.predict")
DEFAULT_BATCH_ROWS = 100_000
BACKENDS = ("local", "spark")


SPREADSHEET_ROWS = 1_048_575  # a spreadsheet opens 1,048,576 rows, the header included
CSV_CHOICES = ("auto", "true", "false")


class ScoredWriter:
    """predictions.parquet, and predictions.csv up to `csv_rows` rows (None: any number), a batch at a time.

    Past `csv_rows` the CSV is removed and no more is written: writing CSV is most of predict's own cost
    per row (~2 s a million rows here), and a file that no spreadsheet opens is no use beside the Parquet.
    """

    def __init__(self, folder: Path, csv_rows: int | None, types: dict[str, str] | None = None) -> None:
        self.parquet, self.csv = folder / "predictions.parquet", folder / "predictions.csv"
        self.csv_rows = csv_rows
        self.types = types or {}  # the signature's column types: for a column with no value in the first batch
        self.as_text: list[str] = []  # the columns the signature does not type that had none: written as text
        self.rows = 0
        self.csv_dropped = False
        self.writer: Any = None
        self.csv_writer: Any = None
        self.schema: Any = None

    @property
    def wrote_csv(self) -> bool:
        return self.csv_rows != 0 and not self.csv_dropped

    def write(self, table: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.csv
        import pyarrow.parquet as pq

        if self.writer is None:
            arrow = pa.Table.from_pandas(table, preserve_index=False)
            empty = [field.name for field in arrow.schema if pa.types.is_null(field.type)]
            self.as_text = [name for name in empty if self.types.get(name) not in ARROW_TYPES]
            self.schema = pa.schema([self.typed(field) for field in arrow.schema], metadata=arrow.schema.metadata)
            arrow = arrow.cast(self.schema)
            self.writer = pq.ParquetWriter(self.parquet, self.schema)
            if self.csv_rows != 0:
                self.csv_writer = pyarrow.csv.CSVWriter(self.csv, self.schema)
        else:
            if self.as_text:  # written as text from the first batch on: so are its later values (True, 1.5, ...)
                table = table.assign(**{name: table[name].astype("string") for name in self.as_text})
            arrow = pa.Table.from_pandas(table, schema=self.schema, preserve_index=False)
        self.rows += len(table)
        self.writer.write_table(arrow)
        if self.csv_writer is not None and self.csv_rows is not None and self.rows > self.csv_rows:
            self.csv_writer.close()  # past the limit: no CSV at all
            self.csv_writer = None
            self.csv.unlink()
            self.csv_dropped = True
        if self.csv_writer is not None:
            self.csv_writer.write_table(arrow)

    def typed(self, field: Any) -> Any:
        """A column with no value in the first batch (Arrow's null type, which no later value fits) as the
        signature types it, or else as text (its later values written as text too)."""
        import pyarrow as pa

        if not pa.types.is_null(field.type):
            return field
        return pa.field(field.name, pa.type_for_alias(ARROW_TYPES.get(self.types.get(field.name, ""), "string")))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.csv_writer is not None:
            self.csv_writer.close()


def csv_row_limit(csv: str) -> int | None:
    """predict's `csv` param: auto (a CSV while the output fits a spreadsheet), true (always), false (never)."""
    if csv not in CSV_CHOICES:
        raise PipelineError(f"csv must be one of {', '.join(CSV_CHOICES)}; got '{csv}'")
    return {"auto": SPREADSHEET_ROWS, "true": None, "false": 0}[csv]


def run_predict(
    data_uri: str,
    registered_model_name: str = DEFAULT_REGISTERED_MODEL_NAME,
    model_uri: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    backend: str = "local",
    spark_master: str | None = None,
    csv: str = "auto",
) -> dict[str, float]:
    """The whole step inside the active run; returns its metrics. `model_uri` None: the champion.

    local: the table is read and scored `batch_rows` rows at a time (pyarrow, with the signature's column
    types), so memory follows the batch, not the file; `csv` says when predictions.csv is written beside
    predictions.parquet (see csv_row_limit). spark: scored on Spark (`spark_master`, None: Spark's own
    choice) into a Parquet dataset with the same columns.
    """
    csv_rows = csv_row_limit(csv)
    if batch_rows < 1:
        raise PipelineError(f"batch_rows must be at least 1; got {batch_rows}")
    if backend not in BACKENDS:
        raise PipelineError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    uri = resolve_model_uri(model_uri, registered_model_name)
    mlflow.set_tags({"model_uri": uri, "data_uri": redact_uri(data_uri), "backend": backend})
    if backend == "spark":
        return predict_on_spark(data_uri, uri, spark_master)
    pyfunc, sklearn_model = load_models(uri)
    columns = signature_columns(pyfunc)
    tally = PredictionTally(sklearn_model is not None and hasattr(sklearn_model, "classes_"))
    times = TimeReadings(sklearn_model)
    n_columns, prediction = 0, "prediction"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, PREDICTIONS_DIR)
        out.mkdir()
        writer = ScoredWriter(out, csv_rows, dict(columns))
        try:
            for frame in read_batches(data_uri, dict(columns), batch_rows):
                if frame.empty and tally.rows:
                    continue
                check_batch(frame, columns, first_row=tally.rows)
                table, prediction = score_batch(frame, pyfunc, sklearn_model, columns)
                tally.add(table[prediction])
                times.add(frame)
                writer.write(table)
                n_columns = len(frame.columns)
        finally:
            writer.close()
        if tally.rows == 0:
            raise PipelineError("the batch has no rows; pass a table with at least one row")
        unread_times = times.warnings()
        for line in unread_times:  # where the person who typed the command sees it, not only in the step's log
            say(f"warning: predict: {line}", err=True)
        metrics = {"n_rows": tally.rows, "n_input_columns": n_columns} | tally.metrics()
        if not writer.wrote_csv and csv_rows:
            logger.info("no predictions.csv: %d rows, more than a spreadsheet opens (csv=true writes it)", tally.rows)
        mlflow.set_tags({"prediction_column": prediction, "predictions.csv": str(writer.wrote_csv).lower()})
        mlflow.log_metrics(metrics)
        digest = digest_path(out / "predictions.parquet")
        publish_artifacts(out, PREDICTIONS_DIR)
        mlflow.set_tag(OUTPUT_DIGEST_TAG, digest)
    model_version = getattr(pyfunc.metadata, "model_id", None) or ""
    logger.info("scored %d rows with %s %s", tally.rows, uri, model_version)
    describe(
        f"**predict** scored {tally.rows:,} rows of {code(redact_uri(data_uri))} with {code(uri)}.",
        "Predictions (the input columns, then `prediction` and one `proba_<class>` per class) are under "
        "`predictions/`.",
        *[f"**Warning:** {line}." for line in unread_times],
    )
    predict_card(tally.rows, data_uri, uri, metrics)
    return metrics


def predict_on_spark(data_uri: str, uri: str, spark_master: str | None) -> dict[str, float]:
    from steps.lib.spark_scoring import score_on_spark

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, PREDICTIONS_DIR)
        out.mkdir()
        prediction, metrics = score_on_spark(data_uri, uri, out / "predictions.parquet", spark_master)
        for crc in out.rglob(".*.crc"):  # Hadoop's checksum files: not part of the output
            crc.unlink()
        mlflow.set_tag("prediction_column", prediction)
        mlflow.log_metrics(metrics)
        digest = digest_path(out / "predictions.parquet")
        publish_artifacts(out, PREDICTIONS_DIR)
        mlflow.set_tag(OUTPUT_DIGEST_TAG, digest)
    logger.info("scored %d rows with %s on Spark", metrics["n_rows"], uri)
    rows = int(metrics["n_rows"])
    describe(
        f"**predict** scored {rows:,} rows of {code(redact_uri(data_uri))} with {code(uri)} on Spark "
        f"({code(spark_master or 'its own master')}).",
        "Predictions (the input columns, then `prediction` and one `proba_<class>` per class) are the Parquet "
        "dataset under `predictions/`.",
    )
    predict_card(rows, data_uri, uri, metrics)
    return metrics


@click.command()
@click.option("--data-uri", default=DEFAULT_DATA_URI, show_default=True, help="As load: sklearn:<name>, path, URL.")
@click.option("--registered-model-name", default=DEFAULT_REGISTERED_MODEL_NAME, show_default=True)
@click.option(
    "--model-uri",
    default="auto",
    callback=unset_is_none,
    help="A model URI; auto: models:/<registered_model_name>@champion.",
)
@click.option("--batch-rows", default=DEFAULT_BATCH_ROWS, type=INT, help="Rows read and scored at a time.")
@click.option("--backend", default="local", help="local: this process, in batches; spark: on Spark.")
@click.option("--spark-master", default="auto", callback=unset_is_none, help="backend=spark: a master URL.")
@click.option(
    "--csv", default="auto", help="predictions.csv beside the Parquet: auto (up to 1,048,575 rows), true, false."
)
def main(
    data_uri: str,
    registered_model_name: str,
    model_uri: str | None,
    batch_rows: int,
    backend: str,
    spark_master: str | None,
    csv: str,
) -> None:
    with step_run("predict"):
        metrics = run_predict(data_uri, registered_model_name, model_uri, batch_rows, backend, spark_master, csv)
        run_id = mlflow.active_run().info.run_id
        uri = resolve_model_uri(model_uri, registered_model_name)
        say(
            f"predict: {int(metrics['n_rows']):,} rows scored with {uri}; the predictions: "
            f"mlflow artifacts download -r {run_id} -a {PREDICTIONS_DIR} -d ."
        )


if __name__ == "__main__":
    run_cli(main, "predict")

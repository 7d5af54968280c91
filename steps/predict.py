"""Step `predict`: batch scoring with a registered model (the champion unless told otherwise)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import click
import mlflow
import numpy as np
import pandas as pd

from steps.lib.artifacts import digest_path
from steps.lib.errors import PipelineError, one_line
from steps.lib.keys import key_parts, unused_name
from steps.lib.names import OUTPUT_DIGEST_TAG, PREDICTIONS_DIR
from steps.lib.registry import DEFAULT_REGISTERED_MODEL_NAME, resolve_model_uri
from steps.lib.runner import INT, run_cli, step_run, unset_is_none
from steps.lib.tables import DEFAULT_DATA_URI, read_batches
from steps.lib.uris import redact_uri

logger = logging.getLogger("steps.predict")
DEFAULT_BATCH_ROWS = 100_000


def load_models(model_uri: str) -> tuple[Any, Any]:
    """The pyfunc (it carries the signature) and the scikit-learn model (for class probabilities)."""
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    except Exception as error:
        raise PipelineError(
            f"model '{model_uri}' cannot be loaded ({one_line(str(error), 160)}); "
            "check the name, version or alias, e.g. run `mlflow run . -e main` first to register a champion"
        ) from None
    # The estimator inside the pyfunc, not a second download and load of the same model.
    try:
        raw = pyfunc.get_raw_model()
    except Exception:  # a pyfunc without an underlying model object: predictions without probabilities
        raw = None
    sklearn_model = raw if hasattr(raw, "predict_proba") and hasattr(raw, "classes_") else None
    return pyfunc, sklearn_model


def signature_columns(pyfunc: Any) -> list[tuple[str, str]]:
    """The model's input columns and their types, from its signature."""
    schema = pyfunc.metadata.get_input_schema()
    if schema is None:
        raise PipelineError("the model has no input signature; log it with a signature to score batches")
    return [(spec.name, getattr(spec.type, "name", str(spec.type))) for spec in schema.inputs]


def check_batch(frame: pd.DataFrame, columns: list[tuple[str, str]], first_row: int = 0) -> None:
    """Every signature column present, and of a type the model can take; a clear error naming the column.

    `first_row`: the batch's first row in the whole table, to name the row of a bad value.
    """
    if frame.empty:
        raise PipelineError("the batch has no rows; pass a table with at least one row")
    missing = [name for name, _ in columns if name not in frame.columns]
    if missing:
        raise PipelineError(
            f"the batch lacks column '{missing[0]}' that the model's signature needs"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; expected columns: {', '.join(name for name, _ in columns)}"
        )
    for name, kind in columns:
        if kind in ("double", "float", "long", "integer") and not pd.api.types.is_numeric_dtype(frame[name]):
            bad = frame[name][pd.to_numeric(frame[name], errors="coerce").isna() & frame[name].notna()]
            if len(bad):
                raise PipelineError(
                    f"column '{name}' must be numeric ({kind}) as in the model's signature; "
                    f"found {bad.iloc[0]!r} in row {first_row + bad.index[0]}"
                )


def score_batch(frame: pd.DataFrame, pyfunc: Any, sklearn_model: Any, columns: list[str]) -> tuple[pd.DataFrame, str]:
    """The input columns, then `prediction`, then `proba_<class>` for a classifier; and the prediction's column.

    An input column of the same name is never overwritten: the output is called `prediction_2` (...) instead.
    """
    inputs = frame[columns].copy()
    for name in columns:  # numbers written as text (a CSV read as strings) become numbers, as checked above
        numbers = pd.to_numeric(inputs[name], errors="coerce")
        if not pd.api.types.is_numeric_dtype(inputs[name]) and not (numbers.isna() & inputs[name].notna()).any():
            inputs[name] = numbers
    try:
        predictions = np.asarray(pyfunc.predict(inputs))
    except Exception as error:
        raise PipelineError(f"the batch does not match the model's signature: {one_line(str(error), 300)}") from None
    table = frame.copy()
    prediction = unused_name("prediction", table.columns)
    table[prediction] = predictions
    if sklearn_model is not None and hasattr(sklearn_model, "predict_proba"):
        proba = sklearn_model.predict_proba(inputs)
        for index, label in enumerate(sklearn_model.classes_):
            table[unused_name(f"proba_{label}", table.columns)] = proba[:, index]
    return table, prediction


class PredictionTally:
    """What the metrics say about the predictions, gathered batch by batch: class counts, or the values."""

    def __init__(self, classifier: bool) -> None:
        self.classifier = classifier
        self.counts: pd.Series = pd.Series(dtype="int64")
        self.values: list[np.ndarray] = []
        self.rows = 0

    def add(self, predictions: pd.Series) -> None:
        self.rows += len(predictions)
        if self.classifier:
            self.counts = self.counts.add(predictions.astype(str).value_counts(), fill_value=0)
        else:
            self.values.append(predictions.to_numpy(dtype=float))

    def metrics(self) -> dict[str, float]:
        """Class shares, or mean, spread and quantiles (over every row: 8 bytes a row, not the table)."""
        if self.classifier:
            shares = (self.counts / self.counts.sum()).sort_index()
            keys = key_parts(shares.index)  # a label such as `<=50K` is no metric key as it is
            return {f"pred_share_{keys[label]}": float(share) for label, share in shares.items()}
        values = pd.Series(np.concatenate(self.values) if self.values else np.array([], dtype=float))
        summary = {"pred_mean": float(values.mean()), "pred_std": float(values.std(ddof=0))}
        summary |= {f"pred_p{q:02d}": float(values.quantile(q / 100)) for q in (5, 25, 50, 75, 95)}
        return summary


def prediction_summary(predictions: pd.Series, classifier: bool) -> dict[str, float]:
    """Metrics of the prediction distribution: class shares, or mean, spread and quantiles."""
    tally = PredictionTally(classifier)
    tally.add(predictions)
    return tally.metrics()


class ScoredWriter:
    """predictions.parquet and predictions.csv written a batch at a time, one schema throughout."""

    def __init__(self, folder: Path) -> None:
        self.parquet, self.csv = folder / "predictions.parquet", folder / "predictions.csv"
        self.writer: Any = None
        self.schema: Any = None

    def write(self, table: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            arrow = pa.Table.from_pandas(table, preserve_index=False)
            self.schema = arrow.schema
            self.writer = pq.ParquetWriter(self.parquet, self.schema)
        else:
            arrow = pa.Table.from_pandas(table, schema=self.schema, preserve_index=False)
        self.writer.write_table(arrow)
        table.to_csv(self.csv, index=False, mode="a", header=not self.csv.exists())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_predict(
    data_uri: str,
    registered_model_name: str = DEFAULT_REGISTERED_MODEL_NAME,
    model_uri: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> dict[str, float]:
    """The whole step inside the active run; returns its metrics. `model_uri` None: the champion.

    The table is read and scored `batch_rows` rows at a time (pyarrow, with the signature's column types),
    so memory follows the batch, not the file.
    """
    if batch_rows < 1:
        raise PipelineError(f"batch_rows must be at least 1; got {batch_rows}")
    uri = resolve_model_uri(model_uri, registered_model_name)
    mlflow.set_tags({"model_uri": uri, "data_uri": redact_uri(data_uri)})
    pyfunc, sklearn_model = load_models(uri)
    columns = signature_columns(pyfunc)
    tally = PredictionTally(sklearn_model is not None and hasattr(sklearn_model, "classes_"))
    n_columns, prediction = 0, "prediction"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, PREDICTIONS_DIR)
        out.mkdir()
        writer = ScoredWriter(out)
        try:
            for frame in read_batches(data_uri, dict(columns), batch_rows):
                if frame.empty and tally.rows:
                    continue
                check_batch(frame, columns, first_row=tally.rows)
                table, prediction = score_batch(frame, pyfunc, sklearn_model, [name for name, _ in columns])
                tally.add(table[prediction])
                writer.write(table)
                n_columns = len(frame.columns)
        finally:
            writer.close()
        if tally.rows == 0:
            raise PipelineError("the batch has no rows; pass a table with at least one row")
        metrics = {"n_rows": tally.rows, "n_input_columns": n_columns} | tally.metrics()
        mlflow.set_tag("prediction_column", prediction)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), PREDICTIONS_DIR)
        mlflow.set_tag(OUTPUT_DIGEST_TAG, digest_path(out / "predictions.parquet"))
    model_version = getattr(pyfunc.metadata, "model_id", None) or ""
    logger.info("scored %d rows with %s %s", tally.rows, uri, model_version)
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
def main(data_uri: str, registered_model_name: str, model_uri: str | None, batch_rows: int) -> None:
    with step_run("predict"):
        run_predict(data_uri, registered_model_name=registered_model_name, model_uri=model_uri, batch_rows=batch_rows)


if __name__ == "__main__":
    run_cli(main, "predict")

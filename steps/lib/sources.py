"""MLflow datasets and schemas: where a logged dataset came from (its secrets redacted), its digest and schema,
and a model's signature, each in time that does not grow with the rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.digest_utils import MAX_ROWS, get_normalized_md5_digest
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.exceptions import MlflowException
from mlflow.types import ColSpec, DataType, Schema

from steps.lib.errors import is_unique_key_clash
from steps.lib.tables import fetch_local
from steps.lib.uris import redact_uri

T = TypeVar("T")


def once_more_on_a_clash(action: Callable[[], T]) -> T:
    """`action()`, and once more if the store refused it on a unique key that another run inserted meanwhile.

    MLflow looks a dataset up (experiment, name, digest) and inserts it if missing: two runs logging the
    same dataset at the same moment (two mains on one data set) can both miss it, and the second insert
    fails. The second try finds the row and only links it to this run.
    """
    try:
        return action()
    except MlflowException as error:
        if not is_unique_key_clash(error):
            raise
        return action()


def log_dataset(dataset: Any, context: str) -> None:
    """mlflow.log_input, safe against another run logging the same dataset at the same moment."""
    once_more_on_a_clash(lambda: mlflow.log_input(dataset, context=context))


SCHEMA_SAMPLE_ROWS = 1_000  # non-missing values per column MLflow's type inference looks at


def table_dataset(frame: pd.DataFrame, source: Any, name: str, targets: str) -> PandasDataset:
    """`mlflow.data.from_pandas(frame, ...)`, with the same digest and schema, in time that does not grow with rows.

    MLflow infers a dataset's schema by visiting every cell in Python (~40 s for a million rows of 29
    columns here) and its digest maps `type` over every cell. A column that came through Parquet has
    one type, so its type is inferred from its first non-missing values and `required` is a vectorised
    missing-value test; the digest is MLflow's own formula with its text test vectorised.
    """
    dataset = mlflow.data.from_pandas(frame, source=source, name=name, targets=targets, digest=frame_digest(frame))
    dataset.__dict__["schema"] = frame_schema(frame)  # PandasDataset.schema is a cached_property: pre-filled
    return dataset


def frame_digest(frame: pd.DataFrame) -> str:
    """MLflow's `compute_pandas_digest`: the first MAX_ROWS rows of the columns that are text in every row
    (vectorised: a str column without missing values, an object column pandas infers as all strings) or
    numbers, the row count and the column names."""
    text = [
        column
        for column, values in frame.items()
        if (pd.api.types.is_string_dtype(values) and values.dtype != object and not values.isna().any())
        or (values.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string")
    ]
    head = frame.head(MAX_ROWS)
    kept = head[pd.Index(text).union(head.select_dtypes(include=[np.number]).columns)]
    return get_normalized_md5_digest(
        [pd.util.hash_pandas_object(kept).values, np.int64(len(frame))] + [str(c).encode() for c in frame.columns]
    )


def frame_schema(frame: pd.DataFrame) -> Schema | None:
    """MLflow's inferred schema of `frame` (see `table_dataset`); None where MLflow could not infer one. MLflow
    types a column of numbers, true/false or times by its dtype, and text by every value: here a string dtype
    with a value is text, and only object columns are typed from a sample of their values."""
    from mlflow.types.utils import _infer_numpy_dtype, _infer_schema  # PandasDataset.schema's, and its dtype map

    specs = []
    try:
        for column in frame.columns:
            values = frame[column]
            if values.dtype.kind != "O":  # numbers, true/false, times: MLflow types them by the dtype alone
                specs.append(ColSpec(_infer_numpy_dtype(values.dtype), column, required=not values.hasnans))
                continue
            missing = values.isna()
            if isinstance(values.dtype, pd.StringDtype) and not missing.all():  # text in every present row
                specs.append(ColSpec(DataType.string, column, required=not missing.any()))
                continue
            sample = values.head(10 * SCHEMA_SAMPLE_ROWS).dropna().head(SCHEMA_SAMPLE_ROWS)
            if sample.empty:  # missing in every early row: look further (not copying a million rows otherwise)
                present = values.dropna()
                sample = (present if len(present) else values).head(SCHEMA_SAMPLE_ROWS)
            inferred = _infer_schema(pd.DataFrame({column: sample}, copy=False)).inputs[0]
            specs.append(ColSpec(inferred.type, inferred.name, required=not bool(missing.any())))
    except Exception:
        return None
    return Schema(specs)


SIGNATURE_ROWS = 1_000  # rows predicted to learn the type of the model's output


def model_signature(features: pd.DataFrame, predict: Callable[[pd.DataFrame], Any]) -> Any:
    """`mlflow.models.infer_signature(features, predict(features))`, the same signature without a pass in Python
    over every cell and a prediction of every row (train spent ~17 s there at 1,000,000 rows): the input schema is
    `frame_schema`'s, the output's is inferred from the predictions of the first rows (one dtype whatever the
    rows). MLflow's own inference where `frame_schema` cannot."""
    from mlflow.models import ModelSignature, infer_signature

    inputs = frame_schema(features)
    if inputs is None:
        return infer_signature(features, predict(features))
    head = features.head(SIGNATURE_ROWS)
    return ModelSignature(inputs=inputs, outputs=infer_signature(head, predict(head)).outputs)


def dataset_source(uri: str) -> Any:
    """An MLflow dataset source for `uri`: MLflow's own where it knows the scheme, a plain URI otherwise."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    shown = redact_uri(uri)
    try:
        return resolve_dataset_source(shown)
    except Exception:  # e.g. sklearn:, runs:/, mlflow-artifacts:/ have no resolver
        return UriDatasetSource(shown)


class UriDatasetSource(DatasetSource):
    """A dataset source recorded by its URI; the pipeline reads it back with `read_data`."""

    def __init__(self, uri: str):
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "uri"

    def load(self, **kwargs: Any) -> str:
        return str(fetch_local(self.uri))

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> UriDatasetSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> UriDatasetSource:
        return cls(source_dict["uri"])

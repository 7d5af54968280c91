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
from mlflow.types import ColSpec, Schema

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
    has_missing = dict(zip(frame.columns, frame.isna().any().tolist(), strict=True))
    digest = frame_digest(frame, has_missing=has_missing)
    dataset = mlflow.data.from_pandas(frame, source=source, name=name, targets=targets, digest=digest)
    dataset.__dict__["schema"] = frame_schema(frame, has_missing)  # PandasDataset.schema is a cached_property
    return dataset


class RowsDataset(PandasDataset):
    """The dataset of some rows of a table, described without taking them all: it holds their first MAX_ROWS
    rows (all that MLflow's digest and schema read), and its profile counts all of them."""

    def __init__(self, head: pd.DataFrame, n_rows: int, **kwargs: Any) -> None:
        super().__init__(df=head, **kwargs)
        self._n_rows = n_rows

    @property
    def profile(self) -> Any | None:
        return {"num_rows": self._n_rows, "num_elements": self._n_rows * len(self._df.columns)}


def rows_dataset(
    frame: pd.DataFrame, rows: np.ndarray, missing: np.ndarray, source: Any, name: str, targets: str
) -> PandasDataset:
    """`table_dataset(frame.take(rows), ...)`: the same digest, schema and profile, from the first MAX_ROWS
    of `rows` (ascending positions) and `missing` (frame.isna() as an array; a column's text test and its
    `required` look at every row) without taking the others (featurize: ~0.5 s per split of a million rows).
    """
    head = frame.take(rows[: max(MAX_ROWS, 10 * SCHEMA_SAMPLE_ROWS)]).reset_index(drop=True)
    has_missing = dict(zip(frame.columns, missing[rows].any(axis=0).tolist(), strict=True))
    whole = {}  # an object column's every value (MLflow's text test), or a column missing in every early row

    def column(name: str) -> pd.Series:
        if name not in whole:
            whole[name] = frame[name].take(rows).reset_index(drop=True)
        return whole[name]

    digest = frame_digest(head, len(rows), has_missing, column)
    dataset = RowsDataset(head, len(rows), source=source, name=name, targets=targets, digest=digest)
    dataset.__dict__["schema"] = frame_schema(head, has_missing, column)
    return dataset


def frame_digest(
    frame: pd.DataFrame,
    n_rows: int | None = None,
    has_missing: dict[Any, bool] | None = None,
    column: Callable[[Any], pd.Series] | None = None,
) -> str:
    """MLflow's `compute_pandas_digest`: the first MAX_ROWS rows of the columns that are text in every row
    (vectorised: a str column without missing values, an object column pandas infers as all strings) or
    numbers, the row count and the column names. `frame` may be the first rows alone of a table of `n_rows`
    rows, given each column's `has_missing` over all of them and the whole `column`."""
    column = column or frame.__getitem__
    missing = has_missing or {name: bool(values.isna().any()) for name, values in frame.items()}
    text = [
        name
        for name, values in frame.items()
        if (pd.api.types.is_string_dtype(values) and values.dtype != object and not missing[name])
        or (values.dtype == object and pd.api.types.infer_dtype(column(name), skipna=False) == "string")
    ]
    head = frame.head(MAX_ROWS)
    kept = head[pd.Index(text).union(head.select_dtypes(include=[np.number]).columns)]
    rows = len(frame) if n_rows is None else n_rows
    return get_normalized_md5_digest(
        [pd.util.hash_pandas_object(kept).values, np.int64(rows)] + [str(c).encode() for c in frame.columns]
    )


def frame_schema(
    frame: pd.DataFrame,
    has_missing: dict[Any, bool] | None = None,
    column: Callable[[Any], pd.Series] | None = None,
) -> Schema | None:
    """MLflow's inferred schema of `frame` (see `table_dataset`; `has_missing` and `column` as in
    `frame_digest`); None where MLflow could not infer one."""
    from mlflow.types.utils import _infer_schema  # the function PandasDataset.schema calls

    column = column or frame.__getitem__
    specs = []
    try:
        for name in frame.columns:
            values = frame[name]
            sample = values.head(10 * SCHEMA_SAMPLE_ROWS).dropna().head(SCHEMA_SAMPLE_ROWS)
            if sample.empty:  # missing in every early row: look further (not copying a million rows otherwise)
                every = column(name)
                present = every.dropna()
                sample = (present if len(present) else every).head(SCHEMA_SAMPLE_ROWS)
            inferred = _infer_schema(pd.DataFrame({name: sample}, copy=False)).inputs[0]
            missing = has_missing[name] if has_missing is not None else bool(values.isna().any())
            specs.append(ColSpec(inferred.type, inferred.name, required=not missing))
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

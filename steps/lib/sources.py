"""MLflow dataset sources: where a logged dataset came from, with its secrets redacted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.exceptions import MlflowException

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

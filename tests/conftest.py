"""Fixtures every test may use: tiny frames and a private tracking store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

PROJECT_DIR = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration is marked `integration`, so `-m "not integration"` is fast."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite tracking store with local artifacts, private to the test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    """60 rows: numeric, categorical with gaps, an ID, a constant, an all-missing column, a 3-class label."""
    rng = np.random.default_rng(0)
    n = 60
    label = np.array(["a", "b", "c"])[np.arange(n) % 3]
    return pd.DataFrame(
        {
            "customer_id": np.arange(1000, 1000 + n),
            "x1": rng.normal(size=n) + (label == "a") * 3,
            "x2": rng.normal(size=n),
            "colour": pd.Series(rng.choice(["red", "green", None], size=n), dtype=object),
            "constant": 7,
            "empty": np.nan,
            "label": label,
        }
    )

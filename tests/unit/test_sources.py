"""MLflow datasets of big frames: the same digest and schema as MLflow's own, without a pass in Python per cell."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from mlflow.data.digest_utils import compute_pandas_digest
from mlflow.types.utils import _infer_schema

from steps.lib.sources import UriDatasetSource, frame_digest, frame_schema, table_dataset


def messy_frame(rows: int = 30_000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "Income ($)": rng.normal(size=rows),
            "seniority (years)": rng.integers(0, 40, rows),
            "city": rng.choice(["Lyon", "Oslo", None], rows),
            "member": rng.random(rows) < 0.5,
            "signed up": pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 900, rows), unit="D"),
            "late text": [None] * (rows - 100) + ["x"] * 100,  # missing in every row MLflow's digest hashes
            "late gap": ["y"] * (rows - 100) + [None] * 100,  # text in every row MLflow's digest hashes, not all
            "objects": pd.Series(["a"] * rows, dtype=object),
            "all missing": np.full(rows, np.nan),
            "score": rng.normal(size=rows).astype("float32"),
        }
    )
    frame.loc[rows - 1, "score"] = np.nan  # the only missing value is in the last row
    return frame


def test_digest_and_schema_equal_mlflows_own():
    frame = messy_frame()
    assert frame_digest(frame) == compute_pandas_digest(frame)
    schema = frame_schema(frame)
    assert schema == _infer_schema(frame)
    assert not schema.input_dict()["score"].required and schema.input_dict()["seniority (years)"].required


def test_the_dataset_logs_them():
    frame = messy_frame(2_000)
    dataset = table_dataset(frame, UriDatasetSource("data.csv"), "users", "city")
    assert dataset.digest == compute_pandas_digest(frame)
    assert dataset.to_dict()["schema"] == json.dumps({"mlflow_colspec": _infer_schema(frame).to_dict()})

"""MLflow datasets of big frames: the same digest and schema as MLflow's own, without a pass in Python per cell."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.data.digest_utils import compute_pandas_digest
from mlflow.types.utils import _infer_schema

from steps.lib.sources import UriDatasetSource, frame_digest, frame_schema, model_signature, table_dataset


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


@pytest.mark.parametrize(
    "values",
    [
        pd.Series(["a", None, "b"], dtype="str"),
        pd.Series([None, None], dtype="str"),  # no text to type it by: MLflow's Any
        pd.Series(["a", None], dtype="string[pyarrow]"),
        pd.Series(["a", None], dtype="string[python]"),
        pd.Series(["a", "b"], dtype="category"),
        pd.Series([1, None], dtype="Int64"),
        pd.Series([True, None], dtype=object),
        pd.Series(np.array(["2024-05-31", "NaT"], dtype="datetime64[ns]")),
    ],
)
def test_each_kind_of_column_is_typed_as_mlflow_types_it(values):
    """Numbers, true/false and times by their dtype, text by its dtype, the rest from a sample: MLflow's types."""
    frame = pd.DataFrame({"column": values})
    assert frame_schema(frame) == _infer_schema(frame)


def test_the_dataset_logs_them():
    frame = messy_frame(2_000)
    dataset = table_dataset(frame, UriDatasetSource("data.csv"), "users", "city")
    assert dataset.digest == compute_pandas_digest(frame)
    assert dataset.to_dict()["schema"] == json.dumps({"mlflow_colspec": _infer_schema(frame).to_dict()})


def test_a_models_signature_equals_mlflows_inferred_one_from_every_row():
    """train's signature: the input schema without a pass per cell, the output's from the first rows' predictions."""
    from mlflow.models import infer_signature
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline

    frame = messy_frame(5_000)
    numbers = ["Income ($)", "seniority (years)", "score"]
    labels = np.where(frame["Income ($)"] > 0, "<=50K", ">50K")
    for estimator, target in ((LogisticRegression(), labels), (Ridge(), frame["Income ($)"].to_numpy())):
        model = make_pipeline(make_column_transformer((SimpleImputer(), numbers)), estimator).fit(frame, target)
        assert model_signature(frame, model.predict) == infer_signature(frame, model.predict(frame))
    predicted_rows = []
    model_signature(frame, lambda rows: predicted_rows.append(len(rows)) or model.predict(rows))
    assert predicted_rows == [1_000]

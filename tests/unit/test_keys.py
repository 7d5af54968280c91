"""Names made from the data's own: valid, distinct MLflow metric keys; output columns beside the inputs."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.utils.validation import _validate_metric_name

from steps.lib.errors import PipelineError
from steps.lib.keys import key_parts, unused_name
from steps.lib.scoring import prediction_summary
from steps.lib.tables import read_data
from steps.monitor import drift_metrics

ODD = ["Income ($)", "seniority (years)", "<=50K", ">50K", "a/b", "a:b", "a_b", "..", "", "é", "x" * 300]


def test_any_name_becomes_a_valid_distinct_metric_key():
    parts = key_parts(ODD)
    assert list(parts) == ODD and len(set(parts.values())) == len(ODD)
    for part in parts.values():
        for key in (f"pred_share_{part}", f"drift.{part}.psi"):
            _validate_metric_name(key)  # MLflow's own check: raises on a key it would refuse
            assert len(key) <= 250
    assert parts["Income ($)"] == "Income ___" and [parts[n] for n in ("a/b", "a:b", "a_b")] == [
        "a_b",
        "a_b_2",
        "a_b_3",
    ]
    assert key_parts(["x", "x"]) == {"x": "x"}  # the same name twice is one key


def test_class_shares_and_drift_metrics_are_logged_under_valid_keys(tracking_uri):
    shares = prediction_summary(pd.Series(["<=50K", ">50K", ">50K", "<=50K"]), classifier=True)
    assert shares == {"pred_share___50K": 0.5, "pred_share__50K": 0.5}
    table = pd.DataFrame({"column": ["Income ($)", "Income _$_"], "psi": [0.1, 0.2], "p_value": [0.5, 0.01]})
    metrics = drift_metrics(table, {"n_rows": 10, "drifted_columns": []})
    assert metrics["drift.Income ___.psi"] == 0.1 and metrics["drift.Income ____2.psi"] == 0.2
    with mlflow.start_run():
        mlflow.log_metrics(shares | metrics)  # MLflow takes them all


def test_outputs_never_overwrite_inputs():
    assert unused_name("prediction", ["a", "b"]) == "prediction"
    assert unused_name("prediction", ["prediction", "prediction_2"]) == "prediction_3"


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_duplicate_headers_are_refused_naming_them(tmp_path, kind):
    path = tmp_path / f"t.{kind}"
    if kind == "csv":
        path.write_text("species,x,species,y,y,y\n1,2,3,4,5,6\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = [pa.array([1]), pa.array([2]), pa.array([3]), pa.array([4]), pa.array([5]), pa.array([6])]
        pq.write_table(pa.Table.from_arrays(columns, ["species", "x", "species", "y", "y", "y"]), path)
    with pytest.raises(PipelineError, match=r"duplicate column names: 'species' \(2 times\), 'y' \(3 times\)"):
        read_data(str(path))
    path.with_suffix(".csv").write_text("a,,b,\n1,2,3,4\n")  # empty header cells: pandas names them, no clash
    assert list(read_data(str(path.with_suffix(".csv"))).columns) == ["a", "Unnamed: 1", "b", "Unnamed: 3"]

"""Step load: target resolution, profile, histograms, and the step run in-process."""

from __future__ import annotations

import errno
import json
from xml.etree import ElementTree

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from steps.lib.errors import PipelineError
from steps.load import column_table, distinct_counts, plot_histograms, profile_frame, resolve_target, run_load

SVG = "{http://www.w3.org/2000/svg}"


def test_resolve_target():
    assert resolve_target("sklearn:iris", None) == "species"
    assert resolve_target("sklearn:wine", None) == "cultivar"
    assert resolve_target("data.csv", "label") == "label"
    with pytest.raises(PipelineError, match="-P target="):
        resolve_target("data.csv", None)


def test_profile_counts_missing_values_and_classes(mixed_frame):
    profile = profile_frame(mixed_frame, "label")
    assert profile["n_rows"] == 60 and profile["n_columns"] == 7
    assert profile["missing"]["empty"] == 60
    assert profile["target_distribution"]["counts"] == {"a": 20, "b": 20, "c": 20}
    table = column_table(profile)
    assert table.set_index("column").loc["empty", "missing_pct"] == 100.0


def test_distinct_counts_equal_pandas_for_floats_counted_by_sorting():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "floats": np.r_[rng.normal(size=997), np.nan, np.nan, 0.5],  # 998 values, two missing
            "zeros and infinities": [0.0, -0.0, np.inf, -np.inf, np.nan] * 200,
            "float32": rng.integers(0, 7, 1000).astype("float32"),
            "all missing": np.full(1000, np.nan),
            "nullable": pd.array([1.5, None, 2.5, 1.5] * 250, dtype="Float64"),
            "text": pd.Series(["a", "b", None, "a"] * 250, dtype="str"),
            "whole": rng.integers(0, 3, 1000),
        }
    )
    frame.loc[5, "floats"] = frame.loc[6, "floats"]  # one repeat: 997 distinct
    counts = distinct_counts(frame)
    assert counts == {column: int(frame[column].nunique()) for column in frame.columns}
    assert counts["floats"] == 997 and counts["zeros and infinities"] == 3 and counts["all missing"] == 0
    assert distinct_counts(frame.iloc[:0]) == dict.fromkeys(frame.columns, 0)


def test_profile_of_a_numeric_target():
    profile = profile_frame(pd.DataFrame({"x": range(50), "y": [i * 0.5 for i in range(50)]}), "y")
    assert profile["target_distribution"]["kind"] == "numeric"
    assert profile["target_distribution"]["mean"] == pytest.approx(12.25)


def test_histograms_are_one_svg_with_a_panel_per_column(tmp_path, mixed_frame):
    plot_histograms(mixed_frame, "label", tmp_path / "h.svg")
    root = ElementTree.parse(tmp_path / "h.svg").getroot()
    titles = [t.text for t in root.iter(f"{SVG}text") if t.get("font-weight") == "600"]
    assert titles == [*[c for c in mixed_frame.columns if c != "label"], "label (target)"]
    assert len(list(root.iter(f"{SVG}rect"))) > len(titles)  # the background, and bars


def test_run_load_logs_data_profile_and_dataset(tracking_uri):
    with mlflow.start_run() as run:
        meta = run_load("sklearn:iris")
    client = MlflowClient()
    logged = client.get_run(run.info.run_id)
    assert logged.data.metrics["n_rows"] == 150
    assert logged.data.tags["data.digest"] == meta["digest"]
    dataset = logged.inputs.dataset_inputs[0].dataset
    assert dataset.name == "iris" and dataset.digest == meta["digest"]
    assert json.loads(dataset.source)["uri"] == "sklearn:iris"
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "data")}
    assert paths == {"data/raw.parquet", "data/meta.json"}
    profile = {a.path for a in client.list_artifacts(run.info.run_id, "profile")}
    assert {"profile/profile.json", "profile/columns.csv", "profile/histograms.svg"} <= profile


def test_run_load_rejects_a_missing_target_before_logging_anything(tracking_uri, tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"x": [1, 2, 3], "y": [0, 1, 0]}).to_csv(path, index=False)
    with mlflow.start_run() as run, pytest.raises(PipelineError, match="'nope' is not in the data"):
        run_load(str(path), "nope")
    assert MlflowClient().list_artifacts(run.info.run_id) == []


def test_a_full_disk_while_storing_the_table_is_not_blamed_on_the_data(tracking_uri, tmp_path, monkeypatch):
    path = tmp_path / "d.csv"
    pd.DataFrame({"x": [1, 2, 3, 4], "y": [0, 1, 0, 1]}).to_csv(path, index=False)

    def full(frame, target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr("steps.load.write_parquet_digest", full)
    with mlflow.start_run() as run, pytest.raises(OSError) as raised:  # step_run says it in one line
        run_load(str(path), "y")
    assert raised.value.errno == errno.ENOSPC and not isinstance(raised.value, PipelineError)
    assert MlflowClient().list_artifacts(run.info.run_id) == []

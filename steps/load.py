"""Step `load`: read the raw table, log it as an MLflow dataset, and profile it."""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import mlflow
import numpy as np
import pandas as pd

from steps.lib.artifacts import digest_json, publish_artifacts, write_json
from steps.lib.charts import grid_svg, histogram_panel, level_panel
from steps.lib.errors import PipelineError
from steps.lib.features import CLASSIFICATION, detect_task, validate_target
from steps.lib.names import DATA_DIR, DATA_META, OUTPUT_DIGEST_TAG, PROFILE_DIR, RAW_TABLE
from steps.lib.process import usable_cores
from steps.lib.runner import run_cli, step_run, unset_is_none
from steps.lib.signing import file_manifest, record_manifest, run_root
from steps.lib.sources import dataset_source, log_dataset, table_dataset
from steps.lib.step_cards import load_card
from steps.lib.story import load_story
from steps.lib.tables import BUNDLED_DATASETS, DEFAULT_DATA_URI, dataset_name, read_data, write_parquet_digest
from steps.lib.uris import redact_uri

logger = logging.getLogger("steps.load")
MAX_PLOTTED_COLUMNS = 64
HISTOGRAM_ROWS = 20_000
HISTOGRAMS = "histograms.svg"


def resolve_target(data_uri: str, target: str | None) -> str:
    """The label column: given, or (None) the bundled data set's own label."""
    if target is not None:
        return target
    if data_uri.startswith("sklearn:") and data_uri.split(":", 1)[1] in BUNDLED_DATASETS:
        return BUNDLED_DATASETS[data_uri.split(":", 1)[1]][1]
    raise PipelineError("no target given for this data; pass -P target=<label column>")


def profile_frame(frame: pd.DataFrame, target: str) -> dict[str, Any]:
    """A short exploratory profile: shape, dtypes, missing values, and the target's distribution."""
    labels = frame[target]
    kind = detect_task(labels)
    if kind == CLASSIFICATION:
        counts = labels.value_counts(dropna=False).sort_index()
        distribution: dict[str, Any] = {
            "kind": "classes",
            "counts": {str(k): int(v) for k, v in counts.items()},
            "fractions": {str(k): round(float(v) / len(labels), 4) for k, v in counts.items()},
        }
    else:
        stats = labels.describe()
        distribution = {"kind": "numeric", **{str(k): float(v) for k, v in stats.items()}}
    missing = frame.isna().sum()
    return {
        "n_rows": len(frame),
        "n_columns": len(frame.columns),
        "target": target,
        "dtypes": {str(c): str(t) for c, t in frame.dtypes.items()},
        "missing": {str(c): int(n) for c, n in missing.items()},
        "n_missing_cells": int(missing.sum()),
        "n_unique": distinct_counts(frame),
        "target_distribution": distribution,
    }


def distinct_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Distinct values per column (missing values not counted), columns counted side by side."""
    with ThreadPoolExecutor(usable_cores()) as pool:
        counts = pool.map(lambda i: distinct_count(frame.iloc[:, i]), range(frame.shape[1]))
        return dict(zip(map(str, frame.columns), counts, strict=True))


def distinct_count(values: pd.Series) -> int:
    """Distinct non-missing values. A float column is sorted and its changes counted: numpy sorts without
    the GIL, so two columns are counted at once (pandas' hash table holds it: ~65 ms a million floats, one
    column at a time), and it equals pandas' count (0.0 and -0.0 are one value, NaN is missing)."""
    if isinstance(values.dtype, np.dtype) and np.issubdtype(values.dtype, np.floating):
        array = values.to_numpy()
        present = np.sort(array[~np.isnan(array)])
        return int(present.size and 1 + np.count_nonzero(present[1:] != present[:-1]))
    return int(values.nunique(dropna=True))


def column_table(profile: dict[str, Any]) -> pd.DataFrame:
    """One row per column: dtype, missing count and share, distinct values."""
    rows = profile["n_rows"]
    return pd.DataFrame(
        [
            {
                "column": column,
                "dtype": dtype,
                "missing": profile["missing"][column],
                "missing_pct": round(100.0 * profile["missing"][column] / rows, 2),
                "n_unique": profile["n_unique"][column],
            }
            for column, dtype in profile["dtypes"].items()
        ]
    )


def plot_histograms(frame: pd.DataFrame, target: str, path: Path) -> None:
    """One small histogram per feature (bars of the ten commonest values for non-numeric columns), drawn from
    a seeded sample of at most HISTOGRAM_ROWS rows: the shapes of a million rows in the time of a few."""
    n_rows_in_table = len(frame)
    if n_rows_in_table > HISTOGRAM_ROWS:
        frame = frame.sample(n=HISTOGRAM_ROWS, random_state=0)
    columns = [*[c for c in frame.columns if c != target][:MAX_PLOTTED_COLUMNS], target]
    panels = []
    for column in columns:
        title = f"{column} (target)" if column == target else column
        values = frame[column].dropna()
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            panels.append(histogram_panel(title, values.to_numpy(dtype=float)))
        else:
            counts = values.astype(str).value_counts().head(10)
            panels.append(level_panel(title, {str(k): int(v) for k, v in counts.items()}))
    caption = f"a random sample of {len(frame):,} of {n_rows_in_table:,} rows" if len(frame) < n_rows_in_table else ""
    path.write_text(grid_svg(panels, columns=4, panel_size=(256, 192), caption=caption), encoding="utf-8")


def run_load(data_uri: str, target: str | None = None, data_copy: Path | None = None) -> dict[str, Any]:
    """The whole step inside the active run; returns the data set's metadata.

    `data_copy`: main's download of a remote `data_uri`, read instead of downloading it again.
    """
    frame = read_data(data_uri, data_copy)
    target = resolve_target(data_uri, target)
    validate_target(frame, target)
    frame.columns = [str(c) for c in frame.columns]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1) as writer:
        data_dir, profile_dir = Path(tmp, DATA_DIR), Path(tmp, PROFILE_DIR)
        data_dir.mkdir()
        profile_dir.mkdir()
        # pyarrow writes without the GIL: the Parquet file is written while this thread draws and profiles
        written = writer.submit(write_parquet_digest, frame, data_dir / RAW_TABLE)
        plot_histograms(frame, target, profile_dir / HISTOGRAMS)
        profile = profile_frame(frame, target)
        name = dataset_name(data_uri)
        dataset = table_dataset(frame, source=dataset_source(data_uri), name=name, targets=target)
        try:
            table_digest = written.result()
        except OSError:
            raise  # e.g. a full disk: said in one line by step_run
        except Exception as error:  # pyarrow rejects e.g. columns mixing numbers and text
            raise PipelineError(f"cannot store the table as Parquet: {error}; clean the mixed-type column") from None
        meta = {
            "name": name,
            "source": redact_uri(data_uri),
            "target": target,
            "digest": dataset.digest,
            "n_rows": len(frame),
            "n_columns": len(frame.columns),
            "n_unique": profile["n_unique"],  # for featurize's choice of columns: counted once
        }
        if "csv_dialect" in frame.attrs:  # separator, decimal mark, encoding: featurize reads text numbers by it
            meta["csv"] = frame.attrs["csv_dialect"]
        write_json(data_dir / DATA_META, meta)
        write_json(profile_dir / "profile.json", profile)
        columns = column_table(profile)
        columns.to_csv(profile_dir / "columns.csv", index=False)
        log_dataset(dataset, context="raw")
        mlflow.log_metrics(
            {"n_rows": len(frame), "n_columns": len(frame.columns), "n_missing_cells": profile["n_missing_cells"]}
        )
        files = file_manifest(data_dir, known={RAW_TABLE: table_digest})
        mlflow.set_tags(
            {
                "data.name": name,
                "data.digest": dataset.digest,
                "data.target": target,
                OUTPUT_DIGEST_TAG: digest_json(files),
            }
        )
        record_manifest(run_root(DATA_DIR), files)
        mlflow.log_artifacts(str(profile_dir), PROFILE_DIR)
        publish_artifacts(data_dir, DATA_DIR)
        load_story(meta, profile["n_missing_cells"])
        load_card(meta, columns, profile_dir / HISTOGRAMS, profile["n_missing_cells"])
    logger.info("loaded %s: %d rows x %d columns, target %r", name, len(frame), len(frame.columns), target)
    return meta


@click.command()
@click.option(
    "--data-uri", default=DEFAULT_DATA_URI, show_default=True, help="sklearn:<name>, path, URL or artifact URI."
)
@click.option(
    "--target", default="auto", callback=unset_is_none, help="Label column; auto: a bundled data set's own label."
)
@click.option("--data-copy", default="none", callback=unset_is_none, help="main's download of data_uri, to read.")
def main(data_uri: str, target: str | None, data_copy: str | None) -> None:
    with step_run("load"):
        run_load(data_uri, target=target, data_copy=Path(data_copy) if data_copy else None)


if __name__ == "__main__":
    run_cli(main, "load")

"""Step `featurize`: decide the task and the feature columns, and split train/validation/test."""

from __future__ import annotations

import json
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import mlflow
import pandas as pd

from steps.lib.artifacts import digest_json, fetched, publish_artifacts, write_json
from steps.lib.errors import PipelineError
from steps.lib.features import TASKS, FeatureSpec, build_feature_spec
from steps.lib.names import DATA_META, FEATURE_SPEC, OUTPUT_DIGEST_TAG, RAW_TABLE, SPLITS_DIR
from steps.lib.runner import INT, run_cli, step_run, unset_is_none
from steps.lib.signing import file_manifest, record_manifest, run_root
from steps.lib.sources import dataset_source, log_dataset, table_dataset
from steps.lib.split_options import SplitOptions, split_options
from steps.lib.splits import SPLIT_NAMES, Splits, check_shares, split_frame
from steps.lib.step_cards import featurize_card
from steps.lib.story import featurize_story
from steps.lib.tables import read_frame, write_parquet_digest

logger = logging.getLogger("steps.featurize")
SPLIT_CONTEXTS = ("training", "validation", "testing")  # MLflow's dataset contexts for the three splits


def read_raw_data(raw_data_uri: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """load's output: the table and its metadata (name, target, digest)."""
    with fetched(raw_data_uri, "the raw data") as root:
        if not (root / RAW_TABLE).exists() or not (root / DATA_META).exists():
            raise PipelineError(f"'{raw_data_uri}' is not a load output; pass runs:/<load run id>/data")
        return read_frame(root / RAW_TABLE), json.loads((root / DATA_META).read_text())


def log_splits(splits: Splits, spec: FeatureSpec, meta: dict[str, Any]) -> None:
    """The splits and the feature spec as artifacts, each split as an MLflow dataset input, the counts."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, SPLITS_DIR)
        out.mkdir()
        # pyarrow writes without the GIL: the three files side by side, while this thread describes the datasets
        with ThreadPoolExecutor(len(SPLIT_NAMES)) as writers:
            written = {
                f"{name}.parquet": writers.submit(write_parquet_digest, splits[name], out / f"{name}.parquet")
                for name in SPLIT_NAMES
            }
            datasets = [
                table_dataset(
                    splits[name],
                    source=dataset_source(mlflow.get_artifact_uri(f"{SPLITS_DIR}/{name}.parquet")),
                    name=f"{meta['name']}-{name}",
                    targets=spec.target,
                )
                for name in SPLIT_NAMES
            ]
            digests = {file: write.result() for file, write in written.items()}
        write_json(out / FEATURE_SPEC, spec.to_dict())
        for dataset, context in zip(datasets, SPLIT_CONTEXTS, strict=True):
            log_dataset(dataset, context=context)
        mlflow.log_metrics(
            {
                "n_train": len(splits.train),
                "n_validation": len(splits.validation),
                "n_test": len(splits.test),
                "n_features": len(spec.numeric) + len(spec.categorical) + len(spec.datetime),
                "n_dropped_columns": len(spec.dropped),
            }
        )
        mlflow.set_tags(
            {"task": spec.task, "data.name": meta["name"], "data.digest": meta["digest"], "data.target": spec.target}
        )
        files = file_manifest(out, known=digests)
        record_manifest(run_root(SPLITS_DIR), files)
        publish_artifacts(out, SPLITS_DIR)
        mlflow.set_tag(OUTPUT_DIGEST_TAG, digest_json(files))


def written_with_decimal_commas(meta: dict[str, Any]) -> bool:
    """Whether load read a CSV written with decimal commas (its `csv` record, when the table was one): meta.json
    comes from a store anyone on the team can write to, so anything but a mapping saying so is no."""
    read_as = meta.get("csv")
    return isinstance(read_as, dict) and read_as.get("decimal") == ","


def describe_split(split: dict[str, Any]) -> str:
    """The split in words, for the run's tag and the model card."""
    kind, column, dropped = split["kind"], split.get("column"), split.get("rows_without_value", 0)
    words = {
        "random": "random" + (" (stratified by the label)" if column is None else ""),
        "time": f"by time on '{column}': oldest rows train, newest test",
        "group": f"by group on '{column}': no group in two splits",
    }[kind]
    what = "time" if kind == "time" else "group"
    return words + (f"; {dropped:,} rows without a {what} dropped" if dropped else "")


def run_featurize(
    raw_data_uri: str,
    task: str | None = None,
    seed: int = 42,
    validation_size: float = 0.2,
    test_size: float = 0.2,
    split: str = "random",
    time_column: str | None = None,
    group_column: str | None = None,
) -> FeatureSpec:
    """The whole step inside the active run; returns the feature spec. `task` None: detected from the label.

    `split`: random (stratified for classification), time (on `time_column`) or group (on `group_column`).
    """
    options = SplitOptions(split, time_column, group_column).check()
    check_shares(validation_size, test_size)
    frame, meta = read_raw_data(raw_data_uri)
    spec = build_feature_spec(
        frame, meta["target"], task, counted=meta.get("n_unique"), decimal_comma=written_with_decimal_commas(meta)
    )
    splits = split_frame(frame, spec, seed, validation_size, test_size, split=split, column=options.column)
    split_words = describe_split(spec.split)
    mlflow.set_tag("split", split_words)
    if spec.split["rows_without_value"]:
        logger.warning("split: %s", split_words)
    log_splits(splits, spec, meta)
    counts = {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)}
    featurize_story(spec, counts, split_words)
    featurize_card(spec, splits, split_words)
    logger.info(
        "%s task; %d numeric, %d categorical, %d date/time features; dropped %s; %d/%d/%d rows",
        spec.task,
        len(spec.numeric),
        len(spec.categorical),
        len(spec.datetime),
        spec.dropped or "none",
        len(splits.train),
        len(splits.validation),
        len(splits.test),
    )
    for column, encoding in spec.encodings.items():
        logger.info("column %r: %s", column, encoding["reason"])
        if "note" in encoding:  # day and month could be either way round: month first was taken
            logger.warning("column %r: %s; pass it as ISO 8601 (2024-05-31) if that is wrong", column, encoding["note"])
    return spec


@click.command()
@click.option("--raw-data-uri", required=True, help="load's artifact URI, e.g. runs:/<load run>/data.")
@click.option("--task", default="auto", type=click.Choice(["auto", *TASKS], False), callback=unset_is_none)
@click.option("--seed", default=42, type=INT)
@click.option("--validation-size", default=0.2, type=float)
@click.option("--test-size", default=0.2, type=float)
@split_options
def main(
    raw_data_uri: str,
    task: str | None,
    seed: int,
    validation_size: float,
    test_size: float,
    split: str,
    time_column: str | None,
    group_column: str | None,
) -> None:
    with step_run("featurize"):
        run_featurize(raw_data_uri, task, seed, validation_size, test_size, split, time_column, group_column)


if __name__ == "__main__":
    run_cli(main, "featurize")

"""Step `featurize`: decide the task and the feature columns, and split train/validation/test."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path

import click
import mlflow
import pandas as pd

from steps.common import (
    CLASSIFICATION,
    INT,
    OUTPUT_DIGEST_TAG,
    SPLIT_NAMES,
    FeatureSpec,
    PipelineError,
    Splits,
    dataset_source,
    detect_task,
    digest_path,
    download_dir,
    run_cli,
    step_run,
    validate_target,
    write_json,
)

logger = logging.getLogger("steps.featurize")
ID_NAME = re.compile(r"(^|_)(id|uuid|guid|key|index)$", re.IGNORECASE)
# A text column whose values are nearly all distinct carries no reusable signal.
ID_UNIQUE_RATIO = 0.95
MIN_ROWS_PER_CLASS = 3  # one each for train, validation and test


def choose_columns(frame: pd.DataFrame, target: str) -> tuple[list[str], list[str], dict[str, str]]:
    """Split the non-target columns into numeric and categorical features, and those to drop (with why)."""
    numeric: list[str] = []
    categorical: list[str] = []
    dropped: dict[str, str] = {}
    n_rows = len(frame)
    for column in frame.columns:
        if column == target:
            continue
        values = frame[column]
        present = values.dropna()
        n_unique = present.nunique()
        is_bool = pd.api.types.is_bool_dtype(present.infer_objects())
        is_numeric = pd.api.types.is_numeric_dtype(values) and not is_bool
        if present.empty:
            dropped[column] = "all values missing"
        elif n_unique <= 1:
            dropped[column] = "constant"
        elif pd.api.types.is_datetime64_any_dtype(values):
            dropped[column] = "datetime (not featurized)"
        elif n_unique == n_rows and ID_NAME.search(str(column)):
            dropped[column] = "ID-like (unique per row, named like an identifier)"
        elif not is_numeric and n_rows >= 20 and n_unique >= ID_UNIQUE_RATIO * len(present):
            dropped[column] = "ID-like (text unique per row)"
        elif is_numeric and n_unique == n_rows and _is_row_counter(present):
            dropped[column] = "ID-like (a row counter)"
        elif is_numeric:
            numeric.append(column)
        else:
            categorical.append(column)
    return numeric, categorical, dropped


def _is_row_counter(values: pd.Series) -> bool:
    """An integer column that counts rows (1, 2, 3, ... in any order)."""
    if not pd.api.types.is_integer_dtype(values):
        return False
    ordered = values.sort_values().to_numpy()
    return len(ordered) > 2 and bool((ordered[1:] - ordered[:-1] == 1).all())


def build_feature_spec(frame: pd.DataFrame, target: str, task: str = "auto") -> FeatureSpec:
    """Validate the table and decide task and features."""
    validate_target(frame, target, None if task == "auto" else task)
    labels = frame[target].dropna()
    task = detect_task(labels) if task == "auto" else task
    if task == "regression" and not pd.api.types.is_numeric_dtype(labels):
        raise PipelineError(
            f"target '{target}' is not numeric, so it cannot be a regression target; use -P task=classification"
        )
    numeric, categorical, dropped = choose_columns(frame, target)
    if not numeric and not categorical:
        raise PipelineError(f"no usable feature columns (dropped: {dropped}); the data needs informative columns")
    classes = None
    if task == CLASSIFICATION:
        counts = labels.value_counts()
        rare = counts[counts < MIN_ROWS_PER_CLASS]
        if not rare.empty:
            raise PipelineError(
                f"class(es) {', '.join(map(repr, rare.index.tolist()))} have fewer than {MIN_ROWS_PER_CLASS} rows, "
                "too few for a stratified train/validation/test split; drop or merge them"
            )
        classes = sorted(labels.unique().tolist(), key=lambda v: (str(type(v)), v))
        classes = [c.item() if hasattr(c, "item") else c for c in classes]
    input_columns = [str(c) for c in frame.columns if c != target]
    return FeatureSpec(target, task, numeric, categorical, dropped, input_columns, classes)


def split_frame(frame: pd.DataFrame, spec: FeatureSpec, seed: int, validation_size: float, test_size: float) -> Splits:
    """Train/validation/test split of the labelled rows, stratified for classification."""
    from sklearn.model_selection import train_test_split

    for name, share in (("validation_size", validation_size), ("test_size", test_size)):
        if not 0 < share < 1:
            raise PipelineError(f"{name} must lie strictly between 0 and 1; got {share}")
    if validation_size + test_size >= 0.9:
        raise PipelineError("validation_size + test_size must leave at least 10% of rows for training")
    labelled = frame[frame[spec.target].notna()].reset_index(drop=True)
    stratify = labelled[spec.target] if spec.task == CLASSIFICATION else None
    try:
        rest, test = train_test_split(labelled, test_size=test_size, random_state=seed, stratify=stratify)
        stratify_rest = rest[spec.target] if spec.task == CLASSIFICATION else None
        train, validation = train_test_split(
            rest, test_size=validation_size / (1 - test_size), random_state=seed, stratify=stratify_rest
        )
    except ValueError as error:
        raise PipelineError(
            f"cannot split {len(labelled)} rows: {error}; use more data or smaller split sizes"
        ) from None
    return Splits(*(part.reset_index(drop=True) for part in (train, validation, test)))


def run_featurize(raw_data_uri: str, task: str, seed: int, validation_size: float, test_size: float) -> FeatureSpec:
    """The whole step inside the active run; returns the feature spec."""
    root = download_dir(raw_data_uri, "the raw data")
    if not (root / "raw.parquet").exists() or not (root / "meta.json").exists():
        raise PipelineError(f"'{raw_data_uri}' is not a load output; pass runs:/<load run id>/data")
    meta = json.loads((root / "meta.json").read_text())
    frame = pd.read_parquet(root / "raw.parquet")
    spec = build_feature_spec(frame, meta["target"], task)
    splits = split_frame(frame, spec, seed, validation_size, test_size)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "splits")
        out.mkdir()
        for name in SPLIT_NAMES:
            splits[name].to_parquet(out / f"{name}.parquet", index=False)
        write_json(out / "feature_spec.json", spec.to_dict())
        for name, context in zip(SPLIT_NAMES, ("training", "validation", "testing"), strict=True):
            dataset = mlflow.data.from_pandas(
                splits[name],
                source=dataset_source(mlflow.get_artifact_uri(f"splits/{name}.parquet")),
                name=f"{meta['name']}-{name}",
                targets=spec.target,
            )
            mlflow.log_input(dataset, context=context)
        mlflow.log_metrics(
            {
                "n_train": len(splits.train),
                "n_validation": len(splits.validation),
                "n_test": len(splits.test),
                "n_features": len(spec.numeric) + len(spec.categorical),
                "n_dropped_columns": len(spec.dropped),
            }
        )
        mlflow.set_tags(
            {"task": spec.task, "data.name": meta["name"], "data.digest": meta["digest"], "data.target": spec.target}
        )
        mlflow.log_artifacts(str(out), "splits")
        mlflow.set_tag(OUTPUT_DIGEST_TAG, digest_path(out))
    logger.info(
        "%s task; %d numeric, %d categorical features; dropped %s; %d/%d/%d rows",
        spec.task,
        len(spec.numeric),
        len(spec.categorical),
        spec.dropped or "none",
        len(splits.train),
        len(splits.validation),
        len(splits.test),
    )

    return spec


@click.command()
@click.option("--raw-data-uri", required=True, help="load's artifact URI, e.g. runs:/<load run>/data.")
@click.option("--task", default="auto", type=click.Choice(["auto", "classification", "regression"]))
@click.option("--seed", default=42, type=INT)
@click.option("--validation-size", default=0.2, type=float)
@click.option("--test-size", default=0.2, type=float)
def main(raw_data_uri: str, task: str, seed: int, validation_size: float, test_size: float) -> None:
    with step_run("featurize"):
        run_featurize(raw_data_uri, task, seed, validation_size, test_size)


if __name__ == "__main__":
    run_cli(main, "featurize")

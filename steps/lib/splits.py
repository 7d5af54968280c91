"""The train/validation/test splits: made by featurize, read back by every step after it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from steps.lib.artifacts import download_dir
from steps.lib.errors import PipelineError
from steps.lib.features import CLASSIFICATION, FeatureSpec
from steps.lib.names import FEATURE_SPEC

SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def __getitem__(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


def read_splits(splits_uri: str) -> tuple[Splits, FeatureSpec]:
    """Read featurize's output: the three splits and the feature spec."""
    root = download_dir(splits_uri, "the splits")
    missing = [name for name in (*[f"{s}.parquet" for s in SPLIT_NAMES], FEATURE_SPEC) if not (root / name).exists()]
    if missing:
        raise PipelineError(
            f"'{splits_uri}' is not a featurize output (missing {', '.join(missing)}); "
            "pass the splits URI of a finished featurize run"
        )
    spec = FeatureSpec.from_dict(json.loads((root / FEATURE_SPEC).read_text()))
    splits = Splits(*(pd.read_parquet(root / f"{name}.parquet") for name in SPLIT_NAMES))
    return splits, spec


def features_and_target(frame: pd.DataFrame, spec: FeatureSpec) -> tuple[pd.DataFrame, pd.Series]:
    """The model's input (all raw columns but the target) and the target."""
    return frame[spec.input_columns], frame[spec.target]


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

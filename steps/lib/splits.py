"""The train/validation/test splits: made by featurize, read back by every step after it.

Trial workers import this module: it imports no MLflow and no click (see steps/lib/split_options.py).
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from steps.lib.errors import PipelineError
from steps.lib.features import CLASSIFICATION, ISO8601, FeatureSpec, not_in_data, time_format_of
from steps.lib.names import FEATURE_SPEC

SPLIT_NAMES = ("train", "validation", "test")
SPLIT_KINDS = ("random", "time", "group")


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def __getitem__(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


def read_splits(splits_uri: str, parts: tuple[str, ...] = SPLIT_NAMES) -> tuple[Splits, FeatureSpec]:
    """Read featurize's output: the three splits and the feature spec. `parts`: the splits a step uses; the
    others are read as no rows of the same columns and dtypes, from the file's schema (a categorical column
    without its levels). monitor needs only the training rows (at a million rows, ~300 MB and ~0.5 s less),
    tune never the test rows."""
    from steps.lib.artifacts import fetched  # here: trial workers import this module without MLflow

    with fetched(splits_uri, "the splits") as root:
        wanted = (*[f"{s}.parquet" for s in SPLIT_NAMES], FEATURE_SPEC)
        missing = [name for name in wanted if not (root / name).exists()]
        if missing:
            raise PipelineError(
                f"'{splits_uri}' is not a featurize output (missing {', '.join(missing)}); "
                "pass the splits URI of a finished featurize run"
            )
        spec = FeatureSpec.from_dict(json.loads((root / FEATURE_SPEC).read_text()))
        splits = Splits(*(read_part(root / f"{name}.parquet", whole=name in parts) for name in SPLIT_NAMES))
    return splits, spec


def read_part(path: Path, whole: bool) -> pd.DataFrame:
    """A split's Parquet file: all its rows, or (whole False) none, from its schema alone."""
    if whole:
        from steps.lib.tables import read_frame  # here: tables imports MLflow, which trial workers never load

        return read_frame(path)
    import pyarrow.parquet

    return pyarrow.parquet.read_schema(path).empty_table().to_pandas()


def features_and_target(frame: pd.DataFrame, spec: FeatureSpec) -> tuple[pd.DataFrame, pd.Series]:
    """The model's input (all raw columns but the target) and the target."""
    return frame[spec.input_columns], frame[spec.target]


def check_split_options(split: str, time_column: str | None, group_column: str | None) -> None:
    """The split kind and its column, checked before any data is read."""
    if split not in SPLIT_KINDS:
        raise PipelineError(f"unknown split '{split}'; use one of {', '.join(SPLIT_KINDS)}")
    if split == "time" and time_column is None:
        raise PipelineError("split=time needs the column that orders the rows; pass -P time_column=<column>")
    if split == "group" and group_column is None:
        raise PipelineError("split=group needs the column that names each row's group; pass -P group_column=<column>")
    if split == "random" and (time_column is not None or group_column is not None):
        raise PipelineError(
            "time_column and group_column apply to split=time and split=group; pass -P split=time|group"
        )


def check_shares(validation_size: float, test_size: float) -> None:
    for name, share in (("validation_size", validation_size), ("test_size", test_size)):
        if not 0 < share < 1:
            raise PipelineError(f"{name} must lie strictly between 0 and 1; got {share}")
    if validation_size + test_size >= 0.9:
        raise PipelineError("validation_size + test_size must leave at least 10% of rows for training")


def split_frame(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    seed: int,
    validation_size: float,
    test_size: float,
    split: str = "random",
    column: str | None = None,
) -> Splits:
    """Train/validation/test split of the labelled rows: random (stratified for classification), by time
    (oldest rows train, newest test; equal times never in two splits) or by group (no group in two splits).
    Each split keeps the table's row order: the rows of each are decided first, as positions, then taken once.

    Records what it did in `spec.split` (kind, column, rows dropped for a missing time or group).
    """
    check_shares(validation_size, test_size)
    labelled = np.flatnonzero(frame[spec.target].notna().to_numpy())
    spec.split = {"kind": split, "column": column, "rows_without_value": 0}
    if split == "random":
        parts = split_at_random(frame[spec.target].iloc[labelled], spec, seed, validation_size, test_size)
    elif split == "time":
        parts = split_by_time(column_of(frame, column, "time_column").iloc[labelled], spec, validation_size, test_size)
    else:
        groups = column_of(frame, column, "group_column").iloc[labelled]
        parts = split_by_group(groups, spec, seed, validation_size, test_size)
    with ThreadPoolExecutor(len(parts)) as pool:  # Arrow's take lets go of the GIL: three at once
        taken = pool.map(lambda rows: plain_labels(frame.take(labelled[rows]).reset_index(drop=True), spec), parts)
        return Splits(*taken)


def plain_labels(part: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """A split's labels (all present) in numpy's type where they were pandas' nullable one (`boolean`, `Int64`,
    as a Parquet column with gaps reads): scikit-learn turned those into floats, and the model predicted 1.0
    and 0.0 for True and False (`proba_1.0`), where the feature spec says [False, True]."""
    labels = part[spec.target]
    if isinstance(labels.dtype, pd.api.extensions.ExtensionDtype) and labels.dtype.kind in "biuf":
        part[spec.target] = labels.to_numpy(dtype=labels.dtype.numpy_dtype)
    return part


def label_strata(labels: pd.Series) -> np.ndarray:
    """The labels as integer codes 0..k-1, in sorted label order (without sorting a million strings). Text labels
    are factorized in Arrow (its dictionary encoding; the same codes): `to_numpy()` made a million Python strings
    first (0.11-0.29 s of featurize's 0.4-0.8 s split at a million rows, against 0.02-0.04 s). Any other labels
    as values (a categorical's own order of categories would change the codes, and so a seed's split)."""
    text = isinstance(labels.dtype, pd.StringDtype)
    return pd.factorize(labels if text else labels.to_numpy(), sort=True)[0]


def shared_out(total: int, counts: np.ndarray) -> np.ndarray:
    """`total` rows shared among classes of `counts` rows in proportion (largest remainders first; ties to the
    larger class, then the first)."""
    shares, remainders = np.divmod(total * counts, max(int(counts.sum()), 1))  # in integers: ties are ties
    order = np.lexsort((np.arange(len(counts)), -counts, -remainders))
    shares[order[: total - int(shares.sum())]] += 1
    return shares


def drawn_parts(
    n: int, strata: np.ndarray | None, sizes: tuple[int, ...], rng: np.random.Generator
) -> list[np.ndarray]:
    """Positions 0..n-1 drawn at random into parts of `sizes` rows and a last part of the rest, each part in
    ascending order (the table's own, as the time and group splits keep it); with `strata` (n integer class
    codes 0..k-1), every part holds each class in the proportion of the whole, up to rounding.

    Written here, not scikit-learn's train_test_split: that one gathers the positions into Python lists (0.5 s
    per million rows, two calls per split), and featurize would import scikit-learn for it alone (~0.9 s).
    Ascending positions make the takes of the rows ~4x faster than positions in a random order (memory read
    in order); no step depends on the order of a split's rows (folds and samples are drawn seeded).
    """
    order = rng.permutation(n)
    if strata is None:
        part = np.repeat(np.arange(len(sizes) + 1), [*sizes, n - sum(sizes)])
    else:
        order = order[np.argsort(strata[order], kind="stable")]  # grouped by class, in a random order within each
        counts = np.bincount(strata)
        per_class, left = [], counts
        for size in sizes:
            per_class.append(shared_out(size, left))
            left = left - per_class[-1]
        ends = np.cumsum(per_class, axis=0)  # where each part ends, counted from the start of each class's rows
        classes = np.repeat(np.arange(len(counts)), counts)
        within = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
        part = (within >= ends[:, classes]).sum(axis=0)  # which part each row of `order` falls in
    where = np.empty(n, dtype=np.intp)
    where[order] = part  # the part of each position
    return [np.flatnonzero(where == index) for index in range(len(sizes) + 1)]


def split_at_random(
    labels: pd.Series, spec: FeatureSpec, seed: int, validation_size: float, test_size: float
) -> tuple[np.ndarray, ...]:
    """Row positions (in `labels`) of train, validation and test, seeded: stratified by the label for
    classification. Test takes ceil(test_size x rows), validation its share of the rest, as scikit-learn counts."""
    n = len(labels)
    n_test = int(np.ceil(test_size * n))
    n_validation = int(np.ceil(validation_size / (1 - test_size) * (n - n_test)))
    strata = label_strata(labels) if spec.task == CLASSIFICATION else None
    classes = 1 if strata is None else int(strata.max(initial=-1)) + 1
    n_train = n - n_test - n_validation
    if min(n_train, n_validation, n_test) < classes:
        fewer = "" if strata is None else f" (a split of fewer rows than the {classes} classes)"
        raise PipelineError(
            f"cannot split {n:,} rows into {n_train:,} train, {n_validation:,} validation and {n_test:,} test "
            f"rows{fewer}; use more data, or raise the smallest of validation_size and test_size"
        )
    test, validation, train = drawn_parts(n, strata, (n_test, n_validation), np.random.default_rng(seed))
    return train, validation, test


def column_of(frame: pd.DataFrame, column: str, what: str) -> pd.Series:
    if column not in frame.columns:
        raise not_in_data(what, column, frame.columns, "pass an existing column")
    return frame[column]


def time_order(frame: pd.DataFrame, column: str, time_format: str | None = None) -> pd.Series:
    return time_keys(column_of(frame, column, "time_column"), time_format)[0]


def time_keys(values: pd.Series, time_format: str | None = None) -> tuple[pd.Series, str | None]:
    """The column as a sort key (NaN where missing): numbers as they are, dates and date/time text as
    microseconds since 1970 (UTC), and the text's format (`time_format`, or found as featurize finds a date/time
    feature's: ISO 8601, 05/31/2024, 31.05.2024 13:45, ...); refused when its values do not parse as times."""
    column = values.name
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(float), None
    from steps.lib.text_values import parse_times  # here: featurize splits at random without scikit-learn

    present = values.notna()
    if time_format is None:
        spelled = time_format_of(values[present])
        time_format = spelled.format if spelled else ISO8601
    times = parse_times(values, time_format)
    times.index = values.index
    unparsed = int((present & times.isna()).sum())
    if present.sum() == 0 or unparsed > 0.05 * present.sum():
        example = values[present & times.isna()].head(1).tolist() or values.head(1).tolist()
        raise PipelineError(
            f"time_column '{column}' does not parse as dates/times ({unparsed:,} of {int(present.sum()):,} values, "
            f"e.g. {example[0]!r}); use a date/time column, numbers, or text in one date format such as "
            "2024-05-01T13:45:00 or 05/01/2024 13:45 (README: date and time formats)"
        )
    microseconds = times.dt.tz_convert(None).to_numpy().astype("datetime64[us]").astype("int64")
    return pd.Series(np.where(times.isna(), np.nan, microseconds.astype(float)), index=values.index), time_format


def cut_by_order(keys: np.ndarray, shares: tuple[float, ...]) -> list[np.ndarray]:
    """Row positions of consecutive blocks of sorted `keys`, of about the given shares of rows each.

    A block boundary never falls between rows with the same key: each key's rows go to one block.
    """
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    n = len(ranked)
    bounds = [0]
    for share in np.cumsum(shares)[:-1]:
        cut = round(share * n)
        cut = int(np.searchsorted(ranked, ranked[min(cut, n - 1)], side="left")) if cut < n else n
        bounds.append(max(cut, bounds[-1]))
    bounds.append(n)
    return [order[start:stop] for start, stop in itertools.pairwise(bounds)]


def split_by_time(
    values: pd.Series, spec: FeatureSpec, validation_size: float, test_size: float
) -> tuple[np.ndarray, ...]:
    """Positions (in `values`, the time column of the labelled rows) of train, validation and test. A time column
    that is also a feature is read in the format featurize found for it on every row."""
    keys, time_format = time_keys(values, spec.time_formats().get(str(values.name)))
    times = keys.to_numpy()
    timed = np.flatnonzero(~np.isnan(times))
    spec.split |= {"rows_without_value": len(times) - len(timed), "labelled_rows": len(times)}
    if time_format is not None:
        spec.split["format"] = time_format  # cross-validation folds cut the training rows' times the same way
    empty = (
        f"time_column '{values.name}' has too few distinct times ({pd.unique(times[timed]).size:,}) for a "
        "train/validation/test split in time order; use split=random or more data"
    )
    return split_in_order(timed, times[timed], validation_size, test_size, empty)


def split_in_order(
    positions: np.ndarray, keys: np.ndarray, validation_size: float, test_size: float, empty: str
) -> tuple[np.ndarray, ...]:
    """Train, validation and test: consecutive blocks of `positions` sorted by their `keys` (one key's rows in
    one block), each in ascending position; `empty` is the error if one of them has no rows."""
    blocks = cut_by_order(keys, (1 - validation_size - test_size, validation_size, test_size))
    parts = tuple(positions[np.sort(rows)] for rows in blocks)
    if any(len(part) == 0 for part in parts):
        raise PipelineError(empty)
    return parts


def split_by_group(
    groups: pd.Series, spec: FeatureSpec, seed: int, validation_size: float, test_size: float
) -> tuple[np.ndarray, ...]:
    """Positions (in `groups`, the group column of the labelled rows) of train, validation and test."""
    column = groups.name
    grouped = np.flatnonzero(groups.notna().to_numpy())
    spec.split |= {"rows_without_value": len(groups) - len(grouped), "labelled_rows": len(groups)}
    keys = groups.iloc[grouped].astype(str)
    n_groups = keys.nunique()
    if n_groups < 3:
        raise PipelineError(
            f"group_column '{column}' has {n_groups} group(s); a train/validation/test split by group needs at "
            "least 3 (it should name e.g. the customer or patient of each row)"
        )
    rng = np.random.default_rng(seed)  # groups in a seeded random order, then cut by rows: no group in two splits
    rank = pd.Series(rng.permutation(n_groups), index=pd.unique(keys))
    empty = (
        f"group_column '{column}': one group holds most rows, so a split by group leaves a split empty; "
        "use split=random or a finer group"
    )
    return split_in_order(grouped, keys.map(rank).to_numpy(), validation_size, test_size, empty)


def cv_folds_of(train: pd.DataFrame, spec: FeatureSpec, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, score rows) of each cross-validation fold of the training split, matching its split kind:
    random: k-fold (stratified for classification); time: each fold scores the next block of time on the
    blocks before it; group: k-fold by group."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold

    split = spec.split or {}
    if split.get("kind") == "time":
        keys = time_order(train, split["column"], split.get("format")).to_numpy()
        blocks = cut_by_order(keys, (1 / (folds + 1),) * (folds + 1))
        return [(np.concatenate(blocks[:k]), blocks[k]) for k in range(1, folds + 1) if len(blocks[k])]
    if split.get("kind") == "group":
        return list(GroupKFold(n_splits=folds).split(train, groups=train[split["column"]].astype(str)))
    splitter = (StratifiedKFold if spec.task == CLASSIFICATION else KFold)(folds, shuffle=True, random_state=seed)
    return list(splitter.split(train, train[spec.target]))


def describe_scoring(spec: FeatureSpec, folds: int) -> str:
    """What a trial is scored on, as tune's tag `scored_on` tells it: the validation split, or the folds that
    cv_folds_of makes."""
    split = spec.split or {}
    if folds < 2:
        return "the validation split"
    if split.get("kind") == "time":
        return f"{folds} folds in time order on '{split['column']}': each scores the next block of time"
    if split.get("kind") == "group":
        return f"{folds} folds by group on '{split['column']}': no group in two folds"
    return f"{folds} {'stratified ' if spec.task == CLASSIFICATION else ''}shuffled folds of the training split"


def sample_rows(frame: pd.DataFrame, spec: FeatureSpec, most: int, seed: int) -> pd.DataFrame:
    """At most `most` rows (0: all), seeded, stratified by the label for classification, in their first order."""
    if most == 0 or len(frame) <= most:
        return frame
    strata = label_strata(frame[spec.target]) if spec.task == CLASSIFICATION else None
    kept, _ = drawn_parts(len(frame), strata, (most,), np.random.default_rng(seed))
    return frame.iloc[kept].reset_index(drop=True)

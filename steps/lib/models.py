"""Model families: hyperparameters with bounds, the preprocessing + estimator pipeline, fit and score."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from steps.lib.errors import PipelineError
from steps.lib.features import (
    CLASSIFICATION,
    ONE_HOT,
    ONE_HOT_MAX_CATEGORIES,
    RARE_LEVEL_ROWS,
    REGRESSION,
    TARGET_ENCODING,
    TASKS,
    FeatureSpec,
)
from steps.lib.metrics import PROBABILITY_METRICS, compute_metrics
from steps.lib.process import usable_cores
from steps.lib.splits import Splits, features_and_target


@dataclass(frozen=True)
class HyperParam:
    """One hyperparameter: its type, default, and the range it must lie in."""

    name: str
    kind: type
    default: Any
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # inclusive upper bound
    allow_none: bool = False
    choices: tuple[Any, ...] = ()

    def parse(self, raw: Any, family: str) -> Any:
        """Coerce a value given on the command line or read from JSON; reject it if out of range."""
        where = f"{family} hyperparameter '{self.name}'"
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in {"none", "null", ""}):
            if self.allow_none:
                return None
            raise PipelineError(f"{where} cannot be empty")
        if self.choices:
            if raw not in self.choices:
                raise PipelineError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {raw!r}")
            return raw
        try:
            number = float(raw)
            if self.kind is int:
                if number != int(number):
                    raise ValueError
                value: Any = int(number)
            else:
                value = number
        except (TypeError, ValueError):
            raise PipelineError(
                f"{where} must be {'an integer' if self.kind is int else 'a number'}; got {raw!r}"
            ) from None
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            span = f"[{self.low if self.low is not None else '-inf'}, {self.high if self.high is not None else 'inf'}]"
            raise PipelineError(f"{where} must lie in {span}; got {raw!r}")
        return value


@dataclass(frozen=True)
class ModelFamily:
    """A model family: the tasks it serves, its hyperparameters and how to build its estimator."""

    name: str
    tasks: tuple[str, ...]
    hyperparams: tuple[HyperParam, ...]
    build: Callable[[str, dict[str, Any], int], Any]

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """All hyperparameters, typed: the defaults overridden by `given`."""
        known = {hp.name: hp for hp in self.hyperparams}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise PipelineError(
                f"unknown hyperparameter(s) {', '.join(unknown)} for model '{self.name}'; it takes {', '.join(known)}"
            )
        return {name: hp.parse(given[name], self.name) if name in given else hp.default for name, hp in known.items()}


def _build_logistic_regression(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(random_state=seed, **params)


def _build_ridge(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(**params)


# Ceilings, so that no single fit runs away on a big table: a tree's depth (max_depth None: at most this),
# and the bootstrap rows each tree of a forest is grown on.
MAX_TREE_DEPTH = 32
MAX_ROWS_PER_TREE = 10_000


def _build_random_forest(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    estimator = RandomForestClassifier if task == CLASSIFICATION else RandomForestRegressor
    kwargs = {k: v for k, v in params.items() if not (k == "max_features" and v is None)}
    kwargs["max_depth"] = kwargs.get("max_depth") or MAX_TREE_DEPTH
    return estimator(random_state=seed, n_jobs=1, **kwargs)


def _build_hist_gradient_boosting(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    estimator = HistGradientBoostingClassifier if task == CLASSIFICATION else HistGradientBoostingRegressor
    return estimator(random_state=seed, **params)


MODEL_FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily(
            "logistic_regression",
            (CLASSIFICATION,),
            (
                HyperParam("C", float, 1.0, low=1e-12),
                HyperParam("max_iter", int, 1000, low=1, high=10_000),
                HyperParam("class_weight", str, None, allow_none=True, choices=("balanced",)),
            ),
            _build_logistic_regression,
        ),
        ModelFamily("ridge", (REGRESSION,), (HyperParam("alpha", float, 1.0, low=0.0),), _build_ridge),
        ModelFamily(
            "random_forest",
            TASKS,
            (
                HyperParam("n_estimators", int, 200, low=1, high=1000),
                HyperParam("max_depth", int, None, low=1, high=MAX_TREE_DEPTH, allow_none=True),
                HyperParam("min_samples_leaf", int, 1, low=1),
                HyperParam("max_features", float, None, low=1e-6, high=1.0, allow_none=True),
            ),
            _build_random_forest,
        ),
        ModelFamily(
            "hist_gradient_boosting",
            TASKS,
            (
                HyperParam("learning_rate", float, 0.1, low=1e-6),
                HyperParam("max_iter", int, 100, low=1, high=1000),
                HyperParam("max_leaf_nodes", int, 31, low=2, high=1024),
                HyperParam("min_samples_leaf", int, 20, low=1),
                HyperParam("l2_regularization", float, 0.0, low=0.0),
            ),
            _build_hist_gradient_boosting,
        ),
    )
}
DEFAULT_FAMILY = {CLASSIFICATION: "logistic_regression", REGRESSION: "ridge"}


def get_family(name: str, task: str) -> ModelFamily:
    """The named family, checked against the task."""
    fits = [f.name for f in MODEL_FAMILIES.values() if task in f.tasks]
    if name not in MODEL_FAMILIES:
        raise PipelineError(f"unknown model '{name}'; for {task} use one of {', '.join(fits)}")
    family = MODEL_FAMILIES[name]
    if task not in family.tasks:
        raise PipelineError(f"model '{name}' does not fit a {task} task; use one of {', '.join(fits)}")
    return family


def build_model(spec: FeatureSpec, family: ModelFamily, hyperparams: dict[str, Any], seed: int) -> Any:
    """A scikit-learn Pipeline: the bounded encoding of the raw feature columns, then the estimator.

    The preprocessing sits inside the pipeline so it is fitted on training rows only and travels with
    the model; columns featurize dropped are ignored, so the model takes raw rows as `load` wrote them.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    estimator = family.build(spec.task, hyperparams, seed)
    native = family.name == "hist_gradient_boosting"
    transformers = encoders(spec, seed, native_categories=native)
    if native:  # the ordinal-encoded columns come first in the output: HistGradientBoosting's own categories
        n_native = len(spec.columns_encoded(ONE_HOT))
        estimator.set_params(categorical_features=list(range(n_native)) if n_native else None)
    preprocess = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0 if native else 0.3)
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def encoders(spec: FeatureSpec, seed: int, native_categories: bool) -> list[tuple[str, Any, list[str]]]:
    """The ColumnTransformer's parts, each bounded in width whatever the number of rows and levels."""
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder

    from steps.lib.text_values import FormattedDateParts, TextNumbers
    from steps.lib.transforms import CategoryCodes

    bounded = {"min_frequency": RARE_LEVEL_ROWS, "max_categories": ONE_HOT_MAX_CATEGORIES}
    parts: list[tuple[str, Any, list[str]]] = []
    if one_hot := spec.columns_encoded(ONE_HOT):
        if native_categories:
            encoder: Any = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, **bounded)
        else:
            encoder = OneHotEncoder(handle_unknown="infrequent_if_exist", sparse_output=True, **bounded)
        parts.append(("categorical", encoder, one_hot))
    in_text = spec.numbers_in_text()
    if plain := [c for c in spec.numeric if c not in in_text]:
        # np.median over each column's present values: the same medians as strategy="median", which sorts a masked
        # copy of the whole block (np.ma.median: 2.2 s against 0.3 s for 600,000 rows x 21 columns, every fit).
        numeric = Pipeline([("impute", SimpleImputer(strategy=np.median)), ("scale", StandardScaler())])
        parts.append(("numeric", numeric, plain))
    if many_levels := spec.columns_encoded(TARGET_ENCODING):
        folds = StratifiedKFold if spec.task == CLASSIFICATION else KFold
        target = TargetEncoder(target_type="auto", cv=folds(n_splits=5, shuffle=True, random_state=seed))
        steps = [("codes", CategoryCodes()), ("target", target), ("scale", StandardScaler())]
        parts.append(("many_levels", Pipeline(steps), many_levels))
    if in_text:
        # with an indicator: a value that is not a number (`3+`, `n/a`) is a missing one the model can tell apart
        impute = SimpleImputer(strategy=np.median, add_indicator=True)
        read = [("read", TextNumbers()), ("impute", impute), ("scale", StandardScaler())]
        parts.append(("numbers_in_text", Pipeline(read), in_text))
    if spec.datetime:
        dates = Pipeline(
            [
                ("parts", FormattedDateParts(spec.time_formats())),
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        parts.append(("dates", dates, list(spec.datetime)))
    return parts


def predict_with_proba(model: Any, frame: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions, and class probabilities for a classifier."""
    predictions = model.predict(frame)
    proba = model.predict_proba(frame) if task == CLASSIFICATION and hasattr(model, "predict_proba") else None
    return predictions, proba


# Which rows train fits the chosen configuration on: the training split, or training + validation.
REFITS = ("train", "train+validation")
DEFAULT_REFIT = "train+validation"


def fit_rows(splits: Splits, refit: str) -> pd.DataFrame:
    if refit not in REFITS:
        raise PipelineError(f"unknown refit '{refit}'; use one of {', '.join(REFITS)}")
    if refit == "train":
        return splits.train
    return pd.concat([splits.train, splits.validation], ignore_index=True)


def resolve_threads(threads: int) -> int:
    """The thread count of a single fit: as given, or (0) this machine's cores (those this process may use)."""
    if threads < 0:
        raise PipelineError(f"threads must be 0 (this machine's cores) or more; got {threads}")
    if threads:
        return threads
    return usable_cores()


@dataclass(frozen=True)
class FitOptions:
    """How the chosen configuration is fitted once (train, and evaluate's baselines): on which rows, how many
    threads (0: this machine's cores, resolved before it is passed on, so the number is recorded)."""

    refit: str = DEFAULT_REFIT
    threads: int = 0

    def check(self) -> FitOptions:
        if self.refit not in REFITS:
            raise PipelineError(f"unknown refit '{self.refit}'; use one of {', '.join(REFITS)}")
        return FitOptions(self.refit, resolve_threads(self.threads))


def fit_model(
    splits: Splits,
    spec: FeatureSpec,
    family: ModelFamily,
    hyperparams: dict[str, Any],
    seed: int,
    threads: int = 1,
    refit: str = "train",
) -> Any:
    """Fit the preprocessing + estimator pipeline on the training rows (`refit`: and the validation rows).

    `threads`: BLAS/OpenMP threads and the forest's jobs. Trials use one each (side by side, the same result
    every run); a single fit (train, evaluate's baselines) records the count it used, as reproduce replays it.
    """
    features, labels = features_and_target(fit_rows(splits, refit), spec)
    # Built first: threadpoolctl limits only the BLAS/OpenMP libraries already loaded, and building imports them.
    model = build_model(spec, family, hyperparams, seed)
    estimator = model[-1]
    if family.name == "random_forest":  # the forest's trees in parallel (logistic regression's n_jobs is deprecated)
        estimator.set_params(n_jobs=threads)
    if "max_samples" in estimator.get_params() and len(features) > MAX_ROWS_PER_TREE:
        estimator.set_params(max_samples=MAX_ROWS_PER_TREE)
    with threadpool_limits(limits=threads):
        return model.fit(features, labels)


def score_model(model: Any, frame: Any, spec: FeatureSpec, threads: int | None = None) -> dict[str, float]:
    """All task metrics of a fitted model on one split. `threads`: BLAS/OpenMP threads of the prediction (None:
    the libraries' own; a trial passes 1, as its fit used: beside another trial, a second thread oversubscribes)."""
    features, labels = features_and_target(frame, spec)
    with threadpool_limits(limits=threads):
        return metrics_on(model, features, labels, spec.task)


def metrics_on(model: Any, features: Any, labels: Any, task: str, only: str | None = None) -> dict[str, float]:
    """All task metrics of a fitted model on these rows (the raw input columns and their labels); `only`: just
    that metric, from one pass through the model (predicted classes or probabilities, whichever it needs)."""
    if only is None:
        predictions, proba = predict_with_proba(model, features, task)
    elif task == CLASSIFICATION and only in PROBABILITY_METRICS and hasattr(model, "predict_proba"):
        predictions, proba = None, model.predict_proba(features)
    else:
        predictions, proba = model.predict(features), None
    classes = list(model.classes_) if proba is not None else None
    return compute_metrics(task, labels, predictions, proba, classes, only=only)


def hyperparam_params(family: ModelFamily, hyperparams: dict[str, Any]) -> dict[str, str]:
    """How a family and its hyperparameters are logged, on train runs and tune trials alike."""
    return {"model_family": family.name, **{f"{family.name}.{k}": str(v) for k, v in hyperparams.items()}}


def model_pip_requirements() -> list[str]:
    """Exact pins of what a logged model needs, read from this environment.

    Given explicitly, MLflow skips its requirement inference, which loads the model in a subprocess
    and cost ~6 s per logged model here.
    """
    needs = ("mlflow", "scikit-learn", "pandas", "numpy", "scipy", "skops", "pyarrow")  # pyarrow: text_values.py
    return [f"{name}=={version(name)}" for name in needs]


# The project's modules a logged model may need at prediction time, shipped inside it (MLflow's code_paths).
# transforms.py is as models logged before date formats carry it (tests/unit/test_model_loading.py).
SHIPPED_CODE = ("steps/__init__.py", "steps/lib/__init__.py", "steps/lib/transforms.py", "steps/lib/text_values.py")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def shipped_code_paths(spec: FeatureSpec, folder: Path) -> list[str] | None:
    """The `code_paths` for a model of this spec: a `steps` tree holding only SHIPPED_CODE, byte for byte.

    None when the model needs none of the project's code (no date/time column, no column of many levels, no
    numbers written as text).
    """
    if not spec.datetime and not spec.columns_encoded(TARGET_ENCODING) and not spec.numbers_in_text():
        return None
    for relative in SHIPPED_CODE:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_ROOT / relative, folder / relative)
    return [str(folder / "steps")]


# What our pipelines hold beyond skops' default allow-list: numpy and scikit-learn types, and our DateParts,
# FormattedDateParts, TextNumbers and CategoryCodes (their modules ship with the model, see SHIPPED_CODE).
SKOPS_TRUSTED_TYPES = (
    "numpy.dtype",
    "numpy.median",  # the numeric imputer's statistic
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # HistGradientBoosting with native categories checks its numeric columns through partial(check_array, ...):
    # skops audits what a partial wraps on its own, so only this function can be wrapped.
    "functools.partial",
    "sklearn.utils.validation.check_array",
    "sklearn.model_selection._split.KFold",  # the target encoder's cross-fitting folds
    "sklearn.model_selection._split.StratifiedKFold",
    "steps.lib.transforms.DateParts",  # models logged before date formats
    "steps.lib.text_values.FormattedDateParts",
    "steps.lib.text_values.TextNumbers",
    "steps.lib.transforms.CategoryCodes",
)

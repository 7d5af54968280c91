"""tune's search space: each family's ranges for hyperopt, the discrete grid of `algo=grid`.

The hyperopt labels (`model`, `grid_point`, `<family>.<param>`) are what a trials.json records: a
search can be resumed only while they stay exactly as they are.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hyperopt import Trials, anneal, hp, rand, tpe
from hyperopt.base import Domain
from hyperopt.pyll import scope

from steps.lib.errors import PipelineError
from steps.lib.features import FeatureSpec
from steps.lib.models import MODEL_FAMILIES
from steps.lib.search_options import SearchConfig


def family_space(name: str) -> dict[str, Any]:
    """Each family's search ranges: log-uniform for strengths and rates, integers for sizes."""
    log = math.log
    spaces: dict[str, dict[str, Any]] = {
        "logistic_regression": {"C": hp.loguniform("logistic_regression.C", log(1e-3), log(1e3))},
        "ridge": {"alpha": hp.loguniform("ridge.alpha", log(1e-4), log(1e3))},
        "random_forest": {
            "n_estimators": scope.int(hp.quniform("random_forest.n_estimators", 50, 300, 25)),
            "max_depth": hp.choice(
                "random_forest.max_depth",
                [None, scope.int(hp.quniform("random_forest.max_depth_limit", 2, 20, 1))],
            ),
            "min_samples_leaf": scope.int(hp.quniform("random_forest.min_samples_leaf", 1, 10, 1)),
            "max_features": hp.uniform("random_forest.max_features", 0.2, 1.0),
        },
        "hist_gradient_boosting": {
            "learning_rate": hp.loguniform("hist_gradient_boosting.learning_rate", log(0.01), log(0.5)),
            "max_iter": scope.int(hp.quniform("hist_gradient_boosting.max_iter", 50, 300, 25)),
            "max_leaf_nodes": scope.int(hp.quniform("hist_gradient_boosting.max_leaf_nodes", 4, 64, 1)),
            "min_samples_leaf": scope.int(hp.quniform("hist_gradient_boosting.min_samples_leaf", 2, 40, 1)),
            "l2_regularization": hp.loguniform("hist_gradient_boosting.l2_regularization", log(1e-6), log(10.0)),
        },
    }
    return spaces[name]


# The discrete grid of `algo=grid`, one family at a time (the classic one-run-per-combination sweep).
FAMILY_GRIDS: dict[str, dict[str, list[Any]]] = {
    "logistic_regression": {"C": [0.01, 0.1, 1.0, 10.0, 100.0]},
    "ridge": {"alpha": [0.01, 0.1, 1.0, 10.0, 100.0]},
    "random_forest": {"n_estimators": [100, 300], "max_depth": [None, 5, 10], "min_samples_leaf": [1, 5]},
    "hist_gradient_boosting": {
        "learning_rate": [0.03, 0.1, 0.3],
        "max_leaf_nodes": [15, 31],
        "min_samples_leaf": [5, 20],
    },
}


def task_families(task: str, models: tuple[str, ...] | None = None) -> list[str]:
    """The families to search: those asked for, or (None) all that fit the task."""
    fitting = [name for name, family in MODEL_FAMILIES.items() if task in family.tasks]
    if models is None:
        return fitting
    chosen = list(models)
    for name in chosen:
        if name not in MODEL_FAMILIES:
            raise PipelineError(f"unknown model family '{name}' in models; use any of {', '.join(fitting)}")
        if name not in fitting:
            raise PipelineError(f"model family '{name}' does not fit a {task} task; use any of {', '.join(fitting)}")
    return list(dict.fromkeys(chosen))


def build_search_space(task: str, families: list[str] | None = None) -> Any:
    """One conditional space: first the family, then that family's hyperparameters."""
    names = families or task_families(task)
    return hp.choice("model", [{"model": name, **family_space(name)} for name in names])


def grid_points(families: list[str]) -> list[dict[str, Any]]:
    """Every combination of the families' grids, family by family."""
    points = []
    for name in families:
        grid = FAMILY_GRIDS[name]
        for values in itertools.product(*grid.values()):
            points.append({"model": name, **dict(zip(grid, values, strict=True))})
    return points


def grid_suggest(new_ids: list[int], domain: Domain, trials: Trials, seed: int) -> list[dict[str, Any]]:
    """A hyperopt algorithm that walks the grid in trial-id order (a resumed search continues the ids)."""
    docs = []
    for new_id in new_ids:
        misc = {
            "tid": new_id,
            "cmd": domain.cmd,
            "workdir": domain.workdir,
            "idxs": {"grid_point": [new_id]},
            "vals": {"grid_point": [new_id]},
        }
        docs.extend(trials.new_trial_docs([new_id], [None], [domain.new_result()], [misc]))
    return docs


def none_in_space(label: str, task: str, n_features: int) -> float | None:
    """A family default of None as the space spells it: the forest's max_features None is scikit-learn's own
    default, sqrt(n) of n features for a classifier (all for a regressor), as a share."""
    if label == "random_forest.max_features":
        return 1.0 if task != "classification" else math.sqrt(max(n_features, 1)) / max(n_features, 1)
    return None


def default_vals(
    family: str, index: int, domain: Domain, task: str = "classification", n_features: int = 1
) -> dict[str, list[Any]]:
    """hyperopt's `vals` for a family's default configuration, clipped into the search space.

    `index`: the family's place in the `model` choice. Each search tries these first (as hyperopt's
    points_to_evaluate would), so a tuned model never loses to an untuned one the search did not try.
    """
    vals: dict[str, list[Any]] = {label: [] for label in domain.params}
    vals["model"] = [index]
    for hyperparam in MODEL_FAMILIES[family].hyperparams:
        label = f"{family}.{hyperparam.name}"
        if label not in domain.params:
            continue
        node = domain.params[label]
        if node.name == "randint":  # a choice of [None, a bounded number] (max_depth)
            if hyperparam.default is None:
                vals[label] = [0]
                continue
            vals[label], label = [1], f"{label}_limit"
            node = domain.params[label]
        value = none_in_space(label, task, n_features) if hyperparam.default is None else hyperparam.default
        vals[label] = [clip_into(node, float(value))]
    return vals


def clip_into(node: Any, value: float) -> float:
    """`value` clipped into a hyperopt distribution's range (and onto its grid, for a quantised one)."""
    low, high, *step = (arg.obj for arg in node.pos_args)
    if node.name == "loguniform":
        low, high = math.exp(low), math.exp(high)
    value = min(max(value, low), high)
    if step:
        value = float(min(max(round(value / step[0]) * step[0], low), high))
    return value


def default_trial(
    new_id: int, families: list[str], domain: Domain, trials: Trials, spec: FeatureSpec | None = None
) -> dict[str, Any] | None:
    """The trial document of the `new_id`-th family default (None past the last family)."""
    if new_id >= len(families):
        return None
    task, n_features = (spec.task, len(spec.input_columns) - len(spec.dropped)) if spec else ("classification", 1)
    vals = default_vals(families[new_id], new_id, domain, task, n_features)
    idxs = {label: [new_id] if value else [] for label, value in vals.items()}
    misc = {"tid": new_id, "cmd": domain.cmd, "workdir": domain.workdir, "idxs": idxs, "vals": vals}
    [doc] = trials.new_trial_docs([new_id], [None], [domain.new_result()], [misc])
    return doc


def defaults_first(
    suggest: Callable[..., Any], families: list[str], spec: FeatureSpec | None = None
) -> Callable[..., Any]:
    """A hyperopt algorithm whose first trials are each family's defaults, then `suggest`'s own (which sees
    their losses, as with fmin's points_to_evaluate); a resumed search goes on where it stopped."""

    def suggest_with_defaults(new_ids: list[int], domain: Domain, trials: Trials, seed: int) -> list[dict[str, Any]]:
        docs = [default_trial(new_id, families, domain, trials, spec) for new_id in new_ids]
        rest = [new_id for new_id, doc in zip(new_ids, docs, strict=True) if doc is None]
        return [doc for doc in docs if doc is not None] + (suggest(rest, domain, trials, seed) if rest else [])

    return suggest_with_defaults


@dataclass(frozen=True)
class SearchSetup:
    """What both backends derive from the config: the space, the algorithm and how many trials in all."""

    space: Any
    suggest: Callable[..., Any]
    target: int  # trials in all, those of a resumed search included
    done_before: int
    stopped_by: str  # what ends the search if nothing stops it early: "max_evals" or "grid"


def search_setup(spec: FeatureSpec, config: SearchConfig, previous: Trials | None) -> SearchSetup:
    """The space, the algorithm and the number of trials in all; a resumed search continues `previous`."""
    max_evals = config.options.max_evals
    if max_evals < 1:
        raise PipelineError(f"max_evals must be at least 1; got {max_evals}")
    done_before = len(previous.trials) if previous is not None else 0
    if config.options.algo == "grid":
        points = grid_points(list(config.families))
        target = min(len(points), done_before + max_evals)
        ends_by = "grid" if target < done_before + max_evals else "max_evals"
        return SearchSetup(hp.choice("grid_point", points), grid_suggest, target, done_before, ends_by)
    suggest = {"tpe": tpe.suggest, "random": rand.suggest, "anneal": anneal.suggest}[config.options.algo]
    space = build_search_space(spec.task, list(config.families))
    seeded = defaults_first(suggest, list(config.families), spec)
    return SearchSetup(space, seeded, done_before + max_evals, done_before, "max_evals")

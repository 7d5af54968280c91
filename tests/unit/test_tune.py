"""Step tune: the search space and the in-process search."""

from __future__ import annotations

import pytest
from hyperopt.pyll.stochastic import sample

from steps.common import CLASSIFICATION, MODEL_FAMILIES, REGRESSION, FeatureSpec, PipelineError, Splits
from steps.featurize import build_feature_spec, split_frame
from steps.tune import best_result, build_search_space, leaderboard, run_search


@pytest.mark.parametrize("task", [CLASSIFICATION, REGRESSION])
def test_space_spans_the_task_families_with_valid_values(task):
    space = build_search_space(task)
    seen = set()
    for seed in range(60):
        point = sample(space, rng=__import__("numpy").random.default_rng(seed))
        family = MODEL_FAMILIES[point.pop("model")]
        assert task in family.tasks
        family.resolve(point)  # every sampled value lies inside the family's bounds
        seen.add(family.name)
    assert seen == {name for name, f in MODEL_FAMILIES.items() if task in f.tasks}


@pytest.fixture
def iris_splits() -> tuple[Splits, FeatureSpec]:
    from steps.common import load_bundled_frame

    frame, target = load_bundled_frame("iris")
    spec = build_feature_spec(frame, target)
    return split_frame(frame, spec, 42, 0.2, 0.2), spec


def test_search_is_deterministic_and_logs_every_trial(iris_splits):
    splits, spec = iris_splits
    logged = []

    def log_trial(number, params, metrics, status):
        logged.append((number, params["model_family"], status))
        return f"run-{number}"

    first = run_search(splits, spec, "accuracy", 6, seed=7, log_trial=log_trial)
    second = run_search(splits, spec, "accuracy", 6, seed=7)
    assert [t["misc"]["vals"] for t in first.trials] == [t["misc"]["vals"] for t in second.trials]
    assert [n for n, _, _ in logged] == list(range(6))
    best = best_result(first)
    assert best["value"] >= 0.9 and best["run_id"].startswith("run-")
    board = leaderboard(first, "accuracy")
    assert list(board["loss"]) == sorted(board["loss"]) and len(board) == 6


def test_max_evals_must_be_positive(iris_splits):
    with pytest.raises(PipelineError, match="max_evals must be at least 1"):
        run_search(*iris_splits, "accuracy", 0, seed=0)

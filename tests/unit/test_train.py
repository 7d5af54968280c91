"""Step train: hyperparameters from the command line and from tune's file."""

from __future__ import annotations

import pytest

from steps.lib.errors import PipelineError
from steps.lib.features import CLASSIFICATION, REGRESSION
from steps.train import choose_model, parse_extra_params


def test_extra_params_arrive_as_options():
    assert parse_extra_params(["--C", "0.5", "--max_iter=300", "--n-estimators", "10"]) == {
        "C": "0.5",
        "max_iter": "300",
        "n_estimators": "10",
    }
    with pytest.raises(PipelineError, match="has no value"):
        parse_extra_params(["--C"])
    with pytest.raises(PipelineError, match="unexpected argument"):
        parse_extra_params(["0.5"])


def test_default_family_per_task():
    assert choose_model(CLASSIFICATION, None, None, {})[0].name == "logistic_regression"
    assert choose_model(REGRESSION, None, None, {})[0].name == "ridge"


def test_params_file_then_overrides():
    best = {"model": "random_forest", "params": {"n_estimators": 120, "max_depth": None}}
    family, params = choose_model(CLASSIFICATION, None, best, {"n_estimators": "30"})
    assert family.name == "random_forest"
    assert params["n_estimators"] == 30 and params["max_depth"] is None and params["min_samples_leaf"] == 1


def test_model_choice_errors():
    with pytest.raises(PipelineError, match="conflicts with the params file"):
        choose_model(CLASSIFICATION, "ridge", {"model": "random_forest", "params": {}}, {})
    with pytest.raises(PipelineError, match="unknown model 'svm'"):
        choose_model(CLASSIFICATION, "svm", None, {})
    with pytest.raises(PipelineError, match="unknown hyperparameter"):
        choose_model(CLASSIFICATION, "logistic_regression", None, {"alpha": "1"})


def test_every_fit_has_ceilings_a_search_or_a_command_line_cannot_lift():
    """Trees and depth are bounded where given (a one-line error past them); `max_depth=none` is the depth
    ceiling, and a forest grows each tree on at most MAX_ROWS_PER_TREE bootstrap rows of a big table."""
    import numpy as np
    import pandas as pd

    from steps.lib.features import build_feature_spec
    from steps.lib.models import MAX_ROWS_PER_TREE, MAX_TREE_DEPTH, MODEL_FAMILIES, fit_model
    from steps.lib.splits import split_frame

    forest = MODEL_FAMILIES["random_forest"]
    for given, message in (
        ({"n_estimators": "5000"}, r"'n_estimators' must lie in \[1, 1000\]; got '5000'"),
        ({"max_depth": "100"}, r"'max_depth' must lie in \[1, 32\]; got '100'"),
    ):
        with pytest.raises(PipelineError, match=message):
            forest.resolve(given)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(20_000, 3)), columns=["a", "b", "c"])
    frame["y"] = np.where(frame["a"] + rng.normal(0, 0.5, len(frame)) > 0, "yes", "no")
    spec = build_feature_spec(frame, "y")
    splits = split_frame(frame, spec, 42, 0.2, 0.2)
    assert len(splits.train) > MAX_ROWS_PER_TREE
    params = forest.resolve({"n_estimators": "2", "max_depth": "none"})
    fitted = fit_model(splits, spec, forest, params, seed=0)[-1]
    assert fitted.max_depth == MAX_TREE_DEPTH and fitted.max_samples == MAX_ROWS_PER_TREE
    assert max(tree.get_depth() for tree in fitted.estimators_) <= MAX_TREE_DEPTH


def test_reproduce_replays_the_number_of_threads_a_main_resolved_and_nothing_else():
    from steps.reproduce import replay_threads

    for given, resolved, replayed in (
        ("0", "2", "2"),  # threads=0 meant that machine's cores: the number it used
        ("3", "2", "3"),  # a number typed stays
        ("0", "5000", "0"),  # the tag is anyone's to write: only 1..1024 is taken
        ("0", "two", "0"),
        ("0", "", "0"),
    ):
        params = {"threads": given}
        replay_threads(params, resolved)
        assert params["threads"] == replayed, (given, resolved)

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

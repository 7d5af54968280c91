"""Step tune: the search space, the search loop and its controls, resume, figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hyperopt.pyll.stochastic import sample

from steps.common import CLASSIFICATION, MODEL_FAMILIES, REGRESSION, PipelineError, load_bundled_frame
from steps.featurize import build_feature_spec, split_frame
from steps.tune import (
    SearchConfig,
    best_result,
    build_search_space,
    grid_points,
    leaderboard,
    parse_timeout,
    plot_search,
    run_search,
    task_families,
    trials_from_records,
    trials_to_records,
    validate_search_options,
)


@pytest.mark.parametrize("task", [CLASSIFICATION, REGRESSION])
def test_space_spans_the_task_families_with_valid_values(task):
    space = build_search_space(task)
    seen = set()
    for seed in range(60):
        point = sample(space, rng=np.random.default_rng(seed))
        family = MODEL_FAMILIES[point.pop("model")]
        assert task in family.tasks
        family.resolve(point)  # every sampled value lies inside the family's bounds
        seen.add(family.name)
    assert seen == set(task_families(task))


def test_models_restrict_the_families():
    assert task_families(CLASSIFICATION, "random_forest, logistic_regression") == [
        "random_forest",
        "logistic_regression",
    ]
    with pytest.raises(PipelineError, match="unknown model family 'svm'"):
        task_families(CLASSIFICATION, "svm")
    with pytest.raises(PipelineError, match="does not fit a regression task"):
        task_families(REGRESSION, "logistic_regression")


def test_every_grid_point_is_valid():
    points = grid_points(task_families(CLASSIFICATION))
    assert len(points) == 5 + 12 + 12
    for point in points:
        MODEL_FAMILIES[point.pop("model")].resolve(point)


@pytest.fixture(scope="module")
def iris():
    frame, target = load_bundled_frame("iris")
    spec = build_feature_spec(frame, target)
    return split_frame(frame, spec, 42, 0.2, 0.2), spec


def config(**overrides):
    base = {"metric": "accuracy", "max_evals": 6, "seed": 7, "families": tuple(task_families(CLASSIFICATION))}
    return SearchConfig(**(base | overrides))


def test_search_is_deterministic_and_logs_every_trial(iris):
    logged = []

    def log_trial(number, params, metrics, status):
        logged.append((number, params["model_family"], status))
        return f"run-{number}"

    first = run_search(*iris, config(), log_trial=log_trial).trials
    second = run_search(*iris, config()).trials
    assert [t["misc"]["vals"] for t in first.trials] == [t["misc"]["vals"] for t in second.trials]
    assert [n for n, _, _ in logged] == list(range(1, 7))
    best = best_result(first)
    assert best["value"] >= 0.9 and best["run_id"].startswith("run-")
    board = leaderboard(first, "accuracy")
    assert list(board["loss"]) == sorted(board["loss"]) and len(board) == 6


@pytest.mark.parametrize("algo", ["random", "anneal"])
def test_other_algorithms(iris, algo):
    outcome = run_search(*iris, config(algo=algo, max_evals=4))
    assert len(outcome.trials.trials) == 4 and outcome.stopped_by == "max_evals"


def test_grid_is_capped_by_max_evals_and_walks_every_point_otherwise(iris):
    capped = run_search(*iris, config(algo="grid", families=("logistic_regression",), max_evals=3))
    assert [r["params"]["C"] for r in capped.trials.results] == [0.01, 0.1, 1.0]
    full = run_search(*iris, config(algo="grid", families=("logistic_regression",), max_evals=50))
    assert len(full.trials.trials) == 5 and full.stopped_by == "grid"


def test_early_stop_and_timeout(iris):
    stopped = run_search(*iris, config(algo="random", max_evals=40, early_stop_rounds=3))
    assert stopped.stopped_by == "early_stop" and len(stopped.trials.trials) < 40
    timed = run_search(*iris, config(max_evals=500, timeout=1.0))
    assert timed.stopped_by == "timeout" and len(timed.trials.trials) < 500


def test_cross_validation_scores_on_the_training_split(iris):
    outcome = run_search(*iris, config(max_evals=2, cv_folds=3, families=("logistic_regression",)))
    assert all(r["status"] == "ok" for r in outcome.trials.results)


def test_resume_continues_the_same_sequence(iris):
    whole = run_search(*iris, config(max_evals=24)).trials  # past TPE's 20 random start-up trials
    first = run_search(*iris, config(max_evals=21)).trials
    records = json.loads(json.dumps(trials_to_records(first)))
    resumed = run_search(*iris, config(max_evals=3), previous=trials_from_records(records))
    assert resumed.new_trials == 3 and len(resumed.trials.trials) == 24
    assert [t["misc"]["vals"] for t in resumed.trials.trials] == [t["misc"]["vals"] for t in whole.trials]


def test_parallel_workers_give_complete_results(iris):
    outcome = run_search(*iris, config(max_evals=4, parallelism=2))
    assert len(outcome.trials.trials) == 4
    assert all(r["status"] == "ok" for r in outcome.trials.results)
    assert sorted(r["trial"] for r in outcome.trials.results) == [1, 2, 3, 4]


def test_parallel_random_search_tries_the_sequential_configurations(iris):
    """random does not adapt: whatever order the workers finish in, the same configurations are tried."""
    sequential = run_search(*iris, config(algo="random", max_evals=5))
    parallel = run_search(*iris, config(algo="random", max_evals=5, parallelism=2))
    by_trial = [sorted(o.trials.results, key=lambda r: r["trial"]) for o in (sequential, parallel)]
    assert [r["params"] for r in by_trial[0]] == [r["params"] for r in by_trial[1]]


def test_parallel_grid_walks_each_point_once(iris):
    """Points are given by trial id: running trials, not yet in the history, do not shift the grid."""
    outcome = run_search(*iris, config(algo="grid", families=("logistic_regression",), max_evals=50, parallelism=2))
    assert sorted(r["params"]["C"] for r in outcome.trials.results) == [0.01, 0.1, 1.0, 10.0, 100.0]


def test_worker_processes_start_with_one_thread_per_library():
    import os

    from steps.tune import THREAD_VARIABLES, one_thread_per_library_in_children

    before = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    with one_thread_per_library_in_children():
        assert all(os.environ[name] == "1" for name in THREAD_VARIABLES)
    assert {name: os.environ.get(name) for name in THREAD_VARIABLES} == before


def test_figures_are_drawn(iris, tmp_path):
    trials = run_search(*iris, config(max_evals=5)).trials
    for path in plot_search(trials.results, "accuracy", tmp_path):
        assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bayes", 5, 1, 0, 0), "unknown algo 'bayes'"),
        (("tpe", 0, 1, 0, 0), "max_evals must be at least 1"),
        (("tpe", 5, 0, 0, 0), "parallelism must be at least 1"),
        (("tpe", 5, 1, -1, 0), "early_stop_rounds"),
        (("tpe", 5, 1, 0, 1), "cv_folds"),
        (("tpe", 5, 1, 0, 0, "auto", "all", "ray"), "unknown backend 'ray'; use one of local, spark"),
    ],
)
def test_search_options_are_checked(args, message):
    with pytest.raises(PipelineError, match=message):
        validate_search_options(*args)


def test_timeout_parsing():
    assert parse_timeout("none") is None and parse_timeout("2.5") == 2.5
    for bad in ("0", "-3"):
        with pytest.raises(PipelineError, match="more than 0 seconds"):
            parse_timeout(bad)
    with pytest.raises(PipelineError, match="number of seconds"):
        parse_timeout("soon")


def test_spark_backend_helpers(tmp_path, monkeypatch):
    from steps.spark_backend import absolute_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_tracking_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert absolute_tracking_uri("mlruns") == str(tmp_path / "mlruns")


def test_spark_backend_without_pyspark_says_how_to_install_it(monkeypatch):
    import sys

    from steps.spark_backend import spark_session

    monkeypatch.setitem(sys.modules, "pyspark.sql", None)  # as if pyspark were not installed
    with pytest.raises(PipelineError, match=r"backend=spark needs pyspark.*requirements-spark\.txt"):
        spark_session("auto", 2)


def test_failed_spark_tasks_become_failed_trials():
    """A task that errored in Spark (no result from our objective) is a failed trial with its error."""
    from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR, Trials

    from steps.spark_backend import collect_trials

    space = build_search_space(CLASSIFICATION, ["logistic_regression"])
    source = Trials()
    ok = {"status": "ok", "loss": -0.9, "model": "logistic_regression", "params": {"C": 1.0}, "scores": {}}
    for tid, (state, result) in enumerate([(JOB_STATE_DONE, ok), (JOB_STATE_ERROR, {"status": "new"})]):
        misc = {"tid": tid, "cmd": None, "workdir": None, "idxs": {"model": [tid], "logistic_regression.C": [tid]}}
        misc["vals"] = {"model": [0], "logistic_regression.C": [1.0]}
        if state == JOB_STATE_ERROR:
            misc["error"] = ("<class 'ImportError'>", "Traceback ...\nImportError: no module named steps")
        [doc] = source.new_trial_docs([tid], [None], [result], [misc])
        doc["state"] = state
        source._dynamic_trials.append(doc)
    trials = collect_trials(source, space, "accuracy")
    assert [r["trial"] for r in trials.results] == [1, 2]
    failed = trials.results[1]
    assert failed["status"] == "fail" and failed["model"] == "logistic_regression"
    assert failed["error"] == "ImportError: no module named steps"

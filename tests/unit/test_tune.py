"""Step tune: the search space, the search loop and its controls, resume, figures."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
from hyperopt.pyll.stochastic import sample

import steps.lib.search as search_module
from steps.lib.errors import PipelineError
from steps.lib.features import CLASSIFICATION, REGRESSION, build_feature_spec
from steps.lib.models import MODEL_FAMILIES, build_model
from steps.lib.search import THREAD_VARIABLES, best_result, one_thread_per_library_in_children, run_search, worker_pool
from steps.lib.search_options import SearchConfig, TuneOptions, parse_models, parse_timeout
from steps.lib.search_results import leaderboard, plot_search, trials_from_records, trials_to_records
from steps.lib.search_space import build_search_space, grid_points, task_families
from steps.lib.splits import features_and_target, split_frame
from steps.lib.tables import load_bundled_frame
from tests.conftest import PROJECT_DIR


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
    chosen = parse_models("random_forest, logistic_regression,random_forest")
    assert task_families(CLASSIFICATION, chosen) == ["random_forest", "logistic_regression"]
    assert task_families(REGRESSION, None) == ["ridge", "random_forest", "hist_gradient_boosting"]
    with pytest.raises(PipelineError, match="unknown model family 'svm'"):
        task_families(CLASSIFICATION, ("svm",))
    with pytest.raises(PipelineError, match="does not fit a regression task"):
        task_families(REGRESSION, ("logistic_regression",))


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


def config(families=None, **options):
    """A search on iris's accuracy, seed 7, every classification family unless `families` says otherwise."""
    families = families or tuple(task_families(CLASSIFICATION))
    return SearchConfig(metric="accuracy", seed=7, families=families, options=TuneOptions(**{"max_evals": 6} | options))


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
    """With cv_folds, a trial's scores are the mean over stratified folds of the training split, as sklearn's."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    splits, spec = iris
    family = ("logistic_regression",)
    folded = run_search(splits, spec, config(family, algo="grid", max_evals=2, cv_folds=3)).trials.results
    plain = run_search(splits, spec, config(family, algo="grid", max_evals=2)).trials.results
    features, labels = features_and_target(splits.train, spec)
    for result, on_validation in zip(folded, plain, strict=True):
        model = build_model(spec, MODEL_FAMILIES["logistic_regression"], result["params"], 7)
        folds = StratifiedKFold(3, shuffle=True, random_state=7)
        expected = cross_val_score(model, features, labels, cv=folds, scoring="accuracy").mean()
        assert result["scores"]["accuracy"] == pytest.approx(expected)
        assert result["scores"]["log_loss"] != on_validation["scores"]["log_loss"]


@pytest.mark.parametrize(("algo", "families"), [("tpe", None), ("grid", ("logistic_regression", "random_forest"))])
def test_a_search_recorded_before_the_layout_change_resumes(iris, algo, families):
    """trials.json files written by the code before steps/lib (hyperopt labels unchanged) continue: their trials
    stay as recorded, new ones follow. A grid search is still the same walk; a tpe search now starts from the
    family defaults (issue 12), so there a search of the current code resumed from its own records is compared."""
    records = json.loads((PROJECT_DIR / "tests" / "data" / f"trials-{algo}-before-layout.json").read_text())
    done = len(records)  # tpe: 21, past its 20 random start-up trials
    resumed = run_search(*iris, config(families, algo=algo, max_evals=3), previous=trials_from_records(records))
    assert resumed.new_trials == 3 and len(resumed.trials.trials) == done + 3
    assert json.loads(json.dumps(trials_to_records(resumed.trials)))[:done] == records
    whole = run_search(*iris, config(families, algo=algo, max_evals=done + 3)).trials
    if algo == "grid":
        assert [t["misc"]["vals"] for t in whole.trials] == [t["misc"]["vals"] for t in resumed.trials.trials]
        return
    own = json.loads(json.dumps(trials_to_records(whole)))[:done]
    again = run_search(*iris, config(families, algo=algo, max_evals=3), previous=trials_from_records(own))
    assert [t["misc"]["vals"] for t in again.trials.trials] == [t["misc"]["vals"] for t in whole.trials]


def test_every_search_starts_from_each_familys_defaults_clipped_into_the_space(iris):
    outcome = run_search(*iris, config(algo="tpe", max_evals=5))
    first = [(r["model"], r["params"]) for r in outcome.trials.results[:3]]
    assert first[0] == ("logistic_regression", {"C": 1.0, "max_iter": 1000, "class_weight": None})
    assert first[1] == (
        "random_forest",
        {"n_estimators": 200, "max_depth": None, "min_samples_leaf": 1, "max_features": 0.5},  # sqrt(4) of 4
    )
    hgb = first[2][1]
    assert first[2][0] == "hist_gradient_boosting" and hgb["l2_regularization"] == pytest.approx(1e-6)  # 0, clipped
    assert {k: hgb[k] for k in ("learning_rate", "max_iter", "max_leaf_nodes", "min_samples_leaf")} == {
        "learning_rate": pytest.approx(0.1),
        "max_iter": 100,
        "max_leaf_nodes": 31,
        "min_samples_leaf": 20,
    }
    resumed = run_search(
        *iris,
        config(algo="tpe", max_evals=4),
        previous=trials_from_records(json.loads(json.dumps(trials_to_records(outcome.trials)))[:1]),
    )
    assert [r["model"] for r in resumed.trials.results[:3]] == [m for m, _ in first]  # the defaults go on


def test_parallel_trials_give_complete_results(iris):
    outcome = run_search(*iris, config(max_evals=4, parallelism=2))
    assert len(outcome.trials.trials) == 4
    assert all(r["status"] == "ok" for r in outcome.trials.results)
    assert sorted(r["trial"] for r in outcome.trials.results) == [1, 2, 3, 4]


def test_this_process_is_one_slot_and_a_worker_process_the_other(iris, monkeypatch):
    """parallelism 2: the first trial runs here at once; while it runs, the next goes to the worker process."""
    released, seen_here = threading.Event(), []

    def evaluated_here(*args):
        seen_here.append(args[2])
        assert released.wait(timeout=120), "the worker process never answered"
        return {"where": "here"}

    monkeypatch.setattr(search_module, "evaluate_sample", evaluated_here)
    first_sample, second_sample = ({"model": "logistic_regression", "C": c} for c in (1.0, 0.5))
    with search_module._evaluator(*iris, config(parallelism=2)) as submit:
        first = submit(first_sample)  # blocked here until the worker process has scored the second
        second = submit(second_sample)
        worker_result = second.result(timeout=120)
        assert not first.done() and worker_result["status"] == "ok" and worker_result["params"]["C"] == 0.5
        released.set()
        assert first.result(timeout=60) == {"where": "here"}
        assert submit(first_sample).result(timeout=60) == {"where": "here"}  # this slot is free again
    assert seen_here == [first_sample, first_sample]


def test_a_free_slot_gets_its_next_trial_before_the_finished_one_is_logged(iris, monkeypatch):
    events, own_evaluator = [], search_module._evaluator

    @contextlib.contextmanager
    def recorded(*args):
        with own_evaluator(*args) as submit:
            yield lambda sample: events.append("submit") or submit(sample)

    def log_trial(number, params, metrics, status):
        events.append(f"log {number}")
        return f"run-{number}"

    monkeypatch.setattr(search_module, "_evaluator", recorded)
    outcome = run_search(*iris, config(max_evals=3), log_trial=log_trial)
    assert events == ["submit", "submit", "log 1", "submit", "log 2", "log 3"]
    assert [result["run_id"] for result in outcome.trials.results] == ["run-1", "run-2", "run-3"]


def test_an_environment_that_compiles_its_imports_at_each_start_is_named(tmp_path, monkeypatch, caplog):
    """PYTHONDONTWRITEBYTECODE and no bytecode (uv pip install's default): each worker compiles scikit-learn."""
    import importlib.util
    import sys

    from steps.lib.process import compiled_at_each_import

    module = tmp_path / "module.py"
    module.write_text("x = 1\n")
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert not compiled_at_each_import(str(module))  # Python caches what it compiles
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert compiled_at_each_import(str(module))
    cached = Path(importlib.util.cache_from_source(str(module)))
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert not compiled_at_each_import(str(module))  # compiled when installed (pip does)

    monkeypatch.setattr(search_module, "compiled_at_each_import", lambda path: path.endswith("__init__.py"))
    search_module.warn_if_workers_compile_their_imports.cache_clear()
    with caplog.at_level("WARNING", logger="steps.tune"):
        search_module.warn_if_workers_compile_their_imports()
        search_module.warn_if_workers_compile_their_imports()  # once per process
    assert [r.getMessage() for r in caplog.records if "compiles scikit-learn" in r.getMessage()] == [
        caplog.records[0].getMessage()
    ]
    assert "uv pip install --compile-bytecode" in caplog.records[0].getMessage()
    search_module.warn_if_workers_compile_their_imports.cache_clear()


def test_a_trial_scores_on_one_thread_as_it_fits(iris, monkeypatch):
    """Beside another trial a second OpenMP thread oversubscribes the cores; the fit had one already."""
    from threadpoolctl import threadpool_info

    import steps.lib.models as models_module

    seen, own_predict = [], models_module.predict_with_proba

    def predict_counting_threads(*args):
        seen.append({library["user_api"]: library["num_threads"] for library in threadpool_info()})
        return own_predict(*args)

    monkeypatch.setattr(models_module, "predict_with_proba", predict_counting_threads)
    settings = search_module.trial_settings(config())
    sample_config = {"model": "hist_gradient_boosting", "max_iter": 20}
    assert search_module.evaluate_sample(*iris, sample_config, settings)["status"] == "ok"
    assert seen and seen[0]["openmp"] == 1
    outside = {library["user_api"]: library["num_threads"] for library in threadpool_info()}
    assert os.cpu_count() == 1 or outside["openmp"] > 1  # the limit ended with the trial


def test_parallel_random_search_tries_the_sequential_configurations(iris):
    """random does not adapt: whatever order the workers finish in, the same configurations are tried."""
    sequential = run_search(*iris, config(algo="random", max_evals=5))
    parallel = run_search(*iris, config(algo="random", max_evals=5, parallelism=2))
    by_trial = [sorted(o.trials.results, key=lambda r: r["trial"]) for o in (sequential, parallel)]
    assert [r["params"] for r in by_trial[0]] == [r["params"] for r in by_trial[1]]
    assert all(r["status"] == "ok" for r in by_trial[1])


def test_parallel_grid_walks_each_point_once(iris):
    """Points are given by trial id: running trials, not yet in the history, do not shift the grid."""
    outcome = run_search(*iris, config(("logistic_regression",), algo="grid", max_evals=50, parallelism=2))
    assert sorted(r["params"]["C"] for r in outcome.trials.results) == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert all(r["status"] == "ok" for r in outcome.trials.results)


def test_a_trial_past_trial_timeout_is_stopped_fails_and_the_next_trial_runs_in_a_new_worker():
    from sklearn.datasets import make_classification

    features, labels = make_classification(20_000, 20, random_state=0)
    frame = pd.DataFrame(features, columns=[f"x{i}" for i in range(20)]).assign(y=labels)
    spec = build_feature_spec(frame, "y")
    splits = split_frame(frame, spec, 42, 0.2, 0.2)
    # 1,000 unbounded trees on one thread: minutes (a boosted model could stop early on its own)
    slow = {"model": "random_forest", "n_estimators": 1000, "min_samples_leaf": 1}
    options = {"trial_timeout": 2.0, "parallelism": 1}
    with search_module._evaluator(splits, spec, config(("random_forest",), **options)) as submit:
        stopped = submit(slow).result(timeout=120)
        fast = submit({"model": "random_forest", "n_estimators": 5, "max_depth": 3}).result(timeout=120)
    assert stopped["status"] == "fail" and stopped["error"] == "stopped by trial_timeout after 2 s"
    assert 2.0 <= stopped["seconds"] < 10 and stopped["params"]["n_estimators"] == 1000
    assert fast["status"] == "ok" and fast["params"]["n_estimators"] == 5


def test_trial_timeout_is_checked():
    with pytest.raises(PipelineError, match="trial_timeout must be more than 0 seconds; got -1"):
        parse_timeout("-1", "trial_timeout")
    with pytest.raises(PipelineError, match="trial_timeout works with backend=local"):
        TuneOptions(trial_timeout=60.0, backend="spark").check()
    params = TuneOptions(trial_timeout=90.0).as_params()
    assert params["trial_timeout"] == "90" and TuneOptions().as_params()["trial_timeout"] == "none"


def test_reproduce_says_a_run_with_trial_timeout_depends_on_the_machine():
    from steps.reproduce import machine_dependence

    assert machine_dependence({"trial_timeout": "none"}) is None and machine_dependence({}) is None
    assert "trial_timeout=90 s: which trials finished depended on that machine" in machine_dependence(
        {"trial_timeout": "90"}
    )


def threads_in_this_process() -> tuple[int, dict[str, str | None], list[dict]]:
    """Run inside a worker: its pid, its thread variables, and each BLAS/OpenMP library's thread count."""
    import sklearn.ensemble  # noqa: F401  (loads scikit-learn's OpenMP runtime, as a HistGradientBoosting fit does)
    from threadpoolctl import threadpool_info

    return os.getpid(), {name: os.environ.get(name) for name in THREAD_VARIABLES}, threadpool_info()


def test_worker_processes_run_one_thread_per_library(iris):
    before = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    with worker_pool(*iris, config(parallelism=2)) as pool:
        answers = [pool.submit(threads_in_this_process).result(timeout=120) for _ in range(4)]
    assert {name: os.environ.get(name) for name in THREAD_VARIABLES} == before  # this process is left as it was
    for pid, variables, libraries in answers:
        assert pid != os.getpid()
        assert variables == dict.fromkeys(THREAD_VARIABLES, "1")
        assert {"openmp", "blas"} <= {library["user_api"] for library in libraries}
        assert [library["num_threads"] for library in libraries] == [1] * len(libraries), libraries
    with one_thread_per_library_in_children():
        assert all(os.environ[name] == "1" for name in THREAD_VARIABLES)
    assert {name: os.environ.get(name) for name in THREAD_VARIABLES} == before


def test_figures_are_drawn(iris, tmp_path):
    trials = run_search(*iris, config(max_evals=5)).trials
    history, versus = plot_search(trials.results, "accuracy", tmp_path)
    circle = ".//{http://www.w3.org/2000/svg}circle"
    dots = [ElementTree.parse(path).getroot().findall(circle) for path in (history, versus)]
    assert len(dots[0]) == 5 + 1  # one per trial, one in the legend
    assert len(dots[1]) >= 5  # each varied hyperparameter against the loss


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"algo": "bayes"}, "unknown algo 'bayes'"),
        ({"max_evals": 0}, "max_evals must be at least 1"),
        ({"parallelism": -1}, r"parallelism must be 0 \(auto\) or more"),
        ({"early_stop_rounds": -1}, "early_stop_rounds"),
        ({"cv_folds": 1}, "cv_folds"),
        ({"backend": "ray"}, "unknown backend 'ray'; use one of local, spark"),
        ({"models": ("random_forest", "svm")}, "unknown model family 'svm'"),
        ({"metric": "auc"}, "unknown metric 'auc'"),
    ],
)
def test_search_options_are_checked(options, message):
    with pytest.raises(PipelineError, match=message):
        TuneOptions(**options).check()


def test_timeout_parsing():
    assert parse_timeout(None) is None and parse_timeout("2.5") == 2.5
    for bad in ("0", "-3"):
        with pytest.raises(PipelineError, match="more than 0 seconds"):
            parse_timeout(bad)
    with pytest.raises(PipelineError, match="number of seconds"):
        parse_timeout("soon")


def test_options_main_passes_on_reach_tune_unchanged():
    """main's TuneOptions (its resolved values, parsed as main parses them) -> MLflow params -> tune's command
    line -> the same TuneOptions."""
    from steps.main import typed_main as main_command
    from steps.tune import main as tune_command

    typed = ["--models", "ridge, random_forest", "--timeout", "30", "--algo", "random", "--cv-folds", "3"]
    options = TuneOptions.from_cli(main_command.make_context("main", typed).params)
    assert options == TuneOptions(algo="random", models=("ridge", "random_forest"), timeout=30.0, cv_folds=3)
    params = options.as_params()
    assert params["models"] == "ridge,random_forest" and params["timeout"] == "30" and params["metric"] == "auto"
    flags = [item for name, value in params.items() for item in (f"--{name.replace('_', '-')}", value)]
    assert TuneOptions.from_cli(tune_command.make_context("tune", flags).params) == options
    assert TuneOptions.from_cli(tune_command.make_context("tune", []).params) == TuneOptions()


def test_spark_backend_helpers(tmp_path, monkeypatch):
    from steps.lib.spark_search import absolute_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_tracking_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert absolute_tracking_uri("mlruns") == str(tmp_path / "mlruns")


def test_spark_backend_without_pyspark_says_how_to_install_it(monkeypatch):
    import sys

    from steps.lib.spark_search import spark_session

    monkeypatch.setitem(sys.modules, "pyspark.sql", None)  # as if pyspark were not installed
    with pytest.raises(PipelineError, match=r"backend=spark needs pyspark.*requirements-spark\.txt"):
        spark_session(None)


def test_failed_spark_tasks_become_failed_trials():
    """A task that errored in Spark (no result from our objective) is a failed trial with its error."""
    from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR, Trials

    from steps.lib.spark_search import collect_trials

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


def planted(change) -> list[dict]:
    records = json.loads((PROJECT_DIR / "tests" / "data" / "trials-tpe-before-layout.json").read_text())
    change(records)
    return records


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda r: r[1]["result"].update(model="os.system"), "unknown model 'os.system'"),
        (lambda r: r[1]["result"]["params"].update(max_iter=10**9), "hyperparameter 'max_iter'"),
        (lambda r: r[1]["result"]["params"].update(rm="-rf"), "unknown hyperparameter(s) rm"),
        (lambda r: r[1]["result"].update(loss=float("nan")), "a loss, value or time that is not a finite number"),
        (lambda r: r[1].update(tid=r[0]["tid"]), "tid 0"),
        (lambda r: r[1]["vals"].update(model=[{"__reduce__": "x"}]), "its vals"),
        (lambda r: r[1]["result"].update(status="RUNNING"), "status 'RUNNING'"),
    ],
)
def test_resumed_trial_records_are_checked_as_fresh_trials_are(tracking_uri, tmp_path, change, why):
    """A trials.json in a shared store is anyone's to write: resume_from refuses a bad record in one line."""
    import mlflow
    from mlflow import MlflowClient

    from steps.lib.search_results import load_previous_search

    with mlflow.start_run() as run:
        mlflow.set_tag("pipeline.step", "tune")
        (tmp_path / "trials.json").write_text(json.dumps(planted(change)))
        mlflow.log_artifact(str(tmp_path / "trials.json"))
    with pytest.raises(PipelineError) as raised:
        load_previous_search(MlflowClient(), run.info.run_id)
    message = str(raised.value)
    assert message.startswith(f"resume_from '{run.info.run_id}': trial record 2 is not valid (") and why in message
    assert "\n" not in message


def test_reproduce_knows_this_checkouts_own_source_and_no_other():
    from steps.reproduce import PROJECT_DIR as CHECKOUT
    from steps.reproduce import same_source, this_checkout_sources

    sources = [str(CHECKOUT), "https://github.com/team/pipeline.git"]
    assert str(CHECKOUT) in this_checkout_sources()
    for same in (
        f"file://{CHECKOUT}/",
        str(CHECKOUT),
        "https://github.com/team/pipeline",
        "https://github.com/team/pipeline.git",
    ):
        assert same_source(same, sources), same
    for other in ("https://github.com/mallory/pipeline.git", "/tmp/elsewhere", "git://127.0.0.1/team/pipeline.git"):
        assert not same_source(other, sources), other


def test_parallelism_is_capped_at_the_cores():
    """parallelism=1000 would start 1000 interpreters, each holding the data: never more trials than cores."""
    from steps.lib.search_options import PARALLEL_FROM_ROWS, effective_parallelism

    assert effective_parallelism(1000, 50, 2) == 2
    assert effective_parallelism(3, 50, 8) == 3
    assert effective_parallelism(0, PARALLEL_FROM_ROWS, 4) == 4  # auto: one per core on a big enough split
    assert effective_parallelism(0, PARALLEL_FROM_ROWS - 1, 4) == 1


def test_workers_started_before_the_data_wait_for_it_then_fit_or_end_when_the_search_never_starts(iris):
    """tune starts its workers before it reads its data (their imports overlap that work): a worker waits
    for the data file; if the search never starts, it is told to end and no process is left."""
    import concurrent.futures
    import multiprocessing

    from steps.lib.search import started_workers, workers_to_start_early
    from steps.lib.trials import evaluate_in_worker

    assert [workers_to_start_early(asked, 2) for asked in (0, 1, 2, 8)] == [0, 0, 1, 1]
    with started_workers(1) as started:
        assert not started.data_file.exists()
        ping = started.pool.submit(os.getpid)  # queued behind the worker's wait for the data
        with pytest.raises(concurrent.futures.TimeoutError):
            ping.result(timeout=1)
        with worker_pool(*iris, config(parallelism=2), workers=1, started=started) as pool:
            assert pool is started.pool and started.handed
            result = pool.submit(evaluate_in_worker, {"model": "logistic_regression", "C": 1.0}).result(timeout=60)
            assert result["status"] == "ok" and ping.result(timeout=1) != os.getpid()
    before = set(multiprocessing.active_children())  # (another test's trial logger may still be ending)
    with started_workers(1) as started:
        children = set(multiprocessing.active_children()) - before
        assert children
    assert not started.handed
    for child in children:
        child.join(timeout=30)
        assert not child.is_alive()


@pytest.mark.parametrize(
    ("options", "early"), [({"parallelism": 2}, 1), ({"parallelism": 0}, 0), ({"parallelism": 1}, 0)]
)
def test_tune_starts_its_workers_before_reading_its_data_when_parallelism_is_asked_for(monkeypatch, options, early):
    import steps.tune as tune_module

    seen = []
    monkeypatch.setattr(tune_module, "resolve_threads", lambda threads: 2)
    monkeypatch.setattr(tune_module, "tune_with", lambda *args: seen.append(args[-1]) or {})
    tune_module.run_tune("runs:/x/splits", TuneOptions(**options))
    assert [started.count if started else 0 for started in seen] == [early]


def test_a_trial_worker_imports_no_mlflow():
    """The workers import steps.lib.trials by name (the main module hidden): it must not pull in MLflow (~2 s of
    imports in each worker, on the cores the trials need), e.g. through a module of the data steps."""
    import subprocess
    import sys

    code = "import sys, steps.lib.trials; sys.exit(sorted({'mlflow', 'hyperopt'} & set(sys.modules)) or None)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("uri", "over_network"),
    [
        ("sqlite:///mlflow.db", False),
        ("sqlite+pysqlite:////tmp/mlflow.db", False),
        ("file:///tmp/mlruns", False),
        ("/tmp/mlruns", False),
        ("mlruns", False),
        ("http://127.0.0.1:5000", True),
        ("https://mlflow.example.com", True),
        ("postgresql+psycopg2://mlflow@db/mlflow", True),
        ("databricks", True),
    ],
)
def test_a_trial_logger_process_is_for_stores_across_a_network(uri, over_network):
    from steps.tune import store_over_network

    assert store_over_network(uri) is over_network


@pytest.mark.parametrize(("uri", "processes"), [("sqlite:///{tmp}/mlflow.db", 0), ("http://127.0.0.1:9", 1)])
def test_a_sequential_search_logs_its_trials_itself_into_a_local_store(iris, monkeypatch, tmp_path, uri, processes):
    """Into SQLite the tune process logs its trials (a logger process measured the same wall time on iris and
    ~4 CPU-s more); over HTTP a logger process takes the round trips off the trials' path."""
    import steps.tune as tune_module

    started = []

    class Recorded:
        def __init__(self, *args):
            started.append(args)

        def close(self):
            pass

    monkeypatch.setattr(tune_module, "TrialLogProcess", Recorded)
    monkeypatch.setattr(tune_module, "nested_trial_logger", lambda *args: "in this process")
    monkeypatch.setattr(tune_module, "run_search", lambda splits, spec, config, log_trial, **kw: log_trial)
    monkeypatch.setattr(
        tune_module.mlflow, "active_run", lambda: SimpleNamespace(info=SimpleNamespace(experiment_id="0", run_id="r"))
    )
    monkeypatch.setattr(tune_module.mlflow, "get_tracking_uri", lambda: uri.format(tmp=tmp_path))
    monkeypatch.setattr(tune_module, "MlflowClient", lambda: None)
    inputs = SimpleNamespace(splits=iris[0], spec=iris[1], previous=None)
    with contextlib.ExitStack() as cleanup:
        used = tune_module.search(inputs, config(max_evals=20, parallelism=1), None, cleanup)
    assert len(started) == processes
    assert (used == "in this process") is (processes == 0)


def test_reproduces_table_shows_both_data_digests():
    """The data's row shows what load recorded in each run, so a changed file is seen as such."""
    import pandas as pd

    from steps.reproduce import format_comparison

    table = pd.DataFrame(
        [["load", "n_rows", 150.0, 150.0, True], ["load", "data.digest (tag)", "0a1b2c3d4e5f6789", "ffee", False]],
        columns=["step", "metric", "original", "reproduced", "match"],
    )
    assert format_comparison(table).splitlines()[-1].split() == [
        "load", "data.digest", "(tag)", "0a1b2c3d4e5f", "ffee", "NO"
    ]  # fmt: skip


def test_reproduce_takes_a_recorded_step_run_only_if_it_is_that_steps_run(tracking_uri):
    """A tag is anyone's to write: a load tag naming the main run's evaluate run re-ran everything, then blamed
    the metrics."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from steps.lib.errors import PipelineError
    from steps.reproduce import step_runs

    with mlflow.start_run() as load:
        mlflow.set_tag("pipeline.step", "load")
    with mlflow.start_run() as evaluate:
        mlflow.set_tag("pipeline.step", "evaluate")
    with mlflow.start_run() as main:
        mlflow.set_tags({"pipeline.step": "main", "steps.load.run_id": load.info.run_id})
    client = MlflowClient()
    assert step_runs(client, client.get_run(main.info.run_id))["load"].info.run_id == load.info.run_id
    client.set_tag(main.info.run_id, "steps.load.run_id", evaluate.info.run_id)
    with pytest.raises(PipelineError, match=f"records load run '{evaluate.info.run_id}', which is no load run"):
        step_runs(client, client.get_run(main.info.run_id))


def test_reproduce_says_when_a_run_it_compares_is_deleted(tracking_uri):
    """A soft-deleted step run was reproduced without a word, though `mlflow gc` may remove its artifacts."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from steps.reproduce import deleted_words, step_runs

    with mlflow.start_run() as load:
        mlflow.set_tag("pipeline.step", "load")
    with mlflow.start_run() as main:
        mlflow.set_tags({"pipeline.step": "main", "steps.load.run_id": load.info.run_id})
    client = MlflowClient()
    main_run = client.get_run(main.info.run_id)
    assert deleted_words(main_run, step_runs(client, main_run)) is None
    client.delete_run(load.info.run_id)
    words = deleted_words(main_run, step_runs(client, main_run))
    assert words == (
        f"load run {load.info.run_id} is deleted (compared as the store holds it): restore with `mlflow runs restore "
        f"--run-id {load.info.run_id}` before `mlflow gc` runs"
    )

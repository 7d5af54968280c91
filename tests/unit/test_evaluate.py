"""Step evaluate: baseline, predictions table, and the champion decision on a real registry."""

from __future__ import annotations

import math

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from steps.evaluate import compare_with_baseline, fit_baseline, fit_strong_baseline, model_refit, predictions_table
from steps.lib.errors import PipelineError
from steps.lib.features import build_feature_spec
from steps.lib.gates import GATE_OPTION_NAMES, GateOptions, decide_champion, parse_min_delta
from steps.lib.metrics import is_better
from steps.lib.models import MODEL_FAMILIES, SKOPS_TRUSTED_TYPES, fit_model, model_pip_requirements
from steps.lib.splits import split_frame
from steps.lib.tables import load_bundled_frame


def test_direction_aware_comparisons():
    assert is_better(0.9, 0.8, "accuracy") and not is_better(0.8, 0.8, "accuracy")
    assert is_better(1.0, 2.0, "rmse") and not is_better(0.3, 0.2, "log_loss")
    table = compare_with_baseline({"accuracy": 0.9, "log_loss": 0.3}, {"accuracy": 0.33, "log_loss": 1.1})
    assert table["model_beats_baseline"].all()


@pytest.fixture
def iris():
    frame, target = load_bundled_frame("iris")
    spec = build_feature_spec(frame, target)
    return split_frame(frame, spec, 42, 0.2, 0.2), spec


def test_baseline_and_predictions_table(iris):
    splits, spec = iris
    baseline = fit_baseline(splits, spec)
    assert len(set(baseline.predict(splits.test[spec.input_columns]))) == 1
    table = predictions_table(baseline, splits.test, spec)
    assert {"actual", "predicted", "correct"} <= set(table.columns) and len(table) == len(splits.test)
    assert set(spec.input_columns) <= set(table.columns)
    renamed = splits.test.rename(columns={spec.input_columns[0]: "actual"})  # a feature called `actual`
    spec.input_columns[0] = "actual"
    table = predictions_table(baseline, renamed, spec)
    assert (table["actual"] == renamed["actual"]).all() and (table["actual_2"] == renamed[spec.target]).all()


def test_the_ui_table_holds_a_seeded_sample_of_rows_and_the_csv_every_row(tracking_uri, iris, monkeypatch, tmp_path):
    import pandas as pd

    import steps.evaluate as evaluate

    splits, spec = iris
    monkeypatch.setattr(evaluate, "TABLE_VIEW_ROWS", 7)
    baseline = fit_baseline(splits, spec)
    scored = evaluate.Scored(
        baseline, splits, spec, "accuracy", {}, {"accuracy": 0.3}, {}, {}, pd.DataFrame(), None, None
    )
    with mlflow.start_run() as run:
        evaluate.log_scores(scored)
    folder = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/evaluation", dst_path=str(tmp_path))
    written = pd.read_csv(f"{folder}/test_predictions.csv")
    assert len(written) == len(splits.test) > 7
    expected = evaluate.predictions_table(baseline, splits.test, spec)
    assert list(written.columns) == list(expected.columns)  # every row and column, as the table has them
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)
    shown = mlflow.load_table("evaluation/test_predictions.json", run_ids=[run.info.run_id])
    assert len(shown) == 7 and not shown.equals(written.head(7))  # a sample, not the first rows of a sorted table
    merged = shown.merge(written.reset_index(), on=list(written.columns))
    assert merged["index"].is_monotonic_increasing  # in the split's order


def register(splits, spec, family, params, name):
    model = fit_model(splits, spec, MODEL_FAMILIES[family], MODEL_FAMILIES[family].resolve(params), 0)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            pip_requirements=model_pip_requirements(),
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        )
    return mlflow.register_model(info.model_uri, name).version


BASELINE = {"accuracy": 0.33, "f1_macro": 0.2}


def decide(client, scores, thresholds=None, min_delta=0.0, iris=None):
    splits, spec = iris
    return decide_champion(
        client,
        "m",
        metric="accuracy",
        scores=scores,
        baseline_scores=BASELINE,
        thresholds=thresholds or {},
        min_delta=min_delta,
        test=splits.test,
        spec=spec,
    )


def test_champion_moves_only_to_a_better_model(tracking_uri, iris):
    client = MlflowClient()
    first = decide(client, {"accuracy": 0.5}, iris=iris)
    assert first.promote and first.reason == "all gates passed"
    assert [(g.name, g.passed) for g in first.gates] == [("thresholds", True), ("baseline", True), ("champion", True)]
    assert first.gates[2].reason == "no champion yet"
    weak = register(*iris, "logistic_regression", {"C": "0.0001"}, "m")
    client.set_registered_model_alias("m", "champion", weak)
    better = decide(client, {"accuracy": 1.0}, iris=iris)
    assert better.promote and better.previous_version == weak
    assert better.gates[2].reason.startswith(f"accuracy 1.0000 beats champion v{weak}'s ")
    worse = decide(client, {"accuracy": 0.0}, iris=iris)
    assert not worse.promote and "does not beat champion" in worse.reason
    assert "does not beat the dummy baseline" in worse.reason  # 0.0 < the baseline's 0.33 too


def test_thresholds_and_min_delta_are_gates(tracking_uri, iris):
    client = MlflowClient()
    low = decide(client, {"accuracy": 0.8}, thresholds={"accuracy": 0.9}, iris=iris)
    assert not low.promote and low.gates[0].name == "thresholds" and not low.gates[0].passed
    assert "accuracy" in low.gates[0].reason and "0.9" in low.gates[0].reason  # MLflow's own failure message
    ok = decide(client, {"accuracy": 0.95}, thresholds={"accuracy": 0.9}, iris=iris)
    assert ok.promote and ok.gates[0].reason == "passed: min_accuracy=0.9 (accuracy 0.9500)"
    champion = register(*iris, "logistic_regression", {"C": "0.0001"}, "m")
    client.set_registered_model_alias("m", "champion", champion)
    from steps.lib.models import score_model

    champion_accuracy = score_model(mlflow.sklearn.load_model("models:/m@champion"), iris[0].test, iris[1])["accuracy"]
    slightly = {"accuracy": champion_accuracy + 0.01}
    assert decide(client, slightly, iris=iris).promote
    held = decide(client, slightly, min_delta=0.05, iris=iris)
    assert not held.promote and "by at least 0.05" in held.reason
    same = decide(client, {"accuracy": champion_accuracy}, iris=iris)
    assert not same.promote  # a tie does not move the champion


def test_the_strong_baseline_is_a_gate_only_when_asked_and_a_tie_does_not_pass_it(tracking_uri, iris):
    splits, spec = iris
    client = MlflowClient()

    def decide_against(strong: dict[str, float] | None, accuracy: float):
        return decide_champion(
            client,
            "m",
            metric="accuracy",
            scores={"accuracy": accuracy},
            baseline_scores=BASELINE,
            thresholds={},
            min_delta=0.0,
            test=splits.test,
            spec=spec,
            strong_scores=strong,
        )

    assert "strong_baseline" not in [g.name for g in decide_against(None, 0.5).gates]  # reported, not a gate
    weaker = decide_against({"accuracy": 0.9}, 0.85)
    assert not weaker.promote and [g.name for g in weaker.gates if not g.passed] == ["strong_baseline"]
    assert "does not beat a default HistGradientBoosting" in weaker.reason
    tie = decide_against({"accuracy": 0.9}, 0.9)
    assert not tie.promote and [g.name for g in tie.gates if not g.passed] == ["strong_baseline"]
    assert decide_against({"accuracy": 0.9}, 0.95).promote


def test_the_strong_baseline_is_fitted_on_the_rows_the_model_was_fitted_on(tracking_uri, iris):
    """The same default HistGradientBoosting as a model of that family fitted with the same `refit` (and not the
    same as with the other one); the model's run's `refit` param is read back, and a value nobody knows (anyone
    may write a param) means the training rows."""
    splits, spec = iris
    family = MODEL_FAMILIES["hist_gradient_boosting"]
    features = splits.test[spec.input_columns]
    probabilities = {}
    for refit in ("train", "train+validation"):
        strong = fit_strong_baseline(splits, spec, 42, 1, refit)
        same = fit_model(splits, spec, family, family.resolve({}), 42, threads=1, refit=refit)
        probabilities[refit] = strong.predict_proba(features)
        assert (probabilities[refit] == same.predict_proba(features)).all()
    assert (probabilities["train"] != probabilities["train+validation"]).any()
    for written, read in (("train+validation", "train+validation"), ("train", "train"), ("all of it", "train")):
        with mlflow.start_run():
            mlflow.log_param("refit", written)
            info = mlflow.sklearn.log_model(
                same,
                name="model",
                serialization_format="skops",
                skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
                pip_requirements=model_pip_requirements(),
            )
        assert model_refit(info.model_uri) == read


def gate_values(**given: str) -> dict[str, str | None]:
    """What a command line hands GateOptions: every bound (None where not set) and min_delta."""
    return dict.fromkeys(GATE_OPTION_NAMES) | {"min_delta": "0", "beat_strong_baseline": "false"} | given


def test_threshold_params_are_parsed_and_must_fit_the_task():
    options = GateOptions.from_cli(gate_values(min_accuracy="0.9"))
    assert options.thresholds("classification") == {"accuracy": 0.9}
    assert options.as_params() == {"min_delta": "0", **dict.fromkeys(GATE_OPTION_NAMES[1:], "none")} | {
        "min_accuracy": "0.9",
        "beat_strong_baseline": "false",
    }
    assert GateOptions.from_cli(gate_values(beat_strong_baseline="true")).beat_strong_baseline is True
    with pytest.raises(PipelineError, match="beat_strong_baseline must be true or false"):
        GateOptions.from_cli(gate_values(beat_strong_baseline="maybe"))
    with pytest.raises(PipelineError, match="max_rmse does not fit a classification task; use min_accuracy"):
        GateOptions.from_cli(gate_values(max_rmse="3")).thresholds("classification")
    with pytest.raises(PipelineError, match="min_r2 must be a number or none; got 'high'"):
        GateOptions.from_cli(gate_values(min_r2="high"))
    assert parse_min_delta("0.02") == 0.02
    with pytest.raises(PipelineError, match="min_delta must be 0 or more"):
        parse_min_delta("-1")


def test_a_champion_of_another_data_set_is_not_replaced_blindly(tracking_uri, iris):
    wine, wine_target = load_bundled_frame("wine")
    wine_spec = build_feature_spec(wine, wine_target)
    version = register(split_frame(wine, wine_spec, 0, 0.2, 0.2), wine_spec, "logistic_regression", {}, "m")
    MlflowClient().set_registered_model_alias("m", "champion", version)
    decision = decide(MlflowClient(), {"accuracy": 1.0}, iris=iris)
    assert not decision.promote and "cannot score these test rows" in decision.reason
    assert "use another registered_model_name" in decision.reason


def test_a_champion_this_checkout_will_not_load_is_kept_and_the_reason_says_why(tracking_uri, iris, monkeypatch):
    import steps.lib.gates as gates
    from steps.lib.artifacts import FetchError
    from steps.lib.errors import TrackingUnreachableError
    from steps.lib.model_loading import ModelRefusedError

    splits, spec = iris
    version = register(splits, spec, "logistic_regression", {}, "m")
    MlflowClient().set_registered_model_alias("m", "champion", version)

    def failing(error):
        def load(uri):
            raise error

        return load

    refusal = ModelRefusedError("model refused: its copy of steps/lib/transforms.py differs from this one")
    monkeypatch.setattr(gates, "load_model", failing(refusal))
    decision = decide(MlflowClient(), {"accuracy": 1.0}, iris=iris)
    assert not decision.promote
    assert f"champion v{version} cannot be loaded here" in decision.reason
    assert "transforms.py differs" in decision.reason
    assert "move the alias" in decision.reason and "registered_model_name" not in decision.reason

    monkeypatch.setattr(gates, "load_model", failing(FetchError("the model", "models:/m@champion", "timed out")))
    decision = decide(MlflowClient(), {"accuracy": 1.0}, iris=iris)
    assert not decision.promote and "could not be fetched" in decision.reason
    assert "run evaluate again" in decision.reason

    monkeypatch.setattr(gates, "load_model", failing(TrackingUnreachableError("the tracking server is not answering")))
    with pytest.raises(TrackingUnreachableError):  # nothing is decided while the store does not answer
        decide(MlflowClient(), {"accuracy": 1.0}, iris=iris)


def test_permutation_importance_ranks_the_column_that_carries_the_signal():
    """On raw input columns (odd names, a text column encoded inside the pipeline): the one column the label
    depends on comes first, by far; every input column has its row."""
    import numpy as np
    import pandas as pd

    from steps.lib.explain import permutation_importance_table
    from steps.lib.features import build_feature_spec
    from steps.lib.models import MODEL_FAMILIES, fit_model
    from steps.lib.splits import split_frame

    rng = np.random.default_rng(5)
    n = 800
    signal = rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "noise ($)": rng.normal(size=n),
            "Income signal (k)": signal,
            "city": rng.choice([f"town {i}" for i in range(30)], n),
            "seniority (years)": rng.integers(0, 40, n),
            "label": np.where(signal + 0.1 * rng.normal(size=n) > 0, ">50K", "<=50K"),
        }
    )
    spec = build_feature_spec(frame, "label")
    splits = split_frame(frame, spec, 0, 0.2, 0.25)
    family = MODEL_FAMILIES["logistic_regression"]
    model = fit_model(splits, spec, family, family.resolve({}), 0)
    table = permutation_importance_table(model, splits.test, spec, "f1_macro", seed=0)
    assert sorted(table["column"]) == sorted(spec.input_columns)
    assert table["column"].iloc[0] == "Income signal (k)" and table["importance"].iloc[0] > 0.3
    assert table["importance"].iloc[1:].abs().max() < 0.05


def test_the_model_cards_temporary_folder_is_removed_when_a_card_step_fails(tracking_uri, iris, monkeypatch, tmp_path):
    import tempfile
    import types

    import pandas as pd

    import steps.evaluate as evaluate
    from steps.lib.gates import ChampionDecision

    splits, spec = iris
    version = MlflowClient().get_model_version("m", register(splits, spec, "logistic_regression", {}, "m"))
    test_rows = types.SimpleNamespace(profile={"num_rows": 30}, digest="d")
    no_plots = types.SimpleNamespace(artifacts={})
    scored = evaluate.Scored(
        fit_baseline(splits, spec), splits, spec, "accuracy", {}, {"accuracy": 0.9}, BASELINE, {},
        pd.DataFrame(), test_rows, no_plots,
    )  # fmt: skip
    importance = pd.DataFrame({"column": ["x"], "importance": [0.1], "sd": [0.0], "metric": "accuracy", "rows": 9})
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))

    def broken(*args):
        raise RuntimeError("the card could not be made")

    monkeypatch.setattr(evaluate, "evaluate_card", broken)
    with mlflow.start_run(), pytest.raises(RuntimeError, match="could not be made"):
        decision = ChampionDecision(True, "ok", [])
        evaluate.log_outcome(MlflowClient(), "runs:/x/m", "/data/splits", scored, version, decision, importance)
    assert list((tmp_path / "tmp").iterdir()) == []  # the card's folder (and the importance chart in it) is gone


def test_permutation_importance_scores_fewer_rows_per_shuffle_on_a_wide_table():
    from steps.lib.explain import IMPORTANCE_ROWS, MIN_IMPORTANCE_ROWS, importance_rows

    assert importance_rows(5) == importance_rows(30) == IMPORTANCE_ROWS  # up to 30 columns: 10,000 rows
    assert importance_rows(100) == 3_000 and importance_rows(100) * 100 == importance_rows(30) * 30
    assert importance_rows(1_000) == MIN_IMPORTANCE_ROWS


def test_a_score_that_is_no_finite_number_passes_no_gate(tracking_uri, iris):
    """Labels near 1e300 overflow the rmse of the model and of the dummy baseline alike: MLflow's check passed
    `inf` against `inf` (their difference is NaN) and such a model became champion with every gate passed."""
    splits, spec = iris
    client = MlflowClient()

    def decide_on(model: float, baseline: float):
        return decide_champion(
            client,
            "m",
            metric="rmse",
            scores={"rmse": model},
            baseline_scores={"rmse": baseline},
            thresholds={},
            min_delta=0.0,
            test=splits.test,
            spec=spec,
        )

    both = decide_on(math.inf, math.inf)
    assert not both.promote
    assert both.reason == (
        "baseline: rmse cannot be compared on these test rows: the model's is inf and the dummy baseline's is inf; "
        "rescale the label"
    )
    assert not decide_on(1.5, math.nan).promote and decide_on(1.5, 2.0).promote


def test_two_scores_are_shown_with_the_decimals_that_tell_them_apart():
    from steps.lib.gates import two_scores

    assert two_scores(0.91, 0.8) == ("0.9100", "0.8000")
    assert two_scores(0.771712, 0.771707) == ("0.771712", "0.771707")  # 0.7717 against 0.7717 said nothing
    assert two_scores(0.5, 0.5) == ("0.5000000000", "0.5000000000")
    assert two_scores(3.2e300, 1.5e300) == ("3.2e+300", "1.5e+300")  # not 301 digits, as the summary shows them


def test_a_champion_whose_run_records_no_splits_is_compared_on_every_test_row_and_the_reason_says_so(
    tracking_uri, iris
):
    client = MlflowClient()
    champion = register(*iris, "logistic_regression", {"C": "0.0001"}, "m")
    client.set_registered_model_alias("m", "champion", champion)
    reason = decide(client, {"accuracy": 1.0}, iris=iris).gates[2].reason
    assert reason.endswith("on the same test rows (its run records no training rows: they may include these)")


def test_row_keys_match_the_same_values_whatever_their_column_types():
    import pandas as pd

    from steps.lib.gates import row_keys

    ints = pd.DataFrame({"n": [1, 2, 3], "city": ["Lyon", "Oslo", None]})
    floats = pd.DataFrame({"n": [1.0, 2.0, 3.5], "city": pd.Series(["Lyon", "Oslo", None], dtype=object)})
    same = row_keys(ints) == row_keys(floats)
    assert same.tolist() == [True, True, False]

"""evaluate's promotion gates, each through MLflow's own validation API: thresholds, the baseline, the champion.

The gate options (`--min-delta`, `--min-accuracy`, ...) are declared here once, for the two command
lines that take them (evaluate's and main's); `none` becomes None at the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import click
import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from steps.lib.errors import PipelineError, TrackingUnreachableError, one_line
from steps.lib.features import FeatureSpec
from steps.lib.metrics import METRICS, greater_is_better
from steps.lib.model_loading import ModelRefusedError, load_model
from steps.lib.models import score_model
from steps.lib.names import OUTPUT_DIGEST_TAG
from steps.lib.registry import CHAMPION
from steps.lib.runner import as_param, parse_bool, unset_is_none
from steps.lib.story import four_places
from steps.lib.uris import run_of_uri

# Threshold params: metric -> the param that bounds it. Each is checked only when given.
THRESHOLD_PARAMS = {
    "accuracy": "min_accuracy",
    "f1_macro": "min_f1_macro",
    "roc_auc_ovr": "min_roc_auc_ovr",
    "log_loss": "max_log_loss",
    "rmse": "max_rmse",
    "mae": "max_mae",
    "r2": "min_r2",
}
STRICTLY_BETTER = 1e-9  # min_delta 0 means "better", and MLflow's min_absolute_change must be > 0


@dataclass(frozen=True)
class GateOptions:
    """How a new version earns the champion alias: bounds on its test metrics, and its margin over the champion."""

    min_delta: float = 0.0
    bounds: dict[str, float] = field(default_factory=dict)  # threshold param -> bound, for those given
    beat_strong_baseline: bool = False  # a gate only if asked: beat a default HistGradientBoosting on test

    @classmethod
    def from_cli(cls, given: dict[str, Any]) -> GateOptions:
        """The options from a command line's values (an unset bound already None)."""
        bounds = {
            param: parse_bound(param, given[param]) for param in THRESHOLD_PARAMS.values() if given[param] is not None
        }
        strong = parse_bool("beat_strong_baseline", given["beat_strong_baseline"])
        return cls(parse_min_delta(given["min_delta"]), bounds, strong)

    def thresholds(self, task: str) -> dict[str, float]:
        """The bounds as metric -> bound; each must fit the task."""
        thresholds = {}
        for metric, param in THRESHOLD_PARAMS.items():
            if param not in self.bounds:
                continue
            if METRICS[metric][0] != task:
                fitting = ", ".join(THRESHOLD_PARAMS[m] for m, (kind, _) in METRICS.items() if kind == task)
                raise PipelineError(f"{param} does not fit a {task} task; use {fitting}")
            thresholds[metric] = self.bounds[param]
        return thresholds

    def as_params(self) -> dict[str, str]:
        """The options as evaluate's MLflow params (what main passes on)."""
        bounds = {param: as_param(self.bounds.get(param), unset="none") for param in THRESHOLD_PARAMS.values()}
        strong = {"beat_strong_baseline": str(self.beat_strong_baseline).lower()}
        return {"min_delta": as_param(self.min_delta)} | bounds | strong


GATE_OPTION_NAMES = ("min_delta", *THRESHOLD_PARAMS.values(), "beat_strong_baseline")


def parse_bound(param: str, raw: Any) -> float:
    try:
        return float(raw)
    except ValueError:
        raise PipelineError(f"{param} must be a number or none; got {raw!r}") from None


def parse_min_delta(min_delta: str | float) -> float:
    try:
        value = float(min_delta)
    except ValueError:
        raise PipelineError(f"min_delta must be a number (0 or more); got {min_delta!r}") from None
    if not value >= 0:
        raise PipelineError(f"min_delta must be 0 or more; got {min_delta}")
    return value


def gate_options(command: Any) -> Any:
    """--min-delta, --min-accuracy, --max-rmse, ...: the gates, `none` when a bound is not set."""
    for metric, param in reversed(THRESHOLD_PARAMS.items()):
        bound = "at least" if param.startswith("min_") else "at most"
        command = click.option(
            f"--{param.replace('_', '-')}",
            default="none",
            callback=unset_is_none,
            help=f"Gate: test {metric} must be {bound} this.",
        )(command)
    command = click.option(
        "--beat-strong-baseline",
        default="false",
        help="Gate: beat a default HistGradientBoosting fitted on the same rows (true/false).",
    )(command)
    return click.option(
        "--min-delta", default="0", help="Gate: beat the champion's metric by at least this; 0: at all."
    )(command)


@dataclass
class Gate:
    name: str  # "thresholds", "baseline" or "champion"
    passed: bool
    reason: str


def run_gate(
    name: str, thresholds: dict[str, Any], candidate: dict[str, float], reference: dict[str, float] | None
) -> Gate:
    """One gate through MLflow's own validation API; its failure message is the reason."""
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    try:
        mlflow.validate_evaluation_results(
            thresholds,
            EvaluationResult(candidate, {}),
            EvaluationResult(reference, {}) if reference is not None else None,
        )
    except ModelValidationFailedException as failure:
        return Gate(name, False, one_line(str(failure), 400))
    return Gate(name, True, "passed")


def threshold_gate(scores: dict[str, float], thresholds: dict[str, float]) -> Gate:
    """Each given bound (min_accuracy, max_rmse, ...) on the test rows."""
    from mlflow.models import MetricThreshold

    if not thresholds:
        return Gate("thresholds", True, "no thresholds set")
    checks = {m: MetricThreshold(threshold=v, greater_is_better=greater_is_better(m)) for m, v in thresholds.items()}
    gate = run_gate("thresholds", checks, scores, None)
    bounds = ", ".join(f"{THRESHOLD_PARAMS[m]}={v:g} ({m} {scores[m]:.4f})" for m, v in thresholds.items())
    gate.reason = f"passed: {bounds}" if gate.passed else f"{bounds}: {gate.reason}"
    return gate


def better_than_gate(
    name: str, metric: str, scores: dict[str, float], reference: dict[str, float], min_delta: float, what: str
) -> Gate:
    """The decision metric beats `reference` on the same test rows by at least min_delta (or at all). A score
    that is no finite number (an rmse whose squares overflow: labels near 1e300) beats nothing and is beaten by
    nothing: MLflow's check passed `inf` against `inf` (their difference is NaN)."""
    from mlflow.models import MetricThreshold

    infinite = [
        (who, s[metric]) for who, s in (("the model", scores), (what, reference)) if not math.isfinite(s[metric])
    ]
    if infinite:
        scores_said = " and ".join(f"{who}'s is {value}" for who, value in infinite)
        return Gate(name, False, f"{metric} cannot be compared on these test rows: {scores_said}; rescale the label")

    check = MetricThreshold(
        min_absolute_change=max(min_delta, STRICTLY_BETTER), greater_is_better=greater_is_better(metric)
    )
    gate = run_gate(name, {metric: check}, {metric: scores[metric]}, {metric: reference[metric]})
    by = f" by at least {min_delta:g}" if min_delta > 0 else ""
    verdict = "beats" if gate.passed else "does not beat"
    ours, theirs = two_scores(scores[metric], reference[metric])
    gate.reason = f"{metric} {ours} {verdict} {what}'s {theirs}{by} on the same test rows"
    return gate


def two_scores(first: float, second: float) -> tuple[str, str]:
    """Two scores as the summary shows a figure (`story.four_places`), or with as many more places as it takes to
    tell them apart (0.77171 against 0.77166, not 0.7717 against 0.7717), up to 10."""
    for places in range(4, 11):
        shown = four_places(first, places), four_places(second, places)
        if shown[0] != shown[1]:
            break
    return shown


@dataclass
class ChampionDecision:
    promote: bool
    reason: str
    gates: list[Gate]
    previous_version: str | None = None


def champion_gate(
    current: Any,
    metric: str,
    scores: dict[str, float],
    min_delta: float,
    test: pd.DataFrame,
    spec: FeatureSpec,
    challenger: Challenger,
) -> Gate:
    """The candidate against the current champion (its ModelVersion), both scored on the test rows the champion
    was not trained on; a champion this checkout will not load, that cannot score these rows, or that was trained
    on nearly all of them, is never replaced blindly (and the reason says which, and what to do)."""
    name, version = current.name, current.version
    try:
        champion_model = load_model(f"models:/{name}@{CHAMPION}").sklearn
    except TrackingUnreachableError:
        raise  # the step fails in one line: nothing is decided while the store does not answer
    except ModelRefusedError as error:  # e.g. logged by another version of this project's code
        advice = "compare the two by hand and move the alias if the new one is better (docs/lifecycle.md)"
        why = one_line(str(error), 160)
        return Gate("champion", False, f"champion v{version} cannot be loaded here ({why}); {advice}")
    except Exception as error:  # fetching it failed
        return Gate(
            "champion",
            False,
            f"champion v{version} could not be fetched ({one_line(str(error), 160)}); run evaluate again",
        )
    rows, how = rows_unseen_by(current.run_id, test, spec, challenger)
    if rows is None:
        return Gate("champion", False, f"champion v{version}: {how}; compare the two by hand (docs/lifecycle.md)")
    if len(rows) < min(MIN_UNSEEN_ROWS, len(test)):
        return Gate(
            "champion",
            False,
            f"champion v{version} was trained on {len(test) - len(rows):,} of these {len(test):,} test rows that the "
            f"new model was not, leaving fewer than {MIN_UNSEEN_ROWS} to compare on: no fair comparison; compare "
            "the two on new rows by hand, or split as its run did (seed, sizes)",
        )
    try:
        champion_scores = score_model(champion_model, rows, spec)
    except Exception as error:  # e.g. the champion was trained on another data set's columns
        return Gate(
            "champion",
            False,
            f"champion v{version} cannot score these test rows ({one_line(str(error), 120)}); "
            "use another registered_model_name for a different data set",
        )
    if len(rows) < len(test):
        scores = score_model(challenger.model, rows, spec)
    gate = better_than_gate("champion", metric, scores, champion_scores, min_delta, f"champion v{version}")
    if how.startswith("on the "):  # some of the test rows: which
        gate.reason = gate.reason.replace(" on the same test rows", f" {how}")
    elif how:
        gate.reason += f" ({how})"
    return gate


@dataclass(frozen=True)
class Challenger:
    """The version at the gates: its model (to score it on fewer rows) and the splits it was trained on."""

    model: Any = None
    splits_uri: str = ""
    trained: pd.DataFrame | None = None  # its training and validation rows: values both models saw count as new


MIN_UNSEEN_ROWS = 30  # fewer test rows than this unseen by the champion: no comparison


def rows_unseen_by(
    champion_run_id: str, test: pd.DataFrame, spec: FeatureSpec, challenger: Challenger
) -> tuple[Any, str]:
    """The test rows the champion (its train run) was neither trained nor tuned on, and how they were told: all
    when it was trained on the same splits (the same featurize output); else those whose values (features and
    label) are in none of its training and validation rows, read from its run's splits, unless the challenger's
    training or validation rows hold them too (both saw them: a table of few distinct rows, a data refresh). A
    champion trained on another seed's split, or before rows were added, had most of these test rows in its
    training rows, and its score on them looked far better than it is."""
    from steps.lib.splits import read_splits

    client = MlflowClient()
    try:
        recorded = client.get_run(champion_run_id).data.tags.get("splits_uri", "") if champion_run_id else ""
    except mlflow.exceptions.MlflowException:  # its run was deleted
        recorded = ""
    if not recorded:
        return test, "its run records no training rows: they may include these"
    if recorded == challenger.splits_uri:  # the same splits: every test row is new to both
        return test, ""
    digest = output_digest(client, recorded)
    if digest is not None and digest == output_digest(client, challenger.splits_uri):  # the same featurize output
        return test, ""
    try:
        seen, _ = read_splits(recorded, parts=("train", "validation"))
    except PipelineError as error:
        return (
            None,
            f"its training rows cannot be read to tell which test rows are new to it ({one_line(str(error), 160)})",
        )
    columns = [*spec.input_columns, spec.target]
    if not set(columns) <= set(seen.train.columns):  # trained on other columns: it saw none of these rows
        return test, ""
    trained = row_keys(pd.concat([seen.train[columns], seen.validation[columns]], ignore_index=True))
    if challenger.trained is not None and set(columns) <= set(challenger.trained.columns):
        trained = np.setdiff1d(trained, row_keys(challenger.trained[columns]))  # seen by both: a fair row
    unseen = test[~np.isin(row_keys(test[columns]), trained)]
    return unseen, f"on the {len(unseen):,} of {len(test):,} test rows it was not trained on (or both were)"


def output_digest(client: MlflowClient, splits_uri: str) -> str | None:
    """What the featurize run of a runs:/ splits URI recorded of its output (tag outputs.digest); None if none."""
    run_id = run_of_uri(splits_uri)
    try:
        return client.get_run(run_id).data.tags.get(OUTPUT_DIGEST_TAG) if run_id else None
    except mlflow.exceptions.MlflowException:
        return None


def row_keys(frame: pd.DataFrame) -> Any:
    """A hash of each row's values, the same for the same values whatever the column types (numbers as floats,
    the rest as text): a column read as int in one split and float in another still matches."""
    canonical = {
        column: values.astype("float64") if pd.api.types.is_numeric_dtype(values) else values.astype("str")
        for column, values in frame.items()
    }
    return pd.util.hash_pandas_object(pd.DataFrame(canonical), index=False).to_numpy()


def decide_champion(
    client: MlflowClient,
    name: str,
    *,
    metric: str,
    scores: dict[str, float],
    baseline_scores: dict[str, float],
    thresholds: dict[str, float],
    min_delta: float,
    test: pd.DataFrame,
    spec: FeatureSpec,
    strong_scores: dict[str, float] | None = None,
    challenger: Challenger | None = None,
) -> ChampionDecision:
    """The gates: thresholds, the dummy baseline, the strong baseline (only if `strong_scores` are given),
    then the current champion (if any). All must pass."""
    gates = [
        threshold_gate(scores, thresholds),
        better_than_gate("baseline", metric, scores, baseline_scores, 0.0, "the dummy baseline"),
    ]
    if strong_scores is not None:
        what = "a default HistGradientBoosting"
        gates.append(better_than_gate("strong_baseline", metric, scores, strong_scores, 0.0, what))
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is None:
        gates.append(Gate("champion", True, "no champion yet"))
    else:
        gates.append(champion_gate(current, metric, scores, min_delta, test, spec, challenger or Challenger()))
    failed = [g for g in gates if not g.passed]
    reason = "; ".join(f"{g.name}: {g.reason}" for g in failed) if failed else "all gates passed"
    return ChampionDecision(not failed, reason, gates, current.version if current else None)

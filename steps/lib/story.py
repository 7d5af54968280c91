"""What a run tells in the MLflow UI: each step run's description and main's, with links between runs.

The description is the run's note (the tag `mlflow.note.content`), which the UI renders as Markdown on the
run's page. Main's holds the pipeline table with a link to each step run, the registered version and its
alias, and the gate outcome; main also logs the figures people compare pipeline runs by.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import mlflow

from steps.lib.uris import redact_uri

NOTE_TAG = "mlflow.note.content"


def describe(*lines: str) -> None:
    """The active run's description, one Markdown paragraph per line (a URI's secrets redacted)."""
    from steps.lib.console import redact_text

    mlflow.set_tag(NOTE_TAG, redact_text("\n\n".join(line for line in lines if line)))


def run_link(experiment_id: str, run_id: str, text: str | None = None) -> str:
    """A Markdown link to a run that works inside the MLflow UI (its pages are routed after the '#')."""
    return f"[{text or run_id[:8]}](#/experiments/{experiment_id}/runs/{run_id})"


def version_link(name: str, version: str) -> str:
    return f"[{name} version {version}](#/models/{name}/versions/{version})"


def code(text: Any) -> str:
    """Inline code, safe for any text (a column name may hold a backtick)."""
    text = str(text).replace("\n", " ")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def figure(scores: dict[str, float], metric: str) -> str:
    """A score to 4 places, or 'n/a' where it could not be computed (e.g. AUC with a class absent)."""
    value = scores.get(metric)
    return "n/a" if value is None or value != value else four_places(value)


def four_places(value: float, places: int = 4) -> str:
    """A figure to 4 places (or `places`), and to as many significant digits from a million on (an rmse of labels
    near 1e300 printed 309 digits)."""
    return f"{value:.{places}f}" if abs(value) < 1e6 else f"{value:.{places}g}"


def listed(items: Iterable[str], none: str = "none") -> str:
    items = list(items)
    return ", ".join(items) if items else none


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; `|` inside a cell is escaped."""
    cells = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def load_story(meta: dict[str, Any], n_missing: int) -> None:
    describe(
        f"**load** read {meta['n_rows']:,} rows × {meta['n_columns']} columns from {code(redact_uri(meta['source']))}"
        f" (data set {code(meta['name'])}, digest {code(meta['digest'])}).",
        f"Target: {code(meta['target'])}. Missing cells: {n_missing:,}. The profile is under `profile/`.",
    )


def featurize_story(spec: Any, counts: dict[str, int], split_words: str) -> None:
    dropped = [f"{code(column)} ({why})" for column, why in spec.dropped.items()]
    encodings = [f"{code(column)}: {encoding['reason']}" for column, encoding in spec.encodings.items()]
    describe(
        f"**featurize**: a {spec.task} task on {code(spec.target)}; kept {len(spec.numeric)} numeric, "
        f"{len(spec.categorical)} categorical and {len(spec.datetime)} date/time columns.",
        f"Dropped: {listed(dropped)}.",
        f"Encodings: {listed(encodings)}." if encodings else "",
        f"Split {split_words}: train {counts['train']:,}, validation {counts['validation']:,}, "
        f"test {counts['test']:,} rows. The splits and `feature_spec.json` are under `splits/`.",
    )


def tune_story(best: dict[str, Any], metric: str, trials: int, failed: int, stopped_by: str, parallel: str) -> None:
    describe(
        f"**tune** ran {trials} trials ({failed} failed; stopped by {stopped_by}; {parallel}).",
        f"Best: trial {best['trial']}, {code(best['model'])} with validation {metric} = {best['value']:.4f} "
        f"({run_link(mlflow.active_run().info.experiment_id, best['run_id'], 'its run')}). "
        "The leaderboard is `trials.csv`; the search's figures are under `figures/`.",
    )


def train_story(info: str, validation: dict[str, float], prefix: str, model_uri: str) -> None:
    shown = ", ".join(f"{prefix}{name} = {value:.4f}" for name, value in validation.items())
    in_sample = " (in-sample: the model saw these rows)" if prefix == "val_in_sample_" else ""
    describe(f"**train** fitted {info}.", f"Validation{in_sample}: {shown}.", f"Model: {code(model_uri)}.")


def evaluate_story(scored: Any, registered: tuple[str, str, str, str], gates: list[tuple[str, bool, str]]) -> None:
    """registered: (name, version, alias, decision)."""
    metric, (name, version, alias, decision) = scored.metric, registered
    gate_rows = [(gate, "passed" if passed else "failed", reason) for gate, passed, reason in gates]
    describe(
        f"**evaluate**: test {metric} = {figure(scored.test_scores, metric)}, against the dummy baseline's "
        f"{figure(scored.baseline_scores, metric)} and a default HistGradientBoosting's "
        f"{figure(scored.strong_scores, metric)}.",
        f"Registered {version_link(name, version)} as **{alias}**: {decision}",
        table(("gate", "outcome", "why"), gate_rows) if gate_rows else "No gates were set.",
        "The model card is `model_card/model_card.md`; the evaluation plots are under `evaluation/`, the "
        "permutation importance of each input column under `explanations/`.",
    )


def main_story(experiment_id: str, results: Sequence[Any], registered: dict[str, str], evaluate: Any) -> None:
    """main's description (the step table, each step's run linked) and the figures to compare pipelines by."""
    tags, metrics = evaluate.data.tags, evaluate.data.metrics
    metric = tags.get("metric", "")
    rows = [
        (
            r.step,
            r.status,
            f"{r.seconds:.1f}",
            r.key_metric,
            "cached" if r.cached else "ran",
            run_link(experiment_id, r.run_id),
        )
        for r in results
    ]
    alias = f" **@{registered['alias']}**" if registered["alias"] else " (not champion)"
    failed_gates = [
        key.removeprefix("gate.")
        for key, value in tags.items()
        if key.startswith("gate.") and value.startswith("failed")
    ]
    describe(
        "**main** ran the pipeline: " + " → ".join(r.step for r in results) + ".",
        table(("step", "status", "seconds", "key metric", "cache", "run"), rows),
        f"Registered {version_link(registered['name'], registered['version'])}{alias}: "
        f"{tags.get('champion.decision', '')}",
        f"Failed gates: {listed(failed_gates)}." if failed_gates else "",
    )
    compared = {f"seconds_{r.step}": r.seconds for r in results} | {
        "pipeline_seconds": round(sum(r.seconds for r in results), 1),
        "n_cached_steps": sum(r.cached for r in results),
        "promoted": 1.0 if registered["alias"] else 0.0,
    }
    for name in (f"test_{metric}", f"baseline_test_{metric}", f"strong_baseline_test_{metric}"):
        if name in metrics:
            compared[name] = metrics[name]
    tune = next((r for r in results if r.step == "tune"), None)
    if tune is not None:  # the search's size: its trials (a resumed one counts them all), its failures
        tuned = mlflow.tracking.MlflowClient().get_run(tune.run_id).data.metrics
        compared |= {name: tuned[name] for name in ("n_trials", "n_failed_trials") if name in tuned}
    mlflow.log_metrics(compared)
    mlflow.set_tags({"metric": metric, "champion.decision": tags.get("champion.decision", "")})

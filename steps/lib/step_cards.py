"""What each step's card shows (steps/lib/cards.py renders them all from one template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from steps.lib.cards import Section, log_card, pipeline_diagram
from steps.lib.story import figure
from steps.lib.uris import redact_uri


def load_card(meta: dict[str, Any], columns: pd.DataFrame, histograms: Path, n_missing: int) -> None:
    facts = [
        ("data", redact_uri(meta["source"])),
        ("rows × columns", f"{meta['n_rows']:,} × {meta['n_columns']}"),
        ("target", meta["target"]),
        ("missing cells", f"{n_missing:,}"),
        ("digest", meta["digest"]),
    ]
    sections = [
        Section("Columns", "Each column's type, missing values and distinct values.", table=columns),
        Section(
            "Distributions",
            "Each column and the label (the ten commonest values of a non-numeric one), from a sample of the rows.",
            images=[histograms],
        ),
    ]
    log_card("load", f"the data profile of {meta['name']}", facts, sections)


def featurize_card(spec: Any, splits: Any, split_words: str) -> None:
    rows = [{"column": spec.target, "becomes": "the label", "why": f"a {spec.task} target"}]
    for kind, columns in (("numeric", spec.numeric), ("categorical", spec.categorical), ("date/time", spec.datetime)):
        for column in columns:
            encoding = spec.encodings.get(column, {})
            why = encoding.get("reason") or ("date parts (year, month, day, ...)" if kind == "date/time" else "as is")
            rows.append({"column": column, "becomes": f"a {kind} feature", "why": why})
    rows += [{"column": column, "becomes": "dropped", "why": why} for column, why in spec.dropped.items()]
    sizes = []
    for name in ("train", "validation", "test"):
        frame = splits[name]
        row: dict[str, Any] = {"split": name, "rows": len(frame)}
        if spec.task == "classification":
            shares = frame[spec.target].value_counts(normalize=True)
            row |= {f"share of {label}": float(shares.get(label, 0.0)) for label in spec.classes or []}
        sizes.append(row)
    facts = [("task", spec.task), ("target", spec.target), ("split", split_words)]
    sections = [
        Section("Every column and what became of it", table=pd.DataFrame(rows)),
        Section("Splits" + (" and class balance" if spec.task == "classification" else ""), table=pd.DataFrame(sizes)),
    ]
    log_card("featurize", f"features of {spec.target}", facts, sections)


def tune_card(board: pd.DataFrame, figures: Path, best: dict[str, Any], metric: str, facts: list) -> None:
    sections = [
        Section("Leaderboard", f"Trials by validation {metric}, best first.", table=board),
        Section("Loss history", images=[figures / "loss_history.svg"]),
        Section("Hyperparameters against the loss", images=[figures / "hyperparams_vs_loss.svg"]),
    ]
    title = f"best {best['model']}, validation {metric} = {best['value']:.4f}"
    log_card("tune", title, facts, sections)


def model_weights(model: Any) -> pd.DataFrame | None:
    """The fitted model's own importances (trees) or coefficient sizes (linear), by encoded feature, if any."""
    import numpy as np

    try:
        final = model[-1]
        names = list(model[:-1].get_feature_names_out())
    except Exception:  # a step without feature names: nothing to show
        return None
    if hasattr(final, "feature_importances_"):
        values, what = np.asarray(final.feature_importances_), "importance"
    elif hasattr(final, "coef_"):
        values, what = np.abs(np.atleast_2d(final.coef_)).mean(axis=0), "mean |coefficient|"
    else:
        return None
    if len(values) != len(names):
        return None
    table = pd.DataFrame({"feature": names, what: values})
    return table.sort_values(what, ascending=False, kind="stable").head(30).reset_index(drop=True)


def train_card(info: str, params: dict[str, str], validation: dict[str, float], prefix: str, model: Any) -> None:
    weights = model_weights(model)
    sections = [
        Section("Parameters", table=pd.DataFrame({"param": list(params), "value": list(params.values())})),
        Section(
            "Validation metrics" + (" (in-sample: the model saw these rows)" if "in_sample" in prefix else ""),
            table=pd.DataFrame({"metric": [prefix + k for k in validation], "value": list(validation.values())}),
        ),
        Section(
            "Feature importances",
            "The model's own weights by encoded feature (evaluate's card has the permutation importance of each "
            "raw column)."
            if weights is not None
            else "This model family has no weights to show.",
            table=weights,
        ),
    ]
    log_card("train", info, [], sections)


def evaluate_card(scored: Any, registered: tuple[str, str, str, str], gates: list, plots: dict, card: str) -> None:
    """registered: (name, version, alias, decision)."""
    metric, (name, version, alias, decision) = scored.metric, registered
    facts = [
        (f"test {metric}", figure(scored.test_scores, metric)),
        ("dummy baseline", figure(scored.baseline_scores, metric)),
        ("strong baseline", figure(scored.strong_scores, metric)),
        ("registered", f"{name} version {version} as {alias}"),
        ("decision", decision),
    ]
    gate_table = pd.DataFrame(
        [{"gate": gate, "outcome": "passed" if passed else "FAILED", "why": why} for gate, passed, why in gates]
    )
    sections = [
        Section("Test metrics against the baselines", table=scored.comparison),
        Section("Gates", table=gate_table if len(gate_table) else None, text="" if len(gate_table) else "none set"),
        Section("Plots", images=[plots[plot] for plot in sorted(plots)]),
        Section("The model card", pre=card),
    ]
    log_card("evaluate", f"{name} version {version}", facts, sections)


def predict_card(rows: int, data_uri: str, model_uri: str, metrics: dict[str, float]) -> None:
    shares = {k: v for k, v in metrics.items() if k not in ("n_rows", "n_input_columns")}
    facts = [("rows scored", f"{rows:,}"), ("data", redact_uri(data_uri)), ("model", model_uri)]
    table = pd.DataFrame({"figure": list(shares), "value": list(shares.values())}) if shares else None
    log_card("predict", f"{rows:,} rows scored", facts, [Section("Predictions", table=table)])


def monitor_card(table: pd.DataFrame, figures: Path, verdict: str, facts: list) -> None:
    sections = [
        Section("Drift per column", table=table),
        Section("Distributions: training rows against the batch", images=sorted(figures.glob("*.svg"))),
    ]
    log_card("monitor", verdict, facts, sections)


def reproduce_card(table: pd.DataFrame, run_id: str, source: str, commit: str, mismatches: int) -> None:
    facts = [("main run", run_id), ("source", redact_uri(source)), ("commit", commit)]
    verdict = "every figure matches" if mismatches == 0 else f"{mismatches} figures differ"
    log_card("reproduce", verdict, facts, [Section("Figures, the original run's against the re-run's", table=table)])


def main_card(results: list[Any], registered: dict[str, str], decision: str) -> None:
    steps = [
        {"step": r.step, "status": r.status, "seconds": r.seconds, "cached": r.cached, "run_id": r.run_id}
        for r in results
    ]
    table = pd.DataFrame(
        [
            {
                "step": r.step,
                "status": r.status,
                "seconds": r.seconds,
                "key metric": r.key_metric,
                "cache": "cached" if r.cached else "ran",
                "run id": r.run_id,
            }
            for r in results
        ]
    )
    alias = f"@{registered['alias']}" if registered["alias"] else "(not champion)"
    facts = [("registered", f"{registered['name']} version {registered['version']} {alias}"), ("decision", decision)]
    sections = [
        Section("The pipeline", svg=pipeline_diagram(steps)),
        Section("Steps", "Each step's run id: open it in the MLflow UI (its card is card.html there).", table=table),
    ]
    log_card("main", "the pipeline", facts, sections)

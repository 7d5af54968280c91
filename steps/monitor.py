"""Step `monitor`: does a new batch still look like the data the champion was trained on?

Per feature: numeric columns by the two-sample Kolmogorov-Smirnov test and the population stability
index (PSI), categorical columns by a chi-square test of the category counts and PSI; changes in the
share of missing values and in the schema (type changes, unseen categories); the same tests on the
model's predictions; and, when the batch has labels, the live metric against the evaluated one.
The batch is read in pieces: counts, missing shares, categories and PSI cover every row, the KS test,
the figures and the live metric a seeded sample of at most `sample_rows` rows (steps/lib/drift.py).
"""

from __future__ import annotations

# Before MLflow, as it loads the model with skops: see steps/lib/model_loading.py, SCAN_BEFORE_MLFLOW.
import scipy.special  # noqa: F401

# isort: split

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from steps.lib.artifacts import write_json
from steps.lib.charts import BLUE, INK, ORANGE, RED, Panel, Series, bar_rows_svg, bin_edges, grid_svg
from steps.lib.console import say
from steps.lib.drift import MISSING_CHANGE, TIMES, BatchProfile, DriftRule, as_numbers, drift_table, is_numeric
from steps.lib.errors import PipelineError
from steps.lib.features import CLASSIFICATION, FeatureSpec, infinite_rows, quoted
from steps.lib.keys import key_parts, unused_name
from steps.lib.metrics import among_classes, greater_is_better, is_number
from steps.lib.model_loading import load_model
from steps.lib.models import metrics_on
from steps.lib.names import DRIFT_DIR, EVALUATE_RUN_TAG, FIGURES_DIR
from steps.lib.registry import DEFAULT_REGISTERED_MODEL_NAME, model_version_of, resolve_model_uri
from steps.lib.runner import INT, parse_bool, run_cli, step_run, unset_is_none
from steps.lib.scoring import signature_columns
from steps.lib.splits import features_and_target, read_splits
from steps.lib.step_cards import monitor_card
from steps.lib.story import code, describe
from steps.lib.tables import read_batches
from steps.lib.text_values import to_numbers
from steps.lib.uris import redact_uri

logger = logging.getLogger("steps.monitor")
PREDICTION = "prediction"
DEFAULT_SAMPLE_ROWS = 100_000
DEFAULT_BATCH_ROWS = 100_000
MAX_LEVELS_SHOWN = 10  # a column of many levels: its commonest, in training or in the batch


# --------------------------------------------------------------------------- the reference


@dataclass
class Reference:
    model_uri: str
    version: str
    train: pd.DataFrame
    spec: FeatureSpec
    metric: str | None
    evaluated: float | None
    train_with_predictions: pd.DataFrame | None = None


def find_reference(client: MlflowClient, uri: str) -> Reference:
    """The training rows of the version's source (train) run, and the metric evaluate measured."""
    version = model_version_of(client, uri)
    train_run = client.get_run(version.run_id)
    splits_uri = train_run.data.tags.get("splits_uri") or train_run.data.params.get("splits_uri")
    if not splits_uri:
        raise PipelineError(f"{uri}: its source run {version.run_id} has no splits_uri param; not a train run")
    splits, spec = read_splits(splits_uri, parts=("train",))
    metric = evaluated = None
    evaluate_run_id = version.tags.get(EVALUATE_RUN_TAG)
    if evaluate_run_id:
        evaluate_run = client.get_run(evaluate_run_id)
        metric = evaluate_run.data.tags.get("metric")
        evaluated = evaluate_run.data.metrics.get(f"test_{metric}")
    return Reference(uri, str(version.version), splits.train, spec, metric, evaluated)


def check_columns(batch: pd.DataFrame, spec: FeatureSpec) -> bool:
    """The batch has the model's input columns, nothing else but (optionally) the label. True if labelled."""
    if batch.empty:
        raise PipelineError("the batch has no rows; pass a table with at least one row")
    missing = [c for c in spec.input_columns if c not in batch.columns]
    if missing:
        raise PipelineError(
            f"the batch lacks column(s) {', '.join(map(repr, missing))} that the model was trained on; add them "
            "(empty where the values are unknown: monitor reports the gaps as drift)"
        )
    extra = [c for c in batch.columns if c not in (*spec.input_columns, spec.target)]
    if extra:
        raise PipelineError(
            f"the batch has column(s) {', '.join(map(repr, extra))} that the model was not trained on; "
            f"expected {', '.join(spec.input_columns)} (and optionally the label {spec.target!r})"
        )
    return bool(spec.target in batch.columns and batch[spec.target].notna().any())


# --------------------------------------------------------------------------- figures


def plot_drift(reference: pd.DataFrame, batch: pd.DataFrame, table: pd.DataFrame, out: Path) -> list[Path]:
    """Reference vs batch distribution per column, and PSI per column against the threshold (SVG files)."""
    panels = []
    for row in table.to_dict("records"):
        name = row["column"]
        title = f"{name} (drift)" if row["drifted"] else name
        colour = RED if row["drifted"] else INK
        ref, cur = reference[name].dropna(), batch[name].dropna()
        if row["kind"] == TIMES:  # no distribution to compare: the days each spans
            days = [
                " - ".join(end.strip()[:10] for end in span.split("..")) or "none"
                for span in (row["span_reference"], row["span_batch"])
            ]
            panels.append(Panel(f"{title}: training -> batch", note=" -> ".join(days), title_colour=colour))
        elif row["kind"] == "numeric" and not row["schema_change"]:
            ref_values = ref.to_numpy(float)
            cur_values = pd.to_numeric(cur, errors="coerce").dropna().to_numpy(float)
            edges = bin_edges(np.concatenate([ref_values, cur_values]))
            if edges is None:
                panels.append(Panel(title, note="no values to bin"))
                continue
            shares = [np.histogram(v[np.isfinite(v)], edges)[0] / max(len(v), 1) for v in (ref_values, cur_values)]
            panels.append(
                Panel(
                    title,
                    edges=edges,
                    series=[Series("training", shares[0].tolist()), Series("batch", shares[1].tolist(), ORANGE)],
                    title_colour=colour,
                )
            )
        else:
            shares = pd.DataFrame(
                {
                    "training": ref.astype(str).value_counts(normalize=True),
                    "batch": cur.astype(str).value_counts(normalize=True),
                }
            ).fillna(0)
            shares = shares.loc[shares.max(axis=1).sort_values(ascending=False).index[:MAX_LEVELS_SHOWN]]
            panels.append(
                Panel(
                    title,
                    levels=[str(level) for level in shares.index],
                    series=[
                        Series("training", shares["training"].tolist()),
                        Series("batch", shares["batch"].tolist(), ORANGE),
                    ],
                    title_colour=colour,
                )
            )
    if panels:
        panels[0].legend = [("training", BLUE, "box"), ("batch", ORANGE, "box")]
    distributions = out / "distributions.svg"
    distributions.write_text(grid_svg(panels, columns=3, panel_size=(320, 224)), encoding="utf-8")

    tested = table[table["kind"] != TIMES]
    rows = [
        (str(name), float(0 if pd.isna(psi) else psi), 0.0, RED if drifted else BLUE)
        for name, psi, drifted in zip(tested["column"], tested["psi"], tested["drifted"], strict=True)
    ]
    bars = out / "psi.svg"
    bars.write_text(bar_rows_svg(Panel("PSI per column", rows=rows, x_label="PSI (batch vs training)")), "utf-8")
    return [distributions, bars]


# --------------------------------------------------------------------------- the step


def check_rule(p_value: float, min_psi: float) -> DriftRule:
    if not 0 < p_value < 1:
        raise PipelineError(f"p_value must be between 0 and 1; got {p_value}")
    if min_psi < 0:
        raise PipelineError(f"min_psi must be 0 or more; got {min_psi}")
    return DriftRule(p_value, min_psi)


def reference_predictions(model: Any, reference: Reference, batch_rows: int) -> tuple[pd.DataFrame, str]:
    """The training rows with the model's predictions, and the column that holds them (`prediction`, or
    `prediction_2`, ... beside a data column of that name); predicted `batch_rows` rows at a time, as the batch."""
    spec = reference.spec
    frame = reference.train.copy(deep=False)  # one more column: the training rows are not copied
    prediction = unused_name(PREDICTION, [*frame.columns, *spec.input_columns, spec.target])
    features = reference.train[spec.input_columns]
    # in pieces, as the batch is: the pipeline's encoded copy of every training row at once cost ~300 MB at 600,000
    pieces = [model.predict(features.iloc[start : start + batch_rows]) for start in range(0, len(features), batch_rows)]
    frame[prediction] = np.concatenate(pieces) if pieces else model.predict(features)
    for column in spec.numbers_in_text():  # $1,234.50 as the model reads it: tallied as numbers
        frame[column] = to_numbers(frame[column]).to_numpy()
    return frame, prediction


def with_predictions(
    model: Any, spec: FeatureSpec, batch: pd.DataFrame, prediction: str, true_false: tuple[str, ...] = ()
) -> pd.DataFrame:
    """The batch, its numeric columns as numbers and its `true_false` columns (read as text) as True/False, with
    the model's predictions; the predictions missing when a numeric column does not hold numbers (that column and
    those after it stay text) or a true/false column holds another value: the tallies report it."""
    batch = batch.copy()
    in_text = spec.numbers_in_text()
    for column in in_text:  # $1,234.50 as the model reads it (and takes again as numbers); `n/a`: missing
        batch[column] = to_numbers(batch[column]).to_numpy()
    for column in (c for c in spec.numeric if c not in in_text):
        numbers = batch[column] if is_numeric(batch[column]) else as_numbers(batch[column])
        if numbers is None:  # a schema change, reported by the drift table
            batch[prediction] = None
            return batch
        batch[column] = numbers  # parsed once: the tallies take them as they are
    for column in spec.numeric:  # numbers by now; infinities refused as predict refuses them
        if infinite_rows(batch[column]).size:
            raise PipelineError(
                f"column '{column}' holds infinite values; the model takes numbers and missing values: replace them "
                "with numbers, or leave the cells empty"
            )
    clean = True
    for column in true_false:
        batch[column], only_flags = as_true_false(batch[column])
        clean = clean and only_flags
    if not clean:  # `maybe` in a True/False column: an unseen category in the drift table
        batch[prediction] = None
        return batch
    batch[prediction] = model.predict(batch[spec.input_columns])
    return batch


TRUE_FALSE = dict.fromkeys(("1", "True", "TRUE", "true"), True) | dict.fromkeys(("0", "False", "FALSE", "false"), False)


def as_true_false(values: pd.Series) -> tuple[pd.Series, bool]:
    """Text as True/False, spelled as pyarrow reads them (missing values stay missing, another value stays as it
    is), and whether there was no other value. Without missing or other values the column is bool, as the model
    was fitted on."""
    if pd.api.types.is_bool_dtype(values):
        return values, True
    flags = values.map(TRUE_FALSE)
    present, other = values.notna(), flags.isna() & values.notna()
    if present.all() and not other.any():
        return flags.astype(bool), True
    return flags.astype(object).where(~other, values).where(present, None), not other.any()


def read_types(pyfunc: Any, spec: FeatureSpec) -> dict[str, str]:
    """The types a CSV batch is read with in every block, not guessed from its first: as text, the columns the
    model's signature types as text or true/false (a category or a time that looks numeric, or like a date,
    early in the file stays text, so a different value later is tallied, not a failed read; with_predictions
    turns true/false text into True/False, as the model was fitted on) and the numeric ones (text in one is a
    reported schema change); the label as the training rows had it (numbers, true/false or text)."""
    text = [name for name, kind in signature_kinds(pyfunc) if kind == "string"]  # none: the first block's types
    numeric_labels = spec.task != CLASSIFICATION or all(is_number(c) for c in spec.classes or ["?"])
    true_false = spec.task == CLASSIFICATION and all(isinstance(c, (bool, np.bool_)) for c in spec.classes or ["?"])
    as_text = dict.fromkeys([*text, *true_false_columns(pyfunc), *spec.numeric], "string")
    return as_text | {spec.target: "double" if numeric_labels else "boolean" if true_false else "string"}


def true_false_columns(pyfunc: Any) -> tuple[str, ...]:
    """The columns the model's signature types as true/false (monitor reads them as text)."""
    return tuple(name for name, kind in signature_kinds(pyfunc) if kind == "boolean")


def signature_kinds(pyfunc: Any) -> list[tuple[str, str]]:
    """The model signature's (column, type) pairs; none for a model without a signature."""
    try:
        return signature_columns(pyfunc)
    except PipelineError:
        return []


def profile_batch(
    data_uri: str,
    model: Any,
    reference: Reference,
    columns: tuple[list[str], list[str], str],
    sizes: tuple[int, int],
    types: dict[str, str],
    true_false: tuple[str, ...] = (),
) -> tuple[BatchProfile, bool]:
    """The batch read `batch_rows` rows at a time (with `types`), each piece predicted and tallied; whether it
    has labels.

    `columns`: the numeric and the categorical columns to tally, and the one that holds the predictions;
    `true_false`: the columns read as text that the model takes as True/False.
    """
    spec, (numeric, categorical, prediction), (batch_rows, sample_rows) = reference.spec, columns, sizes
    profile = BatchProfile(
        reference.train_with_predictions, numeric, categorical, sample_rows, seed=0, times=spec.time_formats()
    )
    labelled = False
    plain = [c for c in spec.numeric if c not in spec.numbers_in_text()]  # those the model reads as it finds them
    for piece in read_batches(data_uri, types, batch_rows, text_numbers=plain):
        if piece.empty and profile.rows:
            continue
        labelled = check_columns(piece, spec) or labelled
        profile.add(with_predictions(model, spec, piece, prediction, true_false))
    return profile, labelled


def live_performance(model: Any, reference: Reference, batch: pd.DataFrame) -> dict[str, Any]:
    """The metric on the batch's labelled rows (of the sample) beside the evaluated one; empty if it cannot be
    computed."""
    spec = reference.spec
    if spec.target not in batch.columns:
        return {}
    rows = batch[batch[spec.target].notna()]
    known = among_classes(rows[spec.target], spec.classes) if spec.task == CLASSIFICATION and spec.classes else None
    unseen = {} if known is None or known.all() else {"n_rows_of_unseen_classes": int((~known).sum())}
    if unseen:  # a class the model was never trained on: no score can count its rows
        new = quoted(sorted(map(str, rows.loc[~known, spec.target].unique())))
        logger.warning(
            "the batch's labels include class(es) the model was not trained on (%s: %d rows); the live %s is on the "
            "other %d labelled rows",
            *(new, unseen["n_rows_of_unseen_classes"], reference.metric, int(known.sum())),
        )
        rows = rows[known]
    if rows.empty or not reference.metric:
        return unseen
    features, labels = features_and_target(rows, spec)
    labels = labels.infer_objects()  # True/False read beside gaps arrive as objects: scikit-learn's "unknown" type
    live = metrics_on(model, features, labels, spec.task, only=reference.metric).get(reference.metric)
    if live is None:
        return unseen
    change = live - reference.evaluated if reference.evaluated is not None else math.nan
    worse = -change if greater_is_better(reference.metric) else change
    return unseen | {
        "metric": reference.metric,
        f"live_{reference.metric}": live,
        f"evaluated_{reference.metric}": reference.evaluated,
        "live_minus_evaluated": change,
        "performance_worse_by": worse,
    }


def drift_metrics(table: pd.DataFrame, summary: dict[str, Any]) -> dict[str, float]:
    """Per column its statistics, and the live performance figures."""
    metrics = {
        "n_rows": summary["n_rows"],
        "n_sampled_rows": summary.get("n_sampled_rows", summary["n_rows"]),
        "n_drifted_columns": len(summary["drifted_columns"]),
    }
    keys = key_parts(table["column"])  # a column such as `Income ($)` is no metric key as it is
    for row in table.to_dict("records"):
        for key in ("psi", "p_value", "statistic", "missing_change"):
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                metrics[f"drift.{keys[row['column']]}.{key}"] = float(value)
    return metrics | {
        k: float(v)
        for k, v in summary.items()
        if k.startswith(("live_", "evaluated_", "performance_", "n_rows_of_unseen_")) and v is not None
    }


def log_drift(
    table: pd.DataFrame,
    summary: dict[str, Any],
    labelled: bool,
    frames: tuple[pd.DataFrame, pd.DataFrame],
    verdict: str,
) -> None:
    """Metrics, tags, the drift table (CSV and MLflow table), the summary and the figures, the card (`verdict`)."""
    mlflow.log_metrics(drift_metrics(table, summary))
    mlflow.set_tags(
        {
            "drift_detected": str(summary["drift_detected"]).lower(),
            "drifted_columns": ",".join(summary["drifted_columns"]),
            "labelled": str(labelled).lower(),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        table.to_csv(out / "drift_table.csv", index=False)
        write_json(out / "summary.json", summary)
        (out / FIGURES_DIR).mkdir()
        plot_drift(*frames, table, out / FIGURES_DIR)
        mlflow.log_artifacts(tmp, DRIFT_DIR)
        monitor_card(table, out / FIGURES_DIR, verdict, [("rows", summary.get("n_rows", "")), ("labelled", labelled)])
    mlflow.log_table(table, artifact_file=f"{DRIFT_DIR}/drift_table.json")


def run_monitor(
    data_uri: str,
    registered_model_name: str = DEFAULT_REGISTERED_MODEL_NAME,
    model_uri: str | None = None,
    fail_on_drift: str | bool = False,
    p_value: float = 0.01,
    min_psi: float = 0.1,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> dict[str, Any]:
    """The whole step inside the active run; returns the summary. Raises after logging if asked to fail on drift.

    `model_uri` None: the registered model's champion; the batch is read `batch_rows` rows at a time, and the
    KS tests, figures and live metric use a seeded sample of at most `sample_rows` of its rows.
    """
    fail = parse_bool("fail_on_drift", fail_on_drift)
    rule = check_rule(p_value, min_psi)
    for name, value in (("sample_rows", sample_rows), ("batch_rows", batch_rows)):
        if value < 1:
            raise PipelineError(f"{name} must be at least 1; got {value}")
    uri = resolve_model_uri(model_uri, registered_model_name)
    reference = find_reference(MlflowClient(), uri)
    mlflow.set_tags({"model_uri": uri, "model_version": reference.version, "data_uri": redact_uri(data_uri)})
    loaded = load_model(uri)
    model, spec = loaded.sklearn, reference.spec
    reference.train_with_predictions, prediction = reference_predictions(model, reference, batch_rows)
    numeric_prediction = is_numeric(reference.train_with_predictions[prediction])
    numeric = [*spec.numeric, *([prediction] if numeric_prediction else [])]
    categorical = [*spec.categorical, *([] if numeric_prediction else [prediction])]
    columns = (numeric, categorical, prediction)
    sizes, types = (batch_rows, sample_rows), read_types(loaded.pyfunc, spec)
    profile, labelled = profile_batch(
        data_uri, model, reference, columns, sizes, types, true_false_columns(loaded.pyfunc)
    )
    table = drift_table(
        reference.train_with_predictions,
        profile,
        numeric,
        categorical,
        rule,
        spec.time_formats(),
        spec.missing_before_split(),
    )
    drifted = table.loc[table["drifted"], "column"].tolist()
    sample = profile.sampled()
    summary: dict[str, Any] = {
        "model_uri": uri,
        "model_version": reference.version,
        "n_rows": profile.rows,
        "n_sampled_rows": len(sample),
        "n_reference_rows": len(reference.train),
        "drift_detected": bool(drifted),
        "drifted_columns": drifted,
        "rule": f"p < {p_value} / {table.attrs['n_tests']} columns (Bonferroni) and PSI >= {min_psi}; "
        f"or missing share changed by >= {MISSING_CHANGE}; or a schema change",
    }
    if labelled and sample[prediction].notna().all():
        summary |= live_performance(model, reference, sample)
    verdict = f"drift in {', '.join(drifted)}" if drifted else "no drift"
    log_drift(table, summary, labelled, (reference.train_with_predictions, sample), verdict)
    logger.info(
        "%s: %d rows against %d training rows of %s v%s",
        verdict,
        profile.rows,
        len(reference.train),
        uri,
        reference.version,
    )
    say(f"monitor: {verdict} ({profile.rows} rows vs {reference.model_uri} v{reference.version})")
    describe(
        f"**monitor**: {verdict} in {profile.rows:,} rows against the {len(reference.train):,} training rows of "
        f"{code(reference.model_uri)} version {reference.version}.",
        "The drift table is `drift/drift_table.csv`.",
    )
    if drifted and fail:
        raise PipelineError(
            f"drift detected in {', '.join(drifted)}; see the run's drift/drift_table.csv (fail_on_drift=true)"
        )
    return summary


@click.command()
@click.option("--data-uri", required=True, help="The new batch, as load: a path, URL, artifact URI or sklearn:<name>.")
@click.option("--registered-model-name", default=DEFAULT_REGISTERED_MODEL_NAME, show_default=True)
@click.option(
    "--model-uri",
    default="auto",
    callback=unset_is_none,
    help="A registered model URI; auto: models:/<name>@champion.",
)
@click.option("--fail-on-drift", default="false", help="true: exit non-zero when drift is found.")
@click.option("--p-value", default=0.01, type=float, help="Significance level, split over the columns.")
@click.option("--min-psi", default=0.1, type=float, help="Smallest PSI that counts as drift.")
@click.option("--sample-rows", default=DEFAULT_SAMPLE_ROWS, type=INT, help="Rows of the KS tests' seeded sample.")
@click.option("--batch-rows", default=DEFAULT_BATCH_ROWS, type=INT, help="Rows read at a time.")
def main(
    data_uri: str,
    registered_model_name: str,
    model_uri: str | None,
    fail_on_drift: str,
    p_value: float,
    min_psi: float,
    sample_rows: int,
    batch_rows: int,
) -> None:
    with step_run("monitor"):
        run_monitor(
            data_uri, registered_model_name, model_uri, fail_on_drift, p_value, min_psi, sample_rows, batch_rows
        )


if __name__ == "__main__":
    run_cli(main, "monitor")

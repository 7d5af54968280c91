"""Step `monitor`: does a new batch still look like the data the champion was trained on?

Per feature: numeric columns by the two-sample Kolmogorov-Smirnov test and the population stability
index (PSI), categorical columns by a chi-square test of the category counts and PSI; changes in the
share of missing values and in the schema (type changes, unseen categories); the same tests on the
model's predictions; and, when the batch has labels, the live metric against the evaluated one.
The tests are scipy's (`scipy.stats.ks_2samp`, `scipy.stats.chi2_contingency`), PSI is the textbook
formula over the reference's deciles.
"""

from __future__ import annotations

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
from steps.lib.errors import PipelineError
from steps.lib.features import FeatureSpec
from steps.lib.keys import key_parts, unused_name
from steps.lib.metrics import greater_is_better
from steps.lib.models import score_model
from steps.lib.names import DRIFT_DIR, EVALUATE_RUN_TAG, FIGURES_DIR
from steps.lib.registry import DEFAULT_REGISTERED_MODEL_NAME, model_version_of, resolve_model_uri
from steps.lib.runner import parse_bool, run_cli, step_run, unset_is_none
from steps.lib.splits import read_splits
from steps.lib.tables import read_data
from steps.lib.uris import redact_uri

logger = logging.getLogger("steps.monitor")
PSI_BINS = 10
PSI_FLOOR = 1e-4  # an empty bin's share, so the logarithm stays finite
MISSING_CHANGE = 0.1  # a change of 10 points in a column's share of missing values is drift
PREDICTION = "prediction"


# --------------------------------------------------------------------------- the statistics


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    ref = np.clip(reference, PSI_FLOOR, None)
    cur = np.clip(current, PSI_FLOOR, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def numeric_drift(reference: pd.Series, current: pd.Series) -> dict[str, float]:
    """KS statistic and p-value, and PSI over the reference's deciles (missing values left out)."""
    from scipy.stats import ks_2samp

    ref, cur = reference.dropna().astype(float).to_numpy(), current.dropna().astype(float).to_numpy()
    if len(ref) == 0 or len(cur) == 0:
        return {"statistic": math.nan, "p_value": math.nan, "psi": math.nan}
    test = ks_2samp(ref, cur)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, PSI_BINS + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    ref_share = np.histogram(ref, edges)[0] / len(ref)
    cur_share = np.histogram(cur, edges)[0] / len(cur)
    return {"statistic": float(test.statistic), "p_value": float(test.pvalue), "psi": psi(ref_share, cur_share)}


def categorical_drift(reference: pd.Series, current: pd.Series) -> dict[str, Any]:
    """Chi-square test of the category counts (reference vs batch), PSI, and categories never seen in training."""
    from scipy.stats import chi2_contingency

    ref, cur = reference.dropna().astype(str), current.dropna().astype(str)
    categories = sorted(set(ref) | set(cur))
    ref_counts = ref.value_counts().reindex(categories, fill_value=0).to_numpy()
    cur_counts = cur.value_counts().reindex(categories, fill_value=0).to_numpy()
    unseen = sorted(set(cur) - set(ref))
    if len(ref) == 0 or len(cur) == 0:
        return {"statistic": math.nan, "p_value": math.nan, "psi": math.nan, "unseen": unseen}
    if len(categories) < 2:
        statistic, p_value = 0.0, 1.0
    else:
        test = chi2_contingency(np.vstack([ref_counts, cur_counts]))
        statistic, p_value = float(test.statistic), float(test.pvalue)
    share = psi(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
    return {"statistic": statistic, "p_value": p_value, "psi": share, "unseen": unseen}


@dataclass(frozen=True)
class DriftRule:
    """A column drifts when its test is significant (Bonferroni over the columns) and its PSI is large enough.

    Both, because each alone misleads: on a large batch a trivial shift is significant, and on a small
    one PSI is noisy (its expected value under no drift grows like bins/rows).
    """

    p_value: float = 0.01
    min_psi: float = 0.1

    def drifts(self, result: dict[str, Any], n_tests: int) -> bool:
        p, share = result.get("p_value"), result.get("psi")
        if p is None or share is None or math.isnan(p) or math.isnan(share):
            return False
        return p < self.p_value / max(n_tests, 1) and share >= self.min_psi


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def as_numbers(series: pd.Series) -> pd.Series | None:
    """The column as numbers, if every present value is one (a CSV column read as text); else None."""
    numbers = pd.to_numeric(series, errors="coerce")
    return None if (numbers.isna() & series.notna()).any() else numbers


def drift_table(
    reference: pd.DataFrame, current: pd.DataFrame, spec: FeatureSpec, rule: DriftRule, prediction: str | None = None
) -> pd.DataFrame:
    """One row per feature, and one for the predictions when both frames hold them in column `prediction`."""
    columns = [*spec.numeric, *spec.categorical] + ([prediction] if prediction is not None else [])
    rows = []
    for name in columns:
        ref, cur = reference[name], current[name]
        kind = "numeric" if name in spec.numeric or (name == prediction and is_numeric(ref)) else "categorical"
        row: dict[str, Any] = {"column": name, "kind": kind}
        schema_change = ""
        if kind == "numeric" and not is_numeric(cur):
            numbers = as_numbers(cur)
            if numbers is None:
                schema_change = f"type changed: numeric in training, {cur.dtype} here"
            else:
                cur = numbers
        if kind == "numeric" and not schema_change:
            row |= {"test": "ks"} | numeric_drift(ref, cur)
        elif kind == "categorical":
            result = categorical_drift(ref, cur)
            unseen = result.pop("unseen")
            row |= {"test": "chi2"} | result
            if unseen:
                schema_change = f"unseen categories: {', '.join(map(str, unseen[:5]))}"
        ref_missing, cur_missing = float(ref.isna().mean()), float(current[name].isna().mean())
        row |= {
            "missing_reference": ref_missing,
            "missing_batch": cur_missing,
            "missing_change": cur_missing - ref_missing,
            "schema_change": schema_change,
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    n_tests = len(table)
    table["drifted"] = [
        rule.drifts(row, n_tests) or abs(row["missing_change"]) >= MISSING_CHANGE or bool(row["schema_change"])
        for row in table.to_dict("records")
    ]
    return table


# --------------------------------------------------------------------------- the reference


@dataclass
class Reference:
    model_uri: str
    version: str
    train: pd.DataFrame
    spec: FeatureSpec
    metric: str | None
    evaluated: float | None


def find_reference(client: MlflowClient, uri: str) -> Reference:
    """The training rows of the version's source (train) run, and the metric evaluate measured."""
    version = model_version_of(client, uri)
    train_run = client.get_run(version.run_id)
    splits_uri = train_run.data.tags.get("splits_uri") or train_run.data.params.get("splits_uri")
    if not splits_uri:
        raise PipelineError(f"{uri}: its source run {version.run_id} has no splits_uri param; not a train run")
    splits, spec = read_splits(splits_uri)
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
        raise PipelineError(f"the batch lacks column(s) {', '.join(map(repr, missing))} that the model was trained on")
    extra = [c for c in batch.columns if c not in (*spec.input_columns, spec.target)]
    if extra:
        raise PipelineError(
            f"the batch has column(s) {', '.join(map(repr, extra))} that the model was not trained on; "
            f"expected {', '.join(spec.input_columns)} (and optionally the label {spec.target!r})"
        )
    return bool(spec.target in batch.columns and batch[spec.target].notna().any())


# --------------------------------------------------------------------------- figures


def plot_drift(reference: pd.DataFrame, batch: pd.DataFrame, table: pd.DataFrame, out: Path) -> list[Path]:
    """Reference vs batch distribution per column, and PSI per column against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table["column"])
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for ax, row in zip(axes.flat, table.to_dict("records"), strict=False):
        name = row["column"]
        ref, cur = reference[name].dropna(), batch[name].dropna()
        if row["kind"] == "numeric" and not row["schema_change"]:
            cur = pd.to_numeric(cur, errors="coerce").dropna()
            bins = np.histogram_bin_edges(np.concatenate([ref.to_numpy(float), cur.to_numpy(float)]), 20)
            ax.hist(ref, bins, density=True, alpha=0.5, label="training")
            ax.hist(cur, bins, density=True, alpha=0.5, label="batch")
        else:
            shares = pd.DataFrame(
                {
                    "training": ref.astype(str).value_counts(normalize=True),
                    "batch": cur.astype(str).value_counts(normalize=True),
                }
            ).fillna(0)
            shares.plot.bar(ax=ax, rot=0, legend=False)
        ax.set_title(
            f"{name}{' (drift)' if row['drifted'] else ''}", fontsize=9, color="crimson" if row["drifted"] else "black"
        )
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.92, hspace=0.5, wspace=0.25)
    distributions = out / "distributions.png"
    fig.savefig(distributions, dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, table["psi"].fillna(0), color=["crimson" if d else "steelblue" for d in table["drifted"]])
    ax.set_xlabel("PSI (batch vs training)")
    ax.invert_yaxis()
    fig.subplots_adjust(left=0.3, right=0.97, bottom=0.2, top=0.95)
    bars = out / "psi.png"
    fig.savefig(bars, dpi=80)
    plt.close(fig)
    return [distributions, bars]


# --------------------------------------------------------------------------- the step


def check_rule(p_value: float, min_psi: float) -> DriftRule:
    if not 0 < p_value < 1:
        raise PipelineError(f"p_value must be between 0 and 1; got {p_value}")
    if min_psi < 0:
        raise PipelineError(f"min_psi must be 0 or more; got {min_psi}")
    return DriftRule(p_value, min_psi)


def with_predictions(
    model: Any, reference: Reference, batch: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """Both frames with the model's predictions, when the batch's numeric columns hold numbers, and the column
    that holds them (`prediction`, or `prediction_2`, ... beside a data column of that name); None if not."""
    spec = reference.spec
    ref_frame, batch_frame = reference.train.copy(), batch.copy()
    if not all(is_numeric(batch[c]) or as_numbers(batch[c]) is not None for c in spec.numeric):
        return ref_frame, batch_frame, None  # predictions need the numbers as numbers
    features = batch[spec.input_columns].copy()
    for column in spec.numeric:
        features[column] = as_numbers(features[column])
    prediction = unused_name(PREDICTION, [*ref_frame.columns, *batch_frame.columns])
    ref_frame[prediction] = model.predict(reference.train[spec.input_columns])
    batch_frame[prediction] = model.predict(features)
    return ref_frame, batch_frame, prediction


def live_performance(model: Any, reference: Reference, batch: pd.DataFrame) -> dict[str, Any]:
    """The metric on the batch's labelled rows beside the evaluated one; empty if it cannot be computed."""
    rows = batch[batch[reference.spec.target].notna()]
    live = score_model(model, rows, reference.spec).get(reference.metric) if reference.metric else None
    if live is None:
        return {}
    change = live - reference.evaluated if reference.evaluated is not None else math.nan
    worse = -change if greater_is_better(reference.metric) else change
    return {
        "metric": reference.metric,
        f"live_{reference.metric}": live,
        f"evaluated_{reference.metric}": reference.evaluated,
        "live_minus_evaluated": change,
        "performance_worse_by": worse,
    }


def drift_metrics(table: pd.DataFrame, summary: dict[str, Any]) -> dict[str, float]:
    """Per column its statistics, and the live performance figures."""
    metrics = {"n_rows": summary["n_rows"], "n_drifted_columns": len(summary["drifted_columns"])}
    keys = key_parts(table["column"])  # a column such as `Income ($)` is no metric key as it is
    for row in table.to_dict("records"):
        for key in ("psi", "p_value", "statistic", "missing_change"):
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                metrics[f"drift.{keys[row['column']]}.{key}"] = float(value)
    return metrics | {
        k: float(v)
        for k, v in summary.items()
        if k.startswith(("live_", "evaluated_", "performance_")) and v is not None
    }


def log_drift(
    table: pd.DataFrame, summary: dict[str, Any], labelled: bool, frames: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    """Metrics, tags, the drift table (CSV and MLflow table), the summary and the figures."""
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
    mlflow.log_table(table, artifact_file=f"{DRIFT_DIR}/drift_table.json")


def run_monitor(
    data_uri: str,
    registered_model_name: str = DEFAULT_REGISTERED_MODEL_NAME,
    model_uri: str | None = None,
    fail_on_drift: str | bool = False,
    p_value: float = 0.01,
    min_psi: float = 0.1,
) -> dict[str, Any]:
    """The whole step inside the active run; returns the summary. Raises after logging if asked to fail on drift.

    `model_uri` None: the registered model's champion.
    """
    fail = parse_bool("fail_on_drift", fail_on_drift)
    rule = check_rule(p_value, min_psi)
    uri = resolve_model_uri(model_uri, registered_model_name)
    reference = find_reference(MlflowClient(), uri)
    mlflow.set_tags({"model_uri": uri, "model_version": reference.version, "data_uri": redact_uri(data_uri)})
    batch = read_data(data_uri)
    labelled = check_columns(batch, reference.spec)
    model = mlflow.sklearn.load_model(uri)
    ref_frame, batch_frame, prediction = with_predictions(model, reference, batch)
    table = drift_table(ref_frame, batch_frame, reference.spec, rule, prediction)
    drifted = table.loc[table["drifted"], "column"].tolist()
    summary: dict[str, Any] = {
        "model_uri": uri,
        "model_version": reference.version,
        "n_rows": len(batch),
        "n_reference_rows": len(reference.train),
        "drift_detected": bool(drifted),
        "drifted_columns": drifted,
        "rule": f"p < {p_value} / {len(table)} columns (Bonferroni) and PSI >= {min_psi}; "
        f"or missing share changed by >= {MISSING_CHANGE}; or a schema change",
    }
    if labelled and prediction is not None:
        summary |= live_performance(model, reference, batch)
    log_drift(table, summary, labelled, (ref_frame, batch_frame))
    verdict = f"drift in {', '.join(drifted)}" if drifted else "no drift"
    logger.info(
        "%s: %d rows against %d training rows of %s v%s",
        verdict,
        len(batch),
        len(reference.train),
        uri,
        reference.version,
    )
    print(f"monitor: {verdict} ({len(batch)} rows vs {reference.model_uri} v{reference.version})", flush=True)
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
def main(
    data_uri: str, registered_model_name: str, model_uri: str | None, fail_on_drift: str, p_value: float, min_psi: float
) -> None:
    with step_run("monitor"):
        run_monitor(
            data_uri,
            registered_model_name=registered_model_name,
            model_uri=model_uri,
            fail_on_drift=fail_on_drift,
            p_value=p_value,
            min_psi=min_psi,
        )


if __name__ == "__main__":
    run_cli(main, "monitor")

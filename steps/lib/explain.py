"""Which raw input columns the model relies on: permutation importance on the test rows.

Each input column is shuffled in turn (5 times, seeded) and the model scored again with the pipeline's own
metric; the importance of a column is how much the score drops. It is computed on the raw columns the served
model takes (the whole sklearn Pipeline is scored), so an encoded column counts once, by its own name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steps.lib.charts import BLUE, Panel, bar_rows_svg
from steps.lib.features import FeatureSpec
from steps.lib.metrics import metric_loss
from steps.lib.models import metrics_on
from steps.lib.splits import features_and_target

IMPORTANCE_ROWS = 10_000  # test rows scored per shuffle at most (a seeded sample): its cost is rows x columns x 5
# Each shuffle scores rows x columns cells, and there are columns x 5 shuffles: past 30 columns the rows shrink so
# that a shuffle costs what 30 columns of 10,000 rows do (the whole grows with the columns, not their square),
# down to MIN_IMPORTANCE_ROWS (fewer rows: a noisier estimate, its sd says how much).
IMPORTANCE_CELLS = 300_000
MIN_IMPORTANCE_ROWS = 1_000
IMPORTANCE_REPEATS = 5
EXPLANATIONS_DIR = "explanations"  # evaluate's artifacts: the CSV and the chart
IMPORTANCE_FILE = "permutation_importance.csv"
IMPORTANCE_PLOT = "permutation_importance.svg"


def metric_scorer(metric: str, task: str):
    """A scikit-learn scorer (greater is better) computing the pipeline's own `metric`."""

    def scorer(estimator: Any, features: pd.DataFrame, labels: pd.Series) -> float:
        return -metric_loss(metric, metrics_on(estimator, features, labels, task, only=metric).get(metric, np.nan))

    return scorer


def importance_rows(columns: int) -> int:
    """How many test rows each shuffle scores for a model of `columns` raw input columns."""
    return min(IMPORTANCE_ROWS, max(MIN_IMPORTANCE_ROWS, IMPORTANCE_CELLS // max(columns, 1)))


def permutation_importance_table(
    model: Any, test: pd.DataFrame, spec: FeatureSpec, metric: str, seed: int, rows: int | None = None
) -> pd.DataFrame:
    """One row per raw input column, most important first: the mean and sd of the drop in `metric`.
    `rows`: test rows scored per shuffle (None: `importance_rows` of the columns)."""
    from sklearn.inspection import permutation_importance

    rows = importance_rows(len(spec.input_columns)) if rows is None else rows
    sample = test.sample(n=rows, random_state=seed) if len(test) > rows else test
    features, labels = features_and_target(sample, spec)
    result = permutation_importance(
        model,
        features,
        labels,
        scoring=metric_scorer(metric, spec.task),
        n_repeats=IMPORTANCE_REPEATS,
        random_state=seed,
        n_jobs=1,
    )
    table = pd.DataFrame(
        {
            "column": list(features.columns),
            "importance": result.importances_mean,
            "sd": result.importances_std,
            "metric": metric,
            "rows": len(sample),
        }
    )
    return table.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)


def plot_importance(table: pd.DataFrame, path: Path, most: int = 20) -> None:
    """A horizontal bar chart (SVG) of the `most` most important columns, with their sd."""
    shown = table.head(most)
    columns = zip(shown["column"], shown["importance"], shown["sd"], strict=True)
    rows = [(str(column), float(value), float(sd), BLUE) for column, value, sd in columns]
    panel = Panel(
        "Permutation importance (raw input columns)",
        rows=rows,
        x_label=f"drop in test {table['metric'].iloc[0]} when the column is shuffled",
    )
    path.write_text(bar_rows_svg(panel), encoding="utf-8")

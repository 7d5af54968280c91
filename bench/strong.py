"""How often the champion holds against a default HistGradientBoosting fitted on the same rows.

Issue 12, item 8. For each table, on one fresh store: `mlflow run . -e main -P max_evals=N` (env manager local,
its own registered model name, every other param main's default), then the evaluate run's figures on the test
split: the model's decision metric, the dummy baseline's, and the strong baseline's (a default
HistGradientBoosting with the pipeline's own bounded encoding, fitted on the same rows as the model: train's
`refit`). A table counts as a win when evaluate's own tag `beats_strong_baseline` is true (strictly better on the
decision metric); the relative gap is printed beside it, and a table where the model is not worse (a gap of
zero or more: when the search's winner is HistGradientBoosting's defaults, the two are the same model) counts
as level.

Tables (seeded; each a different shape of problem, with the names and mess of users' tables):
  churn      binary `Yes`/`No`; tenure, charges with missing values, contract and payment categoricals, 40
             regions; an interaction (new customers on high charges leave)
  credit     binary `<=50K`/`>50K`, imbalanced, 1 % of labels missing; `Income ($)`, `seniority (years)`, an
             employer column of ~3,000 levels that carries signal (the high-cardinality encoding matters)
  prices     regression; a diamond-like price: a power of the weight, ordinal cut / colour / clarity levels,
             multiplicative noise
  demand     regression; units sold by an ISO date as text (weekday and month seasonality: the date features
             matter), 200 stores of their own size, promotions, temperature
  segments   four classes, numerics of make_classification, a channel that shifts the class
  linear     binary; 30 weak numerics, a logistic-linear label (a linear model's home ground)
and, with --bundled, scikit-learn's own real tables: breast_cancer, wine, diabetes (through `sklearn:<name>`).

    python bench/strong.py                       # six generated tables of 10,000 rows, max_evals 8
    python bench/strong.py --bundled             # and the three bundled ones
    python bench/strong.py --tables credit --param refit=train
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_DIR = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("mlruns", "mlflow.db", "mlartifacts", ".venv", "__pycache__", ".pytest_cache")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def churn(rows: int, rng: np.random.Generator) -> tuple[pd.DataFrame, str]:
    tenure = rng.integers(0, 72, rows)
    charges = rng.normal(65, 25, rows).clip(18, 120).round(2)
    contract = rng.choice(["month-to-month", "one year", "two year"], rows, p=[0.55, 0.25, 0.2])
    payment = rng.choice(["electronic check", "mailed check", "bank transfer", "credit card"], rows)
    region = np.array([f"region {r:02d}" for r in rng.integers(0, 40, rows)])
    region_effect = rng.normal(0, 0.4, 40)[np.array([int(r[-2:]) for r in region])]
    logit = (
        -1.2
        + 1.4 * (contract == "month-to-month")
        - 0.035 * tenure
        + 0.015 * (charges - 65)
        + 1.6 * ((tenure < 6) & (charges > 80))
        + 0.5 * (payment == "electronic check")
        + region_effect
    )
    frame = pd.DataFrame(
        {
            "tenure (months)": tenure,
            "Monthly charges ($)": charges,
            "contract": contract,
            "payment method": payment,
            "region": region,
        }
    )
    frame.loc[rng.random(rows) < 0.05, "Monthly charges ($)"] = np.nan
    frame["Churn"] = np.where(rng.random(rows) < _sigmoid(logit), "Yes", "No")
    return frame, "Churn"


def credit(rows: int, rng: np.random.Generator) -> tuple[pd.DataFrame, str]:
    employers = rng.zipf(1.4, rows) % 3000
    employer_effect = rng.normal(0, 0.8, 3000)
    education = rng.integers(0, 8, rows)
    income = rng.gamma(2.0, 25_000, rows).round(0)
    seniority = rng.integers(0, 40, rows)
    logit = -2.6 + employer_effect[employers] + 0.3 * education + income / 60_000 + 0.03 * seniority
    frame = pd.DataFrame(
        {
            "Income ($)": income,
            "seniority (years)": seniority,
            "education": [f"level {e}" for e in education],
            "employer": [f"employer #{e:04d}" for e in employers],
            "hours/week": rng.normal(40, 8, rows).round(0),
        }
    )
    frame.loc[rng.random(rows) < 0.04, "seniority (years)"] = np.nan
    label = np.where(rng.random(rows) < _sigmoid(logit), ">50K", "<=50K").astype(object)
    label[rng.random(rows) < 0.01] = None
    frame["income class"] = label
    return frame, "income class"


def prices(rows: int, rng: np.random.Generator) -> tuple[pd.DataFrame, str]:
    carat = rng.lognormal(-0.4, 0.45, rows).round(2)
    cut, color, clarity = (rng.integers(0, n, rows) for n in (5, 7, 8))
    log_price = 8.4 + 1.75 * np.log(carat) + 0.05 * cut - 0.08 * color + 0.09 * clarity + rng.normal(0, 0.15, rows)
    frame = pd.DataFrame(
        {
            "carat": carat,
            "cut": np.array(["Fair", "Good", "Very Good", "Premium", "Ideal"])[cut],
            "color": np.array(list("DEFGHIJ"))[color],
            "clarity": np.array(["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"])[clarity],
            "depth (%)": rng.normal(61.7, 1.4, rows).round(1),
            "table (%)": rng.normal(57.4, 2.2, rows).round(0),
            "price ($)": np.exp(log_price).round(0),
        }
    )
    return frame, "price ($)"


def demand(rows: int, rng: np.random.Generator) -> tuple[pd.DataFrame, str]:
    days = rng.integers(0, 730, rows)
    dates = pd.Timestamp("2023-01-01") + pd.to_timedelta(days, unit="D")
    store = rng.integers(0, 200, rows)
    size = rng.lognormal(0, 0.5, 200)
    promo = rng.random(rows) < 0.2
    weekend = dates.day_of_week.to_numpy() >= 5
    season = 1 + 0.3 * np.sin(2 * np.pi * (dates.month.to_numpy() - 3) / 12)
    temperature = (12 + 10 * np.sin(2 * np.pi * (days - 100) / 365) + rng.normal(0, 3, rows)).round(1)
    units = 40 * size[store] * season * (1 + 0.35 * weekend) * (1 + 0.5 * promo) + rng.normal(0, 5, rows)
    frame = pd.DataFrame(
        {
            "date": dates.strftime("%Y-%m-%d"),
            "store": [f"S{s:03d}" for s in store],
            "on promotion": np.where(promo, "yes", "no"),
            "temperature (°C)": temperature,
            "units sold": units.clip(0).round(0),
        }
    )
    return frame, "units sold"


def segments(rows: int, rng: np.random.Generator) -> tuple[pd.DataFrame, str]:
    from sklearn.datasets import make_classification

    seed = int(rng.integers(0, 2**31))
    features, labels = make_classification(
        rows, 12, n_informative=6, n_classes=4, n_clusters_per_class=2, random_state=seed
    )
    frame = pd.DataFrame(features.round(4), columns=[f"f{i}" for i in range(12)])
    channel = rng.integers(0, 3, rows)
    shifted = np.where(rng.random(rows) < 0.25, (labels + channel) % 4, labels)
    frame["channel"] = np.array(["web", "store", "phone"])[channel]
    frame["segment"] = np.array(["bronze", "silver", "gold", "platinum"])[shifted]
    return frame, "segment"


def linear(rows: int, rng: np.random.Generator) -> tuple[pd.DataFrame, str]:
    features = rng.normal(size=(rows, 30))
    weights = rng.normal(0, 0.25, 30)
    frame = pd.DataFrame(features.round(4), columns=[f"signal {i}" for i in range(30)])
    frame["responded"] = np.where(rng.random(rows) < _sigmoid(features @ weights), "responded", "ignored")
    return frame, "responded"


GENERATED: dict[str, Callable[[int, np.random.Generator], tuple[pd.DataFrame, str]]] = {
    "churn": churn,
    "credit": credit,
    "prices": prices,
    "demand": demand,
    "segments": segments,
    "linear": linear,
}
BUNDLED = ("breast_cancer", "wine", "diabetes")


def run_main(project: Path, env: dict[str, str], params: dict[str, str]) -> float:
    command = ["mlflow", "run", ".", "-e", "main", "--env-manager", "local"]
    command += [x for key, value in params.items() for x in ("-P", f"{key}={value}")]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"main failed on {params['data_uri']}:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def outcome(store: str, model_name: str) -> dict[str, object]:
    """The newest main's evaluate and train runs for this registered model: the figures of the comparison."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    evaluate = client.search_runs(
        experiments,
        f"tags.`pipeline.step` = 'evaluate' and tags.`registered_model.name` = '{model_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    metric = evaluate.data.tags["metric"]
    train = client.get_run(client.get_run(evaluate.data.tags["mlflow.parentRunId"]).data.tags["steps.train.run_id"])
    figures = evaluate.data.metrics
    return {
        "metric": metric,
        "family": train.data.tags["model_family"],
        "refit": train.data.tags["refit"],
        "model": figures[f"test_{metric}"],
        "dummy": figures[f"baseline_test_{metric}"],
        "strong": figures[f"strong_baseline_test_{metric}"],
        "beats": evaluate.data.tags["beats_strong_baseline"] == "true",
        "alias": evaluate.data.tags["registered_model.alias"],
    }


def relative_gap(metric: str, model: float, strong: float) -> float:
    """How much better the model is than the strong baseline, as a share of the baseline (positive: better)."""
    from steps.lib.metrics import greater_is_better

    gap = (model - strong) if greater_is_better(metric) else (strong - model)
    return gap / abs(strong) if strong else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="rows of each generated table")
    parser.add_argument("--max-evals", type=int, default=8)
    parser.add_argument("--tables", default=",".join(GENERATED), help="comma-separated generated tables to run")
    parser.add_argument("--bundled", action="store_true", help="also scikit-learn's breast_cancer, wine, diabetes")
    parser.add_argument("--seed", type=int, default=0, help="the tables' seed")
    parser.add_argument("--param", action="append", default=[], help="more -P for main, e.g. refit=train")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    chosen = [name for name in args.tables.split(",") if name]
    unknown = [name for name in chosen if name not in GENERATED]
    if unknown:
        parser.error(f"unknown table(s) {', '.join(unknown)}; use some of {', '.join(GENERATED)}")
    sys.path.insert(0, str(PROJECT_DIR))
    work = Path(tempfile.mkdtemp(prefix="bench-strong-"))
    try:
        project = work / "project"
        shutil.copytree(PROJECT_DIR, project, ignore=IGNORE)
        store = f"sqlite:///{work / 'mlflow.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_TRACKING_URI": store}
        extra = dict(param.split("=", 1) for param in args.param)
        tables: list[tuple[str, str, str | None]] = []  # name, data_uri, target (None: the bundled table's own)
        for index, name in enumerate(chosen):
            frame, target = GENERATED[name](args.rows, np.random.default_rng([args.seed, index]))
            path = work / f"{name}.csv"
            frame.to_csv(path, index=False)
            tables.append((name, str(path), target))
        tables += [(name, f"sklearn:{name}", None) for name in BUNDLED] if args.bundled else []
        print(f"main with max_evals={args.max_evals}" + "".join(f", {p}" for p in args.param))
        header = f"{'table':<14} {'metric':<9} {'champion family':<24} {'model':>9} {'strong':>9} {'dummy':>9}"
        print(f"{header} {'gap':>7} {'beats':>6} {'alias':>11} {'seconds':>8}")
        wins = level = 0
        for name, data_uri, target in tables:
            params = {"data_uri": data_uri, "max_evals": str(args.max_evals), "registered_model_name": name}
            params |= ({"target": target} if target else {}) | extra
            seconds = run_main(project, env, params)
            got = outcome(store, name)
            gap = relative_gap(str(got["metric"]), float(got["model"]), float(got["strong"]))
            wins, level = wins + bool(got["beats"]), level + (gap >= 0)
            print(
                f"{name:<14} {got['metric']:<9} {got['family']:<24} {got['model']:>9.4f} {got['strong']:>9.4f} "
                f"{got['dummy']:>9.4f} {gap:>+7.2%} {'yes' if got['beats'] else 'no':>6} {got['alias']:>11} "
                f"{seconds:>8.1f}",
                flush=True,
            )
        refit = extra.get("refit", "main's default")
        print(
            f"the champion beats the strong baseline on {wins} of {len(tables)} tables, and is at least level with it "
            f"on {level} (refit: {refit})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

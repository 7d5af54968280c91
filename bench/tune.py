"""Benchmark `tune` against a bare hyperopt loop and against a subprocess per trial, in one run.

(a) bare: hyperopt + scikit-learn, no MLflow at all;
(b) ours: `run_tune` in process (nested trial runs, batched logging, figures, artifacts);
(c) MLflow's `hyperparam` example pattern: one `mlflow.projects.run` subprocess of `train` per trial.
Same data, same space, same seed, same number of evals. Prints wall times and the ratios b/a and c/b.

    python bench/tune.py                                  # iris, 50 evals, all families
    python bench/tune.py --rows 100000 --models hist_gradient_boosting --evals 20 --skip-subprocess
    python bench/tune.py --rows 100000 --models logistic_regression --parallel   # speed-up at parallelism 2
    python bench/tune.py --rows 30000 --models hist_gradient_boosting --evals 16 --algo random --parallel \
        --skip-subprocess                                 # the same 16 configurations at parallelism 1 and 2
    python bench/tune.py --tradeoff                       # best loss after N evals vs batch size
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow
import numpy as np
import pandas as pd
from hyperopt import STATUS_OK, Trials, anneal, fmin, rand, tpe

from steps.lib.features import FeatureSpec, build_feature_spec
from steps.lib.metrics import metric_loss
from steps.lib.models import MODEL_FAMILIES, fit_model, score_model
from steps.lib.names import PARENT_TAG
from steps.lib.search import run_search
from steps.lib.search_options import SearchConfig, TuneOptions, parse_models
from steps.lib.search_space import build_search_space, task_families
from steps.lib.splits import Splits, split_frame
from steps.lib.tables import load_bundled_frame, write_parquet
from steps.tune import run_tune

PROJECT_DIR = Path(__file__).resolve().parents[1]
METRIC = "f1_macro"


def make_data(rows: int) -> pd.DataFrame:
    """iris, or a generated classification table of `rows` rows (20 numeric features, 3 classes)."""
    if rows == 0:
        return load_bundled_frame("iris")[0]
    from sklearn.datasets import make_classification

    features, labels = make_classification(rows, 20, n_informative=8, n_classes=3, random_state=0)
    frame = pd.DataFrame(features, columns=[f"x{i}" for i in range(20)])
    frame["species"] = np.array(["a", "b", "c"])[labels]
    return frame


ALGOS = {"tpe": tpe.suggest, "random": rand.suggest, "anneal": anneal.suggest}


def bare(splits: Splits, spec: FeatureSpec, families: list[str], evals: int, seed: int, algo: str = "tpe") -> float:
    """(a) hyperopt + scikit-learn alone."""

    def objective(sample):
        family = MODEL_FAMILIES[sample["model"]]
        params = family.resolve({k: v for k, v in sample.items() if k != "model"})
        value = score_model(fit_model(splits, spec, family, params, seed), splits.validation, spec)[METRIC]
        return {"loss": metric_loss(METRIC, value), "status": STATUS_OK}

    started = time.perf_counter()
    fmin(
        objective,
        build_search_space(spec.task, families),
        ALGOS[algo],
        evals,
        trials=Trials(),
        rstate=np.random.default_rng(seed),
        show_progressbar=False,
    )
    return time.perf_counter() - started


def ours(splits_uri: str, families: list[str], evals: int, seed: int, parallelism: int = 1, algo: str = "tpe") -> float:
    """(b) our tune step, in process, with its tracking: nested trial runs, figures, artifacts."""
    started = time.perf_counter()
    with mlflow.start_run(run_name="tune"):
        options = TuneOptions(
            max_evals=evals, metric=METRIC, algo=algo, models=tuple(families), parallelism=parallelism
        )
        run_tune(splits_uri, options=options, seed=seed)
    return time.perf_counter() - started


def slots_busy(seconds: float, parallelism: int) -> str:
    """How much of the last tune run's slots (parallelism x its wall time) its trials' fits filled: what is
    left is start-up, the tail and logging, apart from this machine's drift between two runs."""
    run = mlflow.last_active_run()
    trials = mlflow.search_runs(
        [run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{run.info.run_id}'", max_results=10_000
    )
    fits = float(trials["metrics.fit_seconds"].sum())
    return f"fits {fits:.1f} s in {parallelism} x {seconds:.1f} s: slots {fits / (parallelism * seconds):.0%} busy"


def subprocess_per_trial(splits_uri: str, spec: FeatureSpec, families: list[str], evals: int, seed: int) -> float:
    """(c) the hyperparam example: each trial runs `train` through `mlflow.projects.run`."""
    space = build_search_space(spec.task, families)
    client = mlflow.tracking.MlflowClient()

    def objective(sample):
        family = sample.pop("model")
        params = {k: ("none" if v is None else v) for k, v in sample.items()}
        submitted = mlflow.projects.run(
            str(PROJECT_DIR),
            "train",
            parameters={"splits_uri": splits_uri, "model": family, "seed": seed, "refit": "train", "threads": 1}
            | params,
            env_manager="local",
            synchronous=True,
        )
        value = client.get_run(submitted.run_id).data.metrics[f"val_{METRIC}"]
        return {"loss": metric_loss(METRIC, value), "status": STATUS_OK}

    started = time.perf_counter()
    with mlflow.start_run(run_name="hyperparam-example"):
        fmin(
            objective,
            space,
            tpe.suggest,
            evals,
            trials=Trials(),
            rstate=np.random.default_rng(seed),
            show_progressbar=False,
        )
    return time.perf_counter() - started


def log_splits(splits: Splits, spec: FeatureSpec) -> str:
    """Store the splits as a featurize output would, so (b) and (c) read them by URI."""
    import json

    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="featurize") as run:
        out = Path(tmp, "splits")
        out.mkdir()
        for name in ("train", "validation", "test"):
            write_parquet(splits[name], out / f"{name}.parquet")
        (out / "feature_spec.json").write_text(json.dumps(spec.to_dict()))
        mlflow.log_artifacts(str(out), "splits")
    return f"runs:/{run.info.run_id}/splits"


def tradeoff(splits: Splits, spec: FeatureSpec, evals: int, seeds: int) -> None:
    """Best validation loss after `evals` trials, asked for 1, 2 or 4 at a time (mean over seeds)."""
    families = task_families(spec.task)
    print(f"\nbatch size vs best validation log_loss after {evals} evals (mean over {seeds} seeds; lower is better)")
    for parallelism in (1, 2, 4):
        losses = []
        for seed in range(seeds):
            options = TuneOptions(max_evals=evals, parallelism=parallelism)
            config = SearchConfig(metric="log_loss", seed=seed, families=tuple(families), options=options)
            outcome = run_search(splits, spec, config)
            losses.append(min(r["loss"] for r in outcome.trials.results if r["status"] == STATUS_OK))
        print(f"  parallelism {parallelism}: best log_loss {np.mean(losses):.4f} (sd {np.std(losses):.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=0, help="0: iris; otherwise a generated table of this size")
    parser.add_argument("--evals", type=int, default=50)
    parser.add_argument("--models", default="all")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-subprocess", action="store_true", help="leave out (c)")
    parser.add_argument("--repeat", type=int, default=3, help="(a) and (b) alternately this many times; medians")
    parser.add_argument("--parallel", action="store_true", help="also (b) at parallelism 2")
    parser.add_argument(
        "--algo", default="tpe", choices=sorted(ALGOS), help="random: both parallelisms try the same configurations"
    )
    parser.add_argument("--tradeoff", action="store_true", help="only the batch-size trade-off")
    args = parser.parse_args()

    frame = make_data(args.rows)
    spec = build_feature_spec(frame, "species")
    splits = split_frame(frame, spec, args.seed, 0.2, 0.2)
    if args.tradeoff:
        tradeoff(splits, spec, args.evals, seeds=5)
        return
    families = task_families(spec.task, parse_models(None if args.models == "all" else args.models))
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        splits_uri = log_splits(splits, spec)
        print(f"data: {len(frame)} rows; {', '.join(families)}; {args.evals} evals; {args.algo}; seed {args.seed}")
        # (a) and (b) alternate, `--repeat` times; the medians are reported (this machine is shared and noisy).
        pairs = []
        for _ in range(args.repeat):
            pairs.append((bare(splits, spec, families, args.evals, args.seed, args.algo), 0.0))
            pairs[-1] = (pairs[-1][0], ours(splits_uri, families, args.evals, args.seed, algo=args.algo))
        busy = slots_busy(pairs[-1][1], 1)
        a, b = (float(np.median(column)) for column in zip(*pairs, strict=True))
        ratio = float(np.median([y / x for x, y in pairs]))  # each (b) against the (a) just before it
        if args.repeat > 1:
            print("each repeat (a, b, b/a): " + "; ".join(f"{x:.1f}, {y:.1f}, {y / x:.2f}" for x, y in pairs))
        print(f"(a) bare hyperopt + scikit-learn      {a:8.1f} s   (median)")
        print(f"(b) our tune, in process              {b:8.1f} s   b/a = {ratio:.2f} (median of pairs; target <= 1.3)")
        if args.parallel:
            b2 = ours(splits_uri, families, args.evals, args.seed, parallelism=2, algo=args.algo)
            print(f"(b) our tune, parallelism 2           {b2:8.1f} s   speed-up = {b / b2:.2f}x")
            print(f"    the last run at parallelism 1: {busy}; at parallelism 2: {slots_busy(b2, 2)}")
        if not args.skip_subprocess:
            c = subprocess_per_trial(splits_uri, spec, families, args.evals, args.seed)
            print(f"(c) subprocess per trial              {c:8.1f} s   c/b = {c / b:.1f}  (target >= 10)")


if __name__ == "__main__":
    main()

"""Time to a champion on a big generated table, with per-step seconds and peak memory, beside the floors.

Generates a seeded table of --rows rows and ~30 columns as users' tables look: numerics with missing
values, low-cardinality categoricals, text columns of ~5,000 and ~50,000 levels, an ISO timestamp as
text, a text ID, odd column names, a binary `<=50K`/`>50K` label with some missing. Then, on a fresh store:

  main     `mlflow run . -e main -P max_evals=N` (env manager local), and per step: seconds (the step's
           run, start to end) and peak RSS of the step process and of its largest child (the metrics
           peak_rss_mb / peak_rss_children_mb every step logs);
  floors   after main, --data-rounds rounds (default 3) of: pyarrow's read of the same CSV + a Parquet
           write of it (in this process, and in a new one as a step meets it); a no-op step launched
           through `mlflow.projects.run` as main launches a step (bench/noop/MLproject: it attaches to its
           run and ends it, as load and featurize do, importing what they import: MLflow and pandas, not
           scikit-learn; an import-only no-op beside it); load and featurize launched the same way. The data
           floor's ratio is taken within each round (this machine drifts) and its median reported;
  predict  (--predict-rows M) `predict` of the champion on M rows, its seconds and peak RSS, beside the bare
           pipeline's `predict` on the same rows in memory (its rows per second).
  monitor  (--monitor-rows M) `monitor` of a new M-row batch of the same table (another seed, labels included:
           the live metric too) against the champion's training split: its seconds and peak RSS.

    python bench/scale.py                          # 1,000,000 rows, max_evals 8
    python bench/scale.py --rows 300000 --plain    # the plain 300,000-row table of issue 12's item 9
    python bench/scale.py --rows 200000 --predict-rows 2000000
    python bench/scale.py --monitor-rows 1000000   # main, the floors, then monitor of a million new rows
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STEPS = ("load", "featurize", "tune", "train", "evaluate")


def users_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """~30 columns as users' tables look (see the module docstring); the label depends on a few of them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i} (units)": rng.normal(size=rows).astype("float32") for i in range(18)})
    for column in ("x0 (units)", "x5 (units)", "x9 (units)"):
        frame.loc[rng.random(rows) < 0.05, column] = np.nan
    frame["Income ($)"] = rng.gamma(2.0, 20_000, rows).round(0)
    frame["seniority (years)"] = rng.integers(0, 40, rows)
    for i, levels in enumerate((3, 5, 8, 12)):
        frame[f"segment {i}"] = pd.Series(rng.integers(0, levels, rows)).map(lambda v: f"level-{v}")
    frame["city"] = pd.Series(rng.zipf(1.3, rows) % 5000).map(lambda v: f"city {v}")
    frame["product"] = pd.Series(rng.integers(0, 50_000, rows)).map(lambda v: f"P{v:05d}")
    hours = rng.integers(0, 3 * 365 * 24, rows)
    frame["signed up"] = (pd.Timestamp("2021-01-01") + pd.to_timedelta(hours, unit="h")).strftime("%Y-%m-%dT%H:%M:%S")
    frame["customer id"] = [f"K{i:09d}" for i in rng.permutation(rows)]
    signal = frame["x1 (units)"].to_numpy() + 0.5 * (frame["segment 1"] == "level-2") + frame["Income ($)"] / 80_000
    label = np.where(signal + rng.normal(0, 1, rows) > 1.0, ">50K", "<=50K").astype(object)
    label[rng.random(rows) < 0.01] = None
    frame["income class"] = label
    return frame


def plain_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """20 numeric columns, 2 categoricals of 3-4 levels, a binary label: issue 12's time-to-champion table."""
    from sklearn.datasets import make_classification

    features, labels = make_classification(rows, 20, n_informative=8, random_state=seed)
    frame = pd.DataFrame(features.astype("float32"), columns=[f"x{i}" for i in range(20)])
    rng = np.random.default_rng(seed)
    frame["colour"] = rng.choice(["red", "green", "blue"], rows)
    frame["size"] = rng.choice(["S", "M", "L", "XL"], rows)
    frame["label"] = labels
    return frame


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def run_seconds(project: Path, entry_point: str, parameters: dict[str, str] | None = None) -> tuple[str, float]:
    """An entry point launched as main launches a step (mlflow.projects.run, env manager local, into the
    current tracking URI): its run id, and its seconds as main's steps are timed (its run's start to end)."""
    import mlflow

    submitted = mlflow.projects.run(
        str(project), entry_point, parameters=parameters or {}, env_manager="local", synchronous=True
    )
    info = mlflow.get_run(submitted.run_id).info
    return submitted.run_id, (info.end_time - info.start_time) / 1000


ARROW_FLOOR = """
import sys, time
import pyarrow.csv, pyarrow.parquet
started = time.perf_counter()
pyarrow.parquet.write_table(pyarrow.csv.read_csv(sys.argv[1]), sys.argv[2])
print(time.perf_counter() - started)
"""


def arrow_floor(csv: Path, work: Path) -> float:
    """pyarrow's read of the CSV + a Parquet write of it, in this process (the data floor)."""
    import pyarrow.csv
    import pyarrow.parquet

    started = time.perf_counter()
    pyarrow.parquet.write_table(pyarrow.csv.read_csv(csv), work / "floor.parquet")
    return time.perf_counter() - started


def arrow_floor_fresh(csv: Path, work: Path) -> float:
    """The same in a new process, as a step meets it (the imports not timed): its memory is new, touched for
    the first time, where this process reuses what its earlier rounds freed."""
    command = [sys.executable, "-c", ARROW_FLOOR, str(csv), str(work / "floor.parquet")]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


FIRST_TOUCH = """
import time
import numpy as np
block = np.empty(1 << 27)  # 1 GiB, not yet touched
started = time.perf_counter()
block.fill(1.0)  # every page touched for the first time
print(time.perf_counter() - started)
"""


def first_touch_fresh(page: str) -> float:
    """Seconds a new process takes to touch 1 GiB of new numpy memory, in numpy's default 2 MiB pages (`page` "2M")
    or in 4 KiB pages as the steps fill their arrays ("4K": NUMPY_MADVISE_HUGEPAGE=0). Here 2 MiB pages cost
    0.2 s right after another process freed its memory and 3-4 s after a quiet minute (the kernel compacts memory
    to make them), 4 KiB pages 0.6-0.8 s either way: these figures, beside the others in the same round, say
    which mode the round ran in."""
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    env |= {"NUMPY_MADVISE_HUGEPAGE": "0"} if page == "4K" else {}
    command = [sys.executable, "-c", FIRST_TOUCH]
    return float(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout)


def step_figures(store: str) -> dict[str, dict[str, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=500)
    figures = {}
    for run in runs:
        step = run.data.tags.get("pipeline.step")
        if step in (*STEPS, "main", "predict", "monitor") and step not in figures:
            metrics = run.data.metrics
            figures[step] = {
                "seconds": (run.info.end_time - run.info.start_time) / 1000,
                "rss_mb": metrics.get("peak_rss_mb", float("nan")),
                "child_rss_mb": metrics.get("peak_rss_children_mb", float("nan")),
                "status": run.info.status,
            }
    return figures


FEATURIZE_PARAMS = ("task", "seed", "validation_size", "test_size", "split", "time_column", "group_column")


def data_rounds(
    project: Path, store: str, csv: Path, work: Path, target: str, rounds: int, params: list[str]
) -> dict[str, list[float]]:
    """`rounds` rounds of the data floor (in this process and in a new one), the no-op steps, load and
    featurize (launched as main launches them: mlflow.projects.run, env manager local, with main's params of
    featurize, `params` being the --param values), each round's figures side by side: this machine drifts by
    tens of percent within minutes, so the ratio is taken within rounds and its median reported."""
    import mlflow

    mlflow.set_tracking_uri(store)
    given = dict(param.split("=", 1) for param in params)
    featurize = {key: value for key, value in given.items() if key in FEATURIZE_PARAMS}
    seconds: dict[str, list[float]] = {
        name: []
        for name in ("arrow", "arrow_fresh", "touch_2M", "touch_4K", "noop_step", "noop_imports", "load", "featurize")
    }
    for _ in range(rounds):
        seconds["arrow"].append(arrow_floor(csv, work))
        seconds["arrow_fresh"].append(arrow_floor_fresh(csv, work))
        for page in ("2M", "4K"):
            seconds[f"touch_{page}"].append(first_touch_fresh(page))
        for key, entry_point in (("noop_step", "main"), ("noop_imports", "imports")):
            seconds[key].append(run_seconds(PROJECT_DIR / "bench" / "noop", entry_point)[1])
        load_run, took = run_seconds(project, "load", {"data_uri": str(csv), "target": target})
        seconds["load"].append(took)
        seconds["featurize"].append(
            run_seconds(project, "featurize", {"raw_data_uri": f"runs:/{load_run}/data", **featurize})[1]
        )
    return seconds


def bare_predict_rate(store: str, rows: pd.DataFrame) -> float:
    """Rows per second of the champion's own scikit-learn pipeline on rows already in memory."""
    import mlflow

    mlflow.set_tracking_uri(store)
    model = mlflow.sklearn.load_model("models:/pipeline-model@champion")
    started = time.perf_counter()
    model.predict(rows)
    return len(rows) / (time.perf_counter() - started)


def report(seconds: float, figures: dict[str, dict[str, float]], label: str, rounds: dict[str, list[float]]) -> None:
    nan = float("nan")
    print(f"\nmain: {seconds:.1f} s to a champion ({label})")
    print(f"{'step':<10} {'seconds':>8} {'peak RSS MB':>12} {'largest child MB':>17}")
    for step in (*STEPS, "main"):
        f = figures.get(step, {})
        own, child = f.get("rss_mb", nan), f.get("child_rss_mb", nan)
        print(f"{step:<10} {f.get('seconds', nan):8.1f} {own:12.0f} {child:17.0f}")
    worst = max(np.nanmax([f["rss_mb"], f["child_rss_mb"]]) for f in figures.values())
    print(f"largest peak RSS of any step process: {worst:,.0f} MB (target <= 2048)")

    print(f"\nthe data floor, {len(rounds['load'])} rounds after main (seconds per round):")
    names = {
        "arrow": "pyarrow read + Parquet write, in this process",
        "arrow_fresh": "the same in a new process",
        "touch_2M": "1 GiB of new memory touched in a new process, 2 MiB pages",
        "touch_4K": "the same in 4 KiB pages, as the steps fill their arrays",
        "noop_step": "no-op step (imports MLflow and pandas, attaches to its run, ends it)",
        "noop_imports": "import-only no-op step",
        "load": "load",
        "featurize": "featurize",
    }
    for key, name in names.items():
        print(f"  {name:<70} {', '.join(f'{x:.1f}' for x in rounds[key])}  (median {np.median(rounds[key]):.1f})")
    work = np.array(rounds["load"]) + np.array(rounds["featurize"]) - 2 * np.array(rounds["noop_step"])
    for floor, name in (("arrow", "pyarrow read + write"), ("arrow_fresh", "the same in a new process")):
        ratios = work / np.array(rounds[floor])
        print(
            f"(load + featurize - two no-op steps) / ({name}): rounds {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"median {np.median(ratios):.2f}" + (" (target <= 2)" if floor == "arrow" else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--max-evals", type=int, default=8)
    parser.add_argument("--plain", action="store_true", help="the plain table (item 9), target `label`")
    parser.add_argument("--predict-rows", type=int, default=0, help="also score this many rows with predict")
    parser.add_argument("--monitor-rows", type=int, default=0, help="also monitor a new batch of this many rows")
    parser.add_argument("--data-rounds", type=int, default=3, help="rounds of the data floor's figures (medians)")
    parser.add_argument("--param", action="append", default=[], help="more -P for main, e.g. max_tune_rows=50000")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        project = work / "project"
        ignore = shutil.ignore_patterns("mlruns", "mlflow.db", ".venv", "__pycache__")
        shutil.copytree(PROJECT_DIR, project, ignore=ignore)
        # Bytecode, as a clone has it after its first run: where PYTHONDONTWRITEBYTECODE is set (this machine sets
        # it), every step process would otherwise compile the project's modules (~0.5 s a step), which the no-op
        # step (one short file) does not: the data floor's ratio would count it as the steps' work.
        compileall.compile_dir(str(project / "steps"), quiet=1)
        frame = plain_table(args.rows) if args.plain else users_table(args.rows)
        target = "label" if args.plain else "income class"
        csv = work / "table.csv"
        frame.to_csv(csv, index=False)
        print(f"table: {len(frame):,} rows x {len(frame.columns)} columns, {csv.stat().st_size / 1e6:,.0f} MB CSV")
        del frame
        store = f"sqlite:///{work / 'mlflow.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_TRACKING_URI": store}
        params = [f"data_uri={csv}", f"target={target}", f"max_evals={args.max_evals}", *args.param]
        command = ["mlflow", "run", ".", "-e", "main", "--env-manager", "local"]
        seconds = timed([*command, *[x for p in params for x in ("-P", p)]], project, env)
        label = f"max_evals={args.max_evals}" + "".join(f", {p}" for p in args.param)
        figures = step_figures(store)  # before the rounds below add load and featurize runs
        rounds = data_rounds(project, store, csv, work, target, args.data_rounds, args.param)
        report(seconds, figures, label, rounds)
        if args.predict_rows:
            score(args.predict_rows, args.plain, work, project, env, store)
        if args.monitor_rows:
            watch(args.monitor_rows, args.plain, work, project, env, store)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def score(rows: int, plain: bool, work: Path, project: Path, env: dict[str, str], store: str) -> None:
    """predict on `rows` rows (a Parquet file written in pieces), beside the bare pipeline in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = work / "batch.parquet"
    writer = None
    piece = 500_000
    for start in range(0, rows, piece):
        part = (plain_table if plain else users_table)(min(piece, rows - start), seed=start + 1)
        part = part.drop(columns="label" if plain else "income class")
        table = pa.Table.from_pandas(part, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    seconds = timed(
        ["mlflow", "run", ".", "-e", "predict", "--env-manager", "local", "-P", f"data_uri={path}"], project, env
    )
    figures = step_figures(store)["predict"]
    sample = pq.read_table(path).slice(0, min(rows, 1_000_000)).to_pandas()
    bare = bare_predict_rate(store, sample)
    rate = rows / figures["seconds"]
    print(f"\npredict: {rows:,} rows in {figures['seconds']:.1f} s (mlflow run {seconds:.1f} s)")
    print(f"peak RSS {figures['rss_mb']:,.0f} MB (target <= 2048)")
    print(
        f"scoring rate {rate:,.0f} rows/s; bare pipeline in memory {bare:,.0f} rows/s: {rate / bare:.2f} (target 0.5)"
    )


def watch(rows: int, plain: bool, work: Path, project: Path, env: dict[str, str], store: str) -> None:
    """monitor of a new `rows`-row batch of the same kind of table (another seed) against the champion."""
    path = work / "watched.csv"
    (plain_table if plain else users_table)(rows, seed=rows + 7).to_csv(path, index=False)
    seconds = timed(
        ["mlflow", "run", ".", "-e", "monitor", "--env-manager", "local", "-P", f"data_uri={path}"], project, env
    )
    figures = step_figures(store)["monitor"]
    print(f"\nmonitor: {rows:,} new rows in {figures['seconds']:.1f} s (mlflow run {seconds:.1f} s)")
    print(f"peak RSS {figures['rss_mb']:,.0f} MB (target <= 2048)")


if __name__ == "__main__":
    main()

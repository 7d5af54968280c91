"""Benchmark the step cache: the README's main command twice on a fresh store, in one go.

Prints both wall times and their ratio; the target is a second run within 25 % of the first.
Usage: python bench/cache.py [--max-evals N] [--repeats K]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("mlflow.db", "mlruns", "mlartifacts", "__pycache__", ".pytest_cache", ".ruff_cache")


def timed_main(project: Path, max_evals: int | None) -> float:
    command = [sys.executable, "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local"]
    if max_evals is not None:
        command += ["-P", f"max_evals={max_evals}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    started = time.perf_counter()
    subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-evals", type=int, default=None, help="default: main's own default")
    parser.add_argument("--repeats", type=int, default=1, help="fresh stores to measure (ratios of each)")
    args = parser.parse_args()
    print(f"{'repeat':>6}  {'first run s':>11}  {'second run s':>12}  {'ratio':>6}")
    ratios = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            project = Path(tmp) / "project"
            shutil.copytree(PROJECT_DIR, project, ignore=IGNORE)
            first = timed_main(project, args.max_evals)
            second = timed_main(project, args.max_evals)
        ratios.append(second / first)
        print(f"{repeat + 1:>6}  {first:>11.1f}  {second:>12.1f}  {second / first:>6.1%}")
    verdict = "meets" if max(ratios) <= 0.25 else "misses"
    print(f"worst ratio {max(ratios):.1%}: {verdict} the 25 % target")


if __name__ == "__main__":
    main()

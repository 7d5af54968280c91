"""The test suite's CPU, test by test: what `--durations` cannot say on two busy cores.

A test's wall time on two xdist workers includes its share of the other worker's load, so it does not say
what the test costs. This plugin records, per test, the CPU seconds of the worker process itself and of the
processes it started and reaped (`mlflow run`, steps, trial workers, servers stopped in the test), beside
its wall time, one JSON line per test:

    SUITE_CPU_LOG=/tmp/suite-cpu.jsonl python -m pytest -p bench.suite_cpu
    python bench/suite_cpu.py /tmp/suite-cpu.jsonl

The summary prints the totals, the lowest wall time those CPU seconds allow on this machine's cores, and the
costliest files and tests. A process still running when the test ends (a module's tracking server) is
counted in the test that reaps it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import Counter
from pathlib import Path

import pytest

LOG_VARIABLE = "SUITE_CPU_LOG"


def cpu_seconds() -> tuple[float, float]:
    """(this process, its reaped children): user + system seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    own, children = cpu_seconds()
    started, at = time.monotonic(), time.time()
    yield
    own_after, children_after = cpu_seconds()
    record = {
        "test": item.nodeid,
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "started": round(at, 3),
        "wall": round(time.monotonic() - started, 3),
        "own": round(own_after - own, 3),
        "children": round(children_after - children, 3),
    }
    with open(os.environ.get(LOG_VARIABLE, "suite-cpu.jsonl"), "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def summary(records: list[dict], top: int) -> list[str]:
    cpu = {r["test"]: r["own"] + r["children"] for r in records}
    wall = {r["test"]: r["wall"] for r in records}
    total, cores = sum(cpu.values()), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    lines = [
        f"{len(records)} tests: {total:,.0f} CPU-s, {sum(wall.values()):,.0f} s of test wall time summed",
        f"at best {total / cores:,.0f} s of wall time on {cores} cores, every core busy throughout",
        "",
        "CPU s   wall s  file",
    ]
    by_file, file_wall = Counter(), Counter()
    for test, seconds in cpu.items():
        by_file[test.split("::")[0]] += seconds
        file_wall[test.split("::")[0]] += wall[test]
    lines += [f"{s:6.1f}  {file_wall[f]:6.1f}  {f}" for f, s in by_file.most_common(top)]
    lines += ["", "CPU s   wall s  test"]
    lines += [f"{s:6.1f}  {wall[t]:6.1f}  {t.split('@')[0]}" for t, s in Counter(cpu).most_common(top)]
    return lines + workers(records)


def workers(records: list[dict]) -> list[str]:
    """Each xdist worker's span (its first test's start to its last test's end), the CPU of its tests, and the
    time it stood idle at the end while another worker still ran: the suite's packing."""
    timed = [r for r in records if "started" in r]
    if not timed:
        return []
    ends = {}
    for r in timed:
        first, last = ends.get(r["worker"], (r["started"], 0.0))
        ends[r["worker"]] = (min(first, r["started"]), max(last, r["started"] + r["wall"]))
    begin, finish = min(first for first, _ in ends.values()), max(last for _, last in ends.values())
    lines = ["", f"workers: {finish - begin:,.0f} s from the first test's start to the last one's end"]
    for name, (first, last) in sorted(ends.items()):
        spent = sum(r["own"] + r["children"] for r in timed if r["worker"] == name)
        idle = finish - last
        lines.append(f"  {name}: {last - first:,.0f} s of tests, {spent:,.0f} CPU-s, idle {idle:,.0f} s at the end")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="the JSON lines the plugin wrote")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    records = [json.loads(line) for line in args.log.read_text(encoding="utf-8").splitlines() if line.strip()]
    print("\n".join(summary(records, args.top)))


if __name__ == "__main__":
    main()

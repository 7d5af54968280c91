"""bench/suite_cpu.py: a test's CPU counts the processes it started, and a test that waits costs none."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import PROJECT_DIR

TESTS = """
import subprocess, sys, time

def test_starts_a_busy_process():
    subprocess.run([sys.executable, "-c", "x = 0\\nfor i in range(10**7): x += i"], check=True)

def test_waits():
    time.sleep(0.5)
"""


def test_each_test_gets_its_own_and_its_childrens_cpu_and_the_summary_adds_them_up(tmp_path):
    (tmp_path / "test_two.py").write_text(TESTS, encoding="utf-8")
    log = tmp_path / "cpu.jsonl"
    env = os.environ | {"SUITE_CPU_LOG": str(log), "PYTHONPATH": str(PROJECT_DIR)}
    command = [sys.executable, "-m", "pytest", "-p", "bench.suite_cpu", "-p", "no:cacheprovider", "-q", "-n", "0"]
    subprocess.run([*command, "-c", os.devnull, str(tmp_path)], cwd=tmp_path, env=env, check=True, capture_output=True)
    records = {r["test"].split("::")[1]: r for r in map(json.loads, log.read_text().splitlines())}
    busy, waiting = records["test_starts_a_busy_process"], records["test_waits"]
    assert busy["children"] > 0.3 and busy["own"] < busy["children"]  # the busy process is the test's child
    assert waiting["wall"] >= 0.5 and waiting["own"] + waiting["children"] < 0.2
    shown = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "bench" / "suite_cpu.py"), str(log)], capture_output=True, text=True
    ).stdout
    total = sum(r["own"] + r["children"] for r in records.values())
    assert shown.startswith(f"2 tests: {total:,.0f} CPU-s")

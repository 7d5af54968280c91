"""Entry point main: its summary and hints."""

from __future__ import annotations

from steps.main import StepResult, format_summary, ui_hint


def test_summary_table_lists_every_step():
    text = format_summary(
        [
            StepResult("load", "abc", "FINISHED", 8.04, "n_rows=150"),
            StepResult("featurize", "def", "FAILED", 2.0, "", "boom"),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["step", "run", "id", "status", "seconds", "key", "metric"]
    assert lines[2].split() == ["load", "abc", "FINISHED", "8.0", "n_rows=150"]
    assert lines[3].split()[:3] == ["featurize", "def", "FAILED"]


def test_ui_hint():
    assert ui_hint("sqlite:////tmp/mlflow.db").startswith("mlflow ui --backend-store-uri sqlite:////tmp/mlflow.db")
    assert ui_hint("http://u:pw@127.0.0.1:8080") == "open http://u:***@127.0.0.1:8080 in a browser"

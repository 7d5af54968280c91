"""Entry point main: its summary and hints."""

from __future__ import annotations

from steps.lib.cache import cache_key, data_digest, normalise_params
from steps.main import StepResult, format_summary, ui_hint
from tests.conftest import PROJECT_DIR


def test_summary_table_lists_every_step():
    text = format_summary(
        [
            StepResult("load", "abc", "FINISHED", 8.04, "n_rows=150", cached=True),
            StepResult("featurize", "def", "FAILED", 2.0, "", "boom"),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["step", "run", "id", "status", "seconds", "key", "metric", "cache"]
    assert lines[2].split() == ["load", "abc", "FINISHED", "8.0", "n_rows=150", "cached", "(abc)"]
    assert lines[3].split() == ["featurize", "def", "FAILED", "2.0", "ran"]


def test_ui_hint():
    assert ui_hint("sqlite:////tmp/mlflow.db").startswith("mlflow ui --backend-store-uri sqlite:////tmp/mlflow.db")
    assert ui_hint("http://u:pw@127.0.0.1:8080") == "open http://u:***@127.0.0.1:8080 in a browser"


def test_params_are_normalised_by_declared_type():
    def normalised(entry_point, params):
        return normalise_params(PROJECT_DIR, entry_point, params)

    assert normalised("tune", {"max_evals": "3.0", "seed": 42, "metric": "auto", "splits_uri": "runs:/x"}) == (
        normalised("tune", {"max_evals": 3, "seed": "42", "metric": "auto", "splits_uri": "runs:/y"})
    )
    assert normalised("featurize", {"test_size": "1e-01"}) == normalised("featurize", {"test_size": 0.1})
    assert normalised("tune", {"max_evals": 3}) != normalised("tune", {"max_evals": 4})


def test_cache_key_changes_with_params_inputs_code_and_environment(tmp_path):
    import shutil

    project = tmp_path / "project"
    shutil.copytree(PROJECT_DIR / "steps", project / "steps")
    for name in ("MLproject", "python_env.yaml", "requirements.txt"):
        shutil.copy(PROJECT_DIR / name, project / name)

    def key(**overrides):
        args = {"parameters": {"task": "auto", "seed": 1}, "inputs": {"raw_data": "abc"}, "env_manager": "local"}
        return cache_key(project, "featurize", **(args | overrides))

    base = key()
    assert key() == base
    assert key(parameters={"task": "auto", "seed": 2}) != base
    assert key(parameters={"task": "auto", "seed": "1", "raw_data_uri": "runs:/other/data"}) == base
    assert key(inputs={"raw_data": "abd"}) != base
    assert key(env_manager="uv") != base
    (project / "steps" / "train.py").write_text("# another step's code\n")
    assert key() == base
    (project / "steps" / "featurize.py").write_text((project / "steps" / "featurize.py").read_text() + "\n# edit\n")
    edited = key()
    assert edited != base
    (project / "requirements.txt").write_text("mlflow==3.17.1\n")
    assert key() != edited


def test_data_digest_follows_the_content(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x,y\n1,2\n")
    first = data_digest(str(path))
    path.write_text("x,y\n1,3\n")
    assert data_digest(str(path)) != first
    assert data_digest("sklearn:iris").startswith("sklearn:iris@scikit-learn==")
    assert data_digest(str(tmp_path / "missing.csv")).startswith("unavailable:")

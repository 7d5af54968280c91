"""The project files agree with each other: MLproject, python_env.yaml, conda.yaml, requirements."""

from __future__ import annotations

import importlib
import re

import yaml

from tests.conftest import PROJECT_DIR

STEPS = ("load", "featurize", "tune", "train", "evaluate", "main")


def read_pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.\-+]+)", line)
        assert match, f"not an exact pin: {line!r}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def test_requirements_are_exact_pins_of_the_stack():
    pins = read_pins((PROJECT_DIR / "requirements.txt").read_text().splitlines())
    assert pins["mlflow"] == "3.17.2"
    for name in ("scikit-learn", "pandas", "hyperopt", "pyarrow"):
        assert name in pins


def test_conda_yaml_pins_the_same_packages_as_requirements():
    pins = read_pins((PROJECT_DIR / "requirements.txt").read_text().splitlines())
    conda = yaml.safe_load((PROJECT_DIR / "conda.yaml").read_text())
    pip_section = next(dep["pip"] for dep in conda["dependencies"] if isinstance(dep, dict))
    assert read_pins(pip_section) == pins
    assert "python=3.11" in conda["dependencies"]


def test_python_env_uses_the_requirements_file():
    env = yaml.safe_load((PROJECT_DIR / "python_env.yaml").read_text())
    assert env["python"] == "3.11"
    assert env["dependencies"] == ["-r requirements.txt"]


def test_mlproject_declares_every_step_with_typed_params():
    project = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())
    assert project["python_env"] == "python_env.yaml"
    assert set(project["entry_points"]) >= set(STEPS)
    for name in STEPS:
        entry = project["entry_points"][name]
        assert entry["command"].startswith(f"python -m steps.{name} ")
        for param, spec in entry["parameters"].items():
            assert spec["type"] in {"string", "int", "float"}, (name, param)
            assert "{" + param + "}" in entry["command"], (name, param)
        assert hasattr(importlib.import_module(f"steps.{name}"), "main")


def test_main_and_step_defaults_agree():
    points = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())["entry_points"]
    assert points["main"]["parameters"]["data_uri"]["default"] == points["load"]["parameters"]["data_uri"]["default"]
    assert (
        points["main"]["parameters"]["registered_model_name"]["default"]
        == points["evaluate"]["parameters"]["registered_model_name"]["default"]
    )

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
        line = line.split(";", 1)[0].strip()  # the lock's environment markers
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.\-+]+)", line)
        assert match, f"not an exact pin: {line!r}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def test_requirements_are_exact_pins_of_the_stack():
    pins = read_pins((PROJECT_DIR / "requirements.txt").read_text().splitlines())
    assert pins["mlflow"] == "3.17.2"
    for name in ("scikit-learn", "pandas", "hyperopt", "pyarrow"):
        assert name in pins


def test_conda_yaml_installs_the_hashed_lock_into_the_same_python():
    conda = yaml.safe_load((PROJECT_DIR / "conda.yaml").read_text())
    env = yaml.safe_load((PROJECT_DIR / "python_env.yaml").read_text())
    pip_section = next(dep["pip"] for dep in conda["dependencies"] if isinstance(dep, dict))
    assert pip_section == ["-r requirements.lock"]  # the full hashed set, as python_env.yaml installs it
    assert f"python={env['python']}" in conda["dependencies"]
    # conda writes the pip section to a file beside the environment file: conda/MLproject's needs the lock there
    assert (PROJECT_DIR / "conda" / "requirements.lock").resolve() == (PROJECT_DIR / "requirements.lock").resolve()
    # MLflow names a conda environment after conda.yaml's text: the lock's digest in it (scripts/lock.sh)
    import hashlib

    digest = hashlib.sha256((PROJECT_DIR / "requirements.lock").read_bytes()).hexdigest()
    assert f"# requirements.lock sha256: {digest}\n" in (PROJECT_DIR / "conda.yaml").read_text()


def test_python_env_builds_the_exact_python_and_the_lock():
    env = yaml.safe_load((PROJECT_DIR / "python_env.yaml").read_text())
    assert env["python"] == "3.11.7"  # a bare "3.11" sends pyenv looking for the newest 3.11.x online
    assert env["dependencies"] == ["-r requirements.lock"]


def read_lock(path) -> dict[str, tuple[str, frozenset[str]]]:
    """A hashed lock: each package's pinned version and its hashes (a requirement spans `\\`-joined lines)."""
    text = (PROJECT_DIR / path).read_text().replace("\\\n", " ")
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"{path}: an option in a lock: {line!r}"
        requirement, *options = line.split(" --hash=")
        [pin] = read_pins([requirement]).items()
        assert options, f"{path}: {pin[0]} has no hash: pip refuses the whole install (--require-hashes)"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", option.strip()) for option in options), line
        entries[pin[0]] = (pin[1], frozenset(option.strip() for option in options))
    return entries


LOCKS = {  # each installed file: a hashed lock of its direct pins
    "requirements.lock": "requirements.txt",
    "requirements-spark.txt": "requirements-spark.in",
    "requirements-dev.txt": "requirements-dev.in",
}


def test_every_installed_requirements_file_is_a_complete_hashed_lock_of_its_pins():
    for lock_path, pins_path in LOCKS.items():
        lock = read_lock(lock_path)
        pins = read_pins((PROJECT_DIR / pins_path).read_text().splitlines())
        assert {name: lock[name][0] for name in pins if name in lock} == pins, lock_path
        assert pins.keys() <= lock.keys(), (lock_path, pins.keys() - lock.keys())
        assert (PROJECT_DIR / "scripts" / "lock.sh").read_text().count(f" {pins_path} {lock_path}") == 1, lock_path
    assert len(read_lock("requirements.lock")) > 50  # the full resolved set, not just the direct pins
    dev_in = (PROJECT_DIR / "requirements-dev.in").read_text().splitlines()
    assert {"-r requirements.txt", "-r requirements-spark.in"} <= set(dev_in)


def test_the_locks_agree_on_every_package_and_its_hashes():
    runtime, spark, dev = (read_lock(path) for path in LOCKS)
    assert {name: dev[name] for name in runtime} == runtime  # the tests run on exactly what users install
    assert {name: dev[name] for name in spark} == spark
    assert {name: runtime[name] for name in spark if name in runtime} == {
        name: spark[name] for name in spark if name in runtime
    }


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


def test_main_declares_auto_and_its_defaults_table_agrees_with_the_steps():
    """main's params default to auto (a profile or the table in steps/lib/profiles.py fills them in); the table
    holds the defaults the steps that take them declare."""
    from steps.lib.profiles import DEFAULTS

    points = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())["entry_points"]
    main = points["main"]["parameters"]
    assert main.pop("profile") == {"type": "string", "default": "none"}
    assert main.pop("verbose") == {"type": "string", "default": "false"}
    assert main == {name: {"type": "string", "default": "auto"} for name in DEFAULTS}
    owners = {"data_uri": "load", "target": "load", "task": "featurize", "registered_model_name": "evaluate"}
    owners |= {"seed": "train", "refit": "train", "threads": "train", "split": "featurize"}
    owners |= {"time_column": "featurize", "group_column": "featurize"}
    passed_on = ("max_evals", "metric", "algo", "models", "parallelism", "early_stop_rounds", "timeout", "cv_folds")
    owners |= dict.fromkeys((*passed_on, "backend", "max_tune_rows", "trial_timeout"), "tune")
    gates = [name for name in points["evaluate"]["parameters"] if name.startswith(("min_", "max_"))]
    assert len(gates) == 8  # min_delta and the seven thresholds
    owners |= dict.fromkeys([*gates, "beat_strong_baseline"], "evaluate")
    assert set(owners) | {"use_cache"} == set(DEFAULTS)
    for name, step in owners.items():
        declared = points[step]["parameters"][name]["default"]
        assert DEFAULTS[name][0] == str(declared), (name, step)
    assert DEFAULTS["use_cache"][0] == "true"


def test_every_command_flag_is_an_option_of_its_cli():
    import re

    points = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())["entry_points"]
    for name, entry in points.items():
        command = importlib.import_module(f"steps.{name}").main
        options = {opt for param in command.params for opt in param.opts}
        flags = set(re.findall(r"--[a-z0-9-]+", entry["command"]))
        assert flags <= options, (name, flags - options)
        assert len(flags) == len(entry["parameters"]), name  # one flag per declared param


def test_conda_project_is_the_same_project_with_conda_env():
    conda_dir = PROJECT_DIR / "conda"
    conda_project = yaml.safe_load((conda_dir / "MLproject").read_text())
    project = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())
    assert conda_project["conda_env"] == "conda.yaml" and "python_env" not in conda_project
    assert conda_project["entry_points"] == project["entry_points"]
    assert (conda_dir / "steps").resolve() == (PROJECT_DIR / "steps").resolve()
    assert (conda_dir / "conda.yaml").resolve() == (PROJECT_DIR / "conda.yaml").resolve()


def test_main_runs_nested_steps_from_the_project_it_was_started_in():
    import subprocess
    import sys

    code = "from steps.main import PROJECT_DIR; print(PROJECT_DIR)"
    for directory in (PROJECT_DIR, PROJECT_DIR / "conda"):
        out = subprocess.run([sys.executable, "-c", code], cwd=directory, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == str(directory)


def test_spark_executors_get_the_project_sources_the_same_bytes_each_time(tmp_path):
    """The `steps` package shipped to Spark executors: every module's source and no bytecode (which this Python
    writes as it imports, so it changes between two calls: Spark refuses a second file of one name with other
    contents in a session). Two calls ship the same bytes."""
    import types
    import zipfile
    from pathlib import Path

    from steps.lib.spark import ship_steps_package

    shipped: list[bytes] = []  # what ship_steps_package asks of a Spark session: its context's addPyFile
    session = types.SimpleNamespace(
        sparkContext=types.SimpleNamespace(addPyFile=lambda path: shipped.append(Path(path).read_bytes()))
    )
    cache = PROJECT_DIR / "steps" / "lib" / "__pycache__"
    cache.mkdir(exist_ok=True)
    ship_steps_package(session)
    (cache / "written-between-calls.cpython-311.pyc").write_bytes(b"bytecode")
    try:
        ship_steps_package(session)
    finally:
        (cache / "written-between-calls.cpython-311.pyc").unlink()
    first, second = shipped
    assert first == second
    (tmp_path / "steps.zip").write_bytes(first)
    names = zipfile.ZipFile(tmp_path / "steps.zip").namelist()
    sources = sorted(str(p.relative_to(PROJECT_DIR)) for p in (PROJECT_DIR / "steps").rglob("*.py"))
    assert sorted(names) == sources and "steps/lib/trials.py" in names

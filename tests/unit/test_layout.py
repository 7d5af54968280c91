"""The house rules: one module per entry point in steps/, shared code in steps/lib, imports that descend.

And the step cache's code digest: a change re-runs exactly the steps whose code it is.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from steps.lib.cache import code_digest, code_files
from steps.lib.model_loading import SCAN_BEFORE_MLFLOW
from tests.conftest import PROJECT_DIR

STEPS_DIR = PROJECT_DIR / "steps"
ENTRY_POINTS = sorted(yaml.safe_load((PROJECT_DIR / "MLproject").read_text())["entry_points"])
CACHED_STEPS = ("load", "featurize", "tune", "train", "evaluate")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (PROJECT_DIR / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PROJECT_DIR).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in the file, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def steps_modules_imported(path: Path) -> set[str]:
    """The modules of the steps package a file imports (`from steps.lib import x` counts as steps.lib.x)."""
    known = {module_name(p) for p in python_files("steps")}
    modules = set()
    for module, names in imports_of(path):
        if module.startswith("steps"):
            modules |= {f"{module}.{name}" for name in names if f"{module}.{name}" in known} or {module}
    return modules & known


def test_steps_holds_one_module_per_entry_point_and_the_lib():
    entries = sorted(p.stem for p in STEPS_DIR.glob("*.py") if p.stem != "__init__")
    assert entries == ENTRY_POINTS
    assert sorted(p.name for p in STEPS_DIR.iterdir() if p.is_dir() and p.name != "__pycache__") == ["lib"]


@pytest.mark.parametrize("path", python_files("steps"), ids=lambda p: str(p.relative_to(PROJECT_DIR)))
def test_no_long_files_or_functions(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_FILE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{node.name} is {length} lines"


def test_the_lib_never_imports_an_entry_module():
    entry_modules = {f"steps.{name}" for name in ENTRY_POINTS}
    for path in python_files("steps/lib"):
        assert not steps_modules_imported(path) & entry_modules, path


def test_an_entry_module_is_imported_elsewhere_only_for_its_run_function():
    """Outside tests/: tune's documented fallback imports run_load and run_featurize, nothing else may."""
    for path in python_files("steps", "bench", "scripts"):
        for module, names in imports_of(path):
            step = module.removeprefix("steps.")
            if step in ENTRY_POINTS and module_name(path) != module:
                assert names == [f"run_{step}"], (path, module, names)


def test_no_import_cycles():
    graph = {module_name(path): steps_modules_imported(path) for path in python_files("steps")}

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, " -> ".join((*trail, module))
        for imported in graph.get(module, ()):
            if imported != module and not module.startswith(imported + "."):  # a package's own __init__
                visit(imported, (*trail, module))

    for module in graph:
        visit(module, ())


def first_import(path: Path) -> str:
    """The first module a file imports, after `from __future__`."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            return node.module or ""
        if isinstance(node, ast.Import):
            return node.names[0].name
    return ""


def test_the_steps_that_import_skops_import_scipy_special_before_mlflow():
    """skops' start-up scan is short only when scipy.special was loaded before MLflow (model_loading.py)."""
    first = {entry: first_import(STEPS_DIR / f"{entry}.py") for entry in ENTRY_POINTS}
    assert sorted(entry for entry, module in first.items() if module == "scipy.special") == sorted(SCAN_BEFORE_MLFLOW)


# --------------------------------------------------------------------------- what the cache key covers

# lib module -> the cached steps whose code digest covers it (every other cached step is left alone).
EXPECTED_USERS = {
    "artifacts": {"load", "featurize", "tune", "train", "evaluate"},
    "cache": set(),
    "cards": set(CACHED_STEPS),  # through runner: a failed step's card
    "charts": {"load", "tune", "evaluate"},  # and monitor: their figures as SVG
    "column_types": {"load", "featurize", "tune", "train", "evaluate"},  # through tables; and predict, monitor
    "console": set(CACHED_STEPS),  # through runner: every step's log
    "csv_dialect": {"load", "featurize", "tune", "train", "evaluate"},  # through tables; and predict, monitor
    "drift": set(),  # monitor's
    "errors": set(CACHED_STEPS),
    "explain": {"evaluate"},
    "features": {"load", "featurize", "tune", "train", "evaluate"},
    "gates": {"evaluate"},
    "keys": {"evaluate"},  # and predict, monitor
    "metrics": {"tune", "train", "evaluate"},
    "model_card": {"evaluate"},
    "model_loading": {"evaluate"},  # and predict, monitor: every model load
    "models": {"tune", "train", "evaluate"},
    "names": set(CACHED_STEPS),
    "process": set(CACHED_STEPS),
    "profiles": set(),  # main's and reproduce's
    "reaper": set(),
    "registry": {"evaluate"},
    "runner": set(CACHED_STEPS),
    "scoring": set(),  # predict's, both backends
    "search": {"tune"},
    "signing": {"load", "featurize", "tune", "train", "evaluate"},  # and main
    "search_options": {"tune"},
    "search_results": {"tune"},
    "search_space": {"tune"},
    "sources": {"load", "featurize", "train", "evaluate"},
    "spark": {"tune"},  # and predict
    "spark_scoring": set(),  # predict's
    "spark_search": {"tune"},
    "split_options": {"featurize"},  # and main
    "splits": {"featurize", "tune", "train", "evaluate"},
    "step_cards": {"load", "featurize", "tune", "train", "evaluate"},  # and predict, monitor, reproduce, main
    "story": set(CACHED_STEPS),  # through runner: a failed step's description
    "tables": {"load", "featurize", "tune", "train", "evaluate"},
    "trial_logger": {"tune"},
    "timed_trials": {"tune"},
    "trials": {"tune"},
    "transforms": {"featurize", "tune", "train", "evaluate"},  # and shipped inside the models that use it
    "text_values": {"featurize", "tune", "train", "evaluate"},  # and shipped inside the models that use it
    "uris": set(CACHED_STEPS),
}


def test_each_lib_module_reaches_the_cache_keys_of_exactly_the_steps_that_import_it():
    covered = {step: set(code_files(PROJECT_DIR, step)) for step in CACHED_STEPS}
    modules = sorted(p.stem for p in (STEPS_DIR / "lib").glob("*.py") if p.stem != "__init__")
    assert modules == sorted(EXPECTED_USERS)
    for module in modules:
        users = {step for step in CACHED_STEPS if f"steps/lib/{module}.py" in covered[step]}
        assert users == EXPECTED_USERS[module], module
    for step in CACHED_STEPS:  # never another entry module: upstream steps enter by their output digests
        assert [f for f in covered[step] if f.count("/") == 1 and f != "steps/__init__.py"] == [f"steps/{step}.py"]


@pytest.fixture
def project_copy(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(STEPS_DIR, project / "steps", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_DIR / "MLproject", project / "MLproject")
    return project


def digests(project: Path) -> dict[str, str]:
    return {step: code_digest(project, step) for step in CACHED_STEPS}


def changed_steps(project: Path, edit) -> set[str]:
    before = digests(project)
    edit(project)
    after = digests(project)
    return {step for step in CACHED_STEPS if before[step] != after[step]}


def append(relative: str, text: str = "\n# a comment\n"):
    def edit(project: Path) -> None:
        path = project / relative
        path.write_text(path.read_text() + text)

    return edit


def test_a_change_re_runs_exactly_the_steps_whose_code_it_is(project_copy):
    assert changed_steps(project_copy, append("steps/load.py")) == {"load"}
    assert changed_steps(project_copy, append("steps/lib/gates.py")) == {"evaluate"}
    assert changed_steps(project_copy, append("steps/lib/search.py")) == {"tune"}
    assert changed_steps(project_copy, append("steps/lib/runner.py")) == set(CACHED_STEPS)


def test_files_a_lib_module_reads_at_run_time_are_part_of_its_users_code(project_copy):
    """A module names them in RUNTIME_FILES (a template, a list): a change to one re-runs its users only."""
    (project_copy / "steps" / "lib" / "templates").mkdir()
    (project_copy / "steps" / "lib" / "templates" / "card.html").write_text("<html></html>\n")
    declare = append("steps/lib/model_card.py", '\nRUNTIME_FILES = ("templates/card.html",)\n')
    assert changed_steps(project_copy, declare) == {"evaluate"}
    assert "steps/lib/templates/card.html" in code_files(project_copy, "evaluate")
    assert changed_steps(project_copy, append("steps/lib/templates/card.html", "<p>more</p>\n")) == {"evaluate"}

"""The step cache: what decides a step's output (its key), and a finished run with that key to reuse.

A step's code digest covers its own module, the `steps/lib` modules it imports (directly or not),
the files those modules read at run time (each lists them in `RUNTIME_FILES`), and its MLproject
declaration; never another entry module: an upstream step enters through its output digest. So a
change to a lib module re-runs exactly the steps that import it.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.metadata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from steps.lib.artifacts import digest_json, digest_path, fetched
from steps.lib.errors import PipelineError
from steps.lib.names import (
    BEST_PARAMS,
    CACHE_KEY_TAG,
    DATA_DIR,
    EVALUATION_DIR,
    MODEL_URI_TAG,
    OUTPUT_DIGEST_TAG,
    SPLITS_DIR,
)
from steps.lib.signing import (
    MANIFEST_TAG,
    SIGNATURE_TAG,
    parse_manifest,
    rehash_problem,
    secret_file,
    sign,
    signature_verifies,
)
from steps.lib.tables import is_remote, local_copy
from steps.lib.uris import redact_uri

# Params that point at an earlier step's run: the key uses what that run produced instead.
# data_copy: main's own fetch of a remote data_uri, whose digest is the key's data input.
URI_PARAMS = frozenset({"raw_data_uri", "splits_uri", "params_uri", "model_uri", "data_copy"})
ENV_FILES = ("python_env.yaml", "conda.yaml", "requirements.txt", "requirements.lock")
PACKAGE_FILES = ("steps/__init__.py", "steps/lib/__init__.py")
LIB_PREFIX = "steps.lib."


T = TypeVar("T")


def entry_point_spec(project: Path, entry_point: str) -> dict[str, Any]:
    """The entry point as MLproject declares it (params with types, command)."""
    return copy.deepcopy(unchanged_file(project / "MLproject", yaml.safe_load)["entry_points"][entry_point])


def unchanged_file(path: Path, parse: Callable[[str], T]) -> T:
    """`parse` of the file's text, once per process for the same text (main asks for the same modules' syntax
    trees and the same MLproject for every step: ~0.4 s of each run went to parsing them again)."""
    return _parsed(path.read_text(), parse)


@functools.cache
def _parsed(text: str, parse: Callable[[str], T]) -> T:
    return parse(text)


def normalise_value(kind: str, value: Any) -> Any:
    """A param as its declared type: 1e-05 and 0.00001 are the same float, "3" and 3 the same int."""
    if kind in ("int", "float"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        return int(number) if kind == "int" and number.is_integer() else number
    return str(value)


def normalise_params(project: Path, entry_point: str, parameters: dict[str, Any]) -> dict[str, Any]:
    declared = entry_point_spec(project, entry_point)["parameters"]
    return {
        name: normalise_value(declared.get(name, {}).get("type", "string"), value)
        for name, value in sorted(parameters.items())
        if name not in URI_PARAMS
    }


def imported_lib_modules(source: Path) -> list[str]:
    """The `steps.lib` modules a module imports, at the top or inside a function, as file paths."""
    names: list[str] = []
    for node in ast.walk(unchanged_file(source, ast.parse)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]  # from steps.lib import search
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [f"{name.replace('.', '/')}.py" for name in names if name.startswith(LIB_PREFIX)]


def runtime_files(project: Path, module: str) -> list[str]:
    """The files a module reads at run time, as its module-level `RUNTIME_FILES` names them."""
    for node in unchanged_file(project / module, ast.parse).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "RUNTIME_FILES" for t in node.targets):
            return [str(Path(module).parent / name) for name in ast.literal_eval(node.value)]
    return []


def step_modules(project: Path, entry_point: str) -> list[str]:
    """The step's module and every `steps/lib` module it imports, directly or not."""
    found: set[str] = set()
    pending = [f"steps/{entry_point}.py"]
    while pending:
        module = pending.pop()
        if module in found or not (project / module).exists():
            continue
        found.add(module)
        pending += imported_lib_modules(project / module)
    return sorted(found | set(PACKAGE_FILES))


def code_files(project: Path, entry_point: str) -> list[str]:
    """Every file the step's code digest covers: its modules and the files they read."""
    modules = step_modules(project, entry_point)
    return sorted({*modules, *(name for module in modules for name in runtime_files(project, module))})


def code_digest(project: Path, entry_point: str) -> str:
    """The step's code files and its MLproject declaration."""
    files = code_files(project, entry_point)
    return digest_json(
        {"files": {f: digest_path(project / f) for f in files}, "entry_point": entry_point_spec(project, entry_point)}
    )


def env_digest(project: Path) -> str:
    """The environment spec: python_env.yaml and the requirement files it installs."""
    return digest_json({f: digest_path(project / f) for f in ENV_FILES if (project / f).exists()})


def data_digest(data_uri: str, copy: Path | None = None) -> str:
    """The content of the data load will read (a bundled set: its name and scikit-learn's version).

    `copy`: the bytes already fetched from a remote `data_uri`, which load is handed to read.
    """
    if data_uri.startswith("sklearn:"):  # the installed version, read without importing scikit-learn (~1-2 s)
        return f"{data_uri}@scikit-learn=={importlib.metadata.version('scikit-learn')}"
    if copy is not None:
        return digest_path(copy)
    try:
        with local_copy(data_uri) as local:
            return digest_path(local)
    except PipelineError:  # load itself reports the problem
        return f"unavailable:{redact_uri(data_uri)}"


@contextmanager
def fetched_once(data_uri: str) -> Iterator[Path | None]:
    """For main: a remote `data_uri` fetched once, for the cache digest and for load to read; removed after.

    None for local data. A fetch that fails (past the size cap or the deadline, refused, unreachable) fails main
    in one line here: trying again for the digest and again in load would only wait out the same limits twice.
    """
    if not is_remote(data_uri):
        yield None
        return
    with local_copy(data_uri) as path:
        yield path


def installed_versions(project: Path) -> dict[str, str]:
    """The installed version of each direct requirement (requirements.txt): under --env-manager local the
    environment is whatever is installed, not what the requirement files say."""
    names = []
    for line in (project / "requirements.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            names.append(requirement.split("==")[0].split(">=")[0].split("[")[0].strip())
    installed = {}
    for name in sorted(names):
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed[name] = "missing"
    return installed


def cache_key(
    project: Path, entry_point: str, parameters: dict[str, Any], inputs: dict[str, str], env_manager: str
) -> str:
    """What decides a step's output: entry point, typed params, code, environment, input digests."""
    return digest_json(
        {
            "entry_point": entry_point,
            "params": normalise_params(project, entry_point, parameters),
            "code": code_digest(project, entry_point),
            "env": env_digest(project),
            "env_manager": env_manager,
            "installed": installed_versions(project) if env_manager == "local" else None,
            "inputs": inputs,
        }
    )


def outputs_exist(client: MlflowClient, entry_point: str, run: Run) -> bool:
    """Whether what the run produced is still there to be reused."""
    try:
        if entry_point == "train":
            return bool(mlflow.artifacts.list_artifacts(artifact_uri=run.data.tags[MODEL_URI_TAG]))
        if entry_point == "evaluate":
            tags = run.data.tags
            client.get_model_version(tags["registered_model.name"], tags["registered_model.version"])
            return bool(client.list_artifacts(run.info.run_id, EVALUATION_DIR))
        expected = {"load": DATA_DIR, "featurize": SPLITS_DIR, "tune": BEST_PARAMS}[entry_point]
        return any(artifact.path == expected for artifact in client.list_artifacts(run.info.run_id))
    except Exception:  # a deleted run, artifact or model version: not reusable
        return False


def reusable_run(client: MlflowClient, experiment_id: str, entry_point: str, key: str) -> tuple[Run | None, list[str]]:
    """The newest FINISHED run with this cache key whose outputs still exist, whose cache record is signed with
    the user's secret and whose output files re-hash to its manifest; and why other runs with the key were not
    taken (a tag is anyone's to write on a shared store: a key alone proves nothing)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CACHE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=10,
    )
    rejected = []
    for run in runs:
        if OUTPUT_DIGEST_TAG not in run.data.tags or not outputs_exist(client, entry_point, run):
            continue
        why = untrusted_because(run, key)
        if why is None:
            return run, rejected
        rejected.append(f"run {run.info.run_id} not reused: {why}")
    return None, rejected


def untrusted_because(run: Run, key: str) -> str | None:
    """Why a run with the key may not be reused (None: it may)."""
    manifest = parse_manifest(run.data.tags.get(MANIFEST_TAG))
    if manifest is None:
        return "it has no output manifest (made before verified reuse, or not by this pipeline)"
    signature = run.data.tags.get(SIGNATURE_TAG, "")
    if not signature_verifies(run.info.run_id, key, manifest, signature):
        return f"its cache record is not signed with your secret ({secret_file()})"
    problem = rehash_problem(manifest, fetched)
    if problem is not None:
        return f"its outputs do not match their manifest ({problem})"
    return None


def sign_step_run(client: MlflowClient, run_id: str, key: str) -> None:
    """Record a step run main has just seen finish as reusable: its cache key, and the key with its output
    manifest signed with the user's secret. A run without a manifest gets the key only (never reused)."""
    manifest = parse_manifest(client.get_run(run_id).data.tags.get(MANIFEST_TAG))
    if manifest is not None:
        client.set_tag(run_id, SIGNATURE_TAG, sign(run_id, key, manifest))
    client.set_tag(run_id, CACHE_KEY_TAG, key)

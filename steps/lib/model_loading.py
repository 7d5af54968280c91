"""The one way a step loads a model from the tracking store: only models this project logs, no code they carry.

Anything in a shared store may have been written by anyone with access to it. MLflow's own loaders follow
the model's `MLmodel` file: a `serialization_format: pickle` model is unpickled (a `__reduce__` payload runs),
and for skops the list of trusted types is read from that same file. This loader accepts only what `train`
logs (the sklearn flavor in skops format, loaded by `mlflow.sklearn`), loads it with the project's own trusted
types (`SKOPS_TRUSTED_TYPES`), never the model's, and accepts as code only the project's modules that train
ships (`SHIPPED_CODE`), byte for byte as in this checkout. The model's code folder is never imported: the
identical modules of this checkout are. Anything else is refused in one line naming the model.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from steps.lib.artifacts import FetchError, fetched
from steps.lib.errors import PipelineError, one_line
from steps.lib.models import PROJECT_ROOT, SHIPPED_CODE, SKOPS_TRUSTED_TYPES
from steps.lib.signing import MANIFEST_TAG, changed_file, parse_manifest, sha256_file

CODE_DIR = "code"  # where MLflow keeps a model's code_paths

# The steps that import skops import scipy.special first, before MLflow. skops lists its trusted types as it is
# imported, looking each of scipy.special's ~950 ufuncs up in every module loaded before scipy.special (pickle's
# whichmodule, through each module's __getattr__): after MLflow's ~2,000 modules `import skops.io` took 1.8-2.1 s,
# with scipy.special first 0.6-0.8 s (docs/performance.md). tests/unit/test_layout.py holds the steps to it.
SCAN_BEFORE_MLFLOW = ("train", "evaluate", "predict", "monitor")


@dataclass(frozen=True)
class LoadedModel:
    """A checked model: the fitted scikit-learn pipeline, and the pyfunc around it (signature, checked input)."""

    uri: str
    sklearn: Any
    pyfunc: Any


class _Predictor:
    """What mlflow.sklearn's pyfunc wraps around a pipeline: predict (and the raw model for probabilities)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        return self.model.predict(data)

    def get_raw_model(self) -> Any:
        return self.model


def load_model(model_uri: str, folder: Path | None = None) -> LoadedModel:
    """Fetch, check and load a model this project logged; a one-line PipelineError naming `model_uri` otherwise.

    `folder`: the model already fetched from `model_uri` (checked and loaded from there).
    """
    if folder is not None:
        return load_checked(model_uri, folder)
    try:
        with fetched(model_uri, "the model") as fetched_folder:
            return load_checked(model_uri, fetched_folder)
    except FetchError as error:
        raise PipelineError(
            f"model '{model_uri}' cannot be loaded ({error.detail}); check the name, version or alias, "
            "e.g. run `mlflow run . -e main` first to register a champion"
        ) from None


def load_checked(model_uri: str, folder: Path) -> LoadedModel:
    if folder.is_file():  # e.g. runs:/<id>/model/model.skops: the model is its folder, not one file
        raise PipelineError(f"model '{model_uri}' is a file; pass the model's folder or models:/ URI")
    check_against_train_manifest(model_uri, folder)
    meta = read_mlmodel(model_uri, folder)
    model_file = check_model_folder(model_uri, folder, meta)
    fitted = load_skops(model_uri, model_file)
    return LoadedModel(model_uri, fitted, wrap_pyfunc(model_uri, folder, fitted))


def check_against_train_manifest(model_uri: str, folder: Path) -> None:
    """The model's files hash as the manifest its train run recorded says (tag outputs.manifest, root
    models:/<model id>): a model changed after it was logged is refused. Models without one (logged by other
    tools, or before manifests) are checked by the rules below only."""
    manifest = train_manifest(model_uri)
    if manifest is None:
        return
    changed = changed_file(folder, manifest["files"])
    if changed is not None:
        raise refused(model_uri, f"its {changed} differs from what its train run logged")


def train_manifest(model_uri: str) -> dict[str, Any] | None:
    """The manifest of the train run that logged the model a models:/ URI names; None when there is none."""
    from mlflow.tracking import MlflowClient

    if not model_uri.startswith("models:/"):
        return None
    client = MlflowClient()
    path = model_uri.removeprefix("models:/")
    try:
        if path.startswith("m-") and "/" not in path and "@" not in path:
            model_id, run_id = path, client.get_logged_model(path).source_run_id
        else:
            name, at, rest = path.partition("@")
            version = (
                client.get_model_version_by_alias(name, rest) if at else client.get_model_version(*path.split("/", 1))
            )
            model_id, run_id = version.model_id, version.run_id
        if not model_id or not run_id:
            return None
        manifest = parse_manifest(client.get_run(run_id).data.tags.get(MANIFEST_TAG))
    except Exception:  # a URI MLflow resolved another way: the checks below still apply
        return None
    return manifest if manifest is not None and manifest["root"] == f"models:/{model_id}" else None


class ModelRefusedError(PipelineError):
    """A model the safe loader will not load: not logged by this project's train step, or changed since."""


def refused(model_uri: str, why: str) -> ModelRefusedError:
    return ModelRefusedError(
        f"model '{model_uri}' refused: {why}; only models logged by this project's train step are loaded "
        "(scikit-learn, skops format, no code but the project's own; see docs/security.md)"
    )


def read_mlmodel(model_uri: str, folder: Path) -> dict[str, Any]:
    path = folder / "MLmodel"
    if not path.is_file():
        raise refused(model_uri, "it has no MLmodel file")
    try:
        meta = yaml.safe_load(path.read_text())  # plain data only: no YAML tags that build objects
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise refused(model_uri, f"its MLmodel file is not valid YAML ({one_line(str(error), 80)})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("flavors"), dict):
        raise refused(model_uri, "its MLmodel file has no flavors")
    return meta


def check_model_folder(model_uri: str, folder: Path, meta: dict[str, Any]) -> Path:
    """The model's skops file, once its flavors and its code are what train logs."""
    flavors = meta["flavors"]
    sklearn = flavors.get("sklearn")
    if not isinstance(sklearn, dict):
        raise refused(model_uri, f"it is not a scikit-learn model (flavors: {', '.join(map(str, flavors))})")
    serialization = sklearn.get("serialization_format")
    if serialization != "skops":
        raise refused(model_uri, f"its serialization format is {serialization!r}, not skops (pickle runs code)")
    pyfunc = flavors.get("python_function")
    if pyfunc is not None and (not isinstance(pyfunc, dict) or pyfunc.get("loader_module") != "mlflow.sklearn"):
        loader = pyfunc.get("loader_module") if isinstance(pyfunc, dict) else pyfunc
        raise refused(model_uri, f"its python_function flavor loads through {loader!r}, not mlflow.sklearn")
    name = sklearn.get("pickled_model")
    if not isinstance(name, str) or Path(name).name != name or not (folder / name).is_file():
        raise refused(model_uri, f"its model file {name!r} is not a file in the model's folder")
    for flavor in (sklearn, pyfunc or {}):
        if flavor.get("code") not in (None, CODE_DIR):
            raise refused(model_uri, f"its code folder is {flavor.get('code')!r}")
    check_shipped_code(model_uri, folder / CODE_DIR)
    return folder / name


def check_shipped_code(model_uri: str, code: Path) -> None:
    """The model's code folder holds only SHIPPED_CODE, each file byte-identical to this checkout's, and Python's
    own bytecode cache of those modules (see `bytecode_problem`)."""
    if not code.exists():
        return
    allowed = {Path(relative): sha256_file(PROJECT_ROOT / relative) for relative in SHIPPED_CODE}
    folders = {parent for relative in allowed for parent in relative.parents if parent != Path(".")}
    caches = {folder / "__pycache__" for folder in folders}
    for path in sorted(code.rglob("*")):
        relative = path.relative_to(code)
        if not path.is_symlink() and path.is_file() and relative.parent in caches:
            problem = bytecode_problem(path, relative, allowed)
            if problem is not None:
                raise refused(model_uri, problem)
            continue
        folder = relative in folders or relative in caches
        expected = (folder and path.is_dir()) or (relative in allowed and path.is_file())
        if path.is_symlink() or not expected:
            raise refused(model_uri, f"it carries code this project does not ship: {CODE_DIR}/{relative}")
        if relative in allowed and sha256_file(path) != allowed[relative]:
            raise refused(model_uri, f"its copy of {relative} differs from this checkout's")


MAX_BYTECODE_BYTES = 4 * 1024 * 1024  # a shipped module's bytecode is ~10 KB


def bytecode_problem(path: Path, relative: Path, allowed: dict[Path, str]) -> str | None:
    """Why a file of a `__pycache__` folder in the model's code is not this Python's bytecode of a shipped module,
    compiled from this checkout's copy (None: it is).

    Python writes that cache beside the model's copy of a module whenever the model's code is imported in place:
    `mlflow models serve` or `mlflow.pyfunc.load_model` of a model in a local store does. It is what such a load
    runs next time, so it is checked as the modules are: read with `marshal` (which builds values and code
    objects, and calls nothing), and compared with the checkout's module as this Python compiles it (code
    objects compare their bytecode, constants and names, not the file name they were compiled under). It is
    never run here: these steps import this checkout's modules, not the model's.
    """
    import importlib.util
    import marshal
    import sys

    shown = f"{CODE_DIR}/{relative}"
    # <module>.<tag>.pyc, or <module>.<tag>.opt-1.pyc for bytecode compiled under -O (opt-2: -OO)
    parts = path.name.split(".")
    level = parts[2:-1]
    source = relative.parent.parent / f"{parts[0]}.py"
    if len(parts) < 3 or parts[-1] != "pyc" or level not in ([], ["opt-1"], ["opt-2"]) or source not in allowed:
        return f"it carries code this project does not ship: {shown}"
    this_python = sys.implementation.cache_tag
    if parts[1] != this_python:
        return f"its bytecode {shown} was not written by this Python ({this_python}), so it cannot be checked"
    data = path.read_bytes() if path.stat().st_size <= MAX_BYTECODE_BYTES else b""
    try:
        if data[:4] != importlib.util.MAGIC_NUMBER:
            raise ValueError("not this Python's bytecode")
        loaded = marshal.loads(data[16:])  # after the header: magic, flags, source time and size (or hash)
    except Exception:  # marshal raises ValueError, EOFError, TypeError, ... on bytes it cannot read
        return f"its bytecode {shown} is not Python bytecode this Python reads"
    optimize = int(level[0].removeprefix("opt-")) if level else 0
    compiled = compile((PROJECT_ROOT / source).read_bytes(), str(source), "exec", dont_inherit=True, optimize=optimize)
    try:
        same = type(loaded) is type(compiled) and loaded == compiled
    except RecursionError:  # constants nested deeper than any module's: not the checkout's
        same = False
    return None if same else f"its bytecode {shown} is not this checkout's {source} compiled"


def load_skops(model_uri: str, model_file: Path) -> Any:
    """The pipeline, rebuilt by skops from the project's own list of trusted types (never the model's).

    skops audits the file's types against that list before it builds anything, so one read does both (asking
    it first which types the file holds read and parsed the file twice: ~0.4 s more per load of a model trained
    on a million rows); the types are listed again only to name them in a refusal."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.load(model_file, trusted=list(SKOPS_TRUSTED_TYPES))
    except UntrustedTypesFoundException:
        raise refused(model_uri, f"it holds types this project does not trust: {untrusted_types(model_file)}") from None
    except Exception as error:
        if not is_skops_file(model_file):
            raise refused(model_uri, f"its model file is not a skops file ({one_line(str(error), 80)})") from None
        raise refused(model_uri, f"skops cannot load it ({one_line(str(error), 120)})") from None


def is_skops_file(path: Path) -> bool:
    """A zip archive with the schema skops writes."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "schema.json" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def untrusted_types(model_file: Path) -> str:
    """The types in a skops file outside the project's list, the first three named."""
    import skops.io

    untrusted = sorted(set(skops.io.get_untrusted_types(file=model_file)) - set(SKOPS_TRUSTED_TYPES))
    shown = ", ".join(one_line(name, 80) for name in untrusted[:3])  # names read from the file: one line each
    return shown + (f" and {len(untrusted) - 3} more" if len(untrusted) > 3 else "")


def wrap_pyfunc(model_uri: str, folder: Path, fitted: Any) -> Any:
    """The pyfunc MLflow's loader would have built (signature, input checks), around the pipeline loaded here."""
    from mlflow.models import Model
    from mlflow.pyfunc import PyFuncModel

    try:
        meta = Model.load(str(folder / "MLmodel"))  # MLflow reads it with yaml.safe_load
    except Exception as error:
        raise refused(model_uri, f"MLflow cannot read its MLmodel file ({one_line(str(error), 120)})") from None
    return PyFuncModel(model_meta=meta, model_impl=_Predictor(fitted), model_id=model_id_of(model_uri))


def model_id_of(model_uri: str) -> str | None:
    """The logged model's id behind a models:/ URI, as mlflow.models.evaluate would derive it (None otherwise)."""
    from mlflow.store.artifact.utils.models import _parse_model_id_if_present

    try:
        return _parse_model_id_if_present(model_uri)
    except Exception:
        return None

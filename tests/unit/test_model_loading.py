"""The one safe model loader: a model planted in a shared store never runs code, in any step that loads one."""

from __future__ import annotations

import importlib.util
import os
import pickle
import py_compile
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from steps.lib.errors import PipelineError
from steps.lib.model_loading import load_model
from steps.lib.models import SHIPPED_CODE
from tests.conftest import PROJECT_DIR, log_as_train_does, logged_model_of, users_rows


class Planted:
    """An object whose rebuilding writes a marker file: what an attacker's payload would run instead."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:  # skops rebuilds an object through its __setstate__
        Path(state["marker"]).write_text("ran")

    def __reduce__(self):  # pickle rebuilds an object by calling what __reduce__ names
        return (Path.write_text, (Path(self.marker), "ran"))


def ship_the_project_code(folder: Path, sklearn: dict, pyfunc: dict) -> None:
    """The model's code folder as train writes it for a model that uses the project's transformers."""
    for relative in SHIPPED_CODE:
        (folder / "code" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_DIR / relative, folder / "code" / relative)
    sklearn["code"] = pyfunc["code"] = "code"


def plant(folder: Path, kind: str, marker: Path) -> None:
    """Tamper with a logged model's folder as someone with write access to the store could."""
    import skops.io

    meta = yaml.safe_load((folder / "MLmodel").read_text())
    sklearn, pyfunc = meta["flavors"]["sklearn"], meta["flavors"]["python_function"]
    if kind == "pickle":
        (folder / "model.pkl").write_bytes(pickle.dumps(Planted(str(marker))))
        sklearn.update(serialization_format="pickle", pickled_model="model.pkl")
        pyfunc["model_path"] = "model.pkl"
    elif kind == "skops trusting its own types":
        skops.io.dump(Planted(str(marker)), folder / sklearn["pickled_model"])
        sklearn["skops_trusted_types"] = [*sklearn.get("skops_trusted_types", []), f"{__name__}.Planted"]
    elif kind == "extra code":
        (folder / "code" / "steps" / "lib").mkdir(parents=True, exist_ok=True)
        (folder / "code" / "steps" / "lib" / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
        sklearn["code"] = pyfunc["code"] = "code"
    elif kind == "changed copy of the project's code":
        ship_the_project_code(folder, sklearn, pyfunc)
        with (folder / "code" / "steps" / "lib" / "transforms.py").open("a") as file:
            file.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    elif kind.startswith("bytecode"):  # what Python would run next time the model's code is imported in place
        ship_the_project_code(folder, sklearn, pyfunc)
        cache = folder / "code" / "steps" / "lib" / "__pycache__"
        cache.mkdir()
        changed = marker.parent / "transforms.py"
        changed.write_text(f"{(PROJECT_DIR / 'steps/lib/transforms.py').read_text()}\nopen({str(marker)!r}, 'w')\n")
        name = {"bytecode of a module not shipped": "evil"}.get(kind, "transforms")
        tag = "cpython-0" if kind == "bytecode of another Python" else sys.implementation.cache_tag
        py_compile.compile(str(changed), cfile=str(cache / f"{name}.{tag}.pyc"), doraise=True)
        if kind == "bytecode that is not bytecode":
            (cache / f"{name}.{tag}.pyc").write_bytes(importlib.util.MAGIC_NUMBER + bytes(12) + b"\xff not marshal")
    elif kind == "not a skops file":
        (folder / sklearn["pickled_model"]).write_bytes(b"\x80\x04 a pickle, or anything else")
    elif kind == "a zip that is not skops":
        with zipfile.ZipFile(folder / sklearn["pickled_model"], "w") as archive:
            archive.writestr("payload.py", f"open({str(marker)!r}, 'w').write('ran')\n")
    elif kind == "another loader":
        pyfunc["loader_module"] = "mlflow.pyfunc.model"
    (folder / "MLmodel").write_text(yaml.safe_dump(meta))


PYCACHE, TAG = "code/steps/lib/__pycache__", sys.implementation.cache_tag
REFUSALS = {
    "pickle": "its serialization format is 'pickle', not skops",
    "skops trusting its own types": f"it holds types this project does not trust: {__name__}.Planted",
    "extra code": "it carries code this project does not ship: code/steps/lib/evil.py",
    "changed copy of the project's code": "its copy of steps/lib/transforms.py differs from this checkout's",
    "bytecode of changed code": f"its bytecode {PYCACHE}/transforms.{TAG}.pyc is not this checkout's "
    "steps/lib/transforms.py compiled",
    "bytecode of a module not shipped": f"it carries code this project does not ship: {PYCACHE}/evil.{TAG}.pyc",
    "bytecode of another Python": f"its bytecode {PYCACHE}/transforms.cpython-0.pyc was not written by this Python "
    f"({TAG}), so it cannot be checked",
    "bytecode that is not bytecode": f"its bytecode {PYCACHE}/transforms.{TAG}.pyc is not Python bytecode this "
    "Python reads",
    "not a skops file": "its model file is not a skops file",
    "a zip that is not skops": "its model file is not a skops file",
    "another loader": "its python_function flavor loads through 'mlflow.pyfunc.model', not mlflow.sklearn",
}


@pytest.fixture
def genuine(tracking_uri, tmp_path) -> Path:
    """A model logged as train logs it, copied out of the store into a folder of its own."""
    uri = logged_model_of(users_rows(300, 1), "income class")
    folder = tmp_path / "model"
    shutil.copytree(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "download")), folder)
    return folder


def test_a_model_train_logs_loads_with_its_signature(genuine):
    loaded = load_model(str(genuine))
    rows = users_rows(20, 2).drop(columns="income class")
    assert list(loaded.pyfunc.predict(rows)) == list(loaded.sklearn.predict(rows))
    assert [c.name for c in loaded.pyfunc.metadata.get_input_schema().inputs] == list(rows.columns)


def test_a_model_logged_before_text_values_still_loads_and_scores_as_it_did(tracking_uri, tmp_path):
    """Such a model holds transforms.DateParts (ISO 8601 only) and ships the three files of its time, not
    text_values.py: this checkout loads it, with the unchanged transforms.py, and it scores as it did."""
    from steps.lib.features import build_feature_spec
    from steps.lib.models import MODEL_FAMILIES, SKOPS_TRUSTED_TYPES, fit_model
    from steps.lib.splits import Splits
    from steps.lib.transforms import DateParts

    rng = np.random.default_rng(4)
    when = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 2 * 365 * 24, 300), unit="h")
    frame = users_rows(300, 1).assign(**{"signed up": when.strftime("%Y-%m-%dT%H:%M:%S")})
    spec = build_feature_spec(frame, "income class")
    family = MODEL_FAMILIES["hist_gradient_boosting"]
    model = fit_model(Splits(frame, frame.head(50), frame.head(50)), spec, family, family.resolve({}), 0)
    rows = frame[spec.input_columns]
    expected = model.predict_proba(rows)
    dates = model[0].named_transformers_["dates"]
    old = DateParts()  # the fitted state DateParts had: its columns and the parts that vary
    old.columns_, old.parts_ = dates[0].columns_, dates[0].parts_
    dates.steps[0] = ("parts", old)
    [template] = [pipeline for name, pipeline, _ in model[0].transformers if name == "dates"]
    template.steps[0] = ("parts", DateParts())  # the unfitted one the column transformer keeps as its parameter
    for relative in ("steps/__init__.py", "steps/lib/__init__.py", "steps/lib/transforms.py"):
        (tmp_path / "old" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_DIR / relative, tmp_path / "old" / relative)
    trusted = [t for t in SKOPS_TRUSTED_TYPES if "text_values" not in t]
    loaded = load_model(log_as_train_does(model, rows, trusted, code_paths=[str(tmp_path / "old" / "steps")]))
    assert type(loaded.sklearn[0].named_transformers_["dates"][0]) is DateParts
    assert np.array_equal(loaded.sklearn.predict_proba(rows), expected)
    assert list(loaded.pyfunc.predict(rows)) == list(model.predict(rows))


def test_a_model_whose_code_python_cached_in_place_still_loads(genuine, tmp_path):
    """`mlflow models serve` or `mlflow.pyfunc.load_model` of a model in a local store imports its code in place,
    and Python writes its bytecode beside it (unless PYTHONDONTWRITEBYTECODE is set): the champion must still
    load in the steps afterwards."""
    if not (genuine / "code").exists():
        meta = yaml.safe_load((genuine / "MLmodel").read_text())
        ship_the_project_code(genuine, meta["flavors"]["sklearn"], meta["flavors"]["python_function"])
        (genuine / "MLmodel").write_text(yaml.safe_dump(meta))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = str(genuine / "code")
    for flags in ([], ["-O"], ["-OO"]):  # a process as users start them, with and without -O
        importing = f"import sys; sys.path.insert(0, {code!r}); import steps.lib.transforms as t; print(t.__file__)"
        ran = subprocess.run([sys.executable, *flags, "-c", importing], cwd=tmp_path, env=env, capture_output=True)
        assert ran.stdout.decode().strip() == str(genuine / "code" / "steps" / "lib" / "transforms.py"), ran.stderr
    cached = sorted(p.name for p in (genuine / "code" / "steps" / "lib" / "__pycache__").iterdir())
    assert len([name for name in cached if name.startswith("transforms.")]) == 3, cached
    rows = users_rows(20, 2).drop(columns="income class")
    loaded = load_model(str(genuine))
    assert list(loaded.pyfunc.predict(rows)) == list(loaded.sklearn.predict(rows))


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_a_planted_model_is_refused_in_one_line_and_runs_nothing(genuine, tmp_path, kind):
    marker = tmp_path / "payload-ran"
    plant(genuine, kind, marker)
    if kind in ("pickle", "skops trusting its own types"):  # the payload is live: MLflow's own loader runs it
        with pytest.raises(Exception):  # noqa: B017 (the planted object is no model: whatever MLflow raises next)
            mlflow.sklearn.load_model(str(genuine)).predict(users_rows(2, 2))
        assert marker.read_text() == "ran"
        marker.unlink()
    with pytest.raises(PipelineError) as raised:
        load_model(str(genuine))
    message = str(raised.value)
    assert message.startswith(f"model '{genuine}' refused: {REFUSALS[kind]}") and "\n" not in message
    assert not marker.exists()


# sha256 of each shipped file as models logged since it was last changed carry it (see the test below):
# transforms.py since commit 418868d; text_values.py since it came (models before it do not carry it).
SHIPPED_SHA256 = {
    "steps/__init__.py": "738083158059e4e88699bc9005526a366f784253a112bcb54b519b2cf95785ab",
    "steps/lib/__init__.py": "96d9c01ee5a2813b0e961591bf32ff61e147b843da7ee0a6d86cce82bd3d5f6b",
    "steps/lib/transforms.py": "54ac554ea5a56dd448de88e972f6edd2a23299399047ca36eed5af976aeccdd0",
    "steps/lib/text_values.py": "ef302f9a90dffa89ca7b2cd982691f8a02ca65fc46a4097f480afc3d4205a214",
}


def test_the_code_shipped_inside_models_changes_only_on_purpose():
    """A model that uses the project's date or many-level transformers carries a byte-identical copy of each file
    of SHIPPED_CODE, and the loader refuses a model whose copy differs from this checkout's. So any edit of one
    of those files, even a comment, makes every model logged before it unloadable by the new checkout: its
    champion can no longer be scored, compared or served (docs/lifecycle.md, "Promotion gates" and "Restoring a
    champion"). Prefer a new shipped module (as text_values.py was, beside transforms.py). Edit one only when
    that is meant; then update the digest here in the same commit and say so in that commit and in the docs, so
    users know to retrain or keep the old checkout for the old champion."""
    import hashlib

    assert sorted(SHIPPED_SHA256) == sorted(SHIPPED_CODE)
    for relative, expected in SHIPPED_SHA256.items():
        assert hashlib.sha256((PROJECT_DIR / relative).read_bytes()).hexdigest() == expected, (
            f"{relative} changed: models logged with the old copy will be refused; see this test's docstring"
        )

"""Profiles: a YAML file of main's params (`-P profile=<path or URI>`), and the one table of their defaults.

MLflow fills in every declared default before main starts, so main could not tell a value typed with -P from a
default: the params a profile may set are declared with the default `auto` in MLproject, and resolved here, in
this order: a value given with -P (anything but `auto`), then the profile's, then DEFAULTS. A typed `auto`
is the same as nothing typed. The resolved values are what main passes on (so what the cache keys on), what
it logs (`profile/resolved.yaml`, params `resolved.<param>`: unlike tags, fixed once logged), and what
`reproduce` replays.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from steps.lib.errors import PipelineError, one_line

UNSET = "auto"

# Every param a profile may set, with its default (the value the step it goes to declares) and its kind.
DEFAULTS: dict[str, tuple[str, str]] = {
    "data_uri": ("sklearn:iris", "text"),
    "target": ("auto", "text"),
    "task": ("auto", "text"),
    "registered_model_name": ("pipeline-model", "text"),
    "seed": ("42", "whole"),
    "use_cache": ("true", "flag"),
    "refit": ("train+validation", "text"),
    "threads": ("0", "whole"),
    "max_evals": ("20", "whole"),
    "metric": ("auto", "text"),
    "algo": ("tpe", "text"),
    "models": ("all", "names"),
    "parallelism": ("0", "whole"),
    "early_stop_rounds": ("0", "whole"),
    "timeout": ("none", "seconds"),
    "cv_folds": ("0", "whole"),
    "backend": ("local", "text"),
    "max_tune_rows": ("50000", "whole"),
    "trial_timeout": ("none", "seconds"),
    "min_delta": ("0", "number"),
    "min_accuracy": ("none", "bound"),
    "min_f1_macro": ("none", "bound"),
    "min_roc_auc_ovr": ("none", "bound"),
    "max_log_loss": ("none", "bound"),
    "max_rmse": ("none", "bound"),
    "max_mae": ("none", "bound"),
    "min_r2": ("none", "bound"),
    "beat_strong_baseline": ("false", "flag"),
    "split": ("random", "text"),
    "time_column": ("none", "text"),
    "group_column": ("none", "text"),
}

KIND_WORDS = {
    "whole": "a whole number",
    "number": "a number",
    "bound": "a number or none",
    "seconds": "a number of seconds or none",
    "flag": "true or false",
    "names": "a name or a list of names",
    "text": "a text, a number or true/false",
}


def profile_value(key: str, value: Any) -> str:
    """A profile's YAML value as the string a -P would have given, or a one-line error naming the key."""
    kind = DEFAULTS[key][1]
    ok = {
        "whole": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "bound": value is None or (isinstance(value, int | float) and not isinstance(value, bool)),
        "seconds": value is None or (isinstance(value, int | float) and not isinstance(value, bool)),
        "flag": isinstance(value, bool),
        "names": isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
        "text": isinstance(value, str | int | float | bool) and value is not None,
    }[kind]
    if isinstance(value, str) and value.strip().lower() == "none" and kind in ("bound", "seconds"):
        ok = True
    if isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        raise PipelineError(
            f"profile key '{key}' must be {KIND_WORDS[kind]}; got {one_line(repr(value), 80)}; fix the profile"
        )
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def read_profile(where: str) -> dict[str, str]:
    """The profile at a path or a URI MLflow can download (runs:/..., s3://...), checked key by key."""
    text = profile_text(where)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PipelineError(f"profile '{where}' is not valid YAML: {one_line(str(error), 160)}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise PipelineError(f"profile '{where}' must be a mapping of main's params to values (key: value lines)")
    unknown = [str(key) for key in loaded if key not in DEFAULTS]
    if unknown:
        raise PipelineError(
            f"profile key '{unknown[0]}' is not one of main's params a profile may set; use one of "
            f"{', '.join(DEFAULTS)}"
        )
    return {key: profile_value(key, value) for key, value in loaded.items()}


MAX_PROFILE_BYTES = 1_000_000


def profile_text(where: str) -> str:
    """The text of the profile file: a local path, or an http(s) or MLflow artifact URI (fetched, then removed)."""
    from steps.lib.tables import is_remote, local_copy
    from steps.lib.uris import redact_uri

    shown = redact_uri(where)
    if is_remote(where):
        try:
            with local_copy(where) as path:
                return checked_text(path, shown)
        except PipelineError as error:
            raise PipelineError(f"cannot read the profile: {error}") from None
    path = Path(where.removeprefix("file://")).expanduser()
    if not path.exists():
        raise PipelineError(
            f"profile not found at '{shown}'; check the path (a relative one is read from the project's directory)"
        )
    return checked_text(path, shown)


def checked_text(path: Path, shown: str) -> str:
    if not path.is_file():
        raise PipelineError(f"profile '{shown}' is not a regular file; point profile at a YAML file")
    if path.stat().st_size > MAX_PROFILE_BYTES:
        raise PipelineError(f"profile '{shown}' is larger than {MAX_PROFILE_BYTES:,} bytes; a profile is a few lines")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PipelineError(f"profile '{shown}' is not UTF-8 text; save it as UTF-8 YAML") from None


def resolve(typed: dict[str, str], profile: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Each param's value and where it came from (typed, profile or default): -P, then profile, then default."""
    values, sources = {}, {}
    for key, (default, _) in DEFAULTS.items():
        given = str(typed.get(key, UNSET))
        if given.strip().lower() != UNSET:
            values[key], sources[key] = given, "typed"
        elif key in profile:
            values[key], sources[key] = profile[key], "profile"
        else:
            values[key], sources[key] = default, "default"
    return values, sources


def resolved_yaml(where: str | None, values: dict[str, str], sources: dict[str, str]) -> str:
    """profile/resolved.yaml: the profile given, every param's value and where it came from."""
    return yaml.safe_dump({"profile": where, "params": values, "from": sources}, sort_keys=False)


def write_resolved(folder: Path, where: str | None, values: dict[str, str], sources: dict[str, str]) -> Path:
    path = folder / "resolved.yaml"
    path.write_text(resolved_yaml(where, values, sources))
    return path

"""Profiles: `-P profile=<YAML>` sets main's params; -P wins, then the profile, then the one table of defaults."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from steps.lib.errors import PipelineError
from steps.lib.profiles import DEFAULTS, read_profile, resolve
from tests.conftest import PROJECT_DIR
from tests.unit.test_bad_input_steps import assert_failed_cleanly


def test_a_typed_value_wins_then_the_profile_then_the_default(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("max_evals: 50\nmodels: [ridge, random_forest]\nbeat_strong_baseline: true\nmin_r2: 0.5\n")
    typed = dict.fromkeys(DEFAULTS, "auto") | {"max_evals": "7", "algo": "auto"}
    values, sources = resolve(typed, read_profile(str(path)))
    assert values["max_evals"] == "7" and sources["max_evals"] == "typed"
    assert values["models"] == "ridge,random_forest" and sources["models"] == "profile"
    assert values["beat_strong_baseline"] == "true" and values["min_r2"] == "0.5"
    assert values["algo"] == "tpe" and sources["algo"] == "default"  # a typed auto is nothing typed
    assert {key for key, source in sources.items() if source == "default"} == set(DEFAULTS) - {
        "max_evals",
        "models",
        "beat_strong_baseline",
        "min_r2",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_evalz: 5\n", "profile key 'max_evalz' is not one of main's params a profile may set; use one of"),
        ("max_evals: lots\n", "profile key 'max_evals' must be a whole number; got 'lots'; fix the profile"),
        ("max_evals: 2.5\n", "profile key 'max_evals' must be a whole number; got 2.5"),
        ("use_cache: maybe\n", "profile key 'use_cache' must be true or false; got 'maybe'"),
        ("min_f1_macro: [1]\n", "profile key 'min_f1_macro' must be a number or none; got [1]"),
        ("- max_evals\n", "must be a mapping of main's params to values"),
        ("max_evals: [\n", "is not valid YAML"),
        ("profile: other.yaml\n", "profile key 'profile' is not one of main's params"),
    ],
)
def test_unknown_keys_and_wrong_types_are_one_line_errors_naming_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError) as raised:
        read_profile(str(path))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_bad_profile_fails_main_before_any_step(tracking_uri, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("max_evals: lots\n")
    message = "profile key 'max_evals' must be a whole number"
    assert_failed_cleanly(capsys, "main", ["--profile", str(tmp_path / "bad.yaml")], message)
    assert_failed_cleanly(capsys, "main", ["--profile", str(tmp_path / "none.yaml")], "profile not found at")
    assert_failed_cleanly(capsys, "main", ["--verbose", "maybe"], "verbose must be true or false, got 'maybe'")
    # A value of the right kind that its step refuses: named, with where it came from.
    (tmp_path / "algo.yaml").write_text("split: sideways\n")
    assert_failed_cleanly(capsys, "main", ["--profile", str(tmp_path / "algo.yaml")], "(from the profile)")


@pytest.mark.parametrize("name", ["quick", "thorough"])
def test_the_shipped_profiles_resolve_and_check_for_both_tasks(name):
    from steps.main import checked_arguments

    values, sources = resolve({}, read_profile(str(PROJECT_DIR / "profiles" / f"{name}.yaml")))
    assert set(sources.values()) == {"profile", "default"}
    from steps.lib.search_space import task_families

    for task in ("classification", "regression"):
        arguments = checked_arguments(values | {"task": task}, sources)
        arguments["tune"].check()
        assert task_families(task, arguments["tune"].models)  # every family it names fits the task
    assert yaml.safe_load((PROJECT_DIR / "profiles" / f"{name}.yaml").read_text())  # comments aside, a mapping


def test_reproduce_replays_the_resolved_values_not_the_profile():
    from steps.reproduce import replayed_params

    params = {"profile": "profiles/quick.yaml", "verbose": "false", "max_evals": "auto", "use_cache": "true"}
    params |= {f"resolved.{key}": default for key, (default, _) in DEFAULTS.items()} | {"resolved.max_evals": "4"}
    params["resolved.planted"] = "x"  # only main's own params are replayed
    tags = {"resolved.max_evals": "9999"}  # a tag is anyone's to change: never read
    replayed = replayed_params(SimpleNamespace(data=SimpleNamespace(params=params, tags=tags)))
    assert replayed["max_evals"] == "4" and replayed["profile"] == "none" and replayed["verbose"] == "false"
    assert "use_cache" not in replayed and "planted" not in replayed
    assert set(replayed) == set(DEFAULTS) - {"use_cache"} | {"profile", "verbose"}
    before_profiles = SimpleNamespace(data=SimpleNamespace(params={"max_evals": "9", "use_cache": "x"}, tags={}))
    assert replayed_params(before_profiles) == {"max_evals": "9"}

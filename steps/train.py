"""Step `train`: fit one model family with given or tuned hyperparameters, log it with its signature."""

from __future__ import annotations

# Before MLflow, as it saves the model with skops: see steps/lib/model_loading.py, SCAN_BEFORE_MLFLOW.
import scipy.special  # noqa: F401

# isort: split

import hashlib
import json
import logging
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import mlflow

from steps.lib.artifacts import fetched
from steps.lib.errors import PipelineError
from steps.lib.models import (
    DEFAULT_FAMILY,
    DEFAULT_REFIT,
    MODEL_FAMILIES,
    REFITS,
    SKOPS_TRUSTED_TYPES,
    ModelFamily,
    fit_model,
    get_family,
    hyperparam_params,
    model_pip_requirements,
    resolve_threads,
    score_model,
    shipped_code_paths,
)
from steps.lib.names import MODEL_URI_TAG, OUTPUT_DIGEST_TAG
from steps.lib.runner import INT, run_cli, step_run, unset_is_none
from steps.lib.signing import file_manifest, record_manifest
from steps.lib.sources import model_signature
from steps.lib.splits import features_and_target, read_splits
from steps.lib.step_cards import train_card
from steps.lib.story import train_story

logger = logging.getLogger("steps.train")


def parse_extra_params(args: list[str]) -> dict[str, str]:
    """Hyperparameters given as undeclared MLflow params: `-P C=0.5` reaches us as `--C 0.5`."""
    given: dict[str, str] = {}
    tokens = list(args)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or len(token) == 2:
            raise PipelineError(f"unexpected argument {token!r}; give hyperparameters as -P <name>=<value>")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if not tokens:
                raise PipelineError(f"hyperparameter '{name}' has no value; give it as -P {name}=<value>")
            value = tokens.pop(0)
        given[name.replace("-", "_")] = value
    return given


def read_params_file(params_uri: str) -> dict[str, Any]:
    """tune's best-params file: {"model": family, "params": {...}, ...}."""
    try:
        with fetched(params_uri, "the best-params file") as path:
            payload = json.loads(path.read_text())
        assert isinstance(payload["model"], str) and isinstance(payload["params"], dict)
    except (OSError, ValueError, KeyError, AssertionError, TypeError):
        raise PipelineError(
            f"'{params_uri}' is not a best-params file; pass runs:/<tune run id>/best_params.json"
        ) from None
    return payload


def choose_model(
    task: str, model: str | None, params_file: dict[str, Any] | None, given: dict[str, Any]
) -> tuple[ModelFamily, dict[str, Any]]:
    """The family (None: the file's, else the task's default) and its full typed hyperparameters.

    The file's values, overridden by ones given directly.
    """
    file_model = params_file["model"] if params_file else ""
    if model and file_model and model != file_model:
        raise PipelineError(f"model '{model}' conflicts with the params file's model '{file_model}'; drop one of them")
    family = get_family(model or file_model or DEFAULT_FAMILY[task], task)
    merged = {**(params_file["params"] if params_file else {}), **given}
    return family, family.resolve(merged)


def run_train(
    splits_uri: str,
    model: str | None = None,
    params_uri: str | None = None,
    seed: int = 42,
    given: dict[str, Any] | None = None,
    refit: str = DEFAULT_REFIT,
    threads: int = 0,
) -> dict[str, float]:
    """The whole step inside the active run; returns the validation metrics.

    `model` None: the params file's family, else the task's default; `given`: hyperparameters set one by one;
    `refit`: fit on the training rows, or on training + validation rows (then the validation metrics are
    in-sample: logged as `val_in_sample_<metric>`); `threads` 0: this machine's cores (the count is logged).
    """
    if model is not None and model not in MODEL_FAMILIES:  # fail before any download
        raise PipelineError(f"unknown model '{model}'; use one of {', '.join(MODEL_FAMILIES)}")
    if refit not in REFITS:
        raise PipelineError(f"unknown refit '{refit}'; use one of {', '.join(REFITS)}")
    threads = resolve_threads(threads)
    splits, spec = read_splits(splits_uri)
    mlflow.set_tag("splits_uri", splits_uri)  # what monitor compares a batch with (also when not run by `mlflow run`)
    params_file = read_params_file(params_uri) if params_uri is not None else None
    family, hyperparams = choose_model(spec.task, model, params_file, given or {})
    started = time.perf_counter()
    fitted = fit_model(splits, spec, family, hyperparams, seed, threads=threads, refit=refit)
    fit_seconds = time.perf_counter() - started
    validation = score_model(fitted, splits.validation, spec)
    features, _ = features_and_target(splits.train, spec)
    signature = model_signature(features, fitted.predict)
    params = hyperparam_params(family, hyperparams)
    mlflow.log_params(params | {"threads": str(threads), "refit": refit})
    prefix = "val_" if refit == "train" else "val_in_sample_"
    mlflow.log_metrics({f"{prefix}{k}": v for k, v in validation.items()} | {"fit_seconds": fit_seconds})
    n_rows = len(splits.train) + (len(splits.validation) if refit == "train+validation" else 0)
    training_info = (
        f"{family.name} ({spec.task}) on {n_rows} rows ({refit}), {len(spec.numeric)} numeric + "
        f"{len(spec.categorical)} categorical + {len(spec.datetime)} date/time features"
    )
    mlflow.set_tags(
        {
            "refit": refit,
            "Training Info": training_info,
            "model_family": family.name,
            "task": spec.task,
        }
    )
    with tempfile.TemporaryDirectory() as code_folder:
        info = mlflow.sklearn.log_model(
            fitted,
            name="model",
            signature=signature,
            input_example=features.head(5),
            pip_requirements=model_pip_requirements(),
            serialization_format="skops",  # safe to load, unlike pickle
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            code_paths=shipped_code_paths(spec, Path(code_folder)),
        )
    # skops files embed zip timestamps; the pickled pipeline is the same bytes for the same fit.
    mlflow.set_tags(
        {MODEL_URI_TAG: info.model_uri, OUTPUT_DIGEST_TAG: hashlib.sha256(pickle.dumps(fitted, 5)).hexdigest()}
    )
    with fetched(info.model_uri, "the model just logged") as model_folder:  # in place from a local store
        record_manifest(info.model_uri, file_manifest(model_folder))
    train_story(training_info, validation, prefix, info.model_uri)
    train_card(training_info, params, validation, prefix, fitted)
    logger.info("trained %s %s: validation %s", family.name, hyperparams, validation)
    return validation


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--splits-uri", required=True, help="featurize's artifact URI, e.g. runs:/<featurize run>/splits.")
@click.option(
    "--model",
    default="auto",
    callback=unset_is_none,
    help="Model family; auto: the params file's, else logistic_regression/ridge.",
)
@click.option(
    "--params-uri",
    default="none",
    callback=unset_is_none,
    help="tune's best-params file, e.g. runs:/<tune run>/best_params.json.",
)
@click.option("--seed", default=42, type=INT)
@click.option("--refit", default=DEFAULT_REFIT, help="Fit on: train, or train+validation.")
@click.option("--threads", default=0, type=INT, help="Threads of the fit; 0: this machine's cores.")
@click.pass_context
def main(
    ctx: click.Context,
    splits_uri: str,
    model: str | None,
    params_uri: str | None,
    seed: int,
    refit: str,
    threads: int,
) -> None:
    """Extra `-P <hyperparameter>=<value>` params set the family's hyperparameters one by one."""
    with step_run("train"):
        given = parse_extra_params(ctx.args)
        run_train(splits_uri, model, params_uri, seed, given, refit=refit, threads=threads)


if __name__ == "__main__":
    run_cli(main, "train")

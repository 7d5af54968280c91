"""Step `train`: fit one model family with given or tuned hyperparameters, log it with its signature."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from typing import Any

import click
import mlflow

from steps.common import (
    DEFAULT_FAMILY,
    INT,
    MODEL_FAMILIES,
    OUTPUT_DIGEST_TAG,
    SKOPS_TRUSTED_TYPES,
    ModelFamily,
    PipelineError,
    download_dir,
    features_and_target,
    fit_model,
    get_family,
    hyperparam_params,
    model_pip_requirements,
    read_splits,
    run_cli,
    score_model,
    step_run,
)

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
    path = download_dir(params_uri, "the best-params file")
    try:
        payload = json.loads(path.read_text())
        assert isinstance(payload["model"], str) and isinstance(payload["params"], dict)
    except (OSError, ValueError, KeyError, AssertionError, TypeError):
        raise PipelineError(
            f"'{params_uri}' is not a best-params file; pass runs:/<tune run id>/best_params.json"
        ) from None
    return payload


def choose_model(
    task: str, model: str, params_file: dict[str, Any] | None, given: dict[str, Any]
) -> tuple[ModelFamily, dict[str, Any]]:
    """The family and its full typed hyperparameters: file values, overridden by ones given directly."""
    file_model = params_file["model"] if params_file else ""
    model = "" if model == "auto" else model
    if model and file_model and model != file_model:
        raise PipelineError(f"model '{model}' conflicts with the params file's model '{file_model}'; drop one of them")
    family = get_family(model or file_model or DEFAULT_FAMILY[task], task)
    merged = {**(params_file["params"] if params_file else {}), **given}
    return family, family.resolve(merged)


def run_train(splits_uri: str, model: str, params_uri: str, seed: int, given: dict[str, Any]) -> dict[str, float]:
    """The whole step inside the active run; returns the validation metrics."""
    if model not in ("", "auto", *MODEL_FAMILIES):  # fail before any download
        raise PipelineError(f"unknown model '{model}'; use one of {', '.join(MODEL_FAMILIES)}")
    splits, spec = read_splits(splits_uri)
    params_file = read_params_file(params_uri) if params_uri not in ("", "none") else None
    family, hyperparams = choose_model(spec.task, model, params_file, given)
    started = time.perf_counter()
    fitted = fit_model(splits, spec, family, hyperparams, seed)
    fit_seconds = time.perf_counter() - started
    validation = score_model(fitted, splits.validation, spec)
    features, _ = features_and_target(splits.train, spec)
    signature = mlflow.models.infer_signature(features, fitted.predict(features))
    mlflow.log_params(hyperparam_params(family, hyperparams))
    mlflow.log_metrics({f"val_{k}": v for k, v in validation.items()} | {"fit_seconds": fit_seconds})
    mlflow.set_tags(
        {
            "Training Info": (
                f"{family.name} ({spec.task}) on {len(splits.train)} training rows, "
                f"{len(spec.numeric)} numeric + {len(spec.categorical)} categorical features"
            ),
            "model_family": family.name,
            "task": spec.task,
        }
    )
    info = mlflow.sklearn.log_model(
        fitted,
        name="model",
        signature=signature,
        input_example=features.head(5),
        pip_requirements=model_pip_requirements(),
        serialization_format="skops",  # safe to load, unlike pickle
        skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
    )
    # skops files embed zip timestamps; the pickled pipeline is the same bytes for the same fit.
    mlflow.set_tags(
        {"model_uri": info.model_uri, OUTPUT_DIGEST_TAG: hashlib.sha256(pickle.dumps(fitted, 5)).hexdigest()}
    )
    logger.info("trained %s %s: validation %s", family.name, hyperparams, validation)
    return validation


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--splits-uri", required=True, help="featurize's artifact URI, e.g. runs:/<featurize run>/splits.")
@click.option("--model", default="auto", help="Model family; auto: the params file's, else logistic_regression/ridge.")
@click.option("--params-uri", default="none", help="tune's best-params file, e.g. runs:/<tune run>/best_params.json.")
@click.option("--seed", default=42, type=INT)
@click.pass_context
def main(ctx: click.Context, splits_uri: str, model: str, params_uri: str, seed: int) -> None:
    """Extra `-P <hyperparameter>=<value>` params set the family's hyperparameters one by one."""
    with step_run("train"):
        run_train(splits_uri, model, params_uri, seed, parse_extra_params(ctx.args))


if __name__ == "__main__":
    run_cli(main, "train")

"""tune's search options: declared once for the two command lines that take them (tune's and main's).

`auto`, `all` and `none` become None at the command line (the click callbacks); `TuneOptions.from_cli`
parses the rest and checks what needs no data, before anything is read. main passes the options on to
tune as MLflow params with `TuneOptions.as_params`, the inverse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import click

from steps.lib.errors import PipelineError
from steps.lib.metrics import check_metric_name
from steps.lib.models import MODEL_FAMILIES
from steps.lib.runner import INT, as_param, unset_is_none

ALGOS = ("tpe", "random", "anneal", "grid")
BACKENDS = ("local", "spark")


@dataclass(frozen=True)
class TuneOptions:
    """How tune searches; None where the choice is left to the pipeline."""

    max_evals: int = 20
    metric: str | None = None  # None: the task's default, f1_macro or rmse
    algo: str = "tpe"
    models: tuple[str, ...] | None = None  # None: every family that fits the task
    parallelism: int = 0  # trials at once, one thread each; 0: auto (see effective_parallelism)
    early_stop_rounds: int = 0
    timeout: float | None = None  # seconds; None: no limit
    cv_folds: int = 0
    backend: str = "local"
    max_tune_rows: int = 50_000  # trials fit on a seeded, stratified sample of at most this many training rows
    trial_timeout: float | None = None  # seconds a trial may run (then it is stopped and fails); None: no limit

    @classmethod
    def from_cli(cls, given: Mapping[str, Any]) -> TuneOptions:
        """The options from a command line's values (sentinels already None), checked."""
        values = {name: given[name] for name in TUNE_OPTION_NAMES}
        options = cls(
            **values
            | {
                "models": parse_models(values["models"]),
                "timeout": parse_timeout(values["timeout"]),
                "trial_timeout": parse_timeout(values["trial_timeout"], "trial_timeout"),
            }
        )
        options.check()
        return options

    def check(self) -> None:
        """The checks that need no data, made before anything is read."""
        check_metric_name(self.metric)
        unknown = [name for name in self.models or () if name not in MODEL_FAMILIES]
        if unknown:
            raise PipelineError(
                f"unknown model family '{unknown[0]}' in models; use any of {', '.join(MODEL_FAMILIES)}"
            )
        if self.algo not in ALGOS:
            raise PipelineError(f"unknown algo '{self.algo}'; use one of {', '.join(ALGOS)}")
        if self.backend not in BACKENDS:
            raise PipelineError(f"unknown backend '{self.backend}'; use one of {', '.join(BACKENDS)}")
        if self.max_evals < 1:
            raise PipelineError(f"max_evals must be at least 1; got {self.max_evals}")
        if self.parallelism < 0:
            raise PipelineError(f"parallelism must be 0 (auto) or more; got {self.parallelism}")
        if self.early_stop_rounds < 0:
            raise PipelineError(f"early_stop_rounds must be 0 (off) or more; got {self.early_stop_rounds}")
        if self.max_tune_rows < 0:
            raise PipelineError(f"max_tune_rows must be 0 (all rows) or more; got {self.max_tune_rows}")
        if self.trial_timeout is not None and self.backend != "local":
            raise PipelineError(
                "trial_timeout works with backend=local; on Spark use timeout (SparkTrials stops the search)"
            )
        if self.cv_folds < 0 or self.cv_folds == 1:
            raise PipelineError(f"cv_folds must be 0 (score on validation) or at least 2; got {self.cv_folds}")

    def as_params(self) -> dict[str, str]:
        """The options as tune's MLflow params (what main passes on)."""
        params = {name: as_param(getattr(self, name)) for name in TUNE_OPTION_NAMES}
        params["models"] = ",".join(self.models) if self.models else "all"
        params["timeout"] = as_param(self.timeout, unset="none")
        params["trial_timeout"] = as_param(self.trial_timeout, unset="none")
        return params


TUNE_OPTION_NAMES = tuple(field.name for field in fields(TuneOptions))


# From this many (sampled) training rows on, trials take long enough that worker processes (~3 s to start)
# pay for themselves: parallelism auto then runs one trial per core.
PARALLEL_FROM_ROWS = 10_000


def effective_parallelism(asked: int, training_rows: int, cores: int) -> int:
    """Trials at once: as asked (0: one per core from PARALLEL_FROM_ROWS rows on, else 1), never more than the
    cores (each trial has one thread: never more threads in all than cores)."""
    wanted = asked or (cores if training_rows >= PARALLEL_FROM_ROWS else 1)
    return max(1, min(wanted, cores))


def parse_models(models: str | None) -> tuple[str, ...] | None:
    """Comma-separated family names, in the order given, each once; None for all."""
    if models is None:
        return None
    chosen = tuple(dict.fromkeys(name.strip() for name in models.split(",") if name.strip()))
    return chosen or None


def parse_timeout(timeout: str | float | None, name: str = "timeout") -> float | None:
    """Seconds, or None for no limit; a limit must be positive. `name`: the param, for the error."""
    if timeout is None:
        return None
    try:
        seconds = float(timeout)
    except ValueError:
        raise PipelineError(f"{name} must be a number of seconds or none; got {timeout!r}") from None
    if not seconds > 0:
        raise PipelineError(f"{name} must be more than 0 seconds; got {timeout}")
    return seconds


def all_is_none(ctx: click.Context | None, param: click.Parameter | None, value: Any) -> Any:
    """`all` (like `auto`) leaves the families to the task."""
    return None if str(value).strip().lower() == "all" else unset_is_none(ctx, param, value)


_DEFAULTS = TuneOptions()
_OPTIONS: tuple[Callable[[Any], Any], ...] = (
    click.option("--max-evals", default=_DEFAULTS.max_evals, type=INT, show_default=True, help="Trials in all."),
    click.option(
        "--metric",
        default="auto",
        callback=unset_is_none,
        help="accuracy, f1_macro, roc_auc_ovr, log_loss, rmse, mae, r2 or auto.",
    ),
    click.option("--algo", default=_DEFAULTS.algo, help="tpe, random, anneal or grid."),
    click.option("--models", default="all", callback=all_is_none, help="Comma-separated model families; all."),
    click.option("--parallelism", default=_DEFAULTS.parallelism, type=INT, help="Trials evaluated at once; 0: auto."),
    click.option(
        "--early-stop-rounds",
        default=_DEFAULTS.early_stop_rounds,
        type=INT,
        help="Stop after this many trials without progress; 0: never.",
    ),
    click.option("--timeout", default="none", callback=unset_is_none, help="Stop starting trials after this many s."),
    click.option("--cv-folds", default=_DEFAULTS.cv_folds, type=INT, help="k-fold CV on the training split; 0: off."),
    click.option("--backend", default=_DEFAULTS.backend, help="local: worker processes here; spark: SparkTrials."),
    click.option(
        "--max-tune-rows",
        default=_DEFAULTS.max_tune_rows,
        type=INT,
        help="Trials fit on a sample of at most this many training rows; 0: all.",
    ),
    click.option(
        "--trial-timeout", default="none", callback=unset_is_none, help="Stop (and fail) a trial after this many s."
    ),
)


def tune_options(command: Any) -> Any:
    """--max-evals, --metric, --algo, ...: one click option per TuneOptions field."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


@dataclass(frozen=True)
class SearchConfig:
    """One search: the options, with the metric and the families resolved against the task."""

    metric: str
    seed: int
    families: tuple[str, ...]
    options: TuneOptions = TuneOptions()

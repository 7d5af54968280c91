"""What the pipeline steps share: errors, the step runner, data I/O, tasks, metrics, model families."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import mlflow
import numpy as np
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.tracking import MlflowClient
from threadpoolctl import threadpool_limits

logger = logging.getLogger("steps")

STEP_TAG = "pipeline.step"
DIRTY_TAG = "git.dirty"  # the run's code had uncommitted changes: its git commit does not reproduce it
OUTPUT_DIGEST_TAG = "outputs.digest"  # what a step produced, for the cache keys of the steps after it
ERROR_TAG = "pipeline.error"
RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"
DEFAULT_DATA_URI = "sklearn:iris"
DEFAULT_REGISTERED_MODEL_NAME = "pipeline-model"
CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
# An integer-valued target with at most this many distinct values is treated as class labels.
MAX_CLASSES_FOR_AUTO_TASK = 20


class PipelineError(Exception):
    """Bad input: reported as one line naming the problem and the fix; the run is marked FAILED."""


class TrackingUnreachableError(PipelineError):
    """MLflow gave up on the tracking server: nothing more can be recorded, not even FAILED."""


# --------------------------------------------------------------------------- the step runner


def configure_logging() -> None:
    """Readable step logs; quieter MLflow internals."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Per-file download bars drown the step logs; child step processes inherit this.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextmanager
def step_run(step: str, nested: bool = False) -> Iterator[mlflow.ActiveRun]:
    """Open (or resume, under `mlflow run`) the step's run; turn a PipelineError into a FAILED run.

    On bad input the run gets the tag `pipeline.error`, stderr gets one line `error: ...`, and the
    process exits with status 1. Nothing is logged as an artifact before the step succeeds, so a
    failed run never leaves output that a later step could trust. A nested step run (one step run
    inside another's process) re-raises instead, so its parent fails too.
    """
    if not nested:
        configure_logging()
        move_tracking_credentials()
    with mlflow.start_run(run_name=step, nested=nested) as run:
        mlflow.set_tags(
            {
                STEP_TAG: step,
                RUN_NAME_TAG: step,
                PROCESS_TAG: process_identity(),
                "runtime.python": sys.executable,
                "runtime.prefix": sys.prefix,
            }
        )
        try:
            yield run
        except PipelineError as error:
            exit_if_unreachable(step, error)  # a TrackingUnreachableError: nothing can be recorded
            message = one_line(str(error))
            try:
                mlflow.set_tag(ERROR_TAG, message)
                mlflow.end_run(status="FAILED")
            except Exception as recording:
                exit_if_unreachable(step, recording)
                raise
            if nested:
                raise
            print(f"error: {step}: {message}", file=sys.stderr, flush=True)
            sys.exit(1)
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")
            raise
        except Exception as error:
            exit_if_unreachable(step, error)
            mlflow.set_tag(ERROR_TAG, one_line(f"unexpected {type(error).__name__}: {error}"))
            raise


def exit_if_unreachable(step: str, error: BaseException) -> None:
    """If `error` is MLflow giving up on the tracking server, exit as exit_unrecorded does."""
    unreachable = tracking_unreachable(error)
    if unreachable:
        exit_unrecorded(step, unreachable)


def exit_unrecorded(step: str, message: str) -> None:
    """The tracking server is gone: say so in one line and exit 1 at once.

    Nothing more can be recorded (not even FAILED: the run stays RUNNING until the next `main` marks
    it KILLED), and a normal exit would try the server again for minutes (MLflow's atexit end_run).
    """
    print(f"error: {step}: {one_line(message)}", file=sys.stderr, flush=True)
    os._exit(1)


def tracking_unreachable(error: BaseException) -> str:
    """A one-line reason if `error` is MLflow giving up on the tracking server (or says so already), else ''."""
    if isinstance(error, TrackingUnreachableError):
        return str(error)
    text = str(error)
    if not (isinstance(error, mlflow.exceptions.MlflowException) and text.startswith("API request to")):
        return ""
    if "Connection refused" in text or "NewConnectionError" in text:
        cause = "connection refused"
    elif "timed out" in text or "timeout" in text:
        cause = "timed out"
    elif "Max retries exceeded" in text or "ConnectionError" in text:
        cause = "no answer"
    else:
        return ""
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    called = re.match(r"API request to (?:endpoint )?(\S+?)/api/", text)
    server = called.group(1) if called else mlflow.get_tracking_uri()
    return (
        f"the tracking server {redact_uri(server)} is unreachable ({cause}, "
        f"after MLFLOW_HTTP_REQUEST_MAX_RETRIES={retries} retries); start it again and re-run: "
        "finished steps are reused"
    )


PROCESS_TAG = "pipeline.process"  # machine:pid:start time of the process that runs the step


def process_identity(pid: int | None = None) -> str:
    """machine:pid:start-time, unique even when the system reuses a pid (start time from /proc; '' elsewhere)."""
    pid = os.getpid() if pid is None else pid
    return f"{machine_identity()}:{pid}:{process_start_time(pid)}"


@functools.cache
def machine_identity() -> str:
    """Host name, boot and pid namespace: containers that share a host name do not share pids."""
    parts = [socket.gethostname().replace(":", "_")]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # no /proc (macOS): the host name alone
        pass
    return "/".join(parts)


def process_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); '' if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # field 22, counted after the command name


def process_alive(identity: str) -> bool | None:
    """Whether the process a PROCESS_TAG names still runs; None if it ran on another host (unknowable)."""
    machine, _, rest = identity.partition(":")
    pid_text, _, started = rest.partition(":")
    if machine != machine_identity() or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    return not started or process_start_time(int(pid_text)) == started


def run_cli(command: click.Command, step: str) -> None:
    """Run a step's click command; a bad option value gets the same one-line error and FAILED run."""
    move_tracking_credentials()
    try:
        command.main(standalone_mode=False)
    except click.exceptions.Exit as done:  # --help
        sys.exit(done.exit_code)
    except (click.ClickException, click.Abort) as error:
        message = one_line(error.format_message() if isinstance(error, click.ClickException) else "aborted")
        configure_logging()
        with mlflow.start_run():
            mlflow.set_tags({STEP_TAG: step, RUN_NAME_TAG: step, ERROR_TAG: message})
            mlflow.end_run(status="FAILED")
        print(f"error: {step}: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


class WholeNumber(click.ParamType):
    """An int param that also accepts the same number written as 3.0 or 1e2 (as the cache key does)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not number.is_integer():
            self.fail(f"{value!r} is not a valid integer", param, ctx)
        return int(number)


INT = WholeNumber()


def one_line(text: str, limit: int = 500) -> str:
    """Collapse whitespace so a message fits on one line (and in a tag)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
CREDENTIAL_SCHEMES = ("http", "https")  # where user-info in a data URI means basic auth


def garbled_user_info(uri: str) -> bool:
    """Whether an unencoded '#', '?' or '/' in a user name or password cut the host part short.

    urlsplit then sees no password at all, so redaction would miss it: e.g. https://al:se#cret@host/x.
    """
    _, separator, rest = uri.partition("://")
    if not separator:
        return False
    netloc = urllib.parse.urlsplit(uri).netloc
    host = netloc.rpartition("@")[2]
    port = host.rpartition(":")[2] if ":" in host and not host.endswith("]") else ""  # [::1] has no port
    cut_short = "@" in rest.split("/", 1)[0] and "@" not in netloc
    return cut_short or (port != "" and not port.isdigit())


def is_placeholder(text: str | None) -> bool:
    return text is not None and PLACEHOLDER.fullmatch(text) is not None


def redact_uri(uri: str) -> str:
    """The URI with its secrets replaced by ***, so it can be logged (a ${VAR} placeholder is no secret: kept).

    A password goes; so does a user name that stands alone (often a token); a URI whose host part cannot
    be parsed keeps only its scheme.
    """
    if garbled_user_info(uri):
        return uri.partition("://")[0] + "://***"
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    name, has_password, password = user.partition(":")
    if has_password:
        shown = f"{name}:{password if is_placeholder(password) else '***'}"
    else:
        shown = name if is_placeholder(name) else "***"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


def check_uri_credentials(name: str, uri: str) -> None:
    """Refuse credentials written into a URI param: MLflow records every -P value verbatim as a run param.

    Allowed: http(s)://user:${VAR}@host/... (or ${USER}:${VAR}@, ${TOKEN}@), filled in from the environment
    in memory only.
    """
    fix = "write it as a placeholder, e.g. https://alice:${DATA_PASSWORD}@host/data.csv with DATA_PASSWORD exported"
    if garbled_user_info(uri):
        raise PipelineError(
            f"{name} has a host part that cannot be parsed (an '@', '#', '?' or '/' in a user name or password "
            f"must be percent-encoded, e.g. # as %23); better, {fix}"
        )
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None:
        return
    if parts.password is not None and not is_placeholder(parts.password):
        raise PipelineError(
            f"{name} holds a password in clear text, and MLflow records params verbatim; {fix}, "
            "and delete this run (mlflow runs delete, then mlflow gc)"
        )
    if parts.password is None and not is_placeholder(parts.username):
        raise PipelineError(
            f"{name} has a user name and no password; if it is a token, write it as ${{TOKEN}}@ with TOKEN "
            f"exported (MLflow records params verbatim); for a password, {fix}"
        )
    if parts.scheme.lower() not in CREDENTIAL_SCHEMES:
        raise PipelineError(
            f"credentials in {name} work for http(s) only; for '{parts.scheme}' use its own settings "
            "(for s3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or a profile)"
        )


def expand_placeholders(uri: str) -> str:
    """Fill the ${VAR} placeholders of an http(s) URI's user-info from the environment, in memory only."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in CREDENTIAL_SCHEMES or "@" not in parts.netloc:
        return uri

    def value(match: re.Match[str]) -> str:
        if match.group(1) not in os.environ:
            raise PipelineError(
                f"'{redact_uri(uri)}' refers to ${{{match.group(1)}}}, which is not set; export {match.group(1)}=..."
            )
        return urllib.parse.quote(os.environ[match.group(1)], safe="")

    user, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{PLACEHOLDER.sub(value, user)}@{host}"))


def split_credentials(uri: str) -> tuple[str, tuple[str, str] | None]:
    """The URI without its user-info, and (user, password) if it had them (percent-decoded)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None:
        return uri, None
    bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return bare, (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))


TRACKING_ENV = "MLFLOW_TRACKING_URI"
TRACKING_CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def move_tracking_credentials() -> None:
    """A tracking URI with user:password@ becomes a bare URI plus MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD.

    MLflow prints the tracking URI in its "View run" links and passes it on to child processes; MLflow
    sends the two variables as basic auth and prints neither. Every process this one starts inherits them.
    """
    uri = os.environ.get(TRACKING_ENV, "")
    if not uri.lower().startswith(("http://", "https://")):  # a database URI keeps its login: SQLAlchemy needs it
        return
    bare, credentials = split_credentials(uri)
    if credentials is None:
        return
    os.environ[TRACKING_ENV] = bare
    for name, value in zip(TRACKING_CREDENTIAL_ENV, credentials, strict=True):
        os.environ.setdefault(name, value)


def parse_bool(name: str, value: str | bool) -> bool:
    """Parse a boolean param the way users type it."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in {"true", "1", "yes", "on"}:
        return True
    if lowered in {"false", "0", "no", "off"}:
        return False
    raise PipelineError(f"{name} must be true or false, got {value!r}")


# --------------------------------------------------------------------------- data in and out

# name -> (scikit-learn loader, label column name, whether labels are class names)
BUNDLED_DATASETS: dict[str, tuple[str, str, bool]] = {
    "iris": ("load_iris", "species", True),
    "wine": ("load_wine", "cultivar", True),
    "breast_cancer": ("load_breast_cancer", "diagnosis", True),
    "digits": ("load_digits", "digit", False),
    "diabetes": ("load_diabetes", "progression", False),
}
DATA_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def snake_case(name: str) -> str:
    """'sepal length (cm)' -> 'sepal_length_cm'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def load_bundled_frame(name: str) -> tuple[pd.DataFrame, str]:
    """One of scikit-learn's bundled data sets as a frame with snake_case columns, and its label."""
    if name not in BUNDLED_DATASETS:
        raise PipelineError(
            f"unknown bundled data set 'sklearn:{name}'; use one of "
            + ", ".join(f"sklearn:{known}" for known in BUNDLED_DATASETS)
        )
    import sklearn.datasets

    loader, label, named_classes = BUNDLED_DATASETS[name]
    bunch = getattr(sklearn.datasets, loader)(as_frame=True)
    frame = bunch.data.rename(columns=snake_case)
    labels = bunch.target
    if named_classes:
        labels = pd.Series(np.asarray(bunch.target_names)[labels.to_numpy()], dtype=object)
    frame[label] = labels.to_numpy()
    return frame, label


def dataset_name(data_uri: str) -> str:
    """A short human name for the data: 'iris' for sklearn:iris, the file stem otherwise."""
    if data_uri.startswith("sklearn:"):
        return data_uri.split(":", 1)[1]
    path = urllib.parse.urlsplit(data_uri).path.rstrip("/") or data_uri
    stem = Path(path).name
    for suffix in (".gz", ".bz2", ".zip", ".xz", *DATA_SUFFIXES):
        stem = stem.removesuffix(suffix)
    return snake_case(stem) or "data"


def read_data(data_uri: str) -> pd.DataFrame:
    """Read a table from sklearn:<name>, a local path, file://, http(s):// or an MLflow artifact URI."""
    if not data_uri.strip():
        raise PipelineError("data_uri is empty; pass -P data_uri=<path, URL or sklearn:iris>")
    if data_uri.startswith("sklearn:"):
        return load_bundled_frame(data_uri.split(":", 1)[1])[0]
    local = fetch_local(data_uri)
    return read_table_file(find_data_file(local, data_uri), data_uri)


def fetch_local(uri: str) -> Path:
    """A local path holding what `uri` names: downloads http(s) and MLflow artifact URIs."""
    shown = redact_uri(uri)
    check_uri_credentials("data_uri", uri)
    uri = expand_placeholders(uri)
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in {"", "file"} or (len(scheme) == 1 and sys.platform == "win32"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(uri).path)) if scheme else Path(uri)
        path = path.expanduser()
        if not path.exists():
            raise PipelineError(f"data not found at '{shown}'; check the path or data_uri")
        return path
    target_dir = Path(tempfile.mkdtemp(prefix="pipeline-data-"))
    if scheme in {"http", "https"}:
        name = Path(urllib.parse.urlsplit(uri).path).name or "data.csv"
        target = target_dir / name
        bare, credentials = split_credentials(uri)
        request = urllib.request.Request(bare)
        if credentials is not None:  # basic auth from the user-info, which urllib does not do by itself
            token = base64.b64encode(":".join(credentials).encode()).decode()
            request.add_unredirected_header("Authorization", f"Basic {token}")  # not sent on to a redirect
        try:
            with urllib.request.urlopen(request, timeout=60) as response, target.open("wb") as out:
                out.write(response.read())
        except OSError as error:
            raise PipelineError(f"cannot download '{shown}': {error}") from None
        return target
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target_dir)))
    except Exception as error:  # MLflow raises several types for a missing artifact
        raise PipelineError(f"cannot fetch '{shown}': {one_line(str(error), 200)}") from None


def find_data_file(path: Path, shown_uri: str) -> Path:
    """The data file itself, or the single CSV/Parquet file inside a directory."""
    if path.is_file():
        return path
    candidates = sorted(p for p in path.iterdir() if table_format(p) is not None)
    if len(candidates) != 1:
        raise PipelineError(
            f"'{redact_uri(shown_uri)}' is a directory with {len(candidates)} CSV/Parquet files; "
            "point data_uri at one file"
        )
    return candidates[0]


def table_format(path: Path) -> str | None:
    """'csv' or 'parquet' from the file name (compressed CSV included), None if neither."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in {".gz", ".bz2", ".zip", ".xz"}:
        suffixes = suffixes[:-1]
    return DATA_SUFFIXES.get(suffixes[-1]) if suffixes else None


def read_table_file(path: Path, shown_uri: str) -> pd.DataFrame:
    """Read one CSV or Parquet file, turning parser failures into a one-line error."""
    kind = table_format(path)
    shown = redact_uri(shown_uri)
    if kind is None:
        raise PipelineError(f"'{shown}' is neither .csv nor .parquet; convert it or rename it")
    try:
        return pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise PipelineError(f"'{shown}' is empty: it has no header and no rows") from None
    except Exception as error:
        raise PipelineError(f"cannot read '{shown}' as {kind}: {one_line(str(error), 200)}") from None


def download_dir(artifact_uri: str, what: str) -> Path:
    """Download an artifact directory (or file) produced by an earlier step."""
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri))
    except Exception as error:
        raise PipelineError(
            f"cannot fetch {what} from '{redact_uri(artifact_uri)}': {one_line(str(error), 200)}"
        ) from None


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def digest_json(payload: Any) -> str:
    """sha256 of a JSON value in canonical form."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def digest_path(path: Path) -> str:
    """sha256 over a file, or over a directory's relative file names and contents in sorted order."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- tasks and features


@dataclass
class FeatureSpec:
    """What featurize decided: which raw columns feed the model and how."""

    target: str
    task: str
    numeric: list[str]
    categorical: list[str]
    dropped: dict[str, str] = field(default_factory=dict)
    input_columns: list[str] = field(default_factory=list)
    classes: list[Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> FeatureSpec:
        return cls(**payload)


def detect_task(target: pd.Series) -> str:
    """Classification for labels (text, bool, or integers with few values), regression otherwise."""
    values = target.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return CLASSIFICATION
    integral = bool(np.all(np.mod(values.to_numpy(dtype=float), 1) == 0))
    if integral and values.nunique() <= MAX_CLASSES_FOR_AUTO_TASK:
        return CLASSIFICATION
    return REGRESSION


def validate_target(frame: pd.DataFrame, target: str, task: str | None = None) -> None:
    """The checks every step that sees the raw table makes on its label column."""
    if frame.empty or len(frame.columns) == 0:
        raise PipelineError("the data has no rows; point data_uri at a table with data")
    if target not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:20]))
        raise PipelineError(f"target column '{target}' is not in the data (columns: {shown}); pass -P target=<column>")
    labels = frame[target].dropna()
    if labels.empty:
        raise PipelineError(f"target column '{target}' has no values; choose another -P target")
    if labels.nunique() < 2:
        raise PipelineError(
            f"target column '{target}' has a single value ({labels.iloc[0]!r}); "
            "a model needs at least two classes or distinct values"
        )
    if len(frame.columns) < 2:
        raise PipelineError("the data has only the target column; it needs feature columns too")
    if task is not None and task not in TASKS:
        raise PipelineError(f"unknown task '{task}'; use auto, classification or regression")


# --------------------------------------------------------------------------- metrics

# name -> (task, greater is better)
METRICS: dict[str, tuple[str, bool]] = {
    "accuracy": (CLASSIFICATION, True),
    "f1_macro": (CLASSIFICATION, True),
    "roc_auc_ovr": (CLASSIFICATION, True),
    "log_loss": (CLASSIFICATION, False),
    "rmse": (REGRESSION, False),
    "mae": (REGRESSION, False),
    "r2": (REGRESSION, True),
}
DEFAULT_METRIC = {CLASSIFICATION: "f1_macro", REGRESSION: "rmse"}


def check_metric_name(metric: str) -> None:
    """Reject a metric name we do not know, before the task is known."""
    if metric not in ("", "auto", *METRICS):
        raise PipelineError(f"unknown metric '{metric}'; use auto or one of {', '.join(METRICS)}")


def resolve_metric(metric: str, task: str) -> str:
    """The metric to optimise and compare on: 'auto' picks the task's default."""
    check_metric_name(metric)
    if metric in ("", "auto"):
        return DEFAULT_METRIC[task]
    if METRICS[metric][0] != task:
        fits = ", ".join(name for name, (kind, _) in METRICS.items() if kind == task)
        raise PipelineError(f"metric '{metric}' does not fit a {task} task; use one of {fits}")
    return metric


def greater_is_better(metric: str) -> bool:
    return METRICS[metric][1]


def metric_loss(metric: str, value: float) -> float:
    """Turn a metric into a loss to minimise."""
    return -value if greater_is_better(metric) else value


def compute_metrics(
    task: str, y_true: pd.Series, y_pred: np.ndarray, proba: np.ndarray | None, classes: list[Any] | None
) -> dict[str, float]:
    """Every metric of the task; a metric that cannot be computed on these rows is left out."""
    from sklearn import metrics as skm

    if task == REGRESSION:
        return {
            "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
            "mae": float(skm.mean_absolute_error(y_true, y_pred)),
            "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else math.nan,
        }
    scores = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "f1_macro": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    if proba is not None and classes is not None:
        labels = list(classes)
        scores["log_loss"] = float(skm.log_loss(y_true, proba, labels=labels))
        try:
            if len(labels) == 2:
                scores["roc_auc_ovr"] = float(skm.roc_auc_score(np.asarray(y_true) == labels[1], proba[:, 1]))
            else:
                scores["roc_auc_ovr"] = float(skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels))
        except ValueError:  # a class absent from these rows: AUC is undefined
            pass
    return {name: value for name, value in scores.items() if not math.isnan(value)}


# --------------------------------------------------------------------------- model families


@dataclass(frozen=True)
class HyperParam:
    """One hyperparameter: its type, default, and the range it must lie in."""

    name: str
    kind: type
    default: Any
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # inclusive upper bound
    allow_none: bool = False
    choices: tuple[Any, ...] = ()

    def parse(self, raw: Any, family: str) -> Any:
        """Coerce a value given on the command line or read from JSON; reject it if out of range."""
        where = f"{family} hyperparameter '{self.name}'"
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in {"none", "null", ""}):
            if self.allow_none:
                return None
            raise PipelineError(f"{where} cannot be empty")
        if self.choices:
            if raw not in self.choices:
                raise PipelineError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {raw!r}")
            return raw
        try:
            number = float(raw)
            if self.kind is int:
                if number != int(number):
                    raise ValueError
                value: Any = int(number)
            else:
                value = number
        except (TypeError, ValueError):
            raise PipelineError(
                f"{where} must be {'an integer' if self.kind is int else 'a number'}; got {raw!r}"
            ) from None
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            span = f"[{self.low if self.low is not None else '-inf'}, {self.high if self.high is not None else 'inf'}]"
            raise PipelineError(f"{where} must lie in {span}; got {raw!r}")
        return value


@dataclass(frozen=True)
class ModelFamily:
    """A model family: the tasks it serves, its hyperparameters and how to build its estimator."""

    name: str
    tasks: tuple[str, ...]
    hyperparams: tuple[HyperParam, ...]
    build: Callable[[str, dict[str, Any], int], Any]

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """All hyperparameters, typed: the defaults overridden by `given`."""
        known = {hp.name: hp for hp in self.hyperparams}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise PipelineError(
                f"unknown hyperparameter(s) {', '.join(unknown)} for model '{self.name}'; it takes {', '.join(known)}"
            )
        return {name: hp.parse(given[name], self.name) if name in given else hp.default for name, hp in known.items()}


def _build_logistic_regression(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(random_state=seed, **params)


def _build_ridge(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(**params)


def _build_random_forest(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    estimator = RandomForestClassifier if task == CLASSIFICATION else RandomForestRegressor
    kwargs = {k: v for k, v in params.items() if not (k == "max_features" and v is None)}
    return estimator(random_state=seed, n_jobs=1, **kwargs)


def _build_hist_gradient_boosting(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    estimator = HistGradientBoostingClassifier if task == CLASSIFICATION else HistGradientBoostingRegressor
    return estimator(random_state=seed, **params)


MODEL_FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily(
            "logistic_regression",
            (CLASSIFICATION,),
            (
                HyperParam("C", float, 1.0, low=1e-12),
                HyperParam("max_iter", int, 1000, low=1),
                HyperParam("class_weight", str, None, allow_none=True, choices=("balanced",)),
            ),
            _build_logistic_regression,
        ),
        ModelFamily("ridge", (REGRESSION,), (HyperParam("alpha", float, 1.0, low=0.0),), _build_ridge),
        ModelFamily(
            "random_forest",
            TASKS,
            (
                HyperParam("n_estimators", int, 200, low=1),
                HyperParam("max_depth", int, None, low=1, allow_none=True),
                HyperParam("min_samples_leaf", int, 1, low=1),
                HyperParam("max_features", float, None, low=1e-6, high=1.0, allow_none=True),
            ),
            _build_random_forest,
        ),
        ModelFamily(
            "hist_gradient_boosting",
            TASKS,
            (
                HyperParam("learning_rate", float, 0.1, low=1e-6),
                HyperParam("max_iter", int, 100, low=1),
                HyperParam("max_leaf_nodes", int, 31, low=2),
                HyperParam("min_samples_leaf", int, 20, low=1),
                HyperParam("l2_regularization", float, 0.0, low=0.0),
            ),
            _build_hist_gradient_boosting,
        ),
    )
}
DEFAULT_FAMILY = {CLASSIFICATION: "logistic_regression", REGRESSION: "ridge"}


def get_family(name: str, task: str) -> ModelFamily:
    """The named family, checked against the task."""
    fits = [f.name for f in MODEL_FAMILIES.values() if task in f.tasks]
    if name not in MODEL_FAMILIES:
        raise PipelineError(f"unknown model '{name}'; for {task} use one of {', '.join(fits)}")
    family = MODEL_FAMILIES[name]
    if task not in family.tasks:
        raise PipelineError(f"model '{name}' does not fit a {task} task; use one of {', '.join(fits)}")
    return family


def build_model(spec: FeatureSpec, family: ModelFamily, hyperparams: dict[str, Any], seed: int) -> Any:
    """A scikit-learn Pipeline: impute/scale/one-hot the raw feature columns, then the estimator.

    The preprocessing sits inside the pipeline so it is fitted on training rows only and travels with
    the model; columns featurize dropped are ignored, so the model takes raw rows as `load` wrote them.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    transformers = []
    if spec.numeric:
        numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        transformers.append(("numeric", numeric, list(spec.numeric)))
    if spec.categorical:
        categorical = Pipeline(
            [
                ("impute", SimpleImputer(strategy="most_frequent")),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        transformers.append(("categorical", categorical, list(spec.categorical)))
    preprocess = ColumnTransformer(transformers, remainder="drop")
    return Pipeline([("preprocess", preprocess), ("model", family.build(spec.task, hyperparams, seed))])


def predict_with_proba(model: Any, frame: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions, and class probabilities for a classifier."""
    predictions = model.predict(frame)
    proba = model.predict_proba(frame) if task == CLASSIFICATION and hasattr(model, "predict_proba") else None
    return predictions, proba


def fit_model(splits: Splits, spec: FeatureSpec, family: ModelFamily, hyperparams: dict[str, Any], seed: int) -> Any:
    """Fit the preprocessing + estimator pipeline on the training rows."""
    features, labels = features_and_target(splits.train, spec)
    # Built first: threadpoolctl limits only the BLAS/OpenMP libraries already loaded, and building imports them.
    model = build_model(spec, family, hyperparams, seed)
    # One BLAS/OpenMP thread: faster for small fits on shared cores, and the same result every run.
    with threadpool_limits(limits=1):
        return model.fit(features, labels)


def score_model(model: Any, frame: Any, spec: FeatureSpec) -> dict[str, float]:
    """All task metrics of a fitted model on one split."""
    features, labels = features_and_target(frame, spec)
    predictions, proba = predict_with_proba(model, features, spec.task)
    classes = list(model.classes_) if proba is not None else None
    return compute_metrics(spec.task, labels, predictions, proba, classes)


def hyperparam_params(family: ModelFamily, hyperparams: dict[str, Any]) -> dict[str, str]:
    """How a family and its hyperparameters are logged, on train runs and tune trials alike."""
    return {"model_family": family.name, **{f"{family.name}.{k}": str(v) for k, v in hyperparams.items()}}


# --------------------------------------------------------------------------- splits and tracking

SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def __getitem__(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


def read_splits(splits_uri: str) -> tuple[Splits, FeatureSpec]:
    """Read featurize's output: the three splits and the feature spec."""
    root = download_dir(splits_uri, "the splits")
    missing = [
        name for name in (*[f"{s}.parquet" for s in SPLIT_NAMES], "feature_spec.json") if not (root / name).exists()
    ]
    if missing:
        raise PipelineError(
            f"'{splits_uri}' is not a featurize output (missing {', '.join(missing)}); "
            "pass the splits URI of a finished featurize run"
        )
    spec = FeatureSpec.from_dict(json.loads((root / "feature_spec.json").read_text()))
    splits = Splits(*(pd.read_parquet(root / f"{name}.parquet") for name in SPLIT_NAMES))
    return splits, spec


def features_and_target(frame: pd.DataFrame, spec: FeatureSpec) -> tuple[pd.DataFrame, pd.Series]:
    """The model's input (all raw columns but the target) and the target."""
    return frame[spec.input_columns], frame[spec.target]


def model_pip_requirements() -> list[str]:
    """Exact pins of what a logged model needs, read from this environment.

    Given explicitly, MLflow skips its requirement inference, which loads the model in a subprocess
    and cost ~6 s per logged model here.
    """
    return [f"{name}=={version(name)}" for name in ("mlflow", "scikit-learn", "pandas", "numpy", "scipy", "skops")]


# What our pipelines hold beyond skops' default allow-list; all come from numpy and scikit-learn.
SKOPS_TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


def latest_finished_step_run(experiment_id: str, step: str) -> Any | None:
    """The newest FINISHED run of a step in the experiment, or None."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{STEP_TAG}` = '{step}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def artifact_uri(run_id: str, path: str) -> str:
    """The portable `runs:/` URI of an artifact, valid against any tracking store."""
    return f"runs:/{run_id}/{path}"


def dataset_source(uri: str) -> Any:
    """An MLflow dataset source for `uri`: MLflow's own where it knows the scheme, a plain URI otherwise."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    shown = redact_uri(uri)
    try:
        return resolve_dataset_source(shown)
    except Exception:  # e.g. sklearn:, runs:/, mlflow-artifacts:/ have no resolver
        return UriDatasetSource(shown)


class UriDatasetSource(DatasetSource):
    """A dataset source recorded by its URI; the pipeline reads it back with `read_data`."""

    def __init__(self, uri: str):
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "uri"

    def load(self, **kwargs: Any) -> str:
        return str(fetch_local(self.uri))

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> UriDatasetSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> UriDatasetSource:
        return cls(source_dict["uri"])

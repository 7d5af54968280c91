"""URIs and their secrets: ${VAR} placeholders for data credentials, redaction, tracking credentials."""

from __future__ import annotations

import os
import re
import urllib.parse

from steps.lib.errors import PipelineError

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


# Query parameters that carry a secret: signed-URL signatures and credentials (S3, GCS, Azure SAS), tokens,
# keys. Matched on the lower-cased name, whole or as a part (x-amz-signature, access_token, api-key).
SECRET_QUERY_WORDS = ("signature", "token", "secret", "password", "passwd", "credential", "apikey", "api_key")
SECRET_QUERY_NAMES = frozenset({"sig", "key", "code", "auth", "x-api-key", "api-key"})


def secret_query_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_QUERY_NAMES or any(word in lowered for word in SECRET_QUERY_WORDS)


def redact_query(query: str) -> str:
    """The query string with the values of secret parameters replaced by *** (placeholders kept)."""
    if not query:
        return query
    pieces = []
    for piece in query.split("&"):
        name, has_value, value = piece.partition("=")
        unquoted = urllib.parse.unquote_plus(value)
        if has_value and secret_query_name(urllib.parse.unquote_plus(name)) and not is_placeholder(unquoted):
            value = "***"
        pieces.append(name + has_value + value)
    return "&".join(pieces)


def redact_uri(uri: str) -> str:
    """The URI with its secrets replaced by ***, so it can be logged (a ${VAR} placeholder is no secret: kept).

    A password goes; so does a user name that stands alone (often a token), and the value of a query
    parameter that carries one (X-Amz-Signature, sig, token, ...); a URI whose host part cannot be parsed
    keeps only its scheme.
    """
    if garbled_user_info(uri):
        return uri.partition("://")[0] + "://***"
    parts = urllib.parse.urlsplit(uri)
    if parts.query:
        parts = parts._replace(query=redact_query(parts.query))
        uri = urllib.parse.urlunsplit(parts)
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
    secret = next((n for n, v in query_pairs(parts.query) if secret_query_name(n) and not is_placeholder(v)), None)
    if secret is not None:
        raise PipelineError(
            f"{name} holds a secret in its query string ({secret}=...), and MLflow records params verbatim; write it "
            f"as a placeholder, e.g. ?{secret}=${{DATA_SIGNATURE}} with DATA_SIGNATURE exported, and delete this run "
            "(mlflow runs delete, then mlflow gc)"
        )
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


SECRET_VARIABLES = "PIPELINE_SECRET_VARS"  # the environment variables a ${VAR} placeholder may send


def allowed_secret_variables() -> set[str]:
    """The variable names PIPELINE_SECRET_VARS allows (comma-separated): a URI read from a run (reproduce
    replays another person's params) may name any variable; only these are ever filled in and sent."""
    return {name.strip() for name in os.environ.get(SECRET_VARIABLES, "").split(",") if name.strip()}


def query_pairs(query: str) -> list[tuple[str, str]]:
    """(name, value) of each parameter of a query string, percent-decoded; blank values kept."""
    return urllib.parse.parse_qsl(query, keep_blank_values=True)


def expand_placeholders(uri: str) -> str:
    """Fill the ${VAR} placeholders of an http(s) URI's user-info and of its secret query parameters from the
    environment, in memory only."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in CREDENTIAL_SCHEMES:
        return uri

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in allowed_secret_variables():  # a planted ${AWS_SECRET_ACCESS_KEY} must not leave this machine
            raise PipelineError(
                f"'{redact_uri(uri)}' refers to ${{{name}}}, which {SECRET_VARIABLES} does not allow to be sent to "
                f"{parts.hostname}; if you wrote this URI, export {SECRET_VARIABLES}={name}"
            )
        if name not in os.environ:
            raise PipelineError(f"'{redact_uri(uri)}' refers to ${{{name}}}, which is not set; export {name}=...")
        return urllib.parse.quote(os.environ[name], safe="")

    if parts.query and PLACEHOLDER.search(urllib.parse.unquote(parts.query)):
        pieces = []
        for piece in parts.query.split("&"):
            name, has_value, raw = piece.partition("=")
            if has_value and is_placeholder(urllib.parse.unquote_plus(raw)):
                raw = PLACEHOLDER.sub(value, urllib.parse.unquote_plus(raw))
            pieces.append(name + has_value + raw)
        parts = parts._replace(query="&".join(pieces))
    if "@" in parts.netloc:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{PLACEHOLDER.sub(value, user)}@{host}")
    return urllib.parse.urlunsplit(parts)


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


def artifact_uri(run_id: str, path: str) -> str:
    """The portable `runs:/` URI of an artifact, valid against any tracking store."""
    return f"runs:/{run_id}/{path}"


def run_of_uri(uri: str) -> str | None:
    """The run id in a runs:/<id>/... URI."""
    return uri.split("/")[1] if uri.startswith("runs:/") and uri.count("/") >= 2 else None

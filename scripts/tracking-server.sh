#!/usr/bin/env bash
# A team's MLflow tracking server on this machine: PostgreSQL for runs and the registry, artifacts served
# through the server, everything bound to loopback (PostgreSQL to a Unix socket only).
#
#   scripts/tracking-server.sh start|stop|status|paths [--port N] [--data-dir DIR] [--auth]
#
# start prints the tracking URI (export MLFLOW_TRACKING_URI=<it>); stop ends what start started, by pid,
# once it has checked the pid is that server. Only its users can reach it: the data dir is 0700; PostgreSQL
# takes connections on a socket in a 0700 directory, with a password (scram-sha-256) generated on first
# start into a 0600 file of the data dir, and no `trust` line. Run by root, PostgreSQL runs as the postgres
# user with its files under /var/lib/postgresql/mlflow-pipeline/<id> (0700, printed by `paths`), so any
# --data-dir works. --auth puts MLflow's basic-auth app in front (every request needs a user and password);
# the admin password is generated on the first such start and printed once, and a data dir started with
# --auth always starts with it. Needs Debian's postgresql package, psycopg2-binary (and Flask-WTF for
# --auth) in the Python that runs mlflow.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status|paths [--port N] [--data-dir DIR] [--auth]" >&2; exit 2; }
fail() { echo "error: tracking-server: $*" >&2; exit 1; }

[ $# -ge 1 ] || usage
command=$1
shift
port=8080
auth=0
data_dir="$(cd "$(dirname "$0")/.." && pwd)/.tracking-server"
while [ $# -gt 0 ]; do
    case $1 in
        --port) [ $# -ge 2 ] || usage; port=$2; shift 2 ;;
        --data-dir) [ $# -ge 2 ] || usage; data_dir=$2; shift 2 ;;
        --auth) auth=1; shift ;;
        *) usage ;;
    esac
done
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || fail "--port must be a port number; got '$port'"
umask 077
mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)
chmod 700 "$data_dir"
if [ "$(id -u)" = 0 ]; then  # the postgres user's own place: it need not enter the data dir
    pg_home=/var/lib/postgresql/mlflow-pipeline/$(printf '%s' "$data_dir" | sha256sum | cut -c1-16)
else
    pg_home=$data_dir
fi
pg_data=$pg_home/postgres
socket_dir=$pg_home/socket
password_file=$data_dir/db-password
pgpass=$data_dir/pgpass
server_pid=$data_dir/mlflow-server.pid
server_log=$data_dir/mlflow-server.log
auth_config=$data_dir/basic-auth.ini
uri="http://127.0.0.1:$port"
python=${PYTHON:-python}
export PGPASSFILE=$pgpass  # libpq (psql, createdb, psycopg2 in the mlflow server) reads the password here

pg_bin() {
    local dir
    for dir in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
        [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    done
    fail "PostgreSQL server binaries not found; install them: apt-get install -y postgresql"
}

# PostgreSQL refuses to run as root: run its server commands as the postgres user then.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The pid file names this server: a live process whose command line is `mlflow server ... --port <port>`.
ours() {
    [ -f "$server_pid" ] || return 1
    local pid
    pid=$(cat "$server_pid")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "mlflow server .*--port $port " || return 1
}

healthy() { "$python" - "$uri" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/health", timeout=2) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError:
    sys.exit(1)
EOF
}

port_taken() { "$python" - "$port" <<'EOF'
import socket, sys
with socket.socket() as probe:
    probe.settimeout(1)
    sys.exit(0 if probe.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

make_password() {
    [ -s "$password_file" ] && [ -s "$pgpass" ] && return
    "$python" -c "import secrets; print(secrets.token_urlsafe(32))" >"$password_file"
    printf '*:*:*:mlflow:%s\n' "$(cat "$password_file")" >"$pgpass"
    chmod 600 "$password_file" "$pgpass"
}

start_postgres() {
    local bin pwfile
    bin=$(pg_bin)
    if [ ! -s "$password_file" ] && as_pg test -f "$pg_data/PG_VERSION" 2>/dev/null; then
        fail "$pg_data was made with a password that $data_dir no longer holds ($password_file is gone); restore it, or remove $pg_home to start afresh"
    fi
    make_password
    if [ "$(id -u)" = 0 ]; then
        install -d -m 700 -o postgres -g postgres /var/lib/postgresql/mlflow-pipeline "$pg_home"
    fi
    as_pg install -d -m 700 "$socket_dir"
    if [ ! -f "$pg_data/PG_VERSION" ]; then
        pwfile=$(as_pg mktemp "$pg_home/pw.XXXXXX")  # readable by initdb's user only, removed at once
        as_pg tee "$pwfile" <"$password_file" >/dev/null
        as_pg "$bin/initdb" -D "$pg_data" -U mlflow --pwfile="$pwfile" --auth-local=scram-sha-256 \
            --auth-host=reject -E UTF8 >"$data_dir/initdb.log" 2>&1 || { as_pg rm -f "$pwfile"; fail "initdb failed; see $data_dir/initdb.log"; }
        as_pg rm -f "$pwfile"
    fi
    if as_pg grep -qE '^[^#]*[[:space:]]trust([[:space:]]|$)' "$pg_data/pg_hba.conf"; then
        fail "$pg_data was made with trust authentication (any local user gets in); stop the server, remove $pg_data and start again"
    fi
    if ! as_pg "$bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
        # No TCP at all: the server listens on a Unix socket in a directory only its user can enter.
        as_pg "$bin/pg_ctl" -D "$pg_data" -w -t 60 -l "$pg_home/postgres.log" \
            -o "-c listen_addresses='' -k $socket_dir -c unix_socket_permissions=0700" start >/dev/null ||
            fail "PostgreSQL did not start; see $pg_home/postgres.log"
    fi
    "$bin/psql" -h "$socket_dir" -U mlflow -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='mlflow'" |
        grep -q 1 || "$bin/createdb" -h "$socket_dir" -U mlflow mlflow
}

start() {
    if ours && healthy; then
        echo "$uri"
        return
    fi
    if port_taken; then
        fail "port $port is taken by another process (not this server); pass --port with a free one"
    fi
    "$python" -c "import psycopg2" 2>/dev/null ||
        fail "psycopg2 is missing in $python; pip install psycopg2-binary==2.9.13"
    start_postgres
    mkdir -p "$data_dir/artifacts"
    local app=() auth_env=() admin_password=""
    if [ "$auth" = 1 ] || [ -f "$auth_config" ]; then
        "$python" -c "import flask_wtf" 2>/dev/null ||
            fail "--auth needs Flask-WTF in $python; pip install Flask-WTF==1.3.0"
        if [ ! -f "$auth_config" ]; then  # first start with --auth: the admin is made with a new password
            admin_password=$("$python" -c "import secrets; print(secrets.token_urlsafe(18))")
            # auth_cache_ttl_seconds: a password is checked (PBKDF2) once a minute, not on every request:
            # a main run took 145 s against 40 s without auth here.
            printf '[mlflow]\ndefault_permission = EDIT\ndatabase_uri = sqlite:///%s\nadmin_username = admin\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\nauth_cache_ttl_seconds = 60\n' \
                "$data_dir/basic-auth.db" >"$auth_config"
        fi
        [ -s "$data_dir/flask-secret" ] ||  # the CSRF secret of the auth app's forms: stable across restarts
            "$python" -c "import secrets; print(secrets.token_hex(32))" >"$data_dir/flask-secret"
        # Set only with auth: with MLFLOW_AUTH_CONFIG_PATH set, MLflow reads that file on every request.
        auth_env=(MLFLOW_AUTH_CONFIG_PATH="$auth_config" MLFLOW_AUTH_ADMIN_PASSWORD="$admin_password"
            MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$data_dir/flask-secret")")
        app=(--app-name basic-auth)
    fi
    env "${auth_env[@]}" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup "$python" -m mlflow server "${app[@]}" \
        --backend-store-uri "postgresql+psycopg2://mlflow@/mlflow?host=$socket_dir" \
        --artifacts-destination "$data_dir/artifacts" --serve-artifacts \
        --host 127.0.0.1 --port "$port" --workers 1 >"$server_log" 2>&1 &
    echo $! >"$server_pid"
    for _ in $(seq 1 120); do  # bounded: 60 s
        if ours && healthy; then
            # Shown once: MLflow keeps only its hash (in basic-auth.db); change it with the update-password API.
            [ -n "$admin_password" ] && echo "basic auth on: user admin, password $admin_password (shown once; keep it)" >&2
            echo "$uri"
            return
        fi
        kill -0 "$(cat "$server_pid")" 2>/dev/null || fail "mlflow server exited; see $server_log"
        sleep 0.5
    done
    fail "mlflow server did not answer $uri/health within 60 s; see $server_log"
}

stop() {
    if ours; then
        local pid
        pid=$(cat "$server_pid")
        pkill -TERM -P "$pid" 2>/dev/null || true  # its uvicorn/gunicorn workers
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && { pkill -KILL -P "$pid" 2>/dev/null || true; kill -KILL "$pid" 2>/dev/null || true; }
    elif [ -f "$server_pid" ]; then
        echo "warning: tracking-server: $server_pid names no running mlflow server on port $port; nothing killed" >&2
    fi
    rm -f "$server_pid"
    if as_pg test -f "$pg_data/postmaster.pid" 2>/dev/null; then
        as_pg "$(pg_bin)/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    echo "stopped"
}

status() {
    local bin running=0
    if ours && healthy; then echo "mlflow server: running at $uri (pid $(cat "$server_pid"))"; else
        echo "mlflow server: not running"; running=1; fi
    bin=$(pg_bin)
    if as_pg test -f "$pg_data/PG_VERSION" 2>/dev/null && as_pg "$bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
        echo "postgresql: running (socket $socket_dir)"
    else
        echo "postgresql: not running"; running=1
    fi
    return $running
}

paths() {
    echo "data_dir=$data_dir"
    echo "pg_data=$pg_data"
    echo "socket_dir=$socket_dir"
    echo "pgpass=$pgpass"
}

case $command in
    start) start ;;
    stop) stop ;;
    status) status ;;
    paths) paths ;;
    *) usage ;;
esac

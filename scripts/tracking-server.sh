#!/usr/bin/env bash
# A team's MLflow tracking server on this machine: PostgreSQL for runs and the registry, artifacts served
# through the server, everything bound to loopback (PostgreSQL to a Unix socket only).
#
#   scripts/tracking-server.sh start|stop|status [--port N] [--data-dir DIR]
#
# start prints the tracking URI (export MLFLOW_TRACKING_URI=<it>); stop ends what start started, by pid.
# Needs Debian's postgresql package (initdb, pg_ctl) and psycopg2-binary in the Python that runs mlflow.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status [--port N] [--data-dir DIR]" >&2; exit 2; }
fail() { echo "error: tracking-server: $*" >&2; exit 1; }

[ $# -ge 1 ] || usage
command=$1
shift
port=8080
data_dir="$(cd "$(dirname "$0")/.." && pwd)/.tracking-server"
while [ $# -gt 0 ]; do
    case $1 in
        --port) [ $# -ge 2 ] || usage; port=$2; shift 2 ;;
        --data-dir) [ $# -ge 2 ] || usage; data_dir=$2; shift 2 ;;
        *) usage ;;
    esac
done
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || fail "--port must be a port number; got '$port'"
mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)
pg_data=$data_dir/postgres
socket_dir=$data_dir/socket
server_pid=$data_dir/mlflow-server.pid
server_log=$data_dir/mlflow-server.log
uri="http://127.0.0.1:$port"
python=${PYTHON:-python}

pg_bin() {
    local dir
    for dir in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
        [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    done
    fail "PostgreSQL server binaries not found; install them: apt-get install -y postgresql"
}

# PostgreSQL refuses to run as root: run its commands as the postgres user then.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

healthy() { "$python" - "$uri" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/health", timeout=2) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError:
    sys.exit(1)
EOF
}

start_postgres() {
    local bin
    bin=$(pg_bin)
    mkdir -p "$socket_dir"
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$data_dir" "$socket_dir"
        runuser -u postgres -- test -w "$data_dir" ||
            fail "the postgres user cannot reach $data_dir; make its parent directories traversable (chmod o+x) or pass another --data-dir"
    fi
    if [ ! -f "$pg_data/PG_VERSION" ]; then
        as_pg "$bin/initdb" -D "$pg_data" -U mlflow --auth=trust -E UTF8 >"$data_dir/initdb.log" 2>&1 ||
            fail "initdb failed; see $data_dir/initdb.log"
    fi
    if ! as_pg "$bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
        # No TCP at all: the server listens on a Unix socket inside the data dir.
        as_pg "$bin/pg_ctl" -D "$pg_data" -w -t 60 -l "$data_dir/postgres.log" \
            -o "-c listen_addresses='' -k $socket_dir" start >/dev/null ||
            fail "PostgreSQL did not start; see $data_dir/postgres.log"
    fi
    as_pg "$bin/psql" -h "$socket_dir" -U mlflow -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='mlflow'" |
        grep -q 1 || as_pg "$bin/createdb" -h "$socket_dir" -U mlflow mlflow
}

start() {
    if alive "$server_pid" && healthy; then
        echo "$uri"
        return
    fi
    "$python" -c "import psycopg2" 2>/dev/null ||
        fail "psycopg2 is missing in $python; pip install psycopg2-binary==2.9.13"
    start_postgres
    mkdir -p "$data_dir/artifacts"
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup "$python" -m mlflow server \
        --backend-store-uri "postgresql+psycopg2://mlflow@/mlflow?host=$socket_dir" \
        --artifacts-destination "$data_dir/artifacts" --serve-artifacts \
        --host 127.0.0.1 --port "$port" --workers 1 >"$server_log" 2>&1 &
    echo $! >"$server_pid"
    for _ in $(seq 1 120); do  # bounded: 60 s
        healthy && { echo "$uri"; return; }
        alive "$server_pid" || fail "mlflow server exited; see $server_log"
        sleep 0.5
    done
    fail "mlflow server did not answer $uri/health within 60 s; see $server_log"
}

stop() {
    if alive "$server_pid"; then
        local pid
        pid=$(cat "$server_pid")
        pkill -TERM -P "$pid" 2>/dev/null || true  # its uvicorn/gunicorn workers
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do alive "$server_pid" || break; sleep 0.25; done
        alive "$server_pid" && { pkill -KILL -P "$pid" 2>/dev/null || true; kill -KILL "$pid" 2>/dev/null || true; }
    fi
    rm -f "$server_pid"
    if [ -f "$pg_data/postmaster.pid" ]; then
        as_pg "$(pg_bin)/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    echo "stopped"
}

status() {
    local bin running=0
    if alive "$server_pid" && healthy; then echo "mlflow server: running at $uri (pid $(cat "$server_pid"))"; else
        echo "mlflow server: not running"; running=1; fi
    bin=$(pg_bin)
    if [ -f "$pg_data/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
        echo "postgresql: running (socket $socket_dir)"
    else
        echo "postgresql: not running"; running=1
    fi
    return $running
}

case $command in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac

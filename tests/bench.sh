#!/usr/bin/env bash
# `make bench`: each benchmark prints its figures next to a reference measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== CSR parse + proof-of-possession check (cvm-core)"
cargo run --quiet --release -p cvm-core --example csr_cost
if [ -f functions/cert-provider/Cargo.toml ] && grep -q provider_latency functions/cert-provider/Cargo.toml 2>/dev/null || [ -f functions/cert-provider/examples/provider_latency.rs ]; then
  echo
  echo "== certificate provider: polling with backoff vs a fixed 1 s sleep"
  cargo run --quiet --release -p cert-provider --example provider_latency
fi

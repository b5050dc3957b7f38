#!/usr/bin/env bash
# `make bench`: every figure next to its reference measured in the same run, as one table on
# stdout and in target/bench/report.md (details and logs beside it). Not part of `make test`.
#
# It builds what it measures: the release bootstraps with `cargo lambda build --release` (the
# vend function, the certificate provider, the hook, and a no-SDK hello-world as the cold-start
# reference), the debug tools it drives (vend-local, cvm-admin, cvm-device) with the provider's
# latency example (timer-bound, so a debug build measures it as well), the CSR micro-benchmark
# in release, then runs `cvm-bench` (tests/bench/main.rs) against its own moto server.
# Options for cvm-bench can be passed through: `tests/bench.sh --cold-runs 3`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT="$ROOT/target/bench"
started=$(date +%s)
step() { echo "bench: $* ($(( $(date +%s) - started )) s)" >&2; }

step "installing the local stack's tools"
tests/local-stack/install.sh >&2
export PATH="$ROOT/.local/venv/bin:$PATH"
mkdir -p "$OUT"

step "building the release bootstraps (cargo lambda build --release, x86_64)"
cargo lambda build --release -p vend -p cert-provider -p provisioning-hook >&2
cargo lambda build --release -p lambda-hello >&2
step "building the tools the benchmark drives"
# Target filters apply to every package named: each binary is named, or it is not built.
cargo build --quiet -p vend-local -p cvm-admin -p cvm-device -p cvm-tests -p cert-provider \
  --bin vend-local --bin cvm-admin --bin cvm-device --bin cvm-bench --example provider_latency >&2

step "CSR parse + proof-of-possession check (cvm-core example csr_cost)"
cargo run --quiet --release -p cvm-core --example csr_cost >"$OUT/csr_cost.txt"
step "certificate provider: polling with backoff vs a fixed 1 s sleep (example provider_latency)"
target/debug/examples/provider_latency >"$OUT/provider_latency.txt"

step "running the benchmark"
target/debug/cvm-bench --root "$ROOT" --out "$OUT" --provider-latency "$OUT/provider_latency.txt" "$@"
{
  echo
  echo "## Details"
  echo
  echo "CSR parse + proof-of-possession check (cvm-core example csr_cost):"
  echo
  echo '```text'
  cat "$OUT/csr_cost.txt"
  echo '```'
  echo
  echo "Certificate provider (cert-provider example provider_latency):"
  echo
  echo '```text'
  cat "$OUT/provider_latency.txt"
  echo '```'
  echo
  echo "make bench took $(( $(date +%s) - started )) s in all (builds included)."
} >>"$OUT/report.md"
step "done; report in target/bench/report.md"

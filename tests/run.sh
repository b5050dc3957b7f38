#!/usr/bin/env bash
# `make test`: installs what the tests need, checks formatting and lints, brings the local
# stack up, runs every Rust test (unit and integration) against it, then the infra tests.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

section() { printf '\n== %s\n' "$*"; }

section "install"
tests/local-stack/install.sh
if [ -x tests/local-stack/install-device.sh ]; then tests/local-stack/install-device.sh; fi

section "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

section "local stack"
if [ ! -f .local/env ]; then
  tests/local-stack/up.sh
  trap 'tests/local-stack/down.sh' EXIT
fi
set -a; . .local/env; set +a

section "rust: unit and integration tests"
cargo test --workspace

section "contract: the vend service against its OpenAPI document (schemathesis, both issuers)"
tests/local-stack/schemathesis.sh "$CVM_API_URL"
tests/local-stack/schemathesis.sh "$CVM_PCA_API_URL"

if [ -f infra/package.json ]; then
  section "infra: CDK unit tests, cdk-nag, and one synth with real bundling"
  (cd infra && npm ci --no-audit --no-fund --loglevel=error && npm test)
  PATH="$ROOT/.local/venv/bin:$PATH" bash infra/scripts/synth-bundled.sh
fi

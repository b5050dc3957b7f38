#!/usr/bin/env bash
# One real `cdk synth` that builds the vend function with cargo-lambda, and checks that
# the synthesized asset holds the `bootstrap` executable Lambda runs.
#
# The unit tests skip bundling; this script proves the bundling itself works: the crate
# paths, binary names and cargo-lambda flags the stack passes. It builds for x86_64
# (arm64 needs zig to cross-compile; set ARCHITECTURE=arm64 where zig is installed).
# The certificate provider is included when its crate exists.
#
# Needs: Node 20 (npm ci done in infra/), Rust, and cargo-lambda, either on PATH or in the
# project's virtualenv at .local/venv (pip install cargo-lambda). No AWS credentials.
set -euo pipefail

infra_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo_dir="$(cd "${infra_dir}/.." && pwd)"
architecture="${ARCHITECTURE:-x86_64}"

fail() {
  echo "synth-bundled: $*" >&2
  exit 1
}

if [ -d "${repo_dir}/.local/venv/bin" ]; then
  PATH="${repo_dir}/.local/venv/bin:${PATH}"
fi
command -v cargo >/dev/null || fail "cargo not found: install Rust"
cargo lambda --version >/dev/null 2>&1 ||
  fail "cargo-lambda not found: pip install cargo-lambda (into ${repo_dir}/.local/venv) or put it on PATH"
[ -x "${infra_dir}/node_modules/.bin/cdk" ] || fail "run npm ci in ${infra_dir} first"

context=(-c "architecture=${architecture}" -c stage=bundled)
binaries=(vend)
if [ -f "${repo_dir}/functions/cert-provider/Cargo.toml" ]; then
  # The provider signs with AWS Private CA; a placeholder CA ARN is enough to synthesize.
  context+=(-c certificateProvider=true
    -c pcaArn=arn:aws:acm-pca:us-east-1:111111111111:certificate-authority/00000000-0000-0000-0000-000000000000)
  binaries+=(cert-provider)
else
  context+=(-c certificateProvider=false)
fi

out_dir="$(mktemp -d "${TMPDIR:-/tmp}/cvm-cdk-out.XXXXXX")"
trap 'rm -rf "${out_dir}"' EXIT

cd "${infra_dir}"
npm run --silent build

echo "synth-bundled: cdk synth (${architecture}, functions: ${binaries[*]})"
# No version check, notices or telemetry: nothing but the build may reach the network.
CDK_DISABLE_VERSION_CHECK=1 CDK_DISABLE_CLI_TELEMETRY=true \
  ./node_modules/.bin/cdk synth --quiet --no-notices --no-version-reporting \
  --output "${out_dir}" "${context[@]}"

# Find each function's asset directory through the template's asset metadata, and check
# that it contains an executable ELF `bootstrap` for the requested architecture.
node - "${out_dir}" "Cvm-bundled" "${architecture}" <<'EOF'
const fs = require('node:fs');
const path = require('node:path');
const [outDir, stackName, architecture] = process.argv.slice(2);
const template = JSON.parse(fs.readFileSync(path.join(outDir, `${stackName}.template.json`), 'utf8'));
const functions = Object.entries(template.Resources).filter(([, r]) => r.Type === 'AWS::Lambda::Function');
if (functions.length === 0) throw new Error('no Lambda function in the template');
// ELF e_machine: 0x3e x86-64, 0xb7 AArch64.
const machine = { x86_64: 0x3e, arm64: 0xb7 }[architecture];
for (const [id, resource] of functions) {
  const assetPath = resource.Metadata && resource.Metadata['aws:asset:path'];
  if (!assetPath) throw new Error(`${id} has no asset metadata`);
  const bootstrap = path.join(outDir, assetPath, 'bootstrap');
  const stat = fs.statSync(bootstrap);
  if (!stat.isFile() || (stat.mode & 0o111) === 0) throw new Error(`${bootstrap} is not an executable file`);
  const header = Buffer.alloc(20);
  const fd = fs.openSync(bootstrap, 'r');
  fs.readSync(fd, header, 0, 20, 0);
  fs.closeSync(fd);
  if (header.toString('latin1', 0, 4) !== '\x7fELF') throw new Error(`${bootstrap} is not an ELF binary`);
  if (header.readUInt16LE(18) !== machine) throw new Error(`${bootstrap} is not built for ${architecture}`);
  console.log(`synth-bundled: ${id}: ${assetPath}/bootstrap (${stat.size} bytes, ELF ${architecture})`);
}
EOF
echo "synth-bundled: ok"

#!/usr/bin/env bash
# One real `cdk synth` that builds the Lambda functions with cargo-lambda, and checks that
# each synthesized asset holds the `bootstrap` executable Lambda runs.
#
# The unit tests skip bundling; this script proves the bundling itself works: the crate
# paths, binary names and cargo-lambda flags the stack passes. It synthesizes the committed
# `prod` stage (the one that may own the certificate provider) with every function switched
# on whose crate exists: vend always, the certificate provider (functions/cert-provider) and
# the pre-provisioning hook (functions/provisioning-hook) when present.
#
# All functions build in release into the workspace's one target directory, and every build
# names all the Lambda packages (`-p` each, see lib/paths.ts), so Cargo resolves one feature
# set for the dependencies they share: the AWS SDK, tokio, hyper and rustls compile once, for
# the first function, and the others only compile their own crates and link.
#
# It builds for x86_64 (arm64 needs zig to cross-compile; set ARCHITECTURE=arm64 where zig is
# installed). Needs: Node 20 (npm ci done in infra/), Rust, and cargo-lambda, either on PATH or
# in the project's virtualenv at .local/venv (pip install cargo-lambda). No AWS credentials.
set -euo pipefail

infra_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo_dir="$(cd "${infra_dir}/.." && pwd)"
architecture="${ARCHITECTURE:-x86_64}"
stage=prod

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

context=(-c "stage=${stage}" -c "architecture=${architecture}")
binaries=(vend)
if [ -f "${repo_dir}/functions/cert-provider/Cargo.toml" ]; then
  # The provider signs with AWS Private CA; a placeholder CA ARN is enough to synthesize.
  context+=(-c certificateProvider=true
    -c pcaArn=arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/00000000-0000-0000-0000-000000000000)
  binaries+=(cert-provider)
fi
if [ -f "${repo_dir}/functions/provisioning-hook/Cargo.toml" ]; then
  context+=(-c fleetProvisioning=true)
  binaries+=(provisioning-hook)
fi

out_dir="$(mktemp -d "${TMPDIR:-/tmp}/cvm-cdk-out.XXXXXX")"
build_log="${out_dir}.log"
trap 'rm -rf "${out_dir}" "${build_log}"' EXIT

cd "${infra_dir}"
npm run --silent build

echo "synth-bundled: cdk synth -c stage=${stage} (${architecture}, functions: ${binaries[*]})"
started=${SECONDS}
# No version check, notices or telemetry: nothing but the build may reach the network.
# The build's output goes to a log (shown when the synth fails) so that what was compiled
# can be counted.
if ! CDK_DISABLE_VERSION_CHECK=1 CDK_DISABLE_CLI_TELEMETRY=true \
  ./node_modules/.bin/cdk synth --quiet --no-notices --no-version-reporting \
  --output "${out_dir}" "${context[@]}" 2>"${build_log}"; then
  tail -n 60 "${build_log}" >&2
  fail "cdk synth failed"
fi
elapsed=$((SECONDS - started))
# CDK prints "Bundling asset ..." before each function's build, and cargo one
# "Compiling <crate> v<version>" line per crate it builds (a crate needed both by build
# scripts and at run time compiles twice within one build). A crate compiled in more than one
# function's build is a dependency the functions failed to share.
read -r compiled rebuilt rebuilt_names < <(awk '
  /Bundling asset/ { build++ }
  /^ *Compiling / { key = $2 " " $3; n++; if (!((build, key) in seen)) { seen[build, key] = 1; builds[key]++ } }
  END {
    names = ""; count = 0
    for (key in builds) if (builds[key] > 1) { count++; split(key, part, " "); names = names part[1] "," }
    print n + 0, count + 0, (names == "" ? "-" : names)
  }' "${build_log}")
echo "synth-bundled: synth took ${elapsed} s; cargo compiled ${compiled} crates;" \
  "compiled again for another function: ${rebuilt} (${rebuilt_names%,})"

# Find each function's asset directory through the template's asset metadata, and check
# that it contains an executable ELF `bootstrap` for the requested architecture.
node - "${out_dir}" "Cvm-${stage}" "${architecture}" "${#binaries[@]}" <<'EOF'
const fs = require('node:fs');
const path = require('node:path');
const [outDir, stackName, architecture, expected] = process.argv.slice(2);
const template = JSON.parse(fs.readFileSync(path.join(outDir, `${stackName}.template.json`), 'utf8'));
const functions = Object.entries(template.Resources).filter(([, r]) => r.Type === 'AWS::Lambda::Function');
if (functions.length !== Number(expected)) {
  throw new Error(`expected ${expected} Lambda functions in the template, found ${functions.length}`);
}
// ELF e_machine: 0x3e x86-64, 0xb7 AArch64.
const machine = { x86_64: 0x3e, arm64: 0xb7 }[architecture];
const assets = new Set();
for (const [id, resource] of functions) {
  const assetPath = resource.Metadata && resource.Metadata['aws:asset:path'];
  if (!assetPath) throw new Error(`${id} has no asset metadata`);
  assets.add(assetPath);
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
if (assets.size !== functions.length) throw new Error('two functions share one asset: a binary was built for the wrong function');
EOF
echo "synth-bundled: ok"

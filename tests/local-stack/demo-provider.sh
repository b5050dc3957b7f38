#!/usr/bin/env bash
# The fleet-provisioning path on the local stack: a device's fresh P-256 key and CSR (openssl),
# the certificate provider's answer signed by the stack's AWS Private CA, checked with openssl,
# and a retry of the same request getting the same certificate back.
#
# Run with the local stack up and .local/env exported (make demo does both). The provider runs
# through `cert-provider-local`, the Lambda's code behind a stdin/stdout runner.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

for name in AWS_ENDPOINT_URL CVM_PCA_ARN CVM_PCA_CA_CERT; do
  if [ -z "${!name:-}" ]; then
    echo "demo-provider: $name is not set: start the local stack: make up (then export .local/env)" >&2
    exit 1
  fi
done
PROVIDER="${CVM_CERT_PROVIDER:-$TARGET/cert-provider-local}"
if [ ! -x "$PROVIDER" ]; then
  (cd "$ROOT" && cargo build --quiet -p cert-provider --bin cert-provider-local)
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CN="fleet-demo-$(date +%s)"
# What AWS IoT passes as principalId: the id of the claim certificate the device connected with.
PRINCIPAL=$(printf 'claim-certificate-%s' "$CN" | sha256sum | cut -d' ' -f1)

echo "1. The device makes a P-256 key and a CSR for CN=$CN"
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/device.key"
openssl req -new -key "$WORK/device.key" -subj "/O=Example Fleet/CN=$CN" -out "$WORK/device.csr"

# The event AWS IoT sends the provider (a PEM has no characters JSON must escape but newlines).
CSR_JSON=$(awk '{printf "%s\\n", $0}' "$WORK/device.csr")
cat >"$WORK/event.json" <<EVENT
{"certificateSigningRequest": "$CSR_JSON", "principalId": "$PRINCIPAL", "clientId": "$CN"}
EVENT

certificate_of() { # response.json -> PEM on stdout
  sed -e 's/.*"certificatePem":"\([^"]*\)".*/\1/' -e 's/\\n/\n/g' "$1"
}

echo "2. AWS IoT would invoke the certificate provider; here cert-provider-local runs its code"
start=$(date +%s%N)
if ! "$PROVIDER" <"$WORK/event.json" >"$WORK/response.json" 2>"$WORK/provider.log"; then
  echo "demo-provider: the provider refused or failed:" >&2
  cat "$WORK/response.json" "$WORK/provider.log" >&2
  exit 1
fi
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
certificate_of "$WORK/response.json" >"$WORK/device.pem"

echo "3. Checks"
openssl verify -CAfile "$CVM_PCA_CA_CERT" "$WORK/device.pem" >/dev/null
echo "   chains to the Private CA (openssl verify -CAfile $CVM_PCA_CA_CERT): OK"
if ! cmp -s <(openssl x509 -in "$WORK/device.pem" -noout -pubkey) <(openssl pkey -in "$WORK/device.key" -pubout); then
  echo "demo-provider: the certificate does not carry the device's key" >&2; exit 1
fi
echo "   carries the device's public key: OK"
subject=$(openssl x509 -in "$WORK/device.pem" -noout -subject -nameopt RFC2253 | sed 's/^subject=//')
csr_subject=$(openssl req -in "$WORK/device.csr" -noout -subject -nameopt RFC2253 | sed 's/^subject=//')
if [ "$subject" != "$csr_subject" ]; then
  echo "demo-provider: subject $subject is not the CSR's $csr_subject" >&2; exit 1
fi
echo "   keeps the CSR's subject: OK"

"$PROVIDER" <"$WORK/event.json" >"$WORK/retry.json" 2>/dev/null
certificate_of "$WORK/retry.json" >"$WORK/retry.pem"
serial=$(openssl x509 -in "$WORK/device.pem" -noout -serial | cut -d= -f2)
retry_serial=$(openssl x509 -in "$WORK/retry.pem" -noout -serial | cut -d= -f2)
if [ "$serial" != "$retry_serial" ]; then
  echo "demo-provider: a retry issued a second certificate ($retry_serial)" >&2; exit 1
fi
echo "   a retried invocation gets the same certificate (idempotency token from the request): OK"

echo
echo "Fleet-provisioning certificate issued by the certificate provider"
echo "  subject:   $subject"
echo "  issuer:    $(openssl x509 -in "$WORK/device.pem" -noout -issuer -nameopt RFC2253 | sed 's/^issuer=//')"
echo "  serial:    $serial"
echo "  valid:     $(openssl x509 -in "$WORK/device.pem" -noout -startdate | cut -d= -f2) to $(openssl x509 -in "$WORK/device.pem" -noout -enddate | cut -d= -f2)"
echo "  CA:        $CVM_PCA_ARN"
echo "  answered:  ${elapsed_ms} ms (process start included; AWS IoT allows 5000 ms)"

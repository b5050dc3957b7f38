#!/usr/bin/env bash
# The main job, end to end on the local stack: ops enroll a serial, the device client makes
# its key and CSR and gets its certificate over HTTPS, and we check the result from both
# ends (the files on the device, the thing in AWS IoT).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LOCAL="$ROOT/.local"
cd "$ROOT"

if [ ! -f "$LOCAL/env" ]; then
  tests/local-stack/up.sh
  trap 'tests/local-stack/down.sh >/dev/null' EXIT
fi
set -a; . "$LOCAL/env"; set +a

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

SERIAL="ZK-DEMO-$(date +%s)"
OUT="$LOCAL/demo/$SERIAL"
mkdir -p "$OUT"; chmod 700 "$OUT"

step "ops: enroll $SERIAL (the token is printed once, only its hash is stored)"
"$CVM_ADMIN" enroll --serial "$SERIAL" --attr site=demo-lab --json > "$OUT/.enroll.json"
chmod 600 "$OUT/.enroll.json"
"$LOCAL/venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"], end="")' "$OUT/.enroll.json" > "$OUT/token"
chmod 600 "$OUT/token"; rm -f "$OUT/.enroll.json"
"$CVM_ADMIN" show --serial "$SERIAL"

step "device: first boot enrollment (key made on the device, CSR signed there, HTTPS verified)"
"$CVM_DEVICE" enroll --url "$CVM_API_URL" --serial "$SERIAL" --token-file "$OUT/token" \
  --ca "$CVM_API_CA" --out "$OUT" --key "file:$OUT/device.key"
ls -l "$OUT"

step "check: the certificate chains to the returned CA and carries the device's key"
openssl verify -CAfile "$OUT/ca.pem" "$OUT/certificate.pem"
if ! cmp -s <(openssl x509 -in "$OUT/certificate.pem" -pubkey -noout) <(openssl pkey -in "$OUT/device.key" -pubout); then
  echo "FAIL: the certificate does not carry the device's key" >&2; exit 1
fi
echo "public key: matches the device key"
openssl x509 -in "$OUT/certificate.pem" -noout -subject -issuer -enddate

step "check: AWS IoT, read back from the stack"
"$LOCAL/venv/bin/python" - "$OUT/enrollment.json" "$CVM_DEFAULT_POLICY_NAME" <<'PY'
import json, os, sys
import boto3
meta = json.load(open(sys.argv[1]))
iot = boto3.client("iot", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
cert = iot.describe_certificate(certificateId=meta["certificateId"])["certificateDescription"]
thing = iot.describe_thing(thingName=meta["thingName"])
principals = iot.list_thing_principals(thingName=meta["thingName"])["principals"]
policies = [p["policyName"] for p in iot.list_attached_policies(target=meta["certificateArn"])["policies"]]
checks = {
    "certificate is ACTIVE": cert["status"] == "ACTIVE",
    "thing exists with its attributes": thing["attributes"] == {"site": "demo-lab"},
    "certificate attached to the thing": principals == [meta["certificateArn"]],
    f"policy {sys.argv[2]} attached": policies == [sys.argv[2]],
}
for what, ok in checks.items():
    print(("ok    " if ok else "FAIL  ") + what)
if not all(checks.values()):
    sys.exit(1)
PY

step "device: re-running enrollment is safe"
"$CVM_DEVICE" enroll --url "$CVM_API_URL" --serial "$SERIAL" --token-file "$OUT/token" \
  --ca "$CVM_API_CA" --out "$OUT" --key "file:$OUT/device.key"

if [ -n "${CVM_PCA_ARN:-}" ] && [ -x tests/local-stack/demo-provider.sh ]; then
  step "fleet provisioning: the certificate provider signs with the Private CA"
  tests/local-stack/demo-provider.sh
fi

step "summary"
"$LOCAL/venv/bin/python" - "$OUT/enrollment.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"device {m['serial']} is thing {m['thingName']}")
print(f"certificate {m['certificateId'][:16]}... (policy {m['policyName']})")
print(f"MQTT/HTTPS endpoint {m['endpoints']['data']}, credentials endpoint {m['endpoints']['credentials']}")
PY
echo "files: $OUT"

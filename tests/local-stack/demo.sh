#!/usr/bin/env bash
# The main job, end to end on the local stack, through both doors:
#   device A gets its identity from the HTTPS vend API (cvm-device enroll),
#   device B by fleet provisioning with a claim certificate over MQTT (cvm-device provision),
# both against the same kind of enrollment record; then device A renews without a token,
# and ops read both histories and the fleet report.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LOCAL="$ROOT/.local"
cd "$ROOT"

if [ ! -f "$LOCAL/env" ]; then
  tests/local-stack/up.sh
  trap 'tests/local-stack/down.sh >/dev/null' EXIT
fi
set -a; . "$LOCAL/env"; set +a
PY="$LOCAL/venv/bin/python"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

RUN=$(date +%s)
A="ZK-DEMO-A-$RUN"
B="ZK-DEMO-B-$RUN"
WORK="$LOCAL/demo/$RUN"
mkdir -p "$WORK/$A" "$WORK/$B"; chmod 700 "$WORK" "$WORK/$A" "$WORK/$B"

# Enrolls a serial and writes its one-time token to a 0600 file (the token is printed once;
# only its hash is stored).
enroll() { # serial, dir, extra args...
  local serial=$1 dir=$2; shift 2
  "$CVM_ADMIN" enroll --serial "$serial" --json "$@" > "$dir/.enroll.json"
  chmod 600 "$dir/.enroll.json"
  "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"], end="")' "$dir/.enroll.json" > "$dir/token"
  chmod 600 "$dir/token"; rm -f "$dir/.enroll.json"
}

# Checks a device's files and what AWS IoT holds for it.
check() { # dir, CA the certificate chains to, expected site attribute
  local dir=$1 ca=$2 site=$3
  openssl verify -CAfile "$ca" "$dir/certificate.pem"
  if ! cmp -s <(openssl x509 -in "$dir/certificate.pem" -pubkey -noout) <(openssl pkey -in "$dir/device.key" -pubout); then
    echo "FAIL: the certificate does not carry the device's key" >&2; exit 1
  fi
  echo "public key: matches the device key"
  "$PY" - "$dir/enrollment.json" "$CVM_DEFAULT_POLICY_NAME" "$site" <<'PY'
import json, os, sys
import boto3
meta = json.load(open(sys.argv[1]))
iot = boto3.client("iot", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
cert = iot.describe_certificate(certificateId=meta["certificateId"])["certificateDescription"]
thing = iot.describe_thing(thingName=meta["thingName"])
principals = iot.list_thing_principals(thingName=meta["thingName"])["principals"]
policies = [p["policyName"] for p in iot.list_attached_policies(target=cert["certificateArn"])["policies"]]
checks = {
    "certificate is ACTIVE": cert["status"] == "ACTIVE",
    "thing exists with its attributes": thing["attributes"] == {"site": sys.argv[3]},
    "certificate attached to the thing": principals == [cert["certificateArn"]],
    f"policy {sys.argv[2]} attached": policies == [sys.argv[2]],
}
for what, ok in checks.items():
    print(("ok    " if ok else "FAIL  ") + what)
if not all(checks.values()):
    sys.exit(1)
PY
}

step "ops: enroll $A and $B (one record each, the same kind for both doors)"
enroll "$A" "$WORK/$A" --attr site=demo-lab
enroll "$B" "$WORK/$B" --attr site=demo-plant
"$CVM_ADMIN" list --limit 5 | head -3

step "door 1, device $A: the HTTPS vend (key made on the device, CSR signed there, TLS verified)"
"$CVM_DEVICE" enroll --url "$CVM_API_URL" --serial "$A" --token-file "$WORK/$A/token" \
  --ca "$CVM_API_CA" --out "$WORK/$A" --key "file:$WORK/$A/device.key"
check "$WORK/$A" "$WORK/$A/ca.pem" demo-lab

step "door 2, device $B: fleet provisioning by claim (MQTT, mutual TLS with the claim certificate)"
"$CVM_DEVICE" provision --dir "$WORK/$B" --serial "$B" --token-file "$WORK/$B/token" \
  --key "file:$WORK/$B/device.key" --claim-cert "$CVM_CLAIM_CERT" --claim-key "$CVM_CLAIM_KEY" \
  --mqtt-endpoint "$CVM_MQTT_HOST:$CVM_MQTT_PORT" --mqtt-ca "$CVM_MQTT_CA" --template "$CVM_FLEET_TEMPLATE"
check "$WORK/$B" "$CVM_PCA_CA_CERT" demo-plant

step "one record, whichever door: B's token is spent, and another key is refused through the other door"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/other.key" \
  -subj "/CN=$B" -out "$WORK/other.csr" 2>/dev/null
status=$(curl -s -o "$WORK/answer.json" -w '%{http_code}' --cacert "$CVM_API_CA" \
  -H 'content-type: application/json' -X POST "$CVM_API_URL/v1/certificates" \
  --data @<("$PY" -c 'import json,sys; print(json.dumps({"serial": sys.argv[1], "token": open(sys.argv[2]).read(), "csr": open(sys.argv[3]).read()}))' \
    "$B" "$WORK/$B/token" "$WORK/other.csr"))
echo "vend for $B with its token and another key: HTTP $status $(cat "$WORK/answer.json")"
[ "$status" = 409 ] || { echo "FAIL: expected 409 already_issued" >&2; exit 1; }

step "re-running either door is safe"
"$CVM_DEVICE" enroll --url "$CVM_API_URL" --serial "$A" --token-file "$WORK/$A/token" \
  --ca "$CVM_API_CA" --out "$WORK/$A" --key "file:$WORK/$A/device.key"
"$CVM_DEVICE" provision --dir "$WORK/$B" --serial "$B" --token-file "$WORK/$B/token" \
  --key "file:$WORK/$B/device.key" --claim-cert "$CVM_CLAIM_CERT" --claim-key "$CVM_CLAIM_KEY" \
  --mqtt-endpoint "$CVM_MQTT_HOST:$CVM_MQTT_PORT" --mqtt-ca "$CVM_MQTT_CA" --template "$CVM_FLEET_TEMPLATE"

step "device $A renews without a token (signed by its current key, proven with the new one)"
OLD=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["certificateId"])' "$WORK/$A/enrollment.json")
"$CVM_DEVICE" renew --dir "$WORK/$A" --url "$CVM_API_URL" --ca "$CVM_API_CA" \
  --mqtt-endpoint "$CVM_MQTT_HOST:$CVM_MQTT_PORT" --mqtt-ca "$CVM_MQTT_CA"
NEW=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["certificateId"])' "$WORK/$A/enrollment.json")
"$PY" - "$OLD" "$NEW" <<'PY'
import os, sys
import boto3
iot = boto3.client("iot", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
old, new = (iot.describe_certificate(certificateId=c)["certificateDescription"]["status"] for c in sys.argv[1:3])
print(f"old certificate {sys.argv[1][:16]}...: {old}; new {sys.argv[2][:16]}...: {new}")
if (old, new) != ("REVOKED", "ACTIVE"):
    sys.exit("FAIL: expected the old one REVOKED and the new one ACTIVE")
PY

step "ops: what happened to each device, and the fleet"
"$CVM_ADMIN" history --serial "$A"
"$CVM_ADMIN" history --serial "$B"
"$CVM_ADMIN" report --expiring-days 400 | head -20

step "summary"
for d in "$A" "$B"; do
  "$PY" - "$WORK/$d/enrollment.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
policy = m.get("policyName") or "set by the provisioning template"
print(f"device {m['serial']} is thing {m['thingName']}, certificate {m['certificateId'][:16]}... (policy: {policy})")
PY
done
echo "files: $WORK"

#!/usr/bin/env bash
# Starts the local stack: moto's server (patched, see stack.py), an AWS Private CA in it, the
# vend service over HTTPS twice, in `iot` mode (Amazon's CA, emulated) and in `acm-pca` mode
# (the Private CA), and the fleet-provisioning part: Mosquitto with mutual TLS and the AWS IoT
# stand-in (fleet/fleet.py, README.md), all on 127.0.0.1, and writes .local/env. `down.sh`
# stops exactly these processes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LOCAL="$ROOT/.local"
PY="$LOCAL/venv/bin/python"
STACK="$ROOT/tests/local-stack/stack.py"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if alive "$LOCAL/moto.pid" && alive "$LOCAL/vend.pid" && alive "$LOCAL/vend-pca.pid" \
  && alive "$LOCAL/fleet.pid" && alive "$LOCAL/mosquitto.pid"; then
  echo "local stack already up (see .local/env)"; exit 0
fi
"$ROOT/tests/local-stack/down.sh" >/dev/null 2>&1 || true

"$ROOT/tests/local-stack/install.sh"
echo "building the service, cvm-admin, cvm-device, the certificate provider and the hook..."
CRATES=(-p vend-local -p cvm-admin -p cvm-device -p cert-provider)
# The pre-provisioning hook, once its crate exists; until then RegisterThing answers as AWS IoT
# does for a hook that cannot run (rejected, AccessDenied).
if [ -f "$ROOT/functions/provisioning-hook/Cargo.toml" ]; then CRATES+=(-p provisioning-hook); fi
(cd "$ROOT" && cargo build --quiet "${CRATES[@]}")

"$PY" "$STACK" pki "$LOCAL/pki"
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOTO_PORT=$(free_port)
API_PORT=$(free_port)
PCA_API_PORT=$(free_port)
MQTT_PORT=$(free_port)
MQTT_ALPN_PORT=$(free_port)

wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "up: $what did not come up; see .local/*.log" >&2; "$ROOT/tests/local-stack/down.sh" >&2; exit 1
}

nohup "$PY" "$STACK" serve --port "$MOTO_PORT" --pki "$LOCAL/pki" >"$LOCAL/moto.log" 2>&1 &
echo $! >"$LOCAL/moto.pid"
wait_for "moto" curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/data.json"

export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT" AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_EC2_METADATA_DISABLED=true
TABLE=cvm-devices
POLICY=cvm-device-default
"$PY" "$STACK" provision --endpoint "$AWS_ENDPOINT_URL" --table "$TABLE" --policy "$POLICY"
PCA_CA_CERT="$LOCAL/pki/pca-ca.pem"
PCA_ARN=$("$PY" "$STACK" provision-pca --endpoint "$AWS_ENDPOINT_URL" --ca-out "$PCA_CA_CERT")

CVM_TABLE_NAME=$TABLE CVM_DEFAULT_POLICY_NAME=$POLICY \
CVM_CA_CERTIFICATES_FILE="$LOCAL/pki/device-ca.pem" CVM_ROLE_ALIAS=cvm-device-role-alias \
CVM_LOCAL_LISTEN="127.0.0.1:$API_PORT" \
CVM_LOCAL_TLS_CERT="$LOCAL/pki/api-server.pem" CVM_LOCAL_TLS_KEY="$LOCAL/pki/api-server.key" \
  nohup "$TARGET/vend-local" >"$LOCAL/vend.log" 2>&1 &
echo $! >"$LOCAL/vend.pid"
wait_for "the vend service" curl -s --cacert "$LOCAL/pki/api-ca.pem" -o /dev/null "https://127.0.0.1:$API_PORT/v1/certificates"

# The same service in acm-pca mode: the Private CA signs, AWS IoT registers the certificate
# (RegisterCertificateWithoutCA); devices get the Private CA's certificate as their chain.
CVM_ISSUER=acm-pca CVM_PCA_ARN=$PCA_ARN \
CVM_TABLE_NAME=$TABLE CVM_DEFAULT_POLICY_NAME=$POLICY \
CVM_CA_CERTIFICATES_FILE="$PCA_CA_CERT" CVM_ROLE_ALIAS=cvm-device-role-alias \
CVM_LOCAL_LISTEN="127.0.0.1:$PCA_API_PORT" \
CVM_LOCAL_TLS_CERT="$LOCAL/pki/api-server.pem" CVM_LOCAL_TLS_KEY="$LOCAL/pki/api-server.key" \
  nohup "$TARGET/vend-local" >"$LOCAL/vend-pca.log" 2>&1 &
echo $! >"$LOCAL/vend-pca.pid"
wait_for "the vend service (acm-pca)" curl -s --cacert "$LOCAL/pki/api-ca.pem" -o /dev/null "https://127.0.0.1:$PCA_API_PORT/v1/certificates"

# Fleet provisioning by claim: the broker plugin (compiled here), the claim certificate and its
# policy in the emulator, the AWS IoT stand-in (the real provider and hook bootstraps run behind
# its Lambda Runtime API), then Mosquitto on a mutual-TLS listener.
FLEET="$ROOT/tests/local-stack/fleet/fleet.py"
FLEET_TEMPLATE=cvm-fleet
PLUGIN_SRC="$ROOT/tests/local-stack/fleet/plugin/cvm_iot_bridge.c"
PLUGIN="$LOCAL/mqtt/cvm_iot_bridge.so"
mkdir -p -m 700 "$LOCAL/mqtt"
if [ ! -f "$PLUGIN" ] || [ "$PLUGIN_SRC" -nt "$PLUGIN" ]; then
  gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o "$PLUGIN" "$PLUGIN_SRC" -lcrypto
fi
"$PY" "$FLEET" prepare --local "$LOCAL" --mqtt-port "$MQTT_PORT" --alpn-port "$MQTT_ALPN_PORT" \
  --plugin "$PLUGIN" --template-name "$FLEET_TEMPLATE" \
  --template-body "$ROOT/infra/fleet-provisioning/template.json" \
  --provider "$TARGET/cert-provider" --hook "$TARGET/provisioning-hook" --device-policy "$POLICY" \
  --env "cert-provider:CVM_PCA_ARN=$PCA_ARN" \
  --env "provisioning-hook:CVM_TABLE_NAME=$TABLE" --env "provisioning-hook:CVM_DEFAULT_POLICY_NAME=$POLICY" \
  --env "provisioning-hook:CVM_STAGE=local"
nohup "$PY" "$FLEET" serve --config "$LOCAL/mqtt/standin.json" >"$LOCAL/fleet.log" 2>&1 &
echo $! >"$LOCAL/fleet.pid"
wait_for "the fleet stand-in" "$PY" "$FLEET" wait --socket "$LOCAL/mqtt/standin.sock" --timeout 0.2
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
nohup "$MOSQUITTO" -c "$LOCAL/mqtt/mosquitto.conf" >"$LOCAL/mosquitto.log" 2>&1 &
echo $! >"$LOCAL/mosquitto.pid"
wait_for "mosquitto" "$PY" "$FLEET" wait --port "$MQTT_PORT" --timeout 0.2

cat >"$LOCAL/env" <<ENV
AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL
AWS_REGION=$AWS_REGION
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
AWS_EC2_METADATA_DISABLED=true
CVM_API_URL=https://127.0.0.1:$API_PORT
CVM_API_CA=$LOCAL/pki/api-ca.pem
CVM_DEVICE_CA=$LOCAL/pki/device-ca.pem
CVM_TABLE_NAME=$TABLE
CVM_DEFAULT_POLICY_NAME=$POLICY
CVM_ADMIN=$TARGET/cvm-admin
CVM_DEVICE=$TARGET/cvm-device
CVM_PCA_ARN=$PCA_ARN
CVM_PCA_CA_CERT=$PCA_CA_CERT
CVM_PCA_API_URL=https://127.0.0.1:$PCA_API_PORT
CVM_CERT_PROVIDER=$TARGET/cert-provider-local
CVM_MQTT_HOST=127.0.0.1
CVM_MQTT_PORT=$MQTT_PORT
CVM_MQTT_ALPN_PORT=$MQTT_ALPN_PORT
CVM_MQTT_CA=$LOCAL/pki/mqtt-ca.pem
CVM_CLAIM_CERT=$LOCAL/pki/claim.pem
CVM_CLAIM_KEY=$LOCAL/pki/claim.key
CVM_CLAIM_POLICY=cvm-fleet-claim
CVM_FLEET_TEMPLATE=$FLEET_TEMPLATE
CVM_PROVISIONING_HOOK=$TARGET/provisioning-hook
ENV
echo "local stack up: API https://127.0.0.1:$API_PORT (iot), https://127.0.0.1:$PCA_API_PORT (acm-pca), MQTT mTLS 127.0.0.1:$MQTT_PORT (ALPN $MQTT_ALPN_PORT), AWS at $AWS_ENDPOINT_URL (settings in .local/env)"

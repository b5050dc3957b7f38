#!/usr/bin/env bash
# Installs what the local stack and the tests need, idempotently, into the project's own
# .local/ (a Python virtualenv) and, for system packages, through apt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LOCAL="$ROOT/.local"
VENV="$LOCAL/venv"
mkdir -p "$LOCAL"

need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
# The local MQTT broker, its command-line clients, and what its plugin
# (tests/local-stack/fleet/plugin) is built with.
for pkg in mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev libssl-dev gcc; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "install: missing ${need_apt[*]} (install them, or run as root)" >&2; exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
REQ="$ROOT/tests/local-stack/requirements.txt"
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  echo "$want" > "$STAMP"
fi

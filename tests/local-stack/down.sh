#!/usr/bin/env bash
# Stops what up.sh started (by its pid files) and nothing else.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LOCAL="$ROOT/.local"
# The broker first (its plugin talks to the stand-in), moto last (everything else calls it).
for name in mosquitto fleet vend-pca vend moto; do
  pidfile="$LOCAL/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
done
rm -f "$LOCAL/env" "$LOCAL/mqtt/standin.sock"

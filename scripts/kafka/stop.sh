#!/usr/bin/env bash
# Stops the broker that start.sh started (by its pid file); keeps its data unless --wipe.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${KAFKA_DIR:-$here/../../.kafka}
if [ -f "$dir/broker.pid" ]; then
  pid=$(cat "$dir/broker.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/broker.pid"
  echo "kafka: stopped"
fi
if [ "${1:-}" = "--wipe" ]; then rm -rf "$dir"; fi

#!/usr/bin/env bash
# Soak run of the merchant's verification path: release key-directory and merchant, a real
# redis-server, and `verify_soak` minting short-lived mandates and presenting them with
# consume=true for the whole run. Every 15 s it samples the merchant's resident memory and
# Redis's key count and memory; after the load stops it keeps sampling until the replay set's
# entries (which live until exp + leeway) have expired, to show the key count falls back.
#
# Needs: redis-server, redis-cli, curl (apt-get install -y redis-server curl).
# Usage: bench/soak.sh [duration_secs (300)] [concurrency (32)] [mandate_ttl_secs (60)]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-300}
CONCURRENCY=${2:-32}
TTL=${3:-60}
LEEWAY=30

for tool in redis-server redis-cli curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y redis-server curl" >&2; exit 1; }
done

cargo build --release -q -p key-directory -p merchant -p ap2-cli --bins --example verify_soak
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 200); do curl -fs "$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "$1 not ready" >&2; exit 1; }

REDIS_PORT=$(free_port); KD_PORT=$(free_port); MERCHANT_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null &
PIDS+=($!)
RUST_LOG=warn "$BIN/key-directory" --listen "127.0.0.1:$KD_PORT" --db "$WORK/keys.db" \
  --issuer-token "https://wallet.example=bench-token" 2>"$WORK/kd.log" &
PIDS+=($!)
wait_ready "http://127.0.0.1:$KD_PORT"
RUST_LOG=warn "$BIN/merchant" --listen "127.0.0.1:$MERCHANT_PORT" --merchant-id acme-corp \
  --data-dir "$WORK/merchant" --key-directory-url "http://127.0.0.1:$KD_PORT" \
  --redis-url "redis://127.0.0.1:$REDIS_PORT" 2>"$WORK/merchant.log" &
MERCHANT_PID=$!
PIDS+=($MERCHANT_PID)
wait_ready "http://127.0.0.1:$MERCHANT_PORT"

"$BIN/ap2" keygen --out "$WORK/user.pem" > "$WORK/user.jwk"
curl -fs -X POST "http://127.0.0.1:$KD_PORT/v1/keys" -H 'Authorization: Bearer bench-token' \
  -H 'Content-Type: application/json' -d "{\"subject\":\"bench-user\",\"jwk\":$(cat "$WORK/user.jwk")}" >/dev/null
echo '{"merchant_id":"acme-corp","currency":"USD","total":8999,"line_items":[{"id":"shoe-001","title":"Trail Runner","quantity":1,"unit_price":8999}]}' > "$WORK/cart.json"

sample() {  # one line: seconds since start, merchant RSS, Redis keys and memory
  local rss keys mem
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$MERCHANT_PID/status")
  keys=$(redis-cli -p "$REDIS_PORT" dbsize)
  mem=$(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
  echo "SAMPLE t=$(( $(date +%s) - START )) merchant_rss_kib=$rss redis_keys=$keys redis_used_memory_bytes=$mem"
}

echo "== soak: POST /v1/mandates/verify consume=true, ${DURATION}s, concurrency $CONCURRENCY, mandates live ${TTL}s"
START=$(date +%s)
sample
"$BIN/examples/verify_soak" "http://127.0.0.1:$MERCHANT_PORT" "$WORK/user.pem" https://wallet.example \
  bench-user agent-7 "$WORK/cart.json" "$TTL" "$DURATION" "$CONCURRENCY" > "$WORK/soak.txt" &
LOAD_PID=$!
while kill -0 "$LOAD_PID" 2>/dev/null; do
  sleep 15
  sample
done
wait "$LOAD_PID"
cat "$WORK/soak.txt"
echo "== after the load: waiting for the replay set to expire (exp + ${LEEWAY}s leeway)"
for _ in $(seq 1 $(( (TTL + LEEWAY + 60) / 15 ))); do
  sleep 15
  line=$(sample)
  echo "$line"
  case "$line" in *" redis_keys=0 "*) break ;; esac
done

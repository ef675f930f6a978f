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

source bench/common.sh
need redis-server redis-cli curl

cargo build --release -q -p key-directory -p merchant -p ap2-cli --bins --example verify_soak
start_redis
start_key_directory
start_merchant
register_user_key

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

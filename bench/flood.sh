#!/usr/bin/env bash
# Load run of SPEC §9's key-fetch limit, on this machine, all on loopback: release builds of
# key-directory and merchant plus a real redis-server, a user key registered at the directory.
# Alone: wrk drives legitimate POST /v1/mandates/verify (consume=false, the key cached) at
# concurrency C for D seconds. Flooded: the same, while a second wrk of equal concurrency sends
# tokens whose kid nobody registered, each a different one (an uncached kid per request).
# The two alternate ROUNDS times; the medians and their ratio are printed, with the directory
# fetches the flood caused (the bound: burst 100 + 50/s x D) and openssl's verify/s measured in
# the same invocation.
#
# Needs: redis-server, wrk, openssl, curl, python3 (apt-get install -y redis-server wrk openssl curl).
# Usage: bench/flood.sh [duration_secs] [connections]; ROUNDS=3 bench/flood.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15}
CONNECTIONS=${2:-32}
ROUNDS=${ROUNDS:-3}

source bench/common.sh
need redis-server wrk openssl curl

cargo build --release -q -p key-directory -p merchant -p ap2-cli --bins
start_redis
start_key_directory
start_merchant
register_user_key

# Legitimate mandates (the verify does not spend them, so they are presented again and again).
"$BIN/ap2" mint --key "$WORK/user.pem" --iss https://wallet.example --sub bench-user \
  --agent agent-7 --cart "$WORK/cart.json" --ttl 300 --count 20000 > "$WORK/tokens.txt"
# The flood: the same mandates with a made-up kid each (never registered, so never cached).
python3 - "$WORK/tokens.txt" 100000 > "$WORK/flood.txt" <<'PY'
import base64, json, os, sys
tokens = open(sys.argv[1]).read().split()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
for i in range(int(sys.argv[2])):
    header, payload, sig = tokens[i % len(tokens)].split(".")
    h = json.loads(base64.urlsafe_b64decode(header + "=="))
    h["kid"] = b64(os.urandom(32))
    print(f"{b64(json.dumps(h, separators=(',', ':')).encode())}.{payload}.{sig}")
PY
# The merchant's key cache is filled before the clock runs.
curl -fs -o /dev/null -X POST "http://127.0.0.1:$MERCHANT_PORT/v1/mandates/verify" -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $BACKEND_TOKEN" \
  -d "{\"mandate\":\"$(head -1 "$WORK/tokens.txt")\",\"agent_id\":\"agent-7\",\"cart\":$CART,\"consume\":false}"

metric() {
  curl -fs "http://127.0.0.1:$MERCHANT_PORT/metrics" \
    | awk -v name="$1" 'index($0, name) == 1 { s += $NF } END { printf "%d\n", s }'
}
rps() { python3 -c "import sys; print(int(sys.argv[1]) / (int(sys.argv[2]) / 1e6))" "$1" "$2"; }

echo "== baseline: openssl speed -multi 2 -seconds 3 ecdsap256"
OPENSSL_VERIFY=$(openssl speed -multi 2 -seconds 3 ecdsap256 2>/dev/null | awk '/nistp256/ {l=$0} END {print l}' | awk '{print $NF}')
echo "openssl verify/s (2 processes): $OPENSSL_VERIFY"

legit() {  # runs the legitimate load; sets LEGIT_RPS, LEGIT_NON2XX
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s bench/verify.lua \
    "http://127.0.0.1:$MERCHANT_PORT" -- "$WORK/tokens.txt" 1 "$CART" false > "$WORK/legit.txt"
  eval "$(grep '^RESULT' "$WORK/legit.txt" | sed 's/^RESULT //')"
  LEGIT_RPS=$(rps "$requests" "$duration_us"); LEGIT_NON2XX=$non2xx; LEGIT_P99=$p99_us
}

ALONE=(); FLOODED=()
for round in $(seq 1 "$ROUNDS"); do
  legit
  echo "round $round alone:   legitimate $(printf %.0f "$LEGIT_RPS") req/s, non-2xx $LEGIT_NON2XX, p99 $(( LEGIT_P99 / 1000 )) ms"
  ALONE+=("$LEGIT_RPS")
  fetches_before=$(metric ap2_key_directory_fetches_total)
  throttled_before=$(metric ap2_key_fetches_throttled_total)
  wrk -t1 -c"$CONNECTIONS" -d"$(( DURATION + 2 ))s" -s bench/verify.lua \
    "http://127.0.0.1:$MERCHANT_PORT" -- "$WORK/flood.txt" 1 "$CART" false > "$WORK/flood-wrk.txt" &
  FLOOD_PID=$!
  sleep 1
  legit
  wait "$FLOOD_PID"
  eval "$(grep '^RESULT' "$WORK/flood-wrk.txt" | sed 's/^RESULT //')"
  flood_rps=$(rps "$requests" "$duration_us")
  fetches=$(( $(metric ap2_key_directory_fetches_total) - fetches_before ))
  throttled=$(( $(metric ap2_key_fetches_throttled_total) - throttled_before ))
  echo "round $round flooded: legitimate $(printf %.0f "$LEGIT_RPS") req/s, non-2xx $LEGIT_NON2XX, p99 $(( LEGIT_P99 / 1000 )) ms;" \
    "flood $(printf %.0f "$flood_rps") req/s over $(( DURATION + 2 )) s, directory fetches $fetches" \
    "(bound $(( 100 + 50 * (DURATION + 2) ))), throttled $throttled"
  FLOODED+=("$LEGIT_RPS")
done
python3 - "$OPENSSL_VERIFY" "${ALONE[*]}" "${FLOODED[*]}" <<'PY'
import statistics, sys
ossl = float(sys.argv[1])
alone = [float(x) for x in sys.argv[2].split()]
flooded = [float(x) for x in sys.argv[3].split()]
a, f = statistics.median(alone), statistics.median(flooded)
print(f"median legitimate verify alone {a:.0f} req/s ({a / ossl:.3f} x openssl verify/s)")
print(f"median legitimate verify during the flood {f:.0f} req/s ({f / ossl:.3f} x openssl verify/s)")
print(f"flooded / alone = {f / a:.3f}")
PY

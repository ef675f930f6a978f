#!/usr/bin/env bash
# Load run of the merchant's verification path, on this machine, all on loopback:
# release builds of key-directory, wallet and merchant plus a real redis-server; a user key
# registered at the directory; enough distinct mandates minted just before the run.
# Baseline: `openssl speed -multi 2 ecdsap256`, in the same invocation.
# Scenario 0: wrk drives POST /v1/mandates/verify at concurrency 64 for 15 s against the floor,
# merchant/examples/bare_verify.rs (jsonwebtoken decode + one SET NX PX, nothing else).
# Scenario 1: the same against the merchant, with consume=true, then consume=false, then
# scenario 1b: bound mandates (cnf.jkt) with the agent's DPoP proof, consume=true: two ECDSA
# checks per request (SPEC §8), the proofs made just before the run.
# Prints req/s, the ratio to openssl's verify/s (and the merchant's to the floor), p50/p99
# latency, errors, the CPU of the server, the load generator and Redis, and the key directory
# fetches during the run.
#
# Needs: redis-server, redis-cli, wrk, openssl, curl
#        (apt-get install -y redis-server wrk openssl curl).
# Usage: bench/load.sh [duration_secs] [connections]
#        SCENARIOS=all bench/load.sh ... also runs scenario 2 (checkout completion, unbound),
#                                      2b (bound completion: sessions opened and completed
#                                      with proofs) and scenario 3 (wallet minting, bound; the
#                                      agent's proofs made before the run)
#        SCENARIOS=complete (or wallet) bench/load.sh ... runs only scenarios 2 and 2b (or 3)
#        MERCHANT_ARGS="--flag value" bench/load.sh ... passes more flags to the merchant
#        WALLET_ARGS="--flag value" bench/load.sh ...   and to the wallet
#        WALLET_CONCURRENCY=32 bench/load.sh ...        users approving at once in scenario 3 (16)
#        AGENT_KEYS=16 bench/load.sh ...               agents opening the sessions of 2b (8)
#        OPEN_SECS=45 bench/load.sh ...                how long 2b opens sessions (2 x duration; at most
#                                      50, its proofs are made first and live 60 s):
#                                      a run that uses them all up measures 409s after that,
#                                      and its report says NOT A MEASUREMENT
#        ROUNDS=3 bench/load.sh ...    alternates scenarios 0 and 1 three times, prints medians
#        PROFILE=1 bench/load.sh ...   also samples each server with `perf record` (cpu-clock)
#                                      (PROFILE_DIR=dir keeps each full profile there)
#                                      and prints the top functions (apt-get install -y linux-perf)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15}
CONNECTIONS=${2:-64}
THREADS=2

source bench/common.sh
need redis-server redis-cli wrk openssl curl

cargo build --release -q -p key-directory -p wallet -p merchant -p ap2-cli --bins --example wallet_load --example bench_proofs
cargo build --release -q -p merchant --example bare_verify
start_redis
start_key_directory
WALLET_PORT=$(free_port)
RUST_LOG=warn "$BIN/wallet" --listen "127.0.0.1:$WALLET_PORT" --issuer https://wallet.example \
  --data-dir "$WORK/wallet" --key-directory-url "http://127.0.0.1:$KD_PORT" \
  --key-directory-token bench-token --admin-token bench-admin --agent-token agent-7=bench-agent \
  ${WALLET_ARGS:-} 2>"$WORK/wallet.log" &
WALLET_PID=$!
PIDS+=("$WALLET_PID")
start_merchant
wait_ready "http://127.0.0.1:$WALLET_PORT"
BARE_PORT=$(free_port)

# A user key registered at the directory, and the mandates, minted just before the run.
register_user_key
COUNT=$(( DURATION * 25000 ))
# Minted again at the start of every round: they live 300 s (the merchant's maximum), and a
# round with the bound scenario takes about 100 s.
make_tokens() {
  "$BIN/ap2" mint --key "$WORK/user.pem" --iss https://wallet.example --sub bench-user \
    --agent agent-7 --cart "$WORK/cart.json" --ttl 300 --count "$COUNT" > "$WORK/tokens.txt"
}
make_tokens
# The agent's key, for the bound scenarios.
JKT=$("$BIN/ap2" agent-keygen --out "$WORK/agent.pem" | python3 -c 'import json, sys; print(json.load(sys.stdin)["jkt"])')
# Bound mandates and their proofs for scenario 1b: "<mandate> <proof>" per line. Made right
# before each run, since a proof is accepted for 60 s after its iat.
make_bound_tokens() {
  "$BIN/ap2" mint --key "$WORK/user.pem" --iss https://wallet.example --sub bench-user \
    --agent agent-7 --cart "$WORK/cart.json" --ttl 300 --count "$(( DURATION * 14000 ))" \
    --cnf-jkt="$JKT" > "$WORK/bound_mandates.txt"
  "$BIN/examples/bench_proofs" "$WORK/agent.pem" POST https://backend.example/pay - \
    "$WORK/bound_mandates.txt" > "$WORK/bound_proofs.txt"
  paste -d' ' "$WORK/bound_mandates.txt" "$WORK/bound_proofs.txt" > "$WORK/bound.txt"
}

show_profile() {
  local name
  name=$(ps -o comm= -p "$SERVER_PID" 2>/dev/null || echo server)
  echo "== $name profile (cpu-clock samples, self time)"
  perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' > "$WORK/profile.txt" || true
  if [ -n "${PROFILE_DIR:-}" ]; then
    mkdir -p "$PROFILE_DIR"
    cp "$WORK/profile.txt" "$PROFILE_DIR/$(date +%H%M%S)-$SERVER_PID.txt"
  fi
  { cut -c1-160 "$WORK/profile.txt" | head -${PROFILE_LINES:-25}; } || true
  echo "== $name profile by component"
  python3 - "$WORK/profile.txt" <<'PY'
import re, sys, collections
groups = collections.Counter()
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if not m:
        continue
    pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
    if kind == "k":
        key = "kernel (network, scheduling)"
    elif "nistz256" in sym or "beeu_mod_inverse" in sym or sym.startswith("aws_lc") or "ecdsa" in sym.lower():
        key = "aws-lc (ECDSA, SHA-256)"
    elif sym.startswith(("mi_", "_mi_", "malloc", "_int_", "cfree", "free")):
        key = "allocator"
    elif sym.startswith(("sqlite3", "pcache1", "wal", "btree", "vdbe")):
        key = "SQLite"
    elif dso.startswith("libc") or dso.startswith("[vdso]"):
        key = "libc (memcpy, memcmp, clock)"
    else:
        name = sym.lstrip("<&*( ").replace("mut ", "")
        key = name.split("::")[0] if "::" in name else "other"
    groups[key] += pct
for key, pct in groups.most_common(14):
    print(f"{pct:6.2f}%  {key}")
PY
}

# The CPU ticks of every process named postgres (0 when there is none), and of those that
# have exited (the postmaster's reaped children: autovacuum workers that start and end inside
# a run, and the backends of this script's own psql calls, a few milliseconds each).
postgres_ticks() {
  local postmaster reaped=0
  postmaster=$(pgrep -o -x postgres || true)
  [ -n "$postmaster" ] && reaped=$(awk '{print $16 + $17}' "/proc/$postmaster/stat")
  echo $(( $(ticks_of $(pgrep -x postgres || true)) + reaped ))
}
# Bytes a process has had written to disk (its /proc/PID/io write_bytes).
written() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }
# PostgreSQL's WAL so far, "bytes full_page_images" (pg_stat_wal), for MERCHANT_DATABASE_URL.
pg_wal() { psql "$MERCHANT_DATABASE_URL" -Atc "SELECT wal_bytes || ' ' || wal_fpi FROM pg_stat_wal"; }
# A counter of the merchant's /metrics, summed over the label sets that contain $2.
metric() {
  curl -fs "http://127.0.0.1:$MERCHANT_PORT/metrics" \
    | awk -v name="$1" -v filter="${2:-}" 'index($0, name) == 1 && index($0, filter) { s += $NF } END { printf "%d\n", s }'
}

# batches FILE: the store's group commits since the scrape in FILE, by batch: how many, their
# mean size and mean time (store_batch_size and store_batch_seconds, SPEC §11).
batches() {
  curl -fs "http://127.0.0.1:$MERCHANT_PORT/metrics" > "$WORK/metrics.after" || return 0
  python3 - "$1" "$WORK/metrics.after" <<'PY'
import re, sys
def read(path):
    out = {}
    for line in open(path):
        m = re.match(r'(store_batch_(?:size|seconds)_(?:sum|count))\{batch="([^"]+)"\} (\S+)', line)
        if m:
            out[(m.group(1), m.group(2))] = float(m.group(3))
    return out
before, after = read(sys.argv[1]), read(sys.argv[2])
d = lambda k: after.get(k, 0.0) - before.get(k, 0.0)
for name in sorted({b for (_, b) in after}):
    n = d(("store_batch_size_count", name))
    if n:
        print(f"batches {name}: {n:.0f}, mean size {d(('store_batch_size_sum', name)) / n:.1f}, "
              f"mean time {d(('store_batch_seconds_sum', name)) / d(('store_batch_seconds_count', name)) * 1000:.2f} ms")
PY
}

echo "== baseline: openssl speed -multi 2 -seconds 3 ecdsap256"
OPENSSL_LINE=$(openssl speed -multi 2 -seconds 3 ecdsap256 2>/dev/null | awk '/nistp256/ {l=$0} END {print l}')
OPENSSL_VERIFY=$(echo "$OPENSSL_LINE" | awk '{print $NF}')
OPENSSL_SIGN=$(echo "$OPENSSL_LINE" | awk '{print $(NF-1)}')
echo "openssl verify/s (2 processes): $OPENSSL_VERIFY, sign/s: $OPENSSL_SIGN"

report() {  # label, then the RESULT fields, the CPU ticks before and after
python3 - "$@" "$OPENSSL_VERIFY" "$TICKS" <<'PY'
import sys
label, req, dur_us, non2xx, p50, p99, before, after, ossl, ticks = sys.argv[1:]
rps = int(req) / (int(dur_us) / 1e6)
cpu = (int(after) - int(before)) / int(ticks) / (int(dur_us) / 1e6)
print(f"{label}: {rps:.0f} req/s, non-2xx {non2xx}, p50 {int(p50)/1000:.2f} ms, p99 {int(p99)/1000:.2f} ms, server CPU {cpu:.2f} cores")
print(f"ratio {label} req/s / openssl verify/s = {rps / float(ossl):.3f}")
if int(non2xx) > 0:
    # A refused request is cheaper than a served one: the rate is not this path's.
    print(f"NOT A MEASUREMENT: {non2xx} of {req} answers were not 2xx (see the NON2XX line; in "
          "2b, sessions used up: raise OPEN_SECS)")
PY
}
# Scenario 0 and 1; $1 is consume (true or false), $2 the label, $3 the port, $4 the tokens.
run_verify() {
  local consume=$1 label=$2 port=$3 tokens=${4:-$WORK/tokens.txt}
  echo "== $label: POST /v1/mandates/verify, consume=$consume, c=$CONNECTIONS, ${DURATION}s ($(wc -l < "$tokens") distinct mandates)"
  local served_before fetches_before redis_before redis_after wrk_cpu
  served_before=$(metric http_requests_total 'route="/v1/mandates/verify"')
  fetches_before=$(metric ap2_key_directory_fetches_total)
  redis_before=$(cpu_ticks "$REDIS_PID")
  before=$(cpu_ticks "$SERVER_PID")
  if [ "${PROFILE:-0}" = 1 ]; then
    perf record -e cpu-clock -F 1999 -p "$SERVER_PID" -o "$WORK/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  wrk_cpu=$( { TIMEFORMAT='%U %S'; time wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -s bench/verify.lua "http://127.0.0.1:$port" \
    -- "$tokens" "$THREADS" "$CART" "$consume" > "$WORK/wrk.txt"; } 2>&1 )
  after=$(cpu_ticks "$SERVER_PID")
  redis_after=$(cpu_ticks "$REDIS_PID")
  if [ "${PROFILE:-0}" = 1 ]; then
    wait "$PERF_PID" || true
    show_profile
  fi
  RESULT=$(grep '^RESULT' "$WORK/wrk.txt")
  echo "$RESULT"
  eval "$(echo "$RESULT" | sed 's/^RESULT //')"
  report "$label" "$requests" "$duration_us" "$non2xx" "$p50_us" "$p99_us" "$before" "$after"
  python3 -c "import sys; u, s, r0, r1, t, d = sys.argv[1:]; d = int(d) / 1e6; print(f'load generator (wrk) CPU {(float(u) + float(s)) / d:.2f} cores, redis-server CPU {(int(r1) - int(r0)) / int(t) / d:.2f} cores')" \
    $wrk_cpu "$redis_before" "$redis_after" "$TICKS" "$duration_us"
  LAST_RPS=$(python3 -c "import sys; print(int(sys.argv[1]) / (int(sys.argv[2]) / 1e6))" "$requests" "$duration_us")
  [ "$port" = "$MERCHANT_PORT" ] || return 0
  echo "requests the merchant counted on this route: $(( $(metric http_requests_total 'route="/v1/mandates/verify"') - served_before )) (wrk: $requests)"
  echo "key directory fetches during the run (a key-cache hit does no I/O): $(( $(metric ap2_key_directory_fetches_total) - fetches_before ))"
}

# Scenario 0: the floor (merchant/examples/bare_verify.rs: jsonwebtoken decode + one SET NX PX).
"$BIN/examples/bare_verify" "127.0.0.1:$BARE_PORT" "redis://127.0.0.1:$REDIS_PORT" "$WORK/user.jwk" acme-corp &
BARE_PID=$!
PIDS+=($BARE_PID)
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$BARE_PORT/" && break; sleep 0.05; done
# The merchant's key cache is filled before the clock runs.
curl -fs -o /dev/null -X POST "http://127.0.0.1:$MERCHANT_PORT/v1/mandates/verify" -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $BACKEND_TOKEN" \
  -d "{\"mandate\":\"$(head -1 "$WORK/tokens.txt")\",\"agent_id\":\"agent-7\",\"cart\":$CART,\"consume\":false}"

# ROUNDS alternations of scenario 0 and scenario 1 (the merchant, consume=true then false);
# the replay set is emptied before each consuming run, so every mandate is fresh to it.
BARE_ALL=(); TRUE_ALL=(); FALSE_ALL=(); BOUND_ALL=()
run_bare() {
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  SERVER_PID=$BARE_PID
  run_verify true "bare handler" "$BARE_PORT"
  BARE_ALL+=("$LAST_RPS")
}
run_merchant() {
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  SERVER_PID=$MERCHANT_PID
  run_verify true "merchant verify consume=true" "$MERCHANT_PORT"
  TRUE_ALL+=("$LAST_RPS")
  run_verify false "merchant verify consume=false" "$MERCHANT_PORT"
  FALSE_ALL+=("$LAST_RPS")
  make_bound_tokens
  run_verify true "merchant bound verify consume=true" "$MERCHANT_PORT" "$WORK/bound.txt"
  BOUND_ALL+=("$LAST_RPS")
}
# Odd rounds run the floor first, even rounds the merchant first, so neither always gets the
# quieter minute.
{ [ "${SCENARIOS:-1}" = complete ] || [ "${SCENARIOS:-1}" = wallet ]; } && ROUNDS=0
for round in $(seq 1 "${ROUNDS:-1}"); do
  [ "${ROUNDS:-1}" = 1 ] || echo "==== round $round of $ROUNDS"
  [ "$round" = 1 ] || make_tokens
  if [ $(( round % 2 )) = 1 ]; then run_bare; run_merchant; else run_merchant; run_bare; fi
  python3 -c "import sys; print(f'ratio merchant (consume=true) / bare handler = {float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "${TRUE_ALL[-1]}" "${BARE_ALL[-1]}"
  python3 -c "import sys; print(f'ratio bound verify / unbound verify (both consume=true) = {float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "${BOUND_ALL[-1]}" "${TRUE_ALL[-1]}"
done
if [ "${ROUNDS:-1}" -gt 1 ]; then
  echo "== medians over $ROUNDS rounds (ratios to openssl verify/s $OPENSSL_VERIFY)"
  python3 - "$OPENSSL_VERIFY" "${BARE_ALL[*]}" "${TRUE_ALL[*]}" "${FALSE_ALL[*]}" "${BOUND_ALL[*]}" <<'PY'
import statistics, sys
ossl = float(sys.argv[1])
bare, true, false, bound = ([float(x) for x in a.split()] for a in sys.argv[2:6])
for label, runs in (("bare handler", bare), ("merchant consume=true", true), ("merchant consume=false", false), ("merchant bound consume=true", bound)):
    print(f"{label}: median {statistics.median(runs):.0f} req/s, ratio {statistics.median(runs) / ossl:.3f} "
          f"(runs: {', '.join(f'{r / ossl:.3f}' for r in runs)})")
per_round = [t / b for t, b in zip(true, bare)]
print(f"merchant consume=true / bare handler, per round: {', '.join(f'{r:.3f}' for r in per_round)}; "
      f"median {statistics.median(per_round):.3f}")
per_round = [b / t for b, t in zip(bound, true)]
print(f"bound / unbound verify, per round: {', '.join(f'{r:.3f}' for r in per_round)}; "
      f"median {statistics.median(per_round):.3f}")
PY
fi

if [ "${SCENARIOS:-1}" = all ] || [ "${SCENARIOS:-1}" = complete ]; then
  echo "== scenario 2: POST /v1/checkout-sessions/{id}/complete, c=$CONNECTIONS, ${DURATION}s"
  # One fresh session per request, created first (sessions are durable: each is a commit),
  # at most 12 000 for each second of the run: more than the fastest completion measured, and
  # a table grown past what the run uses would measure the table.
  SESSIONS_PER_THREAD=$(( DURATION * 12000 / THREADS )) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$(( DURATION * 2 ))s" -s bench/sessions.lua \
    "http://127.0.0.1:$MERCHANT_PORT" -- "$WORK/sessions.txt" >/dev/null
  cat "$WORK"/sessions.txt.* > "$WORK/sessions.txt"
  echo "sessions created: $(wc -l < "$WORK/sessions.txt")"
  "$BIN/ap2" mint --key "$WORK/user.pem" --iss https://wallet.example --sub bench-user \
    --agent agent-7 --cart "$WORK/cart.json" --ttl 300 --count "$(wc -l < "$WORK/sessions.txt")" > "$WORK/tokens2.txt"
  before=$(cpu_ticks "$MERCHANT_PID")
  pg_before=$(postgres_ticks)
  written_before=$(written "$MERCHANT_PID")
  [ -n "${MERCHANT_DATABASE_URL:-}" ] && wal_before=$(pg_wal)
  if [ "${PROFILE:-0}" = 1 ]; then
    perf record -e cpu-clock -F 1999 -p "$MERCHANT_PID" -o "$WORK/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  redis_before=$(cpu_ticks "$REDIS_PID")
  curl -fs "http://127.0.0.1:$MERCHANT_PORT/metrics" > "$WORK/metrics.before" || true
  wrk_cpu=$( { TIMEFORMAT='%U %S'; time wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -s bench/complete.lua "http://127.0.0.1:$MERCHANT_PORT" \
    -- "$WORK/tokens2.txt" "$WORK/sessions.txt" "$THREADS" > "$WORK/wrk2.txt"; } 2>&1 )
  after=$(cpu_ticks "$MERCHANT_PID")
  pg_after=$(postgres_ticks)
  redis_after=$(cpu_ticks "$REDIS_PID")
  written_after=$(written "$MERCHANT_PID")
  batches "$WORK/metrics.before"
  if [ -n "${MERCHANT_DATABASE_URL:-}" ]; then
    wal_after=$(pg_wal)
    awk -v b="$pg_before" -v a="$pg_after" -v hz="$TICKS" -v d="$DURATION" \
      'BEGIN {printf "PostgreSQL CPU (all its processes) %.2f cores\n", (a - b) / hz / d}'
  fi
  if [ "${PROFILE:-0}" = 1 ]; then
    wait "$PERF_PID" || true
    SERVER_PID=$MERCHANT_PID show_profile
  fi
  grep "^NON2XX" "$WORK/wrk2.txt" || true
  RESULT=$(grep "^RESULT" "$WORK/wrk2.txt")
  echo "$RESULT"
  eval "$(echo "$RESULT" | sed 's/^RESULT //')"
  report "merchant complete" "$requests" "$duration_us" "$non2xx" "$p50_us" "$p99_us" "$before" "$after"
  python3 -c "import sys; u, s, r0, r1, t, d = sys.argv[1:]; d = int(d) / 1e6; print(f'load generator (wrk) CPU {(float(u) + float(s)) / d:.2f} cores, redis-server CPU {(int(r1) - int(r0)) / int(t) / d:.2f} cores')" \
    $wrk_cpu "$redis_before" "$redis_after" "$TICKS" "$duration_us"
  if [ -n "${MERCHANT_DATABASE_URL:-}" ]; then
    read -r wal_b0 fpi0 <<<"$wal_before"; read -r wal_b1 fpi1 <<<"$wal_after"
    awk -v b=$(( wal_b1 - wal_b0 )) -v f=$(( fpi1 - fpi0 )) -v n="$requests" \
      'BEGIN {printf "PostgreSQL WAL per completion: %.0f bytes, %.2f full-page images\n", b / n, f / n}'
  else
    awk -v b=$(( written_after - written_before )) -v n="$requests" \
      'BEGIN {printf "merchant disk writes per completion: %.0f bytes\n", b / n}'
  fi

  echo "== scenario 2b: bound completion (sessions opened with proofs, DPoP mandates), c=$CONNECTIONS, ${DURATION}s"
  # The sessions are opened by AGENT_KEYS agents (8) at once, each with a key of its own and
  # CONNECTIONS / AGENT_KEYS connections: opening a session counts its agent's open sessions
  # (SPEC §9) under a lock on the agent's key, so one key for all would open them one at a time,
  # each counting all the sessions before it. Each agent's mandates are bound to its key and
  # presented with its proofs; the files are joined in the same order.
  AGENT_KEYS=${AGENT_KEYS:-8}
  rm -f "$WORK"/bound_sessions* "$WORK"/tokens3* "$WORK"/complete_proofs*
  opening=()
  for k in $(seq 1 "$AGENT_KEYS"); do
    "$BIN/ap2" agent-keygen --out "$WORK/agent-$k.pem" \
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["jkt"])' > "$WORK/agent-$k.jkt"
    "$BIN/examples/bench_proofs" "$WORK/agent-$k.pem" POST "http://127.0.0.1:$MERCHANT_PORT/v1/checkout-sessions" \
      "$(( ${OPEN_SECS:-$(( DURATION * 2 ))} * 2000 ))" > "$WORK/session_proofs-$k.txt"
  done
  for k in $(seq 1 "$AGENT_KEYS"); do
    wrk -t1 -c"$(( CONNECTIONS / AGENT_KEYS > 0 ? CONNECTIONS / AGENT_KEYS : 1 ))" -d"${OPEN_SECS:-$(( DURATION * 2 ))}s" \
      -s bench/sessions.lua "http://127.0.0.1:$MERCHANT_PORT" -- "$WORK/bound_sessions-$k.txt" \
      "$WORK/session_proofs-$k.txt" 1 >/dev/null &
    opening+=($!)
  done
  wait "${opening[@]}"
  for k in $(seq 1 "$AGENT_KEYS"); do
    cat "$WORK"/bound_sessions-"$k".txt.* > "$WORK/bound_sessions-$k.txt"
    "$BIN/ap2" mint --key "$WORK/user.pem" --iss https://wallet.example --sub bench-user \
      --agent agent-7 --cart "$WORK/cart.json" --ttl 300 --count "$(wc -l < "$WORK/bound_sessions-$k.txt")" \
      --cnf-jkt="$(cat "$WORK/agent-$k.jkt")" > "$WORK/tokens3-$k.txt"
  done
  # The completion proofs last, all at once: a proof is accepted for 60 s after its iat.
  for k in $(seq 1 "$AGENT_KEYS"); do
    "$BIN/examples/bench_proofs" "$WORK/agent-$k.pem" POST \
      "http://127.0.0.1:$MERCHANT_PORT/v1/checkout-sessions/{id}/complete" \
      "$WORK/bound_sessions-$k.txt" "$WORK/tokens3-$k.txt" >> "$WORK/complete_proofs.txt"
    cat "$WORK/bound_sessions-$k.txt" >> "$WORK/bound_sessions.txt"
    cat "$WORK/tokens3-$k.txt" >> "$WORK/tokens3.txt"
  done
  echo "sessions created: $(wc -l < "$WORK/bound_sessions.txt") by $AGENT_KEYS agents' keys"
  before=$(cpu_ticks "$MERCHANT_PID")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s bench/complete.lua \
    "http://127.0.0.1:$MERCHANT_PORT" -- "$WORK/tokens3.txt" "$WORK/bound_sessions.txt" "$THREADS" \
    "$WORK/complete_proofs.txt" > "$WORK/wrk3.txt"
  after=$(cpu_ticks "$MERCHANT_PID")
  grep "^NON2XX" "$WORK/wrk3.txt" || true
  RESULT=$(grep "^RESULT" "$WORK/wrk3.txt")
  echo "$RESULT"
  eval "$(echo "$RESULT" | sed 's/^RESULT //')"
  report "merchant bound complete" "$requests" "$duration_us" "$non2xx" "$p50_us" "$p99_us" "$before" "$after"

fi
if [ "${SCENARIOS:-1}" = all ] || [ "${SCENARIOS:-1}" = wallet ]; then
  echo "== scenario 3: wallet minting (request + notifications + approve), c=${WALLET_CONCURRENCY:-16}, ${DURATION}s"
  # The agent's proofs, made before the run (a proof is accepted for 60 s after its iat).
  "$BIN/examples/bench_proofs" "$WORK/agent.pem" POST "http://127.0.0.1:$WALLET_PORT/v1/mandate-requests" \
    "$(( DURATION * 10000 ))" > "$WORK/wallet_proofs.txt"
  before=$(cpu_ticks "$WALLET_PID")
  if [ "${PROFILE:-0}" = 1 ]; then
    perf record -e cpu-clock -F 1999 -p "$WALLET_PID" -o "$WORK/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  WALLET_LINE=$( { TIMEFORMAT='%U %S'; time "$BIN/examples/wallet_load" "http://127.0.0.1:$WALLET_PORT" \
    bench-admin bench-agent "$DURATION" "${WALLET_CONCURRENCY:-16}" "$WORK/wallet_proofs.txt"; } 2>"$WORK/wallet_load_cpu.txt")
  after=$(cpu_ticks "$WALLET_PID")
  if [ "${PROFILE:-0}" = 1 ]; then
    wait "$PERF_PID" || true
    SERVER_PID=$WALLET_PID show_profile
  fi
  echo "$WALLET_LINE"
  MINTED=$(echo "$WALLET_LINE" | awk '{print $3}')
  python3 -c "import sys; m, v, s, t, hz, d = map(float, sys.argv[1:]); print(f'ratio wallet mandates/s / openssl verify/s = {m / v:.3f} (/ sign/s = {m / s:.3f}); wallet CPU {t / hz / d:.2f} cores')" \
    "$MINTED" "$OPENSSL_VERIFY" "$OPENSSL_SIGN" "$(( after - before ))" "$TICKS" "$DURATION"
  awk -v d="$DURATION" '{printf "load generator (wallet_load) CPU %.2f cores\n", ($1 + $2) / d}' "$WORK/wallet_load_cpu.txt"
fi

#!/usr/bin/env bash
# Load run of the replay set on a Redis Cluster (SPEC §11): one merchant instance against two,
# both on the same 6-node cluster (3 masters, 3 replicas, from `redis-server --cluster-enabled
# yes` on free loopback ports and `redis-cli --cluster create`), all on this machine.
# Each run drives POST /v1/mandates/verify with consume=true (signature checks, then one
# SET NX PX on the cluster per mandate) at concurrency 64 in total: first all 64 connections on
# instance A, then 32 on A and 32 on B at once, each instance its own distinct mandates.
# Then the same two runs with --replay-min-replicas 1 (each record waits for a replica: WAIT).
# Baseline: `openssl speed -multi 2 ecdsap256`, in the same invocation.
# Prints req/s (summed over the instances), the ratio to openssl's verify/s, p50/p99 (of the
# slower instance), errors, and the CPU of the merchants, the load generators and the cluster.
#
# Needs: redis-server, redis-cli, wrk, openssl, curl
#        (apt-get install -y redis-server wrk openssl curl).
# Usage: bench/cluster.sh [duration_secs]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNECTIONS=64
THREADS=2

source bench/common.sh
need redis-server redis-cli wrk openssl curl

cargo build --release -q -p key-directory -p merchant -p ap2-cli --bins

# The cluster: six nodes, then three masters with a replica each.
NODES=()
REDIS_PIDS=()
for _ in 1 2 3 4 5 6; do
  port=$(free_port)
  mkdir -p "$WORK/redis-$port"
  # The bus port given: the default, port + 10 000, is past 65 535 for a port above 55 535.
  redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-port "$(free_port)" \
    --cluster-config-file "$WORK/redis-$port/nodes.conf" --cluster-node-timeout 1000 \
    --save "" --appendonly no --dir "$WORK/redis-$port" >/dev/null &
  PIDS+=($!)
  REDIS_PIDS+=($!)
  NODES+=("127.0.0.1:$port")
done
for node in "${NODES[@]}"; do
  for _ in $(seq 1 200); do redis-cli -h 127.0.0.1 -p "${node##*:}" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
redis-cli --cluster create "${NODES[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
for node in "${NODES[@]}"; do
  for _ in $(seq 1 400); do
    redis-cli -h 127.0.0.1 -p "${node##*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.05
  done
done
CLUSTER_URLS=$(printf 'redis://%s,' "${NODES[@]}")
CLUSTER_URLS=${CLUSTER_URLS%,}

start_key_directory
register_user_key

echo "== baseline: openssl speed -multi 2 -seconds 3 ecdsap256"
OPENSSL_VERIFY=$(openssl speed -multi 2 -seconds 3 ecdsap256 2>/dev/null | awk '/nistp256/ {l=$0} END {print l}' | awk '{print $NF}')
echo "openssl verify/s (2 processes): $OPENSSL_VERIFY"


# A merchant on the cluster: its port and pid in MERCHANT_PORT, MERCHANT_PID.
start_cluster_merchant() {
  MERCHANT_PORT=$(free_port)
  RUST_LOG=warn "$BIN/merchant" --listen "127.0.0.1:$MERCHANT_PORT" --merchant-id acme-corp \
    --backend-token "bench=$BACKEND_TOKEN" --data-dir "$WORK/merchant-$MERCHANT_PORT" \
    --key-directory-url "http://127.0.0.1:$KD_PORT" --redis-cluster-nodes "$CLUSTER_URLS" \
    --require-agent-binding false "$@" 2>"$WORK/merchant-$MERCHANT_PORT.log" &
  MERCHANT_PID=$!
  PIDS+=($MERCHANT_PID)
  wait_ready "http://127.0.0.1:$MERCHANT_PORT"
}

# run LABEL PORT... : wrk on each port at once (64 connections split between them), each with
# its own fresh mandates.
run() {
  local label=$1; shift
  local ports=("$@") n=$# i
  local per=$(( CONNECTIONS / n ))
  for i in $(seq 1 "$n"); do
    "$BIN/ap2" mint --key "$WORK/user.pem" --iss https://wallet.example --sub bench-user \
      --agent agent-7 --cart "$WORK/cart.json" --ttl 300 --count "$(( DURATION * 30000 / n ))" > "$WORK/tokens-$i.txt"
  done
  local before redis_before after redis_after
  before=$(ticks_of "${SERVERS[@]}")
  redis_before=$(ticks_of "${REDIS_PIDS[@]}")
  local wrk_pids=()
  for i in $(seq 1 "$n"); do
    wrk -t"$THREADS" -c"$per" -d"${DURATION}s" --latency -s bench/verify.lua \
      "http://127.0.0.1:${ports[$(( i - 1 ))]}" -- "$WORK/tokens-$i.txt" "$THREADS" "$CART" true \
      > "$WORK/wrk-$i.txt" &
    wrk_pids+=($!)
  done
  wait "${wrk_pids[@]}"
  after=$(ticks_of "${SERVERS[@]}")
  redis_after=$(ticks_of "${REDIS_PIDS[@]}")
  python3 - "$label" "$OPENSSL_VERIFY" "$TICKS" "$before" "$after" "$redis_before" "$redis_after" \
    "$WORK"/wrk-*.txt <<'PY'
import sys
label, ossl, hz, before, after, rb, ra, *files = sys.argv[1:]
runs = []
for name in files:
    line = next(l for l in open(name) if l.startswith("RESULT"))
    runs.append({k: int(v) for k, v in (f.split("=") for f in line.split()[1:])})
secs = max(r["duration_us"] for r in runs) / 1e6
rps = sum(r["requests"] for r in runs) / secs
bad = sum(r["non2xx"] + r["errors_connect"] + r["errors_read"] + r["errors_write"] + r["errors_timeout"] for r in runs)
p50 = max(r["p50_us"] for r in runs) / 1000
p99 = max(r["p99_us"] for r in runs) / 1000
cpu = (int(after) - int(before)) / int(hz) / secs
redis = (int(ra) - int(rb)) / int(hz) / secs
print(f"{label}: {rps:.0f} req/s ({rps / float(ossl):.3f} x openssl verify/s), non-2xx or errors {bad}, "
      f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, merchants' CPU {cpu:.2f} cores, cluster CPU {redis:.2f} cores")
PY
  rm -f "$WORK"/wrk-*.txt
}

for replicas in 0 1; do
  start_cluster_merchant --replay-min-replicas "$replicas"
  A_PORT=$MERCHANT_PORT A_PID=$MERCHANT_PID
  start_cluster_merchant --replay-min-replicas "$replicas"
  B_PORT=$MERCHANT_PORT B_PID=$MERCHANT_PID
  echo "== --replay-min-replicas $replicas: POST /v1/mandates/verify consume=true, c=$CONNECTIONS, ${DURATION}s"
  SERVERS=("$A_PID")
  run "one instance (A)" "$A_PORT"
  SERVERS=("$A_PID" "$B_PID")
  run "two instances (A and B)" "$A_PORT" "$B_PORT"
  kill "$A_PID" "$B_PID"
  wait "$A_PID" "$B_PID" 2>/dev/null || true
done

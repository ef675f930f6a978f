# Sourced by bench/load.sh and bench/soak.sh: the release services on loopback, a real
# redis-server, a user key registered at the directory. Everything started is stopped, and the
# scratch directory removed, when the script exits.

BIN=target/release
# The merchant backend's token for POST /v1/mandates/verify (SPEC §9).
BACKEND_TOKEN=bench-backend-token
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# need TOOL... : exits with the install line when one is missing.
need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y redis-server wrk openssl curl" >&2; exit 1; }
  done
}
# CPU time (user + system) in ticks of 1/TICKS s: of a process, and of several summed (one that is
# gone counts 0).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_of() { local total=0 pid; for pid in "$@"; do total=$(( total + $(cpu_ticks "$pid" 2>/dev/null || echo 0) )); done; echo "$total"; }
TICKS=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 200); do curl -fs "$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "$1 not ready" >&2; exit 1; }

# Redis without persistence: REDIS_PORT, REDIS_PID.
start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null &
  REDIS_PID=$!
  PIDS+=($REDIS_PID)
}

# The key directory, with the wallet's issuer token `bench-token`: KD_PORT.
start_key_directory() {
  KD_PORT=$(free_port)
  RUST_LOG=warn "$BIN/key-directory" --listen "127.0.0.1:$KD_PORT" --db "$WORK/keys.db" \
    --issuer-token "https://wallet.example=bench-token" 2>"$WORK/kd.log" &
  PIDS+=($!)
  wait_ready "http://127.0.0.1:$KD_PORT"
}

# The merchant acme-corp with the Redis replay set: MERCHANT_PORT, MERCHANT_PID. Binding is
# not required, so one process serves the unbound scenarios (SPEC §4 alone) and the bound ones
# (a bound mandate needs its proof whatever the flag says: the same code path as the default).
start_merchant() {
  MERCHANT_PORT=$(free_port)
  local database=()
  # MERCHANT_DATABASE_URL=postgres://… runs the merchant on PostgreSQL (SPEC §11).
  [ -n "${MERCHANT_DATABASE_URL:-}" ] && database=(--database-url "$MERCHANT_DATABASE_URL")
  RUST_LOG=warn "$BIN/merchant" --listen "127.0.0.1:$MERCHANT_PORT" --merchant-id acme-corp \
    --backend-token "bench=$BACKEND_TOKEN" "${database[@]}" --max-open-sessions-per-agent 1000000 \
    --data-dir "$WORK/merchant" --key-directory-url "http://127.0.0.1:$KD_PORT" \
    --redis-url "redis://127.0.0.1:$REDIS_PORT" --require-agent-binding false ${MERCHANT_ARGS:-} 2>"$WORK/merchant.log" &
  MERCHANT_PID=$!
  PIDS+=($MERCHANT_PID)
  wait_ready "http://127.0.0.1:$MERCHANT_PORT"
}

# A user key ($WORK/user.pem, its JWK in $WORK/user.jwk) registered for bench-user, and the
# one-item cart in $CART and $WORK/cart.json.
register_user_key() {
  "$BIN/ap2" keygen --out "$WORK/user.pem" > "$WORK/user.jwk"
  curl -fs -X POST "http://127.0.0.1:$KD_PORT/v1/keys" -H 'Authorization: Bearer bench-token' \
    -H 'Content-Type: application/json' -d "{\"subject\":\"bench-user\",\"jwk\":$(cat "$WORK/user.jwk")}" >/dev/null
  CART='{"merchant_id":"acme-corp","currency":"USD","total":8999,"line_items":[{"id":"shoe-001","title":"Trail Runner","quantity":1,"unit_price":8999}]}'
  echo "$CART" > "$WORK/cart.json"
}

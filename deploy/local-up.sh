#!/usr/bin/env bash
# Bring the whole orderflow stack up on this machine, with demo data:
#
#   deploy/local-up.sh            (as root; on a fresh Debian 12 machine or a dev machine)
#
# PostgreSQL, RabbitMQ, curl, python3 and jq are installed (Debian packages, apt-get as root) and
# started when absent, the binaries (orderflow-api, orderflow-worker, orderflow-bench; release) are
# built, migrations applied, the API and two workers started in the background, and a demo admin
# client, a demo operator (`demo`, admin) for the dashboard, inventory and a few orders are created. Run it again at any time: it restarts the
# processes with a fresh build and reuses the demo client and demo orders.
# It ends by printing `export API=… KEY=… DATABASE_URL=…` lines for the README's commands (also
# written to $ORDERFLOW_STATE_DIR/env: `. /tmp/orderflow-local/env`).
# Stop with deploy/local-down.sh.
#
# Environment:
#   PORT                  8080                        API port on 127.0.0.1
#   ORDERFLOW_STATE_DIR   /tmp/orderflow-local        logs, pid files, the demo key
#   DATABASE_URL          postgres://orderflow:orderflow@127.0.0.1:5432/orderflow
#   AMQP_URL              amqp://guest:guest@127.0.0.1:5672/%2f
#   RUST_LOG              info
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$DEPLOY_DIR")
# shellcheck source=deploy/lib/services.sh
source "$DEPLOY_DIR/lib/services.sh"

PORT=${PORT:-8080}
STATE_DIR=${ORDERFLOW_STATE_DIR:-/tmp/orderflow-local}
BASE_URL="http://127.0.0.1:$PORT"
export ORDERFLOW_STATE_DIR=$STATE_DIR

# ---- 1. Services: PostgreSQL (with the app's role and database) and RabbitMQ ---------------------
of_ensure_postgres
if [[ -z "${DATABASE_URL:-}" ]]; then
    # A password login works whether 127.0.0.1 is trust (dev machine) or scram (fresh Debian).
    # CREATEDB: the benchmark (orderflow-bench perf) and the spawned race audit create a fresh
    # database per run on this server with this role.
    of_ensure_app_role createdb
    of_ensure_database orderflow
fi
of_ensure_rabbitmq

# ---- 2. Tools this script itself uses -------------------------------------------------------------
command -v curl >/dev/null || of_apt_install curl
command -v python3 >/dev/null || of_apt_install python3
# Not used here: the README's walkthrough reads ids out of JSON answers with it.
command -v jq >/dev/null || of_apt_install jq

# ---- 3. Rust toolchain: required, but not installed behind your back ------------------------------
of_add_cargo_path
if ! command -v cargo >/dev/null; then
    cat >&2 <<'MSG'
error: cargo (the Rust toolchain) is not installed.

Install it with rustup (https://rustup.rs), then run this script again:

    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . "$HOME/.cargo/env"

(On Debian you also need a C toolchain: apt-get install -y build-essential.)
MSG
    exit 1
fi

# ---- 4. Build the binaries (sqlx macros use the checked-in .sqlx/ data) ---------------------------
# The bench is not run here; the README's race audit and benchmark use it against this stack.
of_log "building orderflow-api, orderflow-worker and orderflow-bench (release; the first build takes a while)"
(cd "$REPO_ROOT" && SQLX_OFFLINE=true cargo build --release -p orderflow-api -p orderflow-worker -p orderflow-bench)
TARGET_DIR=$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
API_BIN="$TARGET_DIR/release/orderflow-api"
WORKER_BIN="$TARGET_DIR/release/orderflow-worker"
BENCH_BIN="$TARGET_DIR/release/orderflow-bench"

# ---- 5. Stop a previous run's processes ------------------------------------------------------------
mkdir -p "$STATE_DIR"
"$DEPLOY_DIR/local-down.sh"
if of_port_open "$PORT"; then
    of_die "port $PORT on 127.0.0.1 is taken by another program; free it or run with PORT=<other port>"
fi

# ---- 6. Configuration shared by every process ------------------------------------------------------
export DATABASE_URL=${DATABASE_URL:-postgres://${ORDERFLOW_DB_USER}:${ORDERFLOW_DB_PASSWORD}@127.0.0.1:5432/orderflow}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export ORDERFLOW_NAMESPACE=${ORDERFLOW_NAMESPACE:-orderflow}
export ORDERFLOW_PARTITIONS=${ORDERFLOW_PARTITIONS:-16}
export RUST_LOG=${RUST_LOG:-info}
export ORDERFLOW_LOG_FORMAT=${ORDERFLOW_LOG_FORMAT:-text}

# ---- 7. Apply migrations ------------------------------------------------------------------------------
of_log "applying migrations"
"$API_BIN" migrate

# ---- 8. Start the API and two workers in the background (logs and pids in the state dir) ------------
start_bg() { # name, command...
    local name=$1
    shift
    nohup "$@" >"$STATE_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE_DIR/$name.pid"
    of_log "started $name (pid $!), log: $STATE_DIR/$name.log"
}
ORDERFLOW_LISTEN="127.0.0.1:$PORT" start_bg api "$API_BIN" serve
# Each worker needs its own metrics port.
ORDERFLOW_METRICS_LISTEN=127.0.0.1:9091 ORDERFLOW_WORKER_NAME=worker-1 start_bg worker-1 "$WORKER_BIN"
ORDERFLOW_METRICS_LISTEN=127.0.0.1:9092 ORDERFLOW_WORKER_NAME=worker-2 start_bg worker-2 "$WORKER_BIN"

# ---- 9. Wait until the API is ready (GET /readyz answers 200) -------------------------------------
of_log "waiting for $BASE_URL/readyz"
for ((i = 1; ; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$BASE_URL/readyz" || true)
    [[ "$code" == 200 ]] && break
    if ! kill -0 "$(cat "$STATE_DIR/api.pid")" 2>/dev/null; then
        tail -n 30 "$STATE_DIR/api.log" >&2 || true
        of_die "the API exited during startup; log: $STATE_DIR/api.log"
    fi
    ((i < ORDERFLOW_WAIT_TRIES)) || of_die "API not ready after ${ORDERFLOW_WAIT_TRIES}s (last status: $code); log: $STATE_DIR/api.log"
    sleep 1
done
for w in worker-1 worker-2; do
    kill -0 "$(cat "$STATE_DIR/$w.pid")" 2>/dev/null || of_die "$w exited during startup; log: $STATE_DIR/$w.log"
done
of_log "API is ready"

# ---- 10. Demo admin client: reuse the stored key while it still works, else create one --------------
KEY_FILE="$STATE_DIR/demo-admin.key"
auth_status() { # HTTP status of an authenticated read with key $1
    curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$BASE_URL/v1/inventory/WIDGET-1" || true
}
ADMIN_KEY=""
if [[ -s "$KEY_FILE" ]]; then
    ADMIN_KEY=$(tr -d '[:space:]' <"$KEY_FILE")
    if [[ "$(auth_status "$ADMIN_KEY")" == 401 ]]; then
        of_log "stored demo key no longer works (database reset?); creating a new client"
        ADMIN_KEY=""
        rm -f "$STATE_DIR"/demo-*.idem
    fi
fi
if [[ -z "$ADMIN_KEY" ]]; then
    ADMIN_KEY=$("$API_BIN" client create --name demo-admin --admin | tr -d '[:space:]')
    [[ -n "$ADMIN_KEY" ]] || of_die "orderflow-api client create printed no key"
    (umask 077 && printf '%s\n' "$ADMIN_KEY" >"$KEY_FILE")
    of_log "created demo admin client; key stored in $KEY_FILE"
else
    of_log "reusing demo admin key from $KEY_FILE"
fi

# ---- 10b. Demo operator `demo` (admin) for the dashboard: reuse the stored password while it signs in,
# else create the operator (or give it a new password) ------------------------------------------------
PASSWORD_FILE="$STATE_DIR/demo-operator.password"
signs_in() { # HTTP status of a dashboard sign-in as demo with password $1
    curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
        --data "{\"name\":\"demo\",\"password\":\"$1\"}" "$BASE_URL/dashboard/session" || true
}
OPERATOR_PASSWORD=""
if [[ -s "$PASSWORD_FILE" ]]; then
    OPERATOR_PASSWORD=$(tr -d '[:space:]' <"$PASSWORD_FILE")
    [[ "$(signs_in "$OPERATOR_PASSWORD")" == 200 ]] || OPERATOR_PASSWORD=""
fi
if [[ -z "$OPERATOR_PASSWORD" ]]; then
    OPERATOR_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    if "$API_BIN" operator list | grep -q '^demo'$'\t'; then
        printf '%s\n' "$OPERATOR_PASSWORD" | "$API_BIN" operator set-password --name demo --password-stdin
    else
        printf '%s\n' "$OPERATOR_PASSWORD" | "$API_BIN" operator create --name demo --role admin --password-stdin
    fi
    (umask 077 && printf '%s\n' "$OPERATOR_PASSWORD" >"$PASSWORD_FILE")
    of_log "demo operator ready; password stored in $PASSWORD_FILE"
else
    of_log "reusing demo operator password from $PASSWORD_FILE"
fi

# Send a request; print the response body; fail with the body on a non-2xx status.
# Usage: api METHOD PATH [BODY [IDEMPOTENCY_KEY]]
api() {
    local method=$1 path=$2 body=${3:-} idem=${4:-} out code try
    local -a args=(-s -X "$method" -H "Authorization: Bearer $ADMIN_KEY" -w '\n%{http_code}')
    [[ -n "$body" ]] && args+=(-H 'content-type: application/json' --data "$body")
    [[ -n "$idem" ]] && args+=(-H "Idempotency-Key: $idem")
    for try in 1 2 3 4 5; do
        out=$(curl "${args[@]}" "$BASE_URL$path") || of_die "$method $path: request failed"
        code=${out##*$'\n'}
        # 409 on a replayed Idempotency-Key means the first attempt is still in flight: retry.
        [[ "$code" == 409 && -n "$idem" && $try -lt 5 ]] || break
        sleep 1
    done
    [[ "$code" == 2?? ]] || of_die "$method $path answered $code: ${out%$'\n'*}"
    printf '%s\n' "${out%$'\n'*}"
}

# A stable Idempotency-Key per demo request (kept in the state dir), so that re-running this script
# replays the same requests instead of creating more orders.
idem_key() {
    local f="$STATE_DIR/demo-$1.idem"
    [[ -s "$f" ]] || cat /proc/sys/kernel/random/uuid >"$f"
    cat "$f"
}

json_field() { # print field $1 of the JSON object on stdin
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# ---- 11. Seed inventory ------------------------------------------------------------------------------
of_log "seeding inventory"
for pair in WIDGET-1:100 WIDGET-2:50 GADGET-1:10 GIZMO-1:1; do
    sku=${pair%%:*} qty=${pair##*:}
    api PUT "/v1/inventory/$sku" "{\"available\": $qty}" >/dev/null
    printf '    %-9s %s available\n' "$sku" "$qty" >&2
done

# ---- 12. Demo orders, and a reserve command for the first one ---------------------------------------
of_log "creating demo orders"
orders=(
    '{"customer_id":"c1","currency":"EUR","items":[{"sku":"WIDGET-1","quantity":2,"unit_price_cents":1250}]}'
    '{"customer_id":"c2","currency":"EUR","items":[{"sku":"WIDGET-2","quantity":1,"unit_price_cents":4999},{"sku":"GADGET-1","quantity":3,"unit_price_cents":899}]}'
    '{"customer_id":"c3","currency":"USD","items":[{"sku":"GIZMO-1","quantity":1,"unit_price_cents":19900}]}'
)
order_ids=()
for n in "${!orders[@]}"; do
    resp=$(api POST /v1/orders "${orders[$n]}" "$(idem_key "order-$((n + 1))")")
    id=$(printf '%s' "$resp" | json_field order_id) || of_die "no order_id in the response: $resp"
    order_ids+=("$id")
    printf '    order %s\n' "$id" >&2
done
api POST "/v1/orders/${order_ids[0]}/commands" '{"type":"reserve"}' "$(idem_key reserve-1)" >/dev/null
of_log "sent reserve for order ${order_ids[0]}"

# ---- 13. How to use it ---------------------------------------------------------------------------------
ENV_FILE="$STATE_DIR/env"
(
    umask 077
    cat >"$ENV_FILE" <<EOF
export API=$BASE_URL
export KEY=$ADMIN_KEY
export DATABASE_URL=$DATABASE_URL
EOF
)
cat <<EOF

orderflow is running.

  API:          $BASE_URL   (health: $BASE_URL/healthz, $BASE_URL/readyz)
  Dashboard:    $BASE_URL/   (sign in as demo, password $OPERATOR_PASSWORD;
                stored in $PASSWORD_FILE)
  Metrics:      $BASE_URL/metrics, http://127.0.0.1:9091/metrics, http://127.0.0.1:9092/metrics
  Demo API key: $ADMIN_KEY
                (admin; stored in $KEY_FILE)
  Binaries:     $API_BIN
                $WORKER_BIN
                $BENCH_BIN
  Logs:         $STATE_DIR/api.log, $STATE_DIR/worker-1.log, $STATE_DIR/worker-2.log
  Demo orders:  ${order_ids[*]}
  Stop:         $DEPLOY_DIR/local-down.sh

For the README's commands, paste these lines into your shell (or run: . $ENV_FILE):

$(cat "$ENV_FILE")

EOF

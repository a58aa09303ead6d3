#!/usr/bin/env bash
# Run every test of the project:
#
#   deploy/run-tests.sh          (as root; CI runs it too, from .ci/run)
#
# Makes sure what the tests need is there (PostgreSQL, RabbitMQ, a database role that may create
# databases, Python packages, docker-compose, Chromium + ChromeDriver, cargo-nextest), installing
# what is missing, then checks the compose file and that the Docker image builds from what its
# Dockerfile copies, runs the message-contract tests, the monitoring-config check, the doc tests,
# the whole Rust test suite, then the race audit under scheduled faults. Stops at the first failing
# stage.
#
# Environment:
#   DATABASE_URL   postgres://orderflow:orderflow@127.0.0.1:5432/postgres
#                  the server the tests create their per-test databases on
#   AMQP_URL       amqp://guest:guest@127.0.0.1:5672/%2f
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$DEPLOY_DIR")
# shellcheck source=deploy/lib/services.sh
source "$DEPLOY_DIR/lib/services.sh"
cd "$REPO_ROOT"
of_add_cargo_path

# ---- 1. Services, and a role the tests may create databases with ---------------------------------
# Password login, so that it works whether 127.0.0.1 is trust (dev machine) or scram (fresh Debian).
of_ensure_services
of_ensure_app_role createdb
export DATABASE_URL=${DATABASE_URL:-postgres://${ORDERFLOW_DB_USER}:${ORDERFLOW_DB_PASSWORD}@127.0.0.1:5432/postgres}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
# sqlx's query macros read the checked-in .sqlx/ data.
export SQLX_OFFLINE=true

# ---- 2. Python packages for the contract tests and the OpenAPI fuzzing (schemathesis) --------------
command -v python3 >/dev/null || of_apt_install python3
if ! python3 -c 'import pika, jsonschema, schemathesis' 2>/dev/null; then
    of_log "installing Python packages pika, jsonschema and schemathesis"
    # pip first; Debian's own python3 refuses a plain pip install (PEP 668), hence the fallbacks
    # (Debian has no schemathesis package: the last one only helps the contract tests).
    python3 -m pip install --quiet pika jsonschema schemathesis 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages pika jsonschema schemathesis 2>/dev/null ||
        of_apt_install python3-pika python3-jsonschema
    python3 -c 'import pika, jsonschema, schemathesis' ||
        of_die "could not install pika, jsonschema and schemathesis for python3"
fi

# ---- 3. docker-compose (a test validates deploy/docker-compose.yml with it) -----------------------
command -v docker-compose >/dev/null || of_apt_install docker-compose

# ---- 3a. The compose file is valid (that its image builds is checked last, stage 9) --------------
of_log "compose file: docker-compose -f deploy/docker-compose.yml config -q"
docker-compose -f deploy/docker-compose.yml config -q

# ---- 3a'. The Kubernetes manifests: validated against Kubernetes' and the operators' schemas ---------
"$DEPLOY_DIR/check-k8s.sh"

# ---- 3b. Chromium and ChromeDriver for the dashboard's browser test (Debian's; nothing downloaded) --
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    of_apt_install chromium chromium-driver
fi

# ---- 4. cargo-nextest ------------------------------------------------------------------------------
command -v cargo >/dev/null || of_die "cargo not found: install Rust with rustup (https://rustup.rs)"
if ! cargo nextest --version >/dev/null 2>&1; then
    of_log "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

# ---- 5. Message-contract tests (Python, against the JSON schemas) ---------------------------------
of_log "contract tests: python3 contract/test_contract.py"
python3 contract/test_contract.py

# ---- 5b. The Grafana dashboard and Prometheus rules name only series the code exports -----------
of_log "monitoring config: python3 deploy/grafana/check_dashboard.py"
python3 deploy/grafana/check_dashboard.py

# ---- 6. Doc tests (nextest does not run them) -------------------------------------------------------
of_log "doc tests: cargo test --workspace --doc"
cargo test --workspace --doc

# ---- 7. Every other Rust test: unit, integration (real PostgreSQL and RabbitMQ), property tests ---
of_log "Rust tests: cargo nextest run --workspace --all-targets --no-fail-fast"
cargo nextest run --workspace --all-targets --no-fail-fast

# ---- 8. The race audit under scheduled faults -------------------------------------------------------
# After the suite, never beside it: its faults restart PostgreSQL and RabbitMQ. Every scenario and
# every fault (the first ones twice), three workers sharing the partition leases, with the faults
# aimed at one worker (kill-owner, pg-terminate-worker, broker-close-worker) among them, and the
# partitions grown under load (grow-partitions, last in the schedule's order: 16 -> 32 about
# halfway, so that the second round of faults strikes the grown layout), in 150 s of workload (every
# fault of `all` but the cluster faults); fails on any broken invariant, a fault
# never injected or never recovered from, a partition of a struck worker that never resumed, a
# graceful move that repeated work or never rebalanced, or a refused command that ran. The
# cluster faults (broker-node-kill, pg-promote) need the rigs and are not run here (README). The
# failpoints exist only in a build with the `failpoints` feature: it is built in the same target directory (only orderflow's
# own crates differ), its executables are copied aside, and the feature-free ones put back.
of_log "race audit under faults: orderflow-bench audit --spawn --workers 3 (every local fault)"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
cargo build -p orderflow-api -p orderflow-worker --features failpoints
mkdir -p "$TARGET_DIR/failpoints-bin"
cp "$TARGET_DIR/debug/orderflow-api" "$TARGET_DIR/debug/orderflow-worker" "$TARGET_DIR/failpoints-bin/"
cargo build --workspace --bins
# -o: the restarted PostgreSQL and RabbitMQ must not inherit (and keep) the lock.
flock -o /tmp/orderflow-services.lock "$TARGET_DIR/debug/orderflow-bench" audit --spawn \
    --workers 3 --faults kill-worker-in-tx,kill-worker-before-ack,term-worker,stop-worker,kill-api-before-publish,broker-close,broker-restart,pg-restart,pg-terminate,queue-full,kill-owner,pg-terminate-worker,broker-close-worker,scale-out-in,grow-partitions \
    --api-bin "$TARGET_DIR/failpoints-bin/orderflow-api" \
    --worker-bin "$TARGET_DIR/failpoints-bin/orderflow-worker" \
    --database-url "$DATABASE_URL" --duration 150 --fault-interval 2 --no-progress \
    --report "$TARGET_DIR/audit-faults.json" --log-dir "$TARGET_DIR/audit-faults-logs"

# ---- 8b. The cluster faults, on the test rigs ------------------------------------------------------
# A three-node RabbitMQ cluster, each node in a network namespace of its own (so that a cut is a real
# network partition), and a PostgreSQL primary with a synchronous standby (ports 5440/5441), beside
# the machine's own servers, which they never touch; the stack spawned on them, three workers, and
# in turn: kill -9 of a broker node, a broker node cut off (its link down), the primary killed and
# the standby promoted; each healed (the node restarted or reconnected, the old primary rejoined as
# a standby). Same verdict as above. The rigs are always taken down again.
of_log "race audit on the rigs: broker-node-kill, broker-node-cut, pg-promote"
rigs_down() {
    "$DEPLOY_DIR/lib/rabbit-cluster.sh" down >/dev/null 2>&1 || true
    "$DEPLOY_DIR/lib/pg-ha.sh" down >/dev/null 2>&1 || true
}
trap rigs_down EXIT
RC_MODE=netns "$DEPLOY_DIR/lib/rabbit-cluster.sh" up
"$DEPLOY_DIR/lib/pg-ha.sh" up
"$TARGET_DIR/debug/orderflow-bench" audit --spawn \
    --workers 3 --faults broker-node-kill,broker-node-cut,pg-promote \
    --api-bin "$TARGET_DIR/failpoints-bin/orderflow-api" \
    --worker-bin "$TARGET_DIR/failpoints-bin/orderflow-worker" \
    --amqp-url "$("$DEPLOY_DIR/lib/rabbit-cluster.sh" urls | paste -sd,)" \
    --database-url "postgres://${ORDERFLOW_DB_USER}:${ORDERFLOW_DB_PASSWORD}@127.0.0.1:5440,127.0.0.1:5441/postgres" \
    --rig-dir "$DEPLOY_DIR/lib" --duration 180 --fault-interval 3 --no-progress \
    --report "$TARGET_DIR/audit-cluster.json" --log-dir "$TARGET_DIR/audit-cluster-logs"
rigs_down
trap - EXIT

# ---- 9. The Docker build context (no Docker engine needed) ----------------------------------------
# Last: its build of the copied tree shares this target directory (see the script).
of_log "docker build context: deploy/check-docker-context.sh"
"$DEPLOY_DIR/check-docker-context.sh"

#!/usr/bin/env bash
# Stop the orderflow processes started by deploy/local-up.sh (API and workers).
#
#   deploy/local-down.sh
#
# Sends SIGTERM to each process named by a pid file in the state dir, waits for all of them to
# exit (they shut down gracefully), and SIGKILLs whatever is left after the deadline. PostgreSQL,
# RabbitMQ and the data are left alone. Safe to run when nothing is running.
#
# Environment: ORDERFLOW_STATE_DIR (default /tmp/orderflow-local), ORDERFLOW_STOP_TIMEOUT (30 s).
set -euo pipefail

STATE_DIR=${ORDERFLOW_STATE_DIR:-/tmp/orderflow-local}
STOP_TIMEOUT=${ORDERFLOW_STOP_TIMEOUT:-30}

# True when $1 is a live process that is one of ours (guards against a recycled pid).
is_orderflow_pid() {
    [[ "$1" =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'orderflow-'
}

shopt -s nullglob
pidfiles=("$STATE_DIR"/*.pid)
if [[ ${#pidfiles[@]} -eq 0 ]]; then
    echo "orderflow: nothing to stop (no pid files in $STATE_DIR)"
    exit 0
fi

# 1. Ask every process to stop (SIGTERM), API first so that it stops taking requests.
declare -A running=()
for f in "$STATE_DIR"/api.pid "${pidfiles[@]}"; do
    [[ -f "$f" ]] || continue
    name=$(basename "$f" .pid)
    [[ -n "${running[$name]:-}" ]] && continue
    pid=$(cat "$f")
    if is_orderflow_pid "$pid"; then
        echo "orderflow: stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        running[$name]=$pid
    else
        echo "orderflow: $name is not running"
        rm -f "$f"
    fi
done

# 2. Wait for them to exit, up to the deadline.
for ((waited = 0; waited < STOP_TIMEOUT * 2 && ${#running[@]} > 0; waited++)); do
    for name in "${!running[@]}"; do
        if ! kill -0 "${running[$name]}" 2>/dev/null; then
            echo "orderflow: $name stopped"
            rm -f "$STATE_DIR/$name.pid"
            unset "running[$name]"
        fi
    done
    [[ ${#running[@]} -gt 0 ]] && sleep 0.5
done

# 3. Whatever ignored SIGTERM past the deadline gets SIGKILL.
for name in "${!running[@]}"; do
    echo "orderflow: $name did not stop within ${STOP_TIMEOUT}s; killing it" >&2
    kill -KILL "${running[$name]}" 2>/dev/null || true
    rm -f "$STATE_DIR/$name.pid"
done

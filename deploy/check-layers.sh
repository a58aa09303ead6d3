#!/usr/bin/env bash
# The layering of the workspace, checked from Cargo's own dependency graph (each crate resolved
# on its own, features included): a crate that reaches for what its layer may not use fails here.
# docs/ARCHITECTURE.md explains the layers. Run by .ci/run; needs only cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

failed=0
# forbid CRATE "packages it must not depend on, directly or not"
forbid() {
    local crate=$1 banned=$2 deps hit
    deps=$(cargo tree --locked -p "$crate" -e normal --prefix none -f '{p}' | awk '{print $1}' | sort -u)
    for hit in $banned; do
        if grep -qx -- "$hit" <<<"$deps"; then
            echo "layering: $crate depends on $hit (cargo tree -p $crate -i $hit shows how)" >&2
            failed=1
        fi
    done
}

io="sqlx lapin deadpool-lapin tokio axum hyper reqwest"
project="orderflow-contract orderflow-storage orderflow-messaging orderflow-runtime orderflow-testkit orderflow-api orderflow-worker orderflow-bench"
# The domain: pure logic, no IO, nothing of HTTP or OpenAPI, nothing else of the project.
forbid orderflow-domain "$io utoipa $project"
# The wire contract: the domain and serde; no IO, no storage, no broker.
forbid orderflow-contract "$io orderflow-storage orderflow-messaging orderflow-runtime orderflow-testkit orderflow-api orderflow-worker orderflow-bench"
# Storage: SQL only; no broker, no HTTP.
forbid orderflow-storage "lapin deadpool-lapin axum hyper reqwest orderflow-messaging orderflow-runtime orderflow-testkit orderflow-api orderflow-worker orderflow-bench"
# Messaging: the broker only; no SQL, no HTTP, no domain rules.
forbid orderflow-messaging "sqlx axum hyper reqwest orderflow-domain orderflow-storage orderflow-api orderflow-worker orderflow-bench"
# Runtime: what a process needs to run; no SQL, broker, HTTP framework or project crates.
forbid orderflow-runtime "sqlx lapin deadpool-lapin axum reqwest orderflow-domain orderflow-contract orderflow-storage orderflow-messaging"
# The binaries stand side by side: the API never links the worker, nor the worker the API.
forbid orderflow-api "orderflow-worker orderflow-bench"
forbid orderflow-worker "orderflow-api orderflow-bench"

if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "layering: every crate uses only what its layer may"

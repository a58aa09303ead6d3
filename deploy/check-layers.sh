#!/usr/bin/env bash
# The layering of the workspace, checked from Cargo's own dependency graph (each crate resolved
# on its own, features included): a crate that reaches for what its layer may not use fails here.
# docs/ARCHITECTURE.md explains the layers. Run by .ci/run; needs only cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

failed=0
# check EDGES CRATE "packages": CRATE must not reach any of them over the dependency kinds EDGES
# (cargo tree's `-e`), directly or not.
check() {
    local edges=$1 crate=$2 banned=$3 deps hit
    deps=$(cargo tree --locked -p "$crate" -e "$edges" --prefix none -f '{p}' | awk '{print $1}' | sort -u)
    for hit in $banned; do
        if grep -qx -- "$hit" <<<"$deps"; then
            echo "layering: $crate depends on $hit (cargo tree -p $crate -e $edges -i $hit shows how)" >&2
            failed=1
        fi
    done
}
# forbid CRATE "packages it must not depend on, directly or not"
forbid() { check normal "$1" "$2"; }
# forbid_in_tests CRATE "packages": not even through its dev-dependencies (what its tests link)
forbid_in_tests() { check normal,dev "$1" "$2"; }

io="sqlx lapin deadpool-lapin tokio axum hyper reqwest"
project="orderflow-contract orderflow-storage orderflow-messaging orderflow-runtime orderflow-testkit orderflow-api orderflow-worker orderflow-bench orderflow-e2e"
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
# The binaries stand side by side: the API never links the worker, nor the worker the API; nor do
# their tests (those that run both are the end-to-end tests, e2e/).
forbid_in_tests orderflow-api "orderflow-worker orderflow-bench orderflow-e2e"
forbid_in_tests orderflow-worker "orderflow-api orderflow-bench orderflow-e2e"
# The test kit: a binary only through its feature of that name (`api`, `worker`), which a crate's
# dev-dependency turns on for the binaries its tests may run.
forbid orderflow-testkit "orderflow-api orderflow-worker orderflow-bench orderflow-e2e"

if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "layering: every crate uses only what its layer may"

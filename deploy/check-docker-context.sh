#!/usr/bin/env bash
# Check, without a Docker engine, that deploy/Dockerfile builds from what it copies:
#
#   deploy/check-docker-context.sh          (deploy/run-tests.sh runs it; so does CI)
#
# Assembles the build context exactly as the Dockerfile's build stage COPYs it, honouring the
# ignore file BuildKit reads (deploy/Dockerfile.dockerignore), into a scratch folder: both are
# parsed (deploy/lib/docker_context.py), nothing is listed here. Then runs, in that folder, the
# Dockerfile's own `cargo build` command (release, --locked, SQLX_OFFLINE=true from its ENV) and
# checks that the binaries its RUN line installs were built. The context root is the repository
# (as in `docker build -f deploy/Dockerfile .` and the compose file's `context: ..`). A crate, manifest, lock entry,
# migration or .sqlx file that the build needs but the Dockerfile does not copy (or the ignore
# file leaves out) fails here as it would in `docker build`.
#
# A cold run is one release build of both binaries (10 min on this 2-core machine, with another
# cargo build running beside it); a rerun rebuilds only what changed (3 s when nothing did).
#
# Environment:
#   ORDERFLOW_DOCKERFILE         deploy/Dockerfile       the Dockerfile to check (its ignore file is
#                                                        <it>.dockerignore beside it, else the
#                                                        repository's .dockerignore)
#   ORDERFLOW_DOCKER_CHECK_DIR   target/docker-context   scratch folder: src/ (the assembled
#                                                        context, recreated each run) and target/
#   ORDERFLOW_DOCKER_CHECK_TARGET_DIR  <that>/target     cargo's target dir for the build; kept
#                                                        between runs, so only changed crates
#                                                        are rebuilt
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$DEPLOY_DIR")
# shellcheck source=deploy/lib/services.sh
source "$DEPLOY_DIR/lib/services.sh"
of_add_cargo_path

DOCKERFILE=${ORDERFLOW_DOCKERFILE:-$DEPLOY_DIR/Dockerfile}
CHECK_DIR=${ORDERFLOW_DOCKER_CHECK_DIR:-$REPO_ROOT/target/docker-context}
TARGET_DIR=${ORDERFLOW_DOCKER_CHECK_TARGET_DIR:-$CHECK_DIR/target}
SRC_DIR=$CHECK_DIR/src

python3 "$DEPLOY_DIR/lib/docker_context.py" self-test >/dev/null

# ---- 1. The context as the Dockerfile copies it ---------------------------------------------------
rm -rf "$SRC_DIR"
mkdir -p "$SRC_DIR" "$TARGET_DIR"
plan=$(python3 "$DEPLOY_DIR/lib/docker_context.py" assemble "$REPO_ROOT" "$DOCKERFILE" "$SRC_DIR")
field() { printf '%s' "$plan" | python3 -c 'import json, sys; v = json.load(sys.stdin)[sys.argv[1]]; print(v if isinstance(v, (str, int)) else "\n".join(v))' "$1"; }
of_log "assembled $(field files) files as ${DOCKERFILE#"$REPO_ROOT"/} copies them (ignore file: $(field ignore_file)) into $SRC_DIR"

# ---- 2. The build stage's ENV, and its cargo command ---------------------------------------------
while IFS= read -r assignment; do
    [[ -n "$assignment" ]] && export "${assignment?}"
done < <(printf '%s' "$plan" | python3 -c 'import json, sys; [print(f"{k}={v}") for k, v in json.load(sys.stdin)["env"].items()]')
export SQLX_OFFLINE=true
mapfile -t cargo_cmd < <(field cargo)
[[ "${cargo_cmd[0]}" == cargo ]] || of_die "the Dockerfile's build command does not start with cargo: ${cargo_cmd[*]}"
[[ " ${cargo_cmd[*]} " == *" --locked "* ]] || of_die "the Dockerfile's cargo build must use --locked: ${cargo_cmd[*]}"

# ---- 3. Build there --------------------------------------------------------------------------------
cd "$SRC_DIR"
of_log "cargo metadata --locked (in the assembled context)"
cargo metadata --locked --format-version 1 >/dev/null ||
    of_die "cargo metadata --locked fails on the context the Dockerfile copies: see above"
of_log "${cargo_cmd[*]} (in the assembled context, CARGO_TARGET_DIR=$TARGET_DIR)"
CARGO_TARGET_DIR=$TARGET_DIR "${cargo_cmd[@]}" ||
    of_die "the Dockerfile's cargo build fails on the context it copies: see above"

# ---- 4. The binaries the Dockerfile installs exist ----------------------------------------------
mapfile -t installed < <(grep -o 'target/[a-z-]*/orderflow-[a-z-]*' "$DOCKERFILE" | sort -u)
((${#installed[@]} > 0)) || of_die "found no target/<profile>/orderflow-* path in $DOCKERFILE"
for bin in "${installed[@]}"; do
    [[ -x "$TARGET_DIR/${bin#target/}" ]] || of_die "the build did not produce $bin, which the Dockerfile installs"
done
of_log "docker build context ok: ${installed[*]##*/} build from what the Dockerfile copies"

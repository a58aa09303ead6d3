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
# By default the build is the Dockerfile's command in cargo's dev profile (its `--release`
# dropped), in the repository's own target directory: the dependencies the test suite built are
# reused and only orderflow's crates are compiled again (about 2 min here, against 10 min for a
# cold release build), which is what keeps CI short. Whether the copied tree resolves and
# compiles does not depend on the profile. ORDERFLOW_DOCKER_CHECK_PROFILE=release runs the
# Dockerfile's command exactly, in a target directory of its own.
#
# Environment:
#   ORDERFLOW_DOCKERFILE         deploy/Dockerfile       the Dockerfile to check (its ignore file is
#                                                        <it>.dockerignore beside it, else the
#                                                        repository's .dockerignore)
#   ORDERFLOW_DOCKER_CHECK_DIR   target/docker-context   scratch folder: src/ (the assembled
#                                                        context, recreated each run) and target/
#   ORDERFLOW_DOCKER_CHECK_PROFILE     debug             debug (see above) or release
#   ORDERFLOW_DOCKER_CHECK_TARGET_DIR  target (debug),   cargo's target dir for the build; kept
#                                      <check dir>/target between runs, so only changed crates
#                                      (release)          are rebuilt
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$DEPLOY_DIR")
# shellcheck source=deploy/lib/services.sh
source "$DEPLOY_DIR/lib/services.sh"
of_add_cargo_path

DOCKERFILE=${ORDERFLOW_DOCKERFILE:-$DEPLOY_DIR/Dockerfile}
CHECK_DIR=${ORDERFLOW_DOCKER_CHECK_DIR:-$REPO_ROOT/target/docker-context}
PROFILE=${ORDERFLOW_DOCKER_CHECK_PROFILE:-debug}
case "$PROFILE" in
    debug) TARGET_DIR=${ORDERFLOW_DOCKER_CHECK_TARGET_DIR:-$REPO_ROOT/target} ;;
    release) TARGET_DIR=${ORDERFLOW_DOCKER_CHECK_TARGET_DIR:-$CHECK_DIR/target} ;;
    *) of_die "ORDERFLOW_DOCKER_CHECK_PROFILE must be debug or release, not $PROFILE" ;;
esac
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
if [[ "$PROFILE" == debug ]]; then
    filtered=()
    for arg in "${cargo_cmd[@]}"; do
        [[ "$arg" == --release ]] || filtered+=("$arg")
    done
    cargo_cmd=("${filtered[@]}")
fi

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
    built=${bin#target/}
    [[ "$PROFILE" == debug ]] && built=debug/${built#*/}
    [[ -x "$TARGET_DIR/$built" ]] || of_die "the build did not produce $built ($bin in the Dockerfile)"
done
of_log "docker build context ok: ${installed[*]##*/} build from what the Dockerfile copies"

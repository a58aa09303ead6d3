#!/usr/bin/env bash
# Validates the Kubernetes manifests of deploy/k8s/ without a cluster:
#
#   deploy/check-k8s.sh          (as root in CI, where it may install the two validators)
#
# 1. every manifest is one resource of a kind something here has a schema for
#    (deploy/k8s/manifests.py route);
# 2. Kubernetes' own kinds against Kubernetes $KUBERNETES_VERSION's OpenAPI schemas, strictly
#    (an unknown field is an error): kubernetes-validate, whose wheel carries the schemas;
# 3. the operators' kinds (RabbitmqCluster, CloudNativePG's Cluster, ServiceMonitor, PodMonitor,
#    PrometheusRule) against their CRDs' schemas vendored in deploy/k8s/schemas/, strictly:
#    check-jsonschema;
# 4. what the pieces say about each other and about the code (deploy/k8s/manifests.py
#    consistency: selectors, ports, env vars, secrets, grace periods, connection budget, rules);
# 5. kustomize's output (namespace and image set) through 1 to 3 again, when kubectl or kustomize
#    is installed;
# 6. a negative self-check: deliberately broken copies (a misspelt field, an apiVersion without a
#    schema, a misspelt CRD field, a grace period shorter than the worker's drain) must each FAIL
#    for the reason planted, so that none of the checks above can pass by checking nothing.
#
# Nothing needs network access but the pip install (PyPI), and only when the pinned validators are
# missing. Exits non-zero at the first failing step.
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_DIR="$DEPLOY_DIR/k8s"
# shellcheck source=deploy/lib/services.sh
source "$DEPLOY_DIR/lib/services.sh"

# Pinned. The Kubernetes version is the oldest CloudNativePG 1.30 supports (1.34 - 1.36); its
# schemas ship inside kubernetes-validate's wheel (1.25 to 1.37 in 1.37.0), nothing is downloaded.
KUBERNETES_VERSION=1.34.0
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0

# ---- the validators --------------------------------------------------------------------------------
have_validators() {
    local kv cj
    kv=$(python3 -m kubernetes_validate --version 2>/dev/null) || return 1
    cj=$(python3 -m check_jsonschema --version 2>/dev/null) || return 1
    [[ "$kv" == "$KUBERNETES_VALIDATE_VERSION" && "$cj" == *" version $CHECK_JSONSCHEMA_VERSION" ]] &&
        python3 -c 'import yaml' 2>/dev/null
}

command -v python3 >/dev/null || of_apt_install python3
if ! have_validators; then
    packages=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION")
    of_log "installing ${packages[*]}"
    # pip first; Debian's own python3 refuses a plain pip install (PEP 668), hence the fallbacks
    # (Debian packages neither validator: the last one only brings pip itself).
    python3 -m pip install --quiet "${packages[@]}" 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages "${packages[@]}" 2>/dev/null ||
        { of_apt_install python3-pip &&
            python3 -m pip install --quiet --break-system-packages "${packages[@]}"; }
    have_validators ||
        of_die "could not install ${packages[*]} for python3"
fi
of_log "kubernetes-validate $KUBERNETES_VALIDATE_VERSION (Kubernetes $KUBERNETES_VERSION schemas), check-jsonschema $CHECK_JSONSCHEMA_VERSION"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Validates the manifests named in the route file $1 (lines FILE<TAB>core or FILE<TAB>SCHEMA,
# from manifests.py route). Prints what failed; returns 1 if anything did.
validate_routed() {
    local routes=$1 status=0 out schema
    local -a core schemas files
    mapfile -t core < <(awk -F'\t' '$2 == "core" { print $1 }' "$routes")
    if ((${#core[@]})); then
        out=$(python3 -m kubernetes_validate --strict --quiet -k "$KUBERNETES_VERSION" "${core[@]}" 2>&1) ||
            status=1
        # kubernetes-validate passes a resource it has no schema for (a misspelt apiVersion or
        # kind) with a WARN and exit status 0: here that is a failure.
        if grep -qE '^(WARN|ERROR|FATAL)' <<<"$out"; then status=1; fi
        [[ -z "$out" ]] || printf '%s\n' "$out"
        ((status)) || echo "kubernetes-validate --strict -k $KUBERNETES_VERSION: ${#core[@]} manifests ok"
    fi
    mapfile -t schemas < <(awk -F'\t' '$2 != "core" { print $2 }' "$routes" | sort -u)
    for schema in "${schemas[@]}"; do
        mapfile -t files < <(awk -F'\t' -v s="$schema" '$2 == s { print $1 }' "$routes")
        if out=$(python3 -m check_jsonschema --schemafile "$schema" "${files[@]}" 2>&1); then
            echo "check-jsonschema $(basename "$schema"): ${#files[@]} manifests ok"
        else
            printf '%s\n' "$out"
            status=1
        fi
    done
    return "$status"
}

# Routes and validates the given manifest files.
validate_files() {
    local routes
    routes=$(mktemp -p "$WORK" routes.XXXXXX)
    python3 "$K8S_DIR/manifests.py" route "$@" >"$routes" || return 1
    validate_routed "$routes"
}

# ---- 1-3. Every manifest ---------------------------------------------------------------------------
of_log "manifests: schemas (deploy/k8s/**/*.yaml)"
python3 "$K8S_DIR/manifests.py" route >"$WORK/routes" ||
    of_die "a manifest is not one resource of a kind with a schema (above)"
validate_routed "$WORK/routes" || of_die "manifests failed validation (above)"

# ---- 4. Consistency ----------------------------------------------------------------------------------
of_log "manifests: consistency (deploy/k8s/manifests.py consistency)"
python3 "$K8S_DIR/manifests.py" consistency || of_die "the manifests do not fit together or the code (above)"
echo "consistency ok"

# ---- 5. kustomize's output -----------------------------------------------------------------------------
if command -v kustomize >/dev/null; then
    render=(kustomize build)
elif command -v kubectl >/dev/null; then
    render=(kubectl kustomize)
else
    render=()
fi
if ((${#render[@]})); then
    of_log "kustomize output: ${render[*]} deploy/k8s"
    "${render[@]}" "$K8S_DIR" >"$WORK/rendered.yaml" || of_die "kustomize could not build deploy/k8s"
    python3 "$K8S_DIR/manifests.py" split "$WORK/rendered.yaml" "$WORK/rendered"
    validate_files "$WORK"/rendered/*.yaml || of_die "kustomize's output failed validation (above)"
else
    of_log "kustomize output: skipped (neither kustomize nor kubectl is installed)"
fi

# ---- 6. Negative self-check --------------------------------------------------------------------------
# Each broken copy must fail, and with the planted mistake named in the output.
expect_failure() { # what, pattern the output must contain, command...
    local what=$1 pattern=$2 out
    shift 2
    if out=$("$@" 2>&1); then
        printf '%s\n' "$out"
        of_die "negative self-check: $what PASSED validation; the check is not checking"
    fi
    grep -qF -- "$pattern" <<<"$out" ||
        { printf '%s\n' "$out"; of_die "negative self-check: $what failed, but not for '$pattern'"; }
    echo "negative self-check: $what fails as it must ($pattern)"
}
broken_copy() { # source, sed expression, destination: the copy must differ from the source
    sed -e "$2" "$1" >"$3"
    ! cmp -s "$1" "$3" || of_die "negative self-check: '$2' changed nothing in $1; update this script"
}

of_log "negative self-check: broken copies must fail"
mkdir -p "$WORK/broken"
broken_copy "$K8S_DIR/api/deployment.yaml" 's/^\( *\)imagePullPolicy: IfNotPresent$/\1imagePullPolcy: IfNotPresent/' \
    "$WORK/broken/misspelt-field.yaml"
expect_failure "a Deployment with a misspelt field" "'imagePullPolcy' was unexpected" \
    validate_files "$WORK/broken/misspelt-field.yaml"

broken_copy "$K8S_DIR/worker/deployment.yaml" 's|^apiVersion: apps/v1$|apiVersion: apps/v1beta9|' \
    "$WORK/broken/unknown-api-version.yaml"
expect_failure "a Deployment of an apiVersion Kubernetes does not serve" "Couldn't find schema" \
    validate_files "$WORK/broken/unknown-api-version.yaml"

broken_copy "$K8S_DIR/postgres/cluster.yaml" 's/^\( *\)method: any$/\1methd: any/' \
    "$WORK/broken/cluster-misspelt-field.yaml"
expect_failure "a CloudNativePG Cluster with a misspelt field" "'methd' was unexpected" \
    validate_files "$WORK/broken/cluster-misspelt-field.yaml"

cp -R "$K8S_DIR" "$WORK/broken/k8s"
broken_copy "$K8S_DIR/worker/deployment.yaml" 's/terminationGracePeriodSeconds: [0-9]*/terminationGracePeriodSeconds: 20/' \
    "$WORK/broken/k8s/worker/deployment.yaml"
expect_failure "a worker grace period shorter than its drain" "orderflow-worker: terminationGracePeriodSeconds 20" \
    env ORDERFLOW_K8S_DIR="$WORK/broken/k8s" python3 "$K8S_DIR/manifests.py" consistency

of_log "Kubernetes manifests: all checks passed"

# shellcheck shell=bash
# Shared helpers for deploy/local-up.sh, deploy/run-tests.sh and .ci/run: make sure PostgreSQL and
# RabbitMQ run on this machine (installing them from Debian's packages when absent) and that the
# application's database role exists.
#
# Source it, don't run it. Every function is idempotent. Meant for root on Debian 12 (a fresh
# machine or the dev/CI machine, whose services are usually already running).
#
# Knobs (environment):
#   ORDERFLOW_PG_VERSION_DIR  /etc/postgresql                  where Debian keeps cluster configs
#   ORDERFLOW_WAIT_TRIES      60                               polls (1 s apart) before giving up
#   ORDERFLOW_DB_USER         orderflow                        application role ...
#   ORDERFLOW_DB_PASSWORD     orderflow                        ... and its password

ORDERFLOW_DB_USER=${ORDERFLOW_DB_USER:-orderflow}
ORDERFLOW_DB_PASSWORD=${ORDERFLOW_DB_PASSWORD:-orderflow}
ORDERFLOW_WAIT_TRIES=${ORDERFLOW_WAIT_TRIES:-60}

# ---- small utilities -----------------------------------------------------------------------------

of_log() { printf '==> %s\n' "$*" >&2; }
of_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# rustup installs into ~/.cargo/bin, which a root shell started by sudo/su may not have on PATH.
of_add_cargo_path() {
    if [[ -d "${CARGO_HOME:-$HOME/.cargo}/bin" && ":$PATH:" != *":${CARGO_HOME:-$HOME/.cargo}/bin:"* ]]; then
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        export PATH
    fi
}

# Install Debian packages; `apt-get update` runs once per script, and only when installing.
_OF_APT_UPDATED=0
of_apt_install() {
    [[ $EUID -eq 0 ]] || of_die "need root to install $* (apt-get); run as root or install it yourself"
    command -v apt-get >/dev/null || of_die "apt-get not found; install $* yourself"
    export DEBIAN_FRONTEND=noninteractive
    if [[ $_OF_APT_UPDATED -eq 0 ]]; then
        of_log "apt-get update"
        apt-get update -q >/dev/null
        _OF_APT_UPDATED=1
    fi
    of_log "apt-get install $*"
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp, no extra tools).
of_port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# ---- PostgreSQL ----------------------------------------------------------------------------------

of_pg_ready() {
    command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432
}

# Start PostgreSQL on 127.0.0.1:5432 unless it already answers; install it first if absent.
of_ensure_postgres() {
    if of_pg_ready; then
        of_log "PostgreSQL is running on 127.0.0.1:5432"
        return 0
    fi
    local confdir=${ORDERFLOW_PG_VERSION_DIR:-/etc/postgresql}
    # Not installed (no server cluster tooling or no cluster config): install Debian's server.
    if ! command -v pg_ctlcluster >/dev/null || [[ -z "$(ls -A "$confdir" 2>/dev/null)" ]]; then
        of_apt_install postgresql
    fi
    # The newest installed major version's "main" cluster (the package creates it on install).
    local version
    # shellcheck disable=SC2012 # directory names are version numbers
    version=$(ls "$confdir" | sort -V | tail -1)
    [[ -n "$version" ]] || of_die "no PostgreSQL cluster config under $confdir"
    if [[ ! -d "$confdir/$version/main" ]]; then
        of_log "creating PostgreSQL cluster $version/main"
        pg_createcluster "$version" main >/dev/null
    fi
    of_log "starting PostgreSQL $version/main"
    # Fails harmlessly when the cluster is already starting; the wait below decides.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    local i
    for ((i = 1; i <= ORDERFLOW_WAIT_TRIES; i++)); do
        if of_pg_ready; then
            of_log "PostgreSQL is ready"
            return 0
        fi
        sleep 1
    done
    of_die "PostgreSQL did not accept connections on 127.0.0.1:5432 within ${ORDERFLOW_WAIT_TRIES}s (see /var/log/postgresql/)"
}

# psql as the superuser `postgres`. As root, through the Unix socket as the OS user postgres (peer
# auth on a fresh Debian install, trust on the dev machine); otherwise over TCP (works where
# 127.0.0.1 is trusted).
of_psql_admin() {
    if [[ $EUID -eq 0 ]] && id postgres >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@")
    else
        psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres "$@"
    fi
}

# Create (or fix up) the application role: LOGIN with a password, so that it can connect over
# 127.0.0.1 whether pg_hba says trust or scram-sha-256. Pass `createdb` to also grant CREATEDB
# (the tests create a fresh database per test).
of_ensure_app_role() {
    local extra=""
    [[ "${1:-}" == createdb ]] && extra=" CREATEDB"
    of_log "ensuring PostgreSQL role ${ORDERFLOW_DB_USER}${extra:+ (CREATEDB)}"
    of_psql_admin -d postgres \
        -v role="$ORDERFLOW_DB_USER" -v pw="$ORDERFLOW_DB_PASSWORD" <<SQL
SELECT format('CREATE ROLE %I', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN${extra} PASSWORD %L', :'role', :'pw') \gexec
SQL
}

# Create database $1 owned by the application role unless it exists (and make the role its owner).
of_ensure_database() {
    local db=$1
    of_log "ensuring database $db owned by $ORDERFLOW_DB_USER"
    of_psql_admin -d postgres -v db="$db" -v role="$ORDERFLOW_DB_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'db', :'role') \gexec
SQL
}

# Drop database $1 (disconnecting its sessions) and create it afresh, owned by the application role.
of_recreate_database() {
    local db=$1
    of_log "recreating database $db owned by $ORDERFLOW_DB_USER"
    of_psql_admin -d postgres -v db="$db" -v role="$ORDERFLOW_DB_USER" <<'SQL'
SET client_min_messages TO warning;
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', :'db') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') \gexec
SQL
}

# ---- RabbitMQ ------------------------------------------------------------------------------------

# Start RabbitMQ on 127.0.0.1:5672 unless it already answers; install it first if absent.
of_ensure_rabbitmq() {
    if of_port_open 5672; then
        of_log "RabbitMQ is running on 127.0.0.1:5672"
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null; then
        of_apt_install rabbitmq-server
    fi
    # The package's install may already have started a node; start one only if none answers.
    if ! timeout 20 rabbitmqctl -q status >/dev/null 2>&1; then
        of_log "starting RabbitMQ"
        rabbitmq-server -detached
    fi
    # await_startup fails at once while the node is still booting its VM, so poll it.
    local i
    for ((i = 1; i <= ORDERFLOW_WAIT_TRIES; i += 5)); do
        if timeout 30 rabbitmqctl -q -t 25 await_startup >/dev/null 2>&1 && of_port_open 5672; then
            of_log "RabbitMQ is ready"
            return 0
        fi
        sleep 5
    done
    of_die "RabbitMQ did not start within ~${ORDERFLOW_WAIT_TRIES}s (see /var/log/rabbitmq/)"
}

# Both services the application needs.
of_ensure_services() {
    of_ensure_postgres
    of_ensure_rabbitmq
}

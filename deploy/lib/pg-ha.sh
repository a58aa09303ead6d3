#!/usr/bin/env bash
# shellcheck shell=bash
# A throwaway PostgreSQL 15 primary + synchronous streaming standby (HA / failover tests), BESIDE the
# machine's own cluster 15/main on 5432, which this script never touches. Plain initdb/pg_ctl data
# directories under PGHA_BASE (nothing in /etc/postgresql, invisible to pg_lsclusters/init scripts).
#
#   deploy/lib/pg-ha.sh up           create/start the pair (node 1 = primary on 5440, node 2 = standby
#                                    on 5441), wait until the standby is synchronous. Idempotent; after
#                                    a failover it re-attaches the old primary (pg_rewind) instead.
#   deploy/lib/pg-ha.sh down         stop both and delete everything this script created
#   deploy/lib/pg-ha.sh status       role, timeline, LSN of each node; pg_stat_replication
#   deploy/lib/pg-ha.sh switchover   clean: stop primary, promote standby, old primary back as standby
#   deploy/lib/pg-ha.sh failover     kill -9 the primary's postmaster, pg_promote() the standby; the
#                                    old primary stays down (run `rejoin` or `up` to re-attach it)
#   deploy/lib/pg-ha.sh rejoin       re-attach the node that is not primary as a sync standby
#                                    (pg_rewind, falling back to a fresh pg_basebackup)
#   deploy/lib/pg-ha.sh primary      print the number (1|2) of the current primary
#   deploy/lib/pg-ha.sh url          print the libpq multi-host URL (target_session_attrs=read-write)
#   deploy/lib/pg-ha.sh psql N ARGS  psql as postgres on node N
#
# Synchronous replication: synchronous_standby_names = 'FIRST 1 (ofha1, ofha2)' is set (ALTER SYSTEM)
# on the primary only while a standby streams; a freshly promoted node runs asynchronous until the
# other node re-attaches (availability first, like Patroni's non-strict synchronous_mode). While it
# is set, killing the standby blocks commits on the primary until the standby is back.
# Auth: trust for local and 127.0.0.1 (like the machine's main cluster); max_connections 120 each
# (a spawned stack with a fourth worker joining needs about 65: each worker's pool of 8, its lease
# keeper's 2, its liveness session and two LISTEN sessions; at 50 the audit's joining worker got no
# connection and scale-out-in was never triggered).
# Knobs: PGHA_BASE (/var/lib/orderflow-pg-ha), PGHA_PORT1 (5440), PGHA_PORT2 (5441),
# PGHA_MAX_CONNECTIONS (120), PGHA_PG_BIN (/usr/lib/postgresql/15/bin), PGHA_WAIT (60 s),
# ORDERFLOW_DB_USER / ORDERFLOW_DB_PASSWORD (orderflow/orderflow: created with LOGIN CREATEDB).
# Can also be sourced; the functions are pgha_*.

PGHA_BASE=${PGHA_BASE:-/var/lib/orderflow-pg-ha}
PGHA_PORT1=${PGHA_PORT1:-5440}
PGHA_PORT2=${PGHA_PORT2:-5441}
PGHA_MAX_CONNECTIONS=${PGHA_MAX_CONNECTIONS:-120}
PGHA_PG_BIN=${PGHA_PG_BIN:-/usr/lib/postgresql/15/bin}
PGHA_WAIT=${PGHA_WAIT:-60}
PGHA_SYNC_NAMES="FIRST 1 (ofha1, ofha2)"

pgha_log() { printf '==> [pg-ha] %s\n' "$*" >&2; }
pgha_die() { printf 'error: [pg-ha] %s\n' "$*" >&2; return 1; }
pgha_now() { date +%s.%N; }
pgha_since() { awk -v a="$1" -v b="$(pgha_now)" 'BEGIN { printf "%.2f", b - a }'; }

pgha_port() { if [[ $1 == 1 ]]; then echo "$PGHA_PORT1"; else echo "$PGHA_PORT2"; fi; }
pgha_data() { echo "$PGHA_BASE/n$1"; }
pgha_name() { echo "ofha$1"; }
pgha_other() { echo $((3 - $1)); }
pgha_url() {
    echo "postgres://${1:-postgres}@127.0.0.1:$PGHA_PORT1,127.0.0.1:$PGHA_PORT2/postgres?target_session_attrs=read-write"
}

# As the postgres user, from / (psql/pg_ctl complain about an unreadable cwd).
pgha_as_pg() { (cd / && runuser -u postgres -- "$@"); }
pgha_bin() {
    local tool=$1
    shift
    pgha_as_pg "$PGHA_PG_BIN/$tool" "$@"
}
# pgha_psql N ARGS...: psql on node N over TCP as postgres (trust), unaligned, quiet, fail on error.
pgha_psql() {
    local n=$1
    shift
    PGCONNECT_TIMEOUT=3 PGOPTIONS='-c client_min_messages=warning' pgha_bin psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(pgha_port "$n")" \
        -U postgres -d postgres "$@"
}
pgha_sql() { pgha_psql "$1" -c "$2"; }

pgha_exists() { [[ -f $(pgha_data "$1")/PG_VERSION ]]; }
pgha_ready() { pgha_bin pg_isready -q -h 127.0.0.1 -p "$(pgha_port "$1")"; }
# Postmaster PID of node N, if one runs for its data directory.
pgha_pid() {
    local pid
    pid=$(head -1 "$(pgha_data "$1")/postmaster.pid" 2>/dev/null)
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-D $(pgha_data "$1")" && echo "$pid"
    return 0
}
# primary | standby | down (answering) -- by asking the server.
pgha_role() {
    local r
    r=$(pgha_sql "$1" 'SELECT pg_is_in_recovery()' 2>/dev/null) || { echo down; return 0; }
    if [[ $r == f ]]; then echo primary; else echo standby; fi
}
pgha_primary() {
    local i
    for i in 1 2; do [[ $(pgha_role "$i") == primary ]] && { echo "$i"; return 0; }; done
    return 1
}
pgha_timeline() {
    pgha_bin pg_controldata "$(pgha_data "$1")" 2>/dev/null | awk -F: '/Latest checkpoint.s TimeLineID/ {gsub(/ /, "", $2); print $2}'
}

# ---- configuration -------------------------------------------------------------------------------

# Settings shared by both nodes; they live in postgresql.conf, so copies (basebackup, rewind) carry them.
pgha_write_common_conf() {
    local d
    d=$(pgha_data "$1")
    cat >>"$d/postgresql.conf" <<EOF

# ---- deploy/lib/pg-ha.sh ----
listen_addresses = '127.0.0.1'
max_connections = $PGHA_MAX_CONNECTIONS
shared_buffers = 32MB
unix_socket_directories = '$PGHA_BASE/run'
wal_level = replica
max_wal_senders = 5
wal_keep_size = '256MB'
wal_log_hints = on              # pg_rewind
hot_standby = on
wal_receiver_status_interval = 1s
log_line_prefix = '%m [%p] %q%a '
include_if_exists 'node.conf'   # port and name: rewritten after every copy
EOF
}

# Node-specific settings (pg_basebackup and pg_rewind copy the source's node.conf: rewrite it after)
# and no synchronous_standby_names inherited from the source's postgresql.auto.conf.
pgha_write_node_conf() {
    local n=$1 d
    d=$(pgha_data "$n")
    printf "port = %s\ncluster_name = '%s'   # also the walreceiver's application_name\n" \
        "$(pgha_port "$n")" "$(pgha_name "$n")" >"$d/node.conf"
    [[ -f $d/postgresql.auto.conf ]] && sed -i '/^synchronous_standby_names/d' "$d/postgresql.auto.conf"
    chown postgres:postgres "$d/node.conf"
}

pgha_prepare_base() {
    mkdir -p "$PGHA_BASE/run"
    touch "$PGHA_BASE/n1.log" "$PGHA_BASE/n2.log"
    chown postgres:postgres "$PGHA_BASE" "$PGHA_BASE/run" "$PGHA_BASE/n1.log" "$PGHA_BASE/n2.log"
    chmod 750 "$PGHA_BASE"
}

# ---- start / stop --------------------------------------------------------------------------------

pgha_start() {
    local n=$1
    [[ -n $(pgha_pid "$n") ]] && return 0
    pgha_bin pg_ctl start -D "$(pgha_data "$n")" -l "$PGHA_BASE/n$n.log" -w -t "$PGHA_WAIT" >/dev/null \
        || { pgha_die "node $n did not start (see $PGHA_BASE/n$n.log)"; return 1; }
}

# Wait until no process of node N is left (after a kill -9 of the postmaster its children linger a
# moment; pg_rewind/pg_ctl need them gone). Matches only our cluster_name in the process title.
# A killed postmaster is an orphan of PID 1, which here reaps it only after a while: as long as it
# is a zombie, postgres takes postmaster.pid and the socket lock file for a live server ("lock file
# already exists"). So wait for the reaping (up to 10 s), then drop lock files naming a zombie.
pgha_wait_gone() {
    local n=$1 i pidfile sockfile old pid
    pidfile=$(pgha_data "$n")/postmaster.pid
    sockfile=$PGHA_BASE/run/.s.PGSQL.$(pgha_port "$n").lock
    old=$(head -1 "$pidfile" 2>/dev/null)
    [[ -n $old ]] || old=$(head -1 "$sockfile" 2>/dev/null)
    for ((i = 0; i < 100; i++)); do
        if [[ -z $(pgha_pid "$n") ]] && ! pgrep -u postgres -f "^postgres: $(pgha_name "$n"): " >/dev/null \
            && { [[ -z $old ]] || ! kill -0 "$old" 2>/dev/null; }; then
            return 0
        fi
        sleep 0.1
    done
    for pid in $(pgrep -u postgres -f "^postgres: $(pgha_name "$n"): "); do kill -9 "$pid" 2>/dev/null; done
    if [[ -n $old && $(awk '{print $3}' "/proc/$old/stat" 2>/dev/null) == Z ]]; then
        [[ $(head -1 "$pidfile" 2>/dev/null) == "$old" ]] && rm -f "$pidfile"
        [[ $(head -1 "$sockfile" 2>/dev/null) == "$old" ]] && rm -f "$sockfile"
    fi
    return 0
}

pgha_stop() {
    local n=$1 mode=${2:-fast}
    if [[ -n $(pgha_pid "$n") ]]; then
        pgha_bin pg_ctl stop -D "$(pgha_data "$n")" -m "$mode" -w -t "$PGHA_WAIT" >/dev/null \
            || { local pid; pid=$(pgha_pid "$n"); [[ -n $pid ]] && kill -9 "$pid"; }
    fi
    pgha_wait_gone "$n"
}

# ---- replication ---------------------------------------------------------------------------------

# Wait until primary P streams to the other node with sync_state = sync ($1 = P).
pgha_wait_sync() {
    local p=$1 i state
    for ((i = 0; i < PGHA_WAIT * 5; i++)); do
        state=$(pgha_sql "$p" "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$(pgha_name "$(pgha_other "$p")")' AND state = 'streaming'" 2>/dev/null)
        [[ $state == sync ]] && return 0
        sleep 0.2
    done
    pgha_die "standby of node $p not synchronous after ${PGHA_WAIT}s (state: ${state:-none})"
}

pgha_wait_streaming() {
    local p=$1 i
    for ((i = 0; i < PGHA_WAIT * 5; i++)); do
        [[ $(pgha_sql "$p" "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$(pgha_name "$(pgha_other "$p")")' AND state = 'streaming'" 2>/dev/null) == 1 ]] && return 0
        sleep 0.2
    done
    pgha_die "the standby of node $p does not stream after ${PGHA_WAIT}s"
}

pgha_sync_on() {
    pgha_sql "$1" "ALTER SYSTEM SET synchronous_standby_names = '$PGHA_SYNC_NAMES'" >/dev/null \
        && pgha_sql "$1" 'SELECT pg_reload_conf()' >/dev/null
}
pgha_sync_off() {
    pgha_sql "$1" 'ALTER SYSTEM RESET synchronous_standby_names' >/dev/null \
        && pgha_sql "$1" 'SELECT pg_reload_conf()' >/dev/null
}

# Make node S (stopped or not) a streaming standby of the running primary P: pg_rewind (which also
# runs crash recovery first when S died), else a fresh base backup. Then synchronous replication on.
pgha_attach_standby() {
    local p=$1 s=$2 t0 d how
    t0=$(pgha_now)
    d=$(pgha_data "$s")
    pgha_stop "$s"
    # A freshly promoted primary writes its new timeline into pg_control only at its next
    # checkpoint; before it, pg_rewind reads "same timeline, no rewind required" and the old
    # primary, ahead on the old timeline, can never stream (found by the race audit's
    # pg-promote: every commit then waited for a synchronous standby that never came).
    pgha_sql "$p" 'CHECKPOINT' >/dev/null || { pgha_die "CHECKPOINT on node $p failed"; return 1; }
    if pgha_exists "$s" && [[ -f $d/standby.signal && $(pgha_timeline "$s") == "$(pgha_timeline "$p")" ]]; then
        how="existing standby"
    elif pgha_exists "$s" && pgha_bin pg_rewind -D "$d" -R \
        --source-server="host=127.0.0.1 port=$(pgha_port "$p") user=postgres dbname=postgres" \
        >>"$PGHA_BASE/n$s.log" 2>&1; then
        how="pg_rewind"
    else
        rm -rf "$d"
        pgha_bin pg_basebackup -h 127.0.0.1 -p "$(pgha_port "$p")" -U postgres -D "$d" -R -X stream \
            -c fast >>"$PGHA_BASE/n$s.log" 2>&1 || { pgha_die "pg_basebackup into node $s failed"; return 1; }
        how="pg_basebackup"
    fi
    pgha_write_node_conf "$s"
    pgha_start "$s" || return 1
    # Synchronous only once it streams: before, every commit on the primary would wait for it.
    pgha_wait_streaming "$p" || return 1
    pgha_sync_on "$p" && pgha_wait_sync "$p" || return 1
    pgha_log "node $s is a synchronous standby of node $p ($how, $(pgha_since "$t0")s)"
}

# ---- commands ------------------------------------------------------------------------------------

pgha_up() {
    local t0 p s
    t0=$(pgha_now)
    pgha_prepare_base
    if ! pgha_exists 1 && ! pgha_exists 2; then
        pgha_log "initdb node 1 (port $PGHA_PORT1)"
        pgha_bin initdb -D "$(pgha_data 1)" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null \
            || { pgha_die "initdb failed"; return 1; }
        pgha_write_common_conf 1
        pgha_write_node_conf 1
    fi
    # Which node is (or should be) primary: a running primary; else a non-standby data directory (the
    # highest timeline if both are: never start two primaries); else node 1.
    p=$(pgha_primary) || p=""
    if [[ -z $p ]]; then
        local i best=""
        for i in 1 2; do
            pgha_exists "$i" && [[ ! -f $(pgha_data "$i")/standby.signal ]] || continue
            if [[ -z $best ]] || (($(pgha_timeline "$i") > $(pgha_timeline "$best"))); then best=$i; fi
        done
        p=${best:-1}
        pgha_exists "$p" || { pgha_die "no data directory to start a primary from"; return 1; }
        [[ -z $(pgha_pid "$p") ]] || pgha_stop "$p"   # running but not answering: restart
        pgha_log "starting node $p as primary"
        pgha_start "$p" || return 1
    fi
    s=$(pgha_other "$p")
    ORDERFLOW_DB_USER=${ORDERFLOW_DB_USER:-orderflow}
    ORDERFLOW_DB_PASSWORD=${ORDERFLOW_DB_PASSWORD:-orderflow}
    # synchronous_commit = local: do not wait for a standby that may not be there yet.
    pgha_psql "$p" -v role="$ORDERFLOW_DB_USER" -v pw="$ORDERFLOW_DB_PASSWORD" >/dev/null <<'SQL'
SET synchronous_commit = local;
SELECT format('CREATE ROLE %I', :'role') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN CREATEDB PASSWORD %L', :'role', :'pw') \gexec
SQL
    if [[ $(pgha_role "$s") == standby ]] && pgha_sync_on "$p" && PGHA_WAIT=10 pgha_wait_sync "$p" 2>/dev/null; then
        :
    else
        pgha_attach_standby "$p" "$s" || return 1
    fi
    pgha_log "up after $(pgha_since "$t0")s: primary node $p (:$(pgha_port "$p")), sync standby node $s (:$(pgha_port "$s"))"
    pgha_url
}

pgha_down() {
    local i pid
    for i in 1 2; do pgha_stop "$i" immediate 2>/dev/null; done
    # Leftovers (a postmaster whose pid file is gone): exact data directory on the command line.
    for pid in $(pgrep -u postgres -f "postgres -D $PGHA_BASE/n[12]( |$)"); do kill -9 "$pid" 2>/dev/null; done
    rm -rf "$PGHA_BASE"
    pgha_log "down"
}

pgha_switchover() {
    local p s t0 ckpt
    p=$(pgha_primary) || { pgha_die "no primary"; return 1; }
    s=$(pgha_other "$p")
    pgha_wait_sync "$p" || { pgha_die "standby not in sync: refusing a switchover"; return 1; }
    t0=$(pgha_now)
    pgha_log "switchover: stopping primary node $p (fast)"
    pgha_stop "$p" fast
    ckpt=$(pgha_bin pg_controldata "$(pgha_data "$p")" | awk -F': *' '/^Latest checkpoint location/ {print $2}')
    # The walsender ships everything up to the shutdown checkpoint before the primary exits.
    local i
    for ((i = 0; i < PGHA_WAIT * 10; i++)); do
        [[ $(pgha_sql "$s" "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '$ckpt') > 0") == t ]] && break
        sleep 0.1
    done
    pgha_bin pg_ctl promote -D "$(pgha_data "$s")" -w -t "$PGHA_WAIT" >/dev/null \
        || { pgha_die "promote of node $s failed"; return 1; }
    pgha_log "node $s promoted, read-write after $(pgha_since "$t0")s (shutdown checkpoint $ckpt)"
    pgha_attach_standby "$s" "$p" || return 1
    pgha_log "switchover done after $(pgha_since "$t0")s: primary node $s, sync standby node $p"
}

pgha_failover() {
    local p s pid t0
    p=$(pgha_primary) || { pgha_die "no primary"; return 1; }
    s=$(pgha_other "$p")
    [[ $(pgha_role "$s") == standby ]] || { pgha_die "node $s is not a standby"; return 1; }
    pid=$(pgha_pid "$p")
    t0=$(pgha_now)
    kill -9 "$pid"
    pgha_log "failover: killed -9 primary node $p postmaster (pid $pid)"
    pgha_sql "$s" 'SELECT pg_promote(true, 60)' >/dev/null || { pgha_die "pg_promote on node $s failed"; return 1; }
    pgha_log "node $s promoted after $(pgha_since "$t0")s"
    # No standby any more: drop synchronous replication or every commit would wait forever.
    pgha_sync_off "$s"
    pgha_sql "$s" 'CREATE TABLE IF NOT EXISTS pgha_probe (at timestamptz); INSERT INTO pgha_probe VALUES (now())' >/dev/null \
        && pgha_log "node $s accepts writes after $(pgha_since "$t0")s (asynchronous until \`rejoin\`)"
    pgha_wait_gone "$p"
}

pgha_rejoin() {
    local p
    p=$(pgha_primary) || { pgha_die "no primary"; return 1; }
    pgha_attach_standby "$p" "$(pgha_other "$p")"
}

pgha_status() {
    [[ -d $PGHA_BASE ]] || { echo "pg-ha: not up"; return 0; }
    local i role
    for i in 1 2; do
        role=$(pgha_role "$i")
        printf 'node %s %s :%s %-8s pid=%-7s tli=%-3s %s\n' "$i" "$(pgha_name "$i")" "$(pgha_port "$i")" "$role" \
            "$(pgha_pid "$i")" "$(pgha_timeline "$i")" \
            "$([[ $role == primary ]] && pgha_sql "$i" 'SELECT pg_current_wal_lsn()' 2>/dev/null)$([[ $role == standby ]] && pgha_sql "$i" "SELECT 'replay ' || pg_last_wal_replay_lsn() || ' ' || coalesce((SELECT status FROM pg_stat_wal_receiver), 'no-walreceiver')" 2>/dev/null)"
    done
    local p
    if p=$(pgha_primary); then
        echo "--- pg_stat_replication on node $p (synchronous_standby_names = '$(pgha_sql "$p" 'SHOW synchronous_standby_names')')"
        pgha_psql "$p" -F ' ' -c 'SELECT application_name, state, sync_state, replay_lag FROM pg_stat_replication'
    fi
    echo "--- $(pgha_url)"
}

pgha_main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
        up | down | status | switchover | failover | rejoin) "pgha_$cmd" ;;
        primary) pgha_primary ;;
        url) pgha_url "$@" ;;
        psql)
            [[ ${1:-} == [12] ]] || { pgha_die "psql needs node 1 or 2"; return 1; }
            pgha_psql "$@"
            ;;
        *)
            awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "${BASH_SOURCE[0]}"
            [[ -z $cmd || $cmd == help || $cmd == -h ]]
            ;;
    esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    [[ $EUID -eq 0 ]] || { echo "error: run as root" >&2; exit 1; }
    set -o pipefail
    pgha_main "$@"
fi

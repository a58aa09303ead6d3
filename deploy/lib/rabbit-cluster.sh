#!/usr/bin/env bash
# shellcheck shell=bash
# A throwaway three-node RabbitMQ cluster (quorum-queue / failover tests), running BESIDE the
# machine's own node rabbit@localhost:5672, which this script never touches (it does not read
# /etc/rabbitmq, does not use the machine's epmd on 4369, never stops that node).
#
#   deploy/lib/rabbit-cluster.sh up            start the nodes (creating them) and cluster them
#   deploy/lib/rabbit-cluster.sh down          stop everything, delete data dirs, namespaces, links
#   deploy/lib/rabbit-cluster.sh status        nodes, pids, RSS, cluster membership, queues
#   deploy/lib/rabbit-cluster.sh kill N        kill -9 node N's beam.smp (crash)
#   deploy/lib/rabbit-cluster.sh start N       (re)start node N; it rejoins the cluster by itself
#   deploy/lib/rabbit-cluster.sh cut N         partition node N (netns mode: veth down;
#                                              plain mode: SIGSTOP, i.e. a frozen node)
#   deploy/lib/rabbit-cluster.sh heal N        undo `cut N`, wait until the cluster is whole again
#                                              (restarts node N when it does not recover by itself)
#   deploy/lib/rabbit-cluster.sh verify [Q]    declare quorum queue Q (x-quorum-initial-group-size
#                                              = node count) and print its quorum_status
#   deploy/lib/rabbit-cluster.sh urls          print the AMQP URLs, one per line
#   deploy/lib/rabbit-cluster.sh ctl N TOOL ARGS...   run rabbitmqctl/rabbitmq-queues/... against node N
#
# Modes (chosen at `up`, remembered until `down`):
#   RC_MODE=plain (default)  nodes of1@localhost..ofN@localhost on 127.0.0.1, AMQP 5681.., dist
#                            25681..; `cut` can only freeze a node (SIGSTOP), not partition it.
#   RC_MODE=netns            every node in its own network namespace ofrc1..ofrcN, joined by the
#                            bridge ofrc-br (10.77.0.254/24 in the root namespace); node i is
#                            ofi@10.77.0.i (long names), AMQP on 10.77.0.i:568i; `cut` sets the
#                            node's veth down, a real network partition.
# Knobs: RC_NODES (3), RC_BASE (/var/lib/orderflow-rabbit-cluster), RC_AMQP_BASE (5680: node i
# listens on RC_AMQP_BASE+i), RC_DIST_BASE (25680), RC_EPMD_PORT (4370: a private epmd),
# RC_NET (10.77.0), RC_NET_TICKTIME (10 s: partition detection in ~10-15 s instead of ~60 s),
# RC_PARTITION_HANDLING (pause_minority), RC_WAIT (120 s: node boot), RC_HEAL_WAIT (20 s),
# RC_HEAL_REPAIR (1). Runtime data: RC_BASE/ofN/{rabbitmq-env.conf,rabbitmq.conf,mnesia,log}.
# All nodes use the machine's Erlang cookie (/var/lib/rabbitmq/.erlang.cookie), read-only.
# guest/guest may connect from anywhere (loopback_users = none): the listeners are only on
# 127.0.0.1 or on addresses inside the namespaces this script creates.
# Can also be sourced; the functions are rc_*.

RC_NODES=${RC_NODES:-3}
RC_BASE=${RC_BASE:-/var/lib/orderflow-rabbit-cluster}
RC_AMQP_BASE=${RC_AMQP_BASE:-5680}
RC_DIST_BASE=${RC_DIST_BASE:-25680}
RC_EPMD_PORT=${RC_EPMD_PORT:-4370}
RC_NET=${RC_NET:-10.77.0}
RC_NET_TICKTIME=${RC_NET_TICKTIME:-10}
RC_PARTITION_HANDLING=${RC_PARTITION_HANDLING:-pause_minority}
RC_WAIT=${RC_WAIT:-120}
RC_BRIDGE=ofrc-br
RC_NS_PREFIX=ofrc
RC_RMQ_BIN=/usr/lib/rabbitmq/bin
RC_COOKIE_HOME=/var/lib/rabbitmq

rc_log() { printf '==> [rabbit-cluster] %s\n' "$*" >&2; }
rc_die() { printf 'error: [rabbit-cluster] %s\n' "$*" >&2; return 1; }
rc_now() { date +%s.%N; }
rc_since() { awk -v a="$1" -v b="$(rc_now)" 'BEGIN { printf "%.1f", b - a }'; }

# Mode: what `up` recorded, else RC_MODE, else plain.
rc_mode() {
    if [[ -f $RC_BASE/mode ]]; then cat "$RC_BASE/mode"; else echo "${RC_MODE:-plain}"; fi
}
rc_dir() { echo "$RC_BASE/of$1"; }
rc_ns() { echo "$RC_NS_PREFIX$1"; }
rc_amqp_port() { echo $((RC_AMQP_BASE + $1)); }
rc_dist_port() { echo $((RC_DIST_BASE + $1)); }
rc_host() { if [[ $(rc_mode) == netns ]]; then echo "$RC_NET.$1"; else echo 127.0.0.1; fi; }
rc_nodename() {
    if [[ $(rc_mode) == netns ]]; then echo "of$1@$RC_NET.$1"; else echo "of$1@localhost"; fi
}
rc_url() { echo "amqp://guest:guest@$(rc_host "$1"):$(rc_amqp_port "$1")/%2f"; }
rc_check_n() {
    if [[ $1 =~ ^[0-9]+$ ]] && ((1 <= $1 && $1 <= RC_NODES)); then return 0; fi
    rc_die "node must be 1..$RC_NODES, got '$1'"
}

# Run in node N's network namespace (netns mode) or right here (plain mode).
rc_in_ns() {
    local n=$1
    shift
    if [[ $(rc_mode) == netns ]]; then ip netns exec "$(rc_ns "$n")" "$@"; else "$@"; fi
}

# rc_as_rabbit N CMD...: CMD as the rabbitmq user, in a clean environment: node N's env file, the
# machine's cookie (HOME), never /etc/rabbitmq/rabbitmq-env.conf (which pins NODENAME and ERL_FLAGS
# for rabbit@localhost). Runs in node N's namespace when RC_IN_NS=1 (netns mode).
rc_as_rabbit() {
    local n=$1 prefix=()
    shift
    [[ ${RC_IN_NS:-0} == 1 && $(rc_mode) == netns ]] && prefix=(ip netns exec "$(rc_ns "$n")")
    (cd / && timeout "${RC_CTL_TIMEOUT:-150}" "${prefix[@]}" runuser -u rabbitmq -- \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        HOME="$RC_COOKIE_HOME" ERL_EPMD_PORT="$RC_EPMD_PORT" \
        RABBITMQ_CONF_ENV_FILE="$(rc_dir "$n")/rabbitmq-env.conf" "$@")
}

# rc_ctl N TOOL ARGS...: a RabbitMQ CLI tool aimed at node N. In netns mode it runs inside node N's
# namespace: with long names the CLI calls itself rabbitmqcli-PID-ofN@<node N's host>, and the other
# nodes (which answer e.g. list_queues directly to the CLI) must find it there.
rc_ctl() {
    local n=$1 tool=$2
    shift 2
    RC_IN_NS=1 rc_as_rabbit "$n" "$RC_RMQ_BIN/$tool" -n "$(rc_nodename "$n")" "$@"
}

# PID of node N's beam.smp. RabbitMQ 3.10 starts distribution after boot, so the node name is not on
# the command line; a beam is node N's when its environment carries node N's env file.
rc_beam_env_has() { { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | grep -q "^RABBITMQ_CONF_ENV_FILE=$2"; }
rc_pid() {
    local n=$1 pid
    for pid in $(cat "$(rc_dir "$n")/pid" 2>/dev/null) $(pgrep -x beam.smp); do
        if rc_beam_env_has "$pid" "$(rc_dir "$n")/rabbitmq-env.conf\$"; then
            echo "$pid"
            return 0
        fi
    done
    return 0
}

# kill -9 PIDs and wait (up to 5 s) until they are gone (PID 1 here reaps orphans with some delay).
rc_kill_wait() {
    local pid i alive
    for pid in "$@"; do kill -9 "$pid" 2>/dev/null; done
    for ((i = 0; i < 50; i++)); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
}

# ---- network (netns mode) ------------------------------------------------------------------------

rc_net_up() {
    if ! ip link show "$RC_BRIDGE" >/dev/null 2>&1; then
        ip link add "$RC_BRIDGE" type bridge
        ip addr add "$RC_NET.254/24" dev "$RC_BRIDGE"
    fi
    ip link set "$RC_BRIDGE" up
    local i ns
    for ((i = 1; i <= RC_NODES; i++)); do
        ns=$(rc_ns "$i")
        ip netns list | grep -qw "^$ns" || ip netns add "$ns"
        ip -n "$ns" link set lo up
        if ! ip link show "$ns-h" >/dev/null 2>&1; then
            ip link add "$ns-h" type veth peer name "$ns-n" netns "$ns"
            ip link set "$ns-h" master "$RC_BRIDGE"
            ip -n "$ns" addr add "$RC_NET.$i/24" dev "$ns-n"
        fi
        ip -n "$ns" link set "$ns-n" up
        ip link set "$ns-h" up
    done
}

rc_net_down() {
    local i ns pid
    for ((i = 1; i <= RC_NODES; i++)); do
        ns=$(rc_ns "$i")
        if ip netns list | grep -qw "^$ns"; then
            # Anything still running in our namespace is ours (epmd, a stray beam).
            # shellcheck disable=SC2046 # one word per pid
            rc_kill_wait $(ip netns pids "$ns")
            ip netns del "$ns"
        fi
        ip link del "$ns-h" 2>/dev/null || true
    done
    ip link del "$RC_BRIDGE" 2>/dev/null || true
}

# ---- epmd ----------------------------------------------------------------------------------------

# A private epmd on RC_EPMD_PORT: 127.0.0.1 in the root namespace (CLI tools, plain-mode nodes) and
# one per namespace (netns mode). Started explicitly so that it binds only where we say.
rc_epmd_up() {
    if ! (ss -ltn "sport = :$RC_EPMD_PORT" | grep -q LISTEN); then
        runuser -u rabbitmq -- epmd -daemon -port "$RC_EPMD_PORT" -address 127.0.0.1
    fi
    if [[ $(rc_mode) == netns ]]; then
        local i
        for ((i = 1; i <= RC_NODES; i++)); do
            rc_in_ns "$i" ss -ltn "sport = :$RC_EPMD_PORT" | grep -q LISTEN \
                || rc_in_ns "$i" runuser -u rabbitmq -- epmd -daemon -port "$RC_EPMD_PORT"
        done
    fi
}

rc_epmd_down() {
    # Only our epmd: the one listening on RC_EPMD_PORT in the root namespace (4369 is the machine's).
    local pid pids=()
    for pid in $(ss -ltnpH "sport = :$RC_EPMD_PORT" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
        grep -q epmd "/proc/$pid/comm" 2>/dev/null && pids+=("$pid")
    done
    ((${#pids[@]} == 0)) || rc_kill_wait "${pids[@]}"
    return 0
}

# ---- nodes ---------------------------------------------------------------------------------------

rc_write_node_files() {
    local n=$1 d listen use_if longname
    d=$(rc_dir "$n")
    mkdir -p "$d/mnesia" "$d/log"
    if [[ $(rc_mode) == netns ]]; then
        listen="$RC_NET.$n"
        use_if="{${RC_NET//./,},$n}"
        longname=true
    else
        listen=127.0.0.1
        use_if="{127,0,0,1}"
        longname=false
    fi
    cat >"$d/rabbitmq-env.conf" <<EOF
# written by deploy/lib/rabbit-cluster.sh (node $n, mode $(rc_mode))
NODENAME=$(rc_nodename "$n")
USE_LONGNAME=$longname
NODE_IP_ADDRESS=$listen
NODE_PORT=$(rc_amqp_port "$n")
DIST_PORT=$(rc_dist_port "$n")
CONFIG_FILE=$d/rabbitmq.conf
ADVANCED_CONFIG_FILE=$d/advanced.config
ENABLED_PLUGINS_FILE=$d/enabled_plugins
MNESIA_BASE=$d/mnesia
LOG_BASE=$d/log
PID_FILE=$d/pid
ERL_EPMD_PORT=$RC_EPMD_PORT
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface $use_if -kernel net_ticktime $RC_NET_TICKTIME"
EOF
    cat >"$d/rabbitmq.conf" <<EOF
# written by deploy/lib/rabbit-cluster.sh
listeners.tcp.1 = $listen:$(rc_amqp_port "$n")
loopback_users = none
cluster_partition_handling = $RC_PARTITION_HANDLING
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 100MB
log.file.level = info
log.console = false
EOF
    echo '[].' >"$d/enabled_plugins"
    echo '[].' >"$d/advanced.config"
    chown -R rabbitmq:rabbitmq "$d"
    chmod 750 "$d"
}

rc_running() { rc_ctl "$1" rabbitmq-diagnostics -q ping -t 5 >/dev/null 2>&1; }

rc_start_node() {
    local n=$1
    if [[ -n $(rc_pid "$n") ]]; then
        return 0
    fi
    rc_write_node_files "$n"
    rc_log "starting $(rc_nodename "$n") (AMQP $(rc_host "$n"):$(rc_amqp_port "$n"))"
    RC_IN_NS=1 rc_as_rabbit "$n" "$RC_RMQ_BIN/rabbitmq-server" -detached \
        >>"$(rc_dir "$n")/log/start.out" 2>&1 || { rc_die "could not start $(rc_nodename "$n")"; return 1; }
}

# Wait until node N has booted (ping answers, then await_startup).
rc_wait_node() {
    local n=$1 start
    start=$(date +%s)
    until rc_running "$n"; do
        if (($(date +%s) - start >= RC_WAIT)); then
            rc_die "$(rc_nodename "$n") did not answer within ${RC_WAIT}s (see $(rc_dir "$n")/log)"
            return 1
        fi
        if [[ -z $(rc_pid "$n") ]] && (($(date +%s) - start > 15)); then
            rc_die "$(rc_nodename "$n") is not running (see $(rc_dir "$n")/log)"
            return 1
        fi
        sleep 1
    done
    rc_ctl "$n" rabbitmqctl -q await_startup -t "$RC_WAIT" >/dev/null
}

# Has node N joined node 1's cluster? (Node N's own view: a node that was not joined lists only
# itself; asking node N keeps this independent of node 1's health.)
rc_is_clustered() {
    local n=$1
    ((n == 1)) && return 0
    rc_ctl "$n" rabbitmqctl -q cluster_status --formatter json 2>/dev/null \
        | grep -o '"disk_nodes":\[[^]]*\]' | grep -q "\"$(rc_nodename 1)\""
}

rc_join() {
    local n=$1
    rc_is_clustered "$n" && return 0
    rc_log "joining $(rc_nodename "$n") to $(rc_nodename 1)"
    rc_ctl "$n" rabbitmqctl -q stop_app
    rc_ctl "$n" rabbitmqctl -q join_cluster "$(rc_nodename 1)"
    rc_ctl "$n" rabbitmqctl -q start_app
}

rc_up() {
    local t0 i mode
    t0=$(rc_now)
    if [[ -f $RC_BASE/mode && -n ${RC_MODE:-} && $RC_MODE != "$(cat "$RC_BASE/mode")" ]]; then
        rc_die "cluster exists in mode $(cat "$RC_BASE/mode"); run down first to switch to $RC_MODE"
        return 1
    fi
    mode=$(rc_mode)
    [[ $mode == plain || $mode == netns ]] || { rc_die "RC_MODE must be plain or netns"; return 1; }
    mkdir -p "$RC_BASE"
    echo "$mode" >"$RC_BASE/mode"
    chown rabbitmq:rabbitmq "$RC_BASE"
    [[ $mode == netns ]] && rc_net_up
    rc_epmd_up
    for ((i = 1; i <= RC_NODES; i++)); do rc_start_node "$i" || return 1; done
    for ((i = 1; i <= RC_NODES; i++)); do rc_wait_node "$i" || return 1; done
    rc_log "all $RC_NODES nodes booted after $(rc_since "$t0")s"
    for ((i = 2; i <= RC_NODES; i++)); do rc_join "$i" || return 1; done
    rc_log "cluster up after $(rc_since "$t0")s"
    rc_urls
}

rc_stop_node() {
    local n=$1 pid
    pid=$(rc_pid "$n")
    [[ -n $pid ]] || return 0
    rc_log "stopping $(rc_nodename "$n")"
    RC_CTL_TIMEOUT=60 rc_ctl "$n" rabbitmqctl -q stop >/dev/null 2>&1 || true
    local i
    for ((i = 0; i < 20; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
}

rc_down() {
    local i
    if [[ -f $RC_BASE/mode ]]; then
        # Heal first: a SIGSTOPped node ignores `stop`.
        for ((i = 1; i <= RC_NODES; i++)); do RC_HEAL_REPAIR=0 rc_heal "$i" >/dev/null 2>&1 || true; done
        # Stop in parallel: the last node of a cluster waits for its peers otherwise.
        for ((i = 1; i <= RC_NODES; i++)); do rc_stop_node "$i" & done
        wait
    fi
    # Leftovers (any beam started with an env file under RC_BASE).
    local pid pids=()
    for pid in $(pgrep -x beam.smp); do
        rc_beam_env_has "$pid" "$RC_BASE/" && pids+=("$pid")
    done
    ((${#pids[@]} == 0)) || rc_kill_wait "${pids[@]}"
    rc_epmd_down
    rc_net_down
    rm -rf "$RC_BASE"
    rc_log "down"
}

# ---- failure injection ---------------------------------------------------------------------------

rc_kill() {
    local n=$1 pid
    pid=$(rc_pid "$n")
    [[ -n $pid ]] || { rc_log "$(rc_nodename "$n") is not running"; return 0; }
    kill -CONT "$pid" 2>/dev/null
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do sleep 0.1; done
    rc_log "killed -9 $(rc_nodename "$n") (pid $pid)"
}

rc_start() {
    local n=$1 t0
    t0=$(rc_now)
    rc_epmd_up
    rc_start_node "$n" && rc_wait_node "$n" || return 1
    if rc_is_clustered "$n"; then
        rc_log "$(rc_nodename "$n") running and clustered after $(rc_since "$t0")s"
    else
        rc_join "$n"
    fi
}

rc_cut() {
    local n=$1
    if [[ $(rc_mode) == netns ]]; then
        ip link set "$(rc_ns "$n")-h" down
        rc_log "cut $(rc_nodename "$n") off the network ($(rc_ns "$n")-h down)"
    else
        local pid
        pid=$(rc_pid "$n")
        [[ -n $pid ]] || { rc_die "$(rc_nodename "$n") not running"; return 1; }
        kill -STOP "$pid"
        rc_log "froze $(rc_nodename "$n") (SIGSTOP pid $pid; plain mode cannot partition 127.0.0.1)"
    fi
}

# True when node N runs its app and sees all nodes running and no partition.
rc_whole() {
    local n=$1 json i
    RC_WHY="rabbit app not running on $(rc_nodename "$n")"
    rc_ctl "$n" rabbitmq-diagnostics -q check_running >/dev/null 2>&1 || return 1
    json=$(rc_ctl "$n" rabbitmqctl -q cluster_status --formatter json 2>/dev/null) || return 1
    RC_WHY=$(grep -o '"\(running_nodes\|partitions\)":[^]]*\]' <<<"$json" | tr '\n' ' ')
    grep -q '"partitions":{}' <<<"$json" || return 1
    for ((i = 1; i <= RC_NODES; i++)); do
        grep -o '"running_nodes":\[[^]]*\]' <<<"$json" | grep -q "\"$(rc_nodename "$i")\"" || return 1
    done
}

# Undo `cut N`, then wait (up to RC_HEAL_WAIT, 20 s) for the cluster to be whole again. Usually it
# is within seconds (netns mode: pause_minority restarts the isolated node's app by itself). Two
# ways it is not, seen here: a node that was frozen (plain mode) leaves Mnesia "partitioned"
# (inconsistent_database, which pause_minority never clears); and the paused node's reboot hangs in
# global:sync for minutes ("Global hang workaround" in its log: RabbitMQ 3.10.8's workaround does
# not work on Erlang/OTP >= 25.1, rabbitmq-server#6034). Then node N is restarted (stop, else
# kill -9, and start; it rejoins from its data dir). RC_HEAL_REPAIR=0: only undo the cut.
rc_heal() {
    local n=$1 t0
    t0=$(rc_now)
    if [[ $(rc_mode) == netns ]]; then
        ip link set "$(rc_ns "$n")-h" up
        rc_log "healed $(rc_nodename "$n") ($(rc_ns "$n")-h up)"
    else
        local pid
        pid=$(rc_pid "$n")
        [[ -n $pid ]] || return 0
        kill -CONT "$pid" && rc_log "thawed $(rc_nodename "$n") (SIGCONT pid $pid)"
    fi
    [[ ${RC_HEAL_REPAIR:-1} == 1 ]] || return 0
    local deadline=$(($(date +%s) + ${RC_HEAL_WAIT:-20}))
    # A few seconds first: right after the cut ends the nodes have not noticed anything yet.
    sleep 3
    while (($(date +%s) < deadline)); do
        if rc_whole "$n"; then
            rc_log "cluster whole again after $(rc_since "$t0")s"
            return 0
        fi
        # A recorded Mnesia partition does not go away by itself under pause_minority.
        [[ ${RC_WHY:-} == *'"partitions":{"'* ]] && break
        sleep 1
    done
    rc_log "$(rc_nodename "$n") not back in the cluster after $(rc_since "$t0")s (${RC_WHY:-}): restarting it"
    if [[ ${RC_WHY:-} == *'"partitions":{"'* ]]; then
        # App running, Mnesia partitioned: restarting the app is enough.
        RC_CTL_TIMEOUT=30 rc_ctl "$n" rabbitmqctl -q stop_app >/dev/null 2>&1
        RC_CTL_TIMEOUT=60 rc_ctl "$n" rabbitmqctl -q start_app >/dev/null 2>&1
    fi
    if ! rc_whole "$n"; then
        # Boot hung (or the app restart did not help): a new VM.
        rc_kill "$n" 2>/dev/null
        rc_start "$n" || return 1
    fi
    if rc_whole "$n"; then rc_log "cluster whole again after $(rc_since "$t0")s"; else
        rc_die "$(rc_nodename "$n") still not whole: ${RC_WHY:-}"
    fi
}

# ---- inspection ----------------------------------------------------------------------------------

rc_urls() {
    local i
    for ((i = 1; i <= RC_NODES; i++)); do rc_url "$i"; done
}

# First node whose rabbit app runs (for cluster-wide queries).
rc_any_running() {
    local i
    for ((i = 1; i <= RC_NODES; i++)); do
        [[ -n $(rc_pid "$i") ]] && rc_ctl "$i" rabbitmq-diagnostics -q check_running >/dev/null 2>&1 \
            && { echo "$i"; return 0; }
    done
    return 1
}

rc_status() {
    [[ -f $RC_BASE/mode ]] || { echo "rabbit-cluster: not up"; return 0; }
    local i pid rss state
    echo "mode: $(rc_mode)"
    for ((i = 1; i <= RC_NODES; i++)); do
        pid=$(rc_pid "$i")
        rss=-
        state=down
        if [[ -n $pid ]]; then
            rss="$(($(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024))MiB"
            state=$(awk '{print $3}' "/proc/$pid/stat")
            [[ $state == T ]] && state=frozen || state=up
            if [[ $(rc_mode) == netns ]] && ip link show "$(rc_ns "$i")-h" | grep -q 'state DOWN'; then
                state="$state,cut"
            fi
        fi
        printf '%-16s %-7s pid=%-7s rss=%-7s %s\n' "$(rc_nodename "$i")" "$state" "${pid:--}" "$rss" "$(rc_url "$i")"
    done
    local n
    n=$(rc_any_running) || { echo "no node answers"; return 0; }
    echo "--- cluster_status (asked $(rc_nodename "$n"))"
    rc_ctl "$n" rabbitmqctl -q cluster_status --formatter json 2>/dev/null \
        | grep -o '"\(disk_nodes\|running_nodes\|partitions\)":[^]]*\]' || true
    echo "--- queues"
    rc_ctl "$n" rabbitmqctl -q list_queues name type leader members online messages 2>/dev/null || true
}

# Declare a quorum queue (durable, x-quorum-initial-group-size = RC_NODES) without an AMQP client,
# then show its Raft members.
rc_verify() {
    local q=${1:-rc-verify} n
    n=$(rc_any_running) || { rc_die "no node answers"; return 1; }
    rc_ctl "$n" rabbitmqctl -q eval "
        Q = rabbit_misc:r(<<\"/\">>, queue, <<\"$q\">>),
        Args = [{<<\"x-queue-type\">>, longstr, <<\"quorum\">>},
                {<<\"x-quorum-initial-group-size\">>, long, $RC_NODES}],
        case rabbit_amqqueue:declare(Q, true, false, Args, none, <<\"rabbit-cluster.sh\">>) of
            {R, _} -> R;
            Other -> Other
        end." || return 1
    rc_ctl "$n" rabbitmq-queues -q quorum_status "$q" --formatter json
    echo
}

rc_main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
        up) rc_up ;;
        down) rc_down ;;
        status) rc_status ;;
        urls) rc_urls ;;
        verify) rc_verify "$@" ;;
        kill | start | cut | heal)
            rc_check_n "${1:-}" || return 1
            [[ -f $RC_BASE/mode ]] || { rc_die "not up"; return 1; }
            "rc_$cmd" "$1"
            ;;
        ctl)
            rc_check_n "${1:-}" || return 1
            rc_ctl "$@"
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
    rc_main "$@"
fi

#!/usr/bin/env bash
# Three memcachedlite servers behind twemproxy (nutcracker), all on 127.0.0.1.
#
#   examples/cluster/run.sh [CONFIG]      # CONFIG: examples/cluster/nutcracker.yml
#
# The servers' ports are the ones CONFIG lists; each server keeps its data in
# $CLUSTER_DATA/<name>.txt (default ./cluster-data). Where this script may use
# at least as many CPUs as there are servers, each server is pinned to a CPU
# of its own (mcl serve --cpu N); with fewer, none is pinned and the OS shares
# the CPUs among them. Ctrl-C (or SIGTERM) stops the proxy and the servers;
# the servers flush their data files first.
#
# Environment: MCL (how to run mcl, default "mcl"; e.g. "python3 -m memcachedlite"),
# NUTCRACKER (the binary), CLUSTER_DATA, CLUSTER_STATS_PORT (nutcracker's
# stats port, default 22222, on 127.0.0.1).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
config=${1:-$here/nutcracker.yml}
data=${CLUSTER_DATA:-cluster-data}
stats_port=${CLUSTER_STATS_PORT:-22222}
read -r -a mcl <<<"${MCL:-mcl}"
nutcracker=${NUTCRACKER:-$(command -v nutcracker || echo /usr/sbin/nutcracker)}

if [ ! -x "$nutcracker" ]; then
    echo "run.sh: nutcracker (twemproxy) is not installed: apt-get install nutcracker" >&2
    exit 1
fi
if ! problem=$("$nutcracker" --test-conf --conf-file="$config" 2>&1); then
    echo "$problem" >&2
    exit 1
fi

# "   - 127.0.0.1:9901:1 mcl1" -> "127.0.0.1 9901 mcl1"
servers=$(sed -n 's/^[[:space:]]*-[[:space:]]*\([0-9.]*\):\([0-9]*\):[0-9]*[[:space:]]*\([^[:space:]#]*\).*/\1 \2 \3/p' "$config")
listen=$(sed -n 's/^[[:space:]]*listen:[[:space:]]*\([^[:space:]#]*\).*/\1/p' "$config" | head -n 1)
if [ -z "$servers" ] || [ -z "$listen" ]; then
    echo "run.sh: no listen address or servers found in $config" >&2
    exit 1
fi
mkdir -p "$data"

# The CPUs this script may use ("0-3,6" in /proc -> 0 1 2 3 6), none where
# /proc does not say.
cpus=()
allowed=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status 2>/dev/null || true)
for range in ${allowed//,/ }; do
    for ((cpu = ${range%-*}; cpu <= ${range#*-}; cpu++)); do cpus+=("$cpu"); done
done
count=$(wc -l <<<"$servers")
if [ "${#cpus[@]}" -ge "$count" ]; then
    echo "run.sh: each server on a CPU of its own: ${cpus[*]:0:$count}" >&2
else
    echo "run.sh: $count servers, ${#cpus[@]} CPUs: none pinned" >&2
    cpus=()
fi

pids=()
stop() {
    trap - INT TERM EXIT
    if [ ${#pids[@]} -gt 0 ]; then
        echo "run.sh: stopping nutcracker and the servers" >&2
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

n=0
while read -r host port name; do
    name=${name:-$port}
    pin=()
    if [ ${#cpus[@]} -gt 0 ]; then pin=(--cpu "${cpus[$n]}"); fi
    "${mcl[@]}" serve --host "$host" --port "$port" --data-file "$data/$name.txt" ${pin[@]+"${pin[@]}"} 2>>"$data/$name.log" &
    pids+=($!)
    n=$((n + 1))
done <<<"$servers"

# Start the proxy once every server answers, so its first requests find them.
expected=$count
for attempt in $(seq 200); do
    for pid in "${pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: a server did not start; see the logs in $data" >&2
            exit 1
        fi
    done
    up=0
    while read -r host port name; do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then up=$((up + 1)); fi
    done <<<"$servers"
    [ "$up" -eq "$expected" ] && break
    if [ "$attempt" -eq 200 ]; then
        echo "run.sh: the servers did not start listening within 20 s; see the logs in $data" >&2
        exit 1
    fi
    sleep 0.1
done

"$nutcracker" --conf-file="$config" --stats-addr=127.0.0.1 --stats-port="$stats_port" \
    --output="$data/nutcracker.log" &
pids+=($!)

echo "run.sh: nutcracker on $listen in front of:" $(while read -r host port name; do echo "$name=$host:$port"; done <<<"$servers") >&2
echo "run.sh: try: mcl --server $listen set greeting hello; Ctrl-C stops everything" >&2

# Until Ctrl-C, or until one of them exits on its own (then stop the rest).
wait -n || true
echo "run.sh: a process of the cluster exited; see the logs in $data" >&2
exit 1

#!/usr/bin/env bash
# Runs the local seven-node Tally cluster (cluster-config/local) from a release build.
#
#   scripts/cluster.sh up          build, start every replica not running, wait until it serves
#   scripts/cluster.sh down        stop every replica (SIGTERM, then SIGKILL after 10 s)
#   scripts/cluster.sh status      one line per replica: process, readiness, role, term, applied
#   scripts/cluster.sh kill N      SIGKILL replica N (a crash, for drills)
#   scripts/cluster.sh restart N   start replica N again and wait until it is ready
#   scripts/cluster.sh logs N      follow replica N's log
#
# State (data directories, logs, pid files) lives under .tally/local in the repository.
# TALLY_NODE_BINARY runs another tally-node build instead of building one (scripts/bench-alternate.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONFIGS="$ROOT/cluster-config/local"
STATE="$ROOT/.tally/local"
BINARY=${TALLY_NODE_BINARY:-$ROOT/target/release/tally-node}
NODES=(1 2 3 4 5 6 7)
READY_TIMEOUT_SECONDS=${TALLY_READY_TIMEOUT_SECONDS:-60}

die() { echo "cluster.sh: $*" >&2; exit 1; }

pid_file() { echo "$STATE/node-$1.pid"; }
log_file() { echo "$STATE/node-$1.log"; }
metrics_port() { echo $((9100 + $1)); }

running_pid() {
  local file; file=$(pid_file "$1")
  [[ -f $file ]] || return 1
  local pid; pid=$(<"$file")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# A plain HTTP GET over bash's /dev/tcp: prints "status body", or nothing when unreachable.
http_get() {
  local port=$1 path=$2 response
  exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3
  response=$(timeout 2 cat <&3 || true)
  exec 3<&- 3>&-
  local status; status=$(head -n1 <<<"$response" | awk '{print $2}')
  echo "$status $(sed -n '/^\r*$/,$p' <<<"$response" | tr -d '\r' | sed '/^$/d' | tr '\n' ' ')"
}

metric() {
  local port=$1 name=$2
  http_get "$port" /metrics | tr ' ' '\n' | grep -A1 -x "$name" | tail -n1
}

check_node() {
  [[ $1 =~ ^[1-7]$ ]] || die "replica must be one of ${NODES[*]}, not '$1'"
}

build() {
  if [[ -n ${TALLY_NODE_BINARY:-} ]]; then
    [[ -x $BINARY ]] || die "TALLY_NODE_BINARY=$BINARY is not an executable"
    return
  fi
  echo "Building tally-node (release)..."
  (cd "$ROOT" && cargo build --release --locked -p tally-node --bin tally-node)
}

# A new cluster: no replica has a data directory yet (identity.toml is its first file).
new_cluster() {
  local node
  for node in "${NODES[@]}"; do
    [[ -e $STATE/data-$node/identity.toml ]] && return 1
  done
  return 0
}

# start_node N [--bootstrap]
start_node() {
  local node=$1 bootstrap=${2:-}
  if running_pid "$node" >/dev/null; then
    echo "replica $node is already running (pid $(running_pid "$node"))"
    return
  fi
  mkdir -p "$STATE"
  # Its own session: the replica outlives this script and the terminal that ran it.
  cd "$ROOT"
  setsid "$BINARY" --config "$CONFIGS/node-$node.toml" $bootstrap >>"$(log_file "$node")" 2>&1 </dev/null &
  echo $! >"$(pid_file "$node")"
  echo "replica $node started (pid $!, log $(log_file "$node"))"
}

wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT_SECONDS)) node
  for node in "$@"; do
    until [[ $(http_get "$(metrics_port "$node")" /ready 2>/dev/null | cut -d' ' -f1) == 200 ]]; do
      running_pid "$node" >/dev/null || die "replica $node exited; see $(log_file "$node")"
      ((SECONDS < deadline)) || die "replica $node not ready after ${READY_TIMEOUT_SECONDS}s; see $(log_file "$node")"
      sleep 0.2
    done
  done
  echo "ready: replicas $* serve requests (a leader is elected and they are caught up)"
}

status() {
  printf '%-8s %-8s %-10s %-8s %-6s %s\n' REPLICA PID READY LEADER TERM APPLIED
  local node
  for node in "${NODES[@]}"; do
    local pid ready port leader term applied
    pid=$(running_pid "$node" || echo "-")
    port=$(metrics_port "$node")
    if [[ $pid == "-" ]]; then
      printf '%-8s %-8s %-10s %-8s %-6s %s\n' "$node" "down" "-" "-" "-" "-"
      continue
    fi
    ready=$(http_get "$port" /ready | cut -d' ' -f1)
    [[ $ready == 200 ]] && ready=yes || ready=no
    leader=$(metric "$port" tally_raft_is_leader)
    [[ $leader == 1 ]] && leader=yes || leader=no
    term=$(metric "$port" tally_raft_term)
    applied=$(metric "$port" tally_raft_applied_index)
    printf '%-8s %-8s %-10s %-8s %-6s %s\n' "$node" "$pid" "$ready" "$leader" "${term:--}" "${applied:--}"
  done
}

stop_all() {
  local node pid
  for node in "${NODES[@]}"; do
    pid=$(running_pid "$node") || continue
    kill -TERM "$pid"
  done
  local deadline=$((SECONDS + 10))
  for node in "${NODES[@]}"; do
    pid=$(running_pid "$node") || { rm -f "$(pid_file "$node")"; continue; }
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$(pid_file "$node")"
  done
  echo "cluster stopped (data kept in $STATE; remove it for a fresh cluster)"
}

command=${1:-}
case $command in
  up)
    build
    # Bootstrapping is explicit and happens once: replica 1 starts the cluster only when no data
    # directory exists. A replica that lost its data is never bootstrapped again; its peers refuse
    # it, and it must come back under a new id (README, "Replacing a replica").
    bootstrap=""
    if new_cluster; then bootstrap="--bootstrap"; echo "new cluster: replica 1 bootstraps it"; fi
    # Builds from before --bootstrap existed (compared in benchmarks) bootstrapped on their own.
    "$BINARY" --help | grep -q -- --bootstrap || bootstrap=""
    for node in "${NODES[@]}"; do
      if [[ $node == 1 ]]; then start_node "$node" $bootstrap; else start_node "$node"; fi
    done
    wait_ready "${NODES[@]}"
    ;;
  down) stop_all ;;
  status) status ;;
  kill)
    node=${2:-}; check_node "$node"
    pid=$(running_pid "$node") || die "replica $node is not running"
    kill -KILL "$pid"
    rm -f "$(pid_file "$node")"
    echo "replica $node killed (SIGKILL)"
    ;;
  restart)
    node=${2:-}; check_node "$node"
    [[ -x $BINARY ]] || build
    start_node "$node"
    wait_ready "$node"
    ;;
  logs)
    node=${2:-}; check_node "$node"
    [[ -f $(log_file "$node") ]] || die "replica $node has no log yet"
    if [[ -t 1 ]]; then tail -n 100 -f "$(log_file "$node")"; else tail -n 100 "$(log_file "$node")"; fi
    ;;
  *)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    [[ -z $command ]] && exit 0
    die "unknown command '$command'"
    ;;
esac

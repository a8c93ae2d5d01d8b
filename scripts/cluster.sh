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
# State (data directories, logs, pid files) lives under .tally/local in the repository. On first
# start it also makes the cluster's genesis and certificates there (.tally/local/certs): the CA,
# a certificate per replica, principal 1 (for tallyctl and the examples: TALLY_CA, TALLY_CERT,
# TALLY_KEY, and its request-signing key TALLY_SIGNING_KEY, registered once the new cluster is up)
# and principal 2 (monitoring, for /metrics). Every listener serves TLS 1.3.
# TALLY_NODE_BINARY runs another tally-node build instead of building one (scripts/bench-alternate.sh).
# TALLY_INSECURE_PLAINTEXT=1 runs the cluster without TLS (insecure_plaintext, for benchmarks that
# compare; scripts/bench-security.sh): the same configs without [tls], in .tally/local/plaintext.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONFIGS="$ROOT/cluster-config/local"
STATE="$ROOT/.tally/local"
BINARY=${TALLY_NODE_BINARY:-$ROOT/target/release/tally-node}
TALLYCTL=$ROOT/target/release/tallyctl
CERTS="$STATE/certs"
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

# An HTTPS GET of the metrics endpoint: prints "status body", or nothing when unreachable. curl
# (OpenSSL 3.0) cannot verify ML-DSA, so it checks the replica's ECDSA fallback chain, and presents
# the monitoring principal's fallback certificate (which /metrics needs; /ready and /health do not).
http_get() {
  local port=$1 path=$2 response
  if [[ ${TALLY_INSECURE_PLAINTEXT:-} == 1 ]]; then
    response=$(curl --silent --max-time 2 --write-out '\n%{http_code}' "http://127.0.0.1:$port$path" 2>/dev/null) || return 1
    echo "$(tail -n1 <<<"$response") $(sed '$d' <<<"$response" | tr '\n' ' ')"
    return
  fi
  response=$(curl --silent --max-time 2 --cacert "$CERTS/ca-ecdsa.pem" \
    --cert "$CERTS/principal-2-ecdsa.pem" --key "$CERTS/principal-2-ecdsa.key" \
    --write-out '\n%{http_code}' "https://127.0.0.1:$port$path" 2>/dev/null) || return 1
  echo "$(tail -n1 <<<"$response") $(sed '$d' <<<"$response" | tr '\n' ' ')"
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
  echo "Building tally-node and tallyctl (release)..."
  (cd "$ROOT" && cargo build --release --locked -p tally-node -p tally-client --bin tally-node --bin tallyctl)
}

# The shipped configs without TLS, for TALLY_INSECURE_PLAINTEXT=1.
plaintext_configs() {
  local made="$STATE/plaintext" node
  mkdir -p "$made"
  for node in "${NODES[@]}"; do
    { echo "insecure_plaintext = true"; sed -e '/^\[tls\]/,$d' -e '/^genesis_file/d' "$CONFIGS/node-$node.toml"; } \
      >"$made/node-$node.toml"
  done
  CONFIGS=$made
}

# The cluster's genesis and certificates, made once with tallyctl (nothing is ever overwritten).
make_certs() {
  if [[ ${TALLY_INSECURE_PLAINTEXT:-} == 1 ]]; then
    echo "INSECURE: TALLY_INSECURE_PLAINTEXT=1, the cluster runs without TLS"
    plaintext_configs
    return
  fi
  [[ -f $CERTS/genesis.toml ]] && return
  [[ -x $TALLYCTL ]] || (cd "$ROOT" && cargo build --release --locked -p tally-client --bin tallyctl)
  command -v curl >/dev/null || die "curl is needed to probe the replicas' metrics endpoints"
  echo "Making the cluster's CA, certificates and genesis in $CERTS..."
  mkdir -p "$STATE"
  local made="$STATE/certs.new" node
  rm -rf "$made"
  "$TALLYCTL" certs init --dir "$made" >/dev/null
  for node in "${NODES[@]}"; do
    "$TALLYCTL" certs issue --dir "$made" replica "$node" --address 127.0.0.1 >/dev/null
  done
  "$TALLYCTL" certs issue --dir "$made" principal 1 >/dev/null
  "$TALLYCTL" certs issue --dir "$made" principal 2 >/dev/null
  # The operator's signing key (ML-DSA-87), sealed with a passphrase kept beside it: a local
  # cluster's secrets are only as safe as this folder.
  (umask 077 && head -c 24 /dev/urandom | base64 >"$made/operator-1.passphrase")
  "$TALLYCTL" keys generate --out "$made/operator-1.key" --algorithm ml-dsa-87 \
    --passphrase-file "$made/operator-1.passphrase" >/dev/null
  "$TALLYCTL" genesis init --out "$made/genesis.toml" --cluster-id-file "$made/cluster-id" \
    --operator "1=$made/operator-1.key.pub" --required 1 >/dev/null
  # Principal 1's request-signing key (ML-DSA-65): the cluster takes signed writes only, and
  # registers this key once it is up (register_principal).
  (umask 077 && head -c 24 /dev/urandom | base64 >"$made/principal-1.passphrase")
  "$TALLYCTL" keys generate --out "$made/principal-1.signing.key" --algorithm ml-dsa-65 \
    --passphrase-file "$made/principal-1.passphrase" >/dev/null
  mv "$made" "$CERTS"
}

# Registers principal 1 (tallyctl, the examples) with every permission, approved by operator 1:
# the maker-checker change an operator makes on a new cluster (tallyctl registry).
register_principal() {
  [[ ${TALLY_INSECURE_PLAINTEXT:-} == 1 ]] && return
  local change="$STATE/register-principal-1.json"
  rm -f "$change"
  "$TALLYCTL" registry propose --genesis "$CERTS/genesis.toml" --out "$change" --valid-hours 1 \
    register --principal 1 --key "$CERTS/principal-1.signing.key.pub" --permission create-ledgers \
    --permission create-accounts --permission create-transfers --permission read --permission operate >/dev/null
  "$TALLYCTL" registry approve "$change" --operator 1 --key "$CERTS/operator-1.key" \
    --passphrase-file "$CERTS/operator-1.passphrase" >/dev/null
  TALLY_CA=$CERTS/ca.pem TALLY_CERT=$CERTS/principal-1.pem TALLY_KEY=$CERTS/principal-1.key \
    "$TALLYCTL" registry submit "$change"
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
    make_certs
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
    if [[ -n $bootstrap ]]; then register_principal; fi
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
    make_certs
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

#!/usr/bin/env bash
# Tally side by side with PostgreSQL and etcd on this machine, in one run (issue 5).
#
#   scripts/bench-peers.sh            every system, BENCH_SECONDS (default 15) per measurement
#   scripts/bench-peers.sh tally      only Tally's 1-, 3- and 7-replica clusters
#   scripts/bench-peers.sh peers      only PostgreSQL and etcd
#
# Installs PostgreSQL and etcd from Debian's packages when they are missing (apt-get; needs root),
# builds Tally's release binaries, then, one system at a time, on 127.0.0.1 only:
#   PostgreSQL  the ledger a bank would otherwise build: accounts with balances and a balance check,
#               a transfers table, one transfer per SQL transaction (synchronous_commit = on, fsync
#               on), pgbench at 8 and 32 clients over 10,000 accounts.
#   etcd        3- and 7-member clusters, etcd-load putting 128-byte values (one transfer's size)
#               from 32 and 256 clients; each put is committed on a majority and fsynced.
#   Tally       1-, 3- and 7-replica clusters: (a) 4 clients sending batches of 8,190 transfers,
#               (b) 1 client sending one transfer per request, (c) 1,000 SDK tasks with one
#               transfer per call (the SDK batches them). Each shape on a fresh cluster: after
#               (a), every replica spends 10-15 s deleting the log its checkpoint let go, and a
#               shape run meanwhile would measure that too (BENCHMARKS.md, issue 5, sixth round).
# Each system is stopped and its files removed before the next starts. Prints one table with
# ratios, and the peak resident memory of Tally's replicas.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_RUN=${BENCH_SECONDS:-15}
WHAT=${1:-all}
case $WHAT in all | tally | peers) ;; *) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;; esac

WORK=$(mktemp -d /tmp/tally-bench-peers.XXXXXX)
chmod 755 "$WORK"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [[ -n ${PG_BIN:-} && -d $WORK/postgres/data ]]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$WORK/postgres/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

die() { echo "bench-peers.sh: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }

# system, shape, clients, per second, unit, p50 ms, p99 ms
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

install_missing() {
  local packages=()
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || packages+=(postgresql)
  command -v pgbench >/dev/null || packages+=(postgresql-client)
  command -v etcd >/dev/null || packages+=(etcd-server)
  command -v etcdctl >/dev/null || packages+=(etcd-client)
  ((${#packages[@]} == 0)) && return
  [[ $(id -u) == 0 ]] || die "missing ${packages[*]}: run as root, or install them first"
  say "installing ${packages[*]} from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" >"$WORK/apt.log" 2>&1 ||
    { cat "$WORK/apt.log" >&2; die "apt-get install failed"; }
}

# A plain HTTP GET over bash's /dev/tcp; prints the status code, or nothing when unreachable.
http_status() {
  local port=$1 path=$2 response
  exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3
  response=$(timeout 2 head -n1 <&3 || true)
  exec 3<&- 3>&-
  awk '{print $2}' <<<"$response"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

as_postgres() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

PG_PORT=55432

bench_postgres() {
  PG_BIN=$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n1)")
  local directory="$WORK/postgres"
  mkdir -p "$directory"
  [[ $(id -u) == 0 ]] && chown postgres "$directory"
  say "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'): initdb, start on 127.0.0.1:$PG_PORT"
  as_postgres "$PG_BIN/initdb" -D "$directory/data" -A trust -U bench >"$WORK/initdb.log" 2>&1 ||
    { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
  as_postgres "$PG_BIN/pg_ctl" -D "$directory/data" -l "$directory/server.log" -w -o \
    "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$directory \
     -c fsync=on -c synchronous_commit=on -c shared_buffers=256MB -c max_connections=100" start >/dev/null
  local psql=(psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U bench -v ON_ERROR_STOP=1)
  "${psql[@]}" -d postgres -c 'CREATE DATABASE ledger'
  "${psql[@]}" -d ledger <<'SQL'
CREATE TABLE accounts (
  id integer PRIMARY KEY,
  balance bigint NOT NULL DEFAULT 0,
  overdraft_limit bigint NOT NULL DEFAULT 1000000000,
  CHECK (balance >= -overdraft_limit)
);
CREATE TABLE transfers (
  id bigserial PRIMARY KEY,
  debit_account integer NOT NULL REFERENCES accounts,
  credit_account integer NOT NULL REFERENCES accounts,
  amount bigint NOT NULL CHECK (amount > 0),
  created_at timestamptz NOT NULL DEFAULT now(),
  CHECK (debit_account <> credit_account)
);
INSERT INTO accounts (id) SELECT generate_series(1, 10000);
VACUUM ANALYZE accounts;
SQL
  # One transfer per transaction: both balances move in one UPDATE (rows locked in index order,
  # so concurrent transfers cannot deadlock), the CHECK is the balance check, the row is the record.
  cat >"$WORK/transfer.sql" <<'SQL'
\set debit random(1, 10000)
\set credit random(1, 9999)
\set credit :credit + case when :credit >= :debit then 1 else 0 end
BEGIN;
UPDATE accounts SET balance = balance + CASE WHEN id = :debit THEN -1 ELSE 1 END WHERE id IN (:debit, :credit);
INSERT INTO transfers (debit_account, credit_account, amount) VALUES (:debit, :credit, 1);
COMMIT;
SQL
  local clients output tps latency
  for clients in 8 32; do
    say "PostgreSQL: pgbench, $clients clients, ${SECONDS_PER_RUN}s"
    output=$(pgbench -h 127.0.0.1 -p "$PG_PORT" -U bench -n -f "$WORK/transfer.sql" -c "$clients" -j 2 \
      -T "$SECONDS_PER_RUN" --max-tries=10 ledger 2>&1) || { echo "$output" >&2; die "pgbench failed"; }
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$output" | head -n1)
    latency=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$output")
    record "PostgreSQL 1 node" "1 transfer per transaction" "$clients" "$tps" "transfers/s" "${latency} (avg)" "-"
  done
  local conserved
  conserved=$("${psql[@]}" -d ledger -At -c 'SELECT sum(balance) FROM accounts')
  [[ $conserved == 0 ]] || die "PostgreSQL balances do not sum to zero ($conserved)"
  as_postgres "$PG_BIN/pg_ctl" -D "$directory/data" -m fast -w stop >/dev/null
  rm -rf "$directory"
}

# ---------------------------------------------------------------------------------------------
# etcd

bench_etcd() {
  local members=$1 index cluster="" endpoints="" pids=()
  local directory="$WORK/etcd-$members"
  for ((index = 1; index <= members; index++)); do
    cluster+="${cluster:+,}e$index=http://127.0.0.1:$((22380 + 10 * index))"
    endpoints+="${endpoints:+,}127.0.0.1:$((22379 + 10 * index))"
  done
  say "etcd $(etcd --version | awk '/etcd Version/ {print $3}'): $members members"
  for ((index = 1; index <= members; index++)); do
    mkdir -p "$directory/e$index"
    etcd --name "e$index" --data-dir "$directory/e$index" \
      --listen-client-urls "http://127.0.0.1:$((22379 + 10 * index))" \
      --advertise-client-urls "http://127.0.0.1:$((22379 + 10 * index))" \
      --listen-peer-urls "http://127.0.0.1:$((22380 + 10 * index))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((22380 + 10 * index))" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench-$members" \
      --quota-backend-bytes 8589934592 --logger zap --log-level error >"$directory/e$index.log" 2>&1 &
    pids+=($!)
    PIDS+=($!)
  done
  local deadline=$((SECONDS + 60))
  until ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "etcd ($members members) not healthy after 60 s; see $directory"
    sleep 0.5
  done
  local clients output
  for clients in 32 256; do
    say "etcd $members members: $clients clients, ${SECONDS_PER_RUN}s"
    output=$("$ROOT/target/release/etcd-load" --endpoints "$endpoints" --clients "$clients" \
      --duration "$SECONDS_PER_RUN" 2>&1) || { echo "$output" >&2; die "etcd-load failed"; }
    record "etcd $members members" "1 put (128 B) per request" "$clients" \
      "$(sed -n 's/.*s: \([0-9]*\) writes\/s.*/\1/p' <<<"$output")" "writes/s" \
      "$(sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p' <<<"$output")" "$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p' <<<"$output")"
  done
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  rm -rf "$directory"
}

# ---------------------------------------------------------------------------------------------
# Tally

TALLY_PEAK_RSS=""

start_tally() {
  local replicas=$1 index directory="$WORK/tally-$replicas" members="" sites
  case $replicas in 1) sites=(a) ;; 3) sites=(a b c) ;; 7) sites=(a a a b b b c) ;; esac
  for ((index = 1; index <= replicas; index++)); do
    members+="  { id = $index, address = \"127.0.0.1:$((7300 + index))\", site = \"${sites[index - 1]}\" },"$'\n'
  done
  mkdir -p "$directory"
  TALLY_PIDS=()
  TALLY_ENDPOINTS=""
  for ((index = 1; index <= replicas; index++)); do
    cat >"$directory/node-$index.toml" <<TOML
cluster_name = "tally-bench-peers-$replicas"
node_id = $index
site = "${sites[index - 1]}"
listen_address = "127.0.0.1:$((7300 + index))"
advertise_address = "127.0.0.1:$((7300 + index))"
metrics_address = "127.0.0.1:$((9300 + index))"
data_directory = "$directory/data-$index"
initial_members = [
$members]

[raft]
# All replicas share this host: a busy follower's 1 MiB append may take over 250 ms, openraft's
# deadline for a replication message at the default heartbeat (cluster-config/local).
heartbeat_interval_ms = 500

[storage]
cache_bytes = 134217728

[scheduling]
# All replicas share this host: followers yield CPU to the leader (node/src/scheduling.rs).
follower_nice = 5

[memory]
# As cluster-config/local: the working set made resident before the run (node/src/memory.rs).
pretouch_bytes = 805306368
TOML
    # Each replica in its own session, as scripts/cluster.sh starts them (follower_nice needs it).
    # Replica 1 bootstraps the new cluster (the directory is fresh for every run).
    local bootstrap=""; ((index == 1)) && bootstrap="--bootstrap"
    setsid "$ROOT/target/release/tally-node" --config "$directory/node-$index.toml" $bootstrap >"$directory/node-$index.log" 2>&1 &
    TALLY_PIDS+=($!)
    PIDS+=($!)
    TALLY_ENDPOINTS+="${TALLY_ENDPOINTS:+,}127.0.0.1:$((7300 + index))"
  done
  local deadline=$((SECONDS + 60))
  for ((index = 1; index <= replicas; index++)); do
    until [[ $(http_status $((9300 + index)) /ready 2>/dev/null) == 200 ]]; do
      ((SECONDS < deadline)) || die "Tally replica $index of $replicas not ready after 60 s; see $directory"
      sleep 0.2
    done
  done
}

stop_tally() {
  local replicas=$1 pid peak=0 rss
  for pid in "${TALLY_PIDS[@]}"; do
    rss=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    ((rss > peak)) && peak=$rss
  done
  if ((peak > TALLY_PEAK_KIB)); then TALLY_PEAK_KIB=$peak; fi
  kill -TERM "${TALLY_PIDS[@]}" 2>/dev/null || true
  wait "${TALLY_PIDS[@]}" 2>/dev/null || true
  rm -rf "$WORK/tally-$replicas"
}

tally_run() {
  local replicas=$1 shape=$2 clients=$3
  shift 3
  local output
  output=$("$ROOT/target/release/tally-bench" --endpoints "$TALLY_ENDPOINTS" --clients "$clients" "$@" 2>&1) ||
    { echo "$output" >&2; die "tally-bench failed"; }
  output=$(grep 'transfers/s' <<<"$output" | tail -n1)
  record "Tally $replicas replica(s)" "$shape" "$clients" \
    "$(sed -n 's/.*s: \([0-9]*\) transfers\/s.*/\1/p' <<<"$output")" "transfers/s" \
    "$(sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p' <<<"$output")" "$(sed -n 's/.*, p99 \([0-9.]*\) ms.*/\1/p' <<<"$output")"
}

tally_shape() {
  local replicas=$1
  start_tally "$replicas"
  tally_run "$@"
  stop_tally "$replicas"
}

bench_tally() {
  local replicas=$1
  say "Tally: $replicas replica(s)"
  TALLY_PEAK_KIB=0
  say "Tally $replicas: (a) batches of 8,190, 4 clients, ${SECONDS_PER_RUN}s"
  tally_shape "$replicas" "(a) 8,190 per request" 4 --batch 8190 --duration "$SECONDS_PER_RUN"
  say "Tally $replicas: (b) one transfer per request, 1 client, 10s"
  tally_shape "$replicas" "(b) 1 per request" 1 --batch 1 --duration 10
  say "Tally $replicas: (c) one transfer per SDK call, 1,000 tasks, ${SECONDS_PER_RUN}s"
  tally_shape "$replicas" "(c) 1 per call, SDK batching" 1000 --mode single --duration "$SECONDS_PER_RUN"
  TALLY_PEAK_RSS+="$replicas replica(s): $((TALLY_PEAK_KIB / 1024)) MiB; "
}

# ---------------------------------------------------------------------------------------------

say "building Tally (release): tally-node, tally-bench, etcd-load"
(cd "$ROOT" && cargo build --release --locked -p tally-node -p tally-benches \
  --bin tally-node --bin tally-bench --bin etcd-load) >&2

if [[ $WHAT != tally ]]; then
  install_missing
  bench_postgres
  bench_etcd 3
  bench_etcd 7
fi
if [[ $WHAT != peers ]]; then
  for replicas in 1 3 7; do bench_tally "$replicas"; done
fi

# The table, with each row's rate against PostgreSQL at 32 clients and against etcd's best rate
# with the same number of replicas (Tally's own rows only).
awk -F'\t' -v seconds="$SECONDS_PER_RUN" '
  { rows[NR] = $0 }
  $1 ~ /^PostgreSQL/ && $3 == 32 { postgres = $4 }
  $1 ~ /^etcd/ { split($1, words, " "); if ($4 > etcd[words[2]]) etcd[words[2]] = $4 }
  END {
    printf "%-22s %-30s %8s %14s %-12s %10s %10s %10s %10s\n", "system", "workload", "clients", "rate", "unit", "p50 ms", "p99 ms", "x PG(32)", "x etcd"
    for (i = 1; i <= NR; i++) {
      split(rows[i], f, "\t"); split(f[1], words, " ")
      vs_pg = (postgres > 0) ? sprintf("%.2f", f[4] / postgres) : "-"
      vs_etcd = (f[1] ~ /^Tally/ && etcd[words[2]] > 0) ? sprintf("%.2f", f[4] / etcd[words[2]]) : "-"
      printf "%-22s %-30s %8s %14.0f %-12s %10s %10s %10s %10s\n", f[1], f[2], f[3], f[4], f[5], f[6], f[7], vs_pg, vs_etcd
    }
    printf "(%s s per measurement; shape (b) 10 s)\n", seconds
  }' "$RESULTS"
[[ -n $TALLY_PEAK_RSS ]] && echo "Tally peak resident memory per replica (largest): $TALLY_PEAK_RSS"

#!/usr/bin/env bash
# Compares two tally-node builds on the local seven-replica cluster, alternating them, each round on
# a fresh cluster that is then loaded: (a) four clients of 8,190-transfer batches on the fresh
# ledger, (b) one client of single transfers, (c) 1,000 callers of the SDK's single calls, and (a)
# again on the ledger those runs loaded (several million transfers).
#
#   scripts/bench-alternate.sh OLD_BINARY NEW_BINARY [ROUNDS]
#
# Prints one line per run (build, workload, ledger, transfers/s, p50, p99) and writes the
# tally-bench JSON under .tally/bench-alternate. Memory is pretouched as in BENCHMARKS.md.
# Both builds run the shipped configs, with TLS; builds from before TLS (issue 20) cannot read
# them. With TALLY_INSECURE_PLAINTEXT=1 both run without TLS (builds that know insecure_plaintext).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: bench-alternate.sh OLD_BINARY NEW_BINARY [ROUNDS]}
NEW=${2:?usage: bench-alternate.sh OLD_BINARY NEW_BINARY [ROUNDS]}
ROUNDS=${3:-2}
OUT="$ROOT/.tally/bench-alternate"
BENCH="$ROOT/target/release/tally-bench"
export TALLY_PRETOUCH_BYTES=${TALLY_PRETOUCH_BYTES:-805306368}

(cd "$ROOT" && cargo build --release --locked -p tally-benches --bin tally-bench) >&2
mkdir -p "$OUT"

# run NAME LEDGER LABEL ARGS...
run() {
  local name=$1 ledger=$2 label=$3; shift 3
  local file="$OUT/$name-$label-$ledger.json"
  local certs="$ROOT/.tally/local/certs"
  TALLY_CA=$certs/ca.pem TALLY_CERT=$certs/principal-1.pem TALLY_KEY=$certs/principal-1.key \
    TALLY_SIGNING_KEY=$certs/principal-1.signing.key TALLY_SIGNING_PASSPHRASE_FILE=$certs/principal-1.passphrase \
    "$BENCH" "$@" --json "$file" >/dev/null
  python3 - "$name" "$label" "$ledger" "$file" <<'PY'
import json, sys
name, label, ledger, path = sys.argv[1:]
result = json.load(open(path))
rate = result.get("transfers_per_second", 0)
latency = result.get("latency_ms", {})
print(f"{name:4} {label:3} {ledger:6} {rate/1000:8.1f} k/s  p50 {latency.get('p50', 0):7.2f} ms  p99 {latency.get('p99', 0):7.2f} ms")
PY
}

for ((round = 1; round <= ROUNDS; round++)); do
  for pair in "old:$OLD" "new:$NEW"; do
    name=${pair%%:*} binary=${pair#*:}
    "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
    rm -rf "$ROOT/.tally/local"
    TALLY_NODE_BINARY=$binary "$ROOT/scripts/cluster.sh" up >/dev/null
    run "$name" fresh a --clients 4 --batch 8190 --duration 15
    run "$name" fresh b --clients 1 --batch 1 --duration 10
    run "$name" loaded c --mode single --clients 1000 --duration 15
    run "$name" loaded a --clients 4 --batch 8190 --duration 15
    "$ROOT/scripts/cluster.sh" down >/dev/null
  done
done
rm -rf "$ROOT/.tally/local"

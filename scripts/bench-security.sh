#!/usr/bin/env bash
# Measures what security costs: the same tally-node build on the local seven-replica cluster with
# TLS (hybrid post-quantum key exchange, ML-DSA certificates, as shipped) and without
# (insecure_plaintext), alternating, each round on a fresh cluster: (a) four clients of
# 8,190-transfer batches, (b) one client of single transfers (latency), (c) 1,000 callers of the
# SDK's single calls (automatic batching), and (a) again on the ledger those runs loaded.
#
#   scripts/bench-security.sh [ROUNDS]
#
# Prints one line per run (mode, workload, ledger, transfers/s, p50, p99) and writes the
# tally-bench JSON under .tally/bench-security. Memory is pretouched as in BENCHMARKS.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-2}
OUT="$ROOT/.tally/bench-security"
BENCH="$ROOT/target/release/tally-bench"
CERTS="$ROOT/.tally/local/certs"
export TALLY_PRETOUCH_BYTES=${TALLY_PRETOUCH_BYTES:-805306368}

(cd "$ROOT" && cargo build --release --locked -p tally-benches --bin tally-bench) >&2
mkdir -p "$OUT"

# run MODE LEDGER LABEL ARGS...
run() {
  local mode=$1 ledger=$2 label=$3; shift 3
  local file="$OUT/$mode-$label-$ledger.json"
  if [[ $mode == tls ]]; then
    TALLY_CA=$CERTS/ca.pem TALLY_CERT=$CERTS/principal-1.pem TALLY_KEY=$CERTS/principal-1.key \
      TALLY_SIGNING_KEY=$CERTS/principal-1.signing.key TALLY_SIGNING_PASSPHRASE_FILE=$CERTS/principal-1.passphrase \
      "$BENCH" "$@" --json "$file" >/dev/null
  else
    TALLY_INSECURE_PLAINTEXT=1 "$BENCH" "$@" --json "$file" >/dev/null
  fi
  python3 - "$mode" "$label" "$ledger" "$file" <<'PY'
import json, sys
mode, label, ledger, path = sys.argv[1:]
result = json.load(open(path))
rate = result.get("transfers_per_second", 0)
latency = result.get("latency_ms", {})
print(f"{mode:9} {label:3} {ledger:6} {rate/1000:8.1f} k/s  p50 {latency.get('p50', 0):7.2f} ms  p99 {latency.get('p99', 0):7.2f} ms")
PY
}

for ((round = 1; round <= ROUNDS; round++)); do
  # Each round swaps which mode goes first: the position in a round biases the figures.
  modes=(plaintext tls)
  ((round % 2 == 0)) && modes=(tls plaintext)
  for mode in "${modes[@]}"; do
    "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
    rm -rf "$ROOT/.tally/local"/data-* "$ROOT/.tally/local"/*.log
    if [[ $mode == plaintext ]]; then
      TALLY_INSECURE_PLAINTEXT=1 "$ROOT/scripts/cluster.sh" up >/dev/null
    else
      "$ROOT/scripts/cluster.sh" up >/dev/null
    fi
    run "$mode" fresh a --clients 4 --batch 8190 --duration 15
    run "$mode" fresh b --clients 1 --batch 1 --duration 10
    run "$mode" loaded c --mode single --clients 1000 --duration 15
    run "$mode" loaded a --clients 4 --batch 8190 --duration 15
    TALLY_INSECURE_PLAINTEXT=$([[ $mode == plaintext ]] && echo 1 || echo 0) "$ROOT/scripts/cluster.sh" down >/dev/null
  done
done
rm -rf "$ROOT/.tally/local"/data-*

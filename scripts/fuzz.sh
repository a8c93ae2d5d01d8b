#!/usr/bin/env bash
# A longer run of the fuzz tests than CI's: the peer frame decoder and the gateway's conversions,
# driven by proptest with hostile inputs (consensus/tests/peer_frames_fuzz.rs,
# node/tests/conversions_fuzz.rs). CI runs 2,000 inputs of each kind; this runs
# ${TALLY_FUZZ_CASES:-1000000} with a fresh seed each time, and prints the seed to replay a failure:
#
#   scripts/fuzz.sh                         # about a minute per million inputs of each kind
#   TALLY_FUZZ_CASES=10000000 scripts/fuzz.sh
#   TALLY_SEED=<seed> scripts/fuzz.sh       # replay
set -euo pipefail
cd "$(dirname "$0")/.."
export TALLY_FUZZ_CASES=${TALLY_FUZZ_CASES:-1000000}
export TALLY_SEED=${TALLY_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
echo "fuzzing with TALLY_SEED=$TALLY_SEED, $TALLY_FUZZ_CASES inputs of each kind"
cargo test --release --locked -p tally-consensus --test peer_frames_fuzz
cargo test --release --locked -p tally-node --test conversions_fuzz
echo "no input panicked (TALLY_SEED=$TALLY_SEED)"

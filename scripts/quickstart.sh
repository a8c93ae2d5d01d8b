#!/usr/bin/env bash
# The quickstart: builds Tally, starts the local seven-replica cluster (cluster-config/local, three
# sites, embedded redb storage under .tally/local), walks through a short demo with tallyctl, and
# leaves the cluster running.
#
#   scripts/quickstart.sh
#
# Safe to run again: ledgers and accounts have fixed ids (the second run answers `exists`), and
# each run's transfers get new ids.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

echo "== Building tally-node and tallyctl (release; the first build takes a few minutes)"
cargo build --release --locked -p tally-node -p tally-client --bin tally-node --bin tallyctl
scripts/cluster.sh up

TALLYCTL="$ROOT/target/release/tallyctl"
export TALLY_ENDPOINTS=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103,127.0.0.1:7104,127.0.0.1:7105,127.0.0.1:7106,127.0.0.1:7107
# Every replica serves TLS 1.3 only (hybrid post-quantum key exchange, ML-DSA certificates):
# tallyctl presents principal 1's certificate, which scripts/cluster.sh made.
export TALLY_CA=$ROOT/.tally/local/certs/ca.pem
export TALLY_CERT=$ROOT/.tally/local/certs/principal-1.pem
export TALLY_KEY=$ROOT/.tally/local/certs/principal-1.key
# ...and signs every write with principal 1's ML-DSA-65 key, which scripts/cluster.sh registered.
export TALLY_SIGNING_KEY=$ROOT/.tally/local/certs/principal-1.signing.key
export TALLY_SIGNING_PASSPHRASE_FILE=$ROOT/.tally/local/certs/principal-1.passphrase

step() { printf '\n== %s\n' "$*"; }
tallyctl() {
  printf '$ tallyctl %s\n' "$*"
  "$TALLYCTL" "$@"
}

# Ledger ids: ISO 4217 numeric codes. Accounts: <ledger><number>.
EUR=978 USD=840
ALICE_EUR=9780001 BOB_EUR=9780002 BANK_EUR=9780003 SHOP_EUR=9780004
ALICE_USD=8400001 BANK_USD=8400003
# Transfer ids for this run: time-ordered and unique (tallyctl makes one itself when --id is left out).
RUN=$(date +%s%N)
FUNDING=${RUN}1 PAYMENT=${RUN}2 AUTHORISATION=${RUN}3 CAPTURE=${RUN}4 OVERDRAFT=${RUN}5 SELL_EUR=${RUN}6 BUY_USD=${RUN}7

step "Two ledgers, one currency each (amounts in cents: scale 2)"
tallyctl ledger create --id $EUR --currency EUR --scale 2
tallyctl ledger create --id $USD --currency USD --scale 2

step "Accounts. Alice's cannot be overdrawn and keeps its balance history; the bank's own accounts can go negative"
tallyctl account create --id $ALICE_EUR --ledger $EUR --code 100 --debits-must-not-exceed-credits --history
tallyctl account create --id $BOB_EUR --ledger $EUR --code 100
tallyctl account create --id $SHOP_EUR --ledger $EUR --code 200
tallyctl account create --id $BANK_EUR --ledger $EUR --code 900
tallyctl account create --id $ALICE_USD --ledger $USD --code 100 --debits-must-not-exceed-credits
tallyctl account create --id $BANK_USD --ledger $USD --code 900

step "Alice is paid 500.00 EUR, then pays Bob 25.00 EUR"
tallyctl transfer create --id $FUNDING --debit $BANK_EUR --credit $ALICE_EUR --amount 500.00 --ledger $EUR --code 1
tallyctl transfer create --id $PAYMENT --debit $ALICE_EUR --credit $BOB_EUR --amount 25.00 --ledger $EUR --code 1

step "A card authorisation makes 80.00 EUR pending for a shop; the shop captures 64.30 and the rest is released"
tallyctl transfer create --id $AUTHORISATION --debit $ALICE_EUR --credit $SHOP_EUR --amount 80.00 --ledger $EUR --code 2 \
  --pending --timeout-seconds 3600
tallyctl balance $ALICE_EUR
tallyctl transfer post $AUTHORISATION --amount 64.30 --id $CAPTURE
tallyctl transfer get $AUTHORISATION

step "An overdraft is refused with its result code, and changes nothing (tallyctl exits 3)"
if tallyctl transfer create --id $OVERDRAFT --debit $ALICE_EUR --credit $BOB_EUR --amount 1000000.00 --ledger $EUR --code 1; then
  echo "quickstart: the overdraft was accepted, which it must not be" >&2
  exit 1
fi

step "Alice changes 100.00 EUR into 108.50 USD: two linked transfers, applied together or not at all"
printf '$ tallyctl transfer create-batch --file - <<JSON ... JSON\n'
"$TALLYCTL" transfer create-batch --file - <<JSON
[
  {"id": "$SELL_EUR", "debit": "$ALICE_EUR", "credit": "$BANK_EUR", "amount": "100.00", "ledger": $EUR, "code": 3,
   "flags": ["linked"]},
  {"id": "$BUY_USD", "debit": "$BANK_USD", "credit": "$ALICE_USD", "amount": "108.50", "ledger": $USD, "code": 3}
]
JSON
tallyctl balance $ALICE_EUR
tallyctl balance $ALICE_USD
tallyctl transfer list --account $ALICE_EUR --limit 10

step "The cluster: seven replicas over three sites, each with its applied index and the digest of its ledger there"
tallyctl cluster status

cat <<EOF_HELP

The cluster keeps running. Try tallyctl yourself:

  export PATH="$ROOT/target/release:\$PATH"
  export TALLY_ENDPOINTS=$TALLY_ENDPOINTS    # the default, too
  tallyctl --help
  tallyctl account list --ledger $EUR
  tallyctl transfer list --account $ALICE_EUR --output json
  tallyctl account history $ALICE_EUR
  scripts/cluster.sh kill 1 && tallyctl cluster status    # lose a replica; writes go on

Stop it (data stays in .tally/local) with:

  scripts/cluster.sh down
EOF_HELP

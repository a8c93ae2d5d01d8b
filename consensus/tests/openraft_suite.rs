//! openraft's own storage test suite, run against the redb log store and the ledger state machine.

use openraft::testing::{StoreBuilder, Suite};
use tally_consensus::log_store::{LOG_CACHE_BYTES_DEFAULT, RedbLogStore};
use tally_consensus::raft_state_machine::LedgerStateMachine;
use tally_consensus::type_config::TypeConfig;
use tally_consensus::types::StorageError;

/// Small page cache: the suite builds a few dozen stores.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

struct Builder;

impl StoreBuilder<TypeConfig, RedbLogStore, LedgerStateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, RedbLogStore, LedgerStateMachine), StorageError> {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let log =
            RedbLogStore::open(&directory.path().join("raft-log.redb"), LOG_CACHE_BYTES_DEFAULT).expect("a new log");
        let state_machine = LedgerStateMachine::open(directory.path(), CACHE_BYTES).expect("a new ledger");
        Ok((directory, log, state_machine))
    }
}

#[test]
fn the_redb_stores_pass_openrafts_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}

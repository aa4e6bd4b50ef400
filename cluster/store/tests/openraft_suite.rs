//! openraft's own storage test suite, run against the redb log store and state machine.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use cairn_store::log_store::LogStore;
use cairn_store::raft_types::{StorageError, TypeConfig};
use cairn_store::state_machine::StateMachine;
use openraft::testing::{StoreBuilder, Suite};

struct Fresh;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Fresh {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(dir.path()).expect("log store");
        let state = StateMachine::open(dir.path()).expect("state machine");
        Ok((dir, log, state))
    }
}

#[test]
fn redb_storage_passes_the_openraft_suite() {
    if let Err(err) = Suite::test_all(Fresh) {
        panic!("openraft storage suite failed: {err}");
    }
}

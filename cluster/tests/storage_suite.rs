//! openraft's storage conformance suite against Micro's RocksDB log and state machine.

use micro_cluster::{open_storage, LogStore, StateMachine, StorageError, TypeConfig};
use openraft::testing::log::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = open_storage(dir.path()).map_err(|e| {
            StorageError::from_io_error(openraft::ErrorSubject::Logs, openraft::ErrorVerb::Read, e)
        })?;
        Ok((dir, log, sm))
    }
}

#[tokio::test]
async fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder).await {
        panic!("storage suite failed: {e}");
    }
}

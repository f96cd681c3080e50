//! openraft's storage test suite against the sled store.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

use super::{open, LogStore, StateMachineStore};
use crate::raft::TypeConfig;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let (log, sm) = open(&dir.path().join("raft")).expect("open sled store");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_passes_openraft_suite() {
    Suite::test_all(SledBuilder)
        .await
        .expect("openraft storage suite");
}

/// A broken invariant while applying (here: a snapshot whose cluster state
/// claims a later index than its log id, then the next entry) is returned
/// as an error that stops the core, not a panic left in openraft's apply
/// task; nothing of the failed batch is published.
#[tokio::test]
async fn a_broken_invariant_while_applying_is_an_error_not_a_panic() {
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftStateMachine;
    use openraft::testing::log_id;
    use openraft::RaftSnapshotBuilder;

    use super::state_machine::AppliedState;
    use crate::cluster::{ClusterState, Command, TaskKind};
    use crate::raft::{Entry, SnapshotMeta};

    let dir = tempfile::tempdir().expect("create temp dir");
    let (_log, mut sm) = open(&dir.path().join("raft")).expect("open sled store");
    let at = log_id::<TypeConfig>(1, 1, 10);
    let crafted = AppliedState {
        last_applied: Some(at),
        cluster: ClusterState {
            last_index: 100,
            ..Default::default()
        },
        ..Default::default()
    };
    let meta = SnapshotMeta {
        last_log_id: Some(at),
        last_membership: Default::default(),
    };
    sm.install_snapshot(&meta, serde_json::to_vec(&crafted).expect("json"))
        .await
        .expect("install");

    let apply = |entry: Entry| {
        let mut sm = sm.clone();
        async move {
            let entries = futures::stream::iter(vec![Ok((entry, None))]);
            sm.apply(entries).await
        }
    };
    let trigger = Command::TriggerTask {
        task: TaskKind::Unlock,
    };
    // ClusterState::apply asserts its index never goes back: caught. The
    // good entry before it in the same batch is not kept either.
    let batch = futures::stream::iter(vec![
        Ok((Entry::new_blank(log_id::<TypeConfig>(1, 1, 11)), None)),
        Ok((
            Entry::new_normal(log_id::<TypeConfig>(1, 1, 12), trigger.clone()),
            None,
        )),
    ]);
    let err = sm
        .clone()
        .apply(batch)
        .await
        .expect_err("a broken invariant");
    assert!(err.to_string().contains("invariant"), "{err}");
    assert_eq!(
        sm.applied().await,
        crafted,
        "the failed batch left state behind"
    );
    let snapshot = sm.clone().build_snapshot().await.expect("snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(at));
    // The state machine's own order check: an error as well.
    let err = apply(Entry::new_normal(log_id::<TypeConfig>(1, 1, 5), trigger))
        .await
        .expect_err("an entry out of order");
    assert!(err.to_string().contains("applied after"), "{err}");
    assert_eq!(sm.latest().applied_index(), 10, "nothing was published");
}

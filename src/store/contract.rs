//! The contract every [`QueueStore`] must meet; run against each store.

use super::{Fence, QueueStore, StoreError};

fn fence(epoch: u64) -> Fence {
    Fence {
        shard: 0,
        epoch,
        node: 1,
    }
}

/// Runs the contract. `create` makes an empty queue in the store under test.
pub async fn run(store: &dyn QueueStore, create: &dyn Fn(&str)) {
    create("orders");
    create("billing::eu");
    let mut queues = store.discover_queues().await.expect("discover");
    queues.sort();
    assert_eq!(
        queues,
        vec!["billing::eu".to_string(), "orders".to_string()]
    );

    // A fresh queue accepts any epoch and raises its fence to it.
    assert_eq!(store.fence_of("orders").await.expect("fence"), 0);
    store.touch("orders", fence(10)).await.expect("first write");
    assert_eq!(store.fence_of("orders").await.expect("fence"), 10);

    // The same epoch again is the same owner: accepted.
    store.touch("orders", fence(10)).await.expect("same epoch");

    // An older epoch is rejected and changes nothing.
    let err = store
        .touch("orders", fence(9))
        .await
        .expect_err("stale epoch");
    assert_eq!(
        err,
        StoreError::Fenced {
            queue: "orders".into(),
            epoch: 9,
            fence: 10
        }
    );
    assert_eq!(store.fence_of("orders").await.expect("fence"), 10);

    // A newer epoch takes over; the old one is now rejected for good.
    store.touch("orders", fence(12)).await.expect("newer owner");
    assert!(store
        .touch("orders", fence(10))
        .await
        .expect_err("old owner")
        .is_fenced());

    // Fences are per queue.
    store
        .touch("billing::eu", fence(3))
        .await
        .expect("other queue");

    // Names Deckard rejects.
    for bad in ["", "a{b", "c}"] {
        let err = store.touch(bad, fence(1)).await.expect_err("invalid name");
        assert!(matches!(err, StoreError::InvalidQueue { .. }), "{err}");
    }
}

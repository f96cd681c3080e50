//! The end-of-run integrity census of `deckhand load --check`.
//!
//! While the traffic runs, a [`Ledger`] records what the client knows about
//! every message it wrote: present (added, not finished), absent (removed by
//! the client) or uncertain (an operation on it failed, so whether Redis
//! applied it is unknown: a reply lost to a restart, say). After the run,
//! [`Ledger::census`] reads every queue's four Deckard sets once and checks:
//!
//! - no message is in two sets (a move that copied instead of moving);
//! - every present message is in exactly one set (nothing lost);
//! - no removed message is back (nothing resurrected).
//!
//! Together with the consumer's own `early` and `missing` counts (a lock
//! that came back before its time, or never), this is the check of every
//! message the fault runs end with. Uncertain messages are counted, not
//! judged.
//!
//! Invariant: a message's ledger entry only moves Present -> Absent or
//! either -> Uncertain, never back (a later success cannot undo not knowing).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::locks::lock;
use crate::store::DeckardClient;

/// What the client knows about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Present,
    Absent,
    Uncertain,
}

/// Per-queue record of every message the load wrote (index = queue index).
pub(super) struct Ledger {
    queues: Vec<Mutex<HashMap<String, Expect>>>,
}

/// What the census found. `ok()` when nothing is duplicated, lost or
/// resurrected and every queue could be read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Census {
    pub queues: usize,
    /// Messages the client expects present and found in exactly one set.
    pub present: u64,
    /// Messages the client removed and found in no set.
    pub removed: u64,
    /// Messages found in more than one of Deckard's sets.
    pub duplicated: u64,
    /// Messages the client expects present but found in no set.
    pub lost: u64,
    /// Messages the client removed but found in a set again.
    pub resurrected: u64,
    /// Messages whose last operation failed (not judged).
    pub uncertain: u64,
    /// Queues whose sets could not be read.
    pub unreadable: u64,
    /// The first few problems, for the report.
    pub problems: Vec<String>,
}

impl Census {
    pub fn ok(&self) -> bool {
        self.duplicated == 0 && self.lost == 0 && self.resurrected == 0 && self.unreadable == 0
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < 10 {
            self.problems.push(text);
        }
    }
}

impl Ledger {
    pub(super) fn new(queues: usize) -> Self {
        Self {
            queues: (0..queues).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// `ids` were written to queue `qi` (`ok`) or the add failed.
    pub(super) fn added<'a>(&self, qi: usize, ids: impl Iterator<Item = &'a str>, ok: bool) {
        let mut q = lock(&self.queues[qi]);
        for id in ids {
            let entry = q.entry(id.to_string()).or_insert(Expect::Present);
            if !ok {
                *entry = Expect::Uncertain;
            }
        }
    }

    /// `ids` were removed from queue `qi` (`ok`) or the remove failed.
    pub(super) fn removed(&self, qi: usize, ids: &[String], ok: bool) {
        let mut q = lock(&self.queues[qi]);
        for id in ids {
            let entry = q.entry(id.clone()).or_insert(Expect::Uncertain);
            *entry = match (*entry, ok) {
                (Expect::Present, true) => Expect::Absent,
                _ => Expect::Uncertain,
            };
        }
    }

    /// Reads every queue once and compares with the ledger.
    pub(super) async fn census(&self, client: &dyn DeckardClient, names: &[String]) -> Census {
        let mut c = Census {
            queues: names.len(),
            ..Census::default()
        };
        for (qi, queue) in names.iter().enumerate() {
            let snap = match client.snapshot(queue).await {
                Ok(s) => s,
                Err(e) => {
                    c.unreadable += 1;
                    c.problem(format!("{queue}: cannot read its sets: {e}"));
                    continue;
                }
            };
            let placements = snap.placements();
            let ledger = lock(&self.queues[qi]).clone();
            for (id, sets) in &placements {
                if sets.len() > 1 {
                    c.duplicated += 1;
                    c.problem(format!("{queue}: {id} is in {sets:?}"));
                }
            }
            for (id, expect) in &ledger {
                let found = placements.get(id).map_or(0, Vec::len);
                match expect {
                    Expect::Uncertain => c.uncertain += 1,
                    Expect::Present if found == 0 => {
                        c.lost += 1;
                        c.problem(format!("{queue}: {id} is in none of Deckard's sets"));
                    }
                    Expect::Present => c.present += 1,
                    Expect::Absent if found > 0 => {
                        c.resurrected += 1;
                        c.problem(format!("{queue}: {id} was removed but is back"));
                    }
                    Expect::Absent => c.removed += 1,
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::DeckardClient;

    #[tokio::test]
    async fn the_census_finds_lost_duplicated_and_resurrected_messages() {
        let store = MemoryStore::new();
        let names = vec!["c::q".to_string()];
        let ledger = Ledger::new(1);
        let items: Vec<(String, f64)> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| (id.to_string(), 1.0))
            .collect();
        store.add("c::q", &items).await.expect("add");
        ledger.added(0, items.iter().map(|(id, _)| id.as_str()), true);
        let clean = ledger.census(&store, &names).await;
        assert!(clean.ok(), "{clean:?}");
        assert_eq!(clean.present, 4);

        // "a" removed behind the client's back: lost. "b" removed by the
        // client, then written again: resurrected.
        store
            .remove("c::q", &["a".to_string()])
            .await
            .expect("remove");
        store
            .remove("c::q", &["b".to_string()])
            .await
            .expect("remove");
        ledger.removed(0, &["b".to_string()], true);
        store
            .add("c::q", &[("b".to_string(), 1.0)])
            .await
            .expect("add");
        // "c" in processing and, wrongly, also back in the pool.
        let pulled = store.pull("c::q", 2, 0, 60_000).await.expect("pull");
        assert!(pulled.contains(&"c".to_string()), "{pulled:?}");
        store.force_add_active("c::q", "c");
        let found = ledger.census(&store, &names).await;
        assert_eq!(
            (found.lost, found.resurrected, found.duplicated),
            (1, 1, 1),
            "{found:?}"
        );
        assert!(!found.ok());
        // A failed remove makes "d" uncertain, not lost.
        ledger.removed(0, &["d".to_string()], false);
        store
            .remove("c::q", &["d".to_string()])
            .await
            .expect("remove");
        let later = ledger.census(&store, &names).await;
        assert_eq!(later.uncertain, 1, "{later:?}");
    }
}

//! Queue lists in pages: the leader's side cuts them, the owner's side
//! puts them back together.
//!
//! # Design
//!
//! An owner fetches the queue lists of its shards from the leader
//! (`GetQueues`). With hundreds of thousands of queues one reply would pass
//! gRPC's message limit, so replies are pages of at most [`PAGE_BYTES`] of
//! names: a page may end inside a shard's list, and the next request starts
//! there. Every page carries the leader's discovery version; the owner keeps
//! a result only when every page had the same version (else it asks again),
//! so it never installs a list stitched from two discoveries.
//!
//! # Invariants
//!
//! - A page holds at least one name when any remains, so paging ends.
//! - Every requested shard is answered (an empty list is a list).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::proto::worker::{GetQueuesRequest, GetQueuesResponse, ShardQueues};

/// Most bytes of queue names in one page (gRPC's default limit is 4 MiB).
pub const PAGE_BYTES: usize = 1 << 20;

/// Bytes a name costs in a page (its length and protobuf framing).
fn cost(name: &str) -> usize {
    name.len() + 4
}

/// The page of `req` from the leader's lists (`version`, `by_shard`).
pub fn page(
    version: u64,
    by_shard: &BTreeMap<u32, Vec<String>>,
    req: &GetQueuesRequest,
    budget: usize,
) -> GetQueuesResponse {
    let mut out = GetQueuesResponse {
        version,
        ..GetQueuesResponse::default()
    };
    let mut used = 0;
    let mut offset = req.start_offset as usize;
    for (i, shard) in req.shards.iter().enumerate().skip(req.start_shard as usize) {
        let list = by_shard.get(shard).map(Vec::as_slice).unwrap_or_default();
        let start = offset.min(list.len());
        let mut end = start;
        while end < list.len() && (used + cost(&list[end]) <= budget || (used == 0 && end == start))
        {
            used += cost(&list[end]);
            end += 1;
        }
        out.shards.push(ShardQueues {
            shard: *shard,
            queues: list[start..end].to_vec(),
            offset: start as u32,
        });
        offset = 0;
        if end < list.len() {
            out.more = true;
            out.next_shard = i as u32;
            out.next_offset = end as u32;
            return out;
        }
    }
    out
}

/// Puts pages back together, owner side.
#[derive(Debug, Default)]
pub struct Assembler {
    version: Option<u64>,
    lists: BTreeMap<u32, Vec<String>>,
}

/// What one page did to an [`Assembler`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask for the page starting here.
    Next { shard: u32, offset: u32 },
    /// Every page is in.
    Done,
    /// The leader's lists changed between pages: start again.
    Changed,
}

impl Assembler {
    /// Adds one page; says what to ask next.
    pub fn add(&mut self, page: GetQueuesResponse) -> Step {
        if self.version.is_some_and(|v| v != page.version) {
            return Step::Changed;
        }
        self.version = Some(page.version);
        for part in page.shards {
            let list = self.lists.entry(part.shard).or_default();
            if part.offset as usize != list.len() {
                return Step::Changed;
            }
            list.extend(part.queues);
        }
        if page.more {
            Step::Next {
                shard: page.next_shard,
                offset: page.next_offset,
            }
        } else {
            Step::Done
        }
    }

    /// The version and lists, once [`Step::Done`].
    pub fn finish(self) -> (u64, BTreeMap<u32, Arc<Vec<String>>>) {
        let lists = self
            .lists
            .into_iter()
            .map(|(s, l)| (s, Arc::new(l)))
            .collect();
        (self.version.unwrap_or(0), lists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> BTreeMap<u32, Vec<String>> {
        let mut m = BTreeMap::new();
        m.insert(1, (0..10).map(|i| format!("a{i:02}")).collect());
        m.insert(3, (0..3).map(|i| format!("b{i:02}")).collect());
        m
    }

    fn fetch_all(budget: usize, shards: Vec<u32>) -> (usize, BTreeMap<u32, Arc<Vec<String>>>) {
        let lists = lists();
        let mut asm = Assembler::default();
        let mut req = GetQueuesRequest {
            shards,
            start_shard: 0,
            start_offset: 0,
        };
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages < 100, "paging must end");
            match asm.add(page(7, &lists, &req, budget)) {
                Step::Next { shard, offset } => {
                    req.start_shard = shard;
                    req.start_offset = offset;
                }
                Step::Done => break,
                Step::Changed => panic!("one version"),
            }
        }
        let (version, got) = asm.finish();
        assert_eq!(version, 7);
        (pages, got)
    }

    #[test]
    fn pages_reassemble_into_the_same_lists_whatever_the_budget() {
        for budget in [1, 7, 8, 15, 30, 1000] {
            let (pages, got) = fetch_all(budget, vec![1, 2, 3]);
            assert_eq!(
                got[&1].as_slice(),
                lists()[&1].as_slice(),
                "budget {budget}"
            );
            assert_eq!(
                got[&3].as_slice(),
                lists()[&3].as_slice(),
                "budget {budget}"
            );
            assert!(got[&2].is_empty(), "an unknown shard is an empty list");
            if budget == 1000 {
                assert_eq!(pages, 1);
            } else {
                assert!(pages > 1, "budget {budget}: {pages} pages");
            }
        }
    }

    #[test]
    fn a_version_change_between_pages_restarts() {
        let lists = lists();
        let mut asm = Assembler::default();
        let req = GetQueuesRequest {
            shards: vec![1],
            start_shard: 0,
            start_offset: 0,
        };
        assert!(matches!(
            asm.add(page(7, &lists, &req, 16)),
            Step::Next { .. }
        ));
        let next = GetQueuesRequest {
            start_offset: 2,
            ..req
        };
        assert_eq!(asm.add(page(8, &lists, &next, 16)), Step::Changed);
    }
}

//! Raft timers: leader heartbeats on deckhand's own timer, so openraft's
//! core loop does not turn a hundred times a second on every node.
//!
//! # Why
//!
//! openraft checks its timers on a tick of `heartbeat_interval × 13/64`:
//! with a 50 ms heartbeat (the default then), every node, leader or
//! follower, turned its Raft core every 10 ms, whether or not a
//! heartbeat or an election was due. On an idle node that tick was the
//! largest single source of wake-ups (and on a virtual machine every timer
//! wake-up is paid for).
//!
//! # Design
//!
//! - openraft is given a *timer basis* of `election_timeout_min − 1 ms`
//!   instead of the heartbeat ([`openraft_timing`]). Its tick then comes
//!   about every `election_timeout_min / 5` (60 ms with the defaults), which
//!   is all a follower's election timer needs: a randomised timeout of
//!   300–450 ms is noticed at most one tick late. openraft's own heartbeats
//!   are turned off (`enable_heartbeat = false`).
//! - [`HeartbeatPacer`] sends the leader's heartbeats every
//!   `raft.heartbeat_interval` through `raft.trigger().heartbeat()`. While
//!   the node leads it also turns openraft's tick off: a leader never runs
//!   for election and its heartbeats come from the pacer, so the tick had
//!   nothing left to do there. The moment the node stops leading the tick
//!   is turned back on. While the node does not lead, the pacer has no
//!   timer and sleeps on the role.
//! - The leader's core still turns at least once per heartbeat (the
//!   trigger, then the replies), so what it republishes in its metrics,
//!   such as `last_quorum_acked`, is never more than about a heartbeat old.
//! - openraft also uses its heartbeat setting as the timeout of a
//!   replication or heartbeat RPC: that is now the timer basis (299 ms with
//!   the defaults, against a 100 ms heartbeat). openraft's per-follower heartbeat worker
//!   sends one heartbeat at a time and folds the triggers that come while
//!   one is in flight into the next, so a heartbeat whose *reply* is slow
//!   now holds the next one back for up to the basis instead of a heartbeat. The
//!   follower's election timer counts from the request's arrival, not the
//!   reply, so this matters only when the reply path is slow and the
//!   request path is not; the leader lease and pre-vote keep the term
//!   stable if a follower does time out then.
//!
//! # Invariants
//!
//! - The timer basis is below `election_timeout_min` (openraft refuses
//!   otherwise) and at least the configured heartbeat, so no RPC timeout
//!   got shorter ([`openraft_timing`] asserts both).
//! - Whenever the latest published role is not leader, openraft's tick is
//!   on: it is turned off only after reading a leader role, and every later
//!   role change is read before the pacer waits again.
//! - While this node leads, a heartbeat is triggered every
//!   `heartbeat_interval` (a missed period is skipped, not caught up in a
//!   burst).
//!
//! # Deliberately not done
//!
//! - The election timer itself stays openraft's: replacing it would mean
//!   re-deriving when the leader was last heard, which only the core knows.
//! - A follower's tick stays openraft's tokio timer (about every 60 ms).
//!   The leader's period is a timerfd ([`crate::raft::beat`]), and its
//!   heartbeats go over a long-lived stream per follower
//!   ([`crate::raft::append_stream`]), on the Raft thread
//!   ([`crate::raft::runtime`]).

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;

use crate::raft::beat::Beat;
use crate::raft::Raft;
use crate::shutdown::ShutdownListener;

/// openraft's timer settings for deckhand's `[raft]` timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenraftTiming {
    /// What openraft is given as `heartbeat_interval`: the basis of its
    /// tick (`× 13/64`) and its RPC timeouts, not the heartbeat period.
    pub timer_basis_ms: u64,
    /// openraft's own heartbeats stay off: [`HeartbeatPacer`] sends them.
    pub enable_heartbeat: bool,
}

/// The timer basis for a heartbeat and a minimum election timeout (both in
/// milliseconds, `heartbeat < election_timeout_min` as the config checks).
pub fn openraft_timing(heartbeat_ms: u64, election_timeout_min_ms: u64) -> OpenraftTiming {
    assert!(
        heartbeat_ms > 0 && heartbeat_ms < election_timeout_min_ms,
        "raft timing unchecked: heartbeat {heartbeat_ms} ms, election min {election_timeout_min_ms} ms"
    );
    let timer_basis_ms = election_timeout_min_ms - 1;
    debug_assert!(timer_basis_ms >= heartbeat_ms && timer_basis_ms < election_timeout_min_ms);
    OpenraftTiming {
        timer_basis_ms,
        enable_heartbeat: false,
    }
}

/// Sends the leader's heartbeats every `interval` while this node leads.
pub struct HeartbeatPacer {
    pub raft: Raft,
    /// `raft.heartbeat_interval`.
    pub interval: Duration,
}

impl HeartbeatPacer {
    pub async fn run(self, mut stop: ShutdownListener) {
        // Whatever ends this task leaves openraft's tick on.
        let _tick_back_on = TickBackOn(self.raft.clone());
        // The server metrics change only with the role, leader, vote or
        // membership, so waiting on them costs nothing while idle.
        let mut role = self.raft.server_metrics();
        loop {
            let leading = role.borrow_watched().state == ServerState::Leader;
            if leading {
                // A leader's tick has nothing left to do: it never runs
                // for election, and its heartbeats come from here.
                self.raft.runtime_config().tick(false);
                let mut beat = Beat::every(self.interval);
                // The first heartbeat of a term goes at once.
                if self.raft.trigger().heartbeat().await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        // A role change is seen before another heartbeat.
                        biased;
                        changed = role.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            if role.borrow_watched().state != ServerState::Leader {
                                // A follower or candidate needs its election timer.
                                self.raft.runtime_config().tick(true);
                                break;
                            }
                        }
                        _ = stop.recv() => return,
                        _ = beat.tick() => {
                            // Fails only once the core has stopped, which
                            // the node's own watchers act on.
                            if self.raft.trigger().heartbeat().await.is_err() {
                                return;
                            }
                        }
                    }
                }
            } else {
                tokio::select! {
                    changed = role.changed() => if changed.is_err() { return },
                    _ = stop.recv() => return,
                }
            }
        }
    }
}

/// Turns openraft's tick on when dropped: the pacer never leaves a node
/// without its election timer, however it ends.
struct TickBackOn(Raft);

impl Drop for TickBackOn {
    fn drop(&mut self) {
        self.0.runtime_config().tick(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_follows_the_election_timer_and_no_rpc_timeout_shrinks() {
        let t = openraft_timing(50, 150);
        assert_eq!(t.timer_basis_ms, 149);
        assert!(!t.enable_heartbeat);
        // openraft's tick: basis × 13/64, about 30 ms instead of 10 ms.
        assert_eq!(t.timer_basis_ms * 13 / 64, 30);
        // A heartbeat just below the election timeout keeps the basis valid.
        assert_eq!(openraft_timing(149, 150).timer_basis_ms, 149);
        // The defaults: a tick about every 60 ms, RPCs time out after 299 ms.
        let defaults = openraft_timing(100, 300);
        assert_eq!(defaults.timer_basis_ms, 299);
        assert_eq!(defaults.timer_basis_ms * 13 / 64, 60);
    }

    #[test]
    #[should_panic(expected = "raft timing unchecked")]
    fn an_unchecked_timing_is_a_bug() {
        openraft_timing(150, 150);
    }
}

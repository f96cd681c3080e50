//! Housekeeping task settings in the replicated state (pure).
//!
//! Invariant: a task absent from the map runs with defaults (not paused,
//! trigger 0); `trigger` only grows.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The housekeeping tasks deckhand runs on Redis alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// Return expired ack and nack locks to the active pool.
    Unlock,
    /// Return processing entries past their ack deadline to the active pool.
    Timeout,
}

impl TaskKind {
    pub const ALL: [TaskKind; 2] = [TaskKind::Unlock, TaskKind::Timeout];

    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Unlock => "UNLOCK",
            TaskKind::Timeout => "TIMEOUT",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "UNLOCK" => Ok(TaskKind::Unlock),
            "TIMEOUT" => Ok(TaskKind::Timeout),
            _ => Err(format!("unknown task {s:?}; tasks are UNLOCK and TIMEOUT")),
        }
    }
}

/// Operator settings of one task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSettings {
    pub paused: bool,
    /// Bumped by `ctl trigger`: owners re-check every queue at once.
    pub trigger: u64,
}

/// Settings of every task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tasks(pub BTreeMap<TaskKind, TaskSettings>);

impl Tasks {
    pub fn get(&self, task: TaskKind) -> TaskSettings {
        self.0.get(&task).copied().unwrap_or_default()
    }

    pub fn set_paused(&mut self, task: TaskKind, paused: bool) {
        self.0.entry(task).or_default().paused = paused;
    }

    pub fn trigger(&mut self, task: TaskKind) {
        let s = self.0.entry(task).or_default();
        s.trigger += 1;
    }

    /// Sum of trigger counters: changes whenever any task is triggered.
    pub fn trigger_seq(&self) -> u64 {
        self.0.values().map(|s| s.trigger).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pause_and_trigger() {
        let mut t = Tasks::default();
        assert!(!t.get(TaskKind::Unlock).paused);
        t.set_paused(TaskKind::Unlock, true);
        assert!(t.get(TaskKind::Unlock).paused);
        assert!(!t.get(TaskKind::Timeout).paused);
        t.trigger(TaskKind::Timeout);
        t.trigger(TaskKind::Timeout);
        assert_eq!(t.trigger_seq(), 2);
        assert_eq!("unlock".parse::<TaskKind>(), Ok(TaskKind::Unlock));
        assert!("expire".parse::<TaskKind>().is_err());
    }
}

//! Golden scenario tests for [`LeaderTerm`] (see the module doc).
//!
//! A script is one command per line (`#` starts a comment). The runner
//! echoes each command as `> command` followed by what it printed, and the
//! transcript must equal the `.golden` file beside the script.
//!
//! Commands (durations are humantime: `300ms`, `1.4s`):
//! - `init shards=N nodes=1,2,3 [leader=1] [lease=1s] [margin=300ms]
//!   [freshness=150ms] [max-releases=32]`: a cluster state with N unowned
//!   shards, and node `leader` starting its first term at t=0;
//! - `advance D`: the clock moves on;
//! - `heartbeat n2[,n3…] [running=owned|none|S,S…] [applied=N] [inc=N] [seq=N]`:
//!   a report from each node. By default it runs exactly the shards the
//!   state gives it, has applied everything, and its report numbers count
//!   up per node (incarnation 1);
//! - `hand-back n3`: the node stopped its work and leaves (after its last
//!   report);
//! - `plan`: one planning round; its moves are committed at the next index;
//! - `drain n2`, `undrain n2`: the operator's commands, committed;
//! - `members 1,2,3,4`: the membership changes (a node joins or leaves);
//! - `new-term leader=N`: node N is elected for the next term at this moment;
//! - `shards`: the ownership table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{LeaderTerm, Report, ShardRun, Timing};
use crate::cluster::NodeId;
use crate::cluster::{ClusterState, Command, Move};
use crate::proto::worker::TaskCounters;

struct Scenario {
    base: Instant,
    now: Instant,
    state: ClusterState,
    members: BTreeSet<NodeId>,
    leader: Option<LeaderTerm>,
    timing: Timing,
    max_releases: usize,
    /// Last report number sent by each node.
    seqs: BTreeMap<NodeId, u64>,
}

type Args<'a> = BTreeMap<&'a str, &'a str>;

fn node(word: &str) -> Result<NodeId, String> {
    word.strip_prefix('n')
        .unwrap_or(word)
        .parse()
        .map_err(|_| format!("not a node: {word:?}"))
}

fn nodes(list: &str) -> Result<Vec<NodeId>, String> {
    list.split(',').map(node).collect()
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("bad duration {text:?}: {e}"))
}

fn number<T: std::str::FromStr>(args: &Args, key: &str, default: T) -> Result<T, String> {
    args.get(key)
        .map(|v| v.parse().map_err(|_| format!("bad {key}: {v:?}")))
        .unwrap_or(Ok(default))
}

impl Scenario {
    fn new() -> Self {
        let base = Instant::now();
        Self {
            base,
            now: base,
            state: ClusterState::default(),
            members: BTreeSet::new(),
            leader: None,
            timing: Timing {
                lease: Duration::from_secs(1),
                margin: Duration::from_millis(300),
                freshness: Duration::from_millis(150),
            },
            max_releases: 32,
            seqs: BTreeMap::new(),
        }
    }

    fn at(&self, t: Instant) -> String {
        format!("t={:.3}s", t.duration_since(self.base).as_secs_f64())
    }

    fn leader(&mut self) -> Result<&mut LeaderTerm, String> {
        self.leader
            .as_mut()
            .ok_or_else(|| "no leader: run init".into())
    }

    fn commit(&mut self, command: Command) -> u64 {
        let index = self.state.last_index + 1;
        self.state.apply(index, &command);
        index
    }

    /// `init`: see the module doc.
    fn init(&mut self, args: &Args, out: &mut String) -> Result<(), String> {
        let shards: u32 = number(args, "shards", 8)?;
        self.members = nodes(args.get("nodes").copied().unwrap_or("1,2,3"))?
            .into_iter()
            .collect();
        let me = node(args.get("leader").copied().unwrap_or("1"))?;
        for (key, field) in [
            ("lease", &mut self.timing.lease),
            ("margin", &mut self.timing.margin),
            ("freshness", &mut self.timing.freshness),
        ] {
            if let Some(v) = args.get(key) {
                *field = duration(v)?;
            }
        }
        self.max_releases = number(args, "max-releases", 32)?;
        self.commit(Command::InitCluster {
            shard_count: shards,
            generation: 1,
        });
        self.leader = Some(LeaderTerm::new(me, 1, self.timing, self.now));
        writeln!(out, "n{me} leads term 1 at {}", self.at(self.now)).ok();
        Ok(())
    }

    /// One `heartbeat` from node `n`.
    fn heartbeat(&mut self, n: NodeId, args: &Args, out: &mut String) -> Result<(), String> {
        let running = self.running(n, args.get("running").copied())?;
        // An explicit seq replays an old report (one in flight).
        let seq = match args.get("seq") {
            Some(v) => v.parse().map_err(|_| format!("bad seq {v:?}"))?,
            None => {
                let seq = self.seqs.entry(n).or_default();
                *seq += 1;
                *seq
            }
        };
        let report = Report {
            received_at: self.now,
            applied_index: number(args, "applied", self.state.last_index)?,
            running,
            lease_remaining: self.timing.lease,
            fenced_writes: 0,
            tasks: TaskCounters::default(),
            fenced: BTreeMap::new(),
        };
        let inc = number(args, "inc", 1)?;
        let heard = self.leader()?.heartbeat(n, report, inc, seq);
        let mut notes = Vec::new();
        if heard.back {
            notes.push("back after its hand-back");
        }
        if heard.replan {
            notes.push("plan now");
        }
        writeln!(out, "n{n} seq {seq}: {}", notes.join(", ")).ok();
        Ok(())
    }

    /// The shards node `n` reports running: `owned` (default), `none` or a list.
    fn running(&self, n: NodeId, running: Option<&str>) -> Result<BTreeMap<u32, ShardRun>, String> {
        Ok(match running {
            None | Some("owned") => self
                .state
                .owned_by(n)
                .map(|(s, st)| {
                    (
                        s,
                        ShardRun {
                            epoch: st.epoch,
                            passes: 1,
                        },
                    )
                })
                .collect(),
            Some("none") => BTreeMap::new(),
            Some(list) => list
                .split(',')
                .map(|s| {
                    let shard: u32 = s.parse().map_err(|_| format!("bad shard {s:?}"))?;
                    let epoch = self
                        .state
                        .shards
                        .get(shard as usize)
                        .ok_or(format!("no shard {shard}"))?
                        .epoch;
                    Ok((shard, ShardRun { epoch, passes: 1 }))
                })
                .collect::<Result<_, String>>()?,
        })
    }

    /// `plan`: one round, its moves printed with why, then committed.
    fn plan(&mut self, out: &mut String) -> Result<(), String> {
        let (now, members, max) = (self.now, self.members.clone(), self.max_releases);
        let state = self.state.clone();
        let plan = self.leader()?.plan(&state, &members, max, now);
        for mv in &plan.moves {
            match mv {
                Move::Assign { shard, to, .. } => {
                    let s = &state.shards[*shard as usize];
                    let from = s.owner.or(s.released_from);
                    let why = plan
                        .reassigned
                        .iter()
                        .find(|r| r.shard == *shard)
                        .map(|r| {
                            if r.handed_back {
                                format!(" (n{} handed back)", r.from)
                            } else {
                                format!(" (n{} silent {:?})", r.from, r.silent_for)
                            }
                        })
                        .unwrap_or_else(|| {
                            from.map(|f| format!(" (n{f} stopped it)"))
                                .unwrap_or_default()
                        });
                    writeln!(out, "assign s{shard} -> n{to}{why}").ok();
                }
                Move::Release { shard, .. } => {
                    let owner = state.shards[*shard as usize].owner;
                    writeln!(out, "release s{shard} from n{}", owner.unwrap_or(0)).ok();
                }
            }
        }
        if plan.moves.is_empty() {
            writeln!(out, "no moves").ok();
        } else {
            let index = self.commit(Command::Moves { moves: plan.moves });
            writeln!(out, "committed at index {index}").ok();
        }
        if let Some(t) = plan.next_expiry {
            writeln!(out, "next expiry {}", self.at(t)).ok();
        }
        Ok(())
    }

    /// `shards`: the ownership table.
    fn shards(&self, out: &mut String) {
        for (i, s) in self.state.shards.iter().enumerate() {
            let owner = match (s.owner, s.released_from) {
                (Some(o), _) => format!("n{o}"),
                (None, Some(f)) => format!("released from n{f}"),
                (None, None) => "unowned".to_string(),
            };
            writeln!(out, "s{i}: {owner} @{}", s.epoch).ok();
        }
    }

    fn run(&mut self, line: &str, out: &mut String) -> Result<(), String> {
        let mut words = line.split_whitespace();
        let Some(command) = words.next() else {
            return Ok(());
        };
        let positional: Vec<&str> = words.clone().filter(|w| !w.contains('=')).collect();
        let args: Args = words.filter_map(|w| w.split_once('=')).collect();
        match command {
            "init" => self.init(&args, out)?,
            "advance" => {
                let by = duration(positional.first().ok_or("advance by how much?")?)?;
                self.now += by;
                writeln!(out, "{}", self.at(self.now)).ok();
            }
            "heartbeat" => {
                let from = nodes(positional.first().ok_or("heartbeat from whom?")?)?;
                for n in from {
                    self.heartbeat(n, &args, out)?;
                }
            }
            "hand-back" => {
                let n = node(positional.first().ok_or("who hands back?")?)?;
                let seq = self.seqs.get(&n).copied().unwrap_or(0);
                let (applied, now) = (self.state.last_index, self.now);
                self.leader()?.hand_back(n, applied, (1, seq), now);
                writeln!(out, "n{n} handed back after its report {seq}").ok();
            }
            "plan" => self.plan(out)?,
            "drain" | "undrain" => {
                let n = node(positional.first().ok_or("drain whom?")?)?;
                let index = self.commit(Command::SetDrained {
                    node: n,
                    drained: command == "drain",
                });
                writeln!(out, "{command}ed n{n} at index {index}").ok();
            }
            "members" => {
                let list = positional.first().ok_or("members 1,2,3")?;
                self.members = nodes(list)?.into_iter().collect();
                writeln!(out, "members {:?}", self.members).ok();
            }
            "new-term" => {
                let me = node(args.get("leader").ok_or("new-term leader=?")?)?;
                let term = self.leader.as_ref().map_or(1, |l| l.term() + 1);
                self.leader = Some(LeaderTerm::new(me, term, self.timing, self.now));
                writeln!(out, "n{me} leads term {term} at {}", self.at(self.now)).ok();
            }
            "shards" => self.shards(out),
            other => return Err(format!("unknown command {other:?}")),
        }
        Ok(())
    }
}

fn transcript(script: &str) -> String {
    let mut scenario = Scenario::new();
    let mut out = String::new();
    for line in script.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        writeln!(out, "> {line}").ok();
        if let Err(e) = scenario.run(line, &mut out) {
            writeln!(out, "error: {e}").ok();
        }
    }
    out
}

fn scripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/leader/testscripts");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "script"))
        .collect();
    found.sort();
    found
}

#[test]
fn leader_scenarios_match_their_golden_transcripts() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failed = Vec::new();
    let scripts = scripts();
    assert!(!scripts.is_empty(), "no scenario scripts found");
    for script in scripts {
        let text = std::fs::read_to_string(&script).expect("read script");
        let got = transcript(&text);
        let golden = script.with_extension("golden");
        if update {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            eprintln!(
                "--- {} differs from its golden file; got:\n{got}",
                script.display()
            );
            failed.push(script);
        }
    }
    assert!(
        failed.is_empty(),
        "scenarios differ (UPDATE_GOLDEN=1 rewrites after review): {failed:?}"
    );
}

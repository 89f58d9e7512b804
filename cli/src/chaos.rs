//! Fault injection against a local farm of real processes, and the
//! bookkeeping that judges the result: shared by `tests/chaos.rs` and the
//! `chaos` benchmark so that both run exactly one implementation.
//!
//! # Layout
//! - [`seed_from_env`]: the run's seed, from `DROVER_CHAOS_SEED` or the
//!   clock; callers print it so a failure can be replayed.
//! - [`FaultPlan`] and [`run_faults`]: SIGKILLs of the coordinator and of
//!   nodes at seeded moments of a job's progress, each followed by a restart
//!   on the same data dir (and, for the coordinator, the same ports).
//! - [`check_exactly_once`]: the job's final accounting covers every frame
//!   exactly once.
//! - [`parse_node_line`] and [`RenderLedger`]: what the nodes say they
//!   rendered, read from their logs (every incarnation), and from it how
//!   many frames were rendered more than once and after which fault.
//!
//! # What a node must log for the ledger to be exact
//! The ledger reads three `drover_node` lines, each with the attempt's
//! `job`, `chunk` and (best) `epoch`:
//! - `assigned ... frames=A-B` when an assignment arrives (logged today);
//! - `segment finished ... frames=A-B rendered=N` when a chunk's segment is
//!   complete in the spool (`A-B` is what the segment holds); the node's
//!   `segment spooled ... frames=A-B` line says the same and is read too;
//! - `chunk abandoned ... frames=A-B rendered=N` when a chunk stops without
//!   a segment (cancelled, session lost, failed), `N` being the frames it
//!   rendered from `A` on.
//!
//! An end line without `epoch` closes the latest open attempt of that chunk
//! in the same process that starts at `A`.
//!
//! An attempt with neither end line is *open*: its process was SIGKILLed,
//! or the node does not log the end lines yet. Open attempts of a killed
//! node are counted from the coordinator's view of their progress taken
//! just before the kill (a lower bound: progress is reported every 100 ms);
//! any other open attempt is listed as unknown and the report says it is
//! not exact. Frames *assigned* more than once are always counted (from
//! `assigned` and `shrink` lines): an upper bound on what was rendered
//! twice, available whatever the node logs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use drover_shared::api::{ChunkState, JobView};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::cluster::{wait_for, Cluster};

/// Environment variable that fixes the seed of a chaos run.
pub const SEED_ENV: &str = "DROVER_CHAOS_SEED";

/// Largest random delay between the moment a kill point is reached and the
/// kill, milliseconds: spreads kills over rendering, uploads and commits.
pub const MAX_KILL_JITTER_MS: u64 = 400;
/// How long a kill point may take to be reached, or the farm to come back
/// after a kill, before the run is declared stuck.
pub const FAULT_STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// The run's seed: `DROVER_CHAOS_SEED` if set, else the clock.
pub fn seed_from_env() -> anyhow::Result<u64> {
    match std::env::var(SEED_ENV) {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("{SEED_ENV}={s:?} is not a u64")),
        Err(_) => Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)),
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One kind of fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the coordinator, then start it on the same data dir and ports.
    KillCoordinator,
    /// SIGKILL the named node while it renders, then start it again with the
    /// same name and data dir.
    KillNode(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillCoordinator => write!(f, "kill coordinator"),
            Fault::KillNode(n) => write!(f, "kill node {n}"),
        }
    }
}

/// A fault and when to inject it.
///
/// Kill points are counted from the moment the farm is whole again after
/// the previous fault (every node connected), not as points of the whole
/// job: while a killed coordinator is away, nodes keep rendering what they
/// hold, so progress jumps, and fixed points would bunch kills together or
/// leave them for after the job's end.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedFault {
    /// What to do.
    pub fault: Fault,
    /// Injected once this many more frames are done than when the farm was
    /// last whole (or the job started), while a chunk is mid-render (on the
    /// victim, for a node kill).
    pub after_frames: u64,
    /// Then after this many milliseconds.
    pub jitter_ms: u64,
}

/// The faults of one run, in the order they happen, all drawn from `seed`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// The seed everything was drawn from.
    pub seed: u64,
    /// Faults in order.
    pub faults: Vec<PlannedFault>,
}

impl FaultPlan {
    /// `coordinator_kills` coordinator kills and one kill of each node in
    /// `node_kills`, in a seeded order, each a seeded number of frames in
    /// `step_frames` after the farm is whole again.
    pub fn new(
        seed: u64,
        coordinator_kills: usize,
        node_kills: &[&str],
        step_frames: std::ops::RangeInclusive<u64>,
    ) -> FaultPlan {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut kinds: Vec<Fault> = std::iter::repeat_n(Fault::KillCoordinator, coordinator_kills)
            .chain(node_kills.iter().map(|n| Fault::KillNode(n.to_string())))
            .collect();
        kinds.shuffle(&mut rng);
        let faults = kinds
            .into_iter()
            .map(|fault| PlannedFault {
                fault,
                after_frames: rng.random_range(step_frames.clone()),
                jitter_ms: rng.random_range(0..=MAX_KILL_JITTER_MS),
            })
            .collect();
        FaultPlan { seed, faults }
    }

    /// The most frames the plan can use up before its last kill, when the
    /// farm gets at most `frames_per_recovery` done while it recovers from a
    /// kill (what its nodes hold: nodes x slots x largest chunk). A job at
    /// least this long is still running at every planned kill.
    pub fn frames_needed(&self, frames_per_recovery: u64) -> u64 {
        self.faults
            .iter()
            .map(|f| f.after_frames + frames_per_recovery)
            .sum()
    }
}

/// A chunk a killed node was rendering, as the coordinator showed it just
/// before the kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// The node.
    pub node: String,
    /// Job id.
    pub job: u64,
    /// Chunk id.
    pub chunk: u64,
    /// First frame of the chunk.
    pub start: u64,
    /// Frames it had rendered.
    pub frames_done: u64,
}

/// A fault as it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectedFault {
    /// What was done.
    pub fault: Fault,
    /// When the process was killed, microseconds since the Unix epoch (the
    /// clock node logs are stamped with).
    pub at_unix_us: u64,
    /// Since the job was submitted.
    pub after_submit: Duration,
    /// The job's `frames_done` just before the kill.
    pub frames_done_seen: u64,
    /// For a node kill: its chunks that had started, per the coordinator.
    pub in_flight: Vec<InFlight>,
    /// From the kill until every node was connected again.
    pub recovery: Duration,
}

/// Injects `plan`'s faults into `cluster` while job `job` runs, then
/// returns; `nodes` is how many nodes must be connected again after each
/// fault before the next one. Stops early, returning fewer faults, if the
/// job ends before a kill point is reached. `say` is told of each fault.
pub fn run_faults(
    cluster: &mut Cluster,
    job: u64,
    submitted: Instant,
    plan: &FaultPlan,
    nodes: usize,
    mut say: impl FnMut(&str),
) -> anyhow::Result<Vec<InjectedFault>> {
    let mut done = Vec::new();
    // Frames done when the farm was last whole.
    let mut base = 0u64;
    for planned in &plan.faults {
        let victim = match &planned.fault {
            Fault::KillNode(n) => Some(n.as_str()),
            Fault::KillCoordinator => None,
        };
        let client = cluster.client();
        let at = base + planned.after_frames;
        let what = format!(
            "{} at {at} frames done with a chunk mid-render",
            planned.fault
        );
        // The kill point: enough progress, and work under way that the kill
        // interrupts (on the victim, for a node kill).
        let seen = wait_for(FAULT_STEP_TIMEOUT, &what, || {
            let j = client.job(job)?;
            if j.state.is_terminal() {
                return Ok(Some(None));
            }
            let busy = j.chunks.iter().any(|c| {
                c.state == ChunkState::Assigned
                    && c.frames_done > 0
                    && victim.is_none_or(|v| c.node.as_deref() == Some(v))
            });
            Ok((busy && j.frames_done >= at).then_some(Some(j)))
        })?;
        let Some(_) = seen else {
            say(&format!("job ended before: {what}"));
            break;
        };
        std::thread::sleep(Duration::from_millis(planned.jitter_ms));
        // The view closest to the kill, for the in-flight figures.
        let before = client.job(job)?;
        let in_flight = match victim {
            Some(v) => before
                .chunks
                .iter()
                .filter(|c| c.state == ChunkState::Assigned && c.node.as_deref() == Some(v))
                .filter_map(|c| {
                    Some(InFlight {
                        node: v.to_string(),
                        job,
                        chunk: u64::from(c.index?),
                        start: c.start,
                        frames_done: c.frames_done,
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        let at_unix_us = now_unix_us();
        let killed = Instant::now();
        match &planned.fault {
            Fault::KillCoordinator => {
                cluster.kill_coordinator()?;
                cluster.start_coordinator()?;
            }
            Fault::KillNode(n) => {
                cluster.kill_node(n)?;
                cluster.start_node(n)?;
                // The API may still show the killed process's session.
                cluster.wait_node_connected(n)?;
            }
        }
        cluster.wait_nodes(nodes)?;
        base = cluster.client().job(job)?.frames_done;
        let injected = InjectedFault {
            fault: planned.fault.clone(),
            at_unix_us,
            after_submit: killed.duration_since(submitted),
            frames_done_seen: before.frames_done,
            in_flight,
            recovery: killed.elapsed(),
        };
        say(&format!(
            "fault {}: {} at {:.1} s, {} frames done (+{} ms jitter), nodes back after {:.1} s",
            done.len() + 1,
            injected.fault,
            injected.after_submit.as_secs_f64(),
            injected.frames_done_seen,
            planned.jitter_ms,
            injected.recovery.as_secs_f64()
        ));
        done.push(injected);
    }
    Ok(done)
}

/// Checks that `job` ended done with every frame of `first..=last` in
/// exactly one done chunk, nothing missing, and the totals agreeing.
pub fn check_exactly_once(job: &JobView, first: u64, last: u64) -> Result<(), String> {
    let total = last - first + 1;
    let mut errors = Vec::new();
    if job.frames_total != total {
        errors.push(format!("frames_total {} != {total}", job.frames_total));
    }
    if job.frames_done != total {
        errors.push(format!("frames_done {} != {total}", job.frames_done));
    }
    if !job.missing_frames.is_empty() {
        errors.push(format!("missing frames {:?}", job.missing_frames));
    }
    let by_node: u64 = job.frames_by_node.values().sum();
    if by_node != total {
        errors.push(format!(
            "frames_by_node sums to {by_node} != {total}: {:?}",
            job.frames_by_node
        ));
    }
    let mut done: Vec<(u64, u64)> = Vec::new();
    for c in &job.chunks {
        if c.state == ChunkState::Done {
            done.push((c.start, c.end));
        } else {
            errors.push(format!("chunk {c:?} is not done"));
        }
    }
    done.sort_unstable();
    let mut next = first;
    for (start, end) in done {
        if end < start {
            errors.push(format!("chunk {start}-{end} ends before it starts"));
        } else if start > next {
            errors.push(format!("frames {next}-{} are in no done chunk", start - 1));
        } else if start < next {
            errors.push(format!(
                "frames {start}-{} are in two done chunks",
                end.min(next - 1)
            ));
        }
        next = next.max(end.saturating_add(1));
    }
    if next <= last {
        errors.push(format!("frames {next}-{last} are in no done chunk"));
    } else if next > last + 1 {
        errors.push(format!("done chunks reach frame {} past {last}", next - 1));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// One attempt: a chunk id under one coordinator epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attempt {
    /// Job id.
    pub job: u64,
    /// Chunk id.
    pub chunk: u64,
    /// The coordinator's epoch for it, when the line says.
    pub epoch: Option<u64>,
}

impl Attempt {
    /// Whether a line about `other` may be about this attempt.
    fn matches(&self, other: &Attempt) -> bool {
        self.job == other.job
            && self.chunk == other.chunk
            && (self.epoch.is_none() || other.epoch.is_none() || self.epoch == other.epoch)
    }
}

/// A node log line the ledger reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// `assigned`: the node got `start..=end`.
    Assigned {
        /// Which attempt.
        attempt: Attempt,
        /// First frame.
        start: u64,
        /// Last frame.
        end: u64,
    },
    /// `shrink`: the node answered that the chunk now ends at `end` (`None`:
    /// it had already stopped).
    Shrunk {
        /// Which attempt.
        attempt: Attempt,
        /// The answer.
        end: Option<u64>,
    },
    /// `segment finished`: `start..=end` are in a segment in the spool.
    SegmentFinished {
        /// Which attempt.
        attempt: Attempt,
        /// First frame.
        start: u64,
        /// Last frame.
        end: u64,
    },
    /// `chunk abandoned`: the chunk stopped without a segment after
    /// rendering `rendered` frames from `start` on.
    Abandoned {
        /// Which attempt.
        attempt: Attempt,
        /// First frame.
        start: u64,
        /// Frames rendered.
        rendered: u64,
    },
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Microseconds since the Unix epoch of an RFC 3339 UTC stamp as tracing
/// writes it (`2026-11-24T06:52:24.714101Z`).
fn parse_utc_us(stamp: &str) -> Option<u64> {
    let b = stamp.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || !stamp.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = stamp.get(19..stamp.len() - 1)?;
    let micros = match frac.strip_prefix('.') {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) => {
            let mut s: String = digits.chars().take(6).collect();
            while s.len() < 6 {
                s.push('0');
            }
            s.parse::<i64>().ok()?
        }
        None if frac.is_empty() => 0,
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date, counting in
    // 400-year eras that start on 1 March (so the leap day ends a year).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3_600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000 + micros).ok()
}

fn parse_range(text: &str) -> Option<(u64, u64)> {
    let (a, b) = text.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Reads one node log line: its time (microseconds since the Unix epoch)
/// and the event, if it is one the ledger counts. ANSI colours and quoted
/// values are accepted.
pub fn parse_node_line(line: &str) -> Option<(u64, NodeEvent)> {
    let line = strip_ansi(line);
    let at = parse_utc_us(line.split_whitespace().next()?)?;
    let target_at = line.find("drover_node::")?;
    let rest = &line[target_at..];
    let body = &rest[rest.find(": ")? + 2..];
    let mut message: Vec<&str> = Vec::new();
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for token in body.split_whitespace() {
        match token.split_once('=') {
            Some((k, v)) => {
                fields.insert(k, v.trim_matches('"'));
            }
            None if fields.is_empty() => message.push(token),
            None => {}
        }
    }
    let get = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
    let attempt = Attempt {
        job: get("job")?,
        chunk: get("chunk")?,
        epoch: get("epoch"),
    };
    let range = || fields.get("frames").and_then(|f| parse_range(f));
    let event = match message.join(" ").as_str() {
        "assigned" => {
            let (start, end) = range()?;
            NodeEvent::Assigned {
                attempt,
                start,
                end,
            }
        }
        "shrink" => {
            let answer = *fields.get("answer")?;
            let end = match answer {
                "None" => None,
                a => Some(a.strip_prefix("Some(")?.strip_suffix(')')?.parse().ok()?),
            };
            NodeEvent::Shrunk { attempt, end }
        }
        "segment finished" | "segment spooled" => {
            let (start, end) = range()?;
            NodeEvent::SegmentFinished {
                attempt,
                start,
                end,
            }
        }
        "chunk abandoned" => NodeEvent::Abandoned {
            attempt,
            start: range()?.0,
            rendered: get("rendered")?,
        },
        _ => return None,
    };
    Some((at, event))
}

/// How an attempt ended, as far as the logs say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// No end line.
    Open,
    /// Its segment holds these frames.
    Finished { start: u64, end: u64 },
    /// It stopped after rendering this many frames.
    Abandoned { rendered: u64 },
}

#[derive(Debug, Clone)]
struct AttemptRecord {
    node: String,
    attempt: Attempt,
    assigned_at_us: u64,
    start: u64,
    /// The end after any shrink.
    end: u64,
    outcome: Outcome,
}

/// Every attempt of every node, from all incarnations of their logs.
#[derive(Debug, Clone, Default)]
pub struct RenderLedger {
    attempts: Vec<AttemptRecord>,
}

impl RenderLedger {
    /// Reads `(node name, log text)` pairs, one per process incarnation.
    pub fn from_logs<'a>(logs: impl IntoIterator<Item = (&'a str, &'a str)>) -> RenderLedger {
        let mut attempts: Vec<AttemptRecord> = Vec::new();
        for (node, text) in logs {
            // Attempts of this process without an end line yet.
            let mut open: Vec<usize> = Vec::new();
            // The latest open attempt a line is about (see the module doc).
            let find = |open: &[usize],
                        attempts: &[AttemptRecord],
                        about: &Attempt,
                        start: Option<u64>|
             -> Option<usize> {
                open.iter().rposition(|&i| {
                    let a = &attempts[i];
                    a.attempt.matches(about) && start.is_none_or(|s| s == a.start)
                })
            };
            for line in text.lines() {
                let Some((at, event)) = parse_node_line(line) else {
                    continue;
                };
                match event {
                    NodeEvent::Assigned {
                        attempt,
                        start,
                        end,
                    } => {
                        open.push(attempts.len());
                        attempts.push(AttemptRecord {
                            node: node.to_string(),
                            attempt,
                            assigned_at_us: at,
                            start,
                            end,
                            outcome: Outcome::Open,
                        });
                    }
                    NodeEvent::Shrunk { attempt, end } => {
                        if let (Some(k), Some(end)) = (find(&open, &attempts, &attempt, None), end)
                        {
                            attempts[open[k]].end = end;
                        }
                    }
                    NodeEvent::SegmentFinished {
                        attempt,
                        start,
                        end,
                    } => {
                        if let Some(k) = find(&open, &attempts, &attempt, Some(start)) {
                            attempts[open.remove(k)].outcome = Outcome::Finished { start, end };
                        }
                    }
                    NodeEvent::Abandoned {
                        attempt,
                        start,
                        rendered,
                    } => {
                        if let Some(k) = find(&open, &attempts, &attempt, Some(start)) {
                            attempts[open.remove(k)].outcome = Outcome::Abandoned { rendered };
                        }
                    }
                }
            }
        }
        attempts.sort_by_key(|a| a.assigned_at_us);
        RenderLedger { attempts }
    }

    /// What the nodes rendered for `job`, judged against `faults` (whose
    /// in-flight figures stand in for the end lines killed nodes never
    /// wrote).
    pub fn report(&self, job: u64, faults: &[InjectedFault]) -> RenderReport {
        let mut r = RenderReport {
            extra_renders_by_fault: vec![0; faults.len() + 1],
            extra_assignments_by_fault: vec![0; faults.len() + 1],
            ..RenderReport::default()
        };
        // How often each frame was rendered and assigned so far, and
        // whether a finished segment held it.
        let mut renders: BTreeMap<u64, u32> = BTreeMap::new();
        let mut assigned: BTreeMap<u64, u32> = BTreeMap::new();
        let mut in_segment: BTreeMap<u64, bool> = BTreeMap::new();
        for a in self.attempts.iter().filter(|a| a.attempt.job == job) {
            r.attempts += 1;
            let fault_index = faults
                .iter()
                .take_while(|f| f.at_unix_us <= a.assigned_at_us)
                .count();
            for f in a.start..=a.end {
                let n = assigned.entry(f).or_default();
                *n += 1;
                if *n > 1 {
                    r.extra_assignments_by_fault[fault_index] += 1;
                }
            }
            let rendered: Option<(u64, u64)> = match a.outcome {
                Outcome::Finished { start, end } => {
                    r.segments_finished += 1;
                    Some((start, end))
                }
                Outcome::Abandoned { rendered } => {
                    r.abandoned += 1;
                    (rendered > 0).then(|| (a.start, a.start + rendered - 1))
                }
                Outcome::Open => {
                    let killed = faults
                        .iter()
                        .flat_map(|f| &f.in_flight)
                        .find(|i| i.node == a.node && i.job == job && i.chunk == a.attempt.chunk);
                    match killed {
                        Some(i) => {
                            r.estimated_from_kills += 1;
                            (i.frames_done > 0).then(|| (a.start, a.start + i.frames_done - 1))
                        }
                        None => {
                            r.unknown.push(format!(
                                "{} job {} chunk {} epoch {:?} frames {}-{}",
                                a.node, job, a.attempt.chunk, a.attempt.epoch, a.start, a.end
                            ));
                            None
                        }
                    }
                }
            };
            if let Some((start, end)) = rendered {
                for f in start..=end {
                    let n = renders.entry(f).or_default();
                    *n += 1;
                    r.renders += 1;
                    if *n > 1 {
                        r.extra_renders += 1;
                        r.extra_renders_by_fault[fault_index] += 1;
                        if in_segment.get(&f).copied().unwrap_or(false) {
                            r.rerendered_after_segment += 1;
                        }
                    }
                }
            }
            if let Outcome::Finished { start, end } = a.outcome {
                for f in start..=end {
                    in_segment.insert(f, true);
                }
            }
        }
        r.frames_rendered_more_than_once = renders.values().filter(|n| **n > 1).count() as u64;
        r.frames_assigned_more_than_once = assigned.values().filter(|n| **n > 1).count() as u64;
        r.extra_assignments = assigned.values().map(|n| u64::from(n - 1)).sum();
        r.frames_in_segments = in_segment.len() as u64;
        r
    }
}

/// What the nodes rendered for one job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderReport {
    /// Attempts the nodes logged.
    pub attempts: usize,
    /// Of them, ended with a finished segment.
    pub segments_finished: usize,
    /// Of them, ended without one.
    pub abandoned: usize,
    /// Of them, cut short by a node kill and counted from the coordinator's
    /// view before the kill.
    pub estimated_from_kills: usize,
    /// Attempts whose rendered frames no log says (see the module doc).
    pub unknown: Vec<String>,
    /// Frame renders in all.
    pub renders: u64,
    /// Distinct frames rendered more than once.
    pub frames_rendered_more_than_once: u64,
    /// Renders beyond each frame's first.
    pub extra_renders: u64,
    /// Of those, renders of a frame some finished segment already held.
    pub rerendered_after_segment: u64,
    /// Extra renders by the fault they followed: `[0]` before the first
    /// fault, `[i]` after fault `i` (1-based) and before the next.
    pub extra_renders_by_fault: Vec<u64>,
    /// Distinct frames some finished segment held.
    pub frames_in_segments: u64,
    /// Distinct frames assigned more than once (an upper bound on frames
    /// rendered more than once, known even without end lines).
    pub frames_assigned_more_than_once: u64,
    /// Assignments beyond each frame's first.
    pub extra_assignments: u64,
    /// Extra assignments by the fault they followed, as
    /// [`RenderReport::extra_renders_by_fault`].
    pub extra_assignments_by_fault: Vec<u64>,
}

impl RenderReport {
    /// True when every attempt's rendered frames are known from the logs,
    /// or from the coordinator's view of a killed node's progress.
    pub fn is_exact(&self) -> bool {
        self.unknown.is_empty() && self.segments_finished + self.abandoned > 0
    }
}

impl fmt::Display for RenderReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "attempts {} (segments finished {}, abandoned {}, cut by a node kill {}, unknown {})",
            self.attempts,
            self.segments_finished,
            self.abandoned,
            self.estimated_from_kills,
            self.unknown.len()
        )?;
        if self.is_exact() {
            writeln!(
                f,
                "frames rendered more than once: {} ({} extra renders of {}; {} of frames already in a finished segment)",
                self.frames_rendered_more_than_once,
                self.extra_renders,
                self.renders,
                self.rerendered_after_segment
            )?;
            writeln!(
                f,
                "extra renders before the first fault and after each: {:?}",
                self.extra_renders_by_fault
            )?;
        } else {
            writeln!(
                f,
                "frames rendered more than once: UNKNOWN, the node logs do not say what {} attempts rendered (they need `segment finished` and `chunk abandoned` lines; see drover_cli::chaos)",
                self.unknown.len()
            )?;
        }
        write!(
            f,
            "frames assigned more than once: {} ({} extra assignments, an upper bound on re-renders; before the first fault and after each: {:?})",
            self.frames_assigned_more_than_once, self.extra_assignments, self.extra_assignments_by_fault
        )
    }
}

/// Bails with `what` and the report when `report` is not exact.
pub fn require_exact(report: &RenderReport) -> anyhow::Result<()> {
    if !report.is_exact() {
        bail!(
            "cannot count re-rendered frames: {} attempts have no end line in the node logs, e.g. {:?}",
            report.unknown.len(),
            report.unknown.first()
        );
    }
    Ok(())
}

/// Every incarnation's log of each node in `names`, as `(name, text)`.
pub fn node_logs(cluster: &Cluster, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .flat_map(|n| {
            cluster.log_files(n).into_iter().map(move |p| {
                (
                    n.to_string(),
                    std::fs::read_to_string(p).unwrap_or_default(),
                )
            })
        })
        .collect()
}

/// The log files a run leaves, for a failure message.
pub fn log_paths(cluster: &Cluster, names: &[&str]) -> Vec<PathBuf> {
    let mut all = cluster.log_files("coordinator");
    for n in names {
        all.extend(cluster.log_files(n));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lines_parse_with_or_without_colours() {
        let check = |line: &str, want: Option<NodeEvent>| {
            assert_eq!(parse_node_line(line).map(|(_, e)| e), want, "{line}");
        };
        let a = Attempt {
            job: 2,
            chunk: 7,
            epoch: Some(3),
        };
        check(
            "2026-11-24T06:52:24.714101Z  INFO drover_node::agent: assigned job=2 chunk=7 epoch=3 frames=25-48",
            Some(NodeEvent::Assigned { attempt: a, start: 25, end: 48 }),
        );
        check(
            "\u{1b}[2m2026-11-24T06:52:24.714101Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mdrover_node::agent\u{1b}[0m\u{1b}[2m:\u{1b}[0m assigned \u{1b}[3mjob\u{1b}[0m\u{1b}[2m=\u{1b}[0m2 \u{1b}[3mchunk\u{1b}[0m\u{1b}[2m=\u{1b}[0m7 \u{1b}[3mepoch\u{1b}[0m\u{1b}[2m=\u{1b}[0m3 \u{1b}[3mframes\u{1b}[0m\u{1b}[2m=\u{1b}[0m25-48",
            Some(NodeEvent::Assigned { attempt: a, start: 25, end: 48 }),
        );
        check(
            "2026-11-24T06:52:25.000000Z  INFO drover_node::agent: shrink job=2 chunk=7 epoch=3 proposed_end=30 answer=Some(33)",
            Some(NodeEvent::Shrunk { attempt: a, end: Some(33) }),
        );
        check(
            "2026-11-24T06:52:25.000000Z  INFO drover_node::agent: shrink job=2 chunk=7 epoch=3 proposed_end=30 answer=None",
            Some(NodeEvent::Shrunk { attempt: a, end: None }),
        );
        check(
            "2026-11-24T06:52:26.5Z  INFO drover_node::exec: segment finished job=2 chunk=7 epoch=3 frames=\"25-33\" rendered=9",
            Some(NodeEvent::SegmentFinished { attempt: a, start: 25, end: 33 }),
        );
        check(
            "2026-11-24T06:52:26Z  INFO drover_node::exec: chunk abandoned job=2 chunk=7 epoch=3 frames=25-48 rendered=4 reason=\"session lost\"",
            Some(NodeEvent::Abandoned { attempt: a, start: 25, rendered: 4 }),
        );
        // The node's own line for a finished segment, without the epoch.
        check(
            "2026-11-24T06:52:26Z  INFO drover_node::agent: segment spooled job=2 chunk=7 frames=25-33 bytes=123",
            Some(NodeEvent::SegmentFinished {
                attempt: Attempt { epoch: None, ..a },
                start: 25,
                end: 33,
            }),
        );
        // Other lines, and the coordinator's own `assign`, are not events.
        check(
            "2026-11-24T06:52:26Z  INFO drover_node::agent: connected coordinator=127.0.0.1:1",
            None,
        );
        check(
            "2026-11-24T06:52:24.713171Z  INFO drover_coordinator::actors: assign job=1 chunk=1 epoch=1 node=\"n1\" frames=241-480",
            None,
        );
        check("Svt[info]: SVT [build]  :	GCC 12.2.0	 64 bit", None);
    }

    #[test]
    fn stamps_are_microseconds_since_the_epoch() {
        assert_eq!(parse_utc_us("1970-01-01T00:00:00.000001Z"), Some(1));
        assert_eq!(
            parse_utc_us("2000-03-01T00:00:00Z"),
            Some(951_868_800_000_000)
        );
        assert_eq!(
            parse_utc_us("2026-11-24T06:52:24.714101Z"),
            Some(1_795_503_144_714_101)
        );
        assert_eq!(parse_utc_us("2026-11-24 06:52:24Z"), None);
    }

    fn view(chunks: &[(u64, u64, ChunkState)]) -> JobView {
        let total: u64 = chunks.iter().map(|c| c.1 - c.0 + 1).sum();
        serde_json::from_value(serde_json::json!({
            "id": 1, "name": "t", "state": "done", "frames_total": 10, "frames_done": 10,
            "frames_by_node": {"n": total},
            "chunks": chunks.iter().map(|(s, e, st)| serde_json::json!({
                "index": 0, "start": s, "end": e, "state": st, "node": "n",
                "frames_done": e - s + 1, "attempts": 0, "last_error": null,
            })).collect::<Vec<_>>(),
            "error": null, "submitted_at_ms": 0, "first_frame_at_ms": null,
            "finished_at_ms": null, "output_path": null, "output_url": null,
        }))
        .unwrap()
    }

    #[test]
    fn exactly_once_finds_gaps_overlaps_and_undone_chunks() {
        use ChunkState::*;
        let check = |chunks: &[(u64, u64, ChunkState)], want: Result<(), &str>| {
            assert_eq!(
                check_exactly_once(&view(chunks), 1, 10),
                want.map_err(str::to_string),
                "{chunks:?}"
            );
        };
        check(&[(1, 4, Done), (5, 10, Done)], Ok(()));
        check(&[(5, 10, Done), (1, 4, Done)], Ok(()));
        check(
            &[(1, 3, Done), (5, 10, Done)],
            Err("frames_by_node sums to 9 != 10: {\"n\": 9}; frames 4-4 are in no done chunk"),
        );
        check(
            &[(1, 5, Done), (5, 10, Done)],
            Err("frames_by_node sums to 11 != 10: {\"n\": 11}; frames 5-5 are in two done chunks"),
        );
        check(
            &[(1, 4, Done), (5, 9, Done)],
            Err("frames_by_node sums to 9 != 10: {\"n\": 9}; frames 10-10 are in no done chunk"),
        );
        check(
            &[(1, 4, Done), (5, 10, Assigned)],
            Err("chunk ChunkView { index: Some(0), kind: Normal, start: 5, end: 10, state: Assigned, node: Some(\"n\"), frames_done: 6, attempts: 0, last_error: None, log_tail: None } is not done; frames 5-10 are in no done chunk"),
        );
    }

    fn line(at_s: u64, node_msg: &str) -> String {
        format!("2026-11-24T06:52:{at_s:02}.000000Z  INFO drover_node::exec: {node_msg}")
    }

    #[test]
    fn the_ledger_counts_renders_of_frames_already_rendered() {
        let base = parse_utc_us("2026-11-24T06:52:00Z").unwrap();
        // n1 renders 1-10 and finishes; its upload is lost in a kill at
        // 06:52:05 and it renders 1-10 again; n2 is killed at 06:52:07 four
        // frames into 11-20, which n1 then renders.
        let n1 = [
            line(1, "assigned job=1 chunk=0 epoch=1 frames=1-10"),
            line(
                4,
                "segment finished job=1 chunk=0 epoch=1 frames=1-10 rendered=10",
            ),
            line(6, "assigned job=1 chunk=0 epoch=2 frames=1-10"),
            line(
                7,
                "segment finished job=1 chunk=0 epoch=2 frames=1-10 rendered=10",
            ),
            line(8, "assigned job=1 chunk=2 epoch=2 frames=11-20"),
            line(
                9,
                "shrink job=1 chunk=2 epoch=2 proposed_end=15 answer=Some(16)",
            ),
            line(
                9,
                "segment finished job=1 chunk=2 epoch=2 frames=11-16 rendered=6",
            ),
            line(9, "assigned job=1 chunk=3 epoch=2 frames=17-20"),
            line(
                9,
                "chunk abandoned job=1 chunk=3 epoch=2 frames=17-20 rendered=0",
            ),
        ]
        .join("\n");
        let n2 = line(6, "assigned job=1 chunk=1 epoch=2 frames=11-20");
        let ledger = RenderLedger::from_logs([("n1", n1.as_str()), ("n2", n2.as_str())]);
        let fault = |s: u64, fault: Fault, in_flight: Vec<InFlight>| InjectedFault {
            fault,
            at_unix_us: base + s * 1_000_000,
            after_submit: Duration::ZERO,
            frames_done_seen: 0,
            in_flight,
            recovery: Duration::ZERO,
        };
        let faults = [
            fault(5, Fault::KillCoordinator, vec![]),
            fault(
                7,
                Fault::KillNode("n2".into()),
                vec![InFlight {
                    node: "n2".into(),
                    job: 1,
                    chunk: 1,
                    start: 11,
                    frames_done: 4,
                }],
            ),
        ];
        let r = ledger.report(1, &faults);
        assert!(r.is_exact(), "{r}");
        assert_eq!(r.attempts, 5);
        assert_eq!(r.renders, 10 + 10 + 4 + 6);
        assert_eq!(r.frames_rendered_more_than_once, 10 + 4);
        assert_eq!(r.extra_renders, 14);
        assert_eq!(r.rerendered_after_segment, 10);
        assert_eq!(r.extra_renders_by_fault, vec![0, 10, 4]);
        assert_eq!(r.frames_in_segments, 16);
        // Assigned twice each: 1-10 (after the coordinator kill), 11-20
        // (after the node kill; 17-20 in a chunk of its own after a shrink).
        assert_eq!(r.frames_assigned_more_than_once, 20);
        assert_eq!(r.extra_assignments, 20);
        assert_eq!(r.extra_assignments_by_fault, vec![0, 10, 10]);
        // Another job's lines are not counted.
        assert_eq!(ledger.report(2, &faults).attempts, 0);

        // Without end lines nothing is exact, and the report says so.
        let bare = RenderLedger::from_logs([("n2", n2.as_str())]);
        let r = bare.report(1, &[]);
        assert!(!r.is_exact());
        assert_eq!(r.unknown.len(), 1);
        assert!(require_exact(&r).is_err());
    }

    #[test]
    fn end_lines_without_an_epoch_close_the_attempt_with_that_start() {
        // A chunk kept across a coordinator restart (epoch 1) and a new
        // attempt reusing its id (epoch 2), both open in one process.
        let log = [
            line(1, "assigned job=1 chunk=5 epoch=1 frames=1-10"),
            line(2, "assigned job=1 chunk=5 epoch=2 frames=21-30"),
            line(3, "segment spooled job=1 chunk=5 frames=1-10 bytes=9"),
            line(4, "segment spooled job=1 chunk=5 frames=21-30 bytes=9"),
        ]
        .join("\n");
        let r = RenderLedger::from_logs([("n", log.as_str())]).report(1, &[]);
        assert!(r.is_exact(), "{r}");
        assert_eq!(
            (r.segments_finished, r.renders, r.extra_renders),
            (2, 20, 0)
        );
    }

    #[test]
    fn plans_are_seeded_and_within_their_steps() {
        let a = FaultPlan::new(7, 3, &["node-2"], 12..=32);
        assert_eq!(a, FaultPlan::new(7, 3, &["node-2"], 12..=32));
        assert_ne!(a, FaultPlan::new(8, 3, &["node-2"], 12..=32));
        assert_eq!(a.faults.len(), 4);
        let kinds = |f: &Fault| a.faults.iter().filter(|p| p.fault == *f).count();
        assert_eq!(kinds(&Fault::KillCoordinator), 3);
        assert_eq!(kinds(&Fault::KillNode("node-2".into())), 1);
        assert!(a
            .faults
            .iter()
            .all(|f| (12..=32).contains(&f.after_frames) && f.jitter_ms <= MAX_KILL_JITTER_MS));
        let steps: u64 = a.faults.iter().map(|f| f.after_frames).sum();
        assert_eq!(a.frames_needed(64), steps + 4 * 64);
    }
}

//! The core's state and the indexes that keep every decision cheap at
//! 10,000 nodes: nodes in dense slots, capability classes with their free
//! nodes and ready jobs, per-job queues of waiting frame ranges, and one
//! deadline heap.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

use drover_shared::api::{ChunkKind, JobState};
use drover_shared::caps::{Adapter, Capabilities, Need};
use drover_shared::spec::JobSpec;
use serde::{Deserialize, Serialize};

use super::types::{ChunkKey, CoreConfig, JobId, NodeId};

/// The core's hash maps: FxHash, fixed and fast. Fixed, because the core
/// breaks some ties by iteration order (which job to steal from, which
/// chunks to preempt, the order chunks of a finished job are cancelled and
/// their nodes refilled); with random keys the same events gave different
/// decisions on every run, and no seed of the simulator could be replayed.
/// Fast, because every decision does a handful of lookups; the keys are
/// the core's own ids, not attacker-chosen.
pub(crate) type HashMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// A project, for fair share.
#[derive(Debug, Default)]
pub(crate) struct Project {
    pub running: u64,
    pub weight: f64,
    pub listed: u32,
}

/// Index of a capability class.
pub(crate) type ClassId = usize;

/// What makes two nodes interchangeable for matching: everything a
/// requirement can look at. Nodes with equal keys share a class, so a job's
/// requirements are checked once per class, not once per node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ClassKey {
    pub render_adapter: Option<Adapter>,
    pub encoders: Vec<String>,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub tags: Vec<String>,
    pub pool: String,
}

impl ClassKey {
    pub fn of(caps: &Capabilities) -> ClassKey {
        let mut encoders = caps.encoders.clone();
        encoders.sort();
        let mut tags = caps.tags.clone();
        tags.sort();
        ClassKey {
            render_adapter: caps.render_adapter.clone(),
            encoders,
            cpu_cores: caps.cpu_cores,
            memory_bytes: caps.memory_bytes,
            tags,
            pool: caps.pool.clone(),
        }
    }
}

/// A capability class.
#[derive(Debug)]
pub(crate) struct Class {
    /// A representative node's capabilities (all members match alike).
    pub caps: Capabilities,
    /// Connected, unquarantined members.
    pub available: u32,
    /// Available members with a free slot, not waiting for a stolen tail,
    /// keyed by (chunks held, node) so the least loaded comes first.
    pub free: BTreeSet<(usize, NodeId)>,
    /// Free members holding nothing.
    pub idle: u32,
    /// Jobs this class can run that have waiting frames, best first:
    /// (effective priority, descending; then job id, oldest first).
    pub ready_jobs: BTreeSet<(Reverse<u8>, JobId)>,
}

/// Key of a node's speed table: job kind and resolution class.
pub(crate) type SpeedKey = (u8, u8);

/// A node.
#[derive(Debug)]
pub(crate) struct Node {
    pub name: Arc<str>,
    pub node_id: String,
    pub session: u64,
    pub caps: Capabilities,
    /// The tags the node reported itself (an admin's replace them in
    /// `caps`).
    pub own_tags: Vec<String>,
    pub class: ClassId,
    pub connected: bool,
    pub last_heartbeat_ms: u64,
    /// Chunks it holds, in the order it runs them.
    pub held: Vec<ChunkKey>,
    pub cpu_load_pct: f32,
    /// Memory in use as the last heartbeat reported it, percent.
    pub memory_load_pct: f32,
    pub frames_rendered: u64,
    pub quarantined: Option<String>,
    /// Distinct jobs that failed on it since its last success.
    pub failing_jobs: Vec<JobId>,
    /// Frames per second at job cost 1, by kind and resolution class.
    pub speed: HashMap<SpeedKey, f64>,
    /// Calibration speed scaled to pixels: frames per second per megapixel
    /// inverse, the seed for classes it has not run yet.
    pub calib_pixel_fps: f64,
    /// Waiting for the answer to a shrink whose tail it will take.
    pub awaiting_tail: Option<ChunkKey>,
    /// When the node is expected to finish everything it holds.
    pub busy_until_ms: u64,
    /// Drained by an admin: no new work until undrained (journaled).
    pub drained: bool,
    /// Shutting down (SIGTERM on the node): no new work this session.
    pub leaving: bool,
}

impl Node {
    /// Connected and allowed new work: not quarantined, drained or leaving.
    pub fn usable(&self) -> bool {
        self.connected && self.quarantined.is_none() && !self.drained && !self.leaving
    }
}

/// Waiting frames of a job, not yet in any chunk.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Range {
    pub end: u64,
    /// Failures of these frames so far.
    pub failures: u32,
    /// Times these frames lost their node.
    pub attempts: u32,
}

/// A pending shrink of a chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingShrink {
    pub proposed_end: u64,
    /// The idle node that will take the tail, or none (preemption: the
    /// tail goes back to the job's waiting frames).
    pub thief: Option<NodeId>,
    pub seq: u32,
    /// The higher-priority job this shrink makes room for.
    pub for_job: Option<JobId>,
}

/// A chunk on a node.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub node: NodeId,
    pub epoch: u32,
    pub start: u64,
    pub end: u64,
    pub kind: ChunkKind,
    pub failures: u32,
    pub attempts: u32,
    pub frames_done: u64,
    pub started: bool,
    pub assigned_at_ms: u64,
    pub started_at_ms: u64,
    pub progress_at_ms: u64,
    pub expected_finish_ms: u64,
    /// Frames per second expected on its node.
    pub expected_fps: f64,
    pub shrink: Option<PendingShrink>,
    /// The other copy of a speculated chunk.
    pub twin: Option<u32>,
    /// Its node let a shrink go unanswered: no more steals from it (a hung
    /// node is a case for a speculative copy instead).
    pub steal_refused: bool,
}

impl Chunk {
    pub fn frames(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// A stored segment of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneSegment {
    /// Last frame (the map key is the first).
    pub end: u64,
    /// Chunk id.
    pub chunk: u32,
    /// Node that rendered it.
    pub node: String,
    /// How it came to be.
    pub kind: ChunkKind,
    /// Stored path.
    pub segment: String,
    /// BLAKE3, hex.
    pub hash: String,
}

/// A job in the hot state.
#[derive(Debug)]
pub(crate) struct Job {
    pub id: JobId,
    pub spec: Arc<JobSpec>,
    /// Interned project.
    pub project: u32,
    pub encoder: Arc<str>,
    pub needs: Vec<Need>,
    pub speed_key: SpeedKey,
    pub state: JobState,
    pub submitted_at_ms: u64,
    pub first_frame_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub error: Option<String>,
    pub output_path: Option<String>,
    /// Per class: can it run this job (`None`: not checked yet).
    pub class_ok: Vec<Option<bool>>,
    /// Waiting frames, by first frame.
    pub ready: BTreeMap<u64, Range>,
    /// Frames in `ready`.
    pub ready_frames: u64,
    /// Failed frames waiting for their retry: (not before, first, range).
    pub delayed: Vec<(u64, u64, Range)>,
    pub live: HashMap<u32, Chunk>,
    /// Stealable live chunks by expected finish.
    pub finish_index: BTreeSet<(u64, u32)>,
    pub done: BTreeMap<u64, DoneSegment>,
    pub frames_done: u64,
    pub missing: Vec<u64>,
    pub next_chunk: u32,
    pub frames_stolen: u64,
    pub frames_wasted: u64,
    pub failures: u32,
    pub node_failures: HashMap<NodeId, u32>,
    pub blocklist: Vec<NodeId>,
    /// The same nodes by name, as journaled (ids are per run).
    pub blocklist_names: Vec<String>,
    /// Live chunks per node working on it.
    pub working: HashMap<NodeId, u32>,
    /// Relative cost of a frame of this job (1 = the calibration shader at
    /// the same pixels), learned from real frames.
    pub cost: f64,
    pub eff_prio: u8,
    /// In the ready sets of its classes.
    pub listed: bool,
    pub aging_seq: u32,
    pub aging_armed: bool,
    pub shrinks_for_priority: u32,
    pub last_failure: Option<String>,
    /// The executor's output at the last failure (its tail).
    pub last_log: Option<String>,
    /// Failures since the job's last stored segment: while any, it runs on
    /// one node at a time (a job whose frames hang or crash must not hold
    /// the farm while it retries).
    pub streak: u32,
    /// Chunks that were running when the coordinator restarted, kept for
    /// their node to re-adopt until the adoption deadline; their frames are
    /// in no other place.
    pub orphans: BTreeMap<u32, super::record::RunningChunk>,
    /// The key that submitted it.
    pub owner: Arc<super::record::Owner>,
    /// Paused by a user: listed nowhere, so no new chunk starts; running
    /// chunks finish.
    pub paused: bool,
}

impl Job {
    pub fn total_frames(&self) -> u64 {
        self.spec.frames.len()
    }

    /// Leaves `unschedulable` (some node can run it now); true if it was.
    pub fn schedulable_again(&mut self) -> bool {
        if self.state != JobState::Unschedulable {
            return false;
        }
        self.state = if self.first_frame_at_ms.is_some() {
            JobState::Running
        } else {
            JobState::Queued
        };
        self.error = None;
        true
    }

    pub fn at_max_nodes(&self) -> bool {
        let limit = if self.streak > 0 {
            1
        } else {
            self.spec.max_nodes.map_or(u64::MAX, u64::from)
        };
        self.working.len() as u64 >= limit
    }
}

/// What the deadline heap can wake the core for. Entries are checked
/// against the current state when they fire, so a stale one costs a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Liveness(NodeId, u64),
    Stall(JobId, u32),
    Backoff(JobId),
    ShrinkTimeout(JobId, u32, u32),
    Aging(JobId, u32),
    Speculate,
    Forget(NodeId, u64),
    /// Chunks running before a restart that no node re-adopted wait again.
    Orphans,
    /// A chunk's overall time limit (job, chunk, epoch).
    ChunkTimeout(JobId, u32, u32),
}

/// The scheduler's state.
#[derive(Debug)]
pub struct Core {
    pub(crate) config: CoreConfig,
    pub(crate) jobs: HashMap<JobId, Job>,
    pub(crate) finished: BTreeMap<JobId, super::record::JobRecord>,
    pub(crate) nodes: Vec<Option<Node>>,
    pub(crate) free_node_slots: Vec<u32>,
    pub(crate) names: HashMap<Arc<str>, NodeId>,
    pub(crate) classes: Vec<Class>,
    pub(crate) class_index: HashMap<ClassKey, ClassId>,
    pub(crate) timers: BinaryHeap<Reverse<(u64, Timer)>>,
    pub(crate) speculate_armed: bool,
    pub(crate) next_job_id: JobId,
    /// Projects by name, interned: fair share compares them per decision.
    pub(crate) project_ids: HashMap<String, u32>,
    /// Per project: live chunks, share weight, listed jobs.
    pub(crate) projects: Vec<Project>,
    /// Projects with at least one listed job: with one, fair share has
    /// nothing to compare and the first job in priority order wins.
    pub(crate) projects_listed: u32,
    /// Straggler scans are not repeated before this time: they look at
    /// every live chunk of jobs in their tail, and stragglers show over
    /// seconds, not per event.
    pub(crate) next_speculate_scan_ms: u64,
    pub(crate) shrink_seq: u32,
    /// Live chunks in all jobs: the straggler check only runs when some
    /// work is out there.
    pub(crate) live_chunks: u64,
    /// Jobs whose running or waiting work changed during this event: their
    /// `unschedulable` state is brought up to date before it returns.
    pub(crate) dirty: Vec<JobId>,
    /// Jobs listed during this event, offered to free nodes before it ends.
    pub(crate) newly_listed: Vec<JobId>,
    /// Hot jobs per submitting key (for its `max_active_jobs`), kept as
    /// jobs come and go so a submission does not scan them all.
    pub(crate) owner_active: HashMap<String, usize>,
    /// Stored chunks whose `Done` (with the render time) is still to come.
    pub(crate) to_learn: HashMap<ChunkKey, (NodeId, u64)>,
    /// Facts not yet taken by the driver ([`Core::take_facts`]).
    pub(crate) facts: Vec<super::facts::Fact>,
    /// What the journal remembers of nodes by name (drained, quarantined),
    /// applied when they say hello.
    pub(crate) admin: BTreeMap<String, super::facts::NodeRecord>,
}

impl Core {
    pub(crate) fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.0 as usize).and_then(|n| n.as_ref())
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(id.0 as usize).and_then(|n| n.as_mut())
    }

    pub(crate) fn arm(&mut self, at_ms: u64, timer: Timer) {
        self.timers.push(Reverse((at_ms, timer)));
    }
}

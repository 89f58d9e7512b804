//! The scheduler core: every scheduling decision, and the job state machine,
//! with no I/O.
//!
//! [`Core::handle`] takes an [`Event`] and the current time (milliseconds
//! since the Unix epoch, injected by the caller) and returns [`Command`]s for
//! the driver to carry out: send an assignment, cancel a chunk, journal a job,
//! join segments. The actix scheduler actor drives it in production; tests
//! drive it directly on a virtual clock.
//!
//! Invariants (checked by [`Core::check_invariants`] in tests):
//! - a chunk is `Assigned` exactly when it sits in its node's `held` list;
//! - a node holds at most `node_queue_depth` chunks;
//! - a job is `Muxing` or `Done` only when every chunk is `Done`.

use std::collections::BTreeMap;

use drover_shared::api::{ChunkState, ChunkView, JobState, JobView, NodeView};
use drover_shared::caps::{self, Capabilities};
use drover_shared::spec::JobSpec;
use serde::{Deserialize, Serialize};

/// Tunables of the core; every one is a limit with a reason.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Smallest chunk, in frames, when a job is cut: large enough that the
    /// per-chunk costs (encoder start and flush, upload, one more segment to
    /// join) stay a small fraction of the chunk's time.
    pub chunk_frames: u64,
    /// Largest chunk, in frames: bounds the work lost when a node dies and
    /// the size of one segment upload.
    pub max_chunk_frames: u64,
    /// Chunks per node the cutter aims for: enough that equal nodes finish
    /// together and a slow node holds back little, few enough to keep
    /// per-chunk costs low. See [`chunk_frames_for`].
    pub chunks_per_node: u64,
    /// Chunks a node may hold at once: one running and one queued, so the next
    /// chunk starts without a round trip to the coordinator.
    pub node_queue_depth: usize,
    /// A node silent this long is declared dead and its chunks requeued.
    pub node_timeout_ms: u64,
    /// Failures of one chunk (reported by nodes) before the job fails.
    pub max_chunk_failures: u32,
    /// Attempts of one chunk, failures and lost nodes together, before the
    /// job fails: stops a chunk that kills every node it touches.
    pub max_chunk_attempts: u32,
    /// First retry delay after a failure; doubles with each failure.
    pub retry_backoff_ms: u64,
    /// An assigned chunk whose progress has not moved for this long, on a
    /// node that still heartbeats, is taken back as failed (a hung encoder
    /// or renderer must not hold a job forever). Generous: a queued chunk
    /// waits behind the running one, and a frame may be slow.
    pub chunk_stall_timeout_ms: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            chunk_frames: 24,
            max_chunk_frames: 240,
            chunks_per_node: 4,
            node_queue_depth: 2,
            node_timeout_ms: drover_shared::config::NODE_TIMEOUT_MS,
            max_chunk_failures: 3,
            max_chunk_attempts: 8,
            retry_backoff_ms: 1_000,
            chunk_stall_timeout_ms: 10 * 60 * 1_000,
        }
    }
}

/// Identifies a chunk: job id and index.
pub type ChunkKey = (u64, u32);

/// A chunk of a job: a frame range that one node renders and encodes into one
/// segment. The range is stored, not derived, because later work stealing
/// moves a running chunk's end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Index within the job.
    pub index: u32,
    /// First frame, inclusive.
    pub start: u64,
    /// Last frame, inclusive.
    pub end: u64,
    /// State.
    pub state: ChunkState,
    /// Node holding it, or the node that finished it.
    pub node: Option<String>,
    /// Epoch of the current or last assignment.
    pub epoch: u32,
    /// Assignments so far.
    pub attempts: u32,
    /// Failures reported by nodes.
    pub failures: u32,
    /// Frames done in the current attempt.
    pub frames_done: u64,
    /// When the current attempt was assigned or last made progress.
    #[serde(default)]
    pub progress_at_ms: u64,
    /// Whether the node reported starting the current attempt.
    #[serde(default)]
    pub started: bool,
    /// Not to be assigned before this time (retry backoff).
    pub not_before_ms: u64,
    /// Last failure reason.
    pub last_error: Option<String>,
    /// Stored segment, once done.
    pub segment: Option<String>,
    /// BLAKE3 of the segment, hex.
    pub segment_hash: Option<String>,
}

impl Chunk {
    fn frames(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// A job and its chunks; this is also the journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Id.
    pub id: u64,
    /// The validated spec, shader source included.
    pub spec: JobSpec,
    /// State.
    pub state: JobState,
    /// Chunks in frame order.
    pub chunks: Vec<Chunk>,
    /// Submission time.
    pub submitted_at_ms: u64,
    /// When a node first reported starting a chunk.
    pub first_frame_at_ms: Option<u64>,
    /// When it reached a terminal state.
    pub finished_at_ms: Option<u64>,
    /// Why it failed, or why nothing can run it.
    pub error: Option<String>,
    /// Output file once done.
    pub output_path: Option<String>,
}

#[derive(Debug, Clone)]
struct Node {
    caps: Capabilities,
    connected: bool,
    last_heartbeat_ms: u64,
    held: Vec<ChunkKey>,
    cpu_load_pct: f32,
    frames_rendered: u64,
}

/// Something that happened, fed to [`Core::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A node completed the handshake.
    NodeConnected {
        /// Node name.
        node: String,
        /// What it has.
        caps: Capabilities,
    },
    /// A node's connection closed.
    NodeDisconnected {
        /// Node name.
        node: String,
    },
    /// A heartbeat.
    Heartbeat {
        /// Node name.
        node: String,
        /// CPU load.
        cpu_load_pct: f32,
    },
    /// A node reports frames done in a chunk (0 when it starts).
    Progress {
        /// Node name.
        node: String,
        /// Chunk.
        chunk: ChunkKey,
        /// Epoch of the attempt.
        epoch: u32,
        /// Frames done so far.
        frames_done: u64,
    },
    /// A chunk's segment is stored and verified.
    ChunkDone {
        /// Node name.
        node: String,
        /// Chunk.
        chunk: ChunkKey,
        /// Epoch of the attempt.
        epoch: u32,
        /// Stored segment path.
        segment: String,
        /// Segment hash, hex.
        hash: String,
    },
    /// A chunk failed on its node.
    ChunkFailed {
        /// Node name.
        node: String,
        /// Chunk.
        chunk: ChunkKey,
        /// Epoch of the attempt.
        epoch: u32,
        /// Why.
        reason: String,
    },
    /// A user cancelled a job.
    CancelJob {
        /// Job id.
        job: u64,
    },
    /// The segments of a job were joined.
    MuxDone {
        /// Job id.
        job: u64,
        /// Output path.
        output: String,
    },
    /// Joining the segments failed.
    MuxFailed {
        /// Job id.
        job: u64,
        /// Why.
        reason: String,
    },
    /// Time passed: reap silent nodes, release backoffs.
    Tick,
}

/// An assignment for the driver to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Chunk.
    pub chunk: ChunkKey,
    /// Epoch.
    pub epoch: u32,
    /// First frame.
    pub start: u64,
    /// Last frame.
    pub end: u64,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Send an assignment to a node.
    Assign {
        /// Node name.
        node: String,
        /// What to run.
        assignment: Assignment,
    },
    /// Tell a node to drop a chunk.
    Cancel {
        /// Node name.
        node: String,
        /// Chunk.
        chunk: ChunkKey,
        /// Epoch.
        epoch: u32,
    },
    /// Write the job's record to the journal.
    Persist {
        /// Job id.
        job: u64,
    },
    /// Delete the stored segments of a job that has ended, once its final
    /// state is durable.
    Discard {
        /// Job id.
        job: u64,
    },
    /// Join these segments, in order, into the job's output.
    Mux {
        /// Job id.
        job: u64,
        /// Segment paths in frame order.
        segments: Vec<String>,
    },
}

impl Command {
    /// The job a command concerns.
    pub fn job(&self) -> u64 {
        match self {
            Command::Assign { assignment, .. } => assignment.chunk.0,
            Command::Cancel { chunk, .. } => chunk.0,
            Command::Persist { job } | Command::Discard { job } | Command::Mux { job, .. } => *job,
        }
    }
}

/// The scheduling state.
#[derive(Debug, Default)]
pub struct Core {
    config: CoreConfig,
    jobs: BTreeMap<u64, Job>,
    nodes: BTreeMap<String, Node>,
    next_job_id: u64,
}

impl Core {
    /// An empty core.
    pub fn new(config: CoreConfig) -> Core {
        Core {
            config,
            jobs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            next_job_id: 1,
        }
    }

    /// Rebuilds the core from journaled jobs after a restart. Chunks that were
    /// on a node go back to the queue (their nodes will reconnect as new
    /// sessions); jobs that were joining segments are joined again.
    pub fn restore(config: CoreConfig, jobs: Vec<Job>) -> (Core, Vec<Command>) {
        let mut core = Core::new(config);
        let mut cmds = Vec::new();
        for mut job in jobs {
            for c in &mut job.chunks {
                if c.state == ChunkState::Assigned {
                    c.state = ChunkState::Pending;
                    c.node = None;
                    c.frames_done = 0;
                }
            }
            if job.state == JobState::Muxing {
                cmds.push(mux_command(&job));
            }
            core.next_job_id = core.next_job_id.max(job.id + 1);
            core.jobs.insert(job.id, job);
        }
        (core, cmds)
    }

    /// Accepts a validated spec: cuts it into chunks and dispatches at once.
    pub fn submit(&mut self, now_ms: u64, spec: JobSpec) -> (u64, Vec<Command>) {
        let id = self.next_job_id;
        self.next_job_id += 1;
        let nodes = self
            .nodes
            .values()
            .filter(|n| n.connected && caps::can_run(&spec, &n.caps).is_ok())
            .count() as u64;
        let size = chunk_frames_for(&self.config, spec.frames.len(), nodes);
        let mut chunks = Vec::new();
        let mut start = spec.frames.start;
        while start <= spec.frames.end {
            let end = (start + size - 1).min(spec.frames.end);
            chunks.push(Chunk {
                index: chunks.len() as u32,
                start,
                end,
                state: ChunkState::Pending,
                node: None,
                epoch: 0,
                attempts: 0,
                failures: 0,
                frames_done: 0,
                progress_at_ms: 0,
                started: false,
                not_before_ms: 0,
                last_error: None,
                segment: None,
                segment_hash: None,
            });
            start = end + 1;
        }
        self.jobs.insert(
            id,
            Job {
                id,
                spec,
                state: JobState::Queued,
                chunks,
                submitted_at_ms: now_ms,
                first_frame_at_ms: None,
                finished_at_ms: None,
                error: None,
                output_path: None,
            },
        );
        let mut cmds = vec![Command::Persist { job: id }];
        self.dispatch(now_ms, &mut cmds);
        (id, cmds)
    }

    /// Applies one event.
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Command> {
        let mut cmds = Vec::new();
        match event {
            Event::NodeConnected { node, caps } => {
                // A node that reconnects under the same name lost whatever
                // its previous session held.
                self.release_node(&node, now_ms, &mut cmds);
                self.nodes.insert(
                    node,
                    Node {
                        caps,
                        connected: true,
                        last_heartbeat_ms: now_ms,
                        held: Vec::new(),
                        cpu_load_pct: 0.0,
                        frames_rendered: 0,
                    },
                );
            }
            Event::NodeDisconnected { node } => {
                self.release_node(&node, now_ms, &mut cmds);
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.connected = false;
                }
            }
            Event::Heartbeat { node, cpu_load_pct } => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    // A node reaped for silence whose connection survived is
                    // alive again; its old chunks were cancelled on reaping.
                    n.connected = true;
                    n.last_heartbeat_ms = now_ms;
                    n.cpu_load_pct = cpu_load_pct;
                }
            }
            Event::Progress {
                node,
                chunk,
                epoch,
                frames_done,
            } => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.last_heartbeat_ms = now_ms;
                }
                if let Some((job, idx)) = self.current(&node, chunk, epoch) {
                    let c = &mut job.chunks[idx];
                    let frames_done = frames_done.min(c.frames());
                    // The first report of an attempt (0 frames) starts its
                    // stall clock; after that only new frames reset it.
                    if !c.started || frames_done > c.frames_done {
                        c.started = true;
                        c.progress_at_ms = now_ms;
                    }
                    c.frames_done = frames_done;
                    if job.state == JobState::Queued {
                        job.state = JobState::Running;
                        job.first_frame_at_ms = Some(now_ms);
                        cmds.push(Command::Persist { job: job.id });
                    }
                }
            }
            Event::ChunkDone {
                node,
                chunk,
                epoch,
                segment,
                hash,
            } => {
                if let Some((job, idx)) = self.current(&node, chunk, epoch) {
                    let c = &mut job.chunks[idx];
                    c.state = ChunkState::Done;
                    c.frames_done = c.frames();
                    c.segment = Some(segment);
                    c.segment_hash = Some(hash);
                    let frames = c.frames();
                    if job.chunks.iter().all(|c| c.state == ChunkState::Done) {
                        job.state = JobState::Muxing;
                        cmds.push(mux_command(job));
                    }
                    cmds.push(Command::Persist { job: job.id });
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.held.retain(|k| *k != chunk);
                        n.frames_rendered += frames;
                    }
                }
            }
            Event::ChunkFailed {
                node,
                chunk,
                epoch,
                reason,
            } => {
                if self.current(&node, chunk, epoch).is_some() {
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.held.retain(|k| *k != chunk);
                    }
                    self.requeue(chunk, now_ms, Some(reason), &mut cmds);
                }
            }
            Event::CancelJob { job } => {
                if let Some(j) = self.jobs.get(&job) {
                    if !j.state.is_terminal() {
                        self.finish_job(job, now_ms, JobState::Cancelled, None, &mut cmds);
                    }
                }
            }
            Event::MuxDone { job, output } => {
                if let Some(j) = self.jobs.get_mut(&job) {
                    if j.state == JobState::Muxing {
                        j.output_path = Some(output);
                        self.finish_job(job, now_ms, JobState::Done, None, &mut cmds);
                    }
                }
            }
            Event::MuxFailed { job, reason } => {
                if self
                    .jobs
                    .get(&job)
                    .is_some_and(|j| j.state == JobState::Muxing)
                {
                    let why = format!("joining segments failed: {reason}");
                    self.finish_job(job, now_ms, JobState::Failed, Some(why), &mut cmds);
                }
            }
            Event::Tick => {
                let timeout = self.config.node_timeout_ms;
                let dead: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| {
                        n.connected && now_ms.saturating_sub(n.last_heartbeat_ms) > timeout
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in dead {
                    self.release_node(&name, now_ms, &mut cmds);
                    if let Some(n) = self.nodes.get_mut(&name) {
                        n.connected = false;
                    }
                }
                let stall = self.config.chunk_stall_timeout_ms;
                let stalled: Vec<(String, ChunkKey, u32)> = self
                    .jobs
                    .values()
                    .filter(|j| matches!(j.state, JobState::Queued | JobState::Running))
                    .flat_map(|j| j.chunks.iter().map(move |c| (j.id, c)))
                    // A chunk still queued on its node waits behind the running
                    // one, so it gets twice as long before it counts as stuck.
                    .filter(|(_, c)| {
                        let limit = if c.started {
                            stall
                        } else {
                            stall.saturating_mul(2)
                        };
                        c.state == ChunkState::Assigned
                            && now_ms.saturating_sub(c.progress_at_ms) > limit
                    })
                    .filter_map(|(id, c)| Some((c.node.clone()?, (id, c.index), c.epoch)))
                    .collect();
                for (node, chunk, epoch) in stalled {
                    cmds.push(Command::Cancel {
                        node: node.clone(),
                        chunk,
                        epoch,
                    });
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.held.retain(|k| *k != chunk);
                    }
                    let why = format!("no progress for {} s on {node}", stall / 1000);
                    self.requeue(chunk, now_ms, Some(why), &mut cmds);
                }
            }
        }
        self.dispatch(now_ms, &mut cmds);
        cmds
    }

    /// The job and chunk `key` if `node` holds it at `epoch`; stale messages
    /// from an earlier attempt or another node get `None`. A chunk's index is
    /// its position in the job's list.
    fn current(&mut self, node: &str, key: ChunkKey, epoch: u32) -> Option<(&mut Job, usize)> {
        let job = self.jobs.get_mut(&key.0)?;
        let idx = key.1 as usize;
        let c = job.chunks.get(idx)?;
        if c.state != ChunkState::Assigned || c.epoch != epoch || c.node.as_deref() != Some(node) {
            return None;
        }
        Some((job, idx))
    }

    /// Returns every chunk held by `node` to the queue.
    fn release_node(&mut self, node: &str, now_ms: u64, cmds: &mut Vec<Command>) {
        let held = match self.nodes.get_mut(node) {
            Some(n) => std::mem::take(&mut n.held),
            None => return,
        };
        for key in held {
            // Tell the node to stop, in case it is still there (reaped for
            // silence but still connected): its work is requeued. When the
            // session is gone or replaced, the node dropped this work itself
            // and the cancel is a no-op.
            if let Some(c) = self
                .jobs
                .get(&key.0)
                .and_then(|j| j.chunks.get(key.1 as usize))
            {
                cmds.push(Command::Cancel {
                    node: node.to_string(),
                    chunk: key,
                    epoch: c.epoch,
                });
            }
            self.requeue(key, now_ms, None, cmds);
        }
    }

    /// Puts an assigned chunk back in the queue; `failure` is a reason when the
    /// node reported a failure (backoff and the failure limit apply), `None`
    /// when the node was lost.
    fn requeue(
        &mut self,
        key: ChunkKey,
        now_ms: u64,
        failure: Option<String>,
        cmds: &mut Vec<Command>,
    ) {
        let (backoff_ms, max_failures, max_attempts) = (
            self.config.retry_backoff_ms,
            self.config.max_chunk_failures,
            self.config.max_chunk_attempts,
        );
        let Some(job) = self.jobs.get_mut(&key.0) else {
            return;
        };
        let Some(c) = job.chunks.get_mut(key.1 as usize) else {
            return;
        };
        if c.state != ChunkState::Assigned {
            return;
        }
        c.state = ChunkState::Pending;
        c.node = None;
        c.frames_done = 0;
        let mut fatal = None;
        match failure {
            Some(reason) => {
                c.failures += 1;
                let shift = (c.failures - 1).min(10);
                c.not_before_ms = now_ms + (backoff_ms << shift);
                if c.failures >= max_failures {
                    fatal = Some(format!(
                        "chunk {} (frames {}-{}) failed {} times; last error: {reason}",
                        c.index, c.start, c.end, c.failures
                    ));
                }
                c.last_error = Some(reason);
            }
            None => c.last_error = Some("node lost while running the chunk".into()),
        }
        // Attempts count failures and lost nodes together, so a chunk that
        // alternates between the two still ends.
        if fatal.is_none() && c.attempts >= max_attempts {
            fatal = Some(format!(
                "chunk {} (frames {}-{}) was started {} times without finishing; last error: {}",
                c.index,
                c.start,
                c.end,
                c.attempts,
                c.last_error.as_deref().unwrap_or("none")
            ));
        }
        let id = job.id;
        cmds.push(Command::Persist { job: id });
        if let Some(why) = fatal {
            self.finish_job(id, now_ms, JobState::Failed, Some(why), cmds);
        }
    }

    /// Moves a job to a terminal state and cancels its chunks on their nodes.
    fn finish_job(
        &mut self,
        id: u64,
        now_ms: u64,
        state: JobState,
        error: Option<String>,
        cmds: &mut Vec<Command>,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.state = state;
        job.finished_at_ms = Some(now_ms);
        if error.is_some() {
            job.error = error;
        }
        for c in &mut job.chunks {
            if c.state == ChunkState::Done {
                continue;
            }
            if c.state == ChunkState::Assigned {
                if let Some(node) = c.node.clone() {
                    cmds.push(Command::Cancel {
                        node: node.clone(),
                        chunk: (id, c.index),
                        epoch: c.epoch,
                    });
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.held.retain(|k| *k != (id, c.index));
                    }
                }
            }
            c.state = if state == JobState::Failed && c.failures > 0 {
                ChunkState::Failed
            } else {
                ChunkState::Cancelled
            };
        }
        cmds.push(Command::Persist { job: id });
        // Done: the output holds every frame. Failed or cancelled: nothing
        // will be joined. Either way the segments only fill the disk.
        cmds.push(Command::Discard { job: id });
    }

    /// Hands pending chunks to nodes with free slots, oldest job first, the
    /// most suitable node first. Also records why a job nothing can run is
    /// stuck.
    fn dispatch(&mut self, now_ms: u64, cmds: &mut Vec<Command>) {
        let depth = self.config.node_queue_depth;
        let job_ids: Vec<u64> = self
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Queued | JobState::Running))
            .map(|j| j.id)
            .collect();
        for id in job_ids {
            let job = self.jobs.get_mut(&id).expect("listed above");
            let mut reasons: Vec<String> = Vec::new();
            let mut eligible: Vec<(u32, String)> = Vec::new();
            for (name, n) in &self.nodes {
                if !n.connected {
                    continue;
                }
                match caps::can_run(&job.spec, &n.caps) {
                    Ok(()) => eligible.push((caps::preference(&job.spec, &n.caps), name.clone())),
                    Err(why) => reasons.push(format!("{name}: {why}")),
                }
            }
            let pending = job.chunks.iter().any(|c| c.state == ChunkState::Pending);
            job.error = if pending && eligible.is_empty() {
                Some(if reasons.is_empty() {
                    "unschedulable: no node is connected".to_string()
                } else {
                    format!("unschedulable: {}", reasons.join("; "))
                })
            } else {
                None
            };
            if !pending || eligible.is_empty() {
                continue;
            }
            let mut assigned_any = false;
            for c in job.chunks.iter_mut() {
                if c.state != ChunkState::Pending || c.not_before_ms > now_ms {
                    continue;
                }
                // Best node: highest preference, then fewest held chunks.
                let best = eligible
                    .iter()
                    .filter(|(_, name)| self.nodes[name].held.len() < depth)
                    .max_by_key(|(pref, name)| {
                        (*pref, std::cmp::Reverse(self.nodes[name].held.len()))
                    })
                    .map(|(_, name)| name.clone());
                let Some(node) = best else {
                    break;
                };
                c.state = ChunkState::Assigned;
                c.node = Some(node.clone());
                c.epoch += 1;
                c.attempts += 1;
                c.frames_done = 0;
                c.progress_at_ms = now_ms;
                c.started = false;
                self.nodes
                    .get_mut(&node)
                    .expect("eligible")
                    .held
                    .push((id, c.index));
                assigned_any = true;
                cmds.push(Command::Assign {
                    node,
                    assignment: Assignment {
                        chunk: (id, c.index),
                        epoch: c.epoch,
                        start: c.start,
                        end: c.end,
                    },
                });
            }
            // Epochs and attempts must survive a restart, or a restarted
            // coordinator could hand out an epoch a second time.
            if assigned_any {
                cmds.push(Command::Persist { job: id });
            }
        }
    }

    /// Removes a job that was just submitted and could not be journaled, as
    /// if it had never been: its chunks leave the nodes' queues. The driver
    /// calls this before carrying out any command `submit` returned.
    pub fn withdraw(&mut self, id: u64) {
        if self.jobs.remove(&id).is_some() {
            for n in self.nodes.values_mut() {
                n.held.retain(|(j, _)| *j != id);
            }
            if self.next_job_id == id + 1 {
                self.next_job_id = id;
            }
        }
    }

    /// A job's record.
    pub fn job(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// A job as the API shows it.
    pub fn job_view(&self, id: u64) -> Option<JobView> {
        let j = self.jobs.get(&id)?;
        let mut frames_by_node = BTreeMap::new();
        for c in &j.chunks {
            if c.state == ChunkState::Done {
                if let Some(n) = &c.node {
                    *frames_by_node.entry(n.clone()).or_insert(0) += c.frames();
                }
            }
        }
        let done = matches!(j.state, JobState::Done);
        Some(JobView {
            id: j.id,
            name: j.spec.name.clone(),
            state: j.state,
            frames_total: j.spec.frames.len(),
            frames_done: j.chunks.iter().map(|c| c.frames_done).sum(),
            frames_by_node,
            chunks: j
                .chunks
                .iter()
                .map(|c| ChunkView {
                    index: c.index,
                    start: c.start,
                    end: c.end,
                    state: c.state,
                    node: c.node.clone(),
                    frames_done: c.frames_done,
                    attempts: c.attempts,
                    last_error: c.last_error.clone(),
                })
                .collect(),
            error: j.error.clone(),
            submitted_at_ms: j.submitted_at_ms,
            first_frame_at_ms: j.first_frame_at_ms,
            finished_at_ms: j.finished_at_ms,
            output_path: if done { j.output_path.clone() } else { None },
            output_url: done.then(|| format!("/v1/jobs/{}/output", j.id)),
        })
    }

    /// Every job, oldest first.
    pub fn job_views(&self) -> Vec<JobView> {
        self.jobs
            .keys()
            .filter_map(|id| self.job_view(*id))
            .collect()
    }

    /// Every node ever seen since start, by name.
    pub fn node_views(&self, now_ms: u64) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|(name, n)| NodeView {
                name: name.clone(),
                connected: n.connected,
                capabilities: n.caps.clone(),
                chunks: n.held.iter().map(|(j, i)| format!("{j}/{i}")).collect(),
                heartbeat_age_ms: now_ms.saturating_sub(n.last_heartbeat_ms),
                cpu_load_pct: n.cpu_load_pct,
                frames_rendered: n.frames_rendered,
            })
            .collect()
    }

    /// Asserts the invariants listed in the module doc.
    pub fn check_invariants(&self) {
        for (name, n) in &self.nodes {
            assert!(
                n.held.len() <= self.config.node_queue_depth,
                "{name} holds too many"
            );
            for (j, i) in &n.held {
                let c = &self.jobs[j].chunks[*i as usize];
                assert_eq!(
                    c.state,
                    ChunkState::Assigned,
                    "{name} holds {j}/{i} in {:?}",
                    c.state
                );
                assert_eq!(c.node.as_deref(), Some(name.as_str()));
            }
        }
        for j in self.jobs.values() {
            for c in &j.chunks {
                if c.state == ChunkState::Assigned {
                    let n = c.node.as_ref().expect("assigned chunk has a node");
                    assert!(
                        self.nodes[n].held.contains(&(j.id, c.index)),
                        "{}/{} not held by {n}",
                        j.id,
                        c.index
                    );
                }
            }
            if matches!(j.state, JobState::Muxing | JobState::Done) {
                assert!(j.chunks.iter().all(|c| c.state == ChunkState::Done));
            }
        }
    }
}

/// Frames per chunk for a job of `frames` frames when `nodes` nodes can run
/// it: about `chunks_per_node` chunks per node, never fewer frames than
/// `chunk_frames` nor more than `max_chunk_frames` (unless `chunk_frames` is
/// larger). Measured in bench/RESULTS.md: on one node, 24-frame chunks cost
/// 9% over a single encode, 60-frame chunks nothing measurable.
pub fn chunk_frames_for(config: &CoreConfig, frames: u64, nodes: u64) -> u64 {
    let target = frames.div_ceil(nodes.max(1) * config.chunks_per_node.max(1));
    target
        .min(config.max_chunk_frames)
        .max(config.chunk_frames)
        .max(1)
}

fn mux_command(job: &Job) -> Command {
    Command::Mux {
        job: job.id,
        segments: job
            .chunks
            .iter()
            .map(|c| c.segment.clone().unwrap_or_default())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_shared::caps::{Adapter, DeviceType};

    fn spec(frames: u64, gpu: &str) -> JobSpec {
        let mut s = JobSpec::from_json(&format!(
            r#"{{"name":"t","frames":{{"start":1,"end":{frames}}},"resolution":{{"width":64,"height":64}},
               "render":{{"kind":"shader","shader":"plasma"}},"requirements":{{"gpu":"{gpu}"}}}}"#
        ))
        .unwrap();
        s.validate().unwrap();
        s
    }

    fn caps(gpu: bool) -> Capabilities {
        let a = Adapter {
            name: if gpu { "gpu".into() } else { "llvmpipe".into() },
            backend: "Vulkan".into(),
            device_type: if gpu {
                DeviceType::DiscreteGpu
            } else {
                DeviceType::Cpu
            },
        };
        Capabilities {
            adapters: vec![a.clone()],
            render_adapter: Some(a),
            encoders: vec!["libx264".into()],
            ..Default::default()
        }
    }

    fn assigns(cmds: &[Command]) -> Vec<(String, ChunkKey, u32)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Assign { node, assignment } => {
                    Some((node.clone(), assignment.chunk, assignment.epoch))
                }
                _ => None,
            })
            .collect()
    }

    fn connect(core: &mut Core, now: u64, name: &str, gpu: bool) -> Vec<Command> {
        core.handle(
            now,
            Event::NodeConnected {
                node: name.into(),
                caps: caps(gpu),
            },
        )
    }

    fn done(core: &mut Core, now: u64, node: &str, chunk: ChunkKey, epoch: u32) -> Vec<Command> {
        core.handle(
            now,
            Event::ChunkDone {
                node: node.into(),
                chunk,
                epoch,
                segment: format!("seg-{}-{}", chunk.0, chunk.1),
                hash: "h".into(),
            },
        )
    }

    #[test]
    fn work_is_pushed_the_moment_a_node_is_free() {
        let mut core = Core::new(CoreConfig::default());
        let (id, cmds) = core.submit(0, spec(96, "any"));
        assert!(assigns(&cmds).is_empty(), "no node yet");
        assert!(core
            .job(id)
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("no node"));
        let a = assigns(&connect(&mut core, 1, "n1", false));
        assert_eq!(
            a,
            vec![("n1".into(), (id, 0), 1), ("n1".into(), (id, 1), 1)]
        );
        let b = assigns(&connect(&mut core, 2, "n2", false));
        assert_eq!(
            b,
            vec![("n2".into(), (id, 2), 1), ("n2".into(), (id, 3), 1)]
        );
        core.check_invariants();
        // Finishing every chunk asks for the mux with segments in order.
        let mut last = Vec::new();
        for (node, i) in [("n1", 0), ("n2", 3), ("n2", 2), ("n1", 1)] {
            last = done(&mut core, 10, node, (id, i), 1);
            core.check_invariants();
        }
        assert!(last.contains(&Command::Mux {
            job: id,
            segments: (0..4).map(|i| format!("seg-{id}-{i}")).collect()
        }));
        assert_eq!(core.job(id).unwrap().state, JobState::Muxing);
        core.handle(
            20,
            Event::MuxDone {
                job: id,
                output: "out.mp4".into(),
            },
        );
        let v = core.job_view(id).unwrap();
        assert_eq!(v.state, JobState::Done);
        assert_eq!(v.frames_done, 96);
        assert_eq!(v.frames_by_node["n1"], 48);
        assert_eq!(
            v.output_url.as_deref(),
            Some(&*format!("/v1/jobs/{id}/output"))
        );
    }

    #[test]
    fn a_silent_node_is_reaped_and_its_chunks_rerun_elsewhere() {
        let mut core = Core::new(CoreConfig::default());
        connect(&mut core, 0, "n1", false);
        let (id, _) = core.submit(0, spec(48, "any"));
        connect(&mut core, 0, "n2", false);
        core.handle(
            1_000,
            Event::Heartbeat {
                node: "n2".into(),
                cpu_load_pct: 1.0,
            },
        );
        core.handle(
            4_000,
            Event::Heartbeat {
                node: "n2".into(),
                cpu_load_pct: 1.0,
            },
        );
        // n1 stopped talking at 0; past the timeout its chunks move to n2.
        let cmds = core.handle(5_500, Event::Tick);
        assert_eq!(
            assigns(&cmds),
            vec![("n2".into(), (id, 0), 2), ("n2".into(), (id, 1), 2)]
        );
        // A late report from n1's old attempt is ignored.
        done(&mut core, 5_600, "n1", (id, 0), 1);
        assert_eq!(core.job(id).unwrap().chunks[0].state, ChunkState::Assigned);
        core.check_invariants();
        done(&mut core, 6_000, "n2", (id, 0), 2);
        done(&mut core, 6_000, "n2", (id, 1), 2);
        assert_eq!(core.job(id).unwrap().state, JobState::Muxing);
    }

    #[test]
    fn a_reaped_node_that_heartbeats_again_is_cancelled_then_reused() {
        let mut core = Core::new(CoreConfig::default());
        connect(&mut core, 0, "n1", false);
        let (id, _) = core.submit(0, spec(48, "any"));
        let cmds = core.handle(6_000, Event::Tick);
        let cancels: Vec<_> = cmds
            .iter()
            .filter(|c| matches!(c, Command::Cancel { node, .. } if node == "n1"))
            .collect();
        assert_eq!(
            cancels.len(),
            2,
            "the reaped node is told to stop: {cmds:?}"
        );
        assert!(cmds
            .iter()
            .any(|c| matches!(c, Command::Persist { job } if *job == id)));
        let cmds = core.handle(
            6_100,
            Event::Heartbeat {
                node: "n1".into(),
                cpu_load_pct: 0.0,
            },
        );
        assert_eq!(
            assigns(&cmds),
            vec![("n1".into(), (id, 0), 2), ("n1".into(), (id, 1), 2)]
        );
        core.check_invariants();
    }

    #[test]
    fn a_chunk_that_stops_progressing_on_a_live_node_is_taken_back() {
        let cfg = CoreConfig {
            chunk_stall_timeout_ms: 60_000,
            node_timeout_ms: 1_000_000,
            ..Default::default()
        };
        let mut core = Core::new(cfg);
        connect(&mut core, 0, "n1", false);
        let (id, _) = core.submit(0, spec(10, "any"));
        let progress = |core: &mut Core, now, frames_done| {
            core.handle(
                now,
                Event::Progress {
                    node: "n1".into(),
                    chunk: (id, 0),
                    epoch: 1,
                    frames_done,
                },
            )
        };
        progress(&mut core, 1_000, 3);
        // Heartbeats repeat the same count: that is not progress.
        progress(&mut core, 30_000, 3);
        assert!(
            core.handle(60_500, Event::Tick).is_empty(),
            "59.5 s without progress is not a stall yet"
        );
        let cmds = core.handle(61_500, Event::Tick);
        assert!(
            cmds.contains(&Command::Cancel {
                node: "n1".into(),
                chunk: (id, 0),
                epoch: 1
            }),
            "{cmds:?}"
        );
        let c = &core.job(id).unwrap().chunks[0];
        assert_eq!(c.failures, 1);
        assert!(c
            .last_error
            .as_deref()
            .unwrap()
            .contains("no progress for 60 s"));
        // After the backoff it is assigned again.
        assert_eq!(
            assigns(&core.handle(62_600, Event::Tick)),
            vec![("n1".into(), (id, 0), 2)]
        );
        core.check_invariants();
    }

    #[test]
    fn failures_and_lost_nodes_together_are_bounded() {
        let mut core = Core::new(CoreConfig {
            max_chunk_failures: 100,
            max_chunk_attempts: 3,
            retry_backoff_ms: 0,
            ..Default::default()
        });
        let (id, _) = core.submit(0, spec(10, "any"));
        for (round, now) in [(1u32, 10u64), (2, 20)] {
            connect(&mut core, now, "n1", false);
            core.handle(now, Event::NodeDisconnected { node: "n1".into() });
            assert_eq!(core.job(id).unwrap().chunks[0].attempts, round);
        }
        connect(&mut core, 30, "n1", false);
        core.handle(
            31,
            Event::ChunkFailed {
                node: "n1".into(),
                chunk: (id, 0),
                epoch: 3,
                reason: "boom".into(),
            },
        );
        let j = core.job(id).unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert!(
            j.error.as_deref().unwrap().contains("started 3 times"),
            "{:?}",
            j.error
        );
        core.check_invariants();
    }

    #[test]
    fn failures_back_off_and_then_fail_the_job() {
        let mut core = Core::new(CoreConfig {
            max_chunk_failures: 2,
            ..Default::default()
        });
        connect(&mut core, 0, "n1", false);
        let (id, _) = core.submit(0, spec(10, "any"));
        let fail = |core: &mut Core, now, epoch| {
            core.handle(
                now,
                Event::ChunkFailed {
                    node: "n1".into(),
                    chunk: (id, 0),
                    epoch,
                    reason: "boom".into(),
                },
            )
        };
        let cmds = fail(&mut core, 100, 1);
        assert!(assigns(&cmds).is_empty(), "backoff holds the retry");
        assert!(assigns(&core.handle(500, Event::Tick)).is_empty());
        assert_eq!(
            assigns(&core.handle(1_100, Event::Tick)),
            vec![("n1".into(), (id, 0), 2)]
        );
        fail(&mut core, 1_200, 2);
        let j = core.job(id).unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert!(j
            .error
            .as_deref()
            .unwrap()
            .contains("failed 2 times; last error: boom"));
        core.check_invariants();
    }

    #[test]
    fn requirements_route_and_explain() {
        let mut core = Core::new(CoreConfig::default());
        connect(&mut core, 0, "cpu", false);
        let (id, cmds) = core.submit(0, spec(24, "required"));
        assert!(assigns(&cmds).is_empty());
        let err = core.job(id).unwrap().error.clone().unwrap();
        assert!(
            err.starts_with("unschedulable: cpu: requirements.gpu"),
            "{err}"
        );
        let cmds = connect(&mut core, 1, "gpu", true);
        assert_eq!(assigns(&cmds), vec![("gpu".into(), (id, 0), 1)]);
        assert!(core.job(id).unwrap().error.is_none());
        // "preferred" picks the GPU node first when both are free.
        let (id2, cmds) = core.submit(2, spec(24, "preferred"));
        assert_eq!(assigns(&cmds), vec![("gpu".into(), (id2, 0), 1)]);
    }

    #[test]
    fn cancel_tells_nodes_and_frees_them() {
        let mut core = Core::new(CoreConfig::default());
        connect(&mut core, 0, "n1", false);
        let (a, _) = core.submit(0, spec(96, "any"));
        let (b, _) = core.submit(0, spec(24, "any"));
        let cmds = core.handle(1, Event::CancelJob { job: a });
        let cancels = cmds
            .iter()
            .filter(|c| matches!(c, Command::Cancel { .. }))
            .count();
        assert_eq!(cancels, 2);
        assert_eq!(assigns(&cmds), vec![("n1".into(), (b, 0), 1)]);
        assert_eq!(core.job(a).unwrap().state, JobState::Cancelled);
        core.check_invariants();
    }

    #[test]
    fn chunk_size_follows_the_farm() {
        let cfg = CoreConfig::default();
        let check = |frames, nodes, want| {
            assert_eq!(
                chunk_frames_for(&cfg, frames, nodes),
                want,
                "{frames} frames on {nodes} nodes"
            )
        };
        check(240, 1, 60);
        check(240, 2, 30);
        check(240, 0, 60);
        check(96, 2, 24);
        check(10, 4, 24);
        check(100_000, 1, 240);
        check(100_000, 1_000, 25);
        let big_min = CoreConfig {
            chunk_frames: 500,
            ..Default::default()
        };
        assert_eq!(chunk_frames_for(&big_min, 100_000, 1), 500);
    }

    #[test]
    fn a_withdrawn_submission_leaves_no_trace() {
        let mut core = Core::new(CoreConfig::default());
        connect(&mut core, 0, "n1", false);
        let (id, cmds) = core.submit(0, spec(48, "any"));
        assert_eq!(assigns(&cmds).len(), 2);
        core.withdraw(id);
        core.check_invariants();
        assert!(core.job(id).is_none());
        assert!(core.node_views(1)[0].chunks.is_empty());
        let (again, cmds) = core.submit(2, spec(48, "any"));
        assert_eq!(again, id, "the id is reused, nothing was acknowledged");
        assert_eq!(assigns(&cmds).len(), 2);
    }

    #[test]
    fn restore_requeues_running_chunks() {
        let mut core = Core::new(CoreConfig::default());
        connect(&mut core, 0, "n1", false);
        let (id, _) = core.submit(0, spec(48, "any"));
        done(&mut core, 5, "n1", (id, 0), 1);
        let saved = core.job(id).unwrap().clone();
        let (mut core2, cmds) = Core::restore(CoreConfig::default(), vec![saved]);
        assert!(cmds.is_empty());
        let a = assigns(&connect(&mut core2, 10, "n1", false));
        assert_eq!(a, vec![("n1".into(), (id, 1), 2)]);
        let (id2, _) = core2.submit(11, spec(5, "any"));
        assert_eq!(id2, id + 1, "ids continue after the restored ones");
    }
}

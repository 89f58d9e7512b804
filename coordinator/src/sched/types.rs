//! The core's vocabulary: ids, configuration, events in, commands out.

use std::collections::HashMap;
use std::sync::Arc;

use drover_shared::caps::Capabilities;
use drover_shared::spec::JobSpec;

/// A job id, unique for the life of the farm.
pub type JobId = u64;

/// A node's dense index inside the core. Names live at the edges: the
/// driver learns a node's id from [`Command::Welcome`] and uses it in every
/// later event of that session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A chunk: its job and its id within the job. Chunk ids are never reused,
/// also when a chunk is split by stealing (the tail gets a new id), so a
/// message about a chunk can never be mistaken for another chunk's.
pub type ChunkKey = (JobId, u32);

/// How chunks are cut: Drover's own sizing, or a fixed size (the peers'
/// way, kept to compare against in the simulator and the benchmarks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Chunking {
    /// Each chunk takes about the job's target duration on the node it goes
    /// to, by the node's measured speed.
    Target,
    /// Every chunk has this many frames.
    Fixed(u64),
}

/// Tunables of the core; every one is a limit with a reason.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Chunk sizing.
    pub chunking: Chunking,
    /// Move frames from running chunks to idle nodes (work stealing).
    pub steal: bool,
    /// Copy straggling chunks onto idle nodes near the end of a job.
    pub speculate: bool,
    /// How long a chunk should take on its node when a job names no
    /// `chunk_target_s`: long enough that per-chunk costs (encoder start
    /// and flush, upload, one more segment) stay small, short enough that
    /// a lost node costs little. Stealing fixes the tail either way.
    pub chunk_target_ms: u64,
    /// Smallest chunk carved from waiting frames, frames: below this the
    /// per-chunk costs dominate (24-frame chunks cost 9% in
    /// bench/RESULTS.md).
    pub min_chunk_frames: u64,
    /// Largest chunk, frames: bounds one segment's size and what a lost
    /// node costs.
    pub max_chunk_frames: u64,
    /// Chunks a node may hold at once: one running and one queued, so the
    /// next chunk starts without a round trip.
    pub node_slots: usize,
    /// A node silent this long is declared dead and its chunks requeued.
    pub node_timeout_ms: u64,
    /// A chunk whose progress has not moved this long on a live node is
    /// taken back as a failure (a hung renderer must not hold a job).
    pub chunk_stall_timeout_ms: u64,
    /// Failures of a single frame before it is given up on: the job fails
    /// naming it, or (with `allow_missing_frames`) completes without it.
    pub max_frame_failures: u32,
    /// Failures of all a job's chunks together before the job fails: stops
    /// a job that fails everywhere from bisecting for hours.
    pub max_job_failures: u32,
    /// Times a range may lose its node (disconnect, reap) before that
    /// counts as a failure: a range that kills every node it touches ends.
    pub max_range_attempts: u32,
    /// First retry delay after a failure; doubles with each failure of the
    /// same frames, plus up to 50% jitter.
    pub retry_backoff_ms: u64,
    /// Longest retry delay.
    pub max_retry_backoff_ms: u64,
    /// Failures of one job on one node before that node is blocklisted for
    /// the job.
    pub blocklist_after: u32,
    /// Distinct jobs failing on a node in a row (no success between) before
    /// it is quarantined until an admin clears it.
    pub quarantine_after_jobs: usize,
    /// How long a shrink proposal may go unanswered before the idle node
    /// waiting for the tail looks elsewhere.
    pub shrink_timeout_ms: u64,
    /// A steal must make the stolen-from chunk's frames finish at least
    /// this much sooner (after the new chunk's overhead), or it is not
    /// worth a segment more.
    pub min_steal_gain_ms: u64,
    /// A started chunk with no progress for this long gets a speculative
    /// copy on an idle node (whatever stage its job is at).
    pub speculate_stall_ms: u64,
    /// A chunk running this many times slower than its node's measured
    /// speed near the end of its job gets a speculative copy.
    pub speculate_slow_factor: f64,
    /// How often idle nodes look again for stragglers to copy.
    pub speculate_check_ms: u64,
    /// Weight of a new measurement in a node's speed average.
    pub speed_ewma_alpha: f64,
    /// A job waiting with no running chunk gains one priority point per
    /// this long, so nothing starves.
    pub aging_ms: u64,
    /// Share weight of each project (1.0 when absent).
    pub project_weights: HashMap<String, f64>,
    /// Jobs of equal priority compared for fair share per decision.
    pub fair_scan_limit: usize,
    /// Finished jobs kept queryable in memory; older ones are only in the
    /// journal.
    pub finished_job_retention: usize,
    /// A disconnected node is forgotten after this long.
    pub forget_node_ms: u64,
    /// After a restart, how long chunks that were running stay reserved
    /// for their nodes to reconnect and re-adopt them before their frames
    /// wait again: longer than a node takes to notice the lost connection
    /// and reconnect, short enough that a node that died with the
    /// coordinator costs little.
    pub adopt_grace_ms: u64,
    /// A chunk whose frames take this many times longer than expected on
    /// its node is timed out (as a failure), whatever its progress: no
    /// chunk runs forever. Expected from the node's measured speed and the
    /// job's learned cost.
    pub chunk_timeout_factor: u64,
    /// The least time any chunk is given before its timeout, however fast
    /// it is expected to be: covers encoder start, upload and a cold GPU.
    pub min_chunk_timeout_ms: u64,
    /// This coordinator run's incarnation: assignment epochs carry it, so
    /// an epoch can never repeat across restarts.
    pub incarnation: u32,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            chunking: Chunking::Target,
            steal: true,
            speculate: true,
            chunk_target_ms: 20_000,
            min_chunk_frames: 8,
            max_chunk_frames: 2_400,
            node_slots: 2,
            node_timeout_ms: drover_shared::config::NODE_TIMEOUT_MS,
            chunk_stall_timeout_ms: 10 * 60 * 1_000,
            max_frame_failures: 3,
            max_job_failures: 100,
            max_range_attempts: 8,
            retry_backoff_ms: 1_000,
            max_retry_backoff_ms: 60_000,
            blocklist_after: 2,
            quarantine_after_jobs: 3,
            shrink_timeout_ms: 5_000,
            min_steal_gain_ms: 500,
            speculate_stall_ms: 30_000,
            speculate_slow_factor: 3.0,
            speculate_check_ms: 2_000,
            speed_ewma_alpha: 0.3,
            aging_ms: 60_000,
            project_weights: HashMap::new(),
            fair_scan_limit: 32,
            finished_job_retention: 10_000,
            forget_node_ms: 60 * 60 * 1_000,
            adopt_grace_ms: 30_000,
            chunk_timeout_factor: 10,
            min_chunk_timeout_ms: 120_000,
            incarnation: 1,
        }
    }
}

/// Progress of one chunk, as a heartbeat or progress message reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkReport {
    /// Chunk.
    pub chunk: ChunkKey,
    /// Epoch of the attempt.
    pub epoch: u32,
    /// Frames rendered so far.
    pub frames_done: u64,
}

/// A chunk a reconnecting node still holds from an earlier session.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningReport {
    /// Chunk.
    pub chunk: ChunkKey,
    /// Epoch of the attempt.
    pub epoch: u32,
    /// First frame.
    pub start: u64,
    /// Last frame it will render.
    pub end: u64,
    /// Frames rendered so far (0 when not started).
    pub frames_done: u64,
}

/// A finished segment in a reconnecting node's spool.
#[derive(Debug, Clone, PartialEq)]
pub struct SpooledReport {
    /// Chunk.
    pub chunk: ChunkKey,
    /// Epoch of the attempt.
    pub epoch: u32,
    /// First frame in the segment.
    pub start: u64,
    /// Last frame in the segment.
    pub end: u64,
    /// BLAKE3 of the segment, hex.
    pub hash: String,
}

/// The core's answer to an upload request.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadVerdict {
    /// Send it.
    Accept,
    /// Its frames are done, cancelled or elsewhere: the node deletes its copy.
    NotNeeded(String),
    /// Not now (the job is joining, the node is not admitted yet): the node
    /// keeps its copy and offers it again later.
    Later(String),
}

/// Something that happened, fed to [`crate::sched::Core::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A node finished the transport handshake and sent its hello; the core
    /// answers [`Command::Welcome`] or [`Command::Refuse`] for `session`.
    Hello {
        /// The driver's id of the connection.
        session: u64,
        /// Node name.
        name: String,
        /// Persistent node id from the node's data dir.
        node_id: String,
        /// What it has.
        caps: Box<Capabilities>,
        /// Chunks it still holds from an earlier session (after a lost
        /// connection or a coordinator restart), running or queued.
        running: Vec<RunningReport>,
        /// Finished segments in its spool that no coordinator confirmed.
        spooled: Vec<SpooledReport>,
    },
    /// A node is shutting down (SIGTERM): no new work; it finishes what it
    /// runs, hands back what it has not started, and leaves.
    NodeLeaving {
        /// Node.
        node: NodeId,
    },
    /// A session's connection closed.
    Disconnected {
        /// Node.
        node: NodeId,
        /// The session that closed (a stale one is ignored).
        session: u64,
    },
    /// A heartbeat, with the progress of the node's started chunks.
    Heartbeat {
        /// Node.
        node: NodeId,
        /// CPU load.
        cpu_load_pct: f32,
        /// Memory in use, percent of the node's memory.
        memory_load_pct: f32,
        /// Started chunks.
        chunks: Vec<ChunkReport>,
    },
    /// Frames done in a chunk (0 when it starts).
    Progress {
        /// Node.
        node: NodeId,
        /// Report.
        report: ChunkReport,
    },
    /// The node's answer to a shrink: the last frame it will render, or
    /// `None` when it no longer holds the chunk.
    ShrinkAck {
        /// Node.
        node: NodeId,
        /// Chunk.
        chunk: ChunkKey,
        /// Epoch.
        epoch: u32,
        /// Last frame it will render.
        end: Option<u64>,
    },
    /// A segment was stored and verified by the artifact store (after
    /// [`crate::sched::Core::may_upload`] admitted it).
    SegmentStored {
        /// Node.
        node: NodeId,
        /// Chunk.
        chunk: ChunkKey,
        /// Epoch.
        epoch: u32,
        /// First frame in the segment.
        start: u64,
        /// Last frame in the segment.
        end: u64,
        /// Stored path.
        segment: String,
        /// BLAKE3, hex.
        hash: String,
    },
    /// The node reports the chunk done: its segment is stored.
    ChunkDone {
        /// Node.
        node: NodeId,
        /// Chunk.
        chunk: ChunkKey,
        /// Epoch.
        epoch: u32,
        /// First frame rendered.
        start: u64,
        /// Last frame rendered.
        end: u64,
        /// BLAKE3 of the segment, hex.
        hash: String,
        /// Render and encode time on the node.
        elapsed_ms: u64,
    },
    /// A chunk failed on its node.
    ChunkFailed {
        /// Node.
        node: NodeId,
        /// Chunk.
        chunk: ChunkKey,
        /// Epoch.
        epoch: u32,
        /// Why.
        reason: String,
        /// The frame that failed, when known.
        failed_frame: Option<u64>,
        /// The end of the executor's output (stderr), for the API's chunk
        /// list; empty when there is none.
        log_tail: String,
    },
    /// A user cancelled a job.
    CancelJob {
        /// Job.
        job: JobId,
    },
    /// The segments of a job were joined.
    MuxDone {
        /// Job.
        job: JobId,
        /// Output path.
        output: String,
    },
    /// Joining failed.
    MuxFailed {
        /// Job.
        job: JobId,
        /// Why.
        reason: String,
    },
    /// An admin lets a quarantined node take work again.
    ClearQuarantine {
        /// Node name.
        name: String,
    },
    /// An admin drains a node: no new work; with `now`, what it has not
    /// rendered yet goes back at once, else its chunks finish.
    Drain {
        /// Node name.
        name: String,
        /// Hand back unrendered frames at once.
        now: bool,
    },
    /// A preemption notice (the node's signal or an admin's API call): the
    /// node is about to go; it is drained at once and the frames of its
    /// running chunks after the one it is on go back to wait.
    Preempt {
        /// Node name.
        name: String,
    },
    /// An admin returns a drained node to work.
    Undrain {
        /// Node name.
        name: String,
    },
    /// A user re-runs the frames a failed or cancelled job is missing.
    RetryJob {
        /// Job.
        job: JobId,
    },
    /// A user pauses a job (no new chunk starts; running ones finish) or
    /// resumes it.
    PauseJob {
        /// Job.
        job: JobId,
        /// Pause or resume.
        paused: bool,
    },
    /// An admin sets a node's tags (`Some`, replacing its own) or gives
    /// it back its own (`None`).
    SetTags {
        /// Node name.
        name: String,
        /// The tags.
        tags: Option<Vec<String>>,
    },
    /// A user changes a job's priority (0..=100).
    SetPriority {
        /// Job.
        job: JobId,
        /// New priority.
        priority: u8,
    },
    /// Time passed: the deadline [`crate::sched::Core::poll_timeout`]
    /// returned is due.
    Timeout,
}

/// An assignment, with everything the driver needs to build the wire
/// message.
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
    /// The job's spec (shader, size, rate, quality).
    pub spec: Arc<JobSpec>,
    /// The encoder every chunk of the job uses.
    pub encoder: Arc<str>,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Accept the session's hello: the node is `node` from now on.
    Welcome {
        /// Session.
        session: u64,
        /// Its node id.
        node: NodeId,
    },
    /// Refuse the session's hello.
    Refuse {
        /// Session.
        session: u64,
        /// Why.
        reason: String,
    },
    /// Close a session that a newer one of the same node replaced.
    CloseSession {
        /// Session.
        session: u64,
    },
    /// Send an assignment.
    Assign {
        /// Node.
        node: NodeId,
        /// What to run.
        assignment: Assignment,
    },
    /// Tell a node to drop a chunk.
    Cancel {
        /// Node.
        node: NodeId,
        /// Chunk.
        chunk: ChunkKey,
        /// Epoch.
        epoch: u32,
    },
    /// Ask a node to end a chunk early.
    Shrink {
        /// Node.
        node: NodeId,
        /// Chunk.
        chunk: ChunkKey,
        /// Epoch.
        epoch: u32,
        /// Proposed last frame.
        proposed_end: u64,
    },
    /// Delete the stored segments of a job that has ended, once the facts
    /// of its end are durable; then journal [`crate::sched::Fact::Discarded`]
    /// (the driver does, after the files are gone).
    Discard {
        /// Job.
        job: JobId,
    },
    /// Join these segments, in frame order, into the job's output.
    Mux {
        /// Job.
        job: JobId,
        /// Segment paths in frame order.
        segments: Vec<String>,
    },
}

impl Command {
    /// The job a command concerns, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Command::Assign { assignment, .. } => Some(assignment.chunk.0),
            Command::Cancel { chunk, .. } | Command::Shrink { chunk, .. } => Some(chunk.0),
            Command::Discard { job } | Command::Mux { job, .. } => Some(*job),
            Command::Welcome { .. } | Command::Refuse { .. } | Command::CloseSession { .. } => None,
        }
    }
}

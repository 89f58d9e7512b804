//! The REST API's response bodies, shared by the coordinator (which writes
//! them) and the CLI (which reads them).

use serde::{Deserialize, Serialize};

/// Life cycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted; no chunk has started.
    Queued,
    /// Waiting: no connected node meets its requirements; `error` names each
    /// requirement no node meets. Runs as soon as such a node joins.
    Unschedulable,
    /// At least one chunk started.
    Running,
    /// Every chunk is stored; the segments are being joined.
    Muxing,
    /// The output file exists.
    Done,
    /// A chunk ran out of retries or the mux failed; `error` says why.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// True when nothing more will happen to the job.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Life cycle of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkState {
    /// Frames waiting for a node (not a chunk yet: chunks are carved from
    /// these when a node has a free slot).
    Pending,
    /// Sent to a node, which has it queued or is running it.
    Assigned,
    /// Its segment is stored and verified.
    Done,
    /// Out of retries.
    Failed,
    /// Its job was cancelled.
    Cancelled,
}

/// How a chunk came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChunkKind {
    /// Carved from the job's waiting frames.
    #[default]
    Normal,
    /// The tail of a running chunk, taken by an idle node (work stealing).
    Stolen,
    /// A copy of a straggling chunk; the first of the two to finish wins.
    Speculative,
}

/// One chunk as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkView {
    /// Chunk id within the job: stable, never reused, also after splits.
    /// Absent for frames still waiting for a node.
    pub index: Option<u32>,
    /// How it came to be.
    #[serde(default)]
    pub kind: ChunkKind,
    /// First frame, inclusive.
    pub start: u64,
    /// Last frame, inclusive.
    pub end: u64,
    /// State.
    pub state: ChunkState,
    /// Node running it or that ran it.
    pub node: Option<String>,
    /// Frames rendered so far.
    pub frames_done: u64,
    /// Failed attempts at these frames before this one.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: u64,
    /// Job name.
    pub name: String,
    /// State.
    pub state: JobState,
    /// Frames in the job.
    pub frames_total: u64,
    /// Frames rendered (done chunks plus progress of running ones).
    pub frames_done: u64,
    /// Frames per node name, of done chunks.
    pub frames_by_node: std::collections::BTreeMap<String, u64>,
    /// Priority, 0..=100.
    #[serde(default)]
    pub priority: u8,
    /// Project, for fair share.
    #[serde(default)]
    pub project: String,
    /// Encoder every chunk uses.
    #[serde(default)]
    pub encoder: String,
    /// Done and running chunks and waiting frame ranges, in frame order.
    pub chunks: Vec<ChunkView>,
    /// Frames moved from a running chunk to another node by work stealing.
    #[serde(default)]
    pub frames_stolen: u64,
    /// Frames rendered and thrown away: losers of speculative copies and
    /// cancelled attempts.
    #[serde(default)]
    pub frames_wasted: u64,
    /// Frames left out of the output because they failed on every retry
    /// (only with `allow_missing_frames`).
    #[serde(default)]
    pub missing_frames: Vec<u64>,
    /// Nodes that failed this job too often and no longer get its chunks.
    #[serde(default)]
    pub blocklisted_nodes: Vec<String>,
    /// Why it failed, or why no node can run it.
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch when it was submitted.
    pub submitted_at_ms: u64,
    /// When the first frame started on a node.
    pub first_frame_at_ms: Option<u64>,
    /// When it reached a terminal state.
    pub finished_at_ms: Option<u64>,
    /// Path of the output file on the coordinator, once done.
    pub output_path: Option<String>,
    /// URL path of the output download, once done.
    pub output_url: Option<String>,
}

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Whether its connection is up.
    pub connected: bool,
    /// What it has.
    pub capabilities: crate::caps::Capabilities,
    /// Chunks it holds (`job/index`).
    pub chunks: Vec<String>,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// CPU load it reported, 0..=100 percent.
    pub cpu_load_pct: f32,
    /// Frames it has rendered in done chunks since the coordinator started.
    pub frames_rendered: u64,
    /// Why it is quarantined (no new work until an admin clears it).
    #[serde(default)]
    pub quarantined: Option<String>,
    /// Drained by an admin (`drover drain`), or leaving (its agent is
    /// shutting down): takes no new work.
    #[serde(default)]
    pub drained: bool,
    /// Measured speed, frames per second, per job kind and resolution class
    /// (`shader@720p`): seeded by the calibration render, then averaged
    /// over real frames.
    #[serde(default)]
    pub speed_fps: std::collections::BTreeMap<String, f64>,
    /// Chunks it may hold at once.
    #[serde(default)]
    pub slots: u32,
}

/// The body of every API error (RFC 9457 problem details).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Short summary.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// Full explanation.
    pub detail: String,
    /// Field at fault, for invalid input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Response of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    /// New job id.
    pub id: u64,
    /// URL path of its status.
    pub status_url: String,
}

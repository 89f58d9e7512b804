//! The REST API's response bodies, shared by the coordinator (which writes
//! them) and the CLI (which reads them).

use serde::{Deserialize, Serialize};

/// Life cycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted; no chunk has started.
    Queued,
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
    /// Waiting for a node.
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

/// One chunk as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkView {
    /// Index within the job.
    pub index: u32,
    /// First frame, inclusive.
    pub start: u64,
    /// Last frame, inclusive.
    pub end: u64,
    /// State.
    pub state: ChunkState,
    /// Node running it or that ran it.
    pub node: Option<String>,
    /// Frames rendered so far in the current attempt.
    pub frames_done: u64,
    /// Attempts started so far.
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
    /// Chunks in frame order.
    pub chunks: Vec<ChunkView>,
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

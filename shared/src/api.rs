//! The REST API's response bodies, shared by the coordinator (which writes
//! them) and the CLI (which reads them).

use serde::{Deserialize, Serialize};

/// Life cycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The end of the executor's output (stderr) at the job's last failure,
    /// on chunks whose frames failed before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Name of the API key that submitted it.
    #[serde(default)]
    pub submitter: String,
    /// Id of that key.
    #[serde(default)]
    pub submitter_key: String,
    /// Paused by a user: no new chunk starts until it is resumed.
    #[serde(default)]
    pub paused: bool,
    /// Where to read more about it.
    #[serde(default)]
    pub links: JobLinks,
}

/// URL paths about one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobLinks {
    /// The job.
    pub job: String,
    /// Its chunks.
    pub chunks: String,
    /// Its webhook deliveries.
    pub webhooks: String,
    /// Its events (Server-Sent Events).
    pub events: String,
    /// Its files with signed links, once done.
    pub artifacts: Option<String>,
}

impl JobLinks {
    /// The links of job `id` in `state`.
    pub fn of(id: u64, state: JobState) -> JobLinks {
        JobLinks {
            job: format!("/v1/jobs/{id}"),
            chunks: format!("/v1/jobs/{id}/chunks"),
            webhooks: format!("/v1/jobs/{id}/webhooks"),
            events: format!("/v1/events?job={id}"),
            artifacts: (state == JobState::Done).then(|| format!("/v1/jobs/{id}/artifacts")),
        }
    }
}

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Submitted {
    /// New job id.
    pub id: u64,
    /// URL path of its status.
    pub status_url: String,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: keys, nodes, join tokens, every project's jobs.
    Admin,
    /// Submits jobs and acts on them (cancel, retry, pause, priority) in
    /// its project; reads like a viewer.
    Submitter,
    /// Reads jobs, artifacts, nodes and events of its project.
    Viewer,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "submitter" => Ok(Role::Submitter),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "{other:?} is not a role: admin, submitter or viewer"
            )),
        }
    }
}

/// An API key as the API shows it: never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyView {
    /// Public id.
    pub id: String,
    /// Who or what it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one project it may see and submit to; all when absent.
    pub project: Option<String>,
    /// Requests per second (burst twice this).
    pub rate_per_s: u32,
    /// Jobs it may have queued or running at once.
    pub max_active_jobs: u32,
    /// Created at, ms since the Unix epoch.
    pub created_ms: u64,
    /// Revoked at, if it is.
    pub revoked_ms: Option<u64>,
}

/// Response of creating a key: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyCreated {
    /// The key as listed.
    pub key: KeyView,
    /// The whole key to send as `Authorization: Bearer ...`. Not stored:
    /// keep it now.
    pub secret: String,
}

/// A job in a list: what a table row needs, not its chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSummary {
    /// Job id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// State.
    pub state: JobState,
    /// Paused by a user.
    pub paused: bool,
    /// Priority, 0..=100.
    pub priority: u8,
    /// Project.
    pub project: String,
    /// Name of the key that submitted it.
    pub submitter: String,
    /// Frames in the job.
    pub frames_total: u64,
    /// Frames rendered.
    pub frames_done: u64,
    /// Why it failed, or why no node can run it.
    pub error: Option<String>,
    /// Submitted at, ms since the Unix epoch.
    pub submitted_at_ms: u64,
    /// Ended at.
    pub finished_at_ms: Option<u64>,
    /// URL path of the whole job.
    pub url: String,
}

impl From<&JobView> for JobSummary {
    fn from(v: &JobView) -> JobSummary {
        JobSummary {
            id: v.id,
            name: v.name.clone(),
            state: v.state,
            paused: v.paused,
            priority: v.priority,
            project: v.project.clone(),
            submitter: v.submitter.clone(),
            frames_total: v.frames_total,
            frames_done: v.frames_done,
            error: v.error.clone(),
            submitted_at_ms: v.submitted_at_ms,
            finished_at_ms: v.finished_at_ms,
            url: format!("/v1/jobs/{}", v.id),
        }
    }
}

/// A page of `GET /v1/jobs`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// URL path of the next page, filters kept; absent on the last page.
    pub next: Option<String>,
}

/// A job's chunks and waiting frame ranges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkList {
    /// Job id.
    pub job: u64,
    /// In frame order.
    pub chunks: Vec<ChunkView>,
}

/// One chunk attempt's executor log, as `GET /v1/jobs/{id}/logs` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkLogEntry {
    /// Chunk id within the job.
    pub index: u32,
    /// The attempt's epoch.
    pub epoch: u32,
    /// First frame of the chunk, inclusive.
    pub start: u64,
    /// Last frame of the chunk, inclusive.
    pub end: u64,
    /// Node that ran it.
    pub node: String,
    /// `running`, `done`, `failed`, `cancelled`, or `lost` (the attempt
    /// ended without its node's last piece: a lost node or agent).
    pub state: String,
    /// Why the attempt failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes of the log.
    pub size_bytes: u64,
    /// The node's last piece arrived: the log will not grow.
    pub complete: bool,
    /// The log itself (`text/plain`).
    pub url: String,
}

/// A job's chunk logs, by chunk id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkLogList {
    /// Job id.
    pub job: u64,
    /// One per chunk attempt that sent a log, by chunk id.
    pub logs: Vec<ChunkLogEntry>,
}

/// One file a finished job produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactView {
    /// `output.mp4` or `poster.png`.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Size.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// A signed link that needs no key, valid until `expires_at`.
    pub download_url: String,
    /// When the link stops working, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// `GET /v1/jobs/{id}/artifacts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactList {
    /// Job id.
    pub job: u64,
    /// The output and its poster frame.
    pub artifacts: Vec<ArtifactView>,
}

/// `PATCH /v1/jobs/{id}`: what may change on a job that runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobUpdate {
    /// New priority, 0..=100.
    pub priority: Option<u8>,
}

/// A join token as the API shows it: never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinTokenView {
    /// Public id.
    pub id: String,
    /// The pool nodes joining with it belong to; the node's own `--pool`
    /// when absent.
    pub pool: Option<String>,
    /// What it is for.
    pub note: String,
    /// Created at, ms since the Unix epoch.
    pub created_ms: u64,
    /// No node may join with it after this.
    pub expires_ms: Option<u64>,
    /// Revoked at, if it is.
    pub revoked_ms: Option<u64>,
    /// Nodes that joined with it.
    pub joined: u64,
}

/// Response of creating a join token: the only time it is shown whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinTokenCreated {
    /// The token as listed.
    pub token: JoinTokenView,
    /// The whole token, for `drover node --join`: it carries the
    /// coordinator's address and certificate fingerprint. Not stored.
    pub secret: String,
}

/// `POST /v1/join-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    /// Pool of the nodes that join with it (1..=64 bytes of letters,
    /// digits, `-`, `_`, `.`); the node's own when absent.
    #[serde(default)]
    pub pool: Option<String>,
    /// Seconds it stays valid, 60..=31536000; forever when absent.
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// What it is for, at most 256 bytes.
    #[serde(default)]
    pub note: String,
}

/// A node's identity: the certificate it joined with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdentityView {
    /// SHA-256 of the node's certificate, hex: the identity's id.
    pub fingerprint: String,
    /// The node name it is bound to.
    pub name: String,
    /// Its pool, from the join token.
    pub pool: Option<String>,
    /// The join token it joined with.
    pub token: String,
    /// Joined at, ms since the Unix epoch.
    pub enrolled_ms: u64,
    /// Revoked at, if it is: the node is refused at the handshake.
    pub revoked_ms: Option<u64>,
}

/// `PUT /v1/nodes/{name}/tags`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeTags {
    /// The node's tags from now on, replacing what it reports itself (at
    /// most 16, each 1..=64 bytes of letters, digits, `-`, `_`, `.`); `null`
    /// gives it back its own.
    pub tags: Option<Vec<String>>,
}

/// What `drover top` shows of a node: its state in one word, and what it
/// is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FleetNodeState {
    /// Connected, usable, holds no chunk.
    Idle,
    /// Connected and rendering (holds at least one chunk).
    Busy,
    /// Drained by an admin or leaving: takes no new work; its chunks finish.
    Draining,
    /// Its connection is gone or its heartbeats stopped; remembered until
    /// it is forgotten, and its chunks went back to their jobs.
    Lost,
    /// Failed too many jobs: no new work until an admin clears it.
    Quarantined,
}

/// One node in `GET /v1/fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetNode {
    /// Node name.
    pub name: String,
    /// Its pool (empty: the default pool).
    pub pool: String,
    /// The adapter it renders with (`NVIDIA H100 80GB HBM3`).
    pub adapter: String,
    /// That adapter's wgpu backend (`Vulkan`).
    pub backend: String,
    /// Its state.
    pub state: FleetNodeState,
    /// Why, for a quarantined node.
    pub reason: Option<String>,
    /// The job of the chunk it is running (the first it holds).
    pub job: Option<u64>,
    /// That chunk's first frame.
    pub frame_start: Option<u64>,
    /// That chunk's last frame.
    pub frame_end: Option<u64>,
    /// Frames of that chunk rendered so far.
    pub frames_done: u64,
    /// Chunks it holds.
    pub chunks: u32,
    /// Measured speed, frames per second: the scheduler's learned speed of
    /// this node on the job it runs, or on the calibration shader at 720p
    /// when idle.
    pub speed_fps: f64,
    /// Frames per second it is rendering now: the progress of its running
    /// chunks over the time they have run.
    pub fps: f64,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// CPU load it reported, 0..=100 percent.
    pub cpu_load_pct: f32,
    /// Memory in use it reported, 0..=100 percent.
    pub memory_load_pct: f32,
    /// Frames it has rendered in done chunks since the coordinator started.
    pub frames_rendered: u64,
}

/// One job in `GET /v1/fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetJob {
    /// Job id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// State.
    pub state: JobState,
    /// Paused by a user.
    pub paused: bool,
    /// Priority, 0..=100.
    pub priority: u8,
    /// Project.
    pub project: String,
    /// Frames in the job.
    pub frames_total: u64,
    /// Frames rendered (stored, plus progress of running chunks).
    pub frames_done: u64,
    /// Frames per second its running chunks render now, together.
    pub fps: f64,
    /// Seconds until its last frame is rendered: the frames left over
    /// `fps`. Absent when nothing renders it now (queued, paused, ended).
    pub eta_s: Option<u64>,
    /// Nodes holding its chunks, by name.
    pub nodes: Vec<String>,
    /// Why it is in its state: why it failed, what no node has
    /// (`unschedulable`), `paused`, or chunks waiting for their node to
    /// reconnect.
    pub reason: Option<String>,
    /// Submitted at, ms since the Unix epoch.
    pub submitted_at_ms: u64,
}

/// `GET /v1/fleet`: every node and the jobs that matter now, in one
/// answer, for `drover top`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetView {
    /// When the coordinator took it, ms since the Unix epoch.
    pub at_ms: u64,
    /// Every node the coordinator knows, by name.
    pub nodes: Vec<FleetNode>,
    /// Queued, running and muxing jobs first (by priority, then age), then
    /// the most recently ended ones, at most
    /// `drover_coordinator::sched::MAX_FLEET_JOBS` in all.
    pub jobs: Vec<FleetJob>,
    /// Jobs the coordinator holds in memory and the caller may see; more
    /// than `jobs.len()` when the list was cut.
    pub jobs_total: u64,
}

/// An auto-scaling pool (`GET /v1/pools`, `GET /v1/pools/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolView {
    /// Pool name (its nodes join with `--pool NAME`).
    pub name: String,
    /// `process`, `kubernetes` or `command`.
    pub provider: String,
    /// Fewest nodes it keeps.
    pub min: u32,
    /// Most nodes it asks for.
    pub max: u32,
    /// Nodes asked of the provider and not removed.
    pub requested: u32,
    /// Nodes asked for that have not joined yet.
    pub starting: u32,
    /// Its connected nodes.
    pub nodes: Vec<String>,
    /// How many nodes are connected (`nodes.len()`).
    pub current: u32,
    /// Nodes the autoscaler is draining or removing.
    pub draining: Vec<String>,
    /// Remaining frames of the jobs its nodes can run.
    pub backlog_frames: u64,
    /// Those frames' render time on one of its nodes, seconds.
    pub work_s: f64,
    /// How long the backlog takes with the nodes it has, seconds (`None`
    /// with no node).
    pub drain_eta_s: Option<f64>,
    /// The drain time over which it scales up, seconds.
    pub target_drain_s: f64,
    /// How long a node may idle before it is drained, seconds.
    pub idle_cooldown_s: f64,
    /// The last provider error, until a call succeeds.
    pub last_error: Option<String>,
    /// Its last few decisions, newest first (all of them:
    /// `GET /v1/pools/{name}/decisions`).
    pub decisions: Vec<ScaleDecisionView>,
}

/// One decision of a pool's autoscaler
/// (`GET /v1/pools/{name}/decisions`), journaled with its reason and
/// outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScaleDecisionView {
    /// Increasing number of the decision in the coordinator's journal.
    pub seq: u64,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Pool.
    pub pool: String,
    /// `scale_up`, `drain` or `remove`.
    pub action: String,
    /// The node drained or removed.
    pub node: Option<String>,
    /// How many nodes a scale-up asked for.
    pub count: Option<u32>,
    /// Why, with the figures.
    pub reason: String,
    /// `ok`, or `failed` (the provider's error is in `error`; it is tried
    /// again after a backoff).
    pub outcome: String,
    /// The provider's error.
    pub error: Option<String>,
    /// What the provider printed (the `command` provider's output).
    pub output: Option<String>,
}

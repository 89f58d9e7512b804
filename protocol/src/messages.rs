//! The wire types. Changing any of them changes [`PROTOCOL_VERSION`].

use rkyv::{Archive, Deserialize, Serialize};

/// Version of this wire format. A peer with another version is refused in
/// the handshake with a message naming both versions.
pub const PROTOCOL_VERSION: u32 = 2;

/// Identifies one attempt at one chunk. `epoch` grows with every assignment
/// of the chunk, so a late message from an earlier attempt is recognised and
/// dropped.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// Job id.
    pub job: u64,
    /// Chunk index within the job.
    pub index: u32,
    /// Assignment epoch.
    pub epoch: u32,
}

/// A graphics adapter as the wire carries it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireAdapter {
    /// Adapter name.
    pub name: String,
    /// Backend name.
    pub backend: String,
    /// Device type name (`DiscreteGpu`, `Cpu`, ...).
    pub device_type: String,
    /// Vendor in lower case, empty when unknown.
    pub vendor: String,
    /// VRAM in bytes, 0 when unknown.
    pub vram_bytes: u64,
}

/// The node's calibration render.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct WireCalibration {
    /// Frames per second rendered and encoded.
    pub frames_per_s: f64,
    /// Width of the calibration frames.
    pub width: u32,
    /// Height of the calibration frames.
    pub height: u32,
}

/// A node's capabilities as the wire carries them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireCapabilities {
    /// Host name.
    pub hostname: String,
    /// OS name and version.
    pub os: String,
    /// CPU brand.
    pub cpu_brand: String,
    /// Logical cores.
    pub cpu_cores: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// All adapters.
    pub adapters: Vec<WireAdapter>,
    /// Adapter the renderer uses.
    pub render_adapter: Option<WireAdapter>,
    /// Encoders that opened.
    pub encoders: Vec<String>,
    /// Admin-given tags.
    pub tags: Vec<String>,
    /// Node pool, empty for none.
    pub pool: String,
    /// The calibration render, when it ran.
    pub calibration: Option<WireCalibration>,
    /// What a test aid overrode, if anything.
    pub test_override: Option<String>,
}

/// First message of a node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello {
    /// The node's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Agent build version (crate version), for logs.
    pub agent_version: String,
    /// Node id: random, made on the node's first start and kept in its data
    /// dir, so the coordinator can tell a renamed or re-imaged machine from
    /// the same one.
    pub node_id: String,
    /// Node name, unique in the farm; the scheduler's key for the node.
    pub name: String,
    /// What it has.
    pub capabilities: WireCapabilities,
}

/// Progress of one running chunk.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct ChunkProgress {
    /// Which attempt.
    pub chunk: ChunkRef,
    /// Frames rendered so far in this attempt.
    pub frames_done: u64,
}

/// Periodic liveness and load report.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// CPU load, 0..=100.
    pub cpu_load_pct: f32,
    /// Chunks the node holds, with their progress.
    pub chunks: Vec<ChunkProgress>,
}

/// The node's answer to [`CoordToNode::Shrink`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct ShrinkAck {
    /// Which attempt.
    pub chunk: ChunkRef,
    /// The last frame the node will really render: the proposal, or later
    /// when it had already started frames past it. `None` when the node no
    /// longer holds the chunk (it finished or failed; that message is on
    /// its way or already arrived).
    pub end: Option<u64>,
}

/// A chunk finished: its segment is uploaded and the coordinator confirmed it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChunkDone {
    /// Which attempt.
    pub chunk: ChunkRef,
    /// First frame rendered, inclusive.
    pub start: u64,
    /// Last frame rendered, inclusive.
    pub end: u64,
    /// BLAKE3 of the segment file.
    pub output_hash: [u8; 32],
    /// Name of the adapter that rendered it.
    pub adapter: String,
    /// Milliseconds spent rendering and encoding.
    pub elapsed_ms: u64,
}

/// A chunk failed on the node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChunkFailed {
    /// Which attempt.
    pub chunk: ChunkRef,
    /// One-line reason.
    pub reason: String,
    /// Last lines of the chunk's log.
    pub log_tail: String,
    /// The frame whose render failed, when the failure is a frame's.
    pub failed_frame: Option<u64>,
}

/// Messages a node sends on its control stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum NodeToCoord {
    /// Handshake; always first. Boxed: it is by far the largest message
    /// and sent once, while heartbeats and progress fill the node's queues.
    Hello(Box<Hello>),
    /// Liveness.
    Heartbeat(Heartbeat),
    /// Frames finished in a running chunk.
    Progress(ChunkProgress),
    /// A chunk is done and its segment stored.
    Done(ChunkDone),
    /// A chunk failed.
    Failed(ChunkFailed),
    /// Answer to a shrink proposal.
    ShrinkAck(ShrinkAck),
}

/// Work for a node: render frames `start..=end` and encode them into one
/// segment.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Assign {
    /// Which attempt.
    pub chunk: ChunkRef,
    /// First frame, inclusive.
    pub start: u64,
    /// Last frame, inclusive.
    pub end: u64,
    /// Frames per second.
    pub fps: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// WGSL fragment program (Drover's shader contract).
    pub shader_source: String,
    /// FFmpeg encoder name.
    pub encoder: String,
    /// Constant rate factor.
    pub crf: u8,
}

/// Messages the coordinator sends on a node's control stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum CoordToNode {
    /// Handshake accepted.
    Welcome {
        /// The coordinator's [`PROTOCOL_VERSION`].
        protocol_version: u32,
        /// How often to send heartbeats.
        heartbeat_interval_ms: u64,
    },
    /// Handshake refused; the coordinator closes the connection after this.
    Refused {
        /// Why, in words.
        reason: String,
        /// The coordinator's [`PROTOCOL_VERSION`].
        protocol_version: u32,
    },
    /// Run a chunk.
    Assign(Assign),
    /// Stop a chunk and drop its output.
    Cancel(ChunkRef),
    /// Work stealing: stop the chunk after `proposed_end` instead of its
    /// current end, and answer with [`ShrinkAck`]. The segment then holds
    /// frames `start..=end` of the answer.
    Shrink {
        /// Which attempt.
        chunk: ChunkRef,
        /// Proposed last frame.
        proposed_end: u64,
    },
}

/// First message of an upload stream, followed by exactly `bytes` raw bytes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UploadHeader {
    /// The attempt whose segment this is.
    pub chunk: ChunkRef,
    /// First frame in the segment, inclusive.
    pub start: u64,
    /// Last frame in the segment, inclusive (the chunk's end after any
    /// shrink).
    pub end: u64,
    /// Size of the segment.
    pub bytes: u64,
    /// BLAKE3 of the segment.
    pub hash: [u8; 32],
}

/// The coordinator's answer on an upload stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum UploadReply {
    /// Stored and its hash verified.
    Stored,
    /// Refused; the node keeps the file and reports the chunk failed.
    Rejected {
        /// Why.
        reason: String,
    },
}

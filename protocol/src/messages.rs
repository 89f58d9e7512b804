//! The wire types. Changing any of them changes [`PROTOCOL_VERSION`].

use rkyv::{Archive, Deserialize, Serialize};

/// Version of this wire format. A peer with another version is refused in
/// the handshake with a message naming both versions.
pub const PROTOCOL_VERSION: u32 = 5;

/// Chunks a hello may list in [`Hello::running`]. A node holds a handful
/// (its slots plus what the coordinator queued); a longer list is a broken
/// or hostile peer, and the coordinator reads no further.
pub const MAX_HELLO_RUNNING: usize = 16;

/// Segments a hello may list in [`Hello::spooled`]. A spool kept through a
/// long coordinator outage can hold many; 4,096 entries of about 90 bytes
/// keep the hello well inside [`crate::MAX_CONTROL_FRAME_BYTES`]. Segments
/// past this are still offered for upload after the welcome.
pub const MAX_HELLO_SPOOLED: usize = 4096;

/// Largest frame on an upload stream (the header and each answer): they hold
/// a few numbers and one reason.
pub const MAX_UPLOAD_FRAME_BYTES: usize = 4 * 1024;

/// Longest reason an upload answer carries, in bytes; the coordinator cuts
/// longer ones, so an answer always fits [`MAX_UPLOAD_FRAME_BYTES`].
pub const MAX_REASON_BYTES: usize = 1024;

/// QUIC application close codes. Either side closes a connection with one,
/// so the other can tell a refusal from a shutdown.
pub mod close_code {
    /// An ordinary end: the control stream ended or failed.
    pub const BYE: u32 = 0;
    /// The coordinator refused the node's hello.
    pub const REFUSED: u32 = 1;
    /// The preambles named different protocol versions.
    pub const VERSION_MISMATCH: u32 = 2;
    /// The node drained its work after a SIGTERM and leaves.
    pub const NODE_LEAVING: u32 = 3;
    /// The coordinator is shutting down; nodes keep their work and spool
    /// and reconnect with backoff until it is back.
    pub const COORDINATOR_SHUTTING_DOWN: u32 = 4;
    /// The node was not admitted (no identity and no valid join token, or
    /// its identity revoked): it stops, the reason says what to do.
    pub const NOT_ADMITTED: u32 = 5;
    /// An admin revoked the node's identity while it was connected.
    pub const REVOKED: u32 = 6;
}

/// Largest client frame (a request or a response): a job spec with the
/// largest shader fits, and so does a page of jobs.
pub const MAX_CLIENT_FRAME_BYTES: usize = 4 << 20;

/// A request on a [`crate::StreamKind::Client`] stream: one API call, as it
/// would go over REST, with the caller's API key. Requests on one stream
/// are answered in order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ClientRequest {
    /// Echoed in the response.
    pub id: u64,
    /// The API key (`drv_...`).
    pub api_key: String,
    /// `GET`, `POST`, `PATCH` or `DELETE`.
    pub method: String,
    /// The REST path with its query, e.g. `/v1/jobs?state=running`.
    pub path: String,
    /// The body's media type (`application/json`, `application/toml`), or
    /// empty without a body.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
}

/// The answer to a [`ClientRequest`]: what REST would have answered.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ClientResponse {
    /// The request's id.
    pub id: u64,
    /// HTTP status code.
    pub status: u16,
    /// `application/json`, or `application/problem+json` for an error.
    pub content_type: String,
    /// `Retry-After` in seconds, for a 429 (0: none).
    pub retry_after_s: u32,
    /// The body.
    pub body: Vec<u8>,
}

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

/// First message of a node. (Its protocol version is in the preamble.)
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello {
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
    /// Chunks the node still holds from an earlier session (running or
    /// queued), at most [`MAX_HELLO_RUNNING`]. The coordinator keeps the
    /// ones it re-adopts and cancels the others.
    pub running: Vec<RunningChunk>,
    /// Finished segments in its spool that no coordinator has confirmed
    /// stored, at most [`MAX_HELLO_SPOOLED`]. The node offers each for
    /// upload after the welcome.
    pub spooled: Vec<SpooledSegment>,
    /// A join token (`drj1_...`), for a node whose certificate the
    /// coordinator does not know yet; empty once it has joined.
    pub join_token: String,
}

/// A chunk a node holds, as its hello reports it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct RunningChunk {
    /// Which attempt.
    pub chunk: ChunkRef,
    /// First frame, inclusive.
    pub start: u64,
    /// Last frame it will render, inclusive: the assignment's end or the end
    /// of its last shrink answer.
    pub end: u64,
    /// Frames rendered so far; 0 while it is queued.
    pub frames_done: u64,
}

/// A finished segment in a node's spool, as its hello reports it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct SpooledSegment {
    /// The attempt whose segment this is.
    pub chunk: ChunkRef,
    /// First frame in the segment, inclusive.
    pub start: u64,
    /// Last frame in the segment, inclusive.
    pub end: u64,
    /// Size of the segment file.
    pub size_bytes: u64,
    /// BLAKE3 of the segment file.
    pub hash: [u8; 32],
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
    /// Memory in use (total less available), 0..=100 percent of the
    /// machine's memory.
    pub memory_load_pct: f32,
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

/// Largest `text` of one [`ChunkLog`] piece, in bytes: small enough that
/// a piece never delays a heartbeat or a shrink answer queued behind it on
/// the control stream, large enough that a chunk's whole log (at most
/// [`MAX_CHUNK_LOG_BYTES`]) takes a few dozen pieces.
pub const MAX_CHUNK_LOG_PIECE_BYTES: usize = 32 * 1024;

/// Longest executor log of one chunk attempt, in bytes. The node keeps the
/// head and the tail of a longer one with a marker saying how much was cut
/// in between, so a log never passes this; a piece whose end would is a
/// broken peer. A MiB is thousands of lines, far more than a chunk's worker
/// writes (a line per second of frames, plus the chunk's start and end).
pub const MAX_CHUNK_LOG_BYTES: u64 = 1 << 20;

/// A piece of the executor's output for one chunk attempt: the adapter,
/// the encoder, frame timings, warnings and the failure, as the node's
/// worker wrote them. Pieces of an attempt go in order; a resent piece (the
/// same `offset`) is the same text.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChunkLog {
    /// Which attempt.
    pub chunk: ChunkRef,
    /// Where `text` starts in the attempt's log, in bytes.
    pub offset: u64,
    /// At most [`MAX_CHUNK_LOG_PIECE_BYTES`] of UTF-8 text.
    pub text: String,
    /// The attempt has ended (done, failed or cancelled): no piece follows.
    pub last: bool,
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
    /// The node is shutting down (SIGTERM): it takes no new work, finishes
    /// its running chunk, uploads what its spool holds, then closes the
    /// connection with [`close_code::NODE_LEAVING`].
    Leaving,
    /// A piece of a chunk attempt's executor log (protocol 5), sent while
    /// the chunk runs and, with `last`, before its `Done` or `Failed`.
    ChunkLog(ChunkLog),
    /// A preemption notice (protocol 5): the node's machine is about to be
    /// taken (a spot instance's notice, SIGUSR1 on the agent). The
    /// coordinator drains it at once and cuts its running chunks at the
    /// frame they are on; the node keeps uploading what it rendered.
    Preempted,
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
    /// Longest one frame may take, seconds (the job's `frame_timeout_s`);
    /// 0: the node's default.
    pub frame_timeout_s: u32,
}

/// Messages the coordinator sends on a node's control stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum CoordToNode {
    /// Handshake accepted.
    Welcome {
        /// How often to send heartbeats.
        heartbeat_interval_ms: u64,
    },
    /// Handshake refused (a name in use, say); the coordinator closes the
    /// connection after this with [`close_code::REFUSED`]. The node retries
    /// with backoff, as the cause may clear. (Different protocol versions
    /// are told apart in the preamble, before any message.)
    Refused {
        /// Why, in words.
        reason: String,
        /// Retrying cannot help (not admitted, revoked): the node stops
        /// and says why.
        permanent: bool,
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

/// First message of an upload stream. An upload is resumable: the
/// coordinator answers with an [`UploadAdmission`]; on
/// [`UploadAdmission::Accept`] the node sends the segment's bytes from
/// `offset_bytes` to its end and finishes its side of the stream; the
/// coordinator answers with an [`UploadOutcome`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UploadHeader {
    /// The attempt whose segment this is.
    pub chunk: ChunkRef,
    /// First frame in the segment, inclusive.
    pub start: u64,
    /// Last frame in the segment, inclusive (the chunk's end after any
    /// shrink).
    pub end: u64,
    /// Size of the whole segment.
    pub size_bytes: u64,
    /// BLAKE3 of the whole segment.
    pub hash: [u8; 32],
}

/// The coordinator's first answer on an upload stream, to the header.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum UploadAdmission {
    /// Send the bytes from `offset_bytes` on: the coordinator already holds
    /// that many of exactly this segment (same attempt, range and hash)
    /// from an interrupted upload. `offset_bytes == size_bytes` when it has
    /// them all (the node then sends nothing).
    Accept {
        /// Bytes to skip.
        offset_bytes: u64,
    },
    /// The coordinator does not want this segment (its frames are done,
    /// cancelled or another attempt's): the node deletes its copy.
    NotNeeded {
        /// Why.
        reason: String,
    },
    /// Not now (too many uploads at once, the artifact disk nearly full, the
    /// job joining): the node keeps its copy and offers it again later.
    Later {
        /// Why.
        reason: String,
    },
    /// The header itself is unacceptable (a segment over the size limit, a
    /// range that ends before it starts): the node deletes its copy and
    /// reports the chunk failed. It renders nothing again by itself.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// The coordinator's last answer on an upload stream, once the bytes came.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum UploadOutcome {
    /// Stored, its size and hash verified, and the fact durable in the
    /// coordinator's journal: the node deletes its copy and sends `Done`.
    Stored,
    /// Received but not recorded (the journal could not take it, say): the
    /// node keeps its copy and offers it again later; the coordinator keeps
    /// what it received, so the next offer is answered at once.
    Later {
        /// Why.
        reason: String,
    },
    /// The bytes do not make the announced segment (hash or size mismatch):
    /// the node's copy is corrupt, so it deletes it and reports the chunk
    /// failed. It renders nothing again by itself.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// `reason` cut to at most [`MAX_REASON_BYTES`] on a character boundary.
pub fn clip_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_body, encode_frame, Decode, Encode};
    use crate::MAX_CONTROL_FRAME_BYTES;
    use rkyv::api::high::{HighDeserializer, HighValidator};
    use rkyv::bytecheck::CheckBytes;
    use rkyv::rancor;

    const C: ChunkRef = ChunkRef {
        job: u64::MAX,
        index: u32::MAX,
        epoch: u32::MAX,
    };

    /// Encodes `msg`, checks the frame against `limit`, decodes it back.
    fn check<T>(msg: T, limit: usize)
    where
        T: Encode + Decode + PartialEq + std::fmt::Debug,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        let frame = encode_frame(&msg).unwrap();
        assert!(
            frame.len() - 4 <= limit,
            "{msg:?} takes {} bytes, over {limit}",
            frame.len() - 4
        );
        assert_eq!(decode_body::<T>(&frame[4..]).unwrap(), msg);
    }

    fn running(n: usize) -> Vec<RunningChunk> {
        vec![
            RunningChunk {
                chunk: C,
                start: u64::MAX - 1,
                end: u64::MAX,
                frames_done: u64::MAX,
            };
            n
        ]
    }

    fn spooled(n: usize) -> Vec<SpooledSegment> {
        vec![
            SpooledSegment {
                chunk: C,
                start: u64::MAX - 1,
                end: u64::MAX,
                size_bytes: u64::MAX,
                hash: [0xab; 32],
            };
            n
        ]
    }

    fn hello(running: Vec<RunningChunk>, spooled: Vec<SpooledSegment>) -> NodeToCoord {
        let adapter = WireAdapter {
            name: "a".repeat(256),
            backend: "Vulkan".into(),
            device_type: "DiscreteGpu".into(),
            vendor: "nvidia".into(),
            vram_bytes: 80 << 30,
        };
        NodeToCoord::Hello(Box::new(Hello {
            agent_version: "0.1.0".into(),
            node_id: "0".repeat(32),
            name: "n".repeat(64),
            capabilities: WireCapabilities {
                hostname: "h".repeat(255),
                os: "Debian 12".into(),
                cpu_brand: "c".repeat(128),
                cpu_cores: 256,
                memory_bytes: 1 << 40,
                adapters: vec![adapter.clone(); 16],
                render_adapter: Some(adapter),
                encoders: vec!["libx264".into(); 16],
                tags: vec!["t".repeat(64); 32],
                pool: "p".repeat(64),
                calibration: Some(WireCalibration {
                    frames_per_s: 100.0,
                    width: 640,
                    height: 360,
                }),
                test_override: Some("x".repeat(256)),
            },
            running,
            spooled,
            join_token: "j".repeat(512),
        }))
    }

    #[test]
    fn node_messages_round_trip() {
        let l = MAX_CONTROL_FRAME_BYTES;
        check(hello(vec![], vec![]), l);
        check(hello(running(2), spooled(3)), l);
        // The largest hello a node may send fits a control frame.
        check(
            hello(running(MAX_HELLO_RUNNING), spooled(MAX_HELLO_SPOOLED)),
            l,
        );
        check(NodeToCoord::Leaving, l);
        check(NodeToCoord::Preempted, l);
        check(
            NodeToCoord::ShrinkAck(ShrinkAck {
                chunk: C,
                end: None,
            }),
            l,
        );
    }

    #[test]
    fn coordinator_messages_round_trip() {
        let l = MAX_CONTROL_FRAME_BYTES;
        check(
            CoordToNode::Welcome {
                heartbeat_interval_ms: 1000,
            },
            l,
        );
        check(
            CoordToNode::Refused {
                reason: "name n1 is in use".into(),
                permanent: false,
            },
            l,
        );
        check(CoordToNode::Cancel(C), l);
    }

    #[test]
    fn upload_frames_fit_their_limit_even_with_the_longest_reason() {
        let l = MAX_UPLOAD_FRAME_BYTES;
        // Multi-byte characters: the cut must land on a char boundary.
        let long = || clip_reason("é".repeat(10 * MAX_REASON_BYTES));
        assert!(long().len() <= MAX_REASON_BYTES);
        assert!(long().len() > MAX_REASON_BYTES - 2);
        assert_eq!(clip_reason("short".into()), "short");
        check(
            UploadHeader {
                chunk: C,
                start: 0,
                end: u64::MAX,
                size_bytes: u64::MAX,
                hash: [1; 32],
            },
            l,
        );
        check(
            UploadAdmission::Accept {
                offset_bytes: u64::MAX,
            },
            l,
        );
        check(UploadAdmission::NotNeeded { reason: long() }, l);
        check(UploadAdmission::Later { reason: long() }, l);
        check(UploadAdmission::Rejected { reason: long() }, l);
        check(UploadOutcome::Stored, l);
        check(UploadOutcome::Later { reason: long() }, l);
        check(UploadOutcome::Rejected { reason: long() }, l);
    }
}

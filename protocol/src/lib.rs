//! Drover's wire protocol between coordinator and node agents.
//!
//! Messages are rkyv archives in length-delimited frames (a `u32` big-endian
//! length, then the archive) over QUIC streams. Nothing here opens a socket:
//! the codec works over any `AsyncRead`/`AsyncWrite`, so the same code runs on
//! quinn streams and in-memory pipes.
//!
//! # Layout
//! - [`messages`]: the wire types and [`PROTOCOL_VERSION`].
//! - [`codec`]: framing, the frame-size limit, validation of every archive.
//! - [`preamble`]: the fixed raw preamble (magic, version) that opens the
//!   control stream, so peers of any two versions learn each other's version.
//! - [`convert`]: wire types to and from `drover_shared` domain types; the
//!   scheduler never sees a wire type.
//! - [`validate`]: the limits on every string and list a node sends, and
//!   the checks of a decoded message against them
//!   ([`NodeToCoord::validate`], [`Hello::validate`]).
//! - [`fuzzing`]: entry points shared by the cargo-fuzz targets (`fuzz/`)
//!   and the proptest runs (`tests/fuzz.rs`): untrusted bytes through
//!   exactly the reads, decodes and checks a peer's bytes go through.
//!
//! # Streams
//! A node opens one bidirectional *control* stream right after the QUIC
//! handshake, writes its [`preamble`], reads the coordinator's preamble
//! (either side closes, naming both versions, when they differ; from protocol
//! 2 on), then sends [`messages::Hello`], which lists the chunks the node
//! still holds and the finished segments in its spool from earlier sessions
//! (protocol 3); the coordinator answers [`messages::CoordToNode::Welcome`]
//! or [`messages::CoordToNode::Refused`]. Every later control message flows
//! on that stream; a node that is shutting down says
//! [`messages::NodeToCoord::Leaving`] and closes with
//! [`messages::close_code::NODE_LEAVING`] once drained.
//!
//! Each finished segment travels on a bidirectional stream of its own, and
//! an interrupted upload resumes where the coordinator's copy ends:
//!
//! ```text
//! node                                   coordinator
//!  UploadHeader (chunk, range, size, hash) ->
//!                          <- UploadAdmission: Accept { offset_bytes }
//!                             | NotNeeded | Later | Rejected
//!  bytes offset_bytes..size, finish       ->
//!                          <- UploadOutcome: Stored | Later | Rejected
//! ```
//!
//! The first byte of every stream is its [`StreamKind`].
#![warn(missing_docs)]

pub mod codec;
pub mod convert;
pub mod fuzzing;
#[allow(missing_docs)] // for the types rkyv derives; the wire types themselves are documented
pub mod messages;
pub mod preamble;
pub mod validate;

pub use codec::{read_msg, write_msg, WireError, MAX_CONTROL_FRAME_BYTES};
pub use messages::*;
pub use validate::{check_node_name, ProtocolViolation, MAX_HEARTBEAT_ENTRIES};

/// What a freshly opened stream carries; its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// The node's control stream: hello, heartbeats, chunk events.
    Control = 1,
    /// One artifact upload.
    Upload = 2,
    /// A client's requests (`drover submit --quic`): API calls over the
    /// coordinator's QUIC endpoint, each with an API key.
    Client = 3,
}

impl StreamKind {
    /// Parses the stream's first byte.
    pub fn from_byte(b: u8) -> Option<StreamKind> {
        match b {
            1 => Some(StreamKind::Control),
            2 => Some(StreamKind::Upload),
            3 => Some(StreamKind::Client),
            _ => None,
        }
    }
}

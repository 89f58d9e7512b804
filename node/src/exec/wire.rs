//! The executor's own wire: JSON lines between the agent (the supervisor,
//! [`super::supervise`]) and its executor process ([`super::worker`]), over
//! the child's stdin (supervisor to worker) and stdout (worker to
//! supervisor). One message per line; the child's stderr is its log.
//!
//! This is a private pipe between two copies of the same binary, not the
//! farm's protocol (`drover-protocol`, rkyv over QUIC): it never leaves the
//! machine, so plain serde JSON is enough, and a version number in
//! [`ToWorker::Init`] catches a `DROVER_EXEC_PROGRAM` that points at
//! another build.
//!
//! A session, in order:
//! 1. Supervisor: [`ToWorker::Init`] (spool, test aids). Worker: opens its
//!    own render device and answers [`FromWorker::Ready`] (or
//!    [`FromWorker::Fatal`] and exits).
//! 2. Per chunk: [`ToWorker::Run`]; the worker asks [`FromWorker::Start`]
//!    for each frame in order, and starts it only on a yes in
//!    [`ToWorker::Answer`] (the supervisor decides with the agent's
//!    `FrameWindow`, so a shrink stays exact; the worker asks about the
//!    next frame as soon as one is granted); [`FromWorker::Progress`] after each frame;
//!    [`FromWorker::Rendered`] once every frame is rendered (the encoder may
//!    still be flushing, and the next chunk may start); then
//!    [`FromWorker::Finished`] or [`FromWorker::Failed`].
//!    [`ToWorker::Cancel`] may come at any time. [`FromWorker::Log`] lines
//!    about the chunk (adapter, encoder, frame timings) come between, in
//!    order with the rest.
//! 3. The supervisor closes stdin: the worker exits at once.

use std::io::BufRead;
use std::path::PathBuf;

use drover_protocol::{Assign, ChunkRef};
use serde::{Deserialize, Serialize};

/// Version of this pipe's messages; the worker refuses another.
pub(crate) const WORKER_PROTOCOL_VERSION: u32 = 1;

/// Longest line either side reads, in bytes. The largest message is a
/// [`ToWorker::Run`] holding a shader of at most
/// [`drover_shared::shader::MAX_SHADER_SOURCE_BYTES`]; JSON writes a
/// control character as a 6-byte escape, so six times that plus room for
/// the other fields bounds any honest message.
pub(crate) const MAX_LINE_BYTES: usize =
    6 * drover_shared::shader::MAX_SHADER_SOURCE_BYTES + 64 * 1024;

/// Longest `reason` or `log_tail` a worker's [`FromWorker::Failed`] carries
/// on to the coordinator, in bytes; the supervisor cuts longer ones.
pub(crate) const MAX_REPORT_BYTES: usize = 4 * 1024;

/// One attempt at a chunk, as [`ChunkRef`] (which is rkyv-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct ChunkKey {
    pub job: u64,
    pub index: u32,
    pub epoch: u32,
}

impl From<ChunkRef> for ChunkKey {
    fn from(c: ChunkRef) -> Self {
        ChunkKey {
            job: c.job,
            index: c.index,
            epoch: c.epoch,
        }
    }
}

impl From<ChunkKey> for ChunkRef {
    fn from(c: ChunkKey) -> Self {
        ChunkRef {
            job: c.job,
            index: c.index,
            epoch: c.epoch,
        }
    }
}

/// A chunk to render: the assignment's fields the worker needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Job {
    pub chunk: ChunkKey,
    /// First frame, inclusive; the last is decided frame by frame.
    pub start: u64,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
    pub shader_source: String,
    pub encoder: String,
    pub crf: u8,
}

impl Job {
    pub(crate) fn from_assign(a: &Assign) -> Job {
        Job {
            chunk: a.chunk.into(),
            start: a.start,
            fps: a.fps,
            width: a.width,
            height: a.height,
            shader_source: a.shader_source.clone(),
            encoder: a.encoder.clone(),
            crf: a.crf,
        }
    }
}

/// Supervisor to worker (the child's stdin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub(crate) enum ToWorker {
    /// First line: who the worker is for.
    Init {
        /// [`WORKER_PROTOCOL_VERSION`] of the supervisor.
        version: u32,
        /// Where segments are written.
        spool: PathBuf,
        /// `--slowdown`.
        slowdown_factor: f64,
        /// `--fail-frame`.
        fail_frames: Vec<u64>,
    },
    /// Render and encode a chunk.
    Run(Job),
    /// The answer to [`FromWorker::Start`]: whether `frame` may start.
    Answer {
        chunk: ChunkKey,
        frame: u64,
        go: bool,
    },
    /// Stop the chunk and drop its segment.
    Cancel { chunk: ChunkKey },
}

/// Worker to supervisor (the child's stdout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub(crate) enum FromWorker {
    /// The worker's device is open; it takes chunks.
    Ready {
        /// Adapter name.
        adapter: String,
        /// `DiscreteGpu`, `Cpu`, ...
        device_type: String,
    },
    /// The worker cannot work (no device, wrong version) and exits.
    Fatal { reason: String },
    /// May `frame` start? Asked right before it is submitted, in order.
    Start { chunk: ChunkKey, frame: u64 },
    /// Frames handed to the encoder so far.
    Progress { chunk: ChunkKey, frames_done: u64 },
    /// Every frame of the chunk is rendered; the encoder may be flushing.
    Rendered { chunk: ChunkKey },
    /// The segment is complete in the spool.
    Finished {
        chunk: ChunkKey,
        start: u64,
        end: u64,
        path: PathBuf,
        /// BLAKE3, hex.
        hash: String,
        adapter: String,
        elapsed_ms: u64,
    },
    /// A line of the chunk's log (the node keeps it and ships it to the
    /// coordinator).
    Log { chunk: ChunkKey, line: String },
    /// The chunk failed or was cancelled; its segment is removed.
    Failed {
        chunk: ChunkKey,
        reason: String,
        log_tail: String,
        failed_frame: Option<u64>,
    },
}

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LineError {
    /// The pipe failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A line longer than [`MAX_LINE_BYTES`]: a broken peer.
    #[error("a line of more than {MAX_LINE_BYTES} bytes")]
    TooLong,
    /// Not a message of this version.
    #[error("unreadable message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads one message line, refusing lines past [`MAX_LINE_BYTES`] before
/// buffering them whole. `Ok(None)` at the end of the stream.
pub(crate) fn read_msg<T: for<'de> Deserialize<'de>>(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, LineError> {
    buf.clear();
    // One byte past the limit tells a line that is too long from one that
    // is exactly at it.
    let n = std::io::Read::take(&mut *r, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if n > MAX_LINE_BYTES {
            return Err(LineError::TooLong);
        }
        // The stream ended inside a line: the writer died mid-message.
        return Err(LineError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Some(serde_json::from_slice(buf)?))
}

/// One message as a line, newline included.
pub(crate) fn to_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string
    // keys, no custom serializers).
    let mut line = serde_json::to_vec(msg).expect("wire messages serialize");
    line.push(b'\n');
    line
}

/// `text` cut to at most `max` bytes at a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_are_bounded() {
        let msgs = [
            ToWorker::Answer {
                chunk: ChunkKey {
                    job: 1,
                    index: 2,
                    epoch: 3,
                },
                frame: 9,
                go: true,
            },
            ToWorker::Cancel {
                chunk: ChunkKey {
                    job: 1,
                    index: 2,
                    epoch: 3,
                },
            },
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(to_line(m));
        }
        let mut r = std::io::Cursor::new(bytes);
        let mut buf = Vec::new();
        for m in &msgs {
            assert_eq!(
                read_msg::<ToWorker>(&mut r, &mut buf).unwrap().as_ref(),
                Some(m)
            );
        }
        assert!(read_msg::<ToWorker>(&mut r, &mut buf).unwrap().is_none());

        let long = vec![b' '; MAX_LINE_BYTES + 10];
        let e = read_msg::<ToWorker>(&mut std::io::Cursor::new(long), &mut buf).unwrap_err();
        assert!(matches!(e, LineError::TooLong), "{e}");
        let cut_short = br#"{"msg":"cancel""#.to_vec();
        let e = read_msg::<ToWorker>(&mut std::io::Cursor::new(cut_short), &mut buf).unwrap_err();
        assert!(matches!(e, LineError::Io(_)), "{e}");
        let garbage = b"running 1 test\n".to_vec();
        let e = read_msg::<ToWorker>(&mut std::io::Cursor::new(garbage), &mut buf).unwrap_err();
        assert!(matches!(e, LineError::Json(_)), "{e}");
    }

    #[test]
    fn cut_keeps_characters_whole() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abcdef", 3), "abc");
        assert_eq!(cut("aé", 2), "a");
    }
}

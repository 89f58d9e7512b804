//! Length-delimited framing of rkyv archives.
//!
//! A frame is a `u32` big-endian body length, then the body. The length is
//! checked against the caller's limit *before* any of the body is buffered,
//! and every body is validated (bytecheck) before it is deserialized, so a
//! hostile or corrupt peer can neither exhaust memory nor cause undefined
//! behaviour.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest control-stream frame, in bytes. The biggest control message is an
/// assignment carrying a shader (at most 64 KiB); 1 MiB leaves room without
/// letting a peer make us buffer much.
pub const MAX_CONTROL_FRAME_BYTES: usize = 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer announced a frame over the limit; nothing was buffered.
    #[error("frame of {bytes} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced size.
        bytes: usize,
        /// Limit in force.
        limit: usize,
    },
    /// The archive failed validation or deserialization.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// Transport error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Types that can be sent as frames.
pub trait Encode:
    for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}
impl<T> Encode for T where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

/// Types that can be received from frames.
pub trait Decode: rkyv::Archive + Sized
where
    Self::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<Self, HighDeserializer<rancor::Error>>,
{
}
impl<T> Decode for T
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
}

/// Serializes `msg` into one frame (length prefix included).
pub fn encode_frame<T: Encode>(msg: &T) -> Result<Vec<u8>, WireError> {
    let body =
        rkyv::to_bytes::<rancor::Error>(msg).map_err(|e| WireError::Invalid(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| WireError::FrameTooLarge {
        bytes: body.len(),
        limit: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Validates and deserializes one frame body.
pub fn decode_body<T>(body: &[u8]) -> Result<T, WireError>
where
    T: Decode,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    // rkyv needs the archive aligned; a received buffer may not be.
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|e| WireError::Invalid(e.to_string()))
}

/// Writes one message as a frame.
pub async fn write_msg<W, T>(w: &mut W, msg: &T) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    T: Encode,
{
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one message. `Ok(None)` is a clean end of stream between frames.
pub async fn read_msg<R, T>(r: &mut R, limit: usize) -> Result<Option<T>, WireError>
where
    R: AsyncRead + Unpin,
    T: Decode,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated)
            };
        }
        got += n;
    }
    let bytes = u32::from_be_bytes(len) as usize;
    if bytes > limit {
        return Err(WireError::FrameTooLarge { bytes, limit });
    }
    let mut body = AlignedVec::<16>::with_capacity(bytes);
    body.resize(bytes, 0);
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => WireError::Truncated,
        _ => WireError::Io(e),
    })?;
    rkyv::from_bytes::<T, rancor::Error>(&body)
        .map(Some)
        .map_err(|e| WireError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    fn assign() -> CoordToNode {
        CoordToNode::Assign(Assign {
            chunk: ChunkRef {
                job: 7,
                index: 3,
                epoch: 2,
            },
            start: 24,
            end: 47,
            fps: 24,
            width: 1280,
            height: 720,
            shader_source: "@fragment fn fs_main() {}".into(),
            encoder: "libx264".into(),
            crf: 18,
            frame_timeout_s: 0,
        })
    }

    #[tokio::test]
    async fn round_trip_over_a_pipe() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        write_msg(&mut a, &assign()).await.unwrap();
        write_msg(
            &mut a,
            &CoordToNode::Cancel(ChunkRef {
                job: 1,
                index: 0,
                epoch: 1,
            }),
        )
        .await
        .unwrap();
        drop(a);
        let m: CoordToNode = read_msg(&mut b, MAX_CONTROL_FRAME_BYTES)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m, assign());
        let m: CoordToNode = read_msg(&mut b, MAX_CONTROL_FRAME_BYTES)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(m, CoordToNode::Cancel(c) if c.job == 1));
        let end: Option<CoordToNode> = read_msg(&mut b, MAX_CONTROL_FRAME_BYTES).await.unwrap();
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn oversize_frame_is_refused_before_buffering() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        // Announce 100 MiB and send nothing more: the reader must refuse on
        // the length alone rather than wait for (and buffer) the body.
        a.write_all(&(100u32 * 1024 * 1024).to_be_bytes())
            .await
            .unwrap();
        let err = read_msg::<_, CoordToNode>(&mut b, MAX_CONTROL_FRAME_BYTES)
            .await
            .unwrap_err();
        assert!(
            matches!(err, WireError::FrameTooLarge { bytes, limit } if bytes == 100 << 20 && limit == MAX_CONTROL_FRAME_BYTES)
        );
    }

    #[tokio::test]
    async fn corrupt_and_truncated_frames_are_errors() {
        // Garbage body: its relative pointers point outside the buffer, so
        // validation must refuse it rather than misread memory.
        let mut frame = 64u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xff; 64]);
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        a.write_all(&frame).await.unwrap();
        let err = read_msg::<_, CoordToNode>(&mut b, MAX_CONTROL_FRAME_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::Invalid(_)), "{err}");

        let frame = encode_frame(&assign()).unwrap();
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        a.write_all(&frame[..frame.len() - 3]).await.unwrap();
        drop(a);
        let err = read_msg::<_, CoordToNode>(&mut b, MAX_CONTROL_FRAME_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::Truncated), "{err}");
    }

    #[test]
    fn a_node_message_is_not_a_coordinator_message() {
        let frame = encode_frame(&NodeToCoord::Heartbeat(Heartbeat {
            cpu_load_pct: 3.0,
            memory_load_pct: 4.0,
            chunks: vec![],
        }))
        .unwrap();
        let as_node: NodeToCoord = decode_body(&frame[4..]).unwrap();
        assert!(matches!(as_node, NodeToCoord::Heartbeat(_)));
    }
}

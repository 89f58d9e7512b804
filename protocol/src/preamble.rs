//! The raw preamble that opens every control stream, before any rkyv frame:
//! four magic bytes and the sender's protocol version as a big-endian `u32`.
//!
//! It is fixed forever (from protocol 2 on; version 1 had no preamble), so
//! that two peers of different versions always learn each other's version,
//! whatever the layout of the archives that follow:
//! the node sends its preamble, the coordinator answers with its own, and
//! each side compares before reading a single frame.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The magic bytes: not a valid frame length of any sane size, and readable
/// in a packet capture.
pub const MAGIC: [u8; 4] = *b"DRV\x01";

/// Length of the preamble in bytes.
pub const PREAMBLE_BYTES: usize = 8;

/// Why a preamble could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    /// The peer does not speak Drover at all.
    #[error("the peer is not a Drover peer (bad magic bytes {0:02x?})")]
    BadMagic([u8; 4]),
    /// Transport error or end of stream.
    #[error("reading the preamble: {0}")]
    Io(#[from] std::io::Error),
}

/// The preamble for `version`.
pub fn encode(version: u32) -> [u8; PREAMBLE_BYTES] {
    let mut out = [0u8; PREAMBLE_BYTES];
    out[..4].copy_from_slice(&MAGIC);
    out[4..].copy_from_slice(&version.to_be_bytes());
    out
}

/// Parses a preamble, returning the peer's version.
pub fn decode(bytes: [u8; PREAMBLE_BYTES]) -> Result<u32, PreambleError> {
    let magic: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(PreambleError::BadMagic(magic));
    }
    Ok(u32::from_be_bytes(bytes[4..].try_into().expect("4 bytes")))
}

/// Writes the preamble for `version`.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, version: u32) -> std::io::Result<()> {
    w.write_all(&encode(version)).await
}

/// Reads a preamble and returns the peer's version.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<u32, PreambleError> {
    let mut buf = [0u8; PREAMBLE_BYTES];
    r.read_exact(&mut buf).await?;
    decode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusal() {
        assert_eq!(decode(encode(7)).unwrap(), 7);
        assert_eq!(decode(encode(u32::MAX)).unwrap(), u32::MAX);
        let mut bad = encode(2);
        bad[0] = b'X';
        assert!(matches!(decode(bad), Err(PreambleError::BadMagic(_))));
    }

    #[tokio::test]
    async fn over_a_pipe() {
        let (mut a, mut b) = tokio::io::duplex(64);
        write(&mut a, 42).await.unwrap();
        assert_eq!(read(&mut b).await.unwrap(), 42);
        drop(a);
        assert!(matches!(read(&mut b).await, Err(PreambleError::Io(_))));
    }
}

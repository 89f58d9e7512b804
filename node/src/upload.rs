//! The node's side of one upload: offer a spooled segment on a stream of its
//! own, send its bytes from where the coordinator's copy ends, and read the
//! coordinator's verdict (see `drover_protocol`'s stream diagram).
//!
//! [`offer`] does one exchange over any pair of byte streams, so tests drive
//! it over in-memory pipes as well as QUIC; [`offer_quic`] opens the stream.
//! What to do with the answer (delete, keep, retry, report) is the agent's.

use std::path::Path;
use std::time::Duration;

use drover_protocol::{
    codec, StreamKind, UploadAdmission, UploadHeader, UploadOutcome, MAX_UPLOAD_FRAME_BYTES,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::spool::Spooled;

/// Longest wait for the coordinator's answer to a header: it asks its
/// scheduler and looks at its disk, both quick.
pub const ADMISSION_TIMEOUT_MS: u64 = 30_000;

/// Longest wait for the verdict once every byte is sent: the coordinator
/// fsyncs, renames and waits for its journal. Past this the upload counts as
/// cut off, and the segment is offered again (resuming where it ended).
pub const OUTCOME_TIMEOUT_MS: u64 = 120_000;

/// How an offer ended, when the coordinator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Stored and durable: delete the copy, send `Done`.
    Stored {
        /// Where the bytes sent started (0 for a whole upload).
        offset_bytes: u64,
    },
    /// Not wanted: delete the copy.
    NotNeeded(String),
    /// Not now: keep the copy, offer it again later.
    Later(String),
    /// The copy is bad: delete it and report the chunk failed.
    Rejected(String),
}

/// Why an offer got no verdict.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The spool's file could not be read, or does not hold what its
    /// sidecar says: the copy is bad.
    #[error("spooled segment {path}: {reason}")]
    Spool {
        /// The segment file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The stream or connection failed, or the coordinator did not answer
    /// in time; the copy is fine, offer it again.
    #[error("upload stream: {0}")]
    Transport(String),
}

fn transport(e: impl std::fmt::Display) -> UploadError {
    UploadError::Transport(e.to_string())
}

/// The header announcing a spooled segment.
pub fn header(s: &Spooled) -> Result<UploadHeader, UploadError> {
    let hash = s.meta.hash_bytes().ok_or_else(|| UploadError::Spool {
        path: s.path.display().to_string(),
        reason: format!("hash {:?} is not 64 hex digits", s.meta.hash),
    })?;
    Ok(UploadHeader {
        chunk: s.meta.chunk(),
        start: s.meta.start,
        end: s.meta.end,
        size_bytes: s.meta.size_bytes,
        hash,
    })
}

/// Opens an upload stream on `conn` and offers `s` on it.
pub async fn offer_quic(conn: &quinn::Connection, s: &Spooled) -> Result<Offered, UploadError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(transport)?;
    offer(&mut send, &mut recv, s).await
}

/// One upload exchange on a fresh stream: kind, header, the admission,
/// the bytes from the coordinator's offset, the outcome.
pub async fn offer<W, R>(send: &mut W, recv: &mut R, s: &Spooled) -> Result<Offered, UploadError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let header = header(s)?;
    // Opened before anything is sent: a missing file is the spool's fault,
    // not the coordinator's business.
    let mut file = open_checked(&s.path, header.size_bytes).await?;
    send.write_u8(StreamKind::Upload as u8)
        .await
        .map_err(transport)?;
    codec::write_msg(send, &header).await.map_err(transport)?;
    let admission = tokio::time::timeout(
        Duration::from_millis(ADMISSION_TIMEOUT_MS),
        codec::read_msg::<_, UploadAdmission>(recv, MAX_UPLOAD_FRAME_BYTES),
    )
    .await
    .map_err(|_| transport(format!("no admission within {ADMISSION_TIMEOUT_MS} ms")))?
    .map_err(transport)?
    .ok_or_else(|| transport("the coordinator closed the stream without an answer"))?;
    let offset_bytes = match admission {
        UploadAdmission::Accept { offset_bytes } => offset_bytes,
        UploadAdmission::NotNeeded { reason } => return Ok(Offered::NotNeeded(reason)),
        UploadAdmission::Later { reason } => return Ok(Offered::Later(reason)),
        UploadAdmission::Rejected { reason } => return Ok(Offered::Rejected(reason)),
    };
    if offset_bytes > header.size_bytes {
        return Err(transport(format!(
            "the coordinator asked for bytes from {offset_bytes}, past the segment's {}",
            header.size_bytes
        )));
    }
    let path = s.path.display().to_string();
    file.seek(std::io::SeekFrom::Start(offset_bytes))
        .await
        .map_err(|e| UploadError::Spool {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let want = header.size_bytes - offset_bytes;
    let sent = tokio::io::copy(&mut file.take(want), send)
        .await
        .map_err(transport)?;
    if sent != want {
        return Err(UploadError::Spool {
            path,
            reason: format!(
                "ended after {} of {} bytes",
                offset_bytes + sent,
                header.size_bytes
            ),
        });
    }
    send.shutdown().await.map_err(transport)?;
    let outcome = tokio::time::timeout(
        Duration::from_millis(OUTCOME_TIMEOUT_MS),
        codec::read_msg::<_, UploadOutcome>(recv, MAX_UPLOAD_FRAME_BYTES),
    )
    .await
    .map_err(|_| transport(format!("no verdict within {OUTCOME_TIMEOUT_MS} ms")))?
    .map_err(transport)?
    .ok_or_else(|| transport("the coordinator closed the stream without a verdict"))?;
    Ok(match outcome {
        UploadOutcome::Stored => Offered::Stored { offset_bytes },
        UploadOutcome::Later { reason } => Offered::Later(reason),
        UploadOutcome::Rejected { reason } => Offered::Rejected(reason),
    })
}

/// Opens the segment and checks it holds `size_bytes` bytes.
async fn open_checked(path: &Path, size_bytes: u64) -> Result<tokio::fs::File, UploadError> {
    let bad = |reason: String| UploadError::Spool {
        path: path.display().to_string(),
        reason,
    };
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let size = file.metadata().await.map_err(|e| bad(e.to_string()))?.len();
    if size != size_bytes {
        return Err(bad(format!(
            "holds {size} bytes, its sidecar says {size_bytes}"
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SegmentMeta;
    use tokio::io::DuplexStream;

    /// A spooled segment of `data` under `dir`.
    fn spooled(dir: &Path, data: &[u8]) -> Spooled {
        let path = dir.join("job-1-chunk-00000-e1.mp4");
        std::fs::write(&path, data).unwrap();
        Spooled {
            meta: SegmentMeta {
                job: 1,
                index: 0,
                epoch: 1,
                start: 0,
                end: 9,
                size_bytes: data.len() as u64,
                hash: blake3::hash(data).to_hex().to_string(),
                encoder: "libx264".into(),
                adapter: "a".into(),
                elapsed_ms: 1,
            },
            path,
        }
    }

    /// A scripted coordinator: answers `admission`, reads what follows and
    /// answers `outcome`; returns the header and the bytes it got.
    async fn coordinator(
        mut stream: DuplexStream,
        admission: UploadAdmission,
        outcome: Option<UploadOutcome>,
    ) -> (UploadHeader, Vec<u8>) {
        assert_eq!(stream.read_u8().await.unwrap(), StreamKind::Upload as u8);
        let header: UploadHeader = codec::read_msg(&mut stream, MAX_UPLOAD_FRAME_BYTES)
            .await
            .unwrap()
            .unwrap();
        codec::write_msg(&mut stream, &admission).await.unwrap();
        let mut body = Vec::new();
        if let Some(outcome) = outcome {
            let (mut r, mut w) = tokio::io::split(stream);
            r.read_to_end(&mut body).await.unwrap();
            codec::write_msg(&mut w, &outcome).await.unwrap();
        }
        (header, body)
    }

    async fn check(
        data: &[u8],
        admission: UploadAdmission,
        outcome: Option<UploadOutcome>,
    ) -> (Result<Offered, UploadError>, UploadHeader, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let s = spooled(dir.path(), data);
        let (node, coord) = tokio::io::duplex(1 << 16);
        let peer = tokio::spawn(coordinator(coord, admission, outcome));
        let (mut r, mut w) = tokio::io::split(node);
        let offered = offer(&mut w, &mut r, &s).await;
        drop((r, w));
        let (header, body) = peer.await.unwrap();
        (offered, header, body)
    }

    #[tokio::test]
    async fn the_bytes_go_from_the_coordinators_offset() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let accept = |offset_bytes| UploadAdmission::Accept { offset_bytes };
        for offset in [0u64, 1, 60_000, 100_000] {
            let (got, header, body) =
                check(&data, accept(offset), Some(UploadOutcome::Stored)).await;
            assert_eq!(
                got.unwrap(),
                Offered::Stored {
                    offset_bytes: offset
                }
            );
            assert_eq!(header.size_bytes, 100_000);
            assert_eq!(header.hash, *blake3::hash(&data).as_bytes());
            assert_eq!(body, data[offset as usize..], "from {offset}");
        }
        let (got, _, _) = check(&data, accept(100_001), None).await;
        assert!(
            matches!(got, Err(UploadError::Transport(why)) if why.contains("past the segment"))
        );
    }

    #[tokio::test]
    async fn every_answer_maps_to_what_the_agent_does() {
        let data = [5u8; 1000];
        let why = || "because".to_string();
        let accept = UploadAdmission::Accept { offset_bytes: 0 };
        let cases = [
            (
                UploadAdmission::NotNeeded { reason: why() },
                None,
                Offered::NotNeeded(why()),
            ),
            (
                UploadAdmission::Later { reason: why() },
                None,
                Offered::Later(why()),
            ),
            (
                UploadAdmission::Rejected { reason: why() },
                None,
                Offered::Rejected(why()),
            ),
            (
                accept.clone(),
                Some(UploadOutcome::Later { reason: why() }),
                Offered::Later(why()),
            ),
            (
                accept,
                Some(UploadOutcome::Rejected { reason: why() }),
                Offered::Rejected(why()),
            ),
        ];
        for (admission, outcome, want) in cases {
            let (got, _, _) = check(&data, admission.clone(), outcome).await;
            assert_eq!(got.unwrap(), want, "{admission:?}");
        }
    }

    #[tokio::test]
    async fn a_damaged_spool_file_is_the_spools_fault() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spooled(dir.path(), &[1u8; 10]);
        s.meta.size_bytes = 11;
        let (mut w, mut r) = (tokio::io::sink(), tokio::io::empty());
        let err = offer(&mut w, &mut r, &s).await.unwrap_err();
        assert!(
            matches!(&err, UploadError::Spool { reason, .. } if reason.contains("holds 10 bytes")),
            "{err}"
        );
        std::fs::remove_file(&s.path).unwrap();
        let err = offer(&mut w, &mut r, &s).await.unwrap_err();
        assert!(matches!(err, UploadError::Spool { .. }), "{err}");
    }
}

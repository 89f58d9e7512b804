//! The artifact store: segments uploaded by nodes and the joined outputs, on
//! the coordinator's local disk.
//!
//! An upload is written to a temporary file while its BLAKE3 is computed; it
//! gets its final name only when the size and hash match what the node
//! announced, so a segment under its real name is always complete and
//! verified.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Largest segment accepted, in bytes: bounds what a node can make us write.
/// A chunk holds at most 240 frames by default (`max_chunk_frames`); at 8K
/// and CRF 0 that is about 30 MB a frame, 7 GB a chunk, within this.
pub const MAX_SEGMENT_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The announced size is over [`MAX_SEGMENT_BYTES`].
    #[error("segment of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced size.
        bytes: u64,
        /// Limit.
        limit: u64,
    },
    /// Fewer bytes arrived than announced.
    #[error("upload ended after {got} of {want} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        want: u64,
    },
    /// The content does not hash to the announced value.
    #[error("hash mismatch: announced {want}, received {got}")]
    HashMismatch {
        /// Announced hash, hex.
        want: String,
        /// Hash of what arrived, hex.
        got: String,
    },
    /// Disk error.
    #[error("artifact store i/o at {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The store, rooted at a directory.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ArtifactStore {
    /// A store under `root` (created when missing).
    pub fn open(root: &Path) -> Result<ArtifactStore, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(ArtifactStore {
            root: root.to_path_buf(),
        })
    }

    /// The directory holding a job's segments and output.
    pub fn job_dir(&self, job: u64) -> PathBuf {
        self.root.join(format!("job-{job}"))
    }

    /// Where the segment of one attempt of a chunk lives.
    pub fn segment_path(&self, job: u64, index: u32, epoch: u32) -> PathBuf {
        self.job_dir(job)
            .join(format!("chunk-{index:05}-e{epoch}.mp4"))
    }

    /// Where a job's joined output lives.
    pub fn output_path(&self, job: u64) -> PathBuf {
        self.job_dir(job).join("output.mp4")
    }

    /// Receives exactly `bytes` bytes from `src` into `dest`, verifying the
    /// BLAKE3 `hash`. Returns the hex hash.
    pub async fn receive<R: AsyncRead + Unpin>(
        &self,
        src: &mut R,
        dest: &Path,
        bytes: u64,
        hash: [u8; 32],
    ) -> Result<String, StoreError> {
        if bytes > MAX_SEGMENT_BYTES {
            return Err(StoreError::TooLarge {
                bytes,
                limit: MAX_SEGMENT_BYTES,
            });
        }
        let dir = dest.parent().unwrap_or(&self.root);
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        // A name of its own per upload, so two uploads of one chunk can never
        // write into the same file.
        static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dest.with_extension(format!("partial-{}-{n}", std::process::id()));
        let result = write_verified(src, &tmp, bytes, hash).await;
        let result = match result {
            Ok(hex) => tokio::fs::rename(&tmp, dest)
                .await
                .map(|()| hex)
                .map_err(io(dest)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Whatever went wrong, no partial file outlives its upload.
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

/// Copies exactly `bytes` bytes from `src` into a new file at `tmp`, fsyncs
/// it, and checks the BLAKE3 against `hash`. Returns the hex hash.
async fn write_verified<R: AsyncRead + Unpin>(
    src: &mut R,
    tmp: &Path,
    bytes: u64,
    hash: [u8; 32],
) -> Result<String, StoreError> {
    let mut file = tokio::fs::File::create(tmp).await.map_err(io(tmp))?;
    let mut hasher = blake3::Hasher::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    while got < bytes {
        let want = (bytes - got).min(buf.len() as u64) as usize;
        let n = src.read(&mut buf[..want]).await.map_err(io(tmp))?;
        if n == 0 {
            return Err(StoreError::Short { got, want: bytes });
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).await.map_err(io(tmp))?;
        got += n as u64;
    }
    file.sync_all().await.map_err(io(tmp))?;
    let actual = hasher.finalize();
    if actual.as_bytes() != &hash {
        return Err(StoreError::HashMismatch {
            want: hex::encode(hash),
            got: actual.to_hex().to_string(),
        });
    }
    Ok(actual.to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verified_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data = vec![7u8; 300_000];
        let hash = *blake3::hash(&data).as_bytes();
        let dest = store.segment_path(1, 0, 1);
        let hex = store
            .receive(&mut &data[..], &dest, data.len() as u64, hash)
            .await
            .unwrap();
        assert_eq!(hex, blake3::hash(&data).to_hex().as_str());
        assert_eq!(std::fs::read(&dest).unwrap(), data);

        let dest2 = store.segment_path(1, 1, 1);
        let err = store
            .receive(&mut &data[..], &dest2, data.len() as u64, [0; 32])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");
        assert!(!dest2.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dest2.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "a refused upload left {leftovers:?}");

        let err = store
            .receive(&mut &data[..10], &dest2, 20, hash)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Short { got: 10, want: 20 }),
            "{err}"
        );
        let err = store
            .receive(&mut &data[..], &dest2, MAX_SEGMENT_BYTES + 1, hash)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    }
}

//! The artifact store: segments uploaded by nodes and the joined outputs, on
//! the coordinator's local disk.
//!
//! # The write path of one segment
//! 1. [`ArtifactStore::begin`] names the segment by everything that makes it
//!    what it is ([`SegmentKey`]: job, chunk, epoch, frame range, BLAKE3), so
//!    two uploads can only share a file when they carry the same bytes. It
//!    takes the key's lease (one upload of a segment at a time), and answers
//!    either [`Begin::Complete`] (the segment is already under its final
//!    name: an upload that is repeated is answered without writing again) or
//!    an [`Upload`] whose `offset_bytes` is the length of the partial file
//!    an interrupted upload left (`<final name>.partial`).
//! 2. [`Upload::receive`] appends the rest to the partial file on a blocking
//!    thread, hashing the prefix already there and then every byte that
//!    arrives, so the hash covers the whole file; nothing touches the disk
//!    or hashes on the runtime's thread.
//! 3. The file is fsynced; its size and hash are checked against the key;
//!    it is renamed to its final name and the directory is fsynced. A
//!    segment under its final name is therefore always complete, verified
//!    and durable. A hash mismatch deletes the partial file.
//! 4. The caller then records the segment in the journal (the scheduler's
//!    `CommitSegment`); only once that is durable does the node hear
//!    `Stored`.
//!
//! A crash leaves at most partial files and segments no journal record
//! names; [`ArtifactStore::sweep`] removes them at start.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest segment accepted, in bytes: bounds what a node can make us write.
/// A chunk holds at most 240 frames by default (`max_chunk_frames`); at 8K
/// and CRF 0 that is about 30 MB a frame, 7 GB a chunk, within this.
pub const MAX_SEGMENT_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// Free space the artifact disk keeps beyond an upload's remaining bytes,
/// by default: room for the joined outputs (written next to the segments,
/// about their total size) and the journal, so a farm that fills the disk
/// with segments never ends up unable to join them. An upload that would
/// cut into it is answered "later".
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Bytes read from the network per write: large enough that a 1 GB segment
/// is a few thousand writes.
const RECEIVE_CHUNK_BYTES: usize = 256 * 1024;

/// Received chunks waiting for the blocking writer, per upload: bounds the
/// memory one upload holds (4 x 256 KiB) when the disk is slower than the
/// network; QUIC's flow control then slows the node down.
const WRITE_QUEUE_CHUNKS: usize = 4;

/// Longest wait for the next bytes of an upload. QUIC keep-alives hold a
/// connection open while its node sends nothing, so this is what frees the
/// upload slot and the segment's lease of a node that stopped sending.
pub const UPLOAD_STALL_TIMEOUT_MS: u64 = 30_000;

/// Suffix of a segment's file while it is being received.
pub const PARTIAL_SUFFIX: &str = ".partial";

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
    /// The frame range ends before it starts.
    #[error("segment frame range {start}-{end} ends before it starts")]
    BadRange {
        /// First frame announced.
        start: u64,
        /// Last frame announced.
        end: u64,
    },
    /// Another upload of the same segment is running.
    #[error("an upload of this segment is already in progress")]
    Busy,
    /// Fewer bytes arrived than announced (the partial file is kept, so the
    /// next upload resumes from there).
    #[error("upload ended after {got} of {want} bytes")]
    Short {
        /// Bytes the file holds.
        got: u64,
        /// Bytes announced.
        want: u64,
    },
    /// No bytes came for [`UPLOAD_STALL_TIMEOUT_MS`].
    #[error("no bytes for {UPLOAD_STALL_TIMEOUT_MS} ms after {got} of {want} bytes")]
    Stalled {
        /// Bytes the file holds.
        got: u64,
        /// Bytes announced.
        want: u64,
    },
    /// The content does not hash to the announced value; the partial file is
    /// deleted. `resumed_from` is the offset this upload started at: when it
    /// is not 0, the bytes kept from an earlier upload may be the bad ones.
    #[error("hash mismatch: announced {want}, received {got} (resumed at byte {resumed_from})")]
    HashMismatch {
        /// Announced hash, hex.
        want: String,
        /// Hash of what arrived, hex.
        got: String,
        /// Where this upload started.
        resumed_from: u64,
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

/// Everything that makes a segment what it is: the attempt that rendered it,
/// its frames and its content. The store's file names carry all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentKey {
    /// Job id.
    pub job: u64,
    /// Chunk index.
    pub index: u32,
    /// Attempt epoch.
    pub epoch: u32,
    /// First frame, inclusive.
    pub start: u64,
    /// Last frame, inclusive.
    pub end: u64,
    /// BLAKE3 of the whole segment.
    pub hash: [u8; 32],
}

/// The store, rooted at a directory. Cheap to clone; clones share the
/// leases of running uploads.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    /// Free space an upload must leave on the disk.
    min_free_disk_bytes: u64,
    /// Segments being received now: one upload per segment at a time.
    receiving: Arc<Mutex<HashSet<SegmentKey>>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`ArtifactStore::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// The segment is already stored, complete and verified, at this path.
    Complete(PathBuf),
    /// Receive it, from the offset the upload says.
    Receive(Upload),
}

/// What [`ArtifactStore::sweep`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Partial files (interrupted uploads and joins).
    pub partials: usize,
    /// Segments that nothing referenced.
    pub segments: usize,
    /// Bytes freed.
    pub bytes: u64,
}

impl ArtifactStore {
    /// A store under `root` (created when missing), keeping
    /// [`DEFAULT_MIN_FREE_DISK_BYTES`] free.
    pub fn open(root: &Path) -> Result<ArtifactStore, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(ArtifactStore {
            root: root.to_path_buf(),
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
            receiving: Arc::default(),
        })
    }

    /// The same store keeping `bytes` free on its disk beyond each upload
    /// (a `--min-free-disk-mb` setting).
    pub fn with_min_free_disk_bytes(mut self, bytes: u64) -> ArtifactStore {
        self.min_free_disk_bytes = bytes;
        self
    }

    /// Free space an upload must leave on the disk.
    pub fn min_free_disk_bytes(&self) -> u64 {
        self.min_free_disk_bytes
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding a job's segments and output.
    pub fn job_dir(&self, job: u64) -> PathBuf {
        self.root.join(format!("job-{job}"))
    }

    /// Checks the store can take files: a probe file is written, synced
    /// and removed, and the disk keeps its reserve free.
    pub fn check_writable(&self) -> Result<(), String> {
        use std::io::Write;
        let probe = self.root.join(".ready-probe");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&probe)?;
            f.write_all(b"ok")?;
            f.sync_all()?;
            std::fs::remove_file(&probe)
        };
        write().map_err(|e| format!("{} is not writable: {e}", self.root.display()))?;
        match free_disk_bytes(&self.root) {
            Ok(free) if free < self.min_free_disk_bytes => Err(format!(
                "{} has {} MiB free, under the {} MiB reserve",
                self.root.display(),
                free >> 20,
                self.min_free_disk_bytes >> 20
            )),
            _ => Ok(()),
        }
    }

    /// Where a segment lives once stored.
    pub fn segment_path(&self, key: &SegmentKey) -> PathBuf {
        self.job_dir(key.job).join(format!(
            "chunk-{:05}-e{}-f{}-{}-{}.mp4",
            key.index,
            key.epoch,
            key.start,
            key.end,
            hex::encode(key.hash)
        ))
    }

    /// Where a segment lives while it is received.
    pub fn partial_path(&self, key: &SegmentKey) -> PathBuf {
        let mut p = self.segment_path(key).into_os_string();
        p.push(PARTIAL_SUFFIX);
        PathBuf::from(p)
    }

    /// Where a job's joined output lives.
    pub fn output_path(&self, job: u64) -> PathBuf {
        self.job_dir(job).join("output.mp4")
    }

    /// Whether a stored file exists at `path` (a stat: cheap, but blocking).
    pub fn exists(&self, path: &Path) -> bool {
        path.is_file()
    }

    /// Free bytes on the store's file system for an unprivileged writer.
    /// Blocking (one `statvfs`); see [`ArtifactStore::check_room`].
    pub fn free_disk_bytes(&self) -> Result<u64, StoreError> {
        free_disk_bytes(&self.root).map_err(io(&self.root))
    }

    /// Whether `bytes` more fit on the disk and still leave
    /// [`ArtifactStore::min_free_disk_bytes`] free; `Err` holds the reason
    /// for the node. The `statvfs` runs on the blocking pool.
    pub async fn check_room(&self, bytes: u64) -> Result<(), String> {
        let store = self.clone();
        let free = tokio::task::spawn_blocking(move || store.free_disk_bytes())
            .await
            .map_err(|e| format!("checking free disk space: {e}"))?
            .map_err(|e| format!("checking free disk space: {e}"))?;
        let reserve = self.min_free_disk_bytes;
        if free < bytes.saturating_add(reserve) {
            return Err(format!(
                "artifact disk nearly full: {free} bytes free, need {bytes} + {reserve} reserve"
            ));
        }
        Ok(())
    }

    /// Starts receiving the segment `key` of `size_bytes` bytes: takes its
    /// lease and finds how much of it the store already holds.
    pub async fn begin(&self, key: SegmentKey, size_bytes: u64) -> Result<Begin, StoreError> {
        if size_bytes > MAX_SEGMENT_BYTES {
            return Err(StoreError::TooLarge {
                bytes: size_bytes,
                limit: MAX_SEGMENT_BYTES,
            });
        }
        if key.end < key.start {
            return Err(StoreError::BadRange {
                start: key.start,
                end: key.end,
            });
        }
        let lease = Lease::take(&self.receiving, key).ok_or(StoreError::Busy)?;
        let dest = self.segment_path(&key);
        let partial = self.partial_path(&key);
        let found = tokio::task::spawn_blocking(move || -> Result<Found, StoreError> {
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
            }
            match std::fs::metadata(&dest) {
                Ok(m) if m.len() == size_bytes => return Ok(Found::Complete(dest)),
                // A final name is only given to a verified file of the
                // size its name's hash implies; another size means the
                // file was damaged on disk: receive it anew.
                Ok(_) => std::fs::remove_file(&dest).map_err(io(&dest))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&dest)(e)),
            }
            let offset = match std::fs::metadata(&partial) {
                Ok(m) if m.len() <= size_bytes => m.len(),
                Ok(_) => {
                    std::fs::remove_file(&partial).map_err(io(&partial))?;
                    0
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(io(&partial)(e)),
            };
            Ok(Found::Partial(offset))
        })
        .await
        .map_err(|e| StoreError::Io {
            path: self.segment_path(&key),
            source: std::io::Error::other(e),
        })??;
        Ok(match found {
            Found::Complete(path) => Begin::Complete(path),
            Found::Partial(offset_bytes) => Begin::Receive(Upload {
                store: self.clone(),
                key,
                size_bytes,
                offset_bytes,
                _lease: lease,
            }),
        })
    }

    /// Removes what a crash or an earlier run left: every partial file
    /// (uploads and joins cut short) and every segment for which `keep`
    /// answers false (no journal record names it). Outputs stay. Blocking:
    /// call it at start, or on the blocking pool.
    pub fn sweep(&self, keep: impl Fn(&Path) -> bool) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let jobs = std::fs::read_dir(&self.root).map_err(io(&self.root))?;
        for job in jobs {
            let job = job.map_err(io(&self.root))?;
            let dir = job.path();
            if !dir.is_dir() || !job.file_name().to_string_lossy().starts_with("job-") {
                continue;
            }
            for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                let entry = entry.map_err(io(&dir))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                // Earlier versions named partial files `<name>.partial-<pid>-<n>`.
                let partial = name.contains(PARTIAL_SUFFIX);
                let orphan = !partial
                    && name.starts_with("chunk-")
                    && name.ends_with(".mp4")
                    && !keep(&path);
                if !(partial || orphan) {
                    continue;
                }
                let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(&path).map_err(io(&path))?;
                report.bytes += bytes;
                if partial {
                    report.partials += 1;
                } else {
                    report.segments += 1;
                }
            }
        }
        Ok(report)
    }
}

enum Found {
    Complete(PathBuf),
    Partial(u64),
}

/// The right to write one segment's files; released on drop.
#[derive(Debug)]
struct Lease {
    set: Arc<Mutex<HashSet<SegmentKey>>>,
    key: SegmentKey,
}

impl Lease {
    fn take(set: &Arc<Mutex<HashSet<SegmentKey>>>, key: SegmentKey) -> Option<Lease> {
        let mut held = set.lock().unwrap_or_else(|e| e.into_inner());
        held.insert(key).then(|| Lease {
            set: set.clone(),
            key,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut held = self.set.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.key);
    }
}

/// One segment being received; holds the segment's lease.
#[derive(Debug)]
pub struct Upload {
    store: ArtifactStore,
    key: SegmentKey,
    size_bytes: u64,
    offset_bytes: u64,
    _lease: Lease,
}

impl Upload {
    /// Bytes of the segment the store already holds: the sender starts
    /// there.
    pub fn offset_bytes(&self) -> u64 {
        self.offset_bytes
    }

    /// Bytes still to come.
    pub fn remaining_bytes(&self) -> u64 {
        self.size_bytes - self.offset_bytes
    }

    /// Receives the segment's bytes from [`Upload::offset_bytes`] to its
    /// end from `src`, then verifies, renames and fsyncs (see the module
    /// doc). Returns the final path. When `src` ends early the partial file
    /// is kept for the next upload to resume.
    pub async fn receive<R: AsyncRead + Unpin>(self, src: &mut R) -> Result<PathBuf, StoreError> {
        let partial = self.store.partial_path(&self.key);
        let dest = self.store.segment_path(&self.key);
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(WRITE_QUEUE_CHUNKS);
        let writer = {
            let (partial, dest) = (partial.clone(), dest.clone());
            let (key, size, offset) = (self.key, self.size_bytes, self.offset_bytes);
            tokio::task::spawn_blocking(move || {
                write_and_verify(&partial, &dest, key.hash, offset, size, rx)
            })
        };
        let mut got = self.offset_bytes;
        let mut cut_short = None;
        while got < self.size_bytes {
            let want = (self.size_bytes - got).min(RECEIVE_CHUNK_BYTES as u64) as usize;
            let mut buf = vec![0u8; want];
            let read = tokio::time::timeout(
                Duration::from_millis(UPLOAD_STALL_TIMEOUT_MS),
                src.read(&mut buf),
            )
            .await;
            let n = match read {
                Ok(Ok(0)) => {
                    cut_short = Some(StoreError::Short {
                        got,
                        want: self.size_bytes,
                    });
                    break;
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    cut_short = Some(io(&partial)(e));
                    break;
                }
                Err(_) => {
                    cut_short = Some(StoreError::Stalled {
                        got,
                        want: self.size_bytes,
                    });
                    break;
                }
            };
            buf.truncate(n);
            got += n as u64;
            if tx.send(buf).await.is_err() {
                // The writer stopped on a disk error; it reports it below.
                break;
            }
        }
        drop(tx);
        let written = writer.await.map_err(|e| StoreError::Io {
            path: partial.clone(),
            source: std::io::Error::other(e),
        })?;
        // A disk error explains a network one that followed it; otherwise
        // the network's is the cause.
        match (written, cut_short) {
            (Err(e @ StoreError::Io { .. }), _) => Err(e),
            (_, Some(e)) => Err(e),
            (result, None) => result.map(|()| dest),
        }
    }
}

/// The blocking half of [`Upload::receive`]: appends what `rx` brings to
/// `partial` (which holds `offset` bytes), hashing the whole file; once
/// `size` bytes are there, fsyncs, verifies, renames to `dest` and fsyncs
/// the directory.
fn write_and_verify(
    partial: &Path,
    dest: &Path,
    want_hash: [u8; 32],
    offset: u64,
    size: u64,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<(), StoreError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(partial)
        .map_err(io(partial))?;
    let mut hasher = blake3::Hasher::new();
    // The prefix an earlier upload left: hashed as it is on disk, so the
    // final check covers every byte of the file.
    let held = std::io::copy(&mut (&mut file).take(offset), &mut hasher).map_err(io(partial))?;
    if held != offset {
        return Err(io(partial)(std::io::Error::other(format!(
            "partial file holds {held} bytes, expected {offset}"
        ))));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io(partial))?;
    // Truncated to the offset announced: a file that grew since (it cannot,
    // under the lease) must not carry stray bytes.
    file.set_len(offset).map_err(io(partial))?;
    let mut got = offset;
    while let Some(buf) = rx.blocking_recv() {
        file.write_all(&buf).map_err(io(partial))?;
        crate::metrics::global()
            .uploaded_bytes
            .inc_by(buf.len() as u64);
        hasher.update(&buf);
        got += buf.len() as u64;
    }
    if got != size {
        // Cut short: what arrived stays for the next upload to resume. No
        // fsync: the final check hashes the whole file anyway, and a crash
        // makes the start-up sweep remove partial files.
        return Ok(());
    }
    file.sync_all().map_err(io(partial))?;
    let actual = hasher.finalize();
    if actual.as_bytes() != &want_hash {
        drop(file);
        let _ = std::fs::remove_file(partial);
        return Err(StoreError::HashMismatch {
            want: hex::encode(want_hash),
            got: actual.to_hex().to_string(),
            resumed_from: offset,
        });
    }
    drop(file);
    std::fs::rename(partial, dest).map_err(io(dest))?;
    // The rename is durable only once the directory is.
    if let Some(dir) = dest.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(unix)]
fn free_disk_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to memory
    // for one `statvfs`, which the call fills when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_disk_bytes(_: &Path) -> std::io::Result<u64> {
    // No portable call; never refuse for space where it cannot be measured.
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(data: &[u8], index: u32) -> SegmentKey {
        SegmentKey {
            job: 1,
            index,
            epoch: 1,
            start: 0,
            end: 23,
            hash: *blake3::hash(data).as_bytes(),
        }
    }

    async fn receive(
        store: &ArtifactStore,
        key: SegmentKey,
        size: u64,
        mut src: &[u8],
    ) -> Result<PathBuf, StoreError> {
        match store.begin(key, size).await? {
            Begin::Complete(p) => Ok(p),
            Begin::Receive(up) => up.receive(&mut src).await,
        }
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect()
    }

    #[tokio::test]
    async fn verified_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data = vec![7u8; 300_000];
        let k = key(&data, 0);
        let dest = receive(&store, k, data.len() as u64, &data).await.unwrap();
        assert_eq!(dest, store.segment_path(&k));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert!(store.exists(&dest));

        // Announced hash of other bytes: refused, nothing left behind.
        let bad = SegmentKey {
            hash: [0; 32],
            ..key(&data, 1)
        };
        let err = receive(&store, bad, data.len() as u64, &data)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::HashMismatch {
                    resumed_from: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!store.segment_path(&bad).exists());
        assert_eq!(leftovers(&store.job_dir(1)), Vec::<String>::new());

        let err = store
            .begin(key(&data, 2), MAX_SEGMENT_BYTES + 1)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
        let backwards = SegmentKey {
            start: 5,
            end: 4,
            ..key(&data, 2)
        };
        let err = store.begin(backwards, 10).await.unwrap_err();
        assert!(
            matches!(err, StoreError::BadRange { start: 5, end: 4 }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_interrupted_upload_resumes_where_the_partial_file_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let k = key(&data, 0);
        let size = data.len() as u64;

        // The first upload stops after 300,000 bytes.
        let err = receive(&store, k, size, &data[..300_000])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Short { got: 300_000, want } if want == size),
            "{err}"
        );
        assert_eq!(
            std::fs::metadata(store.partial_path(&k)).unwrap().len(),
            300_000
        );

        // The next one is told to start there, and sends only the rest.
        let Begin::Receive(up) = store.begin(k, size).await.unwrap() else {
            panic!("not stored yet")
        };
        assert_eq!(up.offset_bytes(), 300_000);
        assert_eq!(up.remaining_bytes(), 400_000);
        let dest = up.receive(&mut &data[300_000..]).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(leftovers(&store.job_dir(1)), Vec::<String>::new());

        // Offered again: already complete, nothing written.
        let before = std::fs::metadata(&dest).unwrap().modified().unwrap();
        assert!(matches!(store.begin(k, size).await.unwrap(), Begin::Complete(p) if p == dest));
        assert_eq!(
            std::fs::metadata(&dest).unwrap().modified().unwrap(),
            before
        );
    }

    #[tokio::test]
    async fn a_bad_kept_prefix_fails_the_hash_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data = vec![3u8; 100_000];
        let k = key(&data, 0);
        std::fs::create_dir_all(store.job_dir(1)).unwrap();
        std::fs::write(store.partial_path(&k), vec![9u8; 40_000]).unwrap();
        let Begin::Receive(up) = store.begin(k, 100_000).await.unwrap() else {
            panic!()
        };
        assert_eq!(up.offset_bytes(), 40_000);
        let err = up.receive(&mut &data[40_000..]).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::HashMismatch {
                    resumed_from: 40_000,
                    ..
                }
            ),
            "{err}"
        );
        // Dropped, so the next offer sends the whole segment.
        let Begin::Receive(up) = store.begin(k, 100_000).await.unwrap() else {
            panic!()
        };
        assert_eq!(up.offset_bytes(), 0);
    }

    #[tokio::test]
    async fn one_upload_of_a_segment_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data = vec![1u8; 1000];
        let k = key(&data, 0);
        let first = store.begin(k, 1000).await.unwrap();
        assert!(matches!(store.begin(k, 1000).await, Err(StoreError::Busy)));
        // Another segment of the same chunk (another hash) is another key.
        assert!(store.begin(key(&[2u8; 10], 0), 10).await.is_ok());
        drop(first);
        assert!(store.begin(k, 1000).await.is_ok());
    }

    #[tokio::test]
    async fn room_is_checked_against_size_plus_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let free = store.free_disk_bytes().unwrap();
        assert!(free > 0);
        assert!(store
            .clone()
            .with_min_free_disk_bytes(0)
            .check_room(1)
            .await
            .is_ok());
        let full = store.with_min_free_disk_bytes(u64::MAX / 2);
        let why = full.check_room(1_000).await.unwrap_err();
        assert!(why.starts_with("artifact disk nearly full: "), "{why}");
        assert!(
            why.ends_with(&format!("need 1000 + {} reserve", u64::MAX / 2)),
            "{why}"
        );
    }

    #[test]
    fn sweep_removes_partials_and_unreferenced_segments() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let job = store.job_dir(4);
        std::fs::create_dir_all(&job).unwrap();
        let kept = job.join("chunk-00000-e1-f0-9-aa.mp4");
        let orphan = job.join("chunk-00001-e1-f10-19-bb.mp4");
        let output = job.join("output.mp4");
        for (p, n) in [
            (&kept, 10),
            (&orphan, 20),
            (&output, 30),
            (&job.join("chunk-00002-e1-f20-29-cc.mp4.partial"), 40),
            (&job.join("chunk-00003-e1.partial-77-0"), 50),
            (&job.join("output.mp4.partial"), 60),
        ] {
            std::fs::write(p, vec![0u8; n]).unwrap();
        }
        let report = store.sweep(|p| p == kept).unwrap();
        assert_eq!(
            report,
            SweepReport {
                partials: 3,
                segments: 1,
                bytes: 20 + 40 + 50 + 60
            }
        );
        let mut left: Vec<_> = std::fs::read_dir(&job)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["chunk-00000-e1-f0-9-aa.mp4", "output.mp4"]);
    }
}

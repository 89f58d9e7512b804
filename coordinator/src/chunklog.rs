//! Chunk logs: the executor output of each chunk attempt, as nodes ship it
//! (`NodeToCoord::ChunkLog`), kept on disk after the job ends, which is
//! when people read them.
//!
//! # Layout on disk
//! `DATA/logs/<job>/<chunk>.log` is the text exactly as served
//! (`GET /v1/jobs/{id}/chunks/{index}/log`); `<chunk>.json` beside it is
//! its [`ChunkLogMeta`] (attempt, node, frames, how far the node's log has
//! arrived), replaced whole (written aside, then renamed) at each change,
//! so a restart lists the same logs. Logs are diagnostics, not results:
//! nothing here is fsynced, and a crash may lose the last pieces.
//!
//! # Writes
//! The scheduler actor decides who may write (the node holding that chunk
//! attempt, asked of the core as uploads are) and hands each piece to
//! [`ChunkLogs::submit`]; one writer thread applies them in order, so the
//! actix thread never waits for the disk. A piece is placed by its offset
//! in the node's log: a resent piece (or the part of one already here) is
//! skipped, so pieces are idempotent; a hole (pieces lost with a
//! connection) becomes a marker line naming the bytes missing.
//!
//! # Bounds
//! Each attempt's log is bounded by the node
//! ([`drover_protocol::MAX_CHUNK_LOG_BYTES`], checked on the wire); each
//! job's logs by [`LogLimits::job_bytes`] (later pieces are dropped with
//! one marker line); all logs by [`LogLimits::total_bytes`], the oldest
//! jobs' logs dropped first. A job's logs also go when the job leaves the
//! scheduler's finished-job retention ([`ChunkLogs::retain_jobs`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// Default bound on one job's logs, in bytes: 64 MiB is thousands of
/// chunk logs at their usual few KiB (a line per second of frames), and
/// keeps one runaway job from filling the disk on its own.
pub const MAX_JOB_LOG_BYTES: u64 = 64 << 20;

/// Default bound on all chunk logs, in bytes; past it the oldest jobs'
/// logs go first. 2 GiB holds the logs of hundreds of large jobs while
/// staying small beside the artifacts the same disk holds.
pub const MAX_TOTAL_LOG_BYTES: u64 = 2 << 30;

/// Pieces waiting for the writer thread. A node sends a piece about every
/// half second per running chunk; 4,096 absorbs a disk stall of seconds on
/// a large farm. Past it pieces are dropped (with a warning), and the next
/// piece of that chunk marks the hole.
pub const LOG_QUEUE: usize = 4096;

/// One chunk attempt's log, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkLogMeta {
    /// Job id.
    pub job: u64,
    /// Chunk id within the job.
    pub chunk: u32,
    /// The attempt's epoch.
    pub epoch: u32,
    /// Node that ran it.
    pub node: String,
    /// First frame of the chunk, inclusive.
    pub start: u64,
    /// Last frame of the chunk, inclusive (after any shrink known when its
    /// last piece came).
    pub end: u64,
    /// Bytes of the node's log received so far: where its next piece
    /// starts.
    pub next_offset: u64,
    /// Bytes of the file (the node's log, plus any marker lines).
    pub size_bytes: u64,
    /// The node's last piece arrived: the attempt has ended.
    pub complete: bool,
    /// Why the attempt failed, when its node reported it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// The job's logs reached [`LogLimits::job_bytes`] while this one was
    /// written: the rest of it was dropped.
    #[serde(default)]
    pub capped: bool,
}

/// A piece of a chunk attempt's log, admitted by the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Job id.
    pub job: u64,
    /// Chunk id.
    pub chunk: u32,
    /// The attempt's epoch.
    pub epoch: u32,
    /// The node holding the attempt.
    pub node: String,
    /// The chunk's first frame.
    pub start: u64,
    /// The chunk's last frame as of now.
    pub end: u64,
    /// Where `text` starts in the node's log.
    pub offset: u64,
    /// The text.
    pub text: String,
    /// The attempt has ended.
    pub last: bool,
}

/// The bounds of the store (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogLimits {
    /// Most bytes of one job's logs.
    pub job_bytes: u64,
    /// Most bytes of all logs.
    pub total_bytes: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            job_bytes: MAX_JOB_LOG_BYTES,
            total_bytes: MAX_TOTAL_LOG_BYTES,
        }
    }
}

/// What a piece did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Bytes were written.
    Written,
    /// Everything in it was here already (a resent piece).
    Duplicate,
    /// Its attempt is older than the one whose log is kept.
    Stale,
    /// The job's logs are at their limit.
    Capped,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The disk failed.
    #[error("chunk log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the writer thread does.
enum Op {
    Piece(Piece),
    Failed {
        job: u64,
        chunk: u32,
        epoch: u32,
        reason: String,
    },
    Retain(Vec<u64>),
    Flush(mpsc::Sender<()>),
}

#[derive(Default)]
struct Index {
    jobs: BTreeMap<u64, JobLogs>,
    total_bytes: u64,
}

#[derive(Default)]
struct JobLogs {
    chunks: BTreeMap<u32, ChunkLogMeta>,
    bytes: u64,
}

struct Inner {
    root: PathBuf,
    limits: LogLimits,
    index: Mutex<Index>,
}

/// The chunk log store: a cheap handle shared by the scheduler actor (which
/// submits admitted pieces) and the API (which lists and reads).
#[derive(Clone)]
pub struct ChunkLogs {
    inner: Arc<Inner>,
    tx: mpsc::SyncSender<Op>,
}

impl ChunkLogs {
    /// Opens (creating) the store under `root` and lists what it holds;
    /// starts its writer thread.
    pub fn open(root: impl Into<PathBuf>, limits: LogLimits) -> Result<ChunkLogs, LogError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io(&root))?;
        let index = load(&root)?;
        let inner = Arc::new(Inner {
            root,
            limits,
            index: Mutex::new(index),
        });
        let (tx, rx) = mpsc::sync_channel(LOG_QUEUE);
        let writer = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("drover-chunk-logs".into())
            .spawn(move || {
                for op in rx {
                    if let Err(e) = writer.apply(op) {
                        warn!("{e}");
                    }
                }
            })
            .map_err(io(&inner.root))?;
        Ok(ChunkLogs { inner, tx })
    }

    /// Where the logs are.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Queues an admitted piece for the writer thread; never blocks (a
    /// full queue drops the piece, and the next one marks the hole).
    pub fn submit(&self, piece: Piece) {
        if let Err(mpsc::TrySendError::Full(Op::Piece(p))) = self.tx.try_send(Op::Piece(piece)) {
            warn!(
                job = p.job,
                chunk = p.chunk,
                "{LOG_QUEUE} chunk log pieces wait for the disk: one is dropped"
            );
        }
    }

    /// Queues the note that a chunk attempt failed, with why.
    pub fn submit_failed(&self, job: u64, chunk: u32, epoch: u32, reason: String) {
        let _ = self.tx.try_send(Op::Failed {
            job,
            chunk,
            epoch,
            reason,
        });
    }

    /// Queues dropping every job's logs but those of `keep` (the jobs the
    /// scheduler still holds, running or retained).
    pub fn retain_jobs(&self, keep: Vec<u64>) {
        let _ = self.tx.try_send(Op::Retain(keep));
    }

    /// Waits until every operation queued before is applied (tests, and an
    /// orderly stop).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Op::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Applies a piece now, on this thread (the writer thread's step).
    pub fn append(&self, piece: Piece) -> Result<Applied, LogError> {
        self.inner.append(piece)
    }

    /// Notes now that an attempt failed.
    pub fn mark_failed(
        &self,
        job: u64,
        chunk: u32,
        epoch: u32,
        reason: String,
    ) -> Result<(), LogError> {
        self.inner.mark_failed(job, chunk, epoch, reason)
    }

    /// Drops now every job's logs but those of `keep`.
    pub fn retain_now(&self, keep: &[u64]) -> Result<(), LogError> {
        self.inner.retain(keep)
    }

    /// Whether `node` may write this attempt's log, and the chunk's frames
    /// if so. `held` is the core's word: the frames of the attempt when
    /// `node` holds it now (only the holder writes, as only it may upload).
    /// Without it, a log the node opened while it held the attempt and has
    /// not ended may still be finished (a cancelled chunk's last lines come
    /// after the cancel); anything else (another node, an older attempt, an
    /// ended log) is refused.
    pub fn admit(
        &self,
        job: u64,
        chunk: u32,
        epoch: u32,
        node: &str,
        held: Option<(u64, u64)>,
    ) -> Option<(u64, u64)> {
        if held.is_some() {
            return held;
        }
        self.inner
            .lock()
            .jobs
            .get(&job)
            .and_then(|j| j.chunks.get(&chunk))
            .filter(|m| m.epoch == epoch && m.node == node && !m.complete)
            .map(|m| (m.start, m.end))
    }

    /// Jobs with logs here.
    pub fn jobs(&self) -> Vec<u64> {
        self.inner.lock().jobs.keys().copied().collect()
    }

    /// Jobs with logs here, or `None` while the writer thread holds the
    /// index (it does through its disk writes): the scheduler's periodic
    /// prune asks this way, so a slow disk never stalls the scheduler.
    pub fn try_jobs(&self) -> Option<Vec<u64>> {
        match self.inner.index.try_lock() {
            Ok(index) => Some(index.jobs.keys().copied().collect()),
            Err(std::sync::TryLockError::Poisoned(e)) => {
                Some(e.into_inner().jobs.keys().copied().collect())
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// A job's chunk logs, by chunk id.
    pub fn list(&self, job: u64) -> Vec<ChunkLogMeta> {
        self.inner
            .lock()
            .jobs
            .get(&job)
            .map(|j| j.chunks.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Bytes of all logs.
    pub fn total_bytes(&self) -> u64 {
        self.inner.lock().total_bytes
    }

    /// One chunk's log and its text, if there is one. Reads the disk: call
    /// it off the async threads.
    pub fn read(&self, job: u64, chunk: u32) -> Result<Option<(ChunkLogMeta, Vec<u8>)>, LogError> {
        let Some(meta) = self
            .inner
            .lock()
            .jobs
            .get(&job)
            .and_then(|j| j.chunks.get(&chunk))
            .cloned()
        else {
            return Ok(None);
        };
        let path = self.inner.log_path(job, chunk);
        match fs::read(&path) {
            Ok(text) => Ok(Some((meta, text))),
            // Dropped by the size bound meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Index> {
        // Every change to the index is made in one step after its file
        // write: consistent even if a holder panicked.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn job_dir(&self, job: u64) -> PathBuf {
        self.root.join(job.to_string())
    }

    fn log_path(&self, job: u64, chunk: u32) -> PathBuf {
        self.job_dir(job).join(format!("{chunk}.log"))
    }

    fn apply(&self, op: Op) -> Result<(), LogError> {
        match op {
            Op::Piece(p) => self.append(p).map(|_| ()),
            Op::Failed {
                job,
                chunk,
                epoch,
                reason,
            } => self.mark_failed(job, chunk, epoch, reason),
            Op::Retain(keep) => self.retain(&keep),
            Op::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        }
    }

    fn append(&self, p: Piece) -> Result<Applied, LogError> {
        let mut index = self.lock();
        let existing = index
            .jobs
            .get(&p.job)
            .and_then(|j| j.chunks.get(&p.chunk))
            .cloned();
        let mut meta = match existing {
            Some(m) if p.epoch < m.epoch => return Ok(Applied::Stale),
            // A newer attempt under the same id (the core admitted it):
            // its log replaces the older one's.
            Some(m) if p.epoch > m.epoch => {
                self.remove_chunk(&mut index, p.job, p.chunk)?;
                fresh(&p)
            }
            Some(m) => m,
            None => fresh(&p),
        };
        meta.end = p.end;
        let piece_end = p.offset + p.text.len() as u64;
        if meta.complete || (piece_end <= meta.next_offset && !(p.text.is_empty() && p.last)) {
            return Ok(Applied::Duplicate);
        }
        let mut bytes = Vec::new();
        if p.offset > meta.next_offset {
            bytes.extend_from_slice(
                format!(
                    "[... {} bytes of this log did not arrive ...]\n",
                    p.offset - meta.next_offset
                )
                .as_bytes(),
            );
        }
        let skip = meta.next_offset.saturating_sub(p.offset) as usize;
        bytes.extend_from_slice(&p.text.as_bytes()[skip.min(p.text.len())..]);
        let job_bytes = index.jobs.get(&p.job).map_or(0, |j| j.bytes);
        let mut applied = Applied::Written;
        if meta.capped {
            bytes.clear();
            applied = Applied::Capped;
        } else if job_bytes + bytes.len() as u64 > self.limits.job_bytes {
            bytes = format!(
                "[... this job's logs reached their limit of {} bytes: the rest of this log is dropped ...]\n",
                self.limits.job_bytes
            )
            .into_bytes();
            meta.capped = true;
            applied = Applied::Capped;
        }
        let dir = self.job_dir(p.job);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = self.log_path(p.job, p.chunk);
        if !bytes.is_empty() || meta.size_bytes == 0 {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            f.write_all(&bytes).map_err(io(&path))?;
        }
        meta.next_offset = meta.next_offset.max(piece_end);
        meta.size_bytes += bytes.len() as u64;
        meta.complete = p.last;
        self.write_meta(&meta)?;
        let added = bytes.len() as u64;
        let job = index.jobs.entry(p.job).or_default();
        job.bytes += added;
        job.chunks.insert(p.chunk, meta);
        index.total_bytes += added;
        self.enforce_total(&mut index, p.job)?;
        Ok(applied)
    }

    fn mark_failed(
        &self,
        job: u64,
        chunk: u32,
        epoch: u32,
        reason: String,
    ) -> Result<(), LogError> {
        let mut index = self.lock();
        let Some(meta) = index
            .jobs
            .get_mut(&job)
            .and_then(|j| j.chunks.get_mut(&chunk))
            .filter(|m| m.epoch == epoch)
        else {
            return Ok(());
        };
        meta.failed = Some(reason);
        let meta = meta.clone();
        self.write_meta(&meta)
    }

    fn retain(&self, keep: &[u64]) -> Result<(), LogError> {
        let keep: std::collections::HashSet<u64> = keep.iter().copied().collect();
        let mut index = self.lock();
        let gone: Vec<u64> = index
            .jobs
            .keys()
            .copied()
            .filter(|j| !keep.contains(j))
            .collect();
        for job in gone {
            self.remove_job(&mut index, job)?;
        }
        Ok(())
    }

    /// Drops the oldest jobs' logs (never `current`'s) while all logs pass
    /// their bound.
    fn enforce_total(&self, index: &mut Index, current: u64) -> Result<(), LogError> {
        while index.total_bytes > self.limits.total_bytes {
            let Some(oldest) = index.jobs.keys().copied().find(|j| *j != current) else {
                break;
            };
            warn!(
                job = oldest,
                "chunk logs are over their bound of {} bytes: the oldest job's logs go",
                self.limits.total_bytes
            );
            self.remove_job(index, oldest)?;
        }
        Ok(())
    }

    fn remove_job(&self, index: &mut Index, job: u64) -> Result<(), LogError> {
        if let Some(j) = index.jobs.remove(&job) {
            index.total_bytes -= j.bytes;
        }
        let dir = self.job_dir(job);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir)(e)),
            _ => Ok(()),
        }
    }

    fn remove_chunk(&self, index: &mut Index, job: u64, chunk: u32) -> Result<(), LogError> {
        if let Some(j) = index.jobs.get_mut(&job) {
            if let Some(m) = j.chunks.remove(&chunk) {
                j.bytes -= m.size_bytes;
                index.total_bytes -= m.size_bytes;
            }
        }
        let path = self.log_path(job, chunk);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Replaces the sidecar whole: written aside, then renamed over.
    fn write_meta(&self, meta: &ChunkLogMeta) -> Result<(), LogError> {
        let dir = self.job_dir(meta.job);
        let path = dir.join(format!("{}.json", meta.chunk));
        let tmp = dir.join(format!("{}.json.tmp", meta.chunk));
        // Plain fields: serializing cannot fail.
        let body = serde_json::to_vec(meta).expect("metadata serializes");
        fs::write(&tmp, body).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }
}

fn fresh(p: &Piece) -> ChunkLogMeta {
    ChunkLogMeta {
        job: p.job,
        chunk: p.chunk,
        epoch: p.epoch,
        node: p.node.clone(),
        start: p.start,
        end: p.end,
        next_offset: 0,
        size_bytes: 0,
        complete: false,
        failed: None,
        capped: false,
    }
}

/// Reads the index back from disk: every job dir's sidecars, with the size
/// of each log as the file says. Anything else there is left alone.
fn load(root: &Path) -> Result<Index, LogError> {
    let mut index = Index::default();
    for entry in fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let Some(job) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let mut logs = JobLogs::default();
        for f in fs::read_dir(&dir).map_err(io(&dir))? {
            let path = f.map_err(io(&dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let meta: Option<ChunkLogMeta> = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(mut meta) = meta.filter(|m: &ChunkLogMeta| m.job == job) else {
                warn!(path = %path.display(), "unreadable chunk log metadata skipped");
                continue;
            };
            let log = dir.join(format!("{}.log", meta.chunk));
            meta.size_bytes = fs::metadata(&log).map_or(0, |m| m.len());
            logs.bytes += meta.size_bytes;
            logs.chunks.insert(meta.chunk, meta);
        }
        index.total_bytes += logs.bytes;
        index.jobs.insert(job, logs);
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(job: u64, chunk: u32, epoch: u32, offset: u64, text: &str, last: bool) -> Piece {
        Piece {
            job,
            chunk,
            epoch,
            node: "n1".into(),
            start: 0,
            end: 23,
            offset,
            text: text.into(),
            last,
        }
    }

    fn text(logs: &ChunkLogs, job: u64, chunk: u32) -> String {
        let (_, bytes) = logs.read(job, chunk).unwrap().expect("a log");
        String::from_utf8(bytes).unwrap()
    }

    fn open(dir: &Path, job_bytes: u64, total_bytes: u64) -> ChunkLogs {
        ChunkLogs::open(
            dir,
            LogLimits {
                job_bytes,
                total_bytes,
            },
        )
        .unwrap()
    }

    /// Pieces land by offset: in order they append, a resent piece or its
    /// overlap is skipped, a hole is marked, the last closes the log.
    #[test]
    fn pieces_are_placed_by_offset_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let logs = open(dir.path(), 1 << 20, 1 << 20);
        let check = |p: Piece, want: Applied, want_text: &str| {
            assert_eq!(logs.append(p.clone()).unwrap(), want, "{p:?}");
            assert_eq!(text(&logs, 7, 3), want_text, "{p:?}");
        };
        check(piece(7, 3, 1, 0, "a\n", false), Applied::Written, "a\n");
        check(piece(7, 3, 1, 2, "b\n", false), Applied::Written, "a\nb\n");
        check(
            piece(7, 3, 1, 0, "a\n", false),
            Applied::Duplicate,
            "a\nb\n",
        );
        check(
            piece(7, 3, 1, 2, "b\nc\n", false),
            Applied::Written,
            "a\nb\nc\n",
        );
        check(
            piece(7, 3, 1, 10, "e\n", false),
            Applied::Written,
            "a\nb\nc\n[... 4 bytes of this log did not arrive ...]\ne\n",
        );
        let so_far = "a\nb\nc\n[... 4 bytes of this log did not arrive ...]\ne\n";
        check(
            piece(7, 3, 1, 12, "end\n", true),
            Applied::Written,
            &format!("{so_far}end\n"),
        );
        // Nothing follows the last piece.
        check(
            piece(7, 3, 1, 16, "late\n", false),
            Applied::Duplicate,
            &format!("{so_far}end\n"),
        );
        let meta = &logs.list(7)[0];
        assert!(meta.complete);
        assert_eq!(meta.next_offset, 16);
        assert_eq!(meta.size_bytes, (so_far.len() + 4) as u64);
        assert_eq!(logs.total_bytes(), meta.size_bytes);
    }

    /// An older attempt cannot write over a newer one's log; a newer one
    /// replaces it.
    #[test]
    fn attempts_do_not_overwrite_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let logs = open(dir.path(), 1 << 20, 1 << 20);
        logs.append(piece(7, 3, 2, 0, "second\n", false)).unwrap();
        assert_eq!(
            logs.append(piece(7, 3, 1, 0, "first\n", true)).unwrap(),
            Applied::Stale
        );
        assert_eq!(text(&logs, 7, 3), "second\n");
        logs.append(piece(7, 3, 3, 0, "third\n", false)).unwrap();
        assert_eq!(text(&logs, 7, 3), "third\n");
        assert_eq!(logs.total_bytes(), 6);
        // A failure note for another attempt is not this one's.
        logs.mark_failed(7, 3, 2, "old".into()).unwrap();
        assert_eq!(logs.list(7)[0].failed, None);
        logs.mark_failed(7, 3, 3, "frame 5".into()).unwrap();
        assert_eq!(logs.list(7)[0].failed.as_deref(), Some("frame 5"));
    }

    #[test]
    fn a_jobs_logs_stop_at_their_bound_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let logs = open(dir.path(), 10, 1 << 20);
        logs.append(piece(7, 0, 1, 0, "12345678\n", false)).unwrap();
        assert_eq!(
            logs.append(piece(7, 1, 1, 0, "abc\n", false)).unwrap(),
            Applied::Capped
        );
        assert!(text(&logs, 7, 1).contains("reached their limit of 10 bytes"));
        let after = text(&logs, 7, 1);
        assert_eq!(
            logs.append(piece(7, 1, 1, 4, "def\n", true)).unwrap(),
            Applied::Capped
        );
        assert_eq!(text(&logs, 7, 1), after, "one marker only");
        assert!(logs.list(7)[1].complete);
        // Another job has its own bound.
        assert_eq!(
            logs.append(piece(8, 0, 1, 0, "x\n", true)).unwrap(),
            Applied::Written
        );
    }

    #[test]
    fn the_oldest_jobs_logs_go_first_past_the_total_bound() {
        let dir = tempfile::tempdir().unwrap();
        let logs = open(dir.path(), 1 << 20, 25);
        for job in [5, 6, 7] {
            logs.append(piece(job, 0, 1, 0, "0123456789\n", true))
                .unwrap();
        }
        assert_eq!(logs.jobs(), [6, 7]);
        assert!(!dir.path().join("5").exists());
        assert_eq!(logs.total_bytes(), 22);
        // The job being written is never the one dropped.
        logs.append(piece(7, 1, 1, 0, "0123456789012345678901234567\n", true))
            .unwrap();
        assert_eq!(logs.jobs(), [7]);
    }

    /// The index comes back from disk after a restart, and jobs the
    /// scheduler no longer holds lose their logs.
    #[test]
    fn the_index_survives_a_restart_and_retention_drops_jobs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let logs = open(dir.path(), 1 << 20, 1 << 20);
            logs.append(piece(7, 3, 1, 0, "a\n", false)).unwrap();
            logs.append(piece(9, 0, 1, 0, "b\n", true)).unwrap();
            logs.mark_failed(9, 0, 1, "frame 5 failed".into()).unwrap();
        }
        let logs = open(dir.path(), 1 << 20, 1 << 20);
        assert_eq!(logs.jobs(), [7, 9]);
        assert_eq!(logs.total_bytes(), 4);
        assert_eq!(logs.list(9)[0].failed.as_deref(), Some("frame 5 failed"));
        // Resumes where it was, a resend included.
        logs.append(piece(7, 3, 1, 0, "a\nb\n", true)).unwrap();
        assert_eq!(text(&logs, 7, 3), "a\nb\n");
        logs.retain_jobs(vec![9]);
        logs.flush();
        assert_eq!(logs.jobs(), [9]);
        assert!(!dir.path().join("7").exists());
        assert!(logs.read(7, 3).unwrap().is_none());
        // While the writer holds the index (its disk writes), the
        // scheduler's prune is told to come back rather than wait.
        assert_eq!(logs.try_jobs(), Some(vec![9]));
        let held = logs.inner.lock();
        assert_eq!(logs.try_jobs(), None);
        drop(held);
        assert_eq!(logs.try_jobs(), Some(vec![9]));
    }

    /// Who may write: the holder always; after the attempt, only the node
    /// whose log of that attempt is open.
    #[test]
    fn only_the_holder_or_the_opener_of_an_attempts_log_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let logs = open(dir.path(), 1 << 20, 1 << 20);
        logs.append(piece(7, 3, 3, 0, "a\n", false)).unwrap();
        let check = |epoch, node, held, want: Option<(u64, u64)>| {
            assert_eq!(
                logs.admit(7, 3, epoch, node, held),
                want,
                "{epoch} {node} {held:?}"
            );
        };
        // Held now: the core's frames, whatever is on disk.
        check(3, "n1", Some((0, 11)), Some((0, 11)));
        check(4, "n2", Some((5, 9)), Some((5, 9)));
        // Not held: only the same attempt's open log, from its node.
        check(3, "n1", None, Some((0, 23)));
        check(2, "n1", None, None);
        check(3, "n2", None, None);
        assert_eq!(logs.admit(7, 4, 3, "n1", None), None, "another chunk");
        assert_eq!(logs.admit(8, 3, 3, "n1", None), None, "another job");
        // Once its last piece is in, nothing more.
        logs.append(piece(7, 3, 3, 2, "", true)).unwrap();
        check(3, "n1", None, None);
    }

    /// The writer thread applies queued pieces in order.
    #[test]
    fn submitted_pieces_are_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let logs = open(dir.path(), 1 << 20, 1 << 20);
        let mut want = String::new();
        for i in 0..100 {
            let line = format!("line {i}\n");
            logs.submit(piece(1, 0, 1, want.len() as u64, &line, i == 99));
            want.push_str(&line);
        }
        logs.submit_failed(1, 0, 1, "frame 99".into());
        logs.flush();
        assert_eq!(text(&logs, 1, 0), want);
        assert_eq!(logs.list(1)[0].failed.as_deref(), Some("frame 99"));
    }
}

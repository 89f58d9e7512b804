//! The write-ahead journal: an append-only log of small facts, generic over
//! the domain ([`Model`]), with group commit, snapshots and an archive of
//! finished entries. Only this module writes sled. [`scheduler`] puts the
//! scheduler's facts in it and upgrades a journal of the previous format.
//!
//! The caller appends facts ([`Journal::append`]) and learns when they are
//! durable ([`Journal::open`]'s `on_durable`, or [`Journal::durable`]). One
//! writer thread does everything else: encoding, checksums, sled inserts,
//! fsyncs, folding facts into its own copy of the model (the *mirror*),
//! archiving finished entries and snapshots. On start, [`Journal::open`]
//! rebuilds the model from the newest snapshot and the log after it.
//!
//! # Layout
//! - `record`: the bytes on disk (record framing, keys, the payload codec).
//! - `recover`: opening: replay, the torn-write and corruption rules, the
//!   incarnation count.
//! - `writer`: the writer thread (group commit, archive, snapshots).
//! - `export`: the state at one durable point, taken online for a backup,
//!   and the import that writes a new journal from it.
//! - `tests`: the journal's tests, the crash loop among them.
//! - [`scheduler`]: the journal of the scheduler's facts (the one the
//!   coordinator opens), and the upgrade of the previous format.
//!
//! # Storage
//! One sled database in [`JournalConfig::dir`], four trees:
//! - `log`: key = the seq of the first fact in the value (big-endian u64);
//!   value = a *block* of the facts of one or more whole appends, with
//!   consecutive seqs: `[format version u8 = 1][crc32 of the rest u32 LE]
//!   [fact count u32 LE]` then each fact as one record, `[format version u8 =
//!   1][kind u8][len u32 LE][crc32 of payload u32 LE][payload]`, the payload
//!   being the fact as JSON (readable with a tool; the benchmark shows the
//!   codec is not what limits throughput). A block closes at the end of an
//!   append once it reaches 4 KiB (a few dozen facts). With one sled value
//!   per fact, sled's cost per key was the whole cost: the benchmark wrote
//!   47,000 facts/s, replayed 110,000 facts/s and kept about 780 bytes on
//!   disk per fact.
//! - `snapshot`: the model as JSON in *parts*: key = (seq, part), both
//!   big-endian; part 0 is a header record (format version, seq, number of
//!   parts, total bytes, crc32 of all parts) and parts 1..=n hold at most
//!   4 KiB each.
//! - `archive`: finished entries, readable by key for the retention period.
//!   Two key spaces in the one tree, so an entry and its expiry index are
//!   written and removed together by one atomic sled batch: `e` + key + part
//!   (big-endian) = the entry's bytes in parts as above, the header's tag
//!   being `finished_at_ms`; `t` + finished_at_ms + key (both big-endian) =
//!   nothing, the expiry index.
//! - `meta`: `format` (u8), `incarnation` (u32 BE), `snapshot_seq` (u64 BE,
//!   the current snapshot; absent when there is none).
//!
//! No value is over 4 KiB (but a block holding one append larger than that):
//! sled 0.34 moves a tree node whose size passes 128 KiB (a leaf holds up to
//! 17 values) to a file of its own under `blobs/`, which its flush does not
//! fsync. Small values keep every node in sled's log, so an fsync is one
//! `fdatasync` of one file, about a millisecond, instead of hundreds of
//! milliseconds of blob files.
//!
//! # The write path, step by step
//! 1. [`Journal::append`] (the caller's thread): under the appender lock,
//!    the facts take the next seqs and go, as one message, over a crossbeam
//!    channel. The queue is bounded in facts: the append blocks while
//!    [`JournalConfig::queue_facts`] facts wait (an append larger than that
//!    waits for an empty queue). Nothing else happens on the caller's
//!    thread. *Crash:* the facts are lost; none was acknowledged.
//! 2. The writer takes the first waiting append (blocking), then whatever
//!    else waits without blocking, whole appends, until it holds
//!    [`JournalConfig::max_batch`] facts, and gives their room in the queue
//!    back (waking a blocked appender once per batch).
//! 3. It encodes each fact (JSON), frames it with its kind, length and
//!    crc32, packs the records into blocks (a block never splits an append)
//!    and puts the blocks in one `sled::Batch` on `log` (`apply_batch`).
//!    *Crash:* sled recovers a batch whole or not at all; either way nothing
//!    of it was acknowledged.
//! 4. **fsync**: one per batch with [`Sync::Group`], one per fact with
//!    [`Sync::PerFact`] (which inserts and syncs each fact on its own). An
//!    fsync here is sled's `Db::flush` then an `fdatasync` of sled's `db`
//!    file and of any new file under `blobs/` (and of that directory):
//!    sled's flush alone uses `sync_file_range`, which survives a crash of
//!    the process but not of the machine (no device cache flush, no file
//!    size), and never syncs blob files. *Crash after it:* the batch
//!    survives.
//! 5. The durable watermark moves to the batch's last seq, `wait_durable`
//!    callers wake, and `on_durable(Ok(seq))` runs. Only now is a fact
//!    acknowledged.
//! 6. The writer folds the facts into the mirror, then asks it for finished
//!    entries ([`Model::take_finished`]) and writes them to `archive` (one
//!    batch, no fsync of its own: the next commit's or snapshot's fsync
//!    carries it). *Crash before that fsync:* the archive writes may be
//!    lost, but the facts that finished those entries are still in the log
//!    (only a snapshot taken after step 6 lets the log before it go), so
//!    recovery folds them again, takes the same entries and archives them
//!    again before it returns.
//! 7. Every [`JournalConfig::snapshot_every_facts`] facts (and on
//!    [`Journal::snapshot_now`]) the writer snapshots the mirror at its last
//!    seq S:
//!    1. It writes the header and all the parts under S in one batch, then
//!       **fsync**. *Crash before this fsync is done:* `meta` still names the
//!       previous snapshot, which is intact (nothing of it is removed before
//!       step 7.3), and so is the whole log after it; the new parts, whole or
//!       not, are ignored and removed at the next open.
//!    2. It records S as current in `meta`, then **fsync**. *Crash before
//!       it is done:* as in 7.1, the old snapshot and the full log. *After:*
//!       the new snapshot is whole (its fsync came first), the log after S is
//!       untouched, and so is every archive write made before S (step 6's
//!       writes were flushed by 7.1's fsync).
//!    3. It removes the log up to S, the older snapshots' parts, and archive
//!       entries finished more than [`JournalConfig::archive_retention_ms`]
//!       ago, with no fsync of its own. *Crash:* some of that remains; the
//!       log up to S and other snapshots' parts are ignored and removed at
//!       the next open, expired entries at the next snapshot.
//!
//!    So at every instant a crash leaves either the old snapshot and the log
//!    after it, or the new snapshot and the log after it: both fold into the
//!    same model, since [`Model::apply`] is deterministic.
//!
//! # Opening
//! [`Journal::open`] reads the current snapshot (its crc verified), then the
//! log from the next seq on, in order, folding each fact into a fresh
//! [`Model`]. The rules:
//! - A block whose header or checksum is wrong and that is the *last* in the
//!   log is a torn write (a crash in the middle of writing it): it is
//!   removed, a warning is logged and [`RecoveryStats::torn_dropped`] says
//!   so. None of its facts was acknowledged (acknowledgement follows the
//!   fsync of the whole commit), and their seqs go to the next facts.
//! - The same anywhere but last, a gap in the seqs, or a fault *inside* a
//!   block whose checksum holds (a record with a bad header, length or
//!   checksum, a kind that disagrees with its fact, a payload that does not
//!   decode: the block was written whole, so this is no torn write) is
//!   corruption: [`JournalError::Corrupt`], naming the directory, the seq
//!   and the fact kind, and what to do.
//! - A block or record in a newer format is [`JournalError::UnknownVersion`],
//!   even when last: dropping a newer Drover's facts would lose them
//!   silently.
//!
//! On an error nothing is written: the journal is never silently started
//! fresh. On success, entries the replay finished are archived, leftovers of
//! an interrupted snapshot are removed, the incarnation is counted, and all
//! of that is **fsync**ed before `open` returns, so epochs built on the
//! incarnation never repeat.

mod export;
mod record;
mod recover;
pub mod scheduler;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use export::{Exportable, Import, JournalExport};
pub use record::{FORMAT_VERSION, MAX_ARCHIVE_BYTES, MAX_FACT_BYTES};

use writer::{Msg, Writer};

/// The domain state the journal folds facts into (the scheduler's records
/// in production, a toy in the tests).
pub trait Model: Default + Serialize + DeserializeOwned + Send + 'static {
    /// One fact: a small, self-contained change to the model.
    type Fact: Serialize + DeserializeOwned + Send + 'static;

    /// A small tag naming the fact's kind, stored in each record's header
    /// (for error messages and stats). 0 is allowed but reads as "internal"
    /// in a dump.
    fn kind(fact: &Self::Fact) -> u8;

    /// Folds one fact in. Must be deterministic: the log alone and a
    /// snapshot plus the log after it fold into equal models.
    fn apply(&mut self, fact: &Self::Fact);

    /// Entries that have finished and may leave the hot state, as (key,
    /// archived bytes, finished_at_ms). Called by the writer after folding
    /// each commit's facts, and once after replay; what it returns is written
    /// to the archive (readable with [`Journal::archived`] for the retention
    /// period) and is no longer in snapshots. Taking an entry must not
    /// depend on when it is asked: the model after `take_finished` is the
    /// same whether it was called after every fact or once at the end.
    fn take_finished(&mut self) -> Vec<(u64, Vec<u8>, u64)>;
}

/// The position of a fact in the log: 1-based, increasing, never reused
/// once acknowledged (the seqs of a torn block, never acknowledged, go to
/// the next facts).
pub type Seq = u64;

/// When the writer fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sync {
    /// One fsync per batch of waiting facts (group commit): the default.
    #[default]
    Group,
    /// One fsync per fact: the naive write path, kept for the benchmark's
    /// comparison. An append of several facts is then no longer all or
    /// nothing after a crash.
    PerFact,
}

/// Facts per group commit at most, by default. A commit's batch lives in
/// memory twice (facts and records) until its fsync, so this bounds the
/// writer's memory (about 30 MB at a few hundred bytes a fact) and the
/// latency one commit adds to the next; large enough that the fsync is
/// amortised over tens of thousands of facts under load.
pub const DEFAULT_MAX_BATCH: usize = 65_536;

/// Facts that may wait between the appender and the writer, by default:
/// one full batch waiting while another is written keeps the writer busy,
/// and beyond that the appender blocks (backpressure) instead of queueing
/// without limit. The writer holds at most this plus
/// [`DEFAULT_MAX_BATCH`] facts in memory.
pub const DEFAULT_QUEUE_FACTS: usize = 65_536;

/// Facts between snapshots, by default: bounds recovery to one snapshot
/// plus at most this many facts (about a quarter of a second of replay: the
/// benchmark replays about 900,000 frame facts/s), while a snapshot (which
/// writes the whole hot model) stays rare under load.
pub const DEFAULT_SNAPSHOT_EVERY_FACTS: u64 = 200_000;

/// How long finished entries stay readable, by default: a week, long
/// enough for a studio to look back at last week's jobs.
pub const DEFAULT_ARCHIVE_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;

/// How the journal is stored and written.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The directory of the sled database (created if missing).
    pub dir: PathBuf,
    /// When to fsync.
    pub sync: Sync,
    /// Facts per group commit at most (an append larger than this is still
    /// committed whole, alone). At least 1.
    pub max_batch: usize,
    /// Facts that may wait for the writer before [`Journal::append`] blocks
    /// (an append larger than this waits for an empty queue). At least 1.
    pub queue_facts: usize,
    /// Facts between snapshots; after a snapshot the log before it is
    /// dropped. At least 1.
    pub snapshot_every_facts: u64,
    /// Archived entries finished longer ago than this (`finished_at_ms`
    /// against the wall clock) are deleted at snapshot time.
    pub archive_retention_ms: u64,
}

impl JournalConfig {
    /// The defaults, stored in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig {
            dir: dir.into(),
            sync: Sync::Group,
            max_batch: DEFAULT_MAX_BATCH,
            queue_facts: DEFAULT_QUEUE_FACTS,
            snapshot_every_facts: DEFAULT_SNAPSHOT_EVERY_FACTS,
            archive_retention_ms: DEFAULT_ARCHIVE_RETENTION_MS,
        }
    }

    fn validate(&self) -> Result<(), JournalError> {
        let positive = [
            ("max_batch", self.max_batch as u64),
            ("queue_facts", self.queue_facts as u64),
            ("snapshot_every_facts", self.snapshot_every_facts),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(JournalError::Config {
                    field,
                    value,
                    why: "must be at least 1",
                });
            }
        }
        Ok(())
    }
}

/// Which stored record an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A log record.
    Log {
        /// Its seq.
        seq: Seq,
        /// Its fact kind, when the header could be read.
        kind: Option<u8>,
    },
    /// The snapshot at this seq.
    Snapshot {
        /// The seq of the last fact folded into it.
        seq: Seq,
    },
    /// An archived entry.
    Archive {
        /// Its key.
        key: u64,
    },
    /// A key of the `meta` tree.
    Meta {
        /// The key.
        key: &'static str,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Log {
                seq,
                kind: Some(kind),
            } => write!(f, "log record seq {seq} (fact kind {kind})"),
            Location::Log { seq, kind: None } => write!(f, "log record seq {seq}"),
            Location::Snapshot { seq } => write!(f, "the snapshot at seq {seq}"),
            Location::Archive { key } => write!(f, "archive entry {key}"),
            Location::Meta { key } => write!(f, "meta key `{key}`"),
        }
    }
}

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// sled failed (I/O, or its own corruption checks).
    #[error("journal at {}: storage error: {source}", file.display())]
    Storage {
        /// The journal's directory.
        file: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// The journal's directory could not be created or read.
    #[error("journal at {}: {source}", file.display())]
    Io {
        /// The journal's directory.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored record is damaged, somewhere a crash cannot explain.
    #[error(
        "journal at {}: {at} is damaged: {what}. Restore the data dir from a backup, or move \
         the journal directory aside to start with an empty journal; the coordinator will not \
         start on a damaged journal (nothing was changed)",
        file.display()
    )]
    Corrupt {
        /// The journal's directory.
        file: PathBuf,
        /// The record.
        at: Location,
        /// What is wrong with it.
        what: String,
    },
    /// A stored record is in a newer format than this code reads.
    #[error(
        "journal at {}: {at} is in format version {version}, newer than version {} that this \
         Drover reads: a newer Drover wrote this journal; run that version (or a later one) on \
         this data dir (nothing was changed)",
        file.display(),
        FORMAT_VERSION
    )]
    UnknownVersion {
        /// The journal's directory.
        file: PathBuf,
        /// The record.
        at: Location,
        /// The version found.
        version: u8,
    },
    /// A fact or the model could not be encoded for writing.
    #[error("journal: cannot encode {at}: {what}")]
    Encode {
        /// What was being written.
        at: Location,
        /// Why it cannot be.
        what: String,
    },
    /// A configuration value is out of range.
    #[error("journal config: {field} = {value}: {why}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The rule it breaks.
        why: &'static str,
    },
    /// A write or fsync failed earlier; the journal refuses further work.
    #[error("the journal failed and takes no more facts: {what}")]
    Failed {
        /// The first failure, in words.
        what: String,
    },
    /// The journal was closed.
    #[error("the journal is closed")]
    Closed,
    /// [`Journal::wait_durable`] gave up.
    #[error("journal: seq {seq} not durable after {waited_ms} ms (durable up to {durable})")]
    Timeout {
        /// The seq waited for.
        seq: Seq,
        /// The watermark when it gave up.
        durable: Seq,
        /// How long it waited.
        waited_ms: u64,
    },
    /// [`Journal::wait_durable`] was asked for a seq never appended.
    #[error("journal: seq {seq} was never appended (the last appended is {last})")]
    NotAppended {
        /// The seq asked for.
        seq: Seq,
        /// The last seq appended.
        last: Seq,
    },
}

/// What [`Journal::open`] rebuilt.
#[derive(Debug)]
pub struct Recovered<M: Model> {
    /// The snapshot plus the log, finished entries taken out (they are in
    /// the archive).
    pub model: M,
    /// This start's count (1 for the first open of a fresh directory),
    /// durable before `open` returned.
    pub incarnation: u32,
    /// The last seq in the log; the next fact gets `last_seq + 1`.
    pub last_seq: Seq,
    /// How the recovery went.
    pub stats: RecoveryStats,
}

/// How a recovery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryStats {
    /// The snapshot it started from (0: none).
    pub snapshot_seq: Seq,
    /// Facts folded in after the snapshot.
    pub facts_replayed: u64,
    /// Whether a torn last block was dropped.
    pub torn_dropped: bool,
    /// Time from the call to the journal being ready.
    pub elapsed: Duration,
    /// sled's size on disk after recovery.
    pub bytes_on_disk: u64,
}

/// Called on the writer thread after each fsync with the highest durable
/// seq, or once with the error that stopped the journal.
pub type OnDurable = Box<dyn Fn(Result<Seq, JournalError>) + Send>;

/// The journal: a cheap, clonable handle to the writer thread.
pub struct Journal<M: Model> {
    inner: Arc<Inner<M>>,
}

impl<M: Model> Clone for Journal<M> {
    fn clone(&self) -> Self {
        Journal {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M: Model> fmt::Debug for Journal<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.store.dir)
            .field("durable", &self.durable())
            .finish()
    }
}

/// What the handles share.
struct Inner<M: Model> {
    /// The sending side; taken (set to `None`) by `close`.
    appender: Mutex<Appender<M::Fact>>,
    /// What the writer publishes.
    shared: Arc<Shared>,
    /// [`JournalConfig::queue_facts`].
    queue_facts: u64,
    /// The writer thread, until joined.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// For reading the archive on the caller's thread.
    store: Store,
}

/// The appender's state, under one lock so seqs and channel order agree.
struct Appender<F> {
    tx: Option<Sender<Msg<F>>>,
    /// The seq of the last fact sent.
    last_seq: Seq,
}

/// What the writer publishes to the handles.
pub(crate) struct Shared {
    /// The durable watermark.
    pub(crate) durable: AtomicU64,
    /// The last seq appended (for `wait_durable`'s check).
    appended: AtomicU64,
    state: Mutex<WriterState>,
    changed: Condvar,
}

#[derive(Default)]
struct WriterState {
    /// The first failure, in words.
    failed: Option<String>,
    /// The writer thread has ended.
    exited: bool,
    /// Facts sent and not yet taken by the writer: the queue's length, which
    /// [`JournalConfig::queue_facts`] bounds.
    queued_facts: u64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, WriterState> {
        // The lock guards plain flags set in one statement, so a panic while
        // holding it cannot leave them half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the waiters after the watermark moved.
    pub(crate) fn wake(&self) {
        // Taking the lock orders the watermark's store before any waiter's
        // next check, so none misses this wake-up.
        drop(self.state());
        self.changed.notify_all();
    }

    /// Records the first failure and wakes the waiters.
    pub(crate) fn fail(&self, what: String) {
        self.state().failed.get_or_insert(what);
        self.changed.notify_all();
    }

    /// Takes room for `n` facts in the queue, waiting while it is full. An
    /// append larger than the whole queue goes when the queue is empty.
    fn reserve(&self, n: u64, queue_facts: u64) -> Result<(), JournalError> {
        let mut state = self.state();
        loop {
            if let Some(what) = &state.failed {
                return Err(JournalError::Failed { what: what.clone() });
            }
            if state.exited {
                return Err(JournalError::Closed);
            }
            if state.queued_facts == 0 || state.queued_facts + n <= queue_facts {
                state.queued_facts += n;
                return Ok(());
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Gives back the room of `n` facts the writer took (once per batch, so
    /// a blocked appender is woken once per batch, not once per fact).
    pub(crate) fn release(&self, n: u64) {
        let mut state = self.state();
        state.queued_facts -= n;
        drop(state);
        self.changed.notify_all();
    }

    /// Records that the writer ended, and wakes the waiters.
    pub(crate) fn exited(&self) {
        self.state().exited = true;
        self.changed.notify_all();
    }

    fn failure(&self) -> Option<JournalError> {
        self.state()
            .failed
            .clone()
            .map(|what| JournalError::Failed { what })
    }

    /// The error for a writer that is gone.
    fn gone(&self) -> JournalError {
        self.failure().unwrap_or(JournalError::Closed)
    }
}

/// How long opening waits for sled's file lock. sled lets go of it a moment
/// after the last handle drops (its deferred frees hold the file), so a
/// reopen in the same process (a test, an in-process restart) finds it busy
/// for a few milliseconds; another process holding it (a second coordinator
/// on the same data dir) still gets the error after this long.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens the sled database in `dir`, waiting up to [`LOCK_WAIT`] for its
/// lock.
pub(crate) fn open_sled(dir: &Path) -> sled::Result<sled::Db> {
    let started = Instant::now();
    loop {
        // sled's default mode; `HighThroughput` was neither faster nor
        // smaller in the benchmark.
        let config = sled::Config::new().path(dir).mode(sled::Mode::LowSpace);
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

/// The sled database and its trees.
#[derive(Clone)]
pub(crate) struct Store {
    dir: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    snapshot: sled::Tree,
    archive: sled::Tree,
    meta: sled::Tree,
    /// What sled's flush leaves to the page cache (see [`DiskSync`]).
    disk: Arc<Mutex<DiskSync>>,
}

/// Completes sled's flush into a real fsync. sled 0.34's `flush` on Linux
/// writes its log with `sync_file_range`, which neither flushes the
/// device's write cache nor the file's size, and writes tree nodes over
/// 128 KiB to files under `blobs/` that it never fsyncs. That survives a
/// crash of the process (the page cache survives it; the crash test kills
/// for real), not one of the machine. So after each flush the journal
/// fdatasyncs the `db` file and every blob file it has not synced yet, then
/// fsyncs the `blobs` directory when a file appeared in it. The journal's
/// values are kept small so that there are normally no blob files (see the
/// module doc); sled's own background rewrites are sled's to sync (its
/// flusher thread calls `sync_all` on `db` every 500 ms).
///
/// The first sync after opening syncs every blob file present, so what
/// recovery read (possibly written by a process killed before its own
/// fsync) is durable before the caller acts on it.
struct DiskSync {
    db_file: std::fs::File,
    blobs: PathBuf,
    /// Blob files already synced (sled names them by log offset and never
    /// rewrites one in place).
    synced: std::collections::HashSet<std::ffi::OsString>,
}

impl DiskSync {
    fn open(dir: &Path) -> std::io::Result<DiskSync> {
        let disk = DiskSync {
            db_file: std::fs::File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            synced: Default::default(),
        };
        // The directory's own entries (`db`, `conf`, `blobs`), made when
        // sled created them.
        std::fs::File::open(dir)?.sync_all()?;
        Ok(disk)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let mut present = std::collections::HashSet::new();
        let mut new_files = false;
        for entry in std::fs::read_dir(&self.blobs)? {
            let name = entry?.file_name();
            if !self.synced.contains(&name) {
                match std::fs::File::open(self.blobs.join(&name)) {
                    Ok(file) => file.sync_data()?,
                    // sled removed it meanwhile (a blob it no longer needs).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new_files = true;
            }
            present.insert(name);
        }
        // Forget removed files, so the set stays as small as the directory.
        self.synced = present;
        if new_files {
            std::fs::File::open(&self.blobs)?.sync_all()?;
        }
        self.db_file.sync_data()
    }
}

impl Store {
    fn open(dir: &Path) -> Result<Store, JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
            file: dir.to_owned(),
            source,
        })?;
        let storage = |source| JournalError::Storage {
            file: dir.to_owned(),
            source,
        };
        let db = open_sled(dir).map_err(storage)?;
        let tree = |name: &str| db.open_tree(name).map_err(storage);
        let disk = DiskSync::open(dir).map_err(|source| JournalError::Io {
            file: dir.to_owned(),
            source,
        })?;
        Ok(Store {
            dir: dir.to_owned(),
            log: tree("log")?,
            snapshot: tree("snapshot")?,
            archive: tree("archive")?,
            meta: tree("meta")?,
            db,
            disk: Arc::new(Mutex::new(disk)),
        })
    }

    /// Wraps a sled error with the directory.
    fn err(&self, source: sled::Error) -> JournalError {
        JournalError::Storage {
            file: self.dir.clone(),
            source,
        }
    }

    /// fsync: every write so far survives a crash, of the process or of
    /// the machine, once this returns.
    fn flush(&self) -> Result<(), JournalError> {
        self.db.flush().map_err(|e| self.err(e))?;
        let mut disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        disk.sync().map_err(|source| JournalError::Io {
            file: self.dir.clone(),
            source,
        })
    }

    fn corrupt(&self, at: Location, what: impl Into<String>) -> JournalError {
        JournalError::Corrupt {
            file: self.dir.clone(),
            at,
            what: what.into(),
        }
    }

    fn unknown_version(&self, at: Location, version: u8) -> JournalError {
        JournalError::UnknownVersion {
            file: self.dir.clone(),
            at,
            version,
        }
    }

    /// A batch (on the archive tree) writing finished entries: each entry's
    /// parts, in place of any it had, and its expiry index, together.
    fn archive_batch(
        &self,
        finished: Vec<(u64, Vec<u8>, u64)>,
    ) -> Result<sled::Batch, JournalError> {
        let mut batch = sled::Batch::default();
        for (key, bytes, finished_at_ms) in finished {
            if bytes.len() > MAX_ARCHIVE_BYTES {
                return Err(JournalError::Encode {
                    at: Location::Archive { key },
                    what: format!(
                        "{} bytes, over the {MAX_ARCHIVE_BYTES}-byte limit",
                        bytes.len()
                    ),
                });
            }
            // The replay after a restart finishes again every entry whose
            // facts are still in the log: one already stored whole (its
            // header, written in the same batch as its parts, says the same)
            // is left alone.
            let prefix = record::archive_prefix(key);
            let header = record::PartsHeader::of(finished_at_ms, &bytes);
            let at = Location::Archive { key };
            if let Ok(Some(stored)) = self.read_parts_header(&self.archive, &prefix, at) {
                if stored == header {
                    continue;
                }
            }
            // One archived again with other bytes may have had more parts;
            // the inserts below replace the rest.
            self.remove_parts(&self.archive, &prefix, &mut batch)?;
            write_parts(&mut batch, &prefix, header, &bytes);
            batch.insert(&record::expiry_key(finished_at_ms, key)[..], &[][..]);
        }
        Ok(batch)
    }

    /// Adds the removal of every key under `prefix` in `tree` to `batch`.
    pub(crate) fn remove_parts(
        &self,
        tree: &sled::Tree,
        prefix: &[u8],
        batch: &mut sled::Batch,
    ) -> Result<(), JournalError> {
        for key in tree.scan_prefix(prefix).keys() {
            batch.remove(key.map_err(|e| self.err(e))?);
        }
        Ok(())
    }

    /// Reads and checks the header of a value stored in parts under
    /// `prefix`; `None` when there is none.
    pub(crate) fn read_parts_header(
        &self,
        tree: &sled::Tree,
        prefix: &[u8],
        at: Location,
    ) -> Result<Option<record::PartsHeader>, JournalError> {
        let key = record::parts_key(prefix, 0);
        let Some(value) = tree.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        match record::check(&value, record::MAX_HEADER_BYTES) {
            record::Checked::Valid { payload, .. } => record::PartsHeader::from_payload(payload)
                .map(Some)
                .ok_or_else(|| self.corrupt(at, "its header has the wrong length")),
            record::Checked::Newer { version } => Err(self.unknown_version(at, version)),
            record::Checked::Damaged { what, .. } => {
                Err(self.corrupt(at, format!("its header: {what}")))
            }
        }
    }

    /// Reads and checks a value stored in parts under `prefix`: its tag
    /// and bytes, `None` when there is no header.
    pub(crate) fn read_parts(
        &self,
        tree: &sled::Tree,
        prefix: &[u8],
        at: Location,
    ) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        let Some(header) = self.read_parts_header(tree, prefix, at.clone())? else {
            if tree.scan_prefix(prefix).next().is_some() {
                return Err(self.corrupt(at, "its header (part 0) is missing"));
            }
            return Ok(None);
        };
        // Past the header.
        let parts = tree.range(record::parts_key(prefix, 1)..record::parts_key(prefix, u32::MAX));
        let mut bytes = Vec::with_capacity(
            (header.total_bytes as usize).min(header.parts as usize * record::PART_BYTES),
        );
        let mut count: u32 = 0;
        for item in parts {
            let (key, value) = item.map_err(|e| self.err(e))?;
            count += 1;
            if key.get(prefix.len()..) != Some(&count.to_be_bytes()[..]) {
                return Err(
                    self.corrupt(at, format!("part {count} of {} is missing", header.parts))
                );
            }
            bytes.extend_from_slice(&value);
        }
        if count != header.parts {
            return Err(self.corrupt(
                at,
                format!("it has {count} parts, its header says {}", header.parts),
            ));
        }
        if bytes.len() as u64 != header.total_bytes {
            return Err(self.corrupt(
                at,
                format!(
                    "its parts hold {} bytes, its header says {}",
                    bytes.len(),
                    header.total_bytes
                ),
            ));
        }
        let crc = crc32fast::hash(&bytes);
        if crc != header.crc {
            return Err(self.corrupt(
                at,
                format!(
                    "checksum mismatch: the header says {:08x}, the parts hash to {crc:08x}",
                    header.crc
                ),
            ));
        }
        Ok(Some((header.tag, bytes)))
    }
}

/// Adds `bytes` to `batch` in parts under `prefix`, with their header
/// (`PartsHeader::of(tag, bytes)`).
pub(crate) fn write_parts(
    batch: &mut sled::Batch,
    prefix: &[u8],
    header: record::PartsHeader,
    bytes: &[u8],
) {
    batch.insert(record::parts_key(prefix, 0), header.to_record());
    for (part, chunk) in (1..).zip(bytes.chunks(record::PART_BYTES)) {
        batch.insert(record::parts_key(prefix, part), chunk);
    }
}

impl<M: Model> Journal<M> {
    /// Opens (or creates) the journal in `config.dir`: replays the snapshot
    /// then the log into a fresh `M`, counts this start (the incarnation,
    /// durable before this returns: epochs carry it, so they never repeat)
    /// and starts the writer thread.
    ///
    /// `on_durable` is called on the writer thread after each fsync with the
    /// highest durable seq (increasing; [`Journal::durable`] already says
    /// so when it runs), or once with `Err` when a write or fsync failed,
    /// before any handle sees the failure; after that the journal refuses
    /// appends (the coordinator stops). It must be quick (the next commit
    /// waits for it) and must not call the journal's blocking methods
    /// (`append` when the queue may be full, `wait_durable`, `snapshot_now`,
    /// `close`): they wait for the writer thread it runs on.
    pub fn open(
        config: JournalConfig,
        on_durable: OnDurable,
    ) -> Result<(Journal<M>, Recovered<M>), JournalError> {
        let started = Instant::now();
        config.validate()?;
        let store = Store::open(&config.dir)?;
        let opened = recover::recover::<M>(&store)?;
        // The writer keeps its own copy (the mirror); M is not Clone, so the
        // caller's copy is the mirror through the snapshot codec.
        let model: M = roundtrip(&store, &opened.mirror, opened.last_seq)?;
        let shared = Arc::new(Shared {
            durable: AtomicU64::new(opened.last_seq),
            appended: AtomicU64::new(opened.last_seq),
            state: Mutex::new(WriterState::default()),
            changed: Condvar::new(),
        });
        // Unbounded in messages, bounded in facts by `Shared::reserve`: one
        // message per append, so the writer takes whole appends and wakes a
        // blocked appender once per batch.
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = Writer {
            store: store.clone(),
            sync: config.sync,
            max_batch: config.max_batch,
            snapshot_every_facts: config.snapshot_every_facts,
            archive_retention_ms: config.archive_retention_ms,
            since_snapshot: opened.last_seq - opened.snapshot_seq,
            snapshot_seq: opened.snapshot_seq,
            last_seq: opened.last_seq,
            mirror: opened.mirror,
            scratch: Vec::new(),
            rx,
            shared: Arc::clone(&shared),
            on_durable,
        };
        let handle = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| JournalError::Io {
                file: config.dir.clone(),
                source,
            })?;
        let bytes_on_disk = store.db.size_on_disk().map_err(|e| store.err(e))?;
        let recovered = Recovered {
            model,
            incarnation: opened.incarnation,
            last_seq: opened.last_seq,
            stats: RecoveryStats {
                snapshot_seq: opened.snapshot_seq,
                facts_replayed: opened.facts_replayed,
                torn_dropped: opened.torn_dropped,
                elapsed: started.elapsed(),
                bytes_on_disk,
            },
        };
        let journal = Journal {
            inner: Arc::new(Inner {
                appender: Mutex::new(Appender {
                    tx: Some(tx),
                    last_seq: opened.last_seq,
                }),
                shared,
                queue_facts: config.queue_facts as u64,
                writer: Mutex::new(Some(handle)),
                store,
            }),
        };
        Ok((journal, recovered))
    }

    /// Queues facts for the writer; blocks only while the queue is full.
    /// Returns the seq of the last one (the last seq appended when `facts`
    /// is empty). They are durable once the watermark ([`Journal::durable`],
    /// `on_durable`) reaches it; all of one append reach the disk in one
    /// commit, so after a crash they are all in the log or none is.
    pub fn append(&self, facts: Vec<M::Fact>) -> Result<Seq, JournalError> {
        let inner = &self.inner;
        let mut app = inner.appender.lock().map_err(|_| JournalError::Failed {
            what: "an append panicked halfway".into(),
        })?;
        if let Some(failed) = inner.shared.failure() {
            return Err(failed);
        }
        let Some(tx) = app.tx.as_ref() else {
            return Err(JournalError::Closed);
        };
        let n = facts.len() as u64;
        if n == 0 {
            return Ok(app.last_seq);
        }
        inner.shared.reserve(n, inner.queue_facts)?;
        if tx.send(Msg::Append(facts)).is_err() {
            // The writer is gone (it failed or panicked).
            app.tx = None;
            return Err(inner.shared.gone());
        }
        app.last_seq += n;
        inner.shared.appended.store(app.last_seq, Ordering::Release);
        Ok(app.last_seq)
    }

    /// The durable watermark: every fact up to this seq is on disk.
    pub fn durable(&self) -> Seq {
        self.inner.shared.durable.load(Ordering::Acquire)
    }

    /// Blocks until `seq` is durable, the journal fails, or `timeout` passes.
    pub fn wait_durable(&self, seq: Seq, timeout: Duration) -> Result<(), JournalError> {
        let shared = &self.inner.shared;
        let started = Instant::now();
        let mut state = shared.state();
        loop {
            let durable = shared.durable.load(Ordering::Acquire);
            if durable >= seq {
                return Ok(());
            }
            if let Some(what) = &state.failed {
                return Err(JournalError::Failed { what: what.clone() });
            }
            let last = shared.appended.load(Ordering::Acquire);
            if seq > last {
                return Err(JournalError::NotAppended { seq, last });
            }
            if state.exited {
                return Err(JournalError::Closed);
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(JournalError::Timeout {
                    seq,
                    durable,
                    waited_ms: waited.as_millis() as u64,
                });
            }
            state = shared
                .changed
                .wait_timeout(state, timeout - waited)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The bytes of a finished entry, while it is retained.
    pub fn archived(&self, key: u64) -> Result<Option<Vec<u8>>, JournalError> {
        let store = &self.inner.store;
        let entry = store.read_parts(
            &store.archive,
            &record::archive_prefix(key),
            Location::Archive { key },
        )?;
        Ok(entry.map(|(_, bytes)| bytes))
    }

    /// Keys of retained finished entries in decreasing order, from the
    /// first below `before` (from the newest when `None`), at most `limit`.
    pub fn archived_keys_before(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, JournalError> {
        let store = &self.inner.store;
        let end = match before {
            Some(0) => return Ok(Vec::new()),
            Some(key) => record::archive_key(key, 0),
            // Past every entry key (the expiry index sorts after them and
            // is skipped below).
            None => record::archive_key(u64::MAX, u32::MAX),
        };
        let mut keys = Vec::new();
        for item in store.archive.range(..end).keys().rev() {
            if keys.len() >= limit {
                break;
            }
            let k = item.map_err(|e| store.err(e))?;
            if let Some((key, 0)) = record::parse_archive_key(&k) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Keys of retained finished entries in increasing order, from the first
    /// after `after` (from the start when `None`), at most `limit`.
    pub fn archived_keys(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, JournalError> {
        let store = &self.inner.store;
        let start = match after {
            None => record::archive_key(0, 0),
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(key) => record::archive_key(key + 1, 0),
        };
        let mut keys = Vec::new();
        for item in store.archive.range(start..).keys() {
            if keys.len() >= limit {
                break;
            }
            let k = item.map_err(|e| store.err(e))?;
            match record::parse_archive_key(&k) {
                Some((key, 0)) => keys.push(key),
                Some(_) => {}
                // Past the entries: the expiry index follows them.
                None => break,
            }
        }
        Ok(keys)
    }

    /// Asks the writer to snapshot after every fact appended so far, and
    /// waits for it (tests, shutdown).
    pub fn snapshot_now(&self) -> Result<(), JournalError> {
        self.ask_writer(Msg::Snapshot)
    }

    /// Sends the writer a request carrying a reply channel, after every
    /// append made so far, and waits for its answer.
    pub(crate) fn ask_writer<T>(
        &self,
        request: impl FnOnce(crossbeam_channel::Sender<Result<T, JournalError>>) -> Msg<M::Fact>,
    ) -> Result<T, JournalError> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        {
            let app = self
                .inner
                .appender
                .lock()
                .map_err(|_| JournalError::Failed {
                    what: "an append panicked halfway".into(),
                })?;
            let Some(tx) = app.tx.as_ref() else {
                return Err(JournalError::Closed);
            };
            if tx.send(request(reply_tx)).is_err() {
                return Err(self.inner.shared.gone());
            }
        }
        match reply_rx.recv() {
            Ok(result) => result,
            Err(_) => Err(self.inner.shared.gone()),
        }
    }

    /// Stops taking facts, lets the writer commit every fact queued so far,
    /// fsyncs and joins it. Idempotent across clones: the first `close` (or
    /// dropping the last handle) does it, later ones return the same result;
    /// `Err` when the journal had failed.
    pub fn close(self) -> Result<(), JournalError> {
        self.inner.shutdown()
    }
}

impl<M: Model> Inner<M> {
    fn shutdown(&self) -> Result<(), JournalError> {
        // The writer commits what is queued, then sees the channel closed.
        if let Ok(mut app) = self.appender.lock() {
            app.tx = None;
        }
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = writer.take() {
            // The last handle may drop on the writer thread itself (one held
            // by `on_durable`): it is ending anyway, and cannot join itself.
            let on_writer = handle.thread().id() == std::thread::current().id();
            if !on_writer && handle.join().is_err() {
                self.shared
                    .fail("the journal writer thread panicked".into());
            }
        }
        match self.shared.failure() {
            Some(failed) => Err(failed),
            None => Ok(()),
        }
    }
}

impl<M: Model> Drop for Inner<M> {
    fn drop(&mut self) {
        // A failure was already reported through `on_durable`.
        let _ = self.shutdown();
    }
}

/// A copy of `model` through the snapshot codec.
fn roundtrip<M: Model>(store: &Store, model: &M, seq: Seq) -> Result<M, JournalError> {
    let bytes = record::encode(model).map_err(|e| JournalError::Encode {
        at: Location::Snapshot { seq },
        what: e.to_string(),
    })?;
    record::decode(&bytes).map_err(|e| {
        store.corrupt(
            Location::Snapshot { seq },
            format!("the model does not decode what it encodes: {e}"),
        )
    })
}

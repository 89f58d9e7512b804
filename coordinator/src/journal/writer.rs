//! The writer thread: group commit, the mirror, the archive, snapshots
//! (steps 2-7 of the write path in the module doc).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::record::{self, BlockWriter, BLOCK_BYTES, MAX_FACT_BYTES};
use super::recover::META_SNAPSHOT_SEQ;
use super::{JournalError, Location, Model, OnDurable, Seq, Shared, Store, Sync};

/// What the handles send the writer.
pub(crate) enum Msg<F> {
    /// The facts of one append, which reach the disk together.
    Append(Vec<F>),
    /// Snapshot after everything before this message, then answer.
    Snapshot(Sender<Result<(), JournalError>>),
    /// Export the state after everything before this message (a backup).
    Export(Sender<Result<super::JournalExport, JournalError>>),
}

/// What ended a gathering of facts.
enum Then {
    /// Nothing waiting: commit and wait for more.
    Wait,
    /// A snapshot was asked for after these facts.
    Snapshot(Sender<Result<(), JournalError>>),
    /// An export was asked for after these facts.
    Export(Sender<Result<super::JournalExport, JournalError>>),
    /// Every handle is gone: commit and stop.
    Stop,
}

/// The writer thread's state.
pub(crate) struct Writer<M: Model> {
    pub store: Store,
    pub sync: Sync,
    pub max_batch: usize,
    pub snapshot_every_facts: u64,
    pub archive_retention_ms: u64,
    /// The model, folded up to `last_seq`, finished entries taken out.
    pub mirror: M,
    /// The last seq written.
    pub last_seq: Seq,
    /// The current snapshot's seq (0: none).
    pub snapshot_seq: Seq,
    /// Facts written since the current snapshot.
    pub since_snapshot: u64,
    /// Reused buffer for encoding one fact.
    pub scratch: Vec<u8>,
    pub rx: Receiver<Msg<M::Fact>>,
    pub shared: Arc<Shared>,
    pub on_durable: OnDurable,
}

/// Tells the handles the writer is gone, however it ends (a panic in the
/// model's `apply` included), so no one waits for it forever.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("the journal writer thread panicked".into());
        }
        self.0.exited();
    }
}

impl<M: Model> Writer<M> {
    /// The thread's body.
    pub fn run(mut self) {
        let _guard = ExitGuard(Arc::clone(&self.shared));
        if let Err(e) = self.serve() {
            tracing::error!(dir = %self.store.dir.display(), "journal failed: {e}");
            let what = e.to_string();
            // The callback hears it before any handle can see it.
            (self.on_durable)(Err(e));
            self.shared.fail(what);
        }
        // Dropping the receiver here makes every blocked or later append fail.
    }

    fn serve(&mut self) -> Result<(), JournalError> {
        let mut appends = Vec::new();
        while let Ok(first) = self.rx.recv() {
            let then = self.gather(first, &mut appends);
            if !appends.is_empty() {
                self.commit(&mut appends)?;
            }
            match then {
                Then::Wait => {}
                Then::Snapshot(reply) => {
                    let result = self.snapshot();
                    let answer = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(JournalError::Failed {
                            what: e.to_string(),
                        }),
                    };
                    // The asker may have given up; nothing to tell then.
                    let _ = reply.send(answer);
                    result?;
                }
                Then::Export(reply) => {
                    // A failed export (it only reads) leaves the journal
                    // running; the asker hears why.
                    let _ = reply.send(super::export::take(
                        &self.store,
                        &self.mirror,
                        self.last_seq,
                    ));
                }
                Then::Stop => break,
            }
        }
        // Archive writes and clean-up since the last commit.
        self.store.flush()
    }

    /// Takes `first` and whatever else waits, whole appends, until they
    /// hold `max_batch` facts; gives their room in the queue back.
    fn gather(&self, first: Msg<M::Fact>, appends: &mut Vec<Vec<M::Fact>>) -> Then {
        let mut msg = first;
        let mut facts = 0;
        let then = loop {
            match msg {
                Msg::Snapshot(reply) => break Then::Snapshot(reply),
                Msg::Export(reply) => break Then::Export(reply),
                Msg::Append(append) => {
                    facts += append.len();
                    appends.push(append);
                }
            }
            if facts >= self.max_batch {
                break Then::Wait;
            }
            match self.rx.try_recv() {
                Ok(m) => msg = m,
                Err(TryRecvError::Empty) => break Then::Wait,
                Err(TryRecvError::Disconnected) => break Then::Stop,
            }
        };
        if facts > 0 {
            self.shared.release(facts as u64);
        }
        then
    }

    /// Writes `appends` to the log, fsyncs, publishes, folds them into the
    /// mirror and archives what finished.
    fn commit(&mut self, appends: &mut Vec<Vec<M::Fact>>) -> Result<(), JournalError> {
        let first = self.last_seq + 1;
        let mut next = first;
        let mut block = BlockWriter::default();
        let started = std::time::Instant::now();
        match self.sync {
            Sync::Group => {
                let mut batch = sled::Batch::default();
                let mut block_first = first;
                for append in appends.iter() {
                    for fact in append {
                        encode_fact::<M>(&mut self.scratch, &mut block, next, fact)?;
                        next += 1;
                    }
                    // Blocks end only between appends.
                    if block.bytes() >= BLOCK_BYTES {
                        batch.insert(&record::log_key(block_first)[..], block.seal());
                        block_first = next;
                    }
                }
                if block.count() > 0 {
                    batch.insert(&record::log_key(block_first)[..], block.seal());
                }
                self.store
                    .log
                    .apply_batch(batch)
                    .map_err(|e| self.store.err(e))?;
                self.store.flush()?;
                crate::metrics::global().journal_committed(&self.store.dir, started.elapsed());
                self.durable(next - 1);
            }
            Sync::PerFact => {
                for fact in appends.iter().flatten() {
                    encode_fact::<M>(&mut self.scratch, &mut block, next, fact)?;
                    self.store
                        .log
                        .insert(record::log_key(next), block.seal())
                        .map_err(|e| self.store.err(e))?;
                    self.store.flush()?;
                    self.durable(next);
                    next += 1;
                }
            }
        }
        for fact in appends.drain(..).flatten() {
            self.mirror.apply(&fact);
        }
        // Not flushed here: the next fsync carries it, and until a snapshot
        // (which fsyncs first) the log still holds the facts behind it.
        let archive = self.store.archive_batch(self.mirror.take_finished())?;
        self.store
            .archive
            .apply_batch(archive)
            .map_err(|e| self.store.err(e))?;
        self.since_snapshot += next - first;
        if self.since_snapshot >= self.snapshot_every_facts {
            self.snapshot()?;
        }
        Ok(())
    }

    /// Publishes `seq` as durable: the watermark first (so the callback
    /// reads it), then the callback, then `wait_durable` callers wake.
    fn durable(&mut self, seq: Seq) {
        self.last_seq = seq;
        self.shared
            .durable
            .store(seq, std::sync::atomic::Ordering::Release);
        (self.on_durable)(Ok(seq));
        self.shared.wake();
    }

    /// Step 7 of the write path: the mirror at `last_seq` becomes the
    /// current snapshot, then the log before it goes.
    fn snapshot(&mut self) -> Result<(), JournalError> {
        let seq = self.last_seq;
        self.since_snapshot = 0;
        if seq != self.snapshot_seq {
            let at = Location::Snapshot { seq };
            let bytes = record::encode(&self.mirror).map_err(|e| JournalError::Encode {
                at,
                what: e.to_string(),
            })?;
            // 7.1: the whole snapshot, then fsync.
            let mut batch = sled::Batch::default();
            let header = record::PartsHeader::of(seq, &bytes);
            super::write_parts(&mut batch, &seq.to_be_bytes(), header, &bytes);
            self.store
                .snapshot
                .apply_batch(batch)
                .map_err(|e| self.store.err(e))?;
            self.store.flush()?;
            // 7.2: make it current, then fsync.
            self.store
                .meta
                .insert(META_SNAPSHOT_SEQ, &seq.to_be_bytes()[..])
                .map_err(|e| self.store.err(e))?;
            self.store.flush()?;
            let old = self.snapshot_seq;
            self.snapshot_seq = seq;
            // 7.3: what the new snapshot replaces.
            self.remove_before(seq, old)?;
        }
        self.purge_archive()
    }

    /// Removes the log up to `seq` and the snapshot at `old`. A snapshot is
    /// taken between commits and a block never spans two commits, so every
    /// block whose key is at most `seq` ends at most at `seq`.
    fn remove_before(&self, seq: Seq, old: Seq) -> Result<(), JournalError> {
        let store = &self.store;
        let mut log = sled::Batch::default();
        for key in store.log.range(..=record::log_key(seq)).keys() {
            log.remove(key.map_err(|e| store.err(e))?);
        }
        store.log.apply_batch(log).map_err(|e| store.err(e))?;
        let mut snapshot = sled::Batch::default();
        let old_parts = record::snapshot_key(old, 0)..record::snapshot_key(old + 1, 0);
        for key in store.snapshot.range(old_parts).keys() {
            snapshot.remove(key.map_err(|e| store.err(e))?);
        }
        store
            .snapshot
            .apply_batch(snapshot)
            .map_err(|e| store.err(e))
    }

    /// Removes archive entries finished more than the retention ago.
    fn purge_archive(&self) -> Result<(), JournalError> {
        let store = &self.store;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let Some(cutoff_ms) = now_ms.checked_sub(self.archive_retention_ms) else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        let end = record::expiry_key(cutoff_ms, 0);
        for item in store
            .archive
            .range(&record::expiry_start()[..]..&end[..])
            .keys()
        {
            let index_key = item.map_err(|e| store.err(e))?;
            batch.remove(index_key.clone());
            let Some((finished_at_ms, key)) = record::parse_expiry_key(&index_key) else {
                continue;
            };
            // An entry archived again later has a newer index entry of its
            // own; only the entry this index entry is about goes.
            let prefix = record::archive_prefix(key);
            match store.read_parts_header(&store.archive, &prefix, Location::Archive { key }) {
                Ok(Some(header)) if header.tag == finished_at_ms => {
                    store.remove_parts(&store.archive, &prefix, &mut batch)?
                }
                Ok(_) => {}
                // Kept for a person to look at: reading it names it.
                Err(e) => tracing::warn!("journal: not purging a damaged entry: {e}"),
            }
        }
        store.archive.apply_batch(batch).map_err(|e| store.err(e))
    }
}

/// Adds a fact to `block` as one record, its size checked before it is
/// written.
fn encode_fact<M: Model>(
    scratch: &mut Vec<u8>,
    block: &mut BlockWriter,
    seq: Seq,
    fact: &M::Fact,
) -> Result<(), JournalError> {
    let kind = M::kind(fact);
    let at = Location::Log {
        seq,
        kind: Some(kind),
    };
    scratch.clear();
    record::encode_into(scratch, fact).map_err(|e| JournalError::Encode {
        at: at.clone(),
        what: e.to_string(),
    })?;
    if scratch.len() > MAX_FACT_BYTES {
        return Err(JournalError::Encode {
            at,
            what: format!(
                "{} bytes, over the {MAX_FACT_BYTES}-byte limit",
                scratch.len()
            ),
        });
    }
    block.push(kind, scratch);
    Ok(())
}

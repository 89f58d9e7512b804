//! Online export of a journal's state at one durable point, and the import
//! that builds a new journal from such an export (`crate::backup` uses both).
//!
//! # Why through the writer thread
//! sled cannot be opened by a second process, and a file copy of a live
//! sled tree is not a consistent state. The writer thread, however, holds
//! the model folded up to its last durable seq (the mirror) and is the only
//! thread that writes the archive: an export asked over its channel is
//! answered after every append queued before it is committed and before any
//! queued after it, so the state it returns is exactly the log up to one
//! seq. Appends are whole (an event's facts are one append), so that seq
//! falls between two of the caller's events.
//!
//! The export holds the writer only while it encodes the mirror (what a
//! snapshot does anyway) and lists the archive's keys; the archived entries
//! themselves are read afterwards, one at a time, from the live tree: they
//! are written once and never changed, and one expiring meanwhile would have
//! expired in the restored journal as well.
//!
//! # Import
//! [`Import`] writes a fresh journal directory: the format, the incarnation,
//! the state as the current snapshot at the export's seq, then the archived
//! entries, and fsyncs. Opening it afterwards is an ordinary recovery (the
//! snapshot, an empty log after it); the start it counts moves the
//! incarnation past the imported one.

use std::path::Path;

use super::record;
use super::recover::{META_FORMAT, META_INCARNATION, META_SNAPSHOT_SEQ};
use super::writer::Msg;
use super::{Journal, JournalError, Location, Model, Seq, Store, FORMAT_VERSION};

/// A journal's state at one durable point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalExport {
    /// The last seq folded into `state`: every fact up to it was durable
    /// when the export was taken, and none after it is in `state`.
    pub seq: Seq,
    /// The incarnation (start count) of the run that exported.
    pub incarnation: u32,
    /// The model, encoded as a snapshot stores it (JSON).
    pub state: Vec<u8>,
    /// Keys of the archived entries at that point, increasing.
    pub archived: Vec<u64>,
}

/// A journal that can be exported, whatever its model: what the backup
/// holds for each of the coordinator's journals.
pub trait Exportable: Send + Sync {
    /// The state at one durable point (see the module doc).
    fn export(&self) -> Result<JournalExport, JournalError>;

    /// An archived entry: its `finished_at_ms` and bytes, `None` once it
    /// has expired.
    fn archived_entry(&self, key: u64) -> Result<Option<(u64, Vec<u8>)>, JournalError>;
}

impl<M: Model> Exportable for Journal<M>
where
    Journal<M>: Send + Sync,
{
    fn export(&self) -> Result<JournalExport, JournalError> {
        self.ask_writer(Msg::Export)
    }

    fn archived_entry(&self, key: u64) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        let store = &self.inner.store;
        store.read_parts(
            &store.archive,
            &record::archive_prefix(key),
            Location::Archive { key },
        )
    }
}

/// Takes the export on the writer thread, between two commits.
pub(crate) fn take<M: Model>(
    store: &Store,
    mirror: &M,
    seq: Seq,
) -> Result<JournalExport, JournalError> {
    let state = record::encode(mirror).map_err(|e| JournalError::Encode {
        at: Location::Snapshot { seq },
        what: e.to_string(),
    })?;
    let at = Location::Meta {
        key: META_INCARNATION,
    };
    let incarnation = match store.meta.get(META_INCARNATION).map_err(|e| store.err(e))? {
        Some(v) => u32::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| store.corrupt(at, "not a u32"))?,
        ),
        None => 0,
    };
    let mut archived = Vec::new();
    for item in store.archive.range(record::archive_key(0, 0)..).keys() {
        let k = item.map_err(|e| store.err(e))?;
        match record::parse_archive_key(&k) {
            Some((key, 0)) => archived.push(key),
            Some(_) => {}
            // Past the entries: the expiry index follows them.
            None => break,
        }
    }
    Ok(JournalExport {
        seq,
        incarnation,
        state,
        archived,
    })
}

/// A new journal being written from an export.
pub struct Import {
    store: Store,
}

impl Import {
    /// Creates the journal in `dir` (which must hold no journal yet) with
    /// `state` as its current snapshot at `seq` and `incarnation` as its
    /// start count. `state` is checked to decode as `M` first.
    pub fn create<M: Model>(
        dir: &Path,
        seq: Seq,
        incarnation: u32,
        state: &[u8],
    ) -> Result<Import, JournalError> {
        let store = Store::open(dir)?;
        if store
            .meta
            .get(META_FORMAT)
            .map_err(|e| store.err(e))?
            .is_some()
            || !store.log.is_empty()
            || !store.snapshot.is_empty()
        {
            return Err(store.corrupt(
                Location::Meta { key: META_FORMAT },
                "an import goes into an empty directory, and this one holds a journal",
            ));
        }
        let _: M = record::decode(state).map_err(|e| JournalError::Encode {
            at: Location::Snapshot { seq },
            what: format!("the exported state does not decode: {e}"),
        })?;
        if seq > 0 {
            let mut batch = sled::Batch::default();
            let header = record::PartsHeader::of(seq, state);
            super::write_parts(&mut batch, &seq.to_be_bytes(), header, state);
            store
                .snapshot
                .apply_batch(batch)
                .map_err(|e| store.err(e))?;
        }
        let mut meta = sled::Batch::default();
        meta.insert(META_FORMAT, &[FORMAT_VERSION][..]);
        meta.insert(META_INCARNATION, &incarnation.to_be_bytes()[..]);
        if seq > 0 {
            meta.insert(META_SNAPSHOT_SEQ, &seq.to_be_bytes()[..]);
        }
        store.meta.apply_batch(meta).map_err(|e| store.err(e))?;
        Ok(Import { store })
    }

    /// Adds an archived entry.
    pub fn archive(
        &mut self,
        key: u64,
        finished_at_ms: u64,
        bytes: Vec<u8>,
    ) -> Result<(), JournalError> {
        let batch = self
            .store
            .archive_batch(vec![(key, bytes, finished_at_ms)])?;
        self.store
            .archive
            .apply_batch(batch)
            .map_err(|e| self.store.err(e))
    }

    /// Makes everything written durable (fsync) and closes the directory.
    pub fn finish(self) -> Result<(), JournalError> {
        self.store.flush()
    }
}

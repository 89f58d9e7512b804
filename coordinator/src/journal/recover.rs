//! Opening: read and check everything, then (only if all of it is sound)
//! drop a torn last block, tidy what an interrupted snapshot left, archive
//! what the replay finished, count the incarnation, and fsync.

use super::record::{self, Block, Checked, MAX_FACT_BYTES};
use super::{JournalError, Location, Model, Seq, Store, FORMAT_VERSION};

/// `meta` key of the format version (u8).
pub(crate) const META_FORMAT: &str = "format";
/// `meta` key of the incarnation (u32 BE).
pub(crate) const META_INCARNATION: &str = "incarnation";
/// `meta` key of the current snapshot's seq (u64 BE).
pub(crate) const META_SNAPSHOT_SEQ: &str = "snapshot_seq";

/// What opening found, for the writer and the caller.
pub(crate) struct Opened<M> {
    /// The model, finished entries taken out.
    pub mirror: M,
    pub incarnation: u32,
    pub last_seq: Seq,
    pub snapshot_seq: Seq,
    pub facts_replayed: u64,
    pub torn_dropped: bool,
}

/// A torn last block: dropped, not an error.
struct Torn {
    /// The block's key, its first seq.
    seq: Seq,
    what: String,
}

/// Opens the journal's state. Reads and checks first; writes only when
/// everything read is sound, so a damaged journal is left as it was.
pub(crate) fn recover<M: Model>(store: &Store) -> Result<Opened<M>, JournalError> {
    // Read.
    let format = read_format(store)?;
    let incarnation = read_meta(store, META_INCARNATION, |b| {
        Some(u32::from_be_bytes(b.try_into().ok()?))
    })?
    .unwrap_or(0);
    let snapshot_seq = read_meta(store, META_SNAPSHOT_SEQ, record::parse_u64_key)?;
    let mut mirror = match snapshot_seq {
        Some(seq) => load_snapshot::<M>(store, seq)?,
        None => M::default(),
    };
    let base = snapshot_seq.unwrap_or(0);
    let (last_seq, torn) = replay(store, base, &mut mirror)?;
    let stale_log = stale_log_keys(store, base)?;
    let stale_snapshot = stale_snapshot_keys(store, snapshot_seq)?;
    let next_incarnation = incarnation.checked_add(1).ok_or_else(|| {
        store.corrupt(
            Location::Meta {
                key: META_INCARNATION,
            },
            "the start count is at its maximum",
        )
    })?;

    // Write: everything below is fsynced together before returning.
    let mut log = sled::Batch::default();
    if let Some(torn) = &torn {
        tracing::warn!(
            dir = %store.dir.display(),
            seq = torn.seq,
            "journal: dropping the torn last block of facts (a crash interrupted the commit that \
             wrote it, so none of its facts was acknowledged): {}",
            torn.what
        );
        log.remove(&record::log_key(torn.seq)[..]);
    }
    for key in stale_log {
        log.remove(key);
    }
    store.log.apply_batch(log).map_err(|e| store.err(e))?;
    let mut snapshot = sled::Batch::default();
    for key in stale_snapshot {
        snapshot.remove(key);
    }
    store
        .snapshot
        .apply_batch(snapshot)
        .map_err(|e| store.err(e))?;
    // Entries the replay finished: their archive writes may not have been
    // flushed before the crash (those that were are left as they are).
    let archive = store.archive_batch(mirror.take_finished())?;
    store
        .archive
        .apply_batch(archive)
        .map_err(|e| store.err(e))?;
    if format.is_none() {
        store
            .meta
            .insert(META_FORMAT, &[FORMAT_VERSION][..])
            .map_err(|e| store.err(e))?;
    }
    store
        .meta
        .insert(META_INCARNATION, &next_incarnation.to_be_bytes()[..])
        .map_err(|e| store.err(e))?;
    store.flush()?;
    Ok(Opened {
        mirror,
        incarnation: next_incarnation,
        last_seq,
        snapshot_seq: base,
        facts_replayed: last_seq - base,
        torn_dropped: torn.is_some(),
    })
}

/// The format marker; `None` for a fresh journal.
fn read_format(store: &Store) -> Result<Option<u8>, JournalError> {
    let at = Location::Meta { key: META_FORMAT };
    let Some(value) = store.meta.get(META_FORMAT).map_err(|e| store.err(e))? else {
        // Written with the first incarnation, before any fact: a journal
        // holding records without it has lost its meta tree.
        let empty = store.log.is_empty() && store.snapshot.is_empty();
        if !empty {
            return Err(store.corrupt(at, "missing, yet the journal holds records"));
        }
        return Ok(None);
    };
    match *value {
        [version] if version > FORMAT_VERSION => Err(store.unknown_version(at, version)),
        [version] if version > 0 => Ok(Some(version)),
        _ => Err(store.corrupt(at, format!("{value:?} is not a format version"))),
    }
}

/// A `meta` value read with `parse`; `None` when absent.
fn read_meta<T>(
    store: &Store,
    key: &'static str,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> Result<Option<T>, JournalError> {
    let Some(value) = store.meta.get(key).map_err(|e| store.err(e))? else {
        return Ok(None);
    };
    match parse(&value) {
        Some(v) => Ok(Some(v)),
        None => Err(store.corrupt(
            Location::Meta { key },
            format!("{} bytes that do not read as its value", value.len()),
        )),
    }
}

/// Reads and checks the snapshot at `seq` and decodes the model from it.
fn load_snapshot<M: Model>(store: &Store, seq: Seq) -> Result<M, JournalError> {
    let at = Location::Snapshot { seq };
    let Some((tag, bytes)) = store.read_parts(&store.snapshot, &seq.to_be_bytes(), at.clone())?
    else {
        return Err(store.corrupt(at, "meta names it as current, but its header is missing"));
    };
    if tag != seq {
        return Err(store.corrupt(at, format!("its header says seq {tag}")));
    }
    record::decode(&bytes).map_err(|e| store.corrupt(at, format!("the model does not decode: {e}")))
}

/// Folds the log after `base` into `model`. Returns the last whole seq and
/// the torn last block, if any.
fn replay<M: Model>(
    store: &Store,
    base: Seq,
    model: &mut M,
) -> Result<(Seq, Option<Torn>), JournalError> {
    let mut expected = base + 1;
    let mut log = store.log.range(record::log_key(base + 1)..);
    while let Some(item) = log.next() {
        let (key, value) = item.map_err(|e| store.err(e))?;
        let at = |seq, kind| Location::Log { seq, kind };
        let Some(seq) = record::parse_u64_key(&key) else {
            return Err(store.corrupt(
                at(expected, None),
                format!("in its place, a key of {} bytes instead of 8", key.len()),
            ));
        };
        if seq != expected {
            return Err(store.corrupt(
                at(expected, None),
                format!(
                    "it is missing: the log goes from seq {} to {seq}",
                    expected - 1
                ),
            ));
        }
        let (count, records) = match record::check_block(&value) {
            Block::Valid { count, records } => (count, records),
            Block::Newer { version } => return Err(store.unknown_version(at(seq, None), version)),
            Block::Damaged { what } => {
                let what = format!("the block of facts starting there: {what}");
                return match log.next() {
                    None => Ok((seq - 1, Some(Torn { seq, what }))),
                    Some(Err(e)) => Err(store.err(e)),
                    Some(Ok(_)) => Err(store.corrupt(
                        at(seq, None),
                        format!("{what}; later blocks follow, so this is not a torn write"),
                    )),
                };
            }
        };
        if count == 0 {
            return Err(store.corrupt(at(seq, None), "an empty block of facts"));
        }
        // The block's checksum holds, so it was written whole: any fault
        // inside it is corruption, not a torn write.
        let mut rest = records;
        for seq in seq..seq + u64::from(count) {
            let (checked, after) = record::check_first(rest, MAX_FACT_BYTES);
            let kind_byte = rest.get(1).copied();
            rest = after;
            let what = match checked {
                Checked::Newer { version } => {
                    return Err(store.unknown_version(at(seq, kind_byte), version));
                }
                Checked::Damaged { kind, what } => (kind, what),
                Checked::Valid { kind, payload } => match record::decode::<M::Fact>(payload) {
                    Ok(fact) if M::kind(&fact) == kind => {
                        model.apply(&fact);
                        continue;
                    }
                    Ok(fact) => (
                        Some(kind),
                        format!(
                            "its header says kind {kind} but the fact is of kind {}",
                            M::kind(&fact)
                        ),
                    ),
                    Err(e) => (Some(kind), format!("the payload does not decode: {e}")),
                },
            };
            let (kind, what) = what;
            return Err(store.corrupt(
                at(seq, kind),
                format!("{what} (in a block whose checksum holds, so not a torn write)"),
            ));
        }
        if !rest.is_empty() {
            return Err(store.corrupt(
                at(seq, None),
                format!(
                    "the block of facts starting there has {} bytes after its {count} records",
                    rest.len()
                ),
            ));
        }
        expected = seq + u64::from(count);
    }
    Ok((expected - 1, None))
}

/// Log keys up to the snapshot: left by a crash during a snapshot's clean-up.
fn stale_log_keys(store: &Store, base: Seq) -> Result<Vec<sled::IVec>, JournalError> {
    let mut keys = Vec::new();
    for item in store.log.range(..record::log_key(base + 1)) {
        let (key, _) = item.map_err(|e| store.err(e))?;
        if record::parse_u64_key(&key).is_none() {
            return Err(store.corrupt(
                Location::Log {
                    seq: base,
                    kind: None,
                },
                format!("before it, a key of {} bytes instead of 8", key.len()),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Snapshot keys other than the current snapshot's: older snapshots whose
/// removal a crash interrupted, or a newer one never made current.
fn stale_snapshot_keys(
    store: &Store,
    current: Option<Seq>,
) -> Result<Vec<sled::IVec>, JournalError> {
    let mut keys = Vec::new();
    for item in store.snapshot.iter().keys() {
        let key = item.map_err(|e| store.err(e))?;
        let seq = record::parse_snapshot_key(&key).map(|(seq, _)| seq);
        if seq.is_none() || seq != current {
            keys.push(key);
        }
    }
    Ok(keys)
}

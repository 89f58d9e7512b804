//! The bytes on disk: record and block framing, keys, the payload codec.
//!
//! Every record (a fact, the header of a value stored in parts: a snapshot,
//! an archive entry) is framed the same way:
//!
//! ```text
//! [format version u8][kind u8][payload length u32 LE][crc32 of payload u32 LE][payload]
//! ```
//!
//! A log value is a *block*: the records of one or more whole appends, with
//! consecutive seqs starting at the block's key, behind a header whose
//! checksum covers the whole block:
//!
//! ```text
//! [format version u8][crc32 of the rest u32 LE][record count u32 LE][records...]
//! ```
//!
//! One sled value per block rather than per fact: sled's cost per key (CPU
//! on insert and on iteration, and several hundred bytes of space) was what
//! limited the journal, not the fsync or the codec. [`frame`] and
//! [`BlockWriter`] write; [`check`], [`check_first`] and [`check_block`]
//! read back and say, without decoding the payload, whether what they read
//! is whole, from a newer format, or damaged. Whether damage is a torn write
//! or corruption depends on where it is, which only the reader of the whole
//! log knows (`recover`).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format this code writes and the newest it reads. A change to the
/// framing, the keys or the payload codec bumps it, so an older Drover
/// refuses a newer journal by name instead of misreading it.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes of a record's header: version, kind, length, checksum.
pub const HEADER_BYTES: usize = 10;

/// The largest fact (encoded) a log record may carry. Facts are small (a few
/// hundred bytes); one near this size is a bug upstream, and refusing it
/// keeps a single sled value far under what sled handles comfortably. A
/// length field above it is read as damage, not as a reason to allocate.
pub const MAX_FACT_BYTES: usize = 1 << 20;

/// The largest archive entry: a finished job's record, which grows with its
/// stored segments (about 150 bytes each), so 64 MiB is several hundred
/// thousand segments. The writer refuses a larger one (the journal fails
/// and names it) rather than let one entry stall every commit behind it.
pub const MAX_ARCHIVE_BYTES: usize = 64 << 20;

/// The largest parts header payload (it is 24 bytes).
pub const MAX_HEADER_BYTES: usize = 64;

/// The most bytes the journal puts in one sled value (a snapshot's or an
/// archive entry's part; a block of facts closes at this size). sled 0.34
/// writes a tree node whose serialized size passes a quarter of its 512 KiB
/// segment to a separate blob file, which its flush does not fsync and which
/// costs the journal tens to hundreds of milliseconds to sync itself. A leaf
/// holds at most 17 values before it splits, so values of at most 4 KiB keep
/// every node near 70 KiB, in sled's own log.
pub const PART_BYTES: usize = 4 << 10;

/// The kind byte of records that are not facts (snapshot headers, archive
/// entries).
pub const KIND_INTERNAL: u8 = 0;

/// Frames `payload` as one record. The caller has checked the length
/// against the limit for its kind of record.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame_into(&mut out, kind, payload);
    out
}

/// Appends `payload` framed as one record to `out`.
pub fn frame_into(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    assert!(payload.len() <= u32::MAX as usize, "payload over u32");
    out.push(FORMAT_VERSION);
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What [`check`] found in a stored value.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked<'a> {
    /// Whole: header, length and checksum agree.
    Valid {
        /// The fact's kind.
        kind: u8,
        /// The payload, checksum verified.
        payload: &'a [u8],
    },
    /// Written by a newer format than [`FORMAT_VERSION`]. Never treated as
    /// damage: dropping a newer Drover's record would lose data silently.
    Newer {
        /// The version byte found.
        version: u8,
    },
    /// The header, length or checksum is wrong.
    Damaged {
        /// The kind byte, when the header got that far.
        kind: Option<u8>,
        /// What is wrong, in words.
        what: String,
    },
}

/// Reads one whole value as exactly one record (the check after reading
/// that pairs with the one before writing); a length over
/// `max_payload_bytes` is damage.
pub fn check(value: &[u8], max_payload_bytes: usize) -> Checked<'_> {
    match check_first(value, max_payload_bytes) {
        (Checked::Valid { kind, .. }, rest) if !rest.is_empty() => Checked::Damaged {
            kind: Some(kind),
            what: format!("{} bytes follow the record", rest.len()),
        },
        (checked, _) => checked,
    }
}

/// Reads the record at the front of `bytes`; returns what it found and the
/// bytes after it (empty unless the record is valid).
pub fn check_first(bytes: &[u8], max_payload_bytes: usize) -> (Checked<'_>, &[u8]) {
    let damaged = |kind, what| (Checked::Damaged { kind, what }, &[][..]);
    let Some(&version) = bytes.first() else {
        return damaged(None, "the record is empty".into());
    };
    if version > FORMAT_VERSION {
        return (Checked::Newer { version }, &[]);
    }
    let kind = bytes.get(1).copied();
    if version == 0 {
        return damaged(kind, "format version 0 was never written".into());
    }
    if bytes.len() < HEADER_BYTES {
        return damaged(
            kind,
            format!(
                "the record has {} bytes, fewer than its {HEADER_BYTES}-byte header",
                bytes.len()
            ),
        );
    }
    let len = u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[6..10].try_into().expect("4 bytes"));
    let after_header = &bytes[HEADER_BYTES..];
    if len > max_payload_bytes {
        return damaged(
            kind,
            format!(
                "the header claims {len} payload bytes, over the {max_payload_bytes}-byte limit"
            ),
        );
    }
    if after_header.len() < len {
        return damaged(
            kind,
            format!(
                "the header claims {len} payload bytes but {} follow",
                after_header.len()
            ),
        );
    }
    let (payload, rest) = after_header.split_at(len);
    let actual = crc32fast::hash(payload);
    if actual != crc {
        return damaged(
            kind,
            format!(
                "checksum mismatch: the header says {crc:08x}, the payload hashes to {actual:08x}"
            ),
        );
    }
    let kind = kind.expect("checked length");
    (Checked::Valid { kind, payload }, rest)
}

/// Bytes of a block's header: version, checksum, record count.
pub const BLOCK_HEADER_BYTES: usize = 9;

/// A block is closed, at the end of an append, once it holds this many
/// bytes: a few dozen facts per sled value, which divides sled's cost per
/// key by as much, while nodes stay in sled's log (see [`PART_BYTES`]). One
/// append larger than this still goes whole into one block (a block never
/// splits an append, so after any crash an append is all there or not at
/// all).
pub const BLOCK_BYTES: usize = PART_BYTES;

/// Builds one block of records.
#[derive(Debug)]
pub struct BlockWriter {
    buf: Vec<u8>,
    count: u32,
}

impl Default for BlockWriter {
    fn default() -> Self {
        let mut buf = Vec::with_capacity(BLOCK_BYTES + BLOCK_BYTES / 4);
        buf.resize(BLOCK_HEADER_BYTES, 0);
        BlockWriter { buf, count: 0 }
    }
}

impl BlockWriter {
    /// Adds one record.
    pub fn push(&mut self, kind: u8, payload: &[u8]) {
        frame_into(&mut self.buf, kind, payload);
        self.count += 1;
    }

    /// Records so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes so far, header included.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The block's bytes, header filled in; the writer is empty again.
    pub fn seal(&mut self) -> Vec<u8> {
        let BlockWriter { mut buf, count } = std::mem::take(self);
        buf[0] = FORMAT_VERSION;
        buf[5..9].copy_from_slice(&count.to_le_bytes());
        let crc = crc32fast::hash(&buf[5..]);
        buf[1..5].copy_from_slice(&crc.to_le_bytes());
        buf
    }
}

/// What [`check_block`] found in a log value.
#[derive(Debug, PartialEq, Eq)]
pub enum Block<'a> {
    /// The checksum covers it: `count` records follow in `records`.
    Valid {
        /// Records in the block.
        count: u32,
        /// The records, each framed.
        records: &'a [u8],
    },
    /// Written by a newer format.
    Newer {
        /// The version byte found.
        version: u8,
    },
    /// The header or the checksum is wrong.
    Damaged {
        /// What is wrong, in words.
        what: String,
    },
}

/// Reads a block's header and checksum back.
pub fn check_block(value: &[u8]) -> Block<'_> {
    let Some(&version) = value.first() else {
        return Block::Damaged {
            what: "the block is empty".into(),
        };
    };
    if version > FORMAT_VERSION {
        return Block::Newer { version };
    }
    if version == 0 {
        return Block::Damaged {
            what: "format version 0 was never written".into(),
        };
    }
    if value.len() < BLOCK_HEADER_BYTES {
        return Block::Damaged {
            what: format!(
                "the block has {} bytes, fewer than its {BLOCK_HEADER_BYTES}-byte header",
                value.len()
            ),
        };
    }
    let crc = u32::from_le_bytes(value[1..5].try_into().expect("4 bytes"));
    let actual = crc32fast::hash(&value[5..]);
    if actual != crc {
        return Block::Damaged {
            what: format!(
                "checksum mismatch: the header says {crc:08x}, the block hashes to {actual:08x}"
            ),
        };
    }
    let count = u32::from_le_bytes(value[5..9].try_into().expect("4 bytes"));
    Block::Valid {
        count,
        records: &value[BLOCK_HEADER_BYTES..],
    }
}

/// The payload codec for facts and snapshots. JSON: a record stays readable
/// with a tool, and the benchmark shows it is not the bottleneck (sled's
/// insert and the fsync are).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

/// Appends `value` encoded to `out`.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, value)
}

/// Decodes what [`encode`] wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Key of a log record: the seq, big-endian, so sled's order is seq order.
pub fn log_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Reads a log key back; `None` when it is not 8 bytes.
pub fn parse_u64_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Key of a snapshot's part: the snapshot's seq, then the part number, both
/// big-endian (see [`PartsHeader`]).
pub fn snapshot_key(seq: u64, part: u32) -> Vec<u8> {
    parts_key(&seq.to_be_bytes(), part)
}

/// `prefix` then `part`, big-endian: the key of one part of a value stored
/// in parts, so a scan of `prefix` reads the parts in order.
pub fn parts_key(prefix: &[u8], part: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 4);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&part.to_be_bytes());
    key
}

/// Reads a snapshot key back into (seq, part); `None` when it is not 12
/// bytes.
pub fn parse_snapshot_key(key: &[u8]) -> Option<(u64, u32)> {
    let key: [u8; 12] = key.try_into().ok()?;
    Some((
        u64::from_be_bytes(key[..8].try_into().expect("8 bytes")),
        u32::from_be_bytes(key[8..].try_into().expect("4 bytes")),
    ))
}

/// The header of a value stored in parts (a snapshot, an archive entry):
/// part 0 under its prefix, a framed record; parts 1..=`parts` hold the
/// value's bytes, at most [`PART_BYTES`] each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartsHeader {
    /// The snapshot's seq, or the archive entry's `finished_at_ms`.
    pub tag: u64,
    /// Parts 1..=parts hold the value.
    pub parts: u32,
    /// Bytes of the value, all parts together.
    pub total_bytes: u64,
    /// crc32 of the value's bytes, all parts in order.
    pub crc: u32,
}

/// Bytes of an encoded [`PartsHeader`] payload.
const PARTS_HEADER_BYTES: usize = 8 + 4 + 8 + 4;

impl PartsHeader {
    /// The header for `bytes`, cut into [`PART_BYTES`] parts.
    pub fn of(tag: u64, bytes: &[u8]) -> PartsHeader {
        PartsHeader {
            tag,
            parts: bytes.len().div_ceil(PART_BYTES) as u32,
            total_bytes: bytes.len() as u64,
            crc: crc32fast::hash(bytes),
        }
    }

    /// The header as a framed record.
    pub fn to_record(self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(PARTS_HEADER_BYTES);
        payload.extend_from_slice(&self.tag.to_le_bytes());
        payload.extend_from_slice(&self.parts.to_le_bytes());
        payload.extend_from_slice(&self.total_bytes.to_le_bytes());
        payload.extend_from_slice(&self.crc.to_le_bytes());
        frame(KIND_INTERNAL, &payload)
    }

    /// Reads a header's payload (already checked by [`check`]).
    pub fn from_payload(payload: &[u8]) -> Option<PartsHeader> {
        if payload.len() != PARTS_HEADER_BYTES {
            return None;
        }
        Some(PartsHeader {
            tag: u64::from_le_bytes(payload[0..8].try_into().ok()?),
            parts: u32::from_le_bytes(payload[8..12].try_into().ok()?),
            total_bytes: u64::from_le_bytes(payload[12..20].try_into().ok()?),
            crc: u32::from_le_bytes(payload[20..24].try_into().ok()?),
        })
    }
}

/// Prefix of an archive entry's key in the archive tree.
const ARCHIVE_ENTRY: u8 = b'e';
/// Prefix of an expiry index key in the archive tree; sorts after every
/// entry.
const ARCHIVE_EXPIRY: u8 = b't';

/// Key of a part of an archive entry: `e`, the entry's key, the part, all
/// big-endian (see [`PartsHeader`]).
pub fn archive_key(key: u64, part: u32) -> Vec<u8> {
    parts_key(&archive_prefix(key), part)
}

/// The prefix of an archive entry's parts.
pub fn archive_prefix(key: u64) -> [u8; 9] {
    let mut out = [0; 9];
    out[0] = ARCHIVE_ENTRY;
    out[1..].copy_from_slice(&key.to_be_bytes());
    out
}

/// Reads an archive entry's key back into (key, part); `None` for anything
/// else (the expiry index).
pub fn parse_archive_key(key: &[u8]) -> Option<(u64, u32)> {
    match key.split_first() {
        Some((&ARCHIVE_ENTRY, rest)) if rest.len() == 12 => Some((
            parse_u64_key(&rest[..8])?,
            u32::from_be_bytes(rest[8..].try_into().ok()?),
        )),
        _ => None,
    }
}

/// Key of an expiry index entry: `t`, when the entry finished, its key (all
/// big-endian), so a range scan from the start finds the oldest first.
pub fn expiry_key(finished_at_ms: u64, key: u64) -> [u8; 17] {
    let mut out = [0; 17];
    out[0] = ARCHIVE_EXPIRY;
    out[1..9].copy_from_slice(&finished_at_ms.to_be_bytes());
    out[9..].copy_from_slice(&key.to_be_bytes());
    out
}

/// Reads an expiry index key back into (finished_at_ms, key).
pub fn parse_expiry_key(key: &[u8]) -> Option<(u64, u64)> {
    match key.split_first() {
        Some((&ARCHIVE_EXPIRY, rest)) if rest.len() == 16 => {
            Some((parse_u64_key(&rest[..8])?, parse_u64_key(&rest[8..])?))
        }
        _ => None,
    }
}

/// The first key of the expiry index.
pub fn expiry_start() -> [u8; 1] {
    [ARCHIVE_EXPIRY]
}

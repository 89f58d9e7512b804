//! The spool: finished segments kept on the node's disk until the
//! coordinator has them, across lost connections and agent restarts.
//!
//! Each segment (written by the executor as `job-J-chunk-IIIII-eE.mp4`) gets
//! a *sidecar* next to it, `<segment>.json`, holding what the coordinator
//! needs to take it back ([`SegmentMeta`]). The write order makes a crash at
//! any moment safe:
//!
//! 1. the executor writes the segment and hashes it;
//! 2. [`keep`] fsyncs the segment, writes the sidecar to a temporary name,
//!    fsyncs it, renames it into place and fsyncs the directory;
//! 3. after `Stored` (or `NotNeeded`), [`discard`] deletes the sidecar first,
//!    then the segment.
//!
//! So a segment without a sidecar is one the executor had not finished or
//! the spool had already let go of, and a sidecar whose segment is missing
//! or of another size is damage: [`Spool::open`] deletes both kinds, and
//! keeps exactly the segments the coordinator may still want.
//!
//! The in-memory [`Spool`] is the index the agent keeps of those segments,
//! with the size limit; the disk work is in the free functions, which block
//! (call them on tokio's blocking pool).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use drover_protocol::{ChunkRef, SpooledSegment};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Default bound on the spool's finished segments, in bytes: about an hour of
/// 4K segments from a fast GPU, so a node rides out a long coordinator
/// outage, without filling the disk of a workstation.
pub const DEFAULT_SPOOL_LIMIT_BYTES: u64 = 20 * 1024 * 1024 * 1024;

/// Suffix of a sidecar after the segment's own name.
pub const SIDECAR_SUFFIX: &str = ".json";

/// Largest sidecar read: a few numbers and names. A larger file is not one
/// of ours.
const MAX_SIDECAR_BYTES: u64 = 16 * 1024;

/// What the spool knows of one finished segment: enough to offer it for
/// upload and to report the chunk done afterwards, after a restart too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentMeta {
    /// Job id.
    pub job: u64,
    /// Chunk index.
    pub index: u32,
    /// Attempt epoch.
    pub epoch: u32,
    /// First frame, inclusive.
    pub start: u64,
    /// Last frame, inclusive (after any shrink).
    pub end: u64,
    /// Size of the segment file.
    pub size_bytes: u64,
    /// BLAKE3 of the segment file, hex.
    pub hash: String,
    /// FFmpeg encoder that wrote it.
    pub encoder: String,
    /// Adapter that rendered it (for the `Done` message).
    pub adapter: String,
    /// Render plus encode time (for the `Done` message).
    pub elapsed_ms: u64,
}

impl SegmentMeta {
    /// The attempt.
    pub fn chunk(&self) -> ChunkRef {
        ChunkRef {
            job: self.job,
            index: self.index,
            epoch: self.epoch,
        }
    }

    /// The hash as bytes; `None` when the sidecar's text is not 64 hex
    /// digits.
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.hash, &mut out).ok()?;
        Some(out)
    }

    /// How the hello reports it.
    pub fn wire(&self) -> Option<SpooledSegment> {
        Some(SpooledSegment {
            chunk: self.chunk(),
            start: self.start,
            end: self.end,
            size_bytes: self.size_bytes,
            hash: self.hash_bytes()?,
        })
    }
}

/// Key of a spooled segment: one per attempt (job, chunk, epoch).
pub type SpoolKey = (u64, u32, u32);

/// The key of an attempt.
pub fn key(c: &ChunkRef) -> SpoolKey {
    (c.job, c.index, c.epoch)
}

/// One segment in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// What it is.
    pub meta: SegmentMeta,
    /// The segment file.
    pub path: PathBuf,
}

/// What [`Spool::open`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Segments kept, to be offered to the coordinator.
    pub kept: usize,
    /// Files deleted: unfinished segments, sidecars without their segment,
    /// segments of another size than recorded, temporary files.
    pub dropped: Vec<String>,
}

/// The index of the spool's finished segments and its size limit.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limit_bytes: u64,
    used_bytes: u64,
    entries: BTreeMap<SpoolKey, Spooled>,
}

impl Spool {
    /// Opens the spool under `dir` (created when missing) and loads what an
    /// earlier run left, deleting what cannot be offered (see the module
    /// doc). Blocking.
    pub fn open(dir: &Path, limit_bytes: u64) -> std::io::Result<(Spool, LoadReport)> {
        std::fs::create_dir_all(dir)?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            limit_bytes,
            used_bytes: 0,
            entries: BTreeMap::new(),
        };
        let mut report = LoadReport::default();
        let mut names: Vec<String> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        // Every file is kept only as half of a valid pair.
        let mut kept = std::collections::HashSet::new();
        for name in names.iter().filter(|n| n.ends_with(SIDECAR_SUFFIX)) {
            let segment = &name[..name.len() - SIDECAR_SUFFIX.len()];
            match load_one(dir, name, segment) {
                Ok(s) => {
                    kept.insert(name.clone());
                    kept.insert(segment.to_string());
                    spool.insert(s);
                }
                Err(why) => warn!(sidecar = %name, "dropping a spooled segment: {why}"),
            }
        }
        for name in names.into_iter().filter(|n| !kept.contains(n)) {
            match std::fs::remove_file(dir.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            report.dropped.push(name);
        }
        report.dropped.sort();
        report.kept = spool.entries.len();
        Ok((spool, report))
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size limit.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Bytes of the finished segments it holds.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Whether a new chunk may start: the finished segments are under the
    /// limit. The segments being rendered are not counted (their size is
    /// unknown until they finish), so the spool can exceed its limit by
    /// those, at most two.
    pub fn has_room(&self) -> bool {
        self.used_bytes < self.limit_bytes
    }

    /// How many segments it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Its segments, oldest job and chunk first.
    pub fn entries(&self) -> impl Iterator<Item = &Spooled> {
        self.entries.values()
    }

    /// One segment.
    pub fn get(&self, key: &SpoolKey) -> Option<&Spooled> {
        self.entries.get(key)
    }

    /// Adds a segment already made durable by [`keep`].
    pub fn insert(&mut self, s: Spooled) {
        let k = (s.meta.job, s.meta.index, s.meta.epoch);
        self.used_bytes += s.meta.size_bytes;
        if let Some(old) = self.entries.insert(k, s) {
            self.used_bytes -= old.meta.size_bytes;
        }
    }

    /// Forgets a segment (its files go with [`discard`]).
    pub fn remove(&mut self, key: &SpoolKey) -> Option<Spooled> {
        let s = self.entries.remove(key)?;
        self.used_bytes -= s.meta.size_bytes;
        Some(s)
    }
}

/// Reads and checks one sidecar and its segment.
fn load_one(dir: &Path, sidecar: &str, segment: &str) -> Result<Spooled, String> {
    let path = dir.join(sidecar);
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_SIDECAR_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("reading it: {e}"))?;
    if text.len() as u64 > MAX_SIDECAR_BYTES {
        return Err(format!("over {MAX_SIDECAR_BYTES} bytes"));
    }
    let meta: SegmentMeta =
        serde_json::from_str(&text).map_err(|e| format!("not a sidecar: {e}"))?;
    if meta.end < meta.start {
        return Err(format!(
            "frames {}-{} end before they start",
            meta.start, meta.end
        ));
    }
    if meta.hash_bytes().is_none() {
        return Err(format!("hash {:?} is not 64 hex digits", meta.hash));
    }
    let seg = dir.join(segment);
    let size = std::fs::metadata(&seg)
        .map_err(|e| format!("its segment {segment}: {e}"))?
        .len();
    if size != meta.size_bytes {
        return Err(format!(
            "its segment holds {size} bytes, the sidecar says {}",
            meta.size_bytes
        ));
    }
    Ok(Spooled { meta, path: seg })
}

/// The sidecar of the segment at `segment`.
pub fn sidecar_path(segment: &Path) -> PathBuf {
    let mut p = segment.as_os_str().to_owned();
    p.push(SIDECAR_SUFFIX);
    PathBuf::from(p)
}

/// Makes a finished segment durable in the spool: fsyncs it, writes its
/// sidecar atomically and fsyncs the directory. Blocking.
pub fn keep(segment: &Path, meta: &SegmentMeta) -> std::io::Result<Spooled> {
    let size = std::fs::metadata(segment)?.len();
    if size != meta.size_bytes {
        return Err(std::io::Error::other(format!(
            "segment {} holds {size} bytes, expected {}",
            segment.display(),
            meta.size_bytes
        )));
    }
    std::fs::File::open(segment)?.sync_all()?;
    let sidecar = sidecar_path(segment);
    let mut tmp = sidecar.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &sidecar)?;
    if let Some(dir) = segment.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Spooled {
        meta: meta.clone(),
        path: segment.to_path_buf(),
    })
}

/// Deletes a segment and its sidecar, the sidecar first (a crash in
/// between leaves a segment without sidecar, which the next start deletes).
/// Blocking.
pub fn discard(segment: &Path) -> std::io::Result<()> {
    for p in [sidecar_path(segment), segment.to_path_buf()] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u32, size_bytes: u64) -> SegmentMeta {
        SegmentMeta {
            job: 7,
            index,
            epoch: 3,
            start: u64::from(index) * 10,
            end: u64::from(index) * 10 + 9,
            size_bytes,
            hash: hex::encode([index as u8; 32]),
            encoder: "libx264".into(),
            adapter: "llvmpipe".into(),
            elapsed_ms: 1234,
        }
    }

    fn segment(dir: &Path, m: &SegmentMeta) -> PathBuf {
        let p = dir.join(format!(
            "job-{}-chunk-{:05}-e{}.mp4",
            m.job, m.index, m.epoch
        ));
        std::fs::write(&p, vec![1u8; m.size_bytes as usize]).unwrap();
        p
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn segments_survive_a_restart_and_damage_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (mut spool, report) = Spool::open(d, 1000).unwrap();
        assert_eq!(report, LoadReport::default());
        for i in 0..3 {
            let m = meta(i, 100 + u64::from(i));
            let s = keep(&segment(d, &m), &m).unwrap();
            spool.insert(s);
        }
        assert_eq!(spool.used_bytes(), 303);
        let before: Vec<Spooled> = spool.entries().cloned().collect();

        // Damage of every kind the agent can leave or meet.
        // A segment the executor was still writing: no sidecar.
        segment(d, &meta(10, 50));
        // A sidecar half written when the node died.
        std::fs::write(d.join("job-7-chunk-00011-e3.mp4.json.tmp"), b"{\"job\":").unwrap();
        // A sidecar whose segment is gone.
        let m = meta(12, 10);
        let gone = segment(d, &m);
        keep(&gone, &m).unwrap();
        std::fs::remove_file(&gone).unwrap();
        // A segment cut short after its sidecar was written.
        let m = meta(13, 40);
        let short = segment(d, &m);
        keep(&short, &m).unwrap();
        std::fs::write(&short, [0u8; 39]).unwrap();
        // A sidecar that is not JSON, and one with a bad hash.
        let m = meta(14, 5);
        let garbage = segment(d, &m);
        std::fs::write(sidecar_path(&garbage), b"\xff\xfe not json").unwrap();
        let m = SegmentMeta {
            hash: "xyz".into(),
            ..meta(15, 5)
        };
        let bad_hash = segment(d, &m);
        std::fs::write(sidecar_path(&bad_hash), serde_json::to_vec(&m).unwrap()).unwrap();

        let (spool, report) = Spool::open(d, 1000).unwrap();
        assert_eq!(spool.entries().cloned().collect::<Vec<_>>(), before);
        assert_eq!(spool.used_bytes(), 303);
        assert_eq!(report.kept, 3);
        assert_eq!(
            report.dropped,
            [
                "job-7-chunk-00010-e3.mp4",
                "job-7-chunk-00011-e3.mp4.json.tmp",
                "job-7-chunk-00012-e3.mp4.json",
                "job-7-chunk-00013-e3.mp4",
                "job-7-chunk-00013-e3.mp4.json",
                "job-7-chunk-00014-e3.mp4",
                "job-7-chunk-00014-e3.mp4.json",
                "job-7-chunk-00015-e3.mp4",
                "job-7-chunk-00015-e3.mp4.json",
            ]
        );
        assert_eq!(
            names(d),
            [
                "job-7-chunk-00000-e3.mp4",
                "job-7-chunk-00000-e3.mp4.json",
                "job-7-chunk-00001-e3.mp4",
                "job-7-chunk-00001-e3.mp4.json",
                "job-7-chunk-00002-e3.mp4",
                "job-7-chunk-00002-e3.mp4.json",
            ]
        );
    }

    #[test]
    fn discarded_segments_are_gone_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (mut spool, _) = Spool::open(d, 1000).unwrap();
        let m = meta(0, 10);
        spool.insert(keep(&segment(d, &m), &m).unwrap());
        let s = spool.remove(&(7, 0, 3)).unwrap();
        assert_eq!(spool.used_bytes(), 0);
        discard(&s.path).unwrap();
        discard(&s.path).unwrap();
        assert!(names(d).is_empty());
        let (spool, report) = Spool::open(d, 1000).unwrap();
        assert!(spool.is_empty());
        assert!(report.dropped.is_empty());
    }

    #[test]
    fn room_is_the_limit_on_finished_segments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (mut spool, _) = Spool::open(d, 100).unwrap();
        assert!(spool.has_room());
        let m = meta(0, 99);
        spool.insert(keep(&segment(d, &m), &m).unwrap());
        assert!(spool.has_room());
        let m = meta(1, 1);
        spool.insert(keep(&segment(d, &m), &m).unwrap());
        assert!(!spool.has_room());
        spool.remove(&(7, 1, 3));
        assert!(spool.has_room());
    }

    #[test]
    fn a_sidecar_carries_the_wire_report() {
        let m = meta(2, 10);
        let w = m.wire().unwrap();
        assert_eq!(
            w.chunk,
            ChunkRef {
                job: 7,
                index: 2,
                epoch: 3
            }
        );
        assert_eq!(
            (w.start, w.end, w.size_bytes, w.hash),
            (20, 29, 10, [2; 32])
        );
        assert_eq!(
            SegmentMeta {
                hash: "00".into(),
                ..m
            }
            .wire(),
            None
        );
    }
}

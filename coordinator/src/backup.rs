//! Online backup of a running coordinator, and restore into a new data dir.
//!
//! # What a backup holds
//! A tar archive (every member mode 0600: it holds the coordinator's keys):
//! - `journals/<name>/meta.json` and `journals/<name>/state.json` for each of
//!   the coordinator's journals ([`JOURNALS`]): the journal's model at one
//!   durable point, exported by its writer thread
//!   ([`crate::journal::Exportable`]), with the seq and incarnation it was
//!   taken at; then `journals/<name>/archive/<key>-<finished_at_ms>`, its
//!   archived (ended) entries.
//! - `artifacts/job-<id>/<segment>`: the stored segments of every job that
//!   is not done (what it needs to finish without rendering them again).
//! - With `--artifacts`, `artifacts/job-<id>/` also holds done jobs'
//!   outputs, posters and their checksum sidecars.
//! - `secrets/<file>`: the certificate and key nodes pin, the QUIC reset
//!   key, the download-link key and the webhook secret ([`SECRET_FILES`]),
//!   so the restored coordinator is the same coordinator to its nodes and
//!   clients (node identities and API keys are in the `auth` journal).
//! - [`MANIFEST_NAME`] last: format version, coordinator version,
//!   incarnation, time, counts, the artifact index (name, size and SHA-256 of
//!   every done job's output and poster, with or without `--artifacts`), and
//!   the size and SHA-256 of every member; then [`MANIFEST_SUM_NAME`], the
//!   manifest's own SHA-256. The manifest comes last because the members are
//!   hashed as they stream out.
//!
//! # Consistency
//! Each journal is taken at one durable point between two of its writer's
//! commits (see `journal::export`): for the scheduler that is between two
//! events of its actor, so jobs, chunks and stored segments agree. The
//! segments the scheduler's state names are copied right after its export;
//! segments and outputs are immutable under their final names. A segment
//! can still go between the export and its copy (its job finished and
//! discarded its segments meanwhile): it is listed in the manifest as
//! missing, and the restored coordinator finds it absent at start and
//! renders those frames again (`Fact::SegmentLost`, the path any lost
//! segment takes), so a restore never depends on winning that race.
//!
//! # Restore
//! [`restore`] refuses a target that exists and is not empty, then reads
//! the whole archive once and checks every member against the manifest
//! (and the manifest against its checksum) before it writes anything; a
//! damaged member is refused by name. It then writes into a temporary
//! directory beside the target: the journals through
//! [`crate::journal::Import`] (segment and output paths rewritten to the
//! new data dir), the artifacts and the secrets, each file fsynced; then it
//! renames the directory into place and fsyncs its parent.
//!
//! Epochs carry the incarnation, so they must never repeat. The backup
//! cannot know how far the farm it came from counted after it was taken
//! (an old backup restored while nodes still hold that farm's newer
//! epochs), so the restored journals start at the larger of the backup's
//! count and the wall clock in seconds ([`restored_incarnation`]): starts
//! are counted one by one and no farm counts to the seconds since 1970.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use drover_shared::api::JobState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::journal::{Exportable, Import, JournalError};
use crate::sched::{JobRecord, Recovery};
use crate::store::ArtifactStore;

/// The archive format this code writes and reads. A newer one is refused
/// (its members may mean something this version does not know).
pub const FORMAT_VERSION: u32 = 1;

/// The manifest's member name.
pub const MANIFEST_NAME: &str = "MANIFEST.json";
/// The member holding the manifest's SHA-256 (hex).
pub const MANIFEST_SUM_NAME: &str = "MANIFEST.json.sha256";

/// Largest manifest read back, in bytes: about 200 bytes a member, so a
/// million members (a farm with a week of jobs and their segments) fit,
/// and a damaged header cannot make restore allocate without bound.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// Largest journal state or archived entry read into memory by restore:
/// the journal's own limit on an archived entry, and room for a large hot
/// model (a snapshot of tens of thousands of jobs).
pub const MAX_STATE_BYTES: u64 = 1 << 30;

/// The coordinator's journals, by directory under the data dir: the
/// scheduler's (`wal`), the keys, tokens and node identities (`auth`), and
/// the webhook deliveries (`webhooks`). A new journal must be added here
/// (and to [`restore`]'s import), or a backup would leave it out.
pub const JOURNALS: [&str; 3] = ["wal", "auth", crate::webhook::JOURNAL_DIR];

/// Files of the data dir that make the coordinator itself: the TLS
/// certificate and key nodes pin, the QUIC stateless-reset key, the key
/// signing download links, and the webhook signing secret.
pub const SECRET_FILES: [&str; 5] = [
    drover_shared::config::CERT_FILE,
    drover_shared::config::KEY_FILE,
    crate::quic::RESET_KEY_FILE,
    crate::api::links::LINK_KEY_FILE,
    crate::webhook::SECRET_FILE,
];

/// Bytes a member is copied in at a time.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// What a running coordinator backs up; shared with the API handler.
pub struct Sources {
    /// The data dir (secrets are read from it).
    pub data_dir: PathBuf,
    /// The artifact store.
    pub store: ArtifactStore,
    /// The journals, named as in [`JOURNALS`].
    pub journals: Vec<(&'static str, Arc<dyn Exportable>)>,
    /// Set while a backup runs: one at a time (each holds a blocking thread
    /// and reads every artifact; two would only compete for the disk).
    pub running: AtomicBool,
}

impl Sources {
    /// The sources of a coordinator: its data dir, store and journals.
    pub fn new(
        data_dir: &Path,
        store: ArtifactStore,
        scheduler: &crate::journal::scheduler::SchedulerJournal,
        auth: &crate::auth::Auth,
        hooks: &crate::webhook::Webhooks,
    ) -> Sources {
        Sources {
            data_dir: data_dir.to_path_buf(),
            store,
            journals: vec![
                (
                    JOURNALS[0],
                    Arc::new(scheduler.clone()) as Arc<dyn Exportable>,
                ),
                (JOURNALS[1], auth.backup_journal()),
                (JOURNALS[2], hooks.backup_journal()),
            ],
            running: AtomicBool::new(false),
        }
    }
}

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its path in the archive.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of its content, lowercase hex.
    pub sha256: String,
    /// A copied file's modification time, ns since the Unix epoch: restored
    /// with it, so the checksum sidecars (which trust a file whose size and
    /// mtime match) stay valid and the poster is not made again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<u64>,
}

/// One artifact of a done job, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The job.
    pub job: u64,
    /// `output.mp4` or `poster.png`.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// How much a backup holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Jobs in the scheduler's hot state.
    pub jobs: u64,
    /// Archived (ended, evicted) jobs.
    pub archived_jobs: u64,
    /// Segments copied.
    pub segments: u64,
    /// Segments named by the state but gone before they were copied.
    pub segments_missing: u64,
    /// Done jobs' files copied (outputs, posters, sidecars).
    pub artifact_files: u64,
    /// Members, the manifest and its checksum not included.
    pub members: u64,
    /// Bytes of those members.
    pub bytes: u64,
}

/// The archive's table of contents, written last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The coordinator's version.
    pub coordinator_version: String,
    /// The scheduler journal's incarnation when the backup was taken.
    pub incarnation: u32,
    /// Wall-clock time the backup started, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Whether done jobs' outputs and posters are included.
    pub artifacts: bool,
    /// The artifact store's directory on the backed-up coordinator (stored
    /// paths in the journal start with it).
    pub artifact_root: String,
    /// Counts.
    pub counts: Counts,
    /// Every done job's output and poster: name, size, SHA-256.
    pub index: Vec<IndexEntry>,
    /// Segments named by the state that were gone before they could be
    /// copied (the restored coordinator renders their frames again).
    pub missing: Vec<String>,
    /// Done jobs whose output could not be described (read, hashed, its
    /// poster made), so they are not in `index`; with `artifacts`, their
    /// output file is copied all the same when it exists.
    #[serde(default)]
    pub unindexed: Vec<Unindexed>,
    /// Every member but the manifest and its checksum, in archive order.
    pub members: Vec<Member>,
}

/// A done job left out of the artifact index, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unindexed {
    /// The job.
    pub job: u64,
    /// What describing its output said.
    pub reason: String,
}

/// The `meta.json` of one journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JournalMeta {
    seq: u64,
    incarnation: u32,
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A journal could not be exported or read.
    #[error("backup: journal `{name}`: {source}")]
    Journal {
        /// The journal.
        name: &'static str,
        /// Why.
        source: JournalError,
    },
    /// A file could not be read, or the archive not written.
    #[error("backup: {}: {source}", path.display())]
    Io {
        /// The file (or the archive stream).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The scheduler's state did not decode.
    #[error("backup: the scheduler's state does not decode: {0}")]
    State(String),
    /// Another backup is running.
    #[error("another backup is running; one runs at a time")]
    Busy,
}

/// Why a restore refused or failed. Every refusal happens before anything
/// is written.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target exists and holds something.
    #[error("restore: --data {} is not empty; restore goes into a new or empty directory (nothing was written)", .0.display())]
    TargetNotEmpty(PathBuf),
    /// The archive is not a readable tar.
    #[error("restore: {} is not a readable backup archive: {what} (nothing was written)", path.display())]
    Unreadable {
        /// The archive.
        path: PathBuf,
        /// Why.
        what: String,
    },
    /// The manifest is missing or damaged.
    #[error("restore: member {MANIFEST_NAME}: {what} (nothing was written)")]
    Manifest {
        /// Why.
        what: String,
    },
    /// A member differs from the manifest, is not in it, or is missing.
    #[error("restore: member {member}: {what} (nothing was written)")]
    Member {
        /// The member's path.
        member: String,
        /// What is wrong.
        what: String,
    },
    /// The archive is in a newer format.
    #[error("restore: the archive is in format version {found}, newer than version {FORMAT_VERSION} that this Drover reads; restore it with that version (nothing was written)")]
    NewerFormat {
        /// The version found.
        found: u32,
    },
    /// Writing the new data dir failed (the temporary directory is left
    /// for a person to look at; the target was not created).
    #[error("restore: writing {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A journal could not be written.
    #[error("restore: journal `{name}`: {source}")]
    Journal {
        /// The journal.
        name: String,
        /// Why.
        source: JournalError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The tar being written, and the manifest's member list.
struct Writer<W: Write> {
    tar: tar::Builder<W>,
    members: Vec<Member>,
    mtime_s: u64,
}

impl<W: Write> Writer<W> {
    /// Appends a member of `len` bytes read from `reader`; `len` must be
    /// what the reader yields (tar needs the size first).
    fn append(&mut self, path: &str, len: u64, reader: impl Read) -> Result<(), BackupError> {
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(0o600);
        header.set_mtime(self.mtime_s);
        header.set_entry_type(tar::EntryType::Regular);
        let mut hashing = Hashing {
            inner: io::BufReader::with_capacity(COPY_CHUNK_BYTES, reader.take(len)),
            hasher: Sha256::new(),
            bytes: 0,
        };
        self.tar
            .append_data(&mut header, path, &mut hashing)
            .map_err(io_err(Path::new(path)))?;
        if hashing.bytes != len {
            // The file shrank under us: tar padded it with zeros, so the
            // member is not the file. Immutable files never do this.
            return Err(BackupError::Io {
                path: PathBuf::from(path),
                source: io::Error::other(format!(
                    "{} bytes read of {len}: the file changed while it was copied",
                    hashing.bytes
                )),
            });
        }
        self.members.push(Member {
            path: path.to_string(),
            bytes: len,
            sha256: hex::encode(hashing.hasher.finalize()),
            mtime_ns: None,
        });
        Ok(())
    }

    fn append_bytes(&mut self, path: &str, bytes: &[u8]) -> Result<(), BackupError> {
        self.append(path, bytes.len() as u64, bytes)
    }

    /// Appends the file at `file` as `path`; `Ok(false)` when it does not
    /// exist (any more).
    fn append_file(&mut self, path: &str, file: &Path) -> Result<bool, BackupError> {
        let f = match File::open(file) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(file)(e)),
        };
        let meta = f.metadata().map_err(io_err(file))?;
        self.append(path, meta.len(), f)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64);
        if let Some(m) = self.members.last_mut() {
            m.mtime_ns = mtime_ns;
        }
        Ok(true)
    }
}

/// A name for a stored file in the archive: `artifacts/job-<id>/<file>`.
fn artifact_member(job: u64, file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    Some(format!("artifacts/job-{job}/{name}"))
}

/// The right to run the one backup at a time; released on drop.
pub struct Running(Arc<Sources>);

impl Running {
    /// Takes the right, or [`BackupError::Busy`] while another backup runs.
    pub fn begin(sources: Arc<Sources>) -> Result<Running, BackupError> {
        if sources.running.swap(true, Ordering::AcqRel) {
            return Err(BackupError::Busy);
        }
        Ok(Running(sources))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// Writes a backup to `out` (blocking: run it on a blocking thread). With
/// `artifacts`, done jobs' outputs and posters are included.
pub fn write_backup<W: Write>(
    running: &Running,
    artifacts: bool,
    out: W,
) -> Result<Manifest, BackupError> {
    let sources = &*running.0;
    let created_at_ms = now_ms();
    let mut w = Writer {
        tar: tar::Builder::new(out),
        members: Vec::new(),
        mtime_s: created_at_ms / 1000,
    };
    let mut counts = Counts::default();
    let mut missing = Vec::new();
    let mut done_jobs: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut incarnation = 0;

    for (name, journal) in &sources.journals {
        let journal_err = |source| BackupError::Journal { name, source };
        let export = journal.export().map_err(journal_err)?;
        let meta = JournalMeta {
            seq: export.seq,
            incarnation: export.incarnation,
        };
        let meta =
            serde_json::to_vec_pretty(&meta).map_err(|e| BackupError::State(e.to_string()))?;
        w.append_bytes(&format!("journals/{name}/meta.json"), &meta)?;
        w.append_bytes(&format!("journals/{name}/state.json"), &export.state)?;
        let scheduler = *name == "wal";
        if scheduler {
            incarnation = export.incarnation;
            let state: Recovery = serde_json::from_slice(&export.state)
                .map_err(|e| BackupError::State(e.to_string()))?;
            counts.jobs = state.jobs.len() as u64;
            // The segments first, right after the export: the sooner they
            // are copied, the less likely one was discarded meanwhile.
            for (id, r) in &state.jobs {
                if r.state == JobState::Done {
                    if let Some(out) = &r.output_path {
                        done_jobs.insert(*id, PathBuf::from(out));
                    }
                    continue;
                }
                if r.discarded {
                    continue;
                }
                for d in r.done.values() {
                    let file = Path::new(&d.segment);
                    let Some(member) = artifact_member(*id, file) else {
                        continue;
                    };
                    if w.append_file(&member, file)? {
                        counts.segments += 1;
                    } else {
                        counts.segments_missing += 1;
                        missing.push(member);
                    }
                }
            }
        }
        for key in &export.archived {
            let Some((finished_at_ms, bytes)) =
                journal.archived_entry(*key).map_err(journal_err)?
            else {
                // Expired since the export: it would have expired in the
                // restored journal too.
                continue;
            };
            if scheduler {
                counts.archived_jobs += 1;
                if let Ok(r) = serde_json::from_slice::<JobRecord>(&bytes) {
                    if let (JobState::Done, Some(out)) = (r.state, &r.output_path) {
                        done_jobs.insert(r.id, PathBuf::from(out));
                    }
                }
            }
            w.append_bytes(
                &format!("journals/{name}/archive/{key}-{finished_at_ms}"),
                &bytes,
            )?;
        }
    }

    // The artifact index, and with `artifacts` the files themselves. The
    // listing the API gives (`artifact::describe`, cached in sidecars) is
    // the index, so a restored coordinator lists the same checksums.
    let mut index = Vec::new();
    let mut unindexed = Vec::new();
    for (job, output) in &done_jobs {
        let cache = sources.store.job_dir(*job);
        let infos = match crate::artifact::describe(output, &cache) {
            Ok(infos) => infos,
            Err(e) => {
                // Said in the manifest, never skipped silently: an output
                // already gone (a restore without artifacts, removed by
                // hand) or one that cannot be read or decoded for its
                // poster. The file itself still goes in when asked for.
                unindexed.push(Unindexed {
                    job: *job,
                    reason: e.to_string(),
                });
                if artifacts && output.is_file() {
                    if let Some(member) = artifact_member(*job, output) {
                        if w.append_file(&member, output)? {
                            counts.artifact_files += 1;
                        }
                    }
                }
                continue;
            }
        };
        for info in infos {
            index.push(IndexEntry {
                job: *job,
                name: info.name.clone(),
                bytes: info.bytes,
                sha256: info.sha256.clone(),
            });
            if !artifacts {
                continue;
            }
            let sidecar = cache.join(format!("{}{}", info.name, crate::artifact::SIDECAR_SUFFIX));
            for file in [&info.path, &sidecar] {
                if let Some(member) = artifact_member(*job, file) {
                    if w.append_file(&member, file)? {
                        counts.artifact_files += 1;
                    }
                }
            }
        }
    }

    for name in SECRET_FILES {
        w.append_file(&format!("secrets/{name}"), &sources.data_dir.join(name))?;
    }

    counts.members = w.members.len() as u64;
    counts.bytes = w.members.iter().map(|m| m.bytes).sum();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
        incarnation,
        created_at_ms,
        artifacts,
        artifact_root: sources.store.root().display().to_string(),
        counts,
        index,
        missing,
        unindexed,
        members: std::mem::take(&mut w.members),
    };
    let bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::State(e.to_string()))?;
    let sum = hex::encode(Sha256::digest(&bytes));
    w.append_bytes(MANIFEST_NAME, &bytes)?;
    w.append_bytes(MANIFEST_SUM_NAME, sum.as_bytes())?;
    let mut out = w
        .tar
        .into_inner()
        .map_err(io_err(Path::new("the archive")))?;
    out.flush().map_err(io_err(Path::new("the archive")))?;
    Ok(manifest)
}

/// Whether `path` is a member name restore may write: relative, no `..`,
/// under one of the archive's top-level directories or the manifest.
fn safe_member(path: &str) -> bool {
    let p = Path::new(path);
    let normal = p.components().all(|c| matches!(c, Component::Normal(_)));
    normal
        && (path == MANIFEST_NAME
            || path == MANIFEST_SUM_NAME
            || ["journals/", "artifacts/", "secrets/"]
                .iter()
                .any(|top| path.starts_with(top)))
}

fn unreadable(archive: &Path, e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Unreadable {
        path: archive.to_path_buf(),
        what: e.to_string(),
    }
}

/// Reads the whole archive and checks it: the manifest against its
/// checksum, every member against the manifest (size and SHA-256), no
/// member missing, none unlisted, no unsafe name, a known format. Writes
/// nothing. Returns the manifest.
pub fn verify(archive: &Path) -> Result<Manifest, RestoreError> {
    let file = File::open(archive).map_err(|e| unreadable(archive, e))?;
    let mut tar = tar::Archive::new(io::BufReader::with_capacity(COPY_CHUNK_BYTES, file));
    let mut seen: Vec<Member> = Vec::new();
    let mut manifest_bytes = None;
    let mut manifest_sum = None;
    for entry in tar.entries().map_err(|e| unreadable(archive, e))? {
        let mut entry = entry.map_err(|e| unreadable(archive, e))?;
        let path = entry
            .path()
            .map_err(|e| unreadable(archive, e))?
            .to_string_lossy()
            .into_owned();
        if !safe_member(&path) {
            return Err(RestoreError::Member {
                member: path,
                what: "not a name a backup writes (absolute, `..`, or an unknown directory)".into(),
            });
        }
        if path == MANIFEST_NAME || path == MANIFEST_SUM_NAME {
            if entry.size() > MAX_MANIFEST_BYTES {
                return Err(RestoreError::Manifest {
                    what: format!(
                        "{} bytes, over the {MAX_MANIFEST_BYTES}-byte limit",
                        entry.size()
                    ),
                });
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| unreadable(archive, e))?;
            if path == MANIFEST_NAME {
                manifest_bytes = Some(bytes);
            } else {
                manifest_sum = Some(bytes);
            }
            continue;
        }
        let mut hashing = Hashing {
            inner: &mut entry,
            hasher: Sha256::new(),
            bytes: 0,
        };
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| unreadable(archive, e))?;
        seen.push(Member {
            path,
            bytes: hashing.bytes,
            sha256: hex::encode(hashing.hasher.finalize()),
            mtime_ns: None,
        });
    }
    let manifest_missing = |what: &str| RestoreError::Manifest {
        what: what.to_string(),
    };
    let bytes = manifest_bytes.ok_or_else(|| {
        manifest_missing("missing: the archive is incomplete (a backup cut short?)")
    })?;
    let sum = manifest_sum.ok_or_else(|| {
        manifest_missing(&format!(
            "its checksum ({MANIFEST_SUM_NAME}) is missing: the archive is incomplete"
        ))
    })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if sum != actual.as_bytes() {
        return Err(manifest_missing(&format!(
            "SHA-256 is {actual}, {MANIFEST_SUM_NAME} says {}: the manifest is damaged",
            String::from_utf8_lossy(&sum)
        )));
    }
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| manifest_missing(&format!("does not parse: {e}")))?;
    if manifest.format_version > FORMAT_VERSION {
        return Err(RestoreError::NewerFormat {
            found: manifest.format_version,
        });
    }
    check_members(&manifest.members, &seen)?;
    Ok(manifest)
}

/// Every listed member was seen with its size and hash, and nothing else.
fn check_members(listed: &[Member], seen: &[Member]) -> Result<(), RestoreError> {
    let mut want: HashMap<&str, &Member> = HashMap::new();
    for m in listed {
        if want.insert(&m.path, m).is_some() {
            return Err(RestoreError::Member {
                member: m.path.clone(),
                what: "listed twice in the manifest".into(),
            });
        }
    }
    let mut found = std::collections::HashSet::new();
    for m in seen {
        let member = m.path.clone();
        let Some(w) = want.get(m.path.as_str()) else {
            return Err(RestoreError::Member {
                member,
                what: "in the archive but not in the manifest".into(),
            });
        };
        if !found.insert(m.path.as_str()) {
            return Err(RestoreError::Member {
                member,
                what: "in the archive twice".into(),
            });
        }
        if w.bytes != m.bytes {
            return Err(RestoreError::Member {
                member,
                what: format!("{} bytes, the manifest says {}", m.bytes, w.bytes),
            });
        }
        if w.sha256 != m.sha256 {
            return Err(RestoreError::Member {
                member,
                what: format!(
                    "SHA-256 is {}, the manifest says {}: the member is damaged",
                    m.sha256, w.sha256
                ),
            });
        }
    }
    if let Some(m) = listed.iter().find(|m| !found.contains(m.path.as_str())) {
        return Err(RestoreError::Member {
            member: m.path.clone(),
            what: "listed in the manifest but not in the archive".into(),
        });
    }
    Ok(())
}

/// The incarnation a restored journal starts from: past the backup's and
/// past anything the farm it came from can have counted since (see the
/// module doc).
pub fn restored_incarnation(backup: u32, now_ms: u64) -> u32 {
    let clock = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX - 1_000_000);
    backup.max(clock)
}

/// What a restore wrote.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The manifest of the archive.
    pub manifest: Manifest,
    /// The incarnation the restored journals start from (the first start
    /// counts one more).
    pub incarnation: u32,
    /// Files written (journals counted as one each).
    pub files: u64,
}

/// Whether `dir` is missing or an empty directory.
fn empty_or_missing(dir: &Path) -> Result<bool, RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(false),
        Err(source) => Err(RestoreError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn wio(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn fsync_dir(dir: &Path) -> Result<(), RestoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(wio(dir))
}

/// Restores `archive` into the new data dir `data` (see the module doc).
pub fn restore(archive: &Path, data: &Path) -> Result<RestoreReport, RestoreError> {
    if !empty_or_missing(data)? {
        return Err(RestoreError::TargetNotEmpty(data.to_path_buf()));
    }
    let manifest = verify(archive)?;
    let data = std::path::absolute(data).map_err(wio(data))?;
    let parent = data
        .parent()
        .ok_or_else(|| RestoreError::TargetNotEmpty(data.clone()))?
        .to_path_buf();
    std::fs::create_dir_all(&parent).map_err(wio(&parent))?;
    let name = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let tmp = parent.join(format!(".{name}.restoring-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(wio(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(wio(&tmp))?;
    let incarnation = restored_incarnation(manifest.incarnation, now_ms());
    // Stored paths in the journal name the final directory, not the
    // temporary one.
    let new_root = data.join("artifacts");
    let mtimes: HashMap<&str, u64> = manifest
        .members
        .iter()
        .filter_map(|m| Some((m.path.as_str(), m.mtime_ns?)))
        .collect();
    let files = extract(archive, &tmp, &new_root, incarnation, &mtimes)?;
    // Into place: an empty target directory is replaced.
    if data.exists() {
        std::fs::remove_dir(&data).map_err(wio(&data))?;
    }
    std::fs::rename(&tmp, &data).map_err(wio(&data))?;
    fsync_dir(&parent)?;
    Ok(RestoreReport {
        manifest,
        incarnation,
        files,
    })
}

/// A stored path moved to the new artifact root: `job-<id>/<file name>`.
fn moved(new_root: &Path, job: u64, old: &str) -> String {
    let name = Path::new(old)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    new_root
        .join(format!("job-{job}"))
        .join(name)
        .display()
        .to_string()
}

fn move_record(r: &mut JobRecord, new_root: &Path) {
    let id = r.id;
    if let Some(out) = &mut r.output_path {
        *out = moved(new_root, id, out);
    }
    for d in r.done.values_mut() {
        d.segment = moved(new_root, id, &d.segment);
    }
}

/// Opens an import for journal `name`, the state decoded as its model.
fn import(
    name: &str,
    dir: &Path,
    meta: &JournalMeta,
    state: &[u8],
    incarnation: u32,
) -> Result<Import, RestoreError> {
    let journal = |source| RestoreError::Journal {
        name: name.to_string(),
        source,
    };
    let incarnation = incarnation.max(meta.incarnation);
    match name {
        "wal" => Import::create::<Recovery>(dir, meta.seq, incarnation, state),
        "auth" => Import::create::<crate::auth::AuthModel>(dir, meta.seq, incarnation, state),
        n if n == crate::webhook::JOURNAL_DIR => {
            Import::create::<crate::webhook::JournalModel>(dir, meta.seq, incarnation, state)
        }
        _ => {
            return Err(RestoreError::Member {
                member: format!("journals/{name}"),
                what: "a journal this Drover does not know".into(),
            })
        }
    }
    .map_err(journal)
}

/// Writes a file, fsynced, mode 0600.
fn write_file(path: &Path, mut from: impl Read) -> Result<(), RestoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(wio(dir))?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(wio(path))?;
    io::copy(&mut from, &mut f).map_err(wio(path))?;
    f.sync_all().map_err(wio(path))
}

fn read_bounded(member: &str, mut from: impl Read, size: u64) -> Result<Vec<u8>, RestoreError> {
    if size > MAX_STATE_BYTES {
        return Err(RestoreError::Member {
            member: member.to_string(),
            what: format!("{size} bytes, over the {MAX_STATE_BYTES}-byte limit"),
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    from.read_to_end(&mut bytes)
        .map_err(wio(Path::new(member)))?;
    Ok(bytes)
}

/// The second pass: writes every member into `dir`.
fn extract(
    archive: &Path,
    dir: &Path,
    new_root: &Path,
    incarnation: u32,
    mtimes: &HashMap<&str, u64>,
) -> Result<u64, RestoreError> {
    let file = File::open(archive).map_err(|e| unreadable(archive, e))?;
    let mut tar = tar::Archive::new(io::BufReader::with_capacity(COPY_CHUNK_BYTES, file));
    let mut metas: HashMap<String, JournalMeta> = HashMap::new();
    let mut imports: BTreeMap<String, Import> = BTreeMap::new();
    let mut files = 0;
    let mut dirs = std::collections::BTreeSet::new();
    for entry in tar.entries().map_err(|e| unreadable(archive, e))? {
        let mut entry = entry.map_err(|e| unreadable(archive, e))?;
        let path = entry
            .path()
            .map_err(|e| unreadable(archive, e))?
            .to_string_lossy()
            .into_owned();
        let size = entry.size();
        let parts: Vec<&str> = path.split('/').collect();
        let bad = |what: &str| RestoreError::Member {
            member: path.clone(),
            what: what.to_string(),
        };
        match parts.as_slice() {
            ["journals", name, "meta.json"] => {
                let bytes = read_bounded(&path, &mut entry, size)?;
                let meta: JournalMeta = serde_json::from_slice(&bytes)
                    .map_err(|e| bad(&format!("does not parse: {e}")))?;
                metas.insert(name.to_string(), meta);
            }
            ["journals", name, "state.json"] => {
                let meta = metas
                    .get(*name)
                    .ok_or_else(|| bad("comes before its journal's meta.json"))?;
                let mut state = read_bounded(&path, &mut entry, size)?;
                if *name == "wal" {
                    let mut r: Recovery = serde_json::from_slice(&state)
                        .map_err(|e| bad(&format!("does not decode: {e}")))?;
                    for job in r.jobs.values_mut() {
                        move_record(job, new_root);
                    }
                    state = serde_json::to_vec(&r).map_err(|e| bad(&e.to_string()))?;
                }
                let import = import(name, &dir.join(name), meta, &state, incarnation)?;
                imports.insert(name.to_string(), import);
                files += 1;
            }
            ["journals", name, "archive", entry_name] => {
                let (key, at) = entry_name
                    .split_once('-')
                    .and_then(|(k, t)| Some((k.parse::<u64>().ok()?, t.parse::<u64>().ok()?)))
                    .ok_or_else(|| bad("not named <key>-<finished_at_ms>"))?;
                let mut bytes = read_bounded(&path, &mut entry, size)?;
                if *name == "wal" {
                    let mut r: JobRecord = serde_json::from_slice(&bytes)
                        .map_err(|e| bad(&format!("does not decode: {e}")))?;
                    move_record(&mut r, new_root);
                    bytes = serde_json::to_vec(&r).map_err(|e| bad(&e.to_string()))?;
                }
                let import = imports
                    .get_mut(*name)
                    .ok_or_else(|| bad("comes before its journal's state.json"))?;
                import
                    .archive(key, at, bytes)
                    .map_err(|source| RestoreError::Journal {
                        name: name.to_string(),
                        source,
                    })?;
            }
            ["artifacts", job, name] if job.starts_with("job-") => {
                let target = dir.join("artifacts").join(job).join(name);
                write_file(&target, &mut entry)?;
                if let Some(ns) = mtimes.get(path.as_str()) {
                    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(*ns);
                    File::options()
                        .write(true)
                        .open(&target)
                        .and_then(|f| {
                            f.set_modified(mtime)?;
                            f.sync_all()
                        })
                        .map_err(wio(&target))?;
                }
                dirs.insert(dir.join("artifacts").join(job));
                files += 1;
            }
            ["secrets", name] if SECRET_FILES.contains(name) => {
                write_file(&dir.join(name), &mut entry)?;
                files += 1;
            }
            [MANIFEST_NAME] | [MANIFEST_SUM_NAME] => {
                write_file(&dir.join(format!("restored-{path}")), &mut entry)?;
            }
            _ => return Err(bad("not a member a backup writes")),
        }
    }
    for (name, import) in imports {
        import.finish().map_err(|source| RestoreError::Journal {
            name: name.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(dir.join("artifacts")).map_err(wio(dir))?;
    dirs.insert(dir.join("artifacts"));
    dirs.insert(dir.to_path_buf());
    for d in &dirs {
        fsync_dir(d)?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests;

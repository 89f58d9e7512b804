//! The manifest and its verification, and a whole backup of real journals
//! restored into a new directory.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_shared::api::ChunkKind;
use drover_shared::spec::JobSpec;

use super::*;
use crate::journal::scheduler::SchedulerJournal;
use crate::sched::Fact;

fn member(path: &str, bytes: u64, sha: &str) -> Member {
    Member {
        path: path.into(),
        bytes,
        sha256: sha.into(),
        mtime_ns: None,
    }
}

#[test]
fn members_are_checked_against_the_manifest_by_name() {
    let listed = vec![
        member("secrets/a", 3, "aa"),
        member("artifacts/job-1/x", 5, "bb"),
    ];
    let check = |seen: Vec<Member>, want: &str| {
        let got = match check_members(&listed, &seen) {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, want);
    };
    check(listed.clone(), "ok");
    check(
        vec![member("secrets/a", 3, "aa"), member("artifacts/job-1/x", 5, "cc")],
        "restore: member artifacts/job-1/x: SHA-256 is cc, the manifest says bb: the member is damaged (nothing was written)",
    );
    check(
        vec![
            member("secrets/a", 4, "aa"),
            member("artifacts/job-1/x", 5, "bb"),
        ],
        "restore: member secrets/a: 4 bytes, the manifest says 3 (nothing was written)",
    );
    check(
        vec![member("secrets/a", 3, "aa")],
        "restore: member artifacts/job-1/x: listed in the manifest but not in the archive (nothing was written)",
    );
    check(
        vec![
            member("secrets/a", 3, "aa"),
            member("artifacts/job-1/x", 5, "bb"),
            member("secrets/b", 1, "dd"),
        ],
        "restore: member secrets/b: in the archive but not in the manifest (nothing was written)",
    );
    check(
        vec![
            member("secrets/a", 3, "aa"),
            member("secrets/a", 3, "aa"),
            member("artifacts/job-1/x", 5, "bb"),
        ],
        "restore: member secrets/a: in the archive twice (nothing was written)",
    );
}

#[test]
fn only_names_a_backup_writes_are_safe() {
    for (name, safe) in [
        ("journals/wal/state.json", true),
        ("artifacts/job-3/output.mp4", true),
        ("secrets/link-key", true),
        (MANIFEST_NAME, true),
        (MANIFEST_SUM_NAME, true),
        ("/etc/passwd", false),
        ("artifacts/../../x", false),
        ("other/file", false),
        ("./secrets/a", false),
    ] {
        assert_eq!(safe_member(name), safe, "{name}");
    }
}

#[test]
fn a_restored_incarnation_passes_the_backup_and_the_clock() {
    // 2026-11-24, in ms.
    let now_ms = 1_795_000_000_000;
    assert_eq!(restored_incarnation(3, now_ms), 1_795_000_000);
    assert_eq!(
        restored_incarnation(1_800_000_000, now_ms),
        1_800_000_000,
        "a backup of a farm already restored once keeps its larger count"
    );
    assert!(
        restored_incarnation(0, u64::MAX) < u32::MAX,
        "room is left to count starts"
    );
}

fn spec() -> JobSpec {
    let mut s = JobSpec::from_json(
        r#"{"name":"t","frames":{"start":1,"end":48},"resolution":{"width":640,"height":360},
           "render":{"kind":"shader","shader":"plasma"}}"#,
    )
    .unwrap();
    s.validate().unwrap();
    s
}

/// A coordinator's data dir with real journals: one job with a stored
/// segment, secrets, and an auth journal with its first key.
struct Farm {
    _dir: tempfile::TempDir,
    sources: Arc<Sources>,
    /// Kept open: the last handle closes the deliveries' journal.
    _hooks: crate::webhook::Webhooks,
    _auth: crate::auth::Auth,
    /// Kept open, as the running coordinator keeps it.
    _journal: SchedulerJournal,
}

fn farm() -> Farm {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (journal, _) = crate::journal::scheduler::open(&data, |c| c, Box::new(|_| {})).unwrap();
    let store = ArtifactStore::open(&data.join("artifacts")).unwrap();
    let segment = store.job_dir(1).join("chunk-00000-e1-f1-10-ab.mp4");
    std::fs::create_dir_all(segment.parent().unwrap()).unwrap();
    std::fs::write(&segment, b"segment bytes").unwrap();
    let seq = journal
        .append(vec![
            Fact::Accepted {
                job: 1,
                spec: Box::new(spec()),
                at_ms: 1,
                owner: Default::default(),
            },
            Fact::Stored {
                job: 1,
                chunk: 0,
                epoch: 1,
                start: 1,
                end: 10,
                node: "n1".into(),
                kind: ChunkKind::Normal,
                segment: segment.display().to_string(),
                hash: "ab".into(),
            },
        ])
        .unwrap();
    journal
        .wait_durable(seq, std::time::Duration::from_secs(10))
        .unwrap();
    let auth = crate::auth::Auth::open(&data).unwrap();
    auth.bootstrap(Some(&dir.path().join("admin.key"))).unwrap();
    let hooks =
        crate::webhook::Webhooks::start(crate::webhook::WebhookConfig::new(&data, vec![7; 32]))
            .unwrap();
    for name in SECRET_FILES {
        std::fs::write(data.join(name), format!("secret {name}")).unwrap();
    }
    let sources = Sources::new(&data, store, &journal, &auth, &hooks);
    Farm {
        _dir: dir,
        sources: Arc::new(sources),
        _hooks: hooks,
        _auth: auth,
        _journal: journal,
    }
}

fn take_backup(farm: &Farm, artifacts: bool) -> (Vec<u8>, Manifest) {
    let running = Running::begin(farm.sources.clone()).unwrap();
    assert!(
        matches!(Running::begin(farm.sources.clone()), Err(BackupError::Busy)),
        "one backup at a time"
    );
    let mut out = Vec::new();
    let manifest = write_backup(&running, artifacts, &mut out).unwrap();
    (out, manifest)
}

/// The offset in `archive` of the first byte of `member`'s content.
fn offset_of(archive: &[u8], member: &str) -> usize {
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == member {
            return entry.raw_file_position() as usize;
        }
    }
    panic!("no member {member}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_backup_restores_into_a_new_dir_that_opens_as_the_same_farm() {
    let farm = farm();
    let (archive, manifest) = take_backup(&farm, false);
    assert_eq!(manifest.counts.jobs, 1);
    assert_eq!(manifest.counts.segments, 1);
    let members: Vec<&str> = manifest.members.iter().map(|m| m.path.as_str()).collect();
    for want in [
        "journals/wal/meta.json",
        "journals/wal/state.json",
        "journals/auth/state.json",
        "journals/webhooks/state.json",
        "artifacts/job-1/chunk-00000-e1-f1-10-ab.mp4",
        "secrets/coordinator-key.der",
        "secrets/link-key",
    ] {
        assert!(members.contains(&want), "{want} missing from {members:?}");
    }
    let out = tempfile::tempdir().unwrap();
    let file = write(out.path(), "backup.tar", &archive);
    assert_eq!(verify(&file).unwrap(), manifest);

    let target = out.path().join("restored");
    let report = restore(&file, &target).unwrap();
    assert!(report.incarnation > manifest.incarnation);
    // The segment is under the new root, and the state says so.
    let new_segment = target.join("artifacts/job-1/chunk-00000-e1-f1-10-ab.mp4");
    assert_eq!(std::fs::read(&new_segment).unwrap(), b"segment bytes");
    let (journal, recovered) =
        crate::journal::scheduler::open(&target, |c| c, Box::new(|_| {})).unwrap();
    assert_eq!(recovered.incarnation, report.incarnation + 1);
    let job = &recovered.model.jobs[&1];
    assert_eq!(job.spec, spec());
    assert_eq!(
        job.done[&1].segment,
        std::path::absolute(&new_segment)
            .unwrap()
            .display()
            .to_string()
    );
    assert_eq!(recovered.model.next_job, 2);
    journal.close().unwrap();
    // The secrets are the old ones, readable by their owner only.
    for name in SECRET_FILES {
        let p = target.join(name);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("secret {name}")
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // The admin key of the old farm is a key of the restored one.
    let auth = crate::auth::Auth::open(&target).unwrap();
    let key = std::fs::read_to_string(farm._dir.path().join("admin.key")).unwrap();
    assert!(auth.authenticate(key.trim()).is_ok());
}

#[test]
fn a_flipped_byte_is_refused_naming_the_member_and_nothing_is_written() {
    let farm = farm();
    let (mut archive, _) = take_backup(&farm, false);
    let at = offset_of(&archive, "secrets/link-key");
    archive[at + 2] ^= 0x01;
    let out = tempfile::tempdir().unwrap();
    let file = write(out.path(), "backup.tar", &archive);
    let target = out.path().join("restored");
    let err = restore(&file, &target).unwrap_err().to_string();
    assert!(err.contains("member secrets/link-key: SHA-256 is"), "{err}");
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        1,
        "nothing beside the archive"
    );
}

#[test]
fn a_damaged_manifest_or_a_cut_archive_is_refused() {
    let farm = farm();
    let (archive, _) = take_backup(&farm, false);
    let out = tempfile::tempdir().unwrap();
    let mut damaged = archive.clone();
    let at = offset_of(&damaged, MANIFEST_NAME);
    damaged[at + 10] ^= 0x20;
    let file = write(out.path(), "damaged.tar", &damaged);
    let err = restore(&file, &out.path().join("a"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("member MANIFEST.json: SHA-256 is"), "{err}");
    // Cut before the manifest: a backup stream that ended early.
    let cut = &archive[..offset_of(&archive, MANIFEST_NAME) - 512];
    let file = write(out.path(), "cut.tar", cut);
    let err = restore(&file, &out.path().join("b"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("MANIFEST.json: missing"), "{err}");
    assert!(!out.path().join("a").exists() && !out.path().join("b").exists());
}

#[test]
fn a_non_empty_target_is_refused_and_left_as_it_was() {
    let farm = farm();
    let (archive, _) = take_backup(&farm, false);
    let out = tempfile::tempdir().unwrap();
    let file = write(out.path(), "backup.tar", &archive);
    let target = out.path().join("busy");
    std::fs::create_dir(&target).unwrap();
    write(&target, "keep", b"mine");
    let err = restore(&file, &target).unwrap_err().to_string();
    assert!(err.contains("is not empty"), "{err}");
    let names: Vec<_> = std::fs::read_dir(&target).unwrap().collect();
    assert_eq!(names.len(), 1);
    let mut kept = String::new();
    std::fs::File::open(target.join("keep"))
        .unwrap()
        .read_to_string(&mut kept)
        .unwrap();
    assert_eq!(kept, "mine");
    // An empty directory is fine.
    let empty = out.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    restore(&file, &empty).unwrap();
    assert!(empty.join("wal").is_dir());
}

#[test]
fn a_segment_gone_before_it_is_copied_is_listed_missing_and_the_restore_still_works() {
    // Its job ended and its segments were discarded between the export and
    // the copy: the archive says so, and the restored journal still names
    // the segment, which the coordinator finds absent at start and renders
    // again (`Fact::SegmentLost`).
    let farm = farm();
    let segment = farm
        .sources
        .store
        .job_dir(1)
        .join("chunk-00000-e1-f1-10-ab.mp4");
    std::fs::remove_file(&segment).unwrap();
    let (archive, manifest) = take_backup(&farm, false);
    assert_eq!(manifest.counts.segments, 0);
    assert_eq!(manifest.counts.segments_missing, 1);
    assert_eq!(
        manifest.missing,
        vec!["artifacts/job-1/chunk-00000-e1-f1-10-ab.mp4".to_string()]
    );
    let out = tempfile::tempdir().unwrap();
    let file = write(out.path(), "backup.tar", &archive);
    let target = out.path().join("restored");
    restore(&file, &target).unwrap();
    let (journal, recovered) =
        crate::journal::scheduler::open(&target, |c| c, Box::new(|_| {})).unwrap();
    let job = &recovered.model.jobs[&1];
    assert!(!Path::new(&job.done[&1].segment).exists());
    journal.close().unwrap();
}

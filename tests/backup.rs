//! Backup and restore end to end, against the real `drover` binary: a
//! backup taken while a job runs, the coordinator SIGKILLed and its data
//! dir deleted, the archive restored into a new one, and the coordinator
//! started on it (same ports, so the node reconnects) serving the same jobs
//! and finishing the running one with every frame. Also: an archive with a
//! flipped byte is refused naming the member, and a non-empty target is
//! refused, with nothing written either time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use drover_cli::cluster::{wait_for, Cluster};
use drover_shared::api::{ChunkState, JobState, JobView};

const BIN: &str = env!("CARGO_BIN_EXE_drover");
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

fn spec(name: &str, frames: u64) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "frames": { "start": 1, "end": frames },
        "fps": 24,
        "resolution": { "width": 64, "height": 64 },
        "render": { "kind": "shader", "shader": "rings" },
    })
}

/// Runs `drover ARGS` as the farm's admin against its coordinator.
fn drover(farm: &Cluster, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DROVER_URL", farm.url())
        .env("DROVER_API_KEY_FILE", farm.admin_key_file())
        .output()
        .expect("drover runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait_ended(farm: &Cluster, id: u64) -> JobView {
    let job = farm
        .client()
        .wait_ended(id, Duration::from_millis(100), JOB_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\ncoordinator log:\n{}", farm.log("coordinator")));
    assert_eq!(
        job.state,
        JobState::Done,
        "job {id}: {:?}\ncoordinator log:\n{}",
        job.error,
        farm.log("coordinator")
    );
    job
}

/// What a client sees of a job that a restore must keep.
fn identity(j: &JobView) -> (u64, String, u64, u8, String, String, String) {
    (
        j.id,
        j.name.clone(),
        j.frames_total,
        j.priority,
        j.project.clone(),
        j.encoder.clone(),
        j.submitter_key.clone(),
    )
}

/// The offset of the first content byte of `member` in the tar at `path`.
fn member_offset(path: &Path, member_prefix: &str) -> (String, u64) {
    let mut tar = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in tar.entries().unwrap() {
        let entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name.starts_with(member_prefix) && entry.size() > 16 {
            return (name, entry.raw_file_position());
        }
    }
    panic!("no member under {member_prefix} in {}", path.display());
}

#[test]
fn a_backup_taken_mid_job_restores_into_a_coordinator_that_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    let xdg = xdg.display().to_string();
    let mut farm = Cluster::start(
        Path::new(BIN),
        &dir.path().join("farm"),
        // Chunks of 8 frames: several are stored while frames remain.
        &["--max-chunk-frames", "8"],
        &[("XDG_RUNTIME_DIR", xdg.as_str())],
    )
    .expect("farm starts");
    // Slowed (about 0.1 s a frame), so the second job is surely mid-way
    // when the backup is taken.
    farm.add_node_with("n1", &["--slowdown", "50"]).unwrap();
    farm.wait_nodes(1).unwrap();
    let client = farm.client();

    // A done job, whose artifacts the restored coordinator must list with
    // the same checksums.
    let done = client.submit_json(&spec("done-before", 8)).unwrap().id;
    wait_ended(&farm, done);
    let artifacts_before = client.artifacts(done, None).unwrap();

    // A running job with some chunks stored and frames left.
    let frames = 48;
    let running = client.submit_json(&spec("running", frames)).unwrap().id;
    wait_for(JOB_TIMEOUT, "some chunks stored and frames left", || {
        // `frames_done` counts running chunks' progress too: a chunk whose
        // segment is stored is what the backup must carry.
        let chunks = client.chunks(running)?.chunks;
        let stored: u64 = chunks
            .iter()
            .filter(|c| c.state == ChunkState::Done)
            .map(|c| c.end - c.start + 1)
            .sum();
        Ok((stored > 0 && stored + 16 <= frames).then_some(()))
    })
    .unwrap();
    let jobs_before: Vec<_> = [done, running]
        .iter()
        .map(|id| identity(&client.job(*id).unwrap()))
        .collect();

    // Only an admin takes a backup: it holds the coordinator's keys.
    let viewer = client
        .create_key(&drover_cli::client::NewKey {
            name: "viewer".into(),
            role: drover_shared::api::Role::Viewer,
            project: None,
            rate_per_s: None,
            max_active_jobs: None,
        })
        .unwrap();
    let refused = ureq::get(&format!("{}/v1/admin/backup", farm.url()))
        .set("authorization", &format!("Bearer {}", viewer.secret))
        .call();
    assert!(
        matches!(refused, Err(ureq::Error::Status(403, _))),
        "{refused:?}"
    );

    let archive = dir.path().join("backup.tar");
    let archive_arg = archive.display().to_string();
    let started = Instant::now();
    let out = drover(&farm, &["backup", &archive_arg, "--artifacts", "--json"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = std::fs::metadata(&archive).unwrap().len();
    println!(
        "backup of the test farm: {bytes} bytes in {:.3} s (the command: {:.3} s), counts {}",
        took.as_secs_f64(),
        report["seconds"].as_f64().unwrap(),
        report["counts"]
    );
    assert_eq!(report["bytes"], bytes);
    assert!(
        report["counts"]["segments"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        report["counts"]["artifact_files"].as_u64().unwrap() >= 2,
        "{report}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600,
        "the archive holds the coordinator's keys"
    );
    // A second backup to the same file is refused: nothing is overwritten.
    let again = drover(&farm, &["backup", &archive_arg]);
    assert!(
        !again.status.success() && text(&again).contains("exists"),
        "{}",
        text(&again)
    );

    // The coordinator dies and its data dir is gone with it.
    farm.kill_coordinator().unwrap();
    let data = farm.root().join("coordinator");
    std::fs::remove_dir_all(&data).unwrap();

    // A damaged archive is refused naming the member; nothing is written.
    let damaged = dir.path().join("damaged.tar");
    std::fs::copy(&archive, &damaged).unwrap();
    let (member, at) = member_offset(&damaged, "artifacts/job-");
    let mut bytes_of = std::fs::read(&damaged).unwrap();
    bytes_of[at as usize + 8] ^= 0x40;
    std::fs::write(&damaged, &bytes_of).unwrap();
    let out = drover(
        &farm,
        &[
            "restore",
            &damaged.display().to_string(),
            "--data",
            &data.display().to_string(),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("member {member}: SHA-256 is")),
        "{}",
        text(&out)
    );
    assert!(!data.exists(), "a refused restore writes nothing");

    // A target that holds something is refused and left as it was.
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep"), "mine").unwrap();
    let out = drover(
        &farm,
        &[
            "restore",
            &archive_arg,
            "--data",
            &busy.display().to_string(),
        ],
    );
    assert!(
        !out.status.success() && text(&out).contains("is not empty"),
        "{}",
        text(&out)
    );
    let left: Vec<PathBuf> = std::fs::read_dir(&busy)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, vec![busy.join("keep")]);
    assert_eq!(std::fs::read_to_string(busy.join("keep")).unwrap(), "mine");

    // The restore, and a coordinator on it at the same ports.
    let out = drover(
        &farm,
        &[
            "restore",
            &archive_arg,
            "--data",
            &data.display().to_string(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let restored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        restored["incarnation"].as_u64() > restored["backup_incarnation"].as_u64(),
        "{restored}"
    );
    farm.start_coordinator().unwrap();
    let client = farm.client();

    // The same jobs, and the same artifacts of the done one.
    let jobs_after: Vec<_> = [done, running]
        .iter()
        .map(|id| identity(&client.job(*id).unwrap()))
        .collect();
    assert_eq!(jobs_after, jobs_before);
    let artifacts_after = client.artifacts(done, None).unwrap();
    let sums = |l: &drover_shared::api::ArtifactList| {
        l.artifacts
            .iter()
            .map(|a| (a.name.clone(), a.bytes, a.sha256.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(sums(&artifacts_after), sums(&artifacts_before));

    // The node reconnects (same certificate, same identity) and the
    // running job ends with every frame.
    let job = wait_ended(&farm, running);
    assert_eq!(job.frames_done, frames);
    let output = job.output_path.expect("an output");
    assert!(
        Path::new(&output).starts_with(&data),
        "{output} is in the restored data dir"
    );
    let facts = drover_cli::media_check::facts(Path::new(&output)).unwrap();
    assert_eq!(facts.frames, frames, "{facts:?}");
    // The restored coordinator's epochs are past the old farm's.
    let log = farm.log("coordinator");
    assert!(log.contains("journal replayed"), "{log}");
    farm.stop();
}

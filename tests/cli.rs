//! The `drover` client commands against a real farm, run as a user runs
//! them: the real binary as a subprocess with `DROVER_URL` and
//! `DROVER_API_KEY`, its stdout and exit status checked. `--json` output is
//! read as the API's documents; text output is checked where people read
//! it (the final screen of `drover watch`).

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_cli::client::Client;
use drover_cli::cluster::{wait_for, Cluster};
use drover_cli::events::StreamItem;
use drover_shared::api::{ArtifactList, JobPage, JobState, JobView, KeyCreated, Submitted};
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());
const BIN: &str = env!("CARGO_BIN_EXE_drover");
/// Longest a command may run: a small job on one lavapipe node takes
/// seconds, a loaded CI machine many times that.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn farm(nodes: usize) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Path::new(BIN), &dir.path().join("farm"), &[], &[]).unwrap();
    for i in 1..=nodes {
        c.add_node(&format!("node-{i}")).unwrap();
    }
    if nodes > 0 {
        c.wait_nodes(nodes).unwrap();
    }
    (dir, c)
}

fn spec(name: &str, frames: u64) -> Value {
    json!({
        "name": name,
        "frames": { "start": 1, "end": frames },
        "fps": 24,
        "resolution": { "width": 64, "height": 64 },
        "render": { "kind": "shader", "shader": "rings" },
    })
}

/// `drover ARGS` as a user with `key` runs it against the farm: no config
/// file of the machine's user can leak in.
fn drover(c: &Cluster, key: &str, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("DROVER_URL", c.url())
        .env("DROVER_API_KEY", key)
        .env_remove("DROVER_API_KEY_FILE")
        .env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .current_dir(home)
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to its end, or kills it after [`COMMAND_TIMEOUT`].
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both pipes beside the wait, so that a full pipe cannot stall it.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut b).unwrap();
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut b).unwrap();
        b
    });
    let waited = wait_for(COMMAND_TIMEOUT, "the command to end", || {
        Ok(child.try_wait()?)
    });
    let status = match waited {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?}: {e}");
        }
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Runs `drover ARGS`, which must succeed; returns its stdout.
fn ok(c: &Cluster, key: &str, home: &Path, args: &[&str]) -> String {
    let out = run(drover(c, key, home, args));
    assert!(
        out.status.success(),
        "drover {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncoordinator log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log("coordinator")
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `drover ARGS`, which must fail; returns its stderr.
fn fails(c: &Cluster, key: &str, home: &Path, args: &[&str]) -> String {
    let out = run(drover(c, key, home, args));
    assert!(
        !out.status.success(),
        "drover {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "drover {args:?} printed on stdout although it failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn json_of<T: serde::de::DeserializeOwned>(stdout: &str) -> T {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not the API's JSON ({e}): {stdout}"))
}

/// A running `drover events`: its stdout and stderr lines arrive on
/// channels, read by threads, so the test can wait for them with a
/// deadline.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    notes: mpsc::Receiver<String>,
}

fn lines_of(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Follower {
    fn start(mut cmd: Command) -> Follower {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let notes = lines_of(child.stderr.take().unwrap());
        Follower {
            child,
            lines,
            notes,
        }
    }

    /// Waits until it says on stderr that its stream is open.
    fn connected(&mut self) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.notes.recv_timeout(left) {
                Ok(line) if line.starts_with("following the events of ") => return,
                Ok(line) => got.push(line),
                Err(e) => panic!("drover events did not connect: {e}; stderr: {got:#?}"),
            }
        }
    }

    /// Every line up to the first that `last` accepts (inclusive), or a
    /// panic naming what was read when the deadline passes first.
    fn until(&mut self, mut last: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let end = last(&line);
                    got.push(line);
                    if end {
                        return got;
                    }
                }
                Err(e) => panic!("drover events: {e} after reading {got:#?}"),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The (kind, job) of each JSON event line.
fn kinds(lines: &[String]) -> Vec<(String, Option<u64>)> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["kind"].as_str().unwrap().to_string(), v["job"].as_u64())
        })
        .collect()
}

fn sha256_of(path: &Path) -> String {
    drover_cli::download::sha256_file(path).unwrap()
}

#[test]
fn a_job_submitted_watched_and_downloaded_with_the_cli() {
    let _g = serial();
    let (dir, mut c) = farm(1);
    let key = c.admin_key().unwrap();
    let home = dir.path();

    // Started before the submission, the event stream has all of it.
    let mut events = Follower::start(drover(
        &c,
        &key,
        home,
        &["events", "--kinds", "job", "--json"],
    ));
    // Submitted once the stream is open (it says so on stderr), so that
    // the stream has every event of the job.
    events.connected();
    let spec_file = home.join("job.json");
    std::fs::write(&spec_file, spec("cli watch", 8).to_string()).unwrap();
    let sub: Submitted = json_of(&ok(
        &c,
        &key,
        home,
        &["submit", spec_file.to_str().unwrap(), "--json"],
    ));
    let id = sub.id;

    // `drover watch` to the end: the final screen names the node with the
    // frames it rendered (not 0).
    let out = run(drover(&c, &key, home, &["watch", &id.to_string()]));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "watch: {stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("job {id} done: 8 frames")),
        "{stdout}"
    );
    assert!(stdout.contains("  node-1: 8 frames"), "{stdout}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last_line,
        format!("job {id} done: 8/8 frames [node-1=8]"),
        "{stderr}"
    );

    // The stream carried the job from submission to its end, in order.
    let lines =
        events.until(|l| l.contains("\"job.done\"") && l.contains(&format!("\"job\":{id}")));
    let seen: Vec<String> = kinds(&lines)
        .into_iter()
        .filter(|(_, j)| *j == Some(id))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("job.submitted"),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("job.done"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|k| k == "job.progress"), "{seen:?}");
    drop(events);

    // `--job N` from an earlier event's id: the rest of that job's events,
    // and only its.
    let submitted_id = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["kind"] == "job.submitted" && v["job"] == json!(id))
        .map(|v| v["id"].as_str().unwrap().to_string())
        .unwrap();
    let mut resumed = Follower::start(drover(
        &c,
        &key,
        home,
        &[
            "events",
            "--job",
            &id.to_string(),
            "--last-event-id",
            &submitted_id,
            "--json",
        ],
    ));
    let rest = resumed.until(|l| l.contains("\"job.done\""));
    let rest = kinds(&rest);
    assert!(rest.iter().all(|(_, j)| *j == Some(id)), "{rest:?}");
    assert!(
        !rest.iter().any(|(k, _)| k == "job.submitted"),
        "resumed after it: {rest:?}"
    );
    drop(resumed);

    // `drover download -o PATH --json` writes the file the artifact list
    // describes, and prints that artifact.
    let list: ArtifactList = json_of(&ok(
        &c,
        &key,
        home,
        &["artifacts", &id.to_string(), "--json"],
    ));
    let listed = list
        .artifacts
        .iter()
        .find(|a| a.name == "output.mp4")
        .unwrap();
    let path = home.join("out.mp4");
    let printed: drover_shared::api::ArtifactView = json_of(&ok(
        &c,
        &key,
        home,
        &[
            "download",
            &id.to_string(),
            "-o",
            path.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(sha256_of(&path), listed.sha256);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), listed.bytes);
    assert_eq!(printed.sha256, listed.sha256);

    // Without -o: `<job name>-<id>.mp4` in the current directory; the
    // poster likewise as PNG.
    let text = ok(&c, &key, home, &["download", &id.to_string()]);
    let default = home.join(format!("cli_watch-{id}.mp4"));
    assert_eq!(sha256_of(&default), listed.sha256, "{text}");
    assert!(text.contains("matches the artifact list"), "{text}");
    ok(&c, &key, home, &["download", &id.to_string(), "--poster"]);
    let poster = std::fs::read(home.join(format!("cli_watch-{id}.png"))).unwrap();
    assert!(poster.starts_with(b"\x89PNG"), "not a PNG");

    // The job as the other read commands show it.
    let job: JobView = json_of(&ok(&c, &key, home, &["status", &id.to_string(), "--json"]));
    assert_eq!(job.frames_by_node.get("node-1"), Some(&8));
    let chunks: Value = json_of(&ok(&c, &key, home, &["chunks", &id.to_string(), "--json"]));
    assert_eq!(chunks["job"], json!(id));
    let page: JobPage = json_of(&ok(
        &c,
        &key,
        home,
        &["jobs", "--state", "done", "--all", "--json"],
    ));
    assert!(page.jobs.iter().any(|j| j.id == id), "{page:?}");
    assert!(page.next.is_none());
    let node: Value = json_of(&ok(&c, &key, home, &["nodes", "node-1", "--json"]));
    assert_eq!(node["frames_rendered"], json!(8));
    let text = ok(&c, &key, home, &["status", &id.to_string()]);
    assert!(text.contains("frames stored by node: node-1 8"), "{text}");

    // `submit --watch`, the way the issue was found: its final screen
    // keeps the node's frames too.
    let out = run(drover(
        &c,
        &key,
        home,
        &["submit", spec_file.to_str().unwrap(), "--watch"],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "submit --watch: {stdout}");
    assert!(stdout.contains("  node-1: 8 frames"), "{stdout}");
    let last_line = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        last_line.ends_with("done: 8/8 frames [node-1=8]"),
        "{last_line}"
    );
    c.stop();
}

#[test]
fn keys_made_with_the_cli_hold_to_their_role() {
    let _g = serial();
    // No node: the job waits, which is all this needs.
    let (dir, mut c) = farm(0);
    let admin = c.admin_key().unwrap();
    let home = dir.path();
    let spec_file = home.join("job.json");
    std::fs::write(&spec_file, spec("queued", 8).to_string()).unwrap();
    let sub: Submitted = json_of(&ok(
        &c,
        &admin,
        home,
        &["submit", spec_file.to_str().unwrap(), "--json"],
    ));
    let id = sub.id.to_string();

    // The secret is printed once, with the key.
    let created: KeyCreated = json_of(&ok(
        &c,
        &admin,
        home,
        &["keys", "create", "ci", "--role", "viewer", "--json"],
    ));
    assert!(created.secret.starts_with("drv_"), "{created:?}");
    let viewer = created.secret.clone();
    let out = run(drover(
        &c,
        &admin,
        home,
        &[
            "keys",
            "create",
            "people",
            "--role",
            "submitter",
            "--project",
            "film",
        ],
    ));
    assert!(out.status.success());
    let secret = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        secret.lines().count(),
        1,
        "only the secret on stdout: {secret}"
    );
    assert!(secret.starts_with("drv_"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not store"),
        "no note that the secret is not stored"
    );

    // A viewer reads...
    let page: JobPage = json_of(&ok(&c, &viewer, home, &["jobs", "--json"]));
    assert!(page.jobs.iter().any(|j| j.id == sub.id), "{page:?}");
    // ...and cannot act: the problem is shown, the exit status is not 0.
    let err = fails(&c, &viewer, home, &["cancel", &id]);
    assert!(err.contains("403"), "{err}");
    let err = fails(&c, &viewer, home, &["keys", "list"]);
    assert!(err.contains("403"), "{err}");

    // The admin acts on the waiting job.
    let v: JobView = json_of(&ok(&c, &admin, home, &["pause", &id, "--json"]));
    assert!(v.paused);
    let v: JobView = json_of(&ok(&c, &admin, home, &["priority", &id, "90", "--json"]));
    assert_eq!(v.priority, 90);
    let v: JobView = json_of(&ok(&c, &admin, home, &["resume", &id, "--json"]));
    assert!(!v.paused);
    let hooks: Value = json_of(&ok(&c, &admin, home, &["webhooks", &id, "--json"]));
    assert_eq!(hooks, json!([]));
    let err = fails(&c, &admin, home, &["artifacts", &id]);
    assert!(err.contains("409"), "not done yet: {err}");
    let err = fails(&c, &admin, home, &["events", "--job", "999999", "--json"]);
    assert!(err.contains("404"), "{err}");
    let err = fails(&c, &admin, home, &["drain", "no-such-node"]);
    assert!(err.contains("404"), "{err}");
    let v: JobView = json_of(&ok(&c, &admin, home, &["cancel", &id, "--json"]));
    assert_eq!(v.state, JobState::Cancelled);

    // Revoked, the viewer's key opens nothing.
    let keys: Vec<Value> = json_of(&ok(&c, &admin, home, &["keys", "list", "--json"]));
    assert!(keys.iter().any(|k| k["id"] == json!(created.key.id)));
    ok(&c, &admin, home, &["keys", "revoke", &created.key.id]);
    let err = fails(&c, &viewer, home, &["jobs"]);
    assert!(err.contains("401"), "{err}");
    c.stop();
}

#[test]
fn the_event_stream_resumes_after_a_restart_with_a_reset() {
    let _g = serial();
    let (_dir, mut c) = farm(0);
    let client: Client = c.client();
    let (tx, rx) = mpsc::channel();
    let stream = client.events(None, None);
    std::thread::spawn(move || {
        for item in stream {
            let item = item.map_err(|e| format!("{e:#}"));
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(COMMAND_TIMEOUT)
            .expect("the stream says something")
    };
    assert_eq!(next(), Ok(StreamItem::Connected { resumed: false }));
    let sub = client.submit_json(&spec("before", 8)).unwrap();
    match next() {
        Ok(StreamItem::Event { event, .. }) => {
            assert_eq!(
                (event.kind.as_str(), event.job),
                ("job.submitted", Some(sub.id))
            )
        }
        other => panic!("{other:?}"),
    }
    // A restart drops the connection; the stream opens a new one by
    // itself, resuming after the last event, which belongs to the run
    // before: the coordinator says events were missed.
    c.restart_coordinator().unwrap();
    let mut items = Vec::new();
    loop {
        let item = next();
        let reset = matches!(item, Ok(StreamItem::Reset { .. }));
        items.push(item);
        if reset {
            break;
        }
    }
    assert!(items.iter().any(|i| i.is_err()), "{items:?}");
    assert!(
        items.contains(&Ok(StreamItem::Connected { resumed: true })),
        "{items:?}"
    );
    // And it follows on.
    let sub = client.submit_json(&spec("after", 8)).unwrap();
    match next() {
        Ok(StreamItem::Event { event, .. }) => assert_eq!(event.job, Some(sub.id)),
        other => panic!("{other:?}"),
    }
    c.stop();
}

#[test]
fn completions_and_help_cover_every_client_command() {
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for word in ["download", "artifacts", "events", "keys", "--json"] {
        assert!(script.contains(word), "the bash script lacks {word}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    for cmd in [
        "jobs",
        "status",
        "watch",
        "cancel",
        "retry",
        "pause",
        "resume",
        "priority",
        "chunks",
        "logs",
        "artifacts",
        "download",
        "webhooks",
        "nodes",
        "drain",
        "undrain",
        "clear-quarantine",
        "keys",
        "events",
        "completions",
    ] {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(&format!("Example:\n  drover {cmd}")),
            "`drover {cmd} --help` has no example of itself:\n{help}"
        );
        if !["keys", "completions"].contains(&cmd) {
            assert!(
                help.contains("--url") && help.contains("--json"),
                "{cmd}:\n{help}"
            );
        }
    }
}

#[test]
fn admission_tags_and_quic_submission_with_the_cli() {
    let _g = serial();
    let (dir, mut c) = farm(0);
    let home = dir.path();
    let admin = c.admin_key().unwrap();
    // A join token made with the CLI is a new node's only flag.
    let token = ok(
        &c,
        &admin,
        home,
        &["join-tokens", "create", "--note", "cli"],
    );
    let token = token.trim().to_string();
    assert!(token.starts_with("drj1_"), "{token}");
    let listed: Vec<Value> = json_of(&ok(&c, &admin, home, &["join-tokens", "list", "--json"]));
    assert!(listed.iter().any(|t| t["note"] == "cli"), "{listed:?}");
    let data = dir.path().join("joined");
    let mut node = Reaped(
        std::process::Command::new(BIN)
            .args(["node", "--join", &token, "--name", "joined", "--data"])
            .arg(&data)
            .env(
                "XDG_RUNTIME_DIR",
                std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = c.client();
    drover_cli::cluster::wait_for(Duration::from_secs(90), "the joined node", || {
        Ok(client
            .nodes()?
            .iter()
            .any(|n| n.name == "joined" && n.connected)
            .then_some(()))
    })
    .unwrap();
    let ids: Vec<Value> = json_of(&ok(&c, &admin, home, &["identities", "list", "--json"]));
    assert!(ids.iter().any(|i| i["name"] == "joined"), "{ids:?}");
    // Tags set with the CLI replace the node's own.
    let n: Value = json_of(&ok(
        &c,
        &admin,
        home,
        &["tags", "joined", "4k,fast", "--json"],
    ));
    assert_eq!(n["capabilities"]["tags"], json!(["4k", "fast"]));
    // A job submitted over QUIC runs and shows up over REST.
    let spec_path = home.join("quic.json");
    std::fs::write(&spec_path, spec("over quic", 8).to_string()).unwrap();
    let sub: Value = json_of(&ok(
        &c,
        &admin,
        home,
        &[
            "submit",
            spec_path.to_str().unwrap(),
            "--quic",
            &c.addrs.quic.to_string(),
            "--cert-sha256",
            &c.addrs.cert_sha256.clone(),
            "--json",
        ],
    ));
    let id = sub["id"].as_u64().unwrap();
    let v: Value = json_of(&ok(
        &c,
        &admin,
        home,
        &["status", &id.to_string(), "--json"],
    ));
    assert_eq!(v["name"], "over quic");
    // Revoked with the CLI: the node is cut off and stops, saying why.
    ok(&c, &admin, home, &["identities", "revoke", "joined"]);
    let status =
        drover_cli::cluster::wait_for(Duration::from_secs(60), "the revoked node to stop", || {
            Ok(node.0.try_wait()?)
        })
        .unwrap();
    assert!(!status.success());
    let err = fails(&c, &admin, home, &["identities", "revoke", "nobody"]);
    assert!(err.contains("404"), "{err}");
    c.stop();
}

/// A child process killed and reaped when the test ends, failed or not.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! Chunk logs end to end: a real farm (coordinator and two nodes as
//! processes of the real `drover` binary), a job that succeeds and one a
//! node fails on purpose (`--fail-frame`); `drover logs` and the API show
//! each chunk attempt's executor log as its node's worker wrote it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use drover_cli::client::{Client, NewKey};
use drover_cli::cluster::{wait_for, Cluster};
use drover_shared::api::{ChunkLogEntry, ChunkLogList, JobState, Role};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_drover");
/// Longest wait for a small job (seconds on two lavapipe nodes, many
/// times that on a loaded CI machine).
const JOB_TIMEOUT: Duration = Duration::from_secs(240);

/// Frames of the job node-2 fails: every one, so whichever chunk node-2
/// takes fails at its first frame.
const FAILING: std::ops::RangeInclusive<u64> = 1001..=1048;

fn spec(name: &str, frames: std::ops::RangeInclusive<u64>) -> Value {
    json!({
        "name": name,
        "frames": { "start": frames.start(), "end": frames.end() },
        "fps": 24,
        "resolution": { "width": 64, "height": 64 },
        "render": { "kind": "shader", "shader": "rings" },
    })
}

/// `drover ARGS` with the admin key; its stdout, or a panic with its
/// stderr when it fails.
fn drover(c: &Cluster, home: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("DROVER_URL", c.url())
        .env("DROVER_API_KEY", c.admin_key().unwrap())
        .env_remove("DROVER_API_KEY_FILE")
        .env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "drover {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn wait_ended(client: &Client, id: u64) -> drover_shared::api::JobView {
    wait_for(JOB_TIMEOUT, "the job to end", || {
        let j = client.job(id)?;
        Ok(j.state.is_terminal().then_some(j))
    })
    .unwrap()
}

/// The job's logs once every ended attempt's log is complete and `ready`
/// holds.
fn logs_when(
    client: &Client,
    id: u64,
    what: &str,
    ready: impl Fn(&[ChunkLogEntry]) -> bool,
) -> Vec<ChunkLogEntry> {
    wait_for(JOB_TIMEOUT, what, || {
        let list: ChunkLogList = client.get_json(&format!("/v1/jobs/{id}/logs"))?;
        assert_eq!(list.job, id);
        // A running attempt's log grows until its end; the others are
        // whole once their last piece is in.
        let complete = list
            .logs
            .iter()
            .filter(|e| e.state != "running")
            .all(|e| e.complete);
        Ok((complete && ready(&list.logs)).then_some(list.logs))
    })
    .unwrap()
}

/// Frame numbers the timing lines of a log name (`frame N: ...`,
/// `frames A-B: ...`), as ranges.
fn timed_frames(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l
                .strip_prefix("frames ")
                .or_else(|| l.strip_prefix("frame "))?;
            let span = rest.split(':').next()?;
            let (a, b) = span.split_once('-').unwrap_or((span, span));
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// GET `path` with `key`: status, content type and body.
fn get(c: &Cluster, key: &str, path: &str) -> (u16, String, String) {
    let r = ureq::get(&format!("{}{path}", c.url()))
        .set("authorization", &format!("Bearer {key}"))
        .call();
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    let status = resp.status();
    let ct = resp.header("content-type").unwrap_or_default().to_string();
    (status, ct, resp.into_string().unwrap())
}

#[test]
fn each_chunk_keeps_its_executor_log_readable_by_cli_and_api() {
    std::fs::create_dir_all("/tmp/xdg").ok();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut c = Cluster::start(Path::new(BIN), &dir.path().join("farm"), &[], &[]).unwrap();
    c.add_node("node-1").unwrap();
    // Test aid: node-2 fails any chunk of the second job.
    let fail: Vec<String> = FAILING.map(|f| f.to_string()).collect();
    c.add_node_with("node-2", &["--fail-frame", &fail.join(",")])
        .unwrap();
    c.wait_nodes(2).unwrap();
    let client = c.client();
    let admin = c.admin_key().unwrap();

    // A job that succeeds: each chunk's log holds its worker's lines, and
    // frame timings of its own frames only.
    let ok = client.submit_json(&spec("logged", 1..=48)).unwrap().id;
    let job = wait_ended(&client, ok);
    assert_eq!(job.state, JobState::Done, "{:?}", job.error);
    let logs = logs_when(&client, ok, "the done job's logs", |l| {
        l.iter().any(|e| e.state == "done")
    });
    let done: Vec<&ChunkLogEntry> = logs.iter().filter(|e| e.state == "done").collect();
    let stored: u64 = done.iter().map(|e| e.end - e.start + 1).sum();
    assert_eq!(stored, 48, "the done chunks' logs cover the job: {logs:?}");
    for e in &done {
        let text = client.get_text(&e.url).unwrap();
        assert_eq!(e.size_bytes, text.len() as u64);
        assert!(text.contains(": adapter "), "{text}");
        assert!(text.contains("encoder libx264"), "{text}");
        assert!(text.contains("shader pipeline"), "{text}");
        assert!(
            text.contains(&format!("segment complete: frames {}-{}", e.start, e.end)),
            "{text}"
        );
        let last = text.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("chunk finished: frames {}-{} in ", e.start, e.end)),
            "{text}"
        );
        let frames = timed_frames(&text);
        assert!(!frames.is_empty(), "no frame lines in:\n{text}");
        for (a, b) in frames {
            assert!(
                e.start <= a && a <= b && b <= e.end,
                "frames {a}-{b} in the log of chunk {} (frames {}-{}):\n{text}",
                e.index,
                e.start,
                e.end
            );
        }
    }

    // A job node-2 fails: its attempt's log says so and names the frame.
    let bad = client.submit_json(&spec("failing", FAILING)).unwrap().id;
    let logs = logs_when(&client, bad, "a failed attempt's log", |l| {
        l.iter().any(|e| e.state == "failed")
    });
    let failed = logs.iter().find(|e| e.state == "failed").unwrap();
    assert_eq!(failed.node, "node-2");
    let text = client.get_text(&failed.url).unwrap();
    let why = format!(
        "chunk failed on frame {}: test aid: frame {} fails (--fail-frame)",
        failed.start, failed.start
    );
    assert!(text.contains(&why), "{why:?} missing from:\n{text}");
    assert!(
        text.contains("test aids: slowdown x1, failing frames"),
        "{text}"
    );
    assert!(failed
        .error
        .as_deref()
        .is_some_and(|e| e.contains("--fail-frame")));
    // The job still ends (its frames go to node-1); its logs are kept.
    let j = wait_ended(&client, bad);
    assert_eq!(j.state, JobState::Done, "{:?}", j.error);

    // `drover logs JOB`: every chunk's log under its header.
    let all = drover(&c, &home, &["logs", &ok.to_string()]);
    for e in &done {
        let header = format!(
            "=== chunk {} (attempt epoch {}) · frames {}-{} · node {} · done",
            e.index, e.epoch, e.start, e.end, e.node
        );
        assert!(all.contains(&header), "{header:?} missing from:\n{all}");
    }
    assert_eq!(all.matches("=== chunk ").count(), logs_count(&client, ok));
    // `--chunk N`: that chunk only.
    let first = done[0];
    let one = drover(
        &c,
        &home,
        &["logs", &ok.to_string(), "--chunk", &first.index.to_string()],
    );
    assert_eq!(one.matches("=== chunk ").count(), 1, "{one}");
    assert!(
        one.starts_with(&format!("=== chunk {} ", first.index)),
        "{one}"
    );
    assert!(
        one.ends_with(&client.get_text(&first.url).unwrap()),
        "{one}"
    );
    // The failed attempt's header and log.
    let f = drover(
        &c,
        &home,
        &[
            "logs",
            &bad.to_string(),
            "--chunk",
            &failed.index.to_string(),
        ],
    );
    assert!(f.contains("· node node-2 · failed: "), "{f}");
    assert!(f.contains(&why), "{f}");
    // `--json` is the API's document.
    let json: ChunkLogList =
        serde_json::from_str(&drover(&c, &home, &["logs", &ok.to_string(), "--json"])).unwrap();
    assert_eq!(json.job, ok);
    assert_eq!(json.logs.len(), logs_count(&client, ok));

    // The routes: content types, and 404s naming what is missing.
    let (status, ct, body) = get(&c, &admin, &first.url);
    assert_eq!((status, ct.as_str()), (200, "text/plain; charset=utf-8"));
    assert!(body.contains("chunk finished"));
    let (status, ct, _) = get(&c, &admin, &format!("/v1/jobs/{ok}/logs"));
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let (status, ct, body) = get(&c, &admin, &format!("/v1/jobs/{ok}/chunks/9999/log"));
    assert_eq!(
        (status, ct.as_str()),
        (404, "application/problem+json"),
        "{body}"
    );
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["field"], "index");
    assert_eq!(
        problem["detail"],
        format!("job {ok} has no log of chunk 9999")
    );
    let (status, _, body) = get(&c, &admin, "/v1/jobs/424242/logs");
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = get(&c, &admin, &format!("/v1/jobs/{ok}/chunks/x/log"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"index\""), "{body}");
    // Another project's key sees neither the job nor its logs.
    let other = client
        .create_key(&NewKey {
            name: "other".into(),
            role: Role::Viewer,
            project: Some("other".into()),
            rate_per_s: None,
            max_active_jobs: None,
        })
        .unwrap()
        .secret;
    for path in [format!("/v1/jobs/{ok}/logs"), first.url.clone()] {
        let (status, _, body) = get(&c, &other, &path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains(&format!("job {ok} does not exist")), "{body}");
    }

    // A running chunk's log can be read while it runs (a stuck chunk's
    // would be): a slowed node alone renders a job.
    // Test aid: --slowdown makes this node's frames take about 10 times
    // longer (its calibration too, so more would cost seconds at its start),
    // so the chunk runs for a couple of seconds.
    c.add_node_with("slow", &["--slowdown", "10"]).unwrap();
    c.wait_nodes(3).unwrap();
    for n in ["node-1", "node-2"] {
        client.drain_node(n, Some(false)).unwrap();
    }
    let slow = client.submit_json(&spec("slow", 1..=96)).unwrap().id;
    let running = wait_for(JOB_TIMEOUT, "a running chunk's log", || {
        let list: ChunkLogList = client.get_json(&format!("/v1/jobs/{slow}/logs"))?;
        Ok(list
            .logs
            .into_iter()
            .find(|e| e.state == "running" && !e.complete && e.size_bytes > 0))
    })
    .unwrap();
    assert_eq!(running.node, "slow");
    let partial = client.get_text(&running.url).unwrap();
    assert!(
        partial.contains("rendering from frame 1 at 64x64"),
        "{partial}"
    );
    assert!(!partial.contains("chunk finished"), "{partial}");
    let header = drover(&c, &home, &["logs", &slow.to_string()]);
    assert!(header.contains("· running · "), "{header}");
    assert!(header.contains(", still growing ==="), "{header}");
    let j = wait_ended(&client, slow);
    assert_eq!(j.state, JobState::Done, "{:?}", j.error);
    let whole = logs_when(&client, slow, "the slow job's log", |l| {
        l.iter()
            .any(|e| e.index == running.index && e.state == "done")
    });
    let whole = client
        .get_text(&whole.iter().find(|e| e.index == running.index).unwrap().url)
        .unwrap();
    assert!(whole.starts_with(&partial), "{whole}");
    assert!(whole.contains("chunk finished: frames 1-96"), "{whole}");
    c.stop();
}

fn logs_count(client: &Client, id: u64) -> usize {
    let list: ChunkLogList = client.get_json(&format!("/v1/jobs/{id}/logs")).unwrap();
    list.logs.len()
}

//! End-to-end tests: the real `drover` binary as separate processes, real
//! QUIC on loopback, real sled on disk, real wgpu (lavapipe without a GPU)
//! and real FFmpeg.
//!
//! Tests take a global lock: each starts its own farm, and two farms at once
//! on a 2-core CI machine would only make each slower.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use drover_cli::cluster::{wait_for, Cluster};
use drover_shared::api::{ChunkState, JobState, JobView, Problem};

static SERIAL: Mutex<()> = Mutex::new(());

const BIN: &str = env!("CARGO_BIN_EXE_drover");
const JOB_TIMEOUT: Duration = Duration::from_secs(240);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn farm(nodes: usize, args: &[&str]) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Path::new(BIN), dir.path(), args, &[]).unwrap();
    for i in 1..=nodes {
        c.add_node(&format!("node-{i}")).unwrap();
    }
    c.wait_nodes(nodes).unwrap();
    (dir, c)
}

fn spec(name: &str, frames: u64, w: u32, h: u32, shader: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "frames": { "start": 1, "end": frames },
        "fps": 24,
        "resolution": { "width": w, "height": h },
        "render": { "kind": "shader", "shader": shader },
    })
}

fn wait_done(c: &Cluster, id: u64) -> JobView {
    let client = c.client();
    let job = wait_for(JOB_TIMEOUT, "the job to end", || {
        let j = client.job(id)?;
        Ok(j.state.is_terminal().then_some(j))
    })
    .unwrap_or_else(|e| panic!("{e}\ncoordinator log:\n{}", c.log("coordinator")));
    assert_eq!(
        job.state,
        JobState::Done,
        "job {id} ended {:?}: {:?}\ncoordinator log:\n{}",
        job.state,
        job.error,
        c.log("coordinator")
    );
    job
}

/// ffprobe's view of the first video stream: frames counted by decoding.
fn ffprobe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height,r_frame_rate,codec_name",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe runs (apt package ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["streams"][0].clone()
}

#[test]
fn a_two_node_farm_renders_a_job_that_matches_local_renders() {
    let _g = serial();
    let (dir, c) = farm(2, &["--chunk-frames", "24"]);
    let client = c.client();
    let (w, h) = (640, 360);
    let sub = client
        .submit_json(&spec("e2e", 96, w, h, "plasma"))
        .unwrap();
    assert_eq!(sub.status_url, format!("/v1/jobs/{}", sub.id));
    let job = wait_done(&c, sub.id);

    // Both nodes did part of the work, and every frame is accounted for.
    assert_eq!(job.frames_done, 96);
    assert_eq!(job.frames_by_node.values().sum::<u64>(), 96);
    assert_eq!(job.frames_by_node.len(), 2, "{:?}", job.frames_by_node);
    assert!(job.frames_by_node.values().all(|f| *f > 0));
    assert!(job.chunks.iter().all(|ch| ch.state == ChunkState::Done));
    let latency = job.first_frame_at_ms.unwrap() - job.submitted_at_ms;
    assert!(
        latency < 2_000,
        "first frame started {latency} ms after submission"
    );

    // Once joined (and the Done record flushed), the coordinator keeps the
    // output and drops the segments.
    let job_dir = dir
        .path()
        .join("coordinator/artifacts")
        .join(format!("job-{}", sub.id));
    wait_for(
        Duration::from_secs(30),
        "the segments to be deleted",
        || {
            let mut stored: Vec<String> = std::fs::read_dir(&job_dir)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            stored.sort();
            Ok((stored == ["output.mp4"]).then_some(()))
        },
    )
    .unwrap();

    // The output, fetched through the API, is what was asked for.
    let out: PathBuf = dir.path().join("out.mp4");
    client.download(sub.id, &out).unwrap();
    let probe = ffprobe(&out);
    assert_eq!(probe["codec_name"], "h264");
    assert_eq!(probe["nb_read_frames"], "96");
    assert_eq!(probe["width"], w);
    assert_eq!(probe["height"], h);
    assert_eq!(probe["r_frame_rate"], "24/1");
    // faststart: the index comes before the media, so players start at once.
    let bytes = std::fs::read(&out).unwrap();
    let find = |tag: &[u8]| bytes.windows(4).position(|w| w == tag).unwrap();
    assert!(
        find(b"moov") < find(b"mdat"),
        "moov after mdat: not faststart"
    );

    // Frame k of the video is frame 1+k of the shader, rendered here.
    let wanted = [0u64, 23, 24, 47, 48, 71, 72, 95];
    let decoded = drover_node::encode::decode_rgba_frames(&out, &wanted).unwrap();
    assert_eq!(decoded.frame_count, 96);
    let gpu = drover_node::render::Gpu::new().unwrap();
    let source = drover_shaders::get("plasma").unwrap().source;
    let mut r = drover_node::render::Renderer::new(&gpu, source, w, h, 24).unwrap();
    for (k, rgba) in &decoded.frames {
        let local = r.render(1 + k).unwrap();
        let psnr = drover_node::encode::psnr_rgb(rgba, &local);
        assert!(
            psnr >= 35.0,
            "frame {k}: PSNR {psnr:.1} dB against a local render"
        );
        // And it is not just any frame: a neighbour scores clearly lower.
        let other = r.render(1 + k + 12).unwrap();
        assert!(drover_node::encode::psnr_rgb(rgba, &other) < psnr);
    }
}

/// Posts `body` and returns the status and problem document.
fn post_raw(c: &Cluster, content_type: &str, body: &str) -> (u16, Option<Problem>) {
    let r = ureq::post(&format!("{}/v1/jobs", c.url()))
        .set(
            "authorization",
            &format!("Bearer {}", c.admin_key().unwrap()),
        )
        .set("content-type", content_type)
        .send_string(body);
    match r {
        Ok(resp) => (resp.status(), None),
        Err(ureq::Error::Status(code, resp)) => {
            assert_eq!(
                resp.header("content-type"),
                Some("application/problem+json")
            );
            (code, resp.into_json().ok())
        }
        Err(e) => panic!("transport error: {e}"),
    }
}

#[test]
fn bad_specs_get_400_or_422_naming_the_field_and_store_nothing() {
    let _g = serial();
    let (_dir, c) = farm(0, &[]);
    let client = c.client();
    // One good job, queued (no nodes), so "nothing changed" has content.
    let good = spec("keep me", 10, 64, 64, "rings");
    client.submit_json(&good).unwrap();
    let before = serde_json::to_string(&client.jobs().unwrap()).unwrap();

    let with = |path: &[&str], v: serde_json::Value| {
        let mut s = good.clone();
        let mut cur = &mut s;
        for p in &path[..path.len() - 1] {
            cur = &mut cur[*p];
        }
        cur[path[path.len() - 1]] = v;
        s.to_string()
    };
    use serde_json::json;
    // 400: not a spec at all (syntax, unknown fields or variants); 422: a
    // spec whose values break a limit.
    let cases: Vec<(String, &str, &str, u16)> = vec![
        (
            with(&["colour"], json!("red")),
            "colour",
            "unknown field",
            400,
        ),
        (
            with(&["frames", "end"], json!(0)),
            "frames.end",
            "before frames.start",
            422,
        ),
        (
            with(&["frames", "end"], json!(5_000_000)),
            "frames",
            "limit is 100000",
            422,
        ),
        (
            with(&["resolution", "width"], json!(100_000)),
            "resolution.width",
            "16..=7680",
            422,
        ),
        (
            with(&["resolution", "height"], json!(99)),
            "resolution.height",
            "odd",
            422,
        ),
        (with(&["fps"], json!(1000)), "fps", "1..=240", 422),
        (with(&["name"], json!("a/b")), "name", "contains '/'", 422),
        (
            with(&["render", "shader"], json!("teapot")),
            "render.shader",
            "not a built-in",
            422,
        ),
        (
            with(&["render", "kind"], json!("blender")),
            "render.kind",
            "unknown variant",
            400,
        ),
        (
            with(&["output"], json!({"codec": "prores"})),
            "output.codec",
            "not supported",
            422,
        ),
        (
            with(&["output"], json!({"container": "avi"})),
            "output.container",
            "not supported",
            422,
        ),
        (
            with(&["output"], json!({"quality": 99})),
            "output.quality",
            "0..=51",
            422,
        ),
        (
            with(
                &["render"],
                json!({"kind": "shader", "source": "@fragment\nfn fs_main() -> @location(0) vec4<f32> {\n  return vec4<f32>(nope, 0.0, 0.0, 1.0);\n}\n"}),
            ),
            "render.source",
            "line 3",
            422,
        ),
        ("{\"name\": \"x\",".to_string(), "spec", "EOF", 400),
    ];
    assert!(cases.len() >= 10);
    for (body, field, msg, want) in &cases {
        let (status, problem) = post_raw(&c, "application/json", body);
        let p = problem.unwrap_or_else(|| panic!("no problem document for {body}"));
        assert_eq!(status, *want, "{body}: {p:?}");
        assert_eq!(p.field.as_deref(), Some(*field), "{body}: {p:?}");
        assert!(
            p.detail.contains(msg),
            "{body}: {:?} lacks {msg:?}",
            p.detail
        );
    }
    // TOML goes through the same validation.
    let (status, p) = post_raw(&c, "application/toml", "name = \"t\"\nframes = { start = 1, end = 2 }\nresolution = { width = 64, height = 64 }\n[render]\nkind = \"shader\"\nshader = \"plasma\"\nextra = 1\n");
    assert_eq!(status, 400);
    assert_eq!(p.unwrap().field.as_deref(), Some("render.extra"));
    // An oversize body is refused with its limit.
    let huge = "x".repeat(drover_shared::spec::MAX_SPEC_BYTES + 1);
    let (status, p) = post_raw(&c, "application/json", &huge);
    assert_eq!(status, 413);
    assert!(p
        .unwrap()
        .detail
        .contains(&drover_shared::spec::MAX_SPEC_BYTES.to_string()));

    let after = serde_json::to_string(&client.jobs().unwrap()).unwrap();
    assert_eq!(before, after, "a refused spec changed the job list");
    // Unknown ids are 404 problems, bad ids 400.
    let err = client.job(999).unwrap_err().to_string();
    assert!(
        err.contains("404") && err.contains("job 999 does not exist"),
        "{err}"
    );
    let r = ureq::get(&format!("{}/v1/jobs/abc", c.url()))
        .set(
            "authorization",
            &format!("Bearer {}", c.admin_key().unwrap()),
        )
        .call();
    assert!(matches!(r, Err(ureq::Error::Status(400, _))));
}

#[test]
fn a_node_killed_mid_chunk_does_not_leave_the_job_stuck() {
    let _g = serial();
    let (dir, mut c) = farm(2, &["--chunk-frames", "48"]);
    let client = c.client();
    let sub = client
        .submit_json(&spec("kill", 240, 640, 360, "fractal"))
        .unwrap();
    // Wait until node-1 is early inside a chunk, then SIGKILL it.
    let victim = wait_for(JOB_TIMEOUT, "node-1 to be mid-chunk", || {
        let j = client.job(sub.id)?;
        Ok(j.chunks
            .iter()
            .find(|ch| {
                ch.state == ChunkState::Assigned
                    && ch.node.as_deref() == Some("node-1")
                    && ch.frames_done > 0
                    && ch.frames_done * 2 < ch.end - ch.start + 1
            })
            .map(|ch| (ch.index, ch.start, ch.end)))
    })
    .unwrap();
    c.kill_node("node-1").unwrap();
    let job = wait_done(&c, sub.id);
    // The killed chunk never completed; its frames were rendered again, by
    // node-2, as new chunks.
    assert!(
        !job.chunks.iter().any(|ch| ch.index == victim.0),
        "chunk {victim:?} of the killed node completed: {:?}",
        job.chunks
    );
    // Frames of the killed chunk that node-2 rendered, counted per chunk
    // as the overlap of the two ranges.
    let redone: u64 = job
        .chunks
        .iter()
        .filter(|ch| ch.node.as_deref() == Some("node-2"))
        .filter(|ch| ch.start <= victim.2 && ch.end >= victim.1)
        .map(|ch| ch.end.min(victim.2) - ch.start.max(victim.1) + 1)
        .sum();
    assert_eq!(
        redone,
        victim.2 - victim.1 + 1,
        "the killed chunk {victim:?} was rendered again by node-2: {:?}",
        job.chunks
    );
    assert_eq!(job.frames_by_node.values().sum::<u64>(), 240);
    let out = dir.path().join("out.mp4");
    client.download(sub.id, &out).unwrap();
    assert_eq!(ffprobe(&out)["nb_read_frames"], "240");
    let nodes = client.nodes().unwrap();
    let n1 = nodes.iter().find(|n| n.name == "node-1").unwrap();
    assert!(!n1.connected, "node-1 is shown down");
}

#[test]
fn jobs_survive_coordinator_restarts_and_nodes_reconnect() {
    let _g = serial();
    let (_dir, mut c) = farm(0, &["--chunk-frames", "30"]);
    let queued = c
        .client()
        .submit_json(&spec("durable", 30, 128, 72, "rings"))
        .unwrap();
    let before = c.client().job(queued.id).unwrap();
    c.restart_coordinator().unwrap();
    let after = c.client().job(queued.id).unwrap();
    // No node is connected: the job says so, with the same frames waiting.
    assert_eq!(before.state, JobState::Unschedulable);
    assert_eq!(after.state, JobState::Unschedulable);
    assert_eq!(after.error.as_deref(), Some("no node is connected"));
    assert_eq!(after.chunks, before.chunks);
    assert_eq!(after.submitted_at_ms, before.submitted_at_ms);

    // With a node attached, restart again in the middle of a running job:
    // the node reconnects on its own and nothing is lost.
    c.add_node("node-1").unwrap();
    c.wait_nodes(1).unwrap();
    let running = c
        .client()
        .submit_json(&spec("interrupted", 1200, 320, 180, "fractal"))
        .unwrap();
    assert_eq!(
        running.id,
        queued.id + 1,
        "ids continue after the restored ones"
    );
    wait_for(JOB_TIMEOUT, "the second job to run", || {
        let j = c.client().job(running.id)?;
        Ok((j.frames_done > 0 && j.state == JobState::Running).then_some(()))
    })
    .unwrap();
    c.restart_coordinator().unwrap();
    let j = c.client().job(running.id).unwrap();
    assert!(
        !j.state.is_terminal(),
        "restored mid-run, not finished: {:?}",
        j.state
    );
    c.wait_nodes(1).unwrap();
    wait_done(&c, queued.id);
    let done = wait_done(&c, running.id);
    assert_eq!(done.frames_by_node["node-1"], 1200);
    assert!(c.log("node-1").contains("connection to coordinator lost"));
}

#[test]
fn an_incompatible_protocol_version_is_refused_with_a_clear_error() {
    use drover_protocol::StreamKind;
    let _g = serial();
    let (_dir, c) = farm(0, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt.block_on(async {
        let cfg = drover_node::tls::client_config(&drover_node::tls::Trust::CertFile(
            c.addrs.cert_path.clone(),
        ))
        .unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(cfg);
        let conn = ep
            .connect(c.addrs.quic, "drover-coordinator")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        use tokio::io::AsyncWriteExt;
        send.write_u8(StreamKind::Control as u8).await.unwrap();
        // A peer from the future: its messages may have any layout, but the
        // raw preamble is the same forever.
        drover_protocol::preamble::write(&mut send, 999)
            .await
            .unwrap();
        let theirs = drover_protocol::preamble::read(&mut recv).await.unwrap();
        let closed = conn.closed().await;
        (theirs, closed)
    });
    let (theirs, closed) = reply;
    assert_eq!(theirs, drover_protocol::PROTOCOL_VERSION);
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason).to_string();
            let ours = format!("speaks {}", drover_protocol::PROTOCOL_VERSION);
            assert!(
                reason.contains("speaks 999") && reason.contains(&ours),
                "{reason}"
            );
        }
        other => panic!("expected the coordinator to close with a reason, got {other:?}"),
    }
    wait_for(
        Duration::from_secs(10),
        "the refusal in the coordinator log",
        || {
            Ok(c.log("coordinator")
                .contains("protocol version mismatch")
                .then_some(()))
        },
    )
    .unwrap();
    assert!(
        c.client().nodes().unwrap().is_empty(),
        "a refused node is not registered"
    );
}

/// A node started outside the cluster's bookkeeping, logging to `log`, for
/// tests where it is expected not to join.
fn stray_node(
    c: &Cluster,
    name: &str,
    trust: &[&str],
    data: &Path,
    log: &Path,
) -> std::process::Child {
    Command::new(BIN)
        .args([
            "node",
            "--coordinator",
            &c.addrs.quic.to_string(),
            "--name",
            name,
        ])
        .args(trust)
        .arg("--data")
        .arg(data)
        .env("DROVER_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn a_node_pinned_to_the_wrong_certificate_never_connects() {
    let _g = serial();
    let (dir, c) = farm(0, &[]);
    // Right address, wrong fingerprint: the TLS handshake must fail.
    let log = dir.path().join("impostor.log");
    let mut node = stray_node(
        &c,
        "impostor",
        &["--cert-sha256", &"00".repeat(32)],
        &dir.path().join("impostor"),
        &log,
    );
    wait_for(
        Duration::from_secs(60),
        "the node to report the pin mismatch",
        || {
            Ok(std::fs::read_to_string(&log)?
                .contains("pinned SHA-256 fingerprint")
                .then_some(()))
        },
    )
    .unwrap();
    node.kill().unwrap();
    node.wait().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the coordinator to log the failed handshake",
        || {
            Ok(c.log("coordinator")
                .contains("QUIC handshake failed")
                .then_some(()))
        },
    )
    .unwrap();
    assert!(c.client().nodes().unwrap().is_empty());
}

#[test]
fn a_second_node_with_a_taken_name_is_refused() {
    let _g = serial();
    let (dir, c) = farm(1, &[]);
    // Same name, its own data dir (so its own certificate and node id),
    // with a valid join token: a configuration mistake (or an impostor)
    // that must not kick the first node off. The name belongs to the first
    // node's identity, so the twin is refused at the handshake and stops.
    let log = dir.path().join("twin.log");
    let token = c.join_token().unwrap().to_string();
    let mut twin = stray_node(
        &c,
        "node-1",
        &["--join", &token],
        &dir.path().join("twin"),
        &log,
    );
    let status = wait_for(Duration::from_secs(90), "the twin to stop", || {
        Ok(twin.try_wait()?)
    });
    if status.is_err() {
        twin.kill().unwrap();
    }
    assert!(!status.unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the name \"node-1\" belongs to another node identity"),
        "{text}"
    );
    let nodes = c.client().nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].connected, "the first node-1 is still connected");
}

fn drover(c: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("DROVER_URL", c.url())
        .env("DROVER_API_KEY", c.admin_key().unwrap())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_cli_submits_watches_lists_and_cancels() {
    let _g = serial();
    let (dir, c) = farm(1, &["--chunk-frames", "12"]);
    // A spec with the user's own shader, by path relative to the spec file.
    std::fs::write(
        dir.path().join("stripes.wgsl"),
        "@fragment\nfn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> {\n  let s = 0.5 + 0.5 * sin(p.x * 0.2 + drover.time * 6.0);\n  return vec4<f32>(s, 1.0 - s, 0.3, 1.0);\n}\n",
    )
    .unwrap();
    let spec_path = dir.path().join("shot.toml");
    std::fs::write(
        &spec_path,
        "name = \"stripes\"\nframes = { start = 0, end = 23 }\nfps = 12\nresolution = { width = 96, height = 64 }\n\n[render]\nkind = \"shader\"\npath = \"stripes.wgsl\"\n",
    )
    .unwrap();
    let out = drover(&c, &["submit", spec_path.to_str().unwrap(), "--watch"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("job 1 submitted") && stdout.contains("job 1 done: 24 frames"),
        "{stdout}"
    );

    let out = drover(&c, &["status", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("stripes")
            && stdout.contains("done")
            && stdout.contains("/v1/jobs/1/output"),
        "{stdout}"
    );

    let out = drover(&c, &["nodes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("node-1") && stdout.contains(" up "),
        "{stdout}"
    );

    // A long job, cancelled from the CLI while it runs.
    let long = dir.path().join("long.json");
    std::fs::write(&long, spec("long", 20_000, 64, 64, "plasma").to_string()).unwrap();
    let out = drover(&c, &["submit", long.to_str().unwrap()]);
    assert!(out.status.success());
    let out = drover(&c, &["cancel", "2"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cancelled"),
        "{out:?}"
    );
    assert_eq!(c.client().job(2).unwrap().state, JobState::Cancelled);
    let out = drover(&c, &["cancel", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be cancelled"));

    // A bad spec fails with the field named, and nothing is stored.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"b\"\nframes = { start = 5, end = 1 }\nresolution = { width = 64, height = 64 }\n[render]\nkind = \"shader\"\nshader = \"plasma\"\n").unwrap();
    let out = drover(&c, &["submit", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("frames.end"), "{stderr}");
    assert_eq!(c.client().jobs().unwrap().len(), 2);

    // The node keeps serving after a cancel: a new job completes.
    let next = c
        .client()
        .submit_json(&spec("after", 12, 64, 64, "rings"))
        .unwrap();
    wait_done(&c, next.id);
}

#[test]
fn demo_reports_the_whole_farm_as_json() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.mp4");
    let run = Command::new(BIN)
        .args([
            "demo", "--frames", "48", "--nodes", "2", "--width", "320", "--height", "180", "--json",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--workdir")
        .arg(dir.path().join("farm"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The last line is one JSON object with the whole report.
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["frames"], 48);
    assert_eq!(
        std::path::PathBuf::from(report["output"].as_str().unwrap()),
        std::fs::canonicalize(&out).unwrap()
    );
    assert!(report["wall_seconds"].as_f64().unwrap() > 0.0);
    let fps = report["frames_per_second"].as_f64().unwrap();
    let expect = 48.0 / report["wall_seconds"].as_f64().unwrap();
    assert!(
        (fps - expect).abs() < 1e-6 * expect.max(1.0),
        "{fps} vs {expect}"
    );
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(
        nodes
            .iter()
            .map(|n| n["frames"].as_u64().unwrap())
            .sum::<u64>(),
        48
    );
    assert!(nodes
        .iter()
        .all(|n| !n["adapter"].as_str().unwrap().is_empty()));
    assert_eq!(ffprobe(&out)["nb_read_frames"], "48");
    // No process of the demo is left behind.
    let farm_dir = dir.path().join("farm").display().to_string();
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&farm_dir))
        .collect();
    assert!(
        leftovers.is_empty(),
        "leftover demo processes: {leftovers:?}"
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        "coordinator",
        "node",
        "submit",
        "status",
        "watch",
        "nodes",
        "cancel",
        "demo",
    ] {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Example"),
            "`drover {cmd} --help` has no example:\n{help}"
        );
        assert!(
            help.contains(&format!("drover {cmd}")),
            "{cmd}'s example does not use it:\n{help}"
        );
    }
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
}

// ---------------------------------------------------------------------------
// Scheduling across real processes: stealing, routing, bad frames, priority.
// ---------------------------------------------------------------------------

/// Milliseconds from submission to the end of a job.
fn makespan_ms(j: &JobView) -> u64 {
    j.finished_at_ms
        .unwrap_or(0)
        .saturating_sub(j.submitted_at_ms)
}

#[test]
fn a_fast_node_steals_from_a_slowed_one_and_beats_static_chunks() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Path::new(BIN), dir.path(), &[], &[]).unwrap();
    c.add_node("fast").unwrap();
    // Test aid: this node pauses after each frame, ten times slower.
    c.add_node_with("slow", &["--slowdown", "10"]).unwrap();
    c.wait_nodes(2).unwrap();
    let client = c.client();
    let job_spec = spec("steal", 480, 640, 360, "plasma");
    let sub = client.submit_json(&job_spec).unwrap();
    let stolen = wait_done(&c, sub.id);
    // Frames moved from the slow node by shrinking its chunk.
    assert!(stolen.frames_stolen > 0, "{:?}", stolen.chunks);
    assert!(
        stolen
            .chunks
            .iter()
            .any(|ch| ch.kind == drover_shared::api::ChunkKind::Stolen
                && ch.node.as_deref() == Some("fast")),
        "{:?}",
        stolen.chunks
    );
    assert!(
        c.log("slow").contains("shrink"),
        "the slow node answered a shrink"
    );
    assert_eq!(stolen.frames_by_node.values().sum::<u64>(), 480);
    // The CLI shows which node rendered which frames, the stolen ones
    // marked, and each node's measured speed.
    let status = drover(&c, &["status", &sub.id.to_string()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("stolen") && text.contains("fast") && text.contains("slow"),
        "{text}"
    );
    let nodes = drover(&c, &["nodes"]);
    let text = String::from_utf8_lossy(&nodes.stdout);
    assert!(
        text.contains("shader@") && text.contains("slowdown x10"),
        "{text}"
    );
    let out = dir.path().join("steal.mp4");
    client.download(sub.id, &out).unwrap();
    assert_eq!(ffprobe(&out)["nb_read_frames"], "480");
    // The same job with fixed 48-frame chunks and no stealing, the way most
    // farms cut work, on the same two nodes: the slow node's last chunk
    // holds the job up (bench/RESULTS.md measures 24-frame chunks too).
    c.restart_coordinator_with(&["--strategy", "static", "--chunk-frames", "48"])
        .unwrap();
    c.wait_nodes(2).unwrap();
    let sub = c.client().submit_json(&job_spec).unwrap();
    let fixed = wait_done(&c, sub.id);
    assert_eq!(fixed.frames_stolen, 0);
    let (ours, theirs) = (makespan_ms(&stolen), makespan_ms(&fixed));
    eprintln!("makespan: stealing {ours} ms, static 48-frame chunks {theirs} ms");
    // Well before: measured 1.2-2x here (bench/RESULTS.md); every
    // assignment now waits for its journal fsync, which a machine busy
    // with other builds makes slow and uneven, so 1.05x is what the test
    // holds to and the bench measures the ratio.
    assert!(
        ours * 21 < theirs * 20,
        "stealing took {ours} ms, static chunks {theirs} ms"
    );
}

#[test]
fn a_gpu_job_waits_unschedulable_until_a_gpu_node_joins() {
    let _g = serial();
    let (dir, mut c) = farm(1, &[]);
    let client = c.client();
    let mut s = spec("needs-gpu", 24, 128, 72, "rings");
    s["requirements"] = serde_json::json!({ "gpu": "required", "gpu_vendor": "nvidia" });
    let sub = client.submit_json(&s).unwrap();
    let j = client.job(sub.id).unwrap();
    assert_eq!(j.state, JobState::Unschedulable);
    let why = j.error.clone().unwrap();
    assert!(
        why.contains("needs a GPU") && why.contains("no connected node has it"),
        "{why}"
    );
    let out = drover(&c, &["status", &sub.id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("unschedulable") && text.contains("needs GPU vendor nvidia"),
        "{text}"
    );
    // Test aid: a node whose reported adapter is overridden to an NVIDIA
    // GPU (it renders on lavapipe); the job runs on it as soon as it joins.
    c.add_node_with("gpu-1", &["--test-gpu", "NVIDIA Test GPU"])
        .unwrap();
    let done = wait_done(&c, sub.id);
    assert_eq!(done.frames_by_node.get("gpu-1"), Some(&24));
    let nodes = client.nodes().unwrap();
    let gpu = nodes.iter().find(|n| n.name == "gpu-1").unwrap();
    assert!(gpu
        .capabilities
        .test_override
        .as_deref()
        .unwrap()
        .contains("NVIDIA Test GPU"));
    let _ = dir;
}

#[test]
fn a_bad_frame_is_isolated_blocklisted_and_left_out_when_allowed() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Path::new(BIN), dir.path(), &[], &[]).unwrap();
    // Test aid: both nodes fail any chunk that reaches frame 17.
    c.add_node_with("node-1", &["--fail-frame", "17"]).unwrap();
    c.add_node_with("node-2", &["--fail-frame", "17"]).unwrap();
    c.wait_nodes(2).unwrap();
    let client = c.client();
    let mut s = spec("bad-frame", 48, 128, 72, "rings");
    s["allow_missing_frames"] = serde_json::json!(true);
    let sub = client.submit_json(&s).unwrap();
    let j = wait_done(&c, sub.id);
    assert_eq!(j.missing_frames, vec![17]);
    assert_eq!(j.frames_by_node.values().sum::<u64>(), 47);
    assert!(!j.blocklisted_nodes.is_empty(), "{j:?}");
    let out = dir.path().join("bad.mp4");
    client.download(sub.id, &out).unwrap();
    assert_eq!(ffprobe(&out)["nb_read_frames"], "47");
    // Without the allowance the job fails naming the frame.
    let sub = client
        .submit_json(&spec("bad-frame-strict", 24, 128, 72, "rings"))
        .unwrap();
    let j = wait_for(JOB_TIMEOUT, "the strict job to fail", || {
        let j = client.job(sub.id)?;
        Ok(j.state.is_terminal().then_some(j))
    })
    .unwrap();
    assert_eq!(j.state, JobState::Failed);
    let why = j.error.unwrap();
    assert!(why.contains("frame 17 failed"), "{why}");
}

#[test]
fn a_higher_priority_job_overtakes_a_running_one() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Path::new(BIN), dir.path(), &[], &[]).unwrap();
    // Test aid: a slowed node, so the low job runs long enough to be
    // overtaken.
    c.add_node_with("node-1", &["--slowdown", "4"]).unwrap();
    c.wait_nodes(1).unwrap();
    let client = c.client();
    let mut low = spec("low", 600, 640, 360, "fractal");
    low["priority"] = serde_json::json!(10);
    let low = client.submit_json(&low).unwrap();
    wait_for(JOB_TIMEOUT, "the low job to run", || {
        let j = client.job(low.id)?;
        Ok((j.frames_done > 0).then_some(()))
    })
    .unwrap();
    let mut high = spec("high", 48, 320, 180, "rings");
    high["priority"] = serde_json::json!(90);
    let high = client.submit_json(&high).unwrap();
    let h = wait_done(&c, high.id);
    let l = wait_done(&c, low.id);
    assert!(
        h.finished_at_ms < l.finished_at_ms,
        "high finished at {:?}, low at {:?}\ncoordinator log:\n{}",
        h.finished_at_ms,
        l.finished_at_ms,
        c.log("coordinator")
    );
    assert!(
        c.log("coordinator").contains("shrink"),
        "the low job's chunk was shrunk"
    );
}

/// A shader whose frames take minutes on lavapipe (llvmpipe ends a loop
/// after 65,535 iterations, so the work is in the loop's body: 16 hash
/// steps per iteration, per pixel of a 256x256 frame): it must not hold the
/// farm.
const RUNAWAY_SHADER: &str = "@fragment\nfn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> {\n    var x = p.x / drover.resolution.x + drover.time;\n    for (var i = 0u; i < 4000000000u; i = i + 1u) {\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n            x = fract(sin(x * 12.9898) * 43758.5453);\n    }\n    return vec4<f32>(x, 0.0, 0.0, 1.0);\n}\n";

#[test]
fn a_runaway_shader_is_killed_and_does_not_hold_a_later_job() {
    let _g = serial();
    let (_dir, c) = farm(2, &[]);
    let client = c.client();
    // Few frames: every frame hangs, and each is tried three times (one
    // frame limit each) before the job fails naming it.
    let mut runaway = spec("runaway", 4, 256, 256, "rings");
    runaway["render"] = serde_json::json!({ "kind": "shader", "source": RUNAWAY_SHADER });
    runaway["frame_timeout_s"] = serde_json::json!(3);
    let runaway = client.submit_json(&runaway).unwrap();
    wait_for(JOB_TIMEOUT, "the runaway job to start", || {
        let j = client.job(runaway.id)?;
        Ok(j.first_frame_at_ms.is_some().then_some(()))
    })
    .unwrap();
    // A normal job submitted after it finishes, while the runaway frames
    // are killed on the nodes (the agents stay up).
    let normal = client
        .submit_json(&spec("normal", 48, 128, 72, "rings"))
        .unwrap();
    let n = wait_done(&c, normal.id);
    assert_eq!(n.frames_done, 48);
    // The runaway job ends failed, or waits unschedulable once every node
    // has failed it twice (a node that has not may yet join); either way
    // its frames were killed at the limit and say so.
    let r = wait_for(JOB_TIMEOUT, "the runaway job to give up", || {
        let j = client.job(runaway.id)?;
        let blocked = j.state == JobState::Unschedulable && j.blocklisted_nodes.len() == 2;
        Ok((j.state.is_terminal() || blocked).then_some(j))
    })
    .unwrap_or_else(|e| {
        let log = c.log("coordinator");
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        panic!(
            "{e}: {:?}\ncoordinator log (last lines, newest first):\n{}",
            client.job(runaway.id),
            tail.join("\n")
        )
    });
    assert_ne!(r.state, JobState::Done, "{r:?}");
    let said = r
        .chunks
        .iter()
        .filter_map(|c| c.last_error.clone())
        .chain(r.error.clone())
        .any(|e| e.contains("frame time limit of 3 s"));
    assert!(said, "{r:?}");
    // Both agents are still connected and working.
    let nodes = client.nodes().unwrap();
    assert!(nodes.iter().all(|n| n.connected), "{nodes:?}");
}

#[test]
fn a_drained_node_takes_no_work_and_a_cancelled_job_is_retried_for_what_it_misses() {
    let _g = serial();
    let (dir, mut c) = farm(2, &["--chunk-frames", "12"]);
    // Drained: node-1 takes nothing new, remembered across a restart.
    let out = drover(&c, &["drain", "node-1"]);
    assert!(out.status.success(), "{out:?}");
    let nodes = c.client().nodes().unwrap();
    assert!(
        nodes.iter().any(|n| n.name == "node-1" && n.drained),
        "{nodes:?}"
    );
    c.restart_coordinator().unwrap();
    c.wait_nodes(2).unwrap();
    let client = c.client();
    let sub = client
        .submit_json(&spec("drained", 48, 128, 72, "rings"))
        .unwrap();
    let j = wait_done(&c, sub.id);
    assert_eq!(j.frames_by_node.get("node-1"), None, "{j:?}");
    assert_eq!(j.frames_by_node["node-2"], 48);
    let out = drover(&c, &["undrain", "node-1"]);
    assert!(out.status.success(), "{out:?}");
    // Unknown nodes are named.
    let out = drover(&c, &["drain", "nobody"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));
    // A job cancelled halfway keeps its stored frames; a retry renders the
    // rest and the output is whole. Paused at once, with chunks of about a
    // second on one node, only what was already handed out is rendered, so
    // the cancel surely lands with frames left (racing a running job to
    // cancel it before its last frame lost on a fast machine).
    let mut s = spec("retried", 1200, 640, 360, "fractal");
    s["chunk_target_s"] = serde_json::json!(1);
    s["max_nodes"] = serde_json::json!(1);
    let sub = client.submit_json(&s).unwrap();
    client.pause(sub.id).unwrap();
    wait_for(
        JOB_TIMEOUT,
        "the paused job's handed-out chunks to finish",
        || {
            let j = client.job(sub.id)?;
            Ok(
                (j.frames_done > 0 && j.chunks.iter().all(|c| c.state != ChunkState::Assigned))
                    .then_some(()),
            )
        },
    )
    .unwrap();
    let cancelled = client.cancel(sub.id).unwrap();
    let kept: u64 = cancelled.frames_by_node.values().sum();
    assert!((1..1200).contains(&kept), "{cancelled:?}");
    let out = drover(&c, &["retry", &sub.id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let j = wait_done(&c, sub.id);
    assert!(!j.paused, "a retry ends the pause");
    assert_eq!(j.frames_by_node.values().sum::<u64>(), 1200);
    let file = dir.path().join("retried.mp4");
    client.download(sub.id, &file).unwrap();
    assert_eq!(ffprobe(&file)["nb_read_frames"], "1200");
    // A done job has nothing to retry.
    let out = drover(&c, &["retry", &sub.id.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to retry"));
}

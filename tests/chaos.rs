//! Chaos tests: the real `drover` binary as separate processes, killed for
//! real. The coordinator is SIGKILLed at seeded moments (no graceful
//! shutdown, no journal flush) and started again on the same data dir and
//! ports; a node is SIGKILLed and started again with its data dir; a node
//! is frozen with SIGSTOP. Each test checks what a studio would: the job
//! finishes, the accounting covers every frame exactly once, and the video
//! holds every frame, each matching a run without faults.
//!
//! Every run prints its seed; `DROVER_CHAOS_SEED=<seed>` replays the same
//! kill plan (the moments are points of the job's progress, so a replay
//! kills at the same stage, give or take the nodes' timing).
//!
//! How re-rendered frames are counted is in `drover_cli::chaos`: from the
//! node logs of every process incarnation, attempt by attempt.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_cli::chaos::{self, FaultPlan, RenderLedger, RenderReport};
use drover_cli::cluster::{wait_for, Cluster};
use drover_cli::media_check;
use drover_shared::api::{ChunkState, JobState, JobView};
use drover_shared::config::NODE_TIMEOUT_MS;

/// One farm at a time: two at once on a 2-core machine would only slow
/// both, and the timing checks would measure the contention.
static SERIAL: Mutex<()> = Mutex::new(());

const BIN: &str = env!("CARGO_BIN_EXE_drover");

/// Frames of the chaos job: 20 s of video.
const FRAMES: u64 = 480;
const FPS: u32 = 24;
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
/// The cheapest built-in shader on lavapipe; it moves all the time, so
/// each frame can be told from its neighbours (the comparison checks that
/// too).
const SHADER: &str = "plasma";
/// Lowest PSNR a frame of the faulty run may have against the same frame of
/// the run without faults.
const MIN_PSNR_DB: f64 = 35.0;
/// Coordinator kills in the first test.
const COORDINATOR_KILLS: usize = 3;
const NODES: [&str; 2] = ["node-1", "node-2"];
/// Small chunks, so that a job has many (over 30), a kill finds several
/// stored and one running and one queued per node, and what the nodes hold
/// while a killed coordinator is away leaves room for every planned kill.
const MAX_CHUNK_FRAMES: u64 = 16;
const COORDINATOR_ARGS: [&str; 6] = [
    "--chunk-target-s",
    "1",
    "--chunk-frames",
    "12",
    "--max-chunk-frames",
    "16",
];
/// Frames done between the farm being whole again and the next kill.
const KILL_STEP_FRAMES: std::ops::RangeInclusive<u64> = 12..=32;
/// Generous: the faulty run takes about a minute on two lavapipe cores.
const JOB_TIMEOUT: Duration = Duration::from_secs(400);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn farm(dir: &Path) -> Cluster {
    let mut c = Cluster::start(Path::new(BIN), dir, &COORDINATOR_ARGS, &[]).unwrap();
    for n in NODES {
        c.add_node(n).unwrap();
    }
    c.wait_nodes(NODES.len()).unwrap();
    c
}

fn spec(name: &str, frames: u64) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "frames": { "start": 1, "end": frames },
        "fps": FPS,
        "resolution": { "width": WIDTH, "height": HEIGHT },
        "render": { "kind": "shader", "shader": SHADER },
    })
}

/// Waits until job `id` ends and insists that it is done.
fn wait_done(c: &Cluster, id: u64) -> JobView {
    let job = c
        .client()
        .wait_ended(id, Duration::from_millis(100), JOB_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nlogs: {:?}", chaos::log_paths(c, &NODES)));
    assert_eq!(
        job.state,
        JobState::Done,
        "job {id} ended {:?}: {:?}\nlogs: {:?}",
        job.state,
        job.error,
        chaos::log_paths(c, &NODES)
    );
    job
}

/// Asserts that the output of `job` holds exactly `frames` frames lasting
/// `frames / FPS` seconds; returns its path.
fn check_output(c: &Cluster, job: &JobView, frames: u64) -> std::path::PathBuf {
    let out = c.root().join(format!("job-{}.mp4", job.id));
    c.client().download(job.id, &out).unwrap();
    let facts = media_check::facts(&out).unwrap();
    assert_eq!(facts.frames, frames, "decoded frames of {}", out.display());
    assert_eq!((facts.width, facts.height), (WIDTH, HEIGHT));
    assert_eq!(facts.fps, f64::from(FPS));
    let want_s = frames as f64 / f64::from(FPS);
    assert!(
        (facts.duration_s - want_s).abs() < 0.5 / f64::from(FPS),
        "duration {} s, want {want_s} s",
        facts.duration_s
    );
    out
}

/// Counts what the nodes rendered for `job` from every incarnation's log.
fn ledger_report(c: &Cluster, job: u64, faults: &[chaos::InjectedFault]) -> RenderReport {
    let logs = chaos::node_logs(c, &NODES);
    RenderLedger::from_logs(logs.iter().map(|(n, t)| (n.as_str(), t.as_str()))).report(job, faults)
}

#[test]
fn coordinator_and_node_kills_lose_no_frame_and_match_a_run_without_faults() {
    let _g = serial();
    let seed = chaos::seed_from_env().unwrap();
    println!("chaos seed {seed} (replay: {}={seed})", chaos::SEED_ENV);
    let dir = tempfile::tempdir().unwrap();
    let mut c = farm(dir.path());
    let client = c.client();

    // The reference: the same job on the same farm, without faults.
    let started = Instant::now();
    let reference = client.submit_json(&spec("reference", FRAMES)).unwrap();
    let reference = wait_done(&c, reference.id);
    let reference_wall = started.elapsed();
    let reference_mp4 = check_output(&c, &reference, FRAMES);

    // The same job again, killing the coordinator and a node on the way.
    let plan = FaultPlan::new(seed, COORDINATOR_KILLS, &["node-2"], KILL_STEP_FRAMES);
    println!("plan: {:?}", plan.faults);
    let slots: u64 = client
        .nodes()
        .unwrap()
        .iter()
        .map(|n| u64::from(n.slots))
        .sum();
    assert!(
        plan.frames_needed(slots * MAX_CHUNK_FRAMES) <= FRAMES,
        "the plan may outlast the job: {plan:?}"
    );
    let started = Instant::now();
    let job = client.submit_json(&spec("chaos", FRAMES)).unwrap();
    let faults = chaos::run_faults(&mut c, job.id, started, &plan, NODES.len(), |s| {
        println!("{s}")
    })
    .unwrap_or_else(|e| panic!("{e:#}\nlogs: {:?}", chaos::log_paths(&c, &NODES)));
    let job = wait_done(&c, job.id);
    let chaos_wall = started.elapsed();
    assert_eq!(
        faults.len(),
        plan.faults.len(),
        "the job ended before every planned kill happened (seed {seed})"
    );

    // The accounting: every frame done, in exactly one done chunk.
    if let Err(e) = chaos::check_exactly_once(&job, 1, FRAMES) {
        panic!("seed {seed}: {e}\nchunks: {:#?}", job.chunks);
    }

    // The video: every frame there, each as the reference has it.
    let out = check_output(&c, &job, FRAMES);
    let cmp = media_check::compare(&out, &reference_mp4).unwrap();
    assert_eq!(cmp.psnr_db.len() as u64, FRAMES);
    println!(
        "PSNR against the run without faults: min {:.1} dB (frame {}); each frame closer to its own reference frame than to a neighbour by at least {:.1} dB",
        cmp.psnr_min_db, cmp.worst_frame, cmp.alignment_margin_min_db
    );
    assert!(
        cmp.psnr_min_db >= MIN_PSNR_DB,
        "seed {seed}: frame {} has PSNR {:.1} dB against the run without faults",
        cmp.worst_frame,
        cmp.psnr_min_db
    );
    assert!(
        cmp.misplaced_frames.is_empty(),
        "seed {seed}: frames out of place (closer to a neighbouring reference frame): {:?}",
        cmp.misplaced_frames
    );

    // What the faults cost.
    let wasted = ledger_report(&c, job.id, &faults);
    let baseline = ledger_report(&c, reference.id, &[]);
    println!("run without faults: {baseline}");
    println!("run with {} kills (seed {seed}): {wasted}", faults.len());
    println!(
        "wall time: {:.1} s without faults, {:.1} s with ({:.2}x)",
        reference_wall.as_secs_f64(),
        chaos_wall.as_secs_f64(),
        chaos_wall.as_secs_f64() / reference_wall.as_secs_f64()
    );

    // The goal: a kill costs at most one chunk's frames, and nothing that
    // was already in a finished segment is rendered again. When the logs
    // say what every attempt rendered, the exact count decides; otherwise
    // frames assigned more than once bound re-renders from above and may
    // still show the budget kept.
    let budget = faults.len() as u64 * MAX_CHUNK_FRAMES;
    if wasted.is_exact() {
        assert!(
            wasted.extra_renders <= budget,
            "seed {seed}: {} frames rendered again after {} kills, over the budget of {budget} (one chunk per kill); by fault: {:?}",
            wasted.extra_renders,
            faults.len(),
            wasted.extra_renders_by_fault
        );
        assert_eq!(
            wasted.rerendered_after_segment, 0,
            "seed {seed}: frames already in a finished segment were rendered again"
        );
    } else if wasted.extra_assignments > budget {
        chaos::require_exact(&wasted).unwrap_or_else(|e| {
            panic!(
                "seed {seed}: {e:#}; frames were assigned {} extra times, over the budget of {budget} (one chunk per kill)",
                wasted.extra_assignments
            )
        });
    }
}

#[test]
fn a_frozen_node_is_detected_and_its_late_results_do_not_corrupt_accounting() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = farm(dir.path());
    let client = c.client();
    let frames = 240;
    let job = client.submit_json(&spec("frozen", frames)).unwrap();

    // Freeze node-1 early inside a chunk: no close, no heartbeat.
    let victim = wait_for(JOB_TIMEOUT, "node-1 to be mid-chunk", || {
        let j = client.job(job.id)?;
        Ok(j.chunks.into_iter().find(|ch| {
            ch.state == ChunkState::Assigned
                && ch.node.as_deref() == Some("node-1")
                && ch.frames_done > 0
                && ch.frames_done * 2 < ch.end - ch.start + 1
        }))
    })
    .unwrap();
    c.freeze_node("node-1").unwrap();
    let frozen = Instant::now();

    // Detected by its silence within the node timeout (the last heartbeat
    // was at most one interval before the freeze, so this is generous).
    wait_for(
        Duration::from_millis(NODE_TIMEOUT_MS) * 3,
        "node-1 to be shown down",
        || {
            let nodes = client.nodes()?;
            Ok(nodes
                .iter()
                .any(|n| n.name == "node-1" && !n.connected)
                .then_some(()))
        },
    )
    .unwrap();
    let detected = frozen.elapsed();
    println!("frozen node shown down after {} ms", detected.as_millis());
    assert!(
        detected <= Duration::from_millis(NODE_TIMEOUT_MS + 1_000),
        "a frozen node was shown down after {detected:?}; the node timeout is {NODE_TIMEOUT_MS} ms"
    );

    // Its frames go to node-2.
    wait_for(
        JOB_TIMEOUT,
        "node-2 to take the frozen chunk's frames",
        || {
            let j = client.job(job.id)?;
            Ok(j.chunks
                .iter()
                .any(|ch| {
                    ch.node.as_deref() == Some("node-2")
                        && ch.start <= victim.start
                        && victim.start <= ch.end
                })
                .then_some(()))
        },
    )
    .unwrap();

    // Resumed, node-1 finds its chunk taken; whatever it sends late must not
    // count. It comes back (on its old connection or a new one).
    let thawed = frozen.elapsed();
    c.thaw_node("node-1").unwrap();
    wait_for(Duration::from_secs(60), "node-1 to be back", || {
        let nodes = client.nodes()?;
        Ok(nodes
            .iter()
            .any(|n| n.name == "node-1" && n.connected)
            .then_some(()))
    })
    .unwrap();
    let job = wait_done(&c, job.id);
    println!(
        "resumed after {:.1} s; node-1 {}",
        thawed.as_secs_f64(),
        if c.log("node-1").contains("connection to coordinator lost") {
            "reconnected"
        } else {
            "kept its connection"
        }
    );
    if let Err(e) = chaos::check_exactly_once(&job, 1, frames) {
        panic!("{e}\nfrozen chunk {victim:?}\nchunks: {:#?}", job.chunks);
    }
    check_output(&c, &job, frames);
    println!("frames by node: {:?}", job.frames_by_node);
    println!("{}", ledger_report(&c, job.id, &[]));
}

/// Encodes plasma frames `frames` at 128x72 into `path`.
fn encode(path: &Path, frames: impl IntoIterator<Item = u64>) {
    use drover_node::encode::{EncodeSettings, SegmentEncoder};
    let gpu = drover_node::render::Gpu::new().unwrap();
    let source = drover_shaders::get(SHADER).unwrap().source;
    let mut r = drover_node::render::Renderer::new(&gpu, source, 128, 72, FPS).unwrap();
    let mut enc = SegmentEncoder::create(path, &EncodeSettings::new(128, 72, FPS)).unwrap();
    for f in frames {
        enc.push_rgba(&r.render(f).unwrap()).unwrap();
    }
    enc.finish().unwrap();
}

#[test]
fn the_video_checks_catch_a_missing_a_repeated_and_a_shifted_frame() {
    let dir = tempfile::tempdir().unwrap();
    let video = |name: &str, frames: &[u64]| {
        let p = dir.path().join(name);
        encode(&p, frames.iter().copied());
        p
    };
    let reference = video("reference.mp4", &[1, 2, 3, 4, 5, 6, 7, 8]);
    let check = |ours: &Path, frames: u64, misplaced: &[u64]| {
        let cmp = media_check::compare(ours, &reference).unwrap();
        assert_eq!(cmp.ours.frames, frames, "{}", ours.display());
        assert_eq!(cmp.reference.frames, 8);
        assert_eq!(
            cmp.misplaced_frames,
            misplaced,
            "{}: {cmp:?}",
            ours.display()
        );
        cmp
    };
    let same = check(&reference, 8, &[]);
    assert!(same.psnr_min_db.is_infinite() && same.alignment_margin_min_db > 0.0);
    // Frame 4 rendered twice in place of 5: caught at frame index 4.
    let repeated = check(&video("repeated.mp4", &[1, 2, 3, 4, 4, 6, 7, 8]), 8, &[4]);
    assert!(repeated.psnr_min_db < MIN_PSNR_DB, "{repeated:?}");
    // Frame 5 left out: one frame short, and every later frame misplaced.
    check(&video("missing.mp4", &[1, 2, 3, 4, 6, 7, 8]), 7, &[4, 5, 6]);
    // Everything one frame late: at this size one frame apart scores about
    // 35 dB, so only the neighbour comparison tells. The last frame is
    // closer to its own reference frame than to the one before it, two
    // frames away.
    check(
        &video("shifted.mp4", &[2, 3, 4, 5, 6, 7, 8, 9]),
        8,
        &[0, 1, 2, 3, 4, 5, 6],
    );
    let facts = media_check::facts(&reference).unwrap();
    assert_eq!((facts.frames, facts.width, facts.height), (8, 128, 72));
    assert!(
        (facts.duration_s - 8.0 / f64::from(FPS)).abs() < 1e-3,
        "{facts:?}"
    );
}

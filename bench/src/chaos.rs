//! Coordinator kills during a long job, against the same job without
//! faults, on real processes side by side.
//!
//! One local farm: a coordinator and two node agents on loopback QUIC. The
//! job first runs without faults (the reference); then the same job runs
//! again while the coordinator is SIGKILLed `--kills` times at seeded points
//! of its progress (and each node in `--kill-node` once), each time started
//! again on the same data dir and ports. The run prints what every kill
//! cost: frames rendered again (from the node logs, see `drover_cli::chaos`),
//! time until the nodes were back, and the wall time with faults against
//! without. Then it verifies the faulty run's output: every frame in
//! exactly one done chunk, the decoded frame count and duration, and PSNR
//! frame by frame against the reference. A failed verification exits
//! non-zero after the figures are printed.
//!
//! The seed is printed; `--seed` (or `DROVER_CHAOS_SEED`) replays the plan.
//! Figures are recorded in `bench/RESULTS.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use drover_bench::WorkDir;
use drover_cli::chaos::{self, FaultPlan, RenderLedger};
use drover_cli::cluster::Cluster;
use drover_cli::media_check;
use drover_shared::api::{JobState, JobView};

/// How often the job is polled while no fault is pending: slowly, because
/// polls cost the coordinator CPU the nodes would otherwise have.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A job running longer than this is reported as stuck.
const JOB_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Lowest PSNR a frame of the faulty run may have against the reference.
const MIN_PSNR_DB: f64 = 35.0;
/// The farm's nodes.
const NODES: [&str; 2] = ["node-1", "node-2"];

/// SIGKILLs the coordinator during a job and compares with a run without.
#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    after_help = "Example:\n  cargo build --release -p drover-cli -p drover-bench\n  target/release/chaos --kills 20 --frames 2400 --seed 42"
)]
struct Args {
    /// Coordinator kills during the faulty run.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=1_000))]
    kills: u64,
    /// Also kill this node once (repeat for several).
    #[arg(long, value_name = "NODE", value_parser = ["node-1", "node-2"])]
    kill_node: Vec<String>,
    /// Seed of the kill plan (default: DROVER_CHAOS_SEED, else the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Frames in the job: enough that every planned kill finds it running
    /// (the run says when it may not be).
    #[arg(long, default_value_t = 2400, value_parser = clap::value_parser!(u64).range(24..=100_000))]
    frames: u64,
    /// Frame width.
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// Frame height.
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Frames per second.
    #[arg(long, default_value_t = 24)]
    fps: u32,
    /// Built-in shader.
    #[arg(long, default_value = "plasma")]
    shader: String,
    /// Largest chunk in frames: a kill should cost at most one chunk. Small
    /// chunks keep what nodes render while the coordinator is away short,
    /// so that many kills fit in one job.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_chunk_frames: u64,
    /// Smallest chunk in frames.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    chunk_frames: u64,
    /// The `drover` binary (default: next to this executable).
    #[arg(long)]
    drover: Option<PathBuf>,
    /// Keep the working directory (logs, outputs) and print its path.
    #[arg(long)]
    keep: bool,
}

fn spec(args: &Args, name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "frames": { "start": 1, "end": args.frames },
        "fps": args.fps,
        "resolution": { "width": args.width, "height": args.height },
        "render": { "kind": "shader", "shader": args.shader },
    })
}

fn done(cluster: &Cluster, id: u64) -> anyhow::Result<JobView> {
    let job = cluster
        .client()
        .wait_ended(id, POLL_INTERVAL, JOB_TIMEOUT)?;
    if job.state != JobState::Done {
        bail!(
            "job {id} ended {:?}: {}; logs: {:?}",
            job.state,
            job.error.as_deref().unwrap_or("no reason"),
            chaos::log_paths(cluster, &NODES)
        );
    }
    Ok(job)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let seed = match args.seed {
        Some(s) => s,
        None => chaos::seed_from_env()?,
    };
    println!(
        "seed {seed} (replay: --seed {seed} or {}={seed})",
        chaos::SEED_ENV
    );
    if args.chunk_frames > args.max_chunk_frames {
        bail!(
            "--chunk-frames {} is above --max-chunk-frames {}",
            args.chunk_frames,
            args.max_chunk_frames
        );
    }
    let drover = drover_bench::drover_binary(args.drover.as_ref())?;
    // Declared before the cluster so it is dropped after it: the processes
    // stop before their data dirs disappear.
    let work = WorkDir {
        path: std::env::temp_dir().join(format!("drover-bench-chaos-{}", std::process::id())),
        keep: args.keep,
    };
    std::fs::create_dir_all(&work.path)?;
    let (min_chunk, max_chunk) = (
        args.chunk_frames.to_string(),
        args.max_chunk_frames.to_string(),
    );
    let coordinator_args = [
        "--chunk-target-s",
        "1",
        "--chunk-frames",
        &min_chunk,
        "--max-chunk-frames",
        &max_chunk,
    ];
    let mut cluster = Cluster::start(&drover, &work.path, &coordinator_args, &[])?;
    for n in NODES {
        cluster.add_node(n)?;
    }
    cluster.wait_nodes(NODES.len())?;
    println!(
        "farm: {} nodes; job: {} frames {}x{} at {} fps, shader {}, chunks of {}-{} frames",
        NODES.len(),
        args.frames,
        args.width,
        args.height,
        args.fps,
        args.shader,
        args.chunk_frames,
        args.max_chunk_frames
    );
    let client = cluster.client();

    let started = Instant::now();
    let reference = client.submit_json(&spec(&args, "reference"))?;
    let reference = done(&cluster, reference.id)?;
    let reference_wall = started.elapsed();
    let reference_mp4 = work.path.join("reference.mp4");
    client.download(reference.id, &reference_mp4)?;
    println!("without faults: {:.1} s", reference_wall.as_secs_f64());

    let node_kills: Vec<&str> = args.kill_node.iter().map(String::as_str).collect();
    // Each kill a chunk or two of progress after the farm is whole again.
    let steps = args.chunk_frames..=2 * args.max_chunk_frames;
    let plan = FaultPlan::new(seed, args.kills as usize, &node_kills, steps);
    let slots: u64 = client.nodes()?.iter().map(|n| u64::from(n.slots)).sum();
    let needed = plan.frames_needed(slots * args.max_chunk_frames);
    if needed > args.frames {
        println!(
            "warning: the plan may need up to {needed} frames; with {} the job may end before the last kill (raise --frames)",
            args.frames
        );
    }
    let started = Instant::now();
    let job = client.submit_json(&spec(&args, "chaos"))?;
    let faults = chaos::run_faults(&mut cluster, job.id, started, &plan, NODES.len(), |s| {
        println!("  {s}")
    })?;
    let job = done(&cluster, job.id)?;
    let chaos_wall = started.elapsed();
    println!(
        "with {} kills ({} planned): {:.1} s, {:.2}x the run without faults",
        faults.len(),
        plan.faults.len(),
        chaos_wall.as_secs_f64(),
        chaos_wall.as_secs_f64() / reference_wall.as_secs_f64()
    );

    // What each kill cost.
    let logs = chaos::node_logs(&cluster, &NODES);
    let ledger = RenderLedger::from_logs(logs.iter().map(|(n, t)| (n.as_str(), t.as_str())));
    let report = ledger.report(job.id, &faults);
    let exact = report.is_exact();
    println!("kill  after_s  frames_done  nodes_back_s  extra_renders  extra_assignments");
    for (i, f) in faults.iter().enumerate() {
        println!(
            "{:>4}  {:>7.1}  {:>11}  {:>12.1}  {:>13}  {:>17}   {}",
            i + 1,
            f.after_submit.as_secs_f64(),
            f.frames_done_seen,
            f.recovery.as_secs_f64(),
            if exact {
                report.extra_renders_by_fault[i + 1].to_string()
            } else {
                "unknown".into()
            },
            report.extra_assignments_by_fault[i + 1],
            f.fault
        );
    }
    let kills = faults.len().max(1) as f64;
    let recovery: Vec<f64> = faults.iter().map(|f| f.recovery.as_secs_f64()).collect();
    println!(
        "nodes back after a kill: mean {:.1} s, max {:.1} s",
        recovery.iter().sum::<f64>() / kills,
        recovery.iter().cloned().fold(0.0, f64::max)
    );
    println!("{report}");
    if exact {
        println!(
            "frames re-rendered per kill: {:.1} (budget: one chunk, at most {} frames)",
            report.extra_renders as f64 / kills,
            args.max_chunk_frames
        );
    } else {
        println!(
            "frames re-rendered per kill: unknown; at most {:.1} (extra assignments per kill)",
            report.extra_assignments as f64 / kills
        );
    }

    // Verification.
    let mut failures = Vec::new();
    if let Err(e) = chaos::check_exactly_once(&job, 1, args.frames) {
        failures.push(format!("accounting: {e}"));
    }
    let out = work.path.join("chaos.mp4");
    client.download(job.id, &out)?;
    let cmp = media_check::compare(&out, &reference_mp4)?;
    let want_s = args.frames as f64 / f64::from(args.fps);
    println!(
        "verification: {} of {} frames decoded, {:.3} s (want {:.3} s), PSNR min {:.1} dB (frame {}), {} misplaced frames, alignment margin {:.1} dB",
        cmp.ours.frames,
        args.frames,
        cmp.ours.duration_s,
        want_s,
        cmp.psnr_min_db,
        cmp.worst_frame,
        cmp.misplaced_frames.len(),
        cmp.alignment_margin_min_db
    );
    if cmp.ours.frames != args.frames {
        failures.push(format!("{} frames decoded", cmp.ours.frames));
    }
    if (cmp.ours.duration_s - want_s).abs() >= 0.5 / f64::from(args.fps) {
        failures.push(format!("duration {} s", cmp.ours.duration_s));
    }
    if cmp.psnr_min_db < MIN_PSNR_DB {
        failures.push(format!(
            "frame {} at {:.1} dB",
            cmp.worst_frame, cmp.psnr_min_db
        ));
    }
    if !cmp.misplaced_frames.is_empty() {
        failures.push(format!("frames out of place: {:?}", cmp.misplaced_frames));
    }
    if faults.len() < plan.faults.len() {
        failures.push(format!(
            "only {} of {} planned kills happened before the job ended (raise --frames)",
            faults.len(),
            plan.faults.len()
        ));
    }
    cluster.stop();
    if !failures.is_empty() {
        bail!("seed {seed}: verification failed: {}", failures.join("; "));
    }
    println!("verified: every frame once, output matches the run without faults");
    Ok(())
}

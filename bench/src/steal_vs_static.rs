//! Work stealing against fixed chunks, on real processes side by side.
//!
//! One local farm: a coordinator and two node agents on loopback QUIC, one
//! node slowed `--slowdown` times (the node's test aid: it pauses after each
//! frame). Each repetition runs the same job twice, once under Drover's
//! scheduler (chunks sized by measured speed, work stealing, speculative
//! copies) and once with fixed chunks of `--chunk-frames` and no stealing
//! (`drover coordinator --strategy static`, the way most farms cut work).
//! The coordinator is restarted between the two with the other strategy; the
//! nodes reconnect by themselves and their start-up is not measured.
//!
//! Makespan is `finished_at_ms - submitted_at_ms` on the coordinator's clock.
//! Figures are printed, never asserted; they are recorded in
//! `bench/RESULTS.md`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use drover_cli::client::Client;
use drover_cli::cluster::Cluster;
use drover_shared::api::JobState;

/// How often the job is polled: slowly, because polls cost the coordinator
/// CPU the nodes would otherwise have; the makespan comes from the
/// coordinator's own timestamps.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A job running longer than this is reported as stuck.
const JOB_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Compares stealing with static chunks on a fast and a slowed node.
#[derive(Debug, Parser)]
#[command(
    name = "steal-vs-static",
    after_help = "Example:\n  cargo build --release -p drover-cli -p drover-bench\n  target/release/steal-vs-static --reps 3 --frames 480 --slowdown 5"
)]
struct Args {
    /// Repetitions (each runs both strategies).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    reps: u32,
    /// Frames in the job.
    #[arg(long, default_value_t = 480, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    frames: u64,
    /// How many times slower the slow node is.
    #[arg(long, default_value_t = 5.0)]
    slowdown: f64,
    /// Frames per chunk of the static strategy.
    #[arg(long, default_value_t = 24)]
    chunk_frames: u64,
    /// Frame width.
    #[arg(long, default_value_t = 640)]
    width: u32,
    /// Frame height.
    #[arg(long, default_value_t = 360)]
    height: u32,
    /// Built-in shader.
    #[arg(long, default_value = "plasma")]
    shader: String,
    /// The `drover` binary (default: next to this executable).
    #[arg(long)]
    drover: Option<PathBuf>,
}

struct Outcome {
    makespan_s: f64,
    frames_by_node: String,
    stolen: u64,
    wasted: u64,
}

fn run_job(client: &Client, args: &Args, cluster: &Cluster) -> anyhow::Result<Outcome> {
    let spec = serde_json::json!({
        "name": "steal-vs-static",
        "frames": { "start": 1, "end": args.frames },
        "resolution": { "width": args.width, "height": args.height },
        "render": { "kind": "shader", "shader": args.shader },
    });
    let sub = client.submit_json(&spec)?;
    let job = client.wait_ended(sub.id, POLL_INTERVAL, JOB_TIMEOUT)?;
    if job.state != JobState::Done {
        bail!(
            "job {} ended {:?}: {}\ncoordinator log:\n{}",
            job.id,
            job.state,
            job.error.as_deref().unwrap_or("no reason"),
            cluster.log("coordinator")
        );
    }
    let finished = job.finished_at_ms.context("a done job has no end time")?;
    Ok(Outcome {
        makespan_s: finished.saturating_sub(job.submitted_at_ms) as f64 / 1000.0,
        frames_by_node: job
            .frames_by_node
            .iter()
            .map(|(n, f)| format!("{n}={f}"))
            .collect::<Vec<_>>()
            .join(" "),
        stolen: job.frames_stolen,
        wasted: job.frames_wasted,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let drover = drover_bench::drover_binary(args.drover.as_ref())?;
    let work = tempfile::tempdir()?;
    let drover_args: Vec<String> = vec![];
    let static_chunk = args.chunk_frames.to_string();
    let static_args = ["--strategy", "static", "--chunk-frames", &static_chunk];
    let mut cluster = Cluster::start(&drover, work.path(), &[], &[("NO_COLOR", "1")])?;
    let slowdown = args.slowdown.to_string();
    cluster.add_node("fast")?;
    cluster.add_node_with("slow", &["--slowdown", &slowdown])?;
    cluster.wait_nodes(2)?;
    for n in cluster.client().nodes()? {
        println!(
            "{}: {} ({:?}), speed {:?}{}",
            n.name,
            n.capabilities
                .render_adapter
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_default(),
            n.capabilities
                .render_adapter
                .as_ref()
                .map(|a| a.device_type),
            n.speed_fps,
            n.capabilities
                .test_override
                .map(|t| format!(" [test aid: {t}]"))
                .unwrap_or_default()
        );
    }
    println!(
        "job: {} frames {}x{} `{}`; static chunks of {} frames",
        args.frames, args.width, args.height, args.shader, args.chunk_frames
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for rep in 1..=args.reps {
        for strategy in ["drover", "static"] {
            let a: Vec<&str> = if strategy == "drover" {
                drover_args.iter().map(String::as_str).collect()
            } else {
                static_args.to_vec()
            };
            cluster.restart_coordinator_with(&a)?;
            cluster.wait_nodes(2)?;
            let o = run_job(&cluster.client(), &args, &cluster)?;
            println!(
                "rep {rep} {strategy:<7} makespan {:>7.2} s  frames {}  stolen {}  wasted {}",
                o.makespan_s, o.frames_by_node, o.stolen, o.wasted
            );
            if strategy == "drover" {
                ours.push(o.makespan_s);
            } else {
                theirs.push(o.makespan_s);
            }
        }
    }
    let (m_ours, m_theirs) = (median(ours), median(theirs));
    println!(
        "median makespan: drover {m_ours:.2} s, static {m_theirs:.2} s, static/drover {:.2}",
        m_theirs / m_ours
    );
    cluster.stop();
    Ok(())
}

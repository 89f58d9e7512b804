//! The farm overhead ratio: how much slower one job is on a one-node farm
//! than the same render and encode done directly, with no farm.
//!
//! - FARM: a real local cluster (`drover coordinator` plus one `drover node`,
//!   separate processes on loopback QUIC), started once per chunk size and
//!   kept alive across repetitions so node start-up is not measured. Each
//!   repetition submits a new job through the REST API; its wall time is
//!   `finished_at_ms - submitted_at_ms` on the coordinator's clock, which
//!   covers cutting, dispatch, every chunk's render and encode, the uploads
//!   and the final stream-copy mux.
//! - DIRECT: in this process, the same executor code the node runs
//!   ([`drover_node::exec::render_and_encode`]) over all frames into one MP4,
//!   with the renderer created inside the timed section.
//!
//! Runs alternate (direct, farm, direct, farm, ...) so that drift in a noisy
//! machine hits both sides alike. Figures are printed, never asserted; they
//! are recorded in `bench/RESULTS.md`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use drover_cli::client::Client;
use drover_cli::cluster::Cluster;
use drover_node::encode::{EncodeSettings, DEFAULT_CODEC, DEFAULT_PRESET};
use drover_node::exec::render_and_encode;
use drover_node::render::{Gpu, Renderer};
use drover_shared::api::{JobState, JobView};

/// The job every run renders: the demo's default shader at 720p.
const SHADER: &str = "plasma";
/// Frame width of the job.
const WIDTH: u32 = 1280;
/// Frame height of the job.
const HEIGHT: u32 = 720;
/// Frames per second of the job.
const FPS: u32 = 24;
/// The spec's `output.quality`, which the coordinator passes to nodes as CRF.
const QUALITY: u8 = 18;

/// How often the job view is polled while waiting for a job to end: the
/// resolution of the client-side phase timings (the wall time itself comes
/// from the coordinator's own timestamps).
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// A job that runs longer than this is reported as stuck, not waited for
/// forever: 240 frames of 720p take well under a minute even on lavapipe.
const JOB_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Measures the farm overhead ratio on a local one-node farm.
#[derive(Debug, Parser)]
#[command(name = "farm-overhead")]
struct Args {
    /// Repetitions of each side per chunk size.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    reps: u32,
    /// Frames in the job.
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    frames: u64,
    /// Chunk sizes to measure, one farm each, in this order.
    #[arg(long, value_delimiter = ',', default_values_t = [24u64, 60])]
    chunk_frames: Vec<u64>,
    /// The `drover` binary (default: `drover` next to this executable, that
    /// is `target/release/drover` after `cargo build --release -p drover-cli`).
    #[arg(long)]
    drover: Option<PathBuf>,
    /// Keep the working directory (cluster data, logs, outputs) and print
    /// its path, for reading the node and coordinator logs afterwards.
    #[arg(long)]
    keep: bool,
}

/// One timed run of either side.
#[derive(Debug, Clone)]
struct Run {
    /// Wall time in seconds.
    wall_s: f64,
    /// Farm only: submission to the first chunk starting on the node.
    first_frame_ms: Option<u64>,
    /// Farm only: sum of the node's executor time (render plus encode of
    /// each chunk), from the coordinator log's `chunk done elapsed_ms`.
    busy_ms: Option<u64>,
    /// Farm only: time in the `muxing` state as seen by polling.
    mux_ms: Option<u64>,
    /// Direct only: time spent creating the renderer.
    renderer_ms: Option<u64>,
    /// Size of the output file.
    bytes: u64,
}

/// Removes the working directory when dropped, unless asked to keep it.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept the working directory {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let drover = match &args.drover {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe().context("locating this executable")?;
            exe.parent()
                .context("this executable has no directory")?
                .join("drover")
        }
    };
    if !drover.is_file() {
        bail!(
            "no drover binary at {} (build it with `cargo build --release -p drover-cli`, or pass --drover PATH)",
            drover.display()
        );
    }
    // Declared before any cluster so it is dropped after them: the
    // processes stop before their data dirs disappear.
    let work = WorkDir {
        path: std::env::temp_dir()
            .join(format!("drover-bench-farm-overhead-{}", std::process::id())),
        keep: args.keep,
    };
    std::fs::create_dir_all(&work.path)
        .with_context(|| format!("creating {}", work.path.display()))?;

    let gpu = Gpu::new().context("opening a render device for the direct runs")?;
    let source = drover_shaders::get(SHADER)
        .context("the built-in shader is missing")?
        .source;
    println!(
        "job: {} frames {WIDTH}x{HEIGHT} @ {FPS} fps, shader '{SHADER}', {DEFAULT_CODEC} crf {QUALITY} preset {DEFAULT_PRESET}",
        args.frames
    );
    println!(
        "direct renders on: {} ({}, {}, {})",
        gpu.adapter().name,
        gpu.adapter().device_type,
        gpu.adapter().backend,
        gpu.adapter().driver
    );

    let mut summaries = Vec::new();
    for &chunk_frames in &args.chunk_frames {
        let root = work.path.join(format!("farm-chunk-{chunk_frames}"));
        let chunk = chunk_frames.to_string();
        let started = Instant::now();
        let mut cluster = Cluster::start(
            &drover,
            &root,
            &["--chunk-frames", &chunk],
            &[("NO_COLOR", "1")],
        )?;
        cluster.add_node("node-1")?;
        cluster.wait_nodes(1)?;
        let client = cluster.client();
        let node_adapter = client
            .nodes()?
            .into_iter()
            .next()
            .and_then(|n| n.capabilities.render_adapter)
            .map(|a| format!("{} ({:?}, {})", a.name, a.device_type, a.backend))
            .unwrap_or_else(|| "?".into());
        println!();
        println!(
            "== chunk size {chunk_frames} frames: farm up in {:.1} s (not measured); node-1 renders on {node_adapter}",
            started.elapsed().as_secs_f64()
        );

        let mut direct = Vec::new();
        let mut farm = Vec::new();
        for rep in 1..=args.reps {
            let out = work.path.join(format!("direct-{chunk_frames}-{rep}.mp4"));
            let d = run_direct(&gpu, source, args.frames, &out)?;
            let _ = std::fs::remove_file(&out);
            print_run("direct", rep, args.frames, &d);
            direct.push(d);

            let f = run_farm(&client, &cluster, args.frames)?;
            print_run("farm  ", rep, args.frames, &f);
            farm.push(f);
        }
        cluster.stop();
        summaries.push(summarise(chunk_frames, args.frames, &direct, &farm));
    }

    println!();
    println!(
        "== summary ({} frames, medians of {} runs each)",
        args.frames, args.reps
    );
    println!(
        "chunk  direct_s  farm_s  ratio  first_frame_ms  farm_busy_s  mux_ms  direct_MB  farm_MB"
    );
    for s in &summaries {
        println!("{s}");
    }
    Ok(())
}

/// Renders and encodes every frame into one MP4 at `out` in this process.
fn run_direct(gpu: &Gpu, source: &str, frames: u64, out: &Path) -> anyhow::Result<Run> {
    let settings = EncodeSettings {
        width: WIDTH,
        height: HEIGHT,
        fps: FPS,
        crf: QUALITY,
        codec: DEFAULT_CODEC.to_string(),
        preset: DEFAULT_PRESET.to_string(),
    };
    let cancel = AtomicBool::new(false);
    let started = Instant::now();
    let mut renderer =
        Renderer::new(gpu, source, WIDTH, HEIGHT, FPS).context("creating the renderer")?;
    let renderer_ms = started.elapsed().as_millis() as u64;
    let encoded = render_and_encode(&mut renderer, &settings, 1, frames, out, &cancel, |_| {})
        .with_context(|| format!("rendering and encoding {}", out.display()))?;
    let wall_s = started.elapsed().as_secs_f64();
    if encoded != frames {
        bail!("the direct run encoded {encoded} frames, expected {frames}");
    }
    Ok(Run {
        wall_s,
        first_frame_ms: None,
        busy_ms: None,
        mux_ms: None,
        renderer_ms: Some(renderer_ms),
        bytes: std::fs::metadata(out)?.len(),
    })
}

/// Submits one job and waits for it to end.
fn run_farm(client: &Client, cluster: &Cluster, frames: u64) -> anyhow::Result<Run> {
    let spec = serde_json::json!({
        "name": "farm-overhead",
        "frames": { "start": 1, "end": frames },
        "fps": FPS,
        "resolution": { "width": WIDTH, "height": HEIGHT },
        "render": { "kind": "shader", "shader": SHADER },
        "output": { "container": "mp4", "codec": "h264", "quality": QUALITY },
    });
    let sub = client.submit_json(&spec)?;
    let deadline = Instant::now() + JOB_TIMEOUT;
    let mut muxing_seen: Option<Instant> = None;
    let job: JobView = loop {
        let job = client.job(sub.id)?;
        if job.state == JobState::Muxing && muxing_seen.is_none() {
            muxing_seen = Some(Instant::now());
        }
        if job.state.is_terminal() {
            break job;
        }
        if Instant::now() > deadline {
            bail!("job {} still {:?} after {JOB_TIMEOUT:?}", sub.id, job.state);
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let mux_ms = muxing_seen.map(|t| t.elapsed().as_millis() as u64);
    if job.state != JobState::Done {
        bail!(
            "job {} ended {:?}: {}\ncoordinator log:\n{}",
            job.id,
            job.state,
            job.error.as_deref().unwrap_or("no reason"),
            cluster.log("coordinator")
        );
    }
    let finished = job
        .finished_at_ms
        .context("a done job has no finished_at_ms")?;
    let bytes = match &job.output_path {
        Some(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        None => 0,
    };
    Ok(Run {
        wall_s: finished.saturating_sub(job.submitted_at_ms) as f64 / 1000.0,
        first_frame_ms: job
            .first_frame_at_ms
            .map(|t| t.saturating_sub(job.submitted_at_ms)),
        busy_ms: Some(chunk_elapsed_ms(&cluster.log("coordinator"), job.id)),
        mux_ms,
        renderer_ms: None,
        bytes,
    })
}

/// Sum of `elapsed_ms` over the coordinator log's `chunk done` lines of job
/// `job`: the node's executor time, render plus encode plus hash.
fn chunk_elapsed_ms(log: &str, job: u64) -> u64 {
    let job_field = format!("job={job} ");
    log.lines()
        .filter(|l| l.contains("chunk done") && l.contains(&job_field))
        .filter_map(|l| field_u64(l, "elapsed_ms="))
        .sum()
}

/// The number after `key` in a tracing line.
fn field_u64(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn print_run(side: &str, rep: u32, frames: u64, r: &Run) {
    let mut line = format!(
        "  rep {rep} {side} {:7.2} s  {:6.2} frames/s",
        r.wall_s,
        frames as f64 / r.wall_s
    );
    if let Some(ms) = r.renderer_ms {
        line.push_str(&format!("  renderer {ms} ms"));
    }
    if let Some(ms) = r.first_frame_ms {
        line.push_str(&format!("  first frame {ms} ms"));
    }
    if let Some(ms) = r.busy_ms {
        line.push_str(&format!("  node busy {:.2} s", ms as f64 / 1000.0));
    }
    if let Some(ms) = r.mux_ms {
        line.push_str(&format!("  mux ~{ms} ms"));
    }
    line.push_str(&format!("  {:.2} MB", r.bytes as f64 / 1e6));
    println!("{line}");
}

/// Medians of one chunk size.
struct Summary {
    chunk_frames: u64,
    direct_s: f64,
    farm_s: f64,
    first_frame_ms: f64,
    busy_s: f64,
    mux_ms: f64,
    direct_mb: f64,
    farm_mb: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:5}  {:8.2}  {:6.2}  {:5.3}  {:14.0}  {:11.2}  {:6.0}  {:9.2}  {:7.2}",
            self.chunk_frames,
            self.direct_s,
            self.farm_s,
            self.farm_s / self.direct_s,
            self.first_frame_ms,
            self.busy_s,
            self.mux_ms,
            self.direct_mb,
            self.farm_mb
        )
    }
}

fn summarise(chunk_frames: u64, frames: u64, direct: &[Run], farm: &[Run]) -> Summary {
    let s = Summary {
        chunk_frames,
        direct_s: median(direct.iter().map(|r| r.wall_s)),
        farm_s: median(farm.iter().map(|r| r.wall_s)),
        first_frame_ms: median(
            farm.iter()
                .filter_map(|r| r.first_frame_ms)
                .map(|v| v as f64),
        ),
        busy_s: median(
            farm.iter()
                .filter_map(|r| r.busy_ms)
                .map(|v| v as f64 / 1000.0),
        ),
        mux_ms: median(farm.iter().filter_map(|r| r.mux_ms).map(|v| v as f64)),
        direct_mb: median(direct.iter().map(|r| r.bytes as f64 / 1e6)),
        farm_mb: median(farm.iter().map(|r| r.bytes as f64 / 1e6)),
    };
    println!(
        "  median: direct {:.2} s ({:.2} frames/s), farm {:.2} s ({:.2} frames/s), ratio farm/direct {:.3} (target <= 1.05), first frame {:.0} ms",
        s.direct_s,
        frames as f64 / s.direct_s,
        s.farm_s,
        frames as f64 / s.farm_s,
        s.farm_s / s.direct_s,
        s.first_frame_ms
    );
    s
}

/// The median (mean of the middle two for an even count); NaN when empty.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

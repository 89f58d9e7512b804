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
//! - CHUNKED: in this process, what the farm does minus the farm: one
//!   renderer, `render_and_encode` once per chunk into its own segment, then
//!   the coordinator's stream-copy join
//!   ([`drover_coordinator::mux::concat_segments`]). `chunked - direct` is the
//!   cost of cutting the job into segments; `farm - chunked` is the cost of
//!   distributing it (processes, QUIC, coordinator round trips).
//!
//! Runs alternate (direct, chunked, farm, direct, ...) so that drift in a
//! noisy machine hits every side alike. Figures are printed, never asserted;
//! they are recorded in `bench/RESULTS.md`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use drover_bench::WorkDir;
use drover_cli::client::Client;
use drover_cli::cluster::Cluster;
use drover_node::encode::{EncodeSettings, DEFAULT_CODEC, DEFAULT_PRESET};
use drover_node::exec::{render_and_encode, start_segment, PendingSegment};
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

/// How often the job view is polled while frames are still rendering. Slow,
/// because every poll costs the coordinator CPU that the node would
/// otherwise have; the wall time comes from the coordinator's own
/// timestamps, so this does not blur it.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often it is polled once every frame is rendered: the resolution of
/// the client-side mux timing.
const POLL_INTERVAL_NEAR_END: Duration = Duration::from_millis(10);
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

/// One timed run of any side.
#[derive(Debug, Clone, Default)]
struct Run {
    /// Wall time in seconds.
    wall_s: f64,
    /// Farm only: submission to the first chunk starting on the node.
    first_frame_ms: Option<u64>,
    /// Farm only: sum of the node's executor time (render plus encode of
    /// each chunk), from the coordinator log's `chunk done elapsed_ms`.
    busy_ms: Option<u64>,
    /// CPU time (user plus system) of the processes doing the work: this
    /// one for direct and chunked, coordinator plus node for the farm. Less
    /// sensitive than wall time to other load on a shared machine.
    cpu_ms: Option<u64>,
    /// Farm: time in the `muxing` state as seen by polling; chunked: time
    /// in the join.
    mux_ms: Option<u64>,
    /// Direct and chunked: time spent creating the renderer.
    renderer_ms: Option<u64>,
    /// Size of the output file.
    bytes: u64,
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
        // NO_COLOR keeps ANSI escapes out of the logs this bench reads.
        // Static chunking, so the farm cuts exactly the chunks the
        // in-process side does (Drover's own sizing would pick chunks by the
        // node's speed).
        let mut cluster = Cluster::start(
            &drover,
            &root,
            &["--strategy", "static", "--chunk-frames", &chunk],
            &[("NO_COLOR", "1")],
        )?;
        cluster.add_node("node-1")?;
        cluster.wait_nodes(1)?;
        let client = cluster.client();
        let pids = farm_pids(&root);
        let node_adapter = client
            .nodes()?
            .into_iter()
            .next()
            .and_then(|n| n.capabilities.render_adapter)
            .map(|a| format!("{} ({:?}, {})", a.name, a.device_type, a.backend))
            .unwrap_or_else(|| "?".into());
        println!();
        println!(
            "== chunk size {chunk_frames} frames: farm up in {:.1} s (not measured); node-1 renders on {node_adapter}; \
             {} farm processes found for CPU time; load average {}",
            started.elapsed().as_secs_f64(),
            pids.len(),
            load_average()
        );

        let mut runs = Runs::default();
        for rep in 1..=args.reps {
            let d = run_direct(&gpu, source, args.frames, &work.path)?;
            print_run("direct ", rep, args.frames, &d);
            runs.direct.push(d);

            let c = run_chunked(&gpu, source, args.frames, chunk_frames, &work.path)?;
            print_run("chunked", rep, args.frames, &c);
            runs.chunked.push(c);

            let f = run_farm(&client, &cluster, &pids, args.frames)?;
            print_run("farm   ", rep, args.frames, &f);
            runs.farm.push(f);
        }
        cluster.stop();
        println!("  load average after: {}", load_average());
        summaries.push(summarise(chunk_frames, args.frames, &runs));
    }

    println!();
    println!(
        "== summary ({} frames, medians of {} runs per side)",
        args.frames, args.reps
    );
    println!(
        "      | wall seconds          | wall ratios                | CPU seconds           | CPU ratio   | farm                                 | output"
    );
    println!(
        "chunk | direct chunked   farm | farm/direct chunked/direct | direct chunked   farm | farm/direct | first_frame_ms node_busy_s farm_mux_ms | direct_MB farm_MB"
    );
    for s in &summaries {
        println!("{s}");
    }
    Ok(())
}

/// What the node's executor uses for this job (`run_chunk` in
/// `node/src/exec.rs`): the spec's quality as CRF, the default preset.
fn encode_settings() -> EncodeSettings {
    EncodeSettings {
        width: WIDTH,
        height: HEIGHT,
        fps: FPS,
        crf: QUALITY,
        codec: DEFAULT_CODEC.to_string(),
        preset: DEFAULT_PRESET.to_string(),
    }
}

/// Renders and encodes every frame into one MP4 under `dir`, in this process.
fn run_direct(gpu: &Gpu, source: &str, frames: u64, dir: &Path) -> anyhow::Result<Run> {
    let out = dir.join("direct.mp4");
    let cancel = AtomicBool::new(false);
    let cpu_before = process_cpu_ms("self");
    let started = Instant::now();
    let mut renderer =
        Renderer::new(gpu, source, WIDTH, HEIGHT, FPS).context("creating the renderer")?;
    let renderer_ms = started.elapsed().as_millis() as u64;
    let encoded = render_and_encode(
        &mut renderer,
        &encode_settings(),
        1,
        frames,
        &out,
        &cancel,
        |_| {},
    )
    .with_context(|| format!("rendering and encoding {}", out.display()))?;
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_ms = cpu_since(cpu_before);
    if encoded != frames {
        bail!("the direct run encoded {encoded} frames, expected {frames}");
    }
    let bytes = std::fs::metadata(&out)?.len();
    let _ = std::fs::remove_file(&out);
    Ok(Run {
        wall_s,
        renderer_ms: Some(renderer_ms),
        cpu_ms,
        bytes,
        ..Run::default()
    })
}

/// Renders and encodes in this process as the farm would: one renderer, one
/// segment per chunk of `chunk_frames`, then the coordinator's join.
fn run_chunked(
    gpu: &Gpu,
    source: &str,
    frames: u64,
    chunk_frames: u64,
    dir: &Path,
) -> anyhow::Result<Run> {
    let seg_dir = dir.join("chunked");
    std::fs::create_dir_all(&seg_dir)?;
    let out = dir.join("chunked.mp4");
    let settings = encode_settings();
    let cancel = AtomicBool::new(false);
    let cpu_before = process_cpu_ms("self");
    let started = Instant::now();
    let mut renderer =
        Renderer::new(gpu, source, WIDTH, HEIGHT, FPS).context("creating the renderer")?;
    let renderer_ms = started.elapsed().as_millis() as u64;
    // As on a node: the next chunk renders while the previous encoder
    // flushes (`start_segment`), and at most two encoders are alive.
    let mut segments = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut finishing: Option<PendingSegment> = None;
    let mut start = 1;
    while start <= frames {
        let end = (start + chunk_frames - 1).min(frames);
        let path = seg_dir.join(format!("segment-{start:06}.mp4"));
        let tx = tx.clone();
        let pending = start_segment(
            &mut renderer,
            &settings,
            start,
            end,
            &path,
            &cancel,
            |_| {},
            move |r| {
                let _ = tx.send(r);
            },
        )
        .with_context(|| format!("rendering {}", path.display()))?;
        if let Some(prev) = finishing.replace(pending) {
            prev.wait();
        }
        segments.push(path);
        start = end + 1;
    }
    if let Some(prev) = finishing {
        prev.wait();
    }
    drop(tx);
    for result in rx {
        result.context("encoding a segment")?;
    }
    let joining = Instant::now();
    let report = drover_coordinator::mux::concat_segments(&segments, &out)
        .context("joining the segments")?;
    let mux_ms = joining.elapsed().as_millis() as u64;
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_ms = cpu_since(cpu_before);
    if report.frames != frames {
        bail!(
            "the chunked run joined {} frames, expected {frames}",
            report.frames
        );
    }
    let _ = std::fs::remove_dir_all(&seg_dir);
    let _ = std::fs::remove_file(&out);
    Ok(Run {
        wall_s,
        mux_ms: Some(mux_ms),
        renderer_ms: Some(renderer_ms),
        cpu_ms,
        bytes: report.bytes,
        ..Run::default()
    })
}

/// Submits one job and waits for it to end.
fn run_farm(client: &Client, cluster: &Cluster, pids: &[u32], frames: u64) -> anyhow::Result<Run> {
    let cpu_before = farm_cpu_ms(pids);
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
        std::thread::sleep(if job.frames_done >= job.frames_total {
            POLL_INTERVAL_NEAR_END
        } else {
            POLL_INTERVAL
        });
    };
    let mux_ms = muxing_seen.map(|t| t.elapsed().as_millis() as u64);
    let cpu_ms = farm_cpu_ms(pids)
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
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
        cpu_ms,
        mux_ms,
        bytes,
        ..Run::default()
    })
}

/// CPU time used since `before` by this process.
fn cpu_since(before: Option<u64>) -> Option<u64> {
    process_cpu_ms("self")
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before))
}

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on every
/// Linux architecture Drover runs on).
const USER_HZ: u64 = 100;

/// User plus system CPU time of process `pid` (a number or `self`), from
/// `/proc`; `None` where there is no `/proc`.
fn process_cpu_ms(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its `)`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `state` (field 3)
    // is the first after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1000 / USER_HZ)
}

/// Summed CPU time of the farm's processes.
fn farm_cpu_ms(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| process_cpu_ms(&p.to_string())).sum()
}

/// The processes whose command line names a data dir under `root`: the
/// cluster's coordinator and node (`Cluster` does not expose its children).
fn farm_pids(root: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let data_dirs = [root.join("coordinator"), root.join("node-1")];
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                cmd.split(|b| *b == 0).any(|arg| {
                    data_dirs
                        .iter()
                        .any(|d| d.as_os_str().as_encoded_bytes() == arg)
                })
            })
        })
        .collect()
}

/// `/proc/loadavg`'s first three fields, for the record.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
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
        "  rep {rep} {side} {:6.2} s {:6.2} frames/s {:5.2} MB",
        r.wall_s,
        frames as f64 / r.wall_s,
        r.bytes as f64 / 1e6
    );
    if let Some(ms) = r.cpu_ms {
        line.push_str(&format!("  cpu {:.2} s", ms as f64 / 1000.0));
    }
    if let Some(ms) = r.renderer_ms {
        line.push_str(&format!("  renderer {ms} ms"));
    }
    if let Some(ms) = r.first_frame_ms {
        line.push_str(&format!("  first frame {ms} ms"));
    }
    if let Some(ms) = r.busy_ms {
        line.push_str(&format!(
            "  node busy {:.2} s (idle {:.2} s)",
            ms as f64 / 1000.0,
            r.wall_s - ms as f64 / 1000.0
        ));
    }
    if let Some(ms) = r.mux_ms {
        line.push_str(&format!("  mux {ms} ms"));
    }
    println!("{line}");
}

/// Every run of one chunk size, per side.
#[derive(Default)]
struct Runs {
    direct: Vec<Run>,
    chunked: Vec<Run>,
    farm: Vec<Run>,
}

/// Medians of one chunk size.
struct Summary {
    chunk_frames: u64,
    direct_s: f64,
    chunked_s: f64,
    farm_s: f64,
    direct_cpu_s: f64,
    chunked_cpu_s: f64,
    farm_cpu_s: f64,
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
            "{:5} | {:6.2} {:7.2} {:6.2} | {:11.3} {:14.3} | {:6.2} {:7.2} {:6.2} | {:11.3} | {:14.0} {:11.2} {:11.0} | {:9.2} {:7.2}",
            self.chunk_frames,
            self.direct_s,
            self.chunked_s,
            self.farm_s,
            self.farm_s / self.direct_s,
            self.chunked_s / self.direct_s,
            self.direct_cpu_s,
            self.chunked_cpu_s,
            self.farm_cpu_s,
            self.farm_cpu_s / self.direct_cpu_s,
            self.first_frame_ms,
            self.busy_s,
            self.mux_ms,
            self.direct_mb,
            self.farm_mb
        )
    }
}

fn summarise(chunk_frames: u64, frames: u64, runs: &Runs) -> Summary {
    let wall = |side: &[Run]| median(side.iter().map(|r| r.wall_s));
    let cpu = |side: &[Run]| {
        median(
            side.iter()
                .filter_map(|r| r.cpu_ms)
                .map(|ms| ms as f64 / 1000.0),
        )
    };
    let s = Summary {
        chunk_frames,
        direct_s: wall(&runs.direct),
        chunked_s: wall(&runs.chunked),
        farm_s: wall(&runs.farm),
        direct_cpu_s: cpu(&runs.direct),
        chunked_cpu_s: cpu(&runs.chunked),
        farm_cpu_s: cpu(&runs.farm),
        first_frame_ms: median(
            runs.farm
                .iter()
                .filter_map(|r| r.first_frame_ms)
                .map(|v| v as f64),
        ),
        busy_s: median(
            runs.farm
                .iter()
                .filter_map(|r| r.busy_ms)
                .map(|v| v as f64 / 1000.0),
        ),
        mux_ms: median(runs.farm.iter().filter_map(|r| r.mux_ms).map(|v| v as f64)),
        direct_mb: median(runs.direct.iter().map(|r| r.bytes as f64 / 1e6)),
        farm_mb: median(runs.farm.iter().map(|r| r.bytes as f64 / 1e6)),
    };
    println!(
        "  median: direct {:.2} s ({:.2} frames/s), chunked {:.2} s, farm {:.2} s ({:.2} frames/s); \
         farm/direct {:.3} (target <= 1.05), chunked/direct {:.3}; CPU farm/direct {:.3}; first frame {:.0} ms",
        s.direct_s,
        frames as f64 / s.direct_s,
        s.chunked_s,
        s.farm_s,
        frames as f64 / s.farm_s,
        s.farm_s / s.direct_s,
        s.chunked_s / s.direct_s,
        s.farm_cpu_s / s.direct_cpu_s,
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
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

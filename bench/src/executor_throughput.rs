//! Throughput of the node's two executors at 1280x720 on this machine's
//! adapter: `render_range` (frames in flight), `render` one frame at a time,
//! and libx264 encoding of pre-rendered frames; then the whole executor as
//! the agent drives it (`Executor::submit`: render, encode, hash, progress,
//! chunks of [`CHUNK_FRAMES`] overlapping at their boundaries) at 1280x720
//! and at 64x64, where per-frame overheads dominate. Prints, never asserts.
//!
//! `cargo run --release -p drover-bench --bin executor-throughput -- [FRAMES]`

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use drover_node::encode::{EncodeSettings, SegmentEncoder};
use drover_node::exec::{Executor, FrameWindow, TestAids, WorkItem, WorkerEvent};
use drover_node::render::{Gpu, Renderer};
use drover_protocol::{Assign, ChunkRef};

const W: u32 = 1280;
const H: u32 = 720;
const FPS: u32 = 24;
/// Frames per chunk in the executor runs: a short chunk, so that chunk
/// boundaries (and their overlap) are part of what is measured.
const CHUNK_FRAMES: u64 = 24;
/// Side of the small frames, pixels.
const SMALL_PX: u32 = 64;
/// Frames of the small-frame executor run.
const SMALL_FRAMES: u64 = 2_400;

fn main() -> anyhow::Result<()> {
    // The executor runs its worker as `current_exe() exec-worker`: this
    // binary is that worker too.
    if std::env::args().nth(1).as_deref() == Some(drover_node::exec::WORKER_SUBCOMMAND) {
        return drover_node::exec::worker::run();
    }
    let frames: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse().context("FRAMES must be a positive integer")?,
        None => 96,
    };
    let source = drover_shaders::get("plasma")
        .context("built-in plasma")?
        .source;
    let gpu = Gpu::new()?;
    let a = gpu.adapter();
    println!(
        "adapter: {} ({}, {}, {})",
        a.name, a.device_type, a.backend, a.driver
    );
    let mut renderer = Renderer::new(&gpu, source, W, H, FPS)?;
    renderer.render(0)?; // first-use allocations are not the steady state

    let start = Instant::now();
    let mut n = 0u64;
    renderer.render_range(0..frames, |_, _| {
        n += 1;
        Ok(())
    })?;
    let range_s = start.elapsed().as_secs_f64();
    anyhow::ensure!(n == frames, "render_range gave {n} of {frames} frames");

    let start = Instant::now();
    for f in 0..frames {
        renderer.render(f)?;
    }
    let single_s = start.elapsed().as_secs_f64();

    let rendered: Vec<Vec<u8>> = (0..frames)
        .map(|f| renderer.render(f))
        .collect::<Result<_, _>>()?;
    let dir = std::env::temp_dir().join(format!("drover-exec-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("720p.mp4");
    let start = Instant::now();
    let mut enc = SegmentEncoder::create(&path, &EncodeSettings::new(W, H, FPS))?;
    for rgba in &rendered {
        enc.push_rgba(rgba)?;
    }
    let info = enc.finish()?;
    let encode_s = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);

    println!("{frames} frames at {W}x{H}:");
    println!(
        "  render_range (frames in flight): {:.1} frames/s",
        frames as f64 / range_s
    );
    println!(
        "  render one at a time:            {:.1} frames/s",
        frames as f64 / single_s
    );
    println!(
        "  encode libx264 veryfast crf 20:  {:.1} frames/s ({} bytes)",
        frames as f64 / encode_s,
        info.bytes
    );

    let spool = std::env::temp_dir().join(format!("drover-exec-spool-{}", std::process::id()));
    std::fs::create_dir_all(&spool)?;
    let executor = Executor::start(gpu, spool.clone(), TestAids::default());
    let source = source.to_string();
    // Warm-up: the first chunk compiles the pipeline (and starts whatever
    // the executor starts), which is not the steady state.
    run_chunks(&executor, &source, W, H, 1_000_000, CHUNK_FRAMES)?;
    let big_s = run_chunks(&executor, &source, W, H, 0, frames)?;
    run_chunks(
        &executor,
        &source,
        SMALL_PX,
        SMALL_PX,
        1_000_000,
        CHUNK_FRAMES,
    )?;
    let small_s = run_chunks(&executor, &source, SMALL_PX, SMALL_PX, 0, SMALL_FRAMES)?;
    let _ = std::fs::remove_dir_all(&spool);
    println!(
        "  executor, {CHUNK_FRAMES}-frame chunks:       {:.1} frames/s",
        frames as f64 / big_s
    );
    println!(
        "{SMALL_FRAMES} frames at {SMALL_PX}x{SMALL_PX}, executor, {CHUNK_FRAMES}-frame chunks: {:.1} frames/s",
        SMALL_FRAMES as f64 / small_s
    );
    Ok(())
}

/// Submits frames `first..first + frames` in chunks of [`CHUNK_FRAMES`]
/// all at once, waits until every chunk has its segment, and returns the
/// seconds from the first submit to the last segment.
fn run_chunks(
    executor: &Executor,
    source: &str,
    width: u32,
    height: u32,
    first: u64,
    frames: u64,
) -> anyhow::Result<f64> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let mut chunks = 0u32;
    let mut from = first;
    while from < first + frames {
        let end = (from + CHUNK_FRAMES).min(first + frames) - 1;
        executor.submit(WorkItem {
            assign: Assign {
                chunk: ChunkRef {
                    job: first,
                    index: chunks,
                    epoch: 1,
                },
                start: from,
                end,
                fps: FPS,
                width,
                height,
                shader_source: source.to_string(),
                encoder: "libx264".into(),
                crf: 20,
                frame_timeout_s: 0,
            },
            cancel: Arc::new(AtomicBool::new(false)),
            frames_done: Arc::new(AtomicU64::new(0)),
            window: Arc::new(FrameWindow::new(from, end)?),
            events: tx.clone(),
        });
        chunks += 1;
        from = end + 1;
    }
    let mut left = chunks;
    while left > 0 {
        match rx.blocking_recv().context("executor stopped")? {
            WorkerEvent::Progress { .. } | WorkerEvent::Log { .. } => {}
            WorkerEvent::Finished { path, .. } => {
                let _ = std::fs::remove_file(path);
                left -= 1;
            }
            WorkerEvent::Failed { reason, .. } => anyhow::bail!("chunk failed: {reason}"),
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

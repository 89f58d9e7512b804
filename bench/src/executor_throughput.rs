//! Throughput of the node's two executors at 1280x720 on this machine's
//! adapter: `render_range` (frames in flight), `render` one frame at a time,
//! and libx264 encoding of pre-rendered frames. Prints, never asserts.
//!
//! `cargo run --release -p drover-bench --bin executor-throughput -- [FRAMES]`

use std::time::Instant;

use anyhow::Context as _;
use drover_node::encode::{EncodeSettings, SegmentEncoder};
use drover_node::render::{Gpu, Renderer};

const W: u32 = 1280;
const H: u32 = 720;
const FPS: u32 = 24;

fn main() -> anyhow::Result<()> {
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
    Ok(())
}

//! What one `/metrics` scrape costs the scheduler's thread: the core's
//! [`Core::load_summary`] (jobs by state, the queue in frames and seconds,
//! nodes by pool and state) and encoding the whole text, on fleets and
//! queues of growing size.
//!
//! The core is the real one, driven in-process: nodes join with a hello,
//! jobs are submitted (the idle nodes take chunks, so the queue holds
//! running and waiting jobs), nodes are spread over four pools, and a few
//! are drained. Each size is scraped `--scrapes` times; p50 and p99 are
//! printed, never asserted; figures are recorded in `bench/RESULTS.md`
//! under `## Metrics scrape`.
//!
//! What it shows: the summary is one pass over jobs and one over nodes
//! (times the few speed keys the queue uses), so its cost grows with
//! jobs + nodes and a scrape every 15 s is a negligible share of the
//! scheduler's time even with 100,000 queued jobs.

use std::time::Instant;

use clap::Parser;
use drover_coordinator::sched::{Core, CoreConfig, Event, Owner};
use drover_shared::caps::{Adapter, Calibration, Capabilities, DeviceType};
use drover_shared::spec::JobSpec;

/// `/metrics` scrape cost on large fleets and queues.
#[derive(Parser, Debug)]
struct Args {
    /// Scrapes measured per size.
    #[arg(long, default_value_t = 200)]
    scrapes: usize,
    /// Sizes as NODES:JOBS, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10:100,100:1000,1000:10000,1000:100000"
    )]
    sizes: Vec<String>,
}

fn caps(i: usize) -> Capabilities {
    let adapter = Adapter {
        name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
        backend: "Vulkan".into(),
        device_type: DeviceType::Cpu,
        vendor: "mesa".into(),
        vram_bytes: None,
    };
    Capabilities {
        hostname: format!("n{i}"),
        cpu_cores: 16,
        memory_bytes: 64 << 30,
        adapters: vec![adapter.clone()],
        render_adapter: Some(adapter),
        encoders: vec!["libx264".into()],
        pool: format!("pool-{}", i % 4),
        calibration: Some(Calibration {
            frames_per_s: 20.0 + (i % 7) as f64,
            width: 640,
            height: 360,
        }),
        ..Default::default()
    }
}

fn spec(i: usize) -> JobSpec {
    let mut s = JobSpec::from_json(&format!(
        r#"{{"name":"j{i}","frames":{{"start":1,"end":{}}},"resolution":{{"width":{},"height":{}}},
           "render":{{"kind":"shader","shader":"plasma"}}}}"#,
        120 + i % 480,
        [640, 1280, 1920][i % 3],
        [360, 720, 1080][i % 3],
    ))
    .expect("a valid spec");
    s.validate().expect("a valid spec");
    s
}

/// A core with `nodes` nodes (a tenth of them drained) and `jobs` jobs.
fn build(nodes: usize, jobs: usize) -> Core {
    let mut core = Core::new(CoreConfig::default());
    let now = 1_000;
    for i in 0..nodes {
        core.handle(
            now,
            Event::Hello {
                session: i as u64 + 1,
                name: format!("n{i}"),
                node_id: format!("id-{i}"),
                caps: Box::new(caps(i)),
                running: Vec::new(),
                spooled: Vec::new(),
            },
        );
    }
    let owner = Owner {
        key: "bench".into(),
        name: "bench".into(),
    };
    for i in 0..jobs {
        core.submit(now, spec(i), owner.clone());
    }
    for i in (0..nodes).step_by(10) {
        core.handle(
            now,
            Event::Drain {
                name: format!("n{i}"),
                now: false,
            },
        );
    }
    core.take_facts();
    core
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("| nodes | jobs | summary p50 | summary p99 | summary + text p50 | summary + text p99 | text bytes |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for size in &args.sizes {
        let (nodes, jobs) = size
            .split_once(':')
            .and_then(|(n, j)| Some((n.parse::<usize>().ok()?, j.parse::<usize>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--sizes: {size:?} is not NODES:JOBS"))?;
        let core = build(nodes, jobs);
        let mut summary_us = Vec::with_capacity(args.scrapes);
        let mut total_us = Vec::with_capacity(args.scrapes);
        let mut bytes = 0;
        for _ in 0..args.scrapes {
            let t = Instant::now();
            let load = core.load_summary();
            summary_us.push(t.elapsed().as_secs_f64() * 1e6);
            let text = drover_coordinator::metrics::render(&load)?;
            total_us.push(t.elapsed().as_secs_f64() * 1e6);
            bytes = text.len();
            std::hint::black_box(text);
        }
        summary_us.sort_by(f64::total_cmp);
        total_us.sort_by(f64::total_cmp);
        println!(
            "| {nodes} | {jobs} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {bytes} |",
            percentile(&summary_us, 0.5),
            percentile(&summary_us, 0.99),
            percentile(&total_us, 0.5),
            percentile(&total_us, 0.99),
        );
    }
    Ok(())
}

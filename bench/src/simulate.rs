//! `simulate`: Drover's scheduler against the usual farm strategies on the
//! same simulated fleet, jobs and faults (issue 7), and the scheduler's
//! throughput and memory at 10,000 nodes (`--throughput`).
//!
//! Deterministic: every run prints its seed, and the same seed gives the
//! same figures (all but `decisions_per_s`, which is wall-clock). See
//! `drover_bench::sim` for the model.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::Parser;
use drover_bench::sim::alloc::CountingAlloc;
use drover_bench::sim::throughput::{self, ThroughputParams};
use drover_bench::sim::{run, Report, RunOptions, Scenario, ScenarioParams, Strategy};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const EXAMPLES: &str = "\
Examples:
  # every strategy on the default fleet and jobs, then with faults
  cargo run --release --bin simulate -- --seed 1
  cargo run --release --bin simulate -- --seed 1 --faults

  # one JSON object per strategy per line
  cargo run --release --bin simulate -- --seed 1 --faults --json

  # only Drover, a bigger farm, invariants checked after every event
  simulate --seed 7 --strategy drover --gpu-nodes 20 --cpu-nodes 80 --jobs 40 --check-invariants

  # scheduler throughput and memory: 10,000 nodes, 1,000,000 queued frames
  cargo run --release --bin simulate -- --throughput

Strategies: drover (target-time chunks, stealing, speculation), static-1,
static-10, static-50 (fixed chunks: OpenCue, Flamenco, Deadline), adaptive
(target-time chunks without stealing: Deadline Cloud), pull-2s (one frame at
a time, picked up at a 2 s poll).";

/// Compares scheduling strategies on a simulated render farm, driving
/// Drover's real scheduler core on a virtual clock.
#[derive(Debug, Parser)]
#[command(name = "simulate", after_help = EXAMPLES)]
struct Args {
    /// Seed of the fleet, jobs, faults and network; a random one is picked
    /// (and printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Inject faults: render crashes, nodes leaving and coming back, late
    /// joiners, 3-5x slowdowns, a stalling node, a frame that always fails.
    #[arg(long)]
    faults: bool,
    /// One JSON object per line, one per strategy (the seed goes to
    /// stderr and into each object).
    #[arg(long)]
    json: bool,
    /// `all`, or one of drover, static-1, static-10, static-50, adaptive,
    /// pull-2s.
    #[arg(long, default_value = "all")]
    strategy: String,
    /// GPU nodes.
    #[arg(long, default_value_t = 8)]
    gpu_nodes: u32,
    /// CPU nodes.
    #[arg(long, default_value_t = 24)]
    cpu_nodes: u32,
    /// GPU node speed over CPU node speed.
    #[arg(long, default_value_t = 10.0)]
    gpu_speedup: f64,
    /// Jobs.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    jobs: u32,
    /// Fewest frames per job.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    min_frames: u64,
    /// Most frames per job.
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_frames: u64,
    /// Jobs arrive within this many seconds of the start.
    #[arg(long, default_value_t = 5)]
    arrival_spread_s: u64,
    /// Call the core's invariant checks after every event (slow).
    #[arg(long)]
    check_invariants: bool,
    /// Print every message between the core and the nodes to stderr.
    #[arg(long)]
    trace: bool,
    /// Stop a run whose virtual clock passes this many seconds.
    #[arg(long, default_value_t = 48 * 3600)]
    max_sim_s: u64,
    /// Measure scheduler throughput and memory instead: `--nodes` nodes,
    /// `--queued-frames` frames over `--throughput-jobs` jobs.
    #[arg(long)]
    throughput: bool,
    /// Nodes of the throughput run.
    #[arg(long, default_value_t = 10_000)]
    nodes: u32,
    /// Queued frames of the throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    queued_frames: u64,
    /// Jobs of the throughput run (at most 100,000 frames each).
    #[arg(long, default_value_t = 100)]
    throughput_jobs: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    if args.json {
        eprintln!("seed {seed}");
    } else {
        println!("seed {seed}");
    }
    if args.throughput {
        return throughput_main(&args, seed);
    }
    let strategies: Vec<Strategy> = match args.strategy.as_str() {
        "all" => Strategy::ALL.to_vec(),
        name => match Strategy::from_name(name) {
            Some(s) => vec![s],
            None => bail!(
                "--strategy {name:?}: expected all, {}",
                Strategy::ALL.map(|s| s.name()).join(", ")
            ),
        },
    };
    if args.min_frames > args.max_frames {
        bail!(
            "--min-frames {} is above --max-frames {}",
            args.min_frames,
            args.max_frames
        );
    }
    if args.gpu_nodes + args.cpu_nodes == 0 {
        bail!("the fleet is empty: give --gpu-nodes or --cpu-nodes");
    }
    if !(args.gpu_speedup.is_finite() && args.gpu_speedup > 0.0) {
        bail!(
            "--gpu-speedup must be a positive number, got {}",
            args.gpu_speedup
        );
    }
    let params = ScenarioParams {
        gpu_nodes: args.gpu_nodes,
        cpu_nodes: args.cpu_nodes,
        gpu_speedup: args.gpu_speedup,
        jobs: args.jobs,
        min_frames: args.min_frames,
        max_frames: args.max_frames,
        arrival_spread_ms: args.arrival_spread_s * 1000,
        faults: args.faults,
        ..ScenarioParams::new(seed)
    };
    let sc = Scenario::generate(&params);
    let opts = RunOptions {
        check_invariants: args.check_invariants,
        max_sim_ms: args.max_sim_s * 1000,
        trace: args.trace,
    };
    if !args.json {
        let gpu_jobs = sc.jobs.iter().filter(|j| j.gpu_required).count();
        println!(
            "fleet: {} GPU nodes at {}x + {} CPU nodes{}; {} jobs ({} GPU-only), {} frames{}",
            args.gpu_nodes,
            args.gpu_speedup,
            sc.nodes.len() as u32 - args.gpu_nodes,
            if args.faults { " (2 join late)" } else { "" },
            sc.jobs.len(),
            gpu_jobs,
            sc.frames(),
            if args.faults {
                "; faults: crashes, 3 departures, 4 slowdowns, 1 stall, 1 bad frame"
            } else {
                "; no faults"
            }
        );
        println!(
            "{:<10} {:>10} {:>9} {:>6} {:>6} {:>7} {:>7} {:>7} {:>6} {:>9} {:>12}",
            "strategy",
            "makespan s",
            "bound s",
            "ratio",
            "util",
            "stolen",
            "wasted",
            "chunks",
            "fails",
            "jobs ok",
            "decisions/s"
        );
    }
    for s in strategies {
        let r = run(&sc, s, &opts);
        if r.refused > 0 {
            bail!(
                "the core refused {} simulated node(s); the scenario is broken",
                r.refused
            );
        }
        print_report(&r.report, args.json)?;
    }
    Ok(())
}

fn print_report(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "{:<10} {:>10.1} {:>9.1} {:>6.3} {:>6.3} {:>7} {:>7} {:>7} {:>6} {:>6}/{:<2} {:>12.0}{}",
        r.strategy,
        r.makespan_s,
        r.lower_bound_s,
        r.ratio,
        r.utilization,
        r.frames_stolen,
        r.frames_wasted,
        r.chunks,
        r.chunk_failures,
        r.jobs_done,
        r.jobs,
        r.decisions_per_s,
        if r.finished { "" } else { "  (time limit hit)" }
    );
    Ok(())
}

fn throughput_main(args: &Args, seed: u64) -> anyhow::Result<()> {
    if args.throughput_jobs == 0 || args.queued_frames < args.throughput_jobs as u64 {
        bail!("--queued-frames must be at least --throughput-jobs (and that at least 1)");
    }
    if args.queued_frames.div_ceil(args.throughput_jobs as u64)
        > drover_shared::spec::MAX_FRAMES_PER_JOB
    {
        bail!(
            "--queued-frames {} over {} jobs exceeds {} frames per job",
            args.queued_frames,
            args.throughput_jobs,
            drover_shared::spec::MAX_FRAMES_PER_JOB
        );
    }
    let p = ThroughputParams {
        seed,
        nodes: args.nodes,
        frames: args.queued_frames,
        jobs: args.throughput_jobs,
    };
    let r = throughput::run(&p);
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let bytes = |b: Option<f64>| b.map_or("not measured".to_string(), |b| format!("{b:.1} B"));
    println!(
        "{} nodes, {} queued frames in {} jobs: {} chunks, {} frames done, {} jobs done",
        r.nodes, r.frames_queued, r.jobs, r.chunks, r.frames_done, r.jobs_done
    );
    println!(
        "decisions: {} in {:.3} s inside the core: {:.0} decisions/s, {:.0} commands/s ({:.0} decisions/s with the driver)",
        r.decisions, r.core_s, r.decisions_per_s, r.commands_per_s, r.loop_decisions_per_s
    );
    if let Some(cpu) = r.loop_decisions_per_cpu_s {
        println!("per CPU second of this thread (driver included, not lowered by other load): {cpu:.0} decisions/s");
    }
    println!(
        "memory: {} per idle node, {} per queued frame, {} per node joining the loaded farm (first chunks included)",
        bytes(r.bytes_per_node),
        bytes(r.bytes_per_queued_frame),
        bytes(r.bytes_per_node_loaded)
    );
    Ok(())
}

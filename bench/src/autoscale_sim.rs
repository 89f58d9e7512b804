//! `autoscale-sim`: the coordinator's autoscaler against a fixed pool
//! sized for the peak, on one seeded day-long trace of job arrivals with a
//! daily peak, in one run (issue 10). Prints node-hours and the median and
//! p95 time from a job's submission to its first frame for both, and what
//! the autoscaler saved.
//!
//! Deterministic: the same seed gives the same figures. See
//! `drover_bench::sim::world::pool` for the model.

use clap::Parser;
use drover_bench::sim::world::pool::{compare, day_trace, PoolSimConfig};
use drover_bench::sim::RunOptions;
use drover_coordinator::autoscale::policy::{PolicyConfig, DEFAULT_JOIN_TIMEOUT_MS};

/// Compares an autoscaled node pool with a fixed one over a simulated day.
#[derive(Debug, Parser)]
#[command(
    name = "autoscale-sim",
    after_help = "Example:\n  cargo run --release -p drover-bench --bin autoscale-sim -- --seed 1"
)]
struct Args {
    /// Seed of the trace, the fleet and the network.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The fixed pool's size, and the autoscaled pool's maximum.
    #[arg(long, default_value_t = 16)]
    nodes: u32,
    /// Jobs arriving over the day.
    #[arg(long, default_value_t = 300)]
    jobs: u32,
    /// The autoscaler's drain target, seconds.
    #[arg(long, default_value_t = 300.0)]
    target_drain_s: f64,
    /// Idle time before a node is drained and removed, seconds.
    #[arg(long, default_value_t = 600.0)]
    idle_cooldown_s: f64,
    /// Least time between two scale-ups, seconds.
    #[arg(long, default_value_t = 60.0)]
    scale_up_cooldown_s: f64,
    /// Nodes the autoscaled pool keeps with no work.
    #[arg(long, default_value_t = 0)]
    min: u32,
    /// Check the core's invariants after every event (slow).
    #[arg(long)]
    check_invariants: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let sc = day_trace(a.seed, a.nodes, a.jobs);
    let cfg = PoolSimConfig {
        policy: PolicyConfig {
            min: a.min,
            max: a.nodes,
            target_drain_s: a.target_drain_s,
            scale_up_cooldown_ms: (a.scale_up_cooldown_s * 1000.0) as u64,
            idle_cooldown_ms: (a.idle_cooldown_s * 1000.0) as u64,
            join_timeout_ms: DEFAULT_JOIN_TIMEOUT_MS,
        },
        frame_s_estimate: 1.0,
    };
    let opts = RunOptions {
        check_invariants: a.check_invariants,
        ..RunOptions::default()
    };
    let c = compare(&sc, &cfg, &opts);
    if a.json {
        println!("{}", serde_json::to_string(&c)?);
        return Ok(());
    }
    println!(
        "seed {}: {} jobs over a day (peak at 15:00), {} CPU nodes at most; target {} s, idle cooldown {} s",
        c.seed, c.jobs, c.peak_nodes, a.target_drain_s, a.idle_cooldown_s
    );
    println!(
        "{:<11} {:>10} {:>14} {:>11} {:>11} {:>8} {:>10} {:>10}",
        "pool",
        "node-hours",
        "queue median s",
        "queue p95 s",
        "queue max s",
        "jobs ok",
        "decisions",
        "peak nodes"
    );
    for f in [&c.autoscaled, &c.fixed] {
        println!(
            "{:<11} {:>10.1} {:>14.1} {:>11.1} {:>11.1} {:>8} {:>10} {:>10}",
            f.pool,
            f.node_hours,
            f.queue_median_s,
            f.queue_p95_s,
            f.queue_max_s,
            f.jobs_done,
            f.decisions,
            f.peak_nodes
        );
    }
    println!(
        "node-hours saved: {:.1}%; median queue time {:+.1} s, p95 {:+.1} s against the fixed pool",
        c.node_hours_saved * 100.0,
        c.median_queue_change_s,
        c.p95_queue_change_s
    );
    Ok(())
}

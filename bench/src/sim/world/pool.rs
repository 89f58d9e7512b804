//! The autoscaler in the simulator: the coordinator's own policy
//! ([`drover_coordinator::autoscale::policy::PoolPolicy`]) and the core's
//! pool report ([`drover_coordinator::sched::Core::pool_report`]) driven on
//! the virtual clock, with the scenario's nodes as the pool a provider
//! would start: a node asked for joins [`NODE_START_MS`] later, a removed
//! one disconnects.
//!
//! [`day_trace`] makes a day-long seeded trace of job arrivals with a
//! daily peak; [`compare`] runs it once with the autoscaler and once with
//! a fixed pool sized for the peak, and reports node-hours and queue times
//! side by side.

use drover_coordinator::autoscale::policy::{
    Decision, NodeObs, PolicyConfig, PoolInput, PoolPolicy,
};
use drover_coordinator::sched::Event;
use drover_shared::caps::Capabilities;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{RunOptions, SimEvent, World};
use crate::sim::scenario::{Scenario, ScenarioParams};
use crate::sim::strategy::Strategy;

/// How long a node asked for takes to join: a cloud instance boots, pulls
/// the node image and calibrates in about a minute.
pub const NODE_START_MS: u64 = 60_000;

/// How often the simulated driver ticks the policy, as the coordinator's
/// driver does (`autoscale::driver::TICK`).
pub const POOL_TICK_MS: u64 = 1_000;

/// Seed offset of the trace's arrival times, so that they are not the
/// scenario generator's stream.
const TRACE_SEED_SALT: u64 = 0x000D_A70F_A221_7A15;

/// The length of the trace: one day.
pub const DAY_MS: u64 = 24 * 3600 * 1000;

/// The pool's settings in a simulated run.
#[derive(Debug, Clone)]
pub struct PoolSimConfig {
    /// The policy's tunables.
    pub policy: PolicyConfig,
    /// A frame's time before the pool's nodes measured one, seconds.
    pub frame_s_estimate: f64,
}

/// Per node of the pool: when it was asked for and, if so, removed.
#[derive(Debug, Clone, Default)]
struct Life {
    asked_ms: Option<u64>,
    spans: Vec<(u64, u64)>,
}

/// The autoscaler's state inside a [`World`].
pub struct PoolSim {
    policy: PoolPolicy,
    frame_s_estimate: f64,
    caps: Capabilities,
    lives: Vec<Life>,
    /// Whether each scenario node is asked for (starting or up).
    asked: Vec<bool>,
    decisions: Vec<(u64, Decision)>,
    ticks: u64,
}

impl World<'_> {
    /// One tick of the simulated driver: the core's report in, the
    /// policy's decisions carried out.
    pub(super) fn pool_tick(&mut self) {
        let now = self.now;
        let Some(mut p) = self.pool.take() else {
            return;
        };
        let report = self.core.pool_report("", &p.caps, p.frame_s_estimate);
        let nodes: Vec<NodeObs> = report
            .nodes
            .iter()
            .map(|n| NodeObs {
                name: n.name.clone(),
                busy: n.busy,
                drained: n.drained,
            })
            .collect();
        if p.ticks.is_multiple_of(10) {
            let asked = p.asked.iter().filter(|a| **a).count() as u32;
            p.policy.sync_requested(now, asked, &nodes);
        }
        p.ticks += 1;
        let input = PoolInput {
            backlog_frames: report.backlog_frames,
            work_s: report.work_s,
            nodes,
        };
        for d in p.policy.tick(now, &input) {
            match &d {
                Decision::ScaleUp { by, .. } => {
                    let mut started = 0;
                    for i in 0..p.asked.len() {
                        if started == *by {
                            break;
                        }
                        if !p.asked[i] {
                            p.asked[i] = true;
                            p.lives[i].asked_ms = Some(now);
                            self.at(now + NODE_START_MS, SimEvent::Join(i));
                            started += 1;
                        }
                    }
                    p.policy.added(now, started);
                }
                Decision::Drain { node, .. } => {
                    self.deliver(Event::Drain {
                        name: node.clone(),
                        now: false,
                    });
                }
                Decision::Remove { node, .. } => {
                    if let Some(i) = self.sc.nodes.iter().position(|n| &n.name == node) {
                        self.leave(i, crate::sim::scenario::Leave::Disconnect);
                        // The name may come back: no drained mark waits
                        // for it.
                        self.deliver(Event::Undrain { name: node.clone() });
                        p.asked[i] = false;
                        if let Some(from) = p.lives[i].asked_ms.take() {
                            p.lives[i].spans.push((from, now));
                        }
                    }
                    p.policy.removed(node);
                }
            }
            p.decisions.push((now, d));
        }
        self.pool = Some(p);
        self.at(now + POOL_TICK_MS, SimEvent::PoolTick);
    }
}

/// A day of job arrivals with a daily peak: the fleet is `nodes` CPU
/// nodes, jobs arrive through the day with a density that peaks in the
/// afternoon (a raised cosine, ten times the night's rate at its top).
pub fn day_trace(seed: u64, nodes: u32, jobs: u32) -> Scenario {
    let params = ScenarioParams {
        gpu_nodes: 0,
        cpu_nodes: nodes,
        jobs,
        min_frames: 100,
        max_frames: 1_200,
        min_cost: 1.0,
        max_cost: 3.0,
        arrival_spread_ms: 1,
        faults: false,
        ..ScenarioParams::new(seed)
    };
    let mut sc = Scenario::generate(&params);
    let mut rng = StdRng::seed_from_u64(seed ^ TRACE_SEED_SALT);
    // Rejection sampling of the arrival density: night 1, peak 10 at
    // 15:00.
    let density = |t: f64| {
        let phase = (t / DAY_MS as f64 - 15.0 / 24.0) * std::f64::consts::TAU;
        1.0 + 4.5 * (1.0 + phase.cos())
    };
    let mut arrivals: Vec<u64> = (0..sc.jobs.len())
        .map(|_| loop {
            let t = rng.random_range(0..DAY_MS) as f64;
            if rng.random::<f64>() * 10.0 <= density(t) {
                break t as u64;
            }
        })
        .collect();
    arrivals.sort_unstable();
    for (j, t) in sc.jobs.iter_mut().zip(arrivals) {
        j.arrival_ms = t;
    }
    // The fixed pool is up all day from the start.
    for n in &mut sc.nodes {
        n.uptime = vec![crate::sim::scenario::Uptime {
            from_ms: 0,
            to: None,
        }];
    }
    sc
}

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct PoolFigures {
    /// `autoscaled` or `fixed`.
    pub pool: String,
    /// Node-hours paid for: from the moment a node is asked for (it boots
    /// meanwhile) to its removal; the fixed pool's nodes the whole day.
    pub node_hours: f64,
    /// Median time from a job's submission to its first frame, seconds.
    pub queue_median_s: f64,
    /// 95th percentile of the same, seconds.
    pub queue_p95_s: f64,
    /// The longest, seconds.
    pub queue_max_s: f64,
    /// Jobs done.
    pub jobs_done: usize,
    /// Scale-ups, drains and removals decided.
    pub decisions: usize,
    /// Most nodes asked for at once.
    pub peak_nodes: u32,
}

/// The comparison: one seeded trace, two pools.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The seed that replays it.
    pub seed: u64,
    /// Jobs in the trace.
    pub jobs: usize,
    /// The fixed pool's size and the autoscaled pool's maximum.
    pub peak_nodes: u32,
    /// With the autoscaler.
    pub autoscaled: PoolFigures,
    /// A fixed pool sized for the peak.
    pub fixed: PoolFigures,
    /// `1 - autoscaled / fixed` node-hours.
    pub node_hours_saved: f64,
    /// Median queue time, autoscaled minus fixed, seconds.
    pub median_queue_change_s: f64,
    /// p95 queue time, autoscaled minus fixed, seconds.
    pub p95_queue_change_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn queue_times(w: &World<'_>) -> Vec<f64> {
    let mut q: Vec<f64> = w
        .job_ids
        .iter()
        .flatten()
        .filter_map(|id| w.core.record(*id))
        .filter_map(|r| {
            r.first_frame_at_ms
                .map(|f| f.saturating_sub(r.submitted_at_ms) as f64 / 1000.0)
        })
        .collect();
    q.sort_by(f64::total_cmp);
    q
}

fn figures(name: &str, w: &World<'_>, node_hours: f64, decisions: usize, peak: u32) -> PoolFigures {
    let q = queue_times(w);
    let r = w.result(true);
    PoolFigures {
        pool: name.into(),
        node_hours: (node_hours * 100.0).round() / 100.0,
        queue_median_s: (percentile(&q, 0.5) * 10.0).round() / 10.0,
        queue_p95_s: (percentile(&q, 0.95) * 10.0).round() / 10.0,
        queue_max_s: (q.last().copied().unwrap_or(0.0) * 10.0).round() / 10.0,
        jobs_done: r.report.jobs_done,
        decisions,
        peak_nodes: peak,
    }
}

/// Runs `sc` with the autoscaler (0 to all of the scenario's nodes) and
/// with every node up all day, on the same core settings.
pub fn compare(sc: &Scenario, cfg: &PoolSimConfig, opts: &RunOptions) -> Comparison {
    let strategy = Strategy::Drover;
    let n = sc.nodes.len();
    let horizon = |w: &World<'_>| w.now.max(DAY_MS);

    // Fixed: every node all day.
    let mut fixed = World::new(sc, strategy, opts.check_invariants);
    fixed.start();
    fixed.run_until_done(opts.max_sim_ms);
    let fixed_hours = n as f64 * horizon(&fixed) as f64 / 3_600_000.0;
    let fixed_fig = figures("fixed", &fixed, fixed_hours, 0, n as u32);

    // Autoscaled.
    let mut w = World::new(sc, strategy, opts.check_invariants);
    let mut caps = sc.nodes[0].capabilities();
    caps.pool = String::new();
    w.pool = Some(PoolSim {
        policy: PoolPolicy::new("sim", cfg.policy.clone(), 0),
        frame_s_estimate: cfg.frame_s_estimate,
        caps,
        lives: vec![Life::default(); n],
        asked: vec![false; n],
        decisions: Vec::new(),
        ticks: 0,
    });
    w.start();
    w.run_until_done(opts.max_sim_ms);
    let end = horizon(&w);
    let p = w.pool.take().expect("pool");
    let mut hours = 0.0;
    for l in &p.lives {
        for (from, to) in &l.spans {
            hours += (to - from) as f64;
        }
        if let Some(from) = l.asked_ms {
            hours += end.saturating_sub(from) as f64;
        }
    }
    // The most nodes asked for at once, from the decisions' timeline.
    let mut events: Vec<(u64, i64)> = Vec::new();
    for l in &p.lives {
        for (from, to) in &l.spans {
            events.push((*from, 1));
            events.push((*to, -1));
        }
        if let Some(from) = l.asked_ms {
            events.push((from, 1));
        }
    }
    events.sort();
    let (mut cur, mut peak) = (0i64, 0i64);
    for (_, d) in events {
        cur += d;
        peak = peak.max(cur);
    }
    let auto = figures(
        "autoscaled",
        &w,
        hours / 3_600_000.0,
        p.decisions.len(),
        peak as u32,
    );
    Comparison {
        seed: sc.params.seed,
        jobs: sc.jobs.len(),
        peak_nodes: n as u32,
        node_hours_saved: ((1.0 - auto.node_hours / fixed_fig.node_hours) * 1000.0).round()
            / 1000.0,
        median_queue_change_s: ((auto.queue_median_s - fixed_fig.queue_median_s) * 10.0).round()
            / 10.0,
        p95_queue_change_s: ((auto.queue_p95_s - fixed_fig.queue_p95_s) * 10.0).round() / 10.0,
        autoscaled: auto,
        fixed: fixed_fig,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_day_autoscaled_uses_fewer_node_hours_and_finishes_every_job() {
        let sc = day_trace(7, 6, 40);
        let cfg = PoolSimConfig {
            policy: PolicyConfig {
                min: 0,
                max: 6,
                target_drain_s: 300.0,
                scale_up_cooldown_ms: 30_000,
                idle_cooldown_ms: 300_000,
                join_timeout_ms: 300_000,
            },
            frame_s_estimate: 1.0,
        };
        let c = compare(
            &sc,
            &cfg,
            &RunOptions {
                check_invariants: true,
                ..RunOptions::default()
            },
        );
        assert_eq!(c.fixed.jobs_done, 40, "{c:#?}");
        assert_eq!(c.autoscaled.jobs_done, 40, "{c:#?}");
        assert!(c.autoscaled.node_hours < c.fixed.node_hours, "{c:#?}");
        assert!(c.autoscaled.decisions > 0);
        assert!(c.autoscaled.peak_nodes <= 6);
        // The same seed replays the same figures.
        let again = compare(&sc, &cfg, &RunOptions::default());
        assert_eq!(again.autoscaled.node_hours, c.autoscaled.node_hours);
        assert_eq!(again.autoscaled.queue_p95_s, c.autoscaled.queue_p95_s);
    }
}

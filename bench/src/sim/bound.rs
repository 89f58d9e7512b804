//! The lower bound on the makespan, and the fleet's capacity.
//!
//! A node's capacity is its true speed integrated over the time it is
//! connected, slowdowns and stalls included; crashes cost no capacity (the
//! frames a crash throws away are the strategy's loss). No schedule can
//! finish before the largest of:
//!
//! - the moment the whole fleet's cumulative capacity covers all the work;
//! - the moment the GPU nodes' capacity covers the work only they may do;
//! - for each job, its arrival plus its work at the full nominal speed of
//!   every node that may run it;
//! - for each job, its arrival plus its longest frame on the fastest node
//!   that may run it.
//!
//! Per-chunk costs (start-up, encode, upload, mux) are left out, so the
//! bound is one no real farm reaches.

use super::scenario::{NodeSpec, Scenario};

/// A constant rate over `[from_ms, to_ms)`, pixel-frames per millisecond.
#[derive(Debug, Clone, Copy)]
struct Segment {
    from_ms: f64,
    to_ms: f64,
    rate: f64,
}

/// The pieces of a node's capacity over time.
fn segments(n: &NodeSpec) -> Vec<Segment> {
    let mut out = Vec::new();
    let base = n.speed_px_s / 1000.0;
    for up in &n.uptime {
        let from = up.from_ms as f64;
        let to = up.to.map_or(f64::INFINITY, |(t, _)| t as f64);
        let mut cuts = vec![from, to];
        for e in &n.episodes {
            for t in [e.from_ms as f64, e.to_ms as f64] {
                if from < t && t < to {
                    cuts.push(t);
                }
            }
        }
        cuts.sort_by(f64::total_cmp);
        for w in cuts.windows(2) {
            if w[1] > w[0] {
                out.push(Segment {
                    from_ms: w[0],
                    to_ms: w[1],
                    rate: base * n.speed_factor_at(w[0] as u64),
                });
            }
        }
    }
    out
}

/// The earliest time the summed capacity of `segs` reaches `work`.
fn time_to_cover(segs: &[Segment], work: f64) -> f64 {
    if work <= 0.0 {
        return 0.0;
    }
    let mut changes: Vec<(f64, f64)> = Vec::new();
    for s in segs {
        changes.push((s.from_ms, s.rate));
        if s.to_ms.is_finite() {
            changes.push((s.to_ms, -s.rate));
        }
    }
    changes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut t, mut rate, mut done) = (0.0, 0.0, 0.0);
    for (at, delta) in changes {
        if rate > 0.0 && done + rate * (at - t) >= work {
            return t + (work - done) / rate;
        }
        done += rate * (at - t);
        t = at;
        rate += delta;
    }
    if rate > 1e-12 {
        t + (work - done) / rate
    } else {
        f64::INFINITY
    }
}

/// Capacity of the whole fleet from 0 to `t_ms`, pixel-frames.
pub fn capacity(sc: &Scenario, t_ms: f64) -> f64 {
    sc.nodes
        .iter()
        .flat_map(segments)
        .map(|s| {
            let to = s.to_ms.min(t_ms);
            if to > s.from_ms {
                s.rate * (to - s.from_ms)
            } else {
                0.0
            }
        })
        .sum()
}

/// The lower bound on the makespan, milliseconds.
pub fn lower_bound_ms(sc: &Scenario) -> f64 {
    let all: Vec<Segment> = sc.nodes.iter().flat_map(segments).collect();
    let gpu: Vec<Segment> = sc
        .nodes
        .iter()
        .filter(|n| n.gpu)
        .flat_map(segments)
        .collect();
    let work: f64 = sc.jobs.iter().map(|j| j.renderable_work()).sum();
    let gpu_work: f64 = sc
        .jobs
        .iter()
        .filter(|j| j.gpu_required)
        .map(|j| j.renderable_work())
        .sum();
    let mut bound = time_to_cover(&all, work).max(time_to_cover(&gpu, gpu_work));
    for j in &sc.jobs {
        let eligible = sc.nodes.iter().filter(|n| n.gpu || !j.gpu_required);
        let (sum, max) = eligible.fold((0.0f64, 0.0f64), |(s, m), n| {
            (s + n.speed_px_s, m.max(n.speed_px_s))
        });
        if sum <= 0.0 {
            return f64::INFINITY;
        }
        let arrival = j.arrival_ms as f64;
        bound = bound
            .max(arrival + j.renderable_work() / sum * 1000.0)
            .max(arrival + j.max_frame_work() / max * 1000.0);
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_is_exact_on_pieces() {
        let segs = [
            Segment {
                from_ms: 0.0,
                to_ms: 10.0,
                rate: 1.0,
            },
            Segment {
                from_ms: 5.0,
                to_ms: f64::INFINITY,
                rate: 2.0,
            },
        ];
        // 0..5: 5 units; 5..10: 15 more; after 10 only rate 2.
        assert_eq!(time_to_cover(&segs, 5.0), 5.0);
        assert_eq!(time_to_cover(&segs, 20.0), 10.0);
        assert_eq!(time_to_cover(&segs, 30.0), 15.0);
        assert_eq!(time_to_cover(&segs[..1], 11.0), f64::INFINITY);
    }
}

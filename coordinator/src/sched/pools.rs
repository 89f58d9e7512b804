//! What the autoscaler asks the core about a pool, and preemption notices.
//!
//! The autoscaler's policy (`crate::autoscale::policy`) is its own state
//! machine; it needs from the core only a summary of one pool: the work
//! waiting for the pool's nodes and those nodes' state. That summary is a
//! read of the core's state ([`Core::pool_report`]) and decides nothing.

use drover_shared::caps::Capabilities;

use super::state::Core;
use super::types::Command;

/// One of a pool's connected nodes, as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolNode {
    /// Name.
    pub name: String,
    /// Holds at least one chunk.
    pub busy: bool,
    /// Takes no new work: drained (admin, autoscaler, preemption) or
    /// shutting down.
    pub drained: bool,
}

/// The work waiting for one pool and the pool's nodes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolReport {
    /// Remaining frames of the queued, running and unschedulable jobs the
    /// pool's nodes can run (paused jobs do not count: they run nothing).
    pub backlog_frames: u64,
    /// The jobs those frames belong to.
    pub jobs: u32,
    /// Those frames' render time on one of the pool's nodes, seconds:
    /// by the nodes' learned speeds, or the pool's estimate when it has no
    /// node to learn from.
    pub work_s: f64,
    /// The pool's connected nodes.
    pub nodes: Vec<PoolNode>,
}

impl Core {
    /// The work waiting for pool `pool` and its nodes. `declared` are the
    /// capabilities the pool's nodes will have (at least `pool`), used to
    /// match jobs while the pool has no node: a job unschedulable because
    /// the pool is empty still counts. `frame_s_estimate` is a frame's
    /// render time when no node of the pool has measured one.
    pub fn pool_report(
        &self,
        pool: &str,
        declared: &Capabilities,
        frame_s_estimate: f64,
    ) -> PoolReport {
        let members: Vec<_> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
            .filter(|(_, n)| n.connected && n.caps.pool == pool)
            .collect();
        let mut report = PoolReport {
            nodes: members
                .iter()
                .map(|(_, n)| PoolNode {
                    name: n.name.to_string(),
                    busy: !n.held.is_empty(),
                    drained: n.drained || n.leaving,
                })
                .collect(),
            ..PoolReport::default()
        };
        // A connected member shows what the pool's nodes really have.
        let caps = members.first().map_or(declared, |(_, n)| &n.caps);
        for j in self.jobs.values() {
            if j.state.is_terminal() || j.paused || !j.needs.iter().all(|n| n.met_by(caps)) {
                continue;
            }
            // Frames rendered in running chunks are done work too (a
            // speculative pair is left out: its frames are counted once).
            let in_chunks: u64 = j
                .live
                .values()
                .filter(|c| c.twin.is_none())
                .map(|c| c.frames_done.min(c.frames()))
                .sum();
            let left = j
                .total_frames()
                .saturating_sub(j.frames_done + j.missing.len() as u64 + in_chunks);
            if left == 0 {
                continue;
            }
            let frame_s = if members.is_empty() {
                frame_s_estimate
            } else {
                let fps: f64 = members
                    .iter()
                    .map(|(i, _)| self.expected_fps(super::types::NodeId(*i as u32), j.id))
                    .sum::<f64>()
                    / members.len() as f64;
                1.0 / fps.max(1e-3)
            };
            report.backlog_frames += left;
            report.jobs += 1;
            report.work_s += left as f64 * frame_s;
        }
        report
    }

    /// A preemption notice: the node (a spot instance about to go) is
    /// drained at once, what it has not started goes back, and its running
    /// chunks are cut at the frame they are on, so their remaining frames
    /// wait for other nodes now rather than when the node is gone.
    pub(crate) fn preempt(&mut self, now_ms: u64, name: &str, cmds: &mut Vec<Command>) {
        tracing::warn!(node = %name, "preemption notice: draining at once and handing back its frames");
        self.drain(now_ms, name, true, cmds);
    }
}

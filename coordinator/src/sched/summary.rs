//! What the core says about its load when `/metrics` is scraped: jobs by
//! state, the queue in frames and in estimated seconds, nodes by state and
//! pool.
//!
//! Built in one pass over the jobs and one over the nodes (once per speed
//! key the waiting jobs use, and there are only a few): no chunk list is
//! built, so a scrape costs O(jobs + nodes) on the scheduler's thread.

use std::collections::{BTreeMap, HashMap};

use drover_shared::api::JobState;

use super::nodes::job_pixels;
use super::state::{Core, SpeedKey};
use super::types::ChunkKey;

/// Seconds a frame is assumed to take when the farm has never seen a node
/// to learn a speed from (no node has joined since the coordinator
/// started): the queue still shows as work, not as zero seconds, so an
/// empty farm with a queue does not look idle to an autoscaler or a
/// dashboard. One second is the order of a modest GPU frame at 1080p.
pub const UNKNOWN_FRAME_S: f64 = 1.0;

/// Every job state, in the order `/metrics` lists them.
pub const JOB_STATES: [JobState; 7] = [
    JobState::Queued,
    JobState::Unschedulable,
    JobState::Running,
    JobState::Muxing,
    JobState::Done,
    JobState::Failed,
    JobState::Cancelled,
];

/// A node's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    /// Connected, taking work, holding no chunk.
    Idle,
    /// Connected and holding at least one chunk.
    Busy,
    /// Drained by an admin, or shutting down: no new work.
    Draining,
    /// Its connection is gone; the core keeps it until it is forgotten.
    Lost,
    /// Failed too many jobs: no new work until an admin clears it.
    Quarantined,
}

impl NodeState {
    /// Every state, in the order `/metrics` lists them.
    pub const ALL: [NodeState; 5] = [
        NodeState::Idle,
        NodeState::Busy,
        NodeState::Draining,
        NodeState::Lost,
        NodeState::Quarantined,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Idle => "idle",
            NodeState::Busy => "busy",
            NodeState::Draining => "draining",
            NodeState::Lost => "lost",
            NodeState::Quarantined => "quarantined",
        }
    }
}

/// The core's load at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadSummary {
    /// Jobs the core holds (active ones, and ended ones still retained in
    /// memory), by state, in [`JOB_STATES`] order.
    pub jobs: Vec<(JobState, u64)>,
    /// Frames of queued, unschedulable and running jobs (not paused) that
    /// are not rendered yet, running chunks' unrendered frames included.
    pub queue_frames: u64,
    /// Those frames times each job's estimated frame time: the seconds one
    /// average connected node would need for the whole queue (divide by
    /// the nodes able to run it for the time to drain it).
    pub queue_seconds: f64,
    /// Nodes by (pool, state); every state of every pool seen is present
    /// (zero included), and the default pool `""` always is.
    pub nodes: BTreeMap<(String, NodeState), u64>,
}

impl Core {
    /// The core's load, for `/metrics`.
    ///
    /// A job's frame time is estimated from the learned speeds (see
    /// `nodes.rs`, `learn_speed`): the mean over connected nodes of what
    /// each renders per second at the job's speed key, divided by the
    /// job's pixels and learned cost. Lost nodes count only when none is
    /// connected; with no node known at all, [`UNKNOWN_FRAME_S`].
    pub fn load_summary(&self) -> LoadSummary {
        let mut jobs = [0u64; JOB_STATES.len()];
        let mut queue_frames = 0;
        let mut queue_seconds = 0.0;
        let mut mean_speed: HashMap<SpeedKey, Option<f64>> = HashMap::new();
        for j in self.jobs.values() {
            jobs[state_index(j.state)] += 1;
            let waiting = matches!(
                j.state,
                JobState::Queued | JobState::Unschedulable | JobState::Running
            );
            if !waiting || j.paused {
                continue;
            }
            let live: u64 = j.live.values().map(|c| c.frames_done).sum();
            let left = j
                .total_frames()
                .saturating_sub(j.frames_done + live + j.missing.len() as u64);
            queue_frames += left;
            let speed = *mean_speed
                .entry(j.speed_key)
                .or_insert_with(|| self.mean_pixel_fps(j.speed_key));
            let frame_s = match speed {
                Some(pixel_fps) if pixel_fps > 0.0 => job_pixels(&j.spec) * j.cost / pixel_fps,
                _ => UNKNOWN_FRAME_S,
            };
            queue_seconds += left as f64 * frame_s;
        }
        for r in self.finished.values() {
            jobs[state_index(r.state)] += 1;
        }
        let mut nodes = BTreeMap::new();
        for s in NodeState::ALL {
            nodes.insert((String::new(), s), 0);
        }
        for n in self.nodes.iter().flatten() {
            let state = if !n.connected {
                NodeState::Lost
            } else if n.quarantined.is_some() {
                NodeState::Quarantined
            } else if n.drained || n.leaving {
                NodeState::Draining
            } else if !n.held.is_empty() {
                NodeState::Busy
            } else {
                NodeState::Idle
            };
            if !nodes.contains_key(&(n.caps.pool.clone(), state)) {
                for s in NodeState::ALL {
                    nodes.insert((n.caps.pool.clone(), s), 0);
                }
            }
            *nodes.entry((n.caps.pool.clone(), state)).or_default() += 1;
        }
        LoadSummary {
            jobs: JOB_STATES.iter().copied().zip(jobs).collect(),
            queue_frames,
            queue_seconds,
            nodes,
        }
    }

    /// Mean pixel-frames per second at `key` of the connected nodes (of
    /// every known node when none is connected); `None` with no node.
    fn mean_pixel_fps(&self, key: SpeedKey) -> Option<f64> {
        let mean = |connected_only: bool| {
            let (sum, count) = self
                .nodes
                .iter()
                .flatten()
                .filter(|n| !connected_only || n.connected)
                .fold((0.0, 0u32), |(s, c), n| {
                    (s + self.node_pixel_fps(n, key), c + 1)
                });
            (count > 0).then(|| sum / f64::from(count))
        };
        mean(true).or_else(|| mean(false))
    }

    /// The frames a failure of this running attempt throws back (its whole
    /// range: a chunk is stored only as one segment), or `None` when the
    /// attempt is not running (a late report of an old attempt).
    pub fn failing_attempt_frames(&self, chunk: ChunkKey, epoch: u32) -> Option<u64> {
        self.jobs
            .get(&chunk.0)
            .and_then(|j| j.live.get(&chunk.1))
            .filter(|c| c.epoch == epoch)
            .map(|c| c.frames())
    }
}

/// Where a state is in [`JOB_STATES`].
fn state_index(s: JobState) -> usize {
    match s {
        JobState::Queued => 0,
        JobState::Unschedulable => 1,
        JobState::Running => 2,
        JobState::Muxing => 3,
        JobState::Done => 4,
        JobState::Failed => 5,
        JobState::Cancelled => 6,
    }
}

/// A job state's label value (the API's word for it).
pub fn state_key(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Unschedulable => "unschedulable",
        JobState::Running => "running",
        JobState::Muxing => "muxing",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_its_own_place_in_the_counts() {
        for (i, s) in JOB_STATES.iter().enumerate() {
            assert_eq!(state_index(*s), i, "{s:?}");
        }
    }
}

//! What the API shows of jobs and nodes, built from the core's state.

use std::collections::BTreeMap;

use drover_shared::api::{
    ChunkKind, ChunkState, ChunkView, FleetJob, FleetNode, FleetNodeState, FleetView, JobState,
    JobSummary, JobView, NodeView,
};
use drover_shared::caps;

use super::nodes::RESOLUTION_CLASSES;
use super::record::JobRecord;
use super::state::{Core, DoneSegment};
use super::types::{JobId, NodeId};

fn done_view(start: u64, d: &DoneSegment) -> ChunkView {
    ChunkView {
        index: Some(d.chunk),
        kind: d.kind,
        start,
        end: d.end,
        state: ChunkState::Done,
        node: Some(d.node.clone()),
        frames_done: d.end - start + 1,
        attempts: 0,
        last_error: None,
        log_tail: None,
    }
}

fn frames_by_node(done: &BTreeMap<u64, DoneSegment>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (s, d) in done {
        *out.entry(d.node.clone()).or_insert(0) += d.end - s + 1;
    }
    out
}

fn output_fields(
    id: JobId,
    state: JobState,
    path: &Option<String>,
) -> (Option<String>, Option<String>) {
    let done = state == JobState::Done;
    (
        if done { path.clone() } else { None },
        done.then(|| format!("/v1/jobs/{id}/output")),
    )
}

/// Frames rendered so far in a job's running chunks (a speculative copy's
/// frames count once, through the chunk it copies).
fn live_frames_done(j: &super::state::Job) -> u64 {
    j.live
        .values()
        .filter(|c| c.twin.is_none() || c.kind != ChunkKind::Speculative)
        .map(|c| c.frames_done)
        .sum()
}

impl Core {
    /// What a job's output must hold: its frames (less those left out) at
    /// its rate.
    pub fn job_frames(&self, id: JobId) -> (u64, u32) {
        match self.jobs.get(&id) {
            Some(j) => (j.total_frames() - j.missing.len() as u64, j.spec.fps),
            None => (0, 1),
        }
    }

    /// A job as a list shows it, without building its chunks (the event
    /// stream makes one per stored chunk).
    pub fn job_summary(&self, id: JobId) -> Option<JobSummary> {
        let Some(j) = self.jobs.get(&id) else {
            return self
                .finished
                .get(&id)
                .map(|r| JobSummary::from(&record_view(r)));
        };
        Some(JobSummary {
            id,
            name: j.spec.name.clone(),
            state: j.state,
            paused: j.paused,
            priority: j.spec.priority,
            project: j.spec.project.clone(),
            submitter: j.owner.name.clone(),
            frames_total: j.total_frames(),
            frames_done: (j.frames_done + live_frames_done(j)).min(j.total_frames()),
            error: j.error.clone(),
            submitted_at_ms: j.submitted_at_ms,
            finished_at_ms: j.finished_at_ms,
            url: format!("/v1/jobs/{id}"),
        })
    }

    /// A job as the API shows it.
    pub fn job_view(&self, id: JobId) -> Option<JobView> {
        let Some(j) = self.jobs.get(&id) else {
            return self.finished.get(&id).map(record_view);
        };
        let mut chunks: Vec<ChunkView> = j.done.iter().map(|(s, d)| done_view(*s, d)).collect();
        for (&cid, c) in &j.live {
            chunks.push(ChunkView {
                index: Some(cid),
                kind: c.kind,
                start: c.start,
                end: c.end,
                state: ChunkState::Assigned,
                node: self.node(c.node).map(|n| n.name.to_string()),
                frames_done: c.frames_done,
                attempts: c.failures,
                last_error: (c.failures > 0).then(|| j.last_failure.clone()).flatten(),
                log_tail: (c.failures > 0).then(|| j.last_log.clone()).flatten(),
            });
        }
        for (&cid, o) in &j.orphans {
            // Running before a restart, waiting for its node to reconnect.
            chunks.push(ChunkView {
                index: Some(cid),
                kind: o.kind,
                start: o.start,
                end: o.end,
                state: ChunkState::Assigned,
                node: Some(o.node.clone()),
                frames_done: 0,
                attempts: 0,
                last_error: Some("waiting for its node to reconnect".into()),
                log_tail: None,
            });
        }
        let pending = j
            .ready
            .iter()
            .map(|(s, r)| (*s, *r))
            .chain(j.delayed.iter().map(|(_, s, r)| (*s, *r)));
        for (start, r) in pending {
            chunks.push(ChunkView {
                index: None,
                kind: ChunkKind::Normal,
                start,
                end: r.end,
                state: ChunkState::Pending,
                node: None,
                frames_done: 0,
                attempts: r.failures,
                last_error: (r.failures > 0).then(|| j.last_failure.clone()).flatten(),
                log_tail: (r.failures > 0).then(|| j.last_log.clone()).flatten(),
            });
        }
        chunks.sort_by_key(|c| (c.start, c.index));
        let live_done = live_frames_done(j);
        let (output_path, output_url) = output_fields(id, j.state, &j.output_path);
        Some(JobView {
            id,
            name: j.spec.name.clone(),
            state: j.state,
            frames_total: j.total_frames(),
            frames_done: (j.frames_done + live_done).min(j.total_frames()),
            frames_by_node: frames_by_node(&j.done),
            priority: j.spec.priority,
            project: j.spec.project.clone(),
            encoder: j.encoder.to_string(),
            chunks,
            frames_stolen: j.frames_stolen,
            frames_wasted: j.frames_wasted,
            missing_frames: j.missing.clone(),
            blocklisted_nodes: j
                .blocklist
                .iter()
                .filter_map(|n| self.node(*n).map(|n| n.name.to_string()))
                .collect(),
            error: j.error.clone(),
            submitted_at_ms: j.submitted_at_ms,
            first_frame_at_ms: j.first_frame_at_ms,
            finished_at_ms: j.finished_at_ms,
            output_path,
            output_url,
            submitter: j.owner.name.clone(),
            submitter_key: j.owner.key.clone(),
            paused: j.paused,
            links: drover_shared::api::JobLinks::of(id, j.state),
        })
    }

    /// Ids of the jobs in memory (hot, and finished ones still retained)
    /// below `before`.
    pub fn job_ids_below(&self, before: JobId) -> std::collections::BTreeSet<JobId> {
        self.jobs
            .keys()
            .chain(self.finished.keys())
            .copied()
            .filter(|id| *id < before)
            .collect()
    }

    /// Finished jobs still in memory, as their records.
    pub fn finished_records(&self) -> impl Iterator<Item = &JobRecord> {
        self.finished.values()
    }

    /// Jobs of a key that are queued or running.
    pub fn active_jobs_of(&self, key: &str) -> usize {
        self.owner_active.get(key).copied().unwrap_or(0)
    }

    /// Every job the core knows (hot, and finished ones still retained),
    /// oldest first.
    pub fn job_views(&self) -> Vec<JobView> {
        let mut ids: Vec<JobId> = self
            .jobs
            .keys()
            .chain(self.finished.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.job_view(id)).collect()
    }

    /// Every node the core knows, by name.
    pub fn node_views(&self, now_ms: u64) -> Vec<NodeView> {
        let mut out: Vec<NodeView> = self
            .nodes
            .iter()
            .flatten()
            .map(|n| self.view_of(n, now_ms))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One node as the API shows it.
    pub fn node_view(&self, name: &str, now_ms: u64) -> Option<NodeView> {
        let id = self.names.get(name)?;
        self.node(*id).map(|n| self.view_of(n, now_ms))
    }

    fn view_of(&self, n: &super::state::Node, now_ms: u64) -> NodeView {
        let mut speed_fps = BTreeMap::new();
        let mut keys: Vec<_> = n.speed.keys().copied().collect();
        if keys.is_empty() {
            keys.push((0, 0));
        }
        for k in keys {
            let (pixels, label) = RESOLUTION_CLASSES[k.1 as usize];
            let pixels = if pixels == u64::MAX {
                7680 * 4320
            } else {
                pixels
            };
            let fps = self.node_pixel_fps(n, k) / pixels as f64;
            speed_fps.insert(format!("shader@{label}"), (fps * 10.0).round() / 10.0);
        }
        NodeView {
            name: n.name.to_string(),
            connected: n.connected,
            capabilities: n.caps.clone(),
            chunks: n.held.iter().map(|(j, i)| format!("{j}/{i}")).collect(),
            heartbeat_age_ms: now_ms.saturating_sub(n.last_heartbeat_ms),
            cpu_load_pct: n.cpu_load_pct,
            frames_rendered: n.frames_rendered,
            quarantined: n.quarantined.clone(),
            drained: n.drained || n.leaving,
            speed_fps,
            slots: self.config.node_slots as u32,
        }
    }

    /// The name of a node, for logs.
    pub fn node_name(&self, id: NodeId) -> Option<&str> {
        self.node(id).map(|n| &*n.name)
    }

    /// Whether the job exists and has ended.
    pub fn job_state(&self, id: JobId) -> Option<JobState> {
        self.jobs
            .get(&id)
            .map(|j| j.state)
            .or_else(|| self.finished.get(&id).map(|r| r.state))
    }
}

/// Most jobs in one fleet snapshot (`GET /v1/fleet`, read by `drover top`
/// every second or two): a screen shows a few dozen, and a queue of
/// 100,000 jobs must not make every snapshot megabytes long. Active jobs
/// come first, so only the oldest ended ones and the lowest-priority queued
/// ones are cut; `jobs_total` says how many there were.
pub const MAX_FLEET_JOBS: usize = 2_000;

/// Ended jobs a fleet snapshot keeps after the active ones, newest first:
/// enough to see what just finished or failed.
pub const MAX_FLEET_ENDED_JOBS: usize = 100;

// Ended jobs are a part of a snapshot, never the whole of it.
const _: () = assert!(MAX_FLEET_ENDED_JOBS < MAX_FLEET_JOBS);

/// Frames per second a running chunk renders now: its progress over the
/// time since it started, or the rate the scheduler expects of it before
/// its first frame is done.
fn chunk_fps(c: &super::state::Chunk, now_ms: u64) -> f64 {
    if !c.started {
        return 0.0;
    }
    let elapsed_ms = now_ms.saturating_sub(c.started_at_ms);
    if c.frames_done == 0 || elapsed_ms == 0 {
        return c.expected_fps;
    }
    c.frames_done as f64 * 1_000.0 / elapsed_ms as f64
}

/// One decimal place is all a table shows, and it keeps snapshots short.
fn round1(x: f64) -> f64 {
    if x.is_finite() {
        (x * 10.0).round() / 10.0
    } else {
        0.0
    }
}

impl Core {
    /// Every node and the jobs that matter now, for `drover top`: node
    /// states, what each node renders and how fast, and each job's rate
    /// and ETA. `project`: only that project's jobs (a key scoped to it).
    ///
    /// A job's ETA is its frames left over the rate its running chunks
    /// render at now (each chunk's progress over the time it has run, or
    /// the scheduler's expected rate before its first frame), so it follows
    /// the nodes actually on the job rather than the whole fleet.
    pub fn fleet_view(&self, now_ms: u64, project: Option<&str>) -> FleetView {
        let nodes = self
            .nodes
            .iter()
            .flatten()
            .map(|n| self.fleet_node(n, now_ms));
        let mut nodes: Vec<FleetNode> = nodes.collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));

        let visible = |p: &str| project.is_none_or(|mine| mine == p);
        let mut active: Vec<&super::state::Job> = self
            .jobs
            .values()
            .filter(|j| visible(&j.spec.project))
            .collect();
        let ended_total = self
            .finished
            .values()
            .filter(|r| visible(&r.spec.project))
            .count();
        let jobs_total = (active.len() + ended_total) as u64;
        // Running work first, then by priority and age: what a screen of
        // the busiest jobs should show.
        let rank = |j: &super::state::Job| match j.state {
            JobState::Running | JobState::Muxing => 0,
            JobState::Queued | JobState::Unschedulable => 1,
            _ => 2,
        };
        let key = |j: &&super::state::Job| (rank(j), std::cmp::Reverse(j.spec.priority), j.id);
        if active.len() > MAX_FLEET_JOBS {
            active.select_nth_unstable_by_key(MAX_FLEET_JOBS, key);
            active.truncate(MAX_FLEET_JOBS);
        }
        active.sort_unstable_by_key(key);
        let mut jobs: Vec<FleetJob> = active.iter().map(|j| self.fleet_job(j, now_ms)).collect();
        let room = MAX_FLEET_JOBS
            .saturating_sub(jobs.len())
            .min(MAX_FLEET_ENDED_JOBS);
        jobs.extend(
            self.finished
                .values()
                .rev()
                .filter(|r| visible(&r.spec.project))
                .take(room)
                .map(|r| {
                    let v = record_view(r);
                    FleetJob {
                        id: v.id,
                        name: v.name,
                        state: v.state,
                        paused: v.paused,
                        priority: v.priority,
                        project: v.project,
                        frames_total: v.frames_total,
                        frames_done: v.frames_done,
                        fps: 0.0,
                        eta_s: None,
                        nodes: Vec::new(),
                        reason: v.error,
                        submitted_at_ms: v.submitted_at_ms,
                    }
                }),
        );
        FleetView {
            at_ms: now_ms,
            nodes,
            jobs,
            jobs_total,
        }
    }

    fn fleet_node(&self, n: &super::state::Node, now_ms: u64) -> FleetNode {
        let state = if !n.connected {
            FleetNodeState::Lost
        } else if n.quarantined.is_some() {
            FleetNodeState::Quarantined
        } else if n.drained || n.leaving {
            FleetNodeState::Draining
        } else if n.held.is_empty() {
            FleetNodeState::Idle
        } else {
            FleetNodeState::Busy
        };
        let adapter = n.caps.render_adapter.as_ref();
        let chunk_of = |(job, index): &(JobId, u32)| {
            self.jobs
                .get(job)
                .and_then(|j| j.live.get(index))
                .map(|c| (*job, c))
        };
        // The node runs its chunks in order: the first it holds is the one
        // rendering now.
        let current = n.held.first().and_then(chunk_of);
        let fps: f64 = n
            .held
            .iter()
            .filter_map(chunk_of)
            .map(|(_, c)| chunk_fps(c, now_ms))
            .sum();
        let speed_fps = match current {
            Some((_, c)) => c.expected_fps,
            // The calibration shader at 720p: one figure that compares
            // idle nodes with each other.
            None => self.node_pixel_fps(n, (0, 2)) / (1280.0 * 720.0),
        };
        FleetNode {
            name: n.name.to_string(),
            pool: n.caps.pool.clone(),
            adapter: adapter.map(|a| a.name.clone()).unwrap_or_default(),
            backend: adapter.map(|a| a.backend.clone()).unwrap_or_default(),
            state,
            reason: n.quarantined.clone(),
            job: current.map(|(j, _)| j),
            frame_start: current.map(|(_, c)| c.start),
            frame_end: current.map(|(_, c)| c.end),
            frames_done: current.map_or(0, |(_, c)| c.frames_done),
            chunks: n.held.len() as u32,
            speed_fps: round1(speed_fps),
            fps: round1(fps),
            heartbeat_age_ms: now_ms.saturating_sub(n.last_heartbeat_ms),
            cpu_load_pct: n.cpu_load_pct,
            memory_load_pct: n.memory_load_pct,
            frames_rendered: n.frames_rendered,
        }
    }

    fn fleet_job(&self, j: &super::state::Job, now_ms: u64) -> FleetJob {
        let total = j.total_frames();
        let done = (j.frames_done + live_frames_done(j)).min(total);
        // A speculative copy renders the frames its twin renders: the pair
        // counts once, at the faster of the two.
        let mut fps = 0.0;
        for c in j.live.values() {
            let twin = c.twin.and_then(|t| j.live.get(&t));
            fps += match twin {
                Some(_) if c.kind == ChunkKind::Speculative => 0.0,
                Some(t) => chunk_fps(c, now_ms).max(chunk_fps(t, now_ms)),
                None => chunk_fps(c, now_ms),
            };
        }
        let left = total - done;
        let eta_s = (fps > 0.0 && !j.state.is_terminal() && j.state != JobState::Muxing)
            .then(|| (left as f64 / fps).ceil() as u64);
        let mut nodes: Vec<String> = j
            .working
            .keys()
            .filter_map(|id| self.node(*id).map(|n| n.name.to_string()))
            .collect();
        nodes.sort();
        let reason = if j.error.is_some() {
            j.error.clone()
        } else if j.paused {
            Some("paused".into())
        } else if !j.orphans.is_empty() {
            Some(format!(
                "{} chunk(s) waiting for their node to reconnect",
                j.orphans.len()
            ))
        } else if j.streak > 0 {
            j.last_failure
                .as_ref()
                .map(|f| format!("retrying on one node after a failure: {f}"))
        } else {
            None
        };
        FleetJob {
            id: j.id,
            name: j.spec.name.clone(),
            state: j.state,
            paused: j.paused,
            priority: j.spec.priority,
            project: j.spec.project.clone(),
            frames_total: total,
            frames_done: done,
            fps: round1(fps),
            eta_s,
            nodes,
            reason,
            submitted_at_ms: j.submitted_at_ms,
        }
    }
}

/// A job as the API shows it, from its record (finished or archived).
pub fn record_view(r: &JobRecord) -> JobView {
    let (output_path, output_url) = output_fields(r.id, r.state, &r.output_path);
    JobView {
        id: r.id,
        name: r.spec.name.clone(),
        state: r.state,
        frames_total: r.spec.frames.len(),
        frames_done: r.done.iter().map(|(s, d)| d.end - s + 1).sum(),
        frames_by_node: frames_by_node(&r.done),
        priority: r.spec.priority,
        project: r.spec.project.clone(),
        encoder: caps::job_encoder(&r.spec).to_string(),
        chunks: r.done.iter().map(|(s, d)| done_view(*s, d)).collect(),
        frames_stolen: r.frames_stolen,
        frames_wasted: r.frames_wasted,
        missing_frames: r.missing.clone(),
        blocklisted_nodes: r.blocklisted_nodes.clone(),
        error: r.error.clone(),
        submitted_at_ms: r.submitted_at_ms,
        first_frame_at_ms: r.first_frame_at_ms,
        finished_at_ms: r.finished_at_ms,
        output_path,
        output_url,
        submitter: r.owner.name.clone(),
        submitter_key: r.owner.key.clone(),
        paused: r.paused,
        links: drover_shared::api::JobLinks::of(r.id, r.state),
    }
}

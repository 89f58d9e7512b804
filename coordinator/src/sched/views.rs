//! What the API shows of jobs and nodes, built from the core's state.

use std::collections::BTreeMap;

use drover_shared::api::{
    ChunkKind, ChunkState, ChunkView, JobState, JobSummary, JobView, NodeView,
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

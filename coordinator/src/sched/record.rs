//! A job's journal record, submission, and rebuilding the core from
//! records after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_shared::api::JobState;
use drover_shared::caps;
use drover_shared::spec::JobSpec;
use serde::{Deserialize, Serialize};

use super::nodes::{job_pixels, resolution_class};
use super::state::{Core, DoneSegment, Job, Range};
use super::types::{Command, CoreConfig, JobId};

/// What the journal keeps of a job: enough to rebuild its state. Frames not
/// in `done` or `missing` are waiting (running chunks are re-queued after a
/// restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// The validated spec, shader source included.
    pub spec: JobSpec,
    /// State.
    pub state: JobState,
    /// Submission time.
    pub submitted_at_ms: u64,
    /// When a node first started a chunk.
    pub first_frame_at_ms: Option<u64>,
    /// When it reached a terminal state.
    pub finished_at_ms: Option<u64>,
    /// Why it failed, or why it cannot run.
    pub error: Option<String>,
    /// Output file once done.
    pub output_path: Option<String>,
    /// Stored segments by first frame.
    pub done: BTreeMap<u64, DoneSegment>,
    /// Frames given up on (with `allow_missing_frames`).
    pub missing: Vec<u64>,
    /// Next chunk id: ids are never reused, also across restarts.
    pub next_chunk: u32,
    /// Frames moved by stealing.
    pub frames_stolen: u64,
    /// Frames rendered and thrown away.
    pub frames_wasted: u64,
    /// Nodes blocklisted for this job after failures.
    #[serde(default)]
    pub blocklisted_nodes: Vec<String>,
}

impl Core {
    /// An empty core.
    pub fn new(config: CoreConfig) -> Core {
        Core {
            config,
            jobs: Default::default(),
            finished: Default::default(),
            nodes: Vec::new(),
            free_node_slots: Vec::new(),
            names: Default::default(),
            classes: Vec::new(),
            class_index: Default::default(),
            timers: Default::default(),
            speculate_armed: false,
            next_job_id: 1,
            project_ids: Default::default(),
            projects: Vec::new(),
            projects_listed: 0,
            next_speculate_scan_ms: 0,
            shrink_seq: 0,
            live_chunks: 0,
            dirty: Vec::new(),
        }
    }

    /// Rebuilds the core from journaled records after a restart. Chunks
    /// that were on nodes are waiting again (their nodes reconnect as new
    /// sessions); jobs that were joining segments are joined again.
    pub fn restore(config: CoreConfig, records: Vec<JobRecord>) -> (Core, Vec<Command>) {
        let mut core = Core::new(config);
        let mut cmds = Vec::new();
        for r in records {
            core.next_job_id = core.next_job_id.max(r.id + 1);
            if r.state.is_terminal() {
                core.finished.insert(r.id, r);
                continue;
            }
            let id = r.id;
            let mut job = core.new_job(id, Arc::new(r.spec), r.submitted_at_ms);
            job.state = match r.state {
                JobState::Muxing => JobState::Muxing,
                _ if r.first_frame_at_ms.is_some() => JobState::Running,
                _ => JobState::Queued,
            };
            job.first_frame_at_ms = r.first_frame_at_ms;
            job.next_chunk = r.next_chunk;
            job.frames_stolen = r.frames_stolen;
            job.frames_wasted = r.frames_wasted;
            job.missing = r.missing;
            // Waiting frames: the span minus done segments and missing frames.
            job.ready.clear();
            job.ready_frames = 0;
            let mut gaps: Vec<(u64, u64)> = Vec::new();
            let mut next = job.spec.frames.start;
            for (&s, d) in &r.done {
                if s > next {
                    gaps.push((next, s - 1));
                }
                next = next.max(d.end + 1);
            }
            if next <= job.spec.frames.end {
                gaps.push((next, job.spec.frames.end));
            }
            for (s, e) in gaps {
                // Missing frames split the gaps they sit in.
                let mut from = s;
                for &m in job.missing.iter().filter(|m| (s..=e).contains(*m)) {
                    if m > from {
                        job.ready.insert(
                            from,
                            Range {
                                end: m - 1,
                                failures: 0,
                                attempts: 0,
                            },
                        );
                        job.ready_frames += m - from;
                    }
                    from = m + 1;
                }
                if from <= e {
                    job.ready.insert(
                        from,
                        Range {
                            end: e,
                            failures: 0,
                            attempts: 0,
                        },
                    );
                    job.ready_frames += e - from + 1;
                }
            }
            job.frames_done = r.done.iter().map(|(s, d)| d.end - s + 1).sum();
            job.done = r.done;
            if job.state == JobState::Muxing {
                cmds.push(Command::Mux {
                    job: id,
                    segments: job.done.values().map(|d| d.segment.clone()).collect(),
                });
            }
            core.jobs.insert(id, job);
            core.relist(id);
        }
        // No node is connected yet: every job with frames to render says
        // so until its nodes reconnect.
        core.refresh_schedulable_all(0, &mut cmds);
        (core, cmds)
    }

    fn project(&mut self, name: &str) -> u32 {
        if let Some(p) = self.project_ids.get(name) {
            return *p;
        }
        let id = self.projects.len() as u32;
        let weight = self
            .config
            .project_weights
            .get(name)
            .copied()
            .unwrap_or(1.0)
            .max(1e-6);
        self.projects.push(super::state::Project {
            weight,
            ..Default::default()
        });
        self.project_ids.insert(name.to_string(), id);
        id
    }

    fn new_job(&mut self, id: JobId, spec: Arc<JobSpec>, now_ms: u64) -> Job {
        let project = self.project(&spec.project);
        let encoder: Arc<str> = Arc::from(caps::job_encoder(&spec));
        let needs = caps::needs(&spec);
        let frames = spec.frames;
        let mut ready = BTreeMap::new();
        ready.insert(
            frames.start,
            Range {
                end: frames.end,
                failures: 0,
                attempts: 0,
            },
        );
        let speed_key = (0u8, resolution_class(job_pixels(&spec) as u64));
        Job {
            id,
            project,
            encoder,
            needs,
            speed_key,
            state: JobState::Queued,
            submitted_at_ms: now_ms,
            first_frame_at_ms: None,
            finished_at_ms: None,
            error: None,
            output_path: None,
            class_ok: Vec::new(),
            ready,
            ready_frames: frames.len(),
            delayed: Vec::new(),
            live: Default::default(),
            finish_index: Default::default(),
            done: BTreeMap::new(),
            frames_done: 0,
            missing: Vec::new(),
            next_chunk: 0,
            frames_stolen: 0,
            frames_wasted: 0,
            failures: 0,
            node_failures: Default::default(),
            blocklist: Vec::new(),
            working: Default::default(),
            cost: 1.0,
            eff_prio: spec.priority,
            listed: false,
            aging_seq: 0,
            aging_armed: false,
            shrinks_for_priority: 0,
            last_failure: None,
            spec,
        }
    }

    /// Accepts a validated spec and offers its frames to free nodes at once.
    pub fn submit(&mut self, now_ms: u64, spec: JobSpec) -> (JobId, Vec<Command>) {
        let id = self.next_job_id;
        self.next_job_id += 1;
        let job = self.new_job(id, Arc::new(spec), now_ms);
        self.jobs.insert(id, job);
        let mut cmds = vec![Command::Persist { job: id }];
        self.offer_job(now_ms, id, &mut cmds);
        self.settle(now_ms, &mut cmds);
        (id, cmds)
    }

    /// Removes a job that was just submitted and could not be journaled, as
    /// if it had never been; the driver calls this before carrying out any
    /// command `submit` returned.
    pub fn withdraw(&mut self, id: JobId) {
        let Some(j) = self.jobs.get(&id) else { return };
        let live: Vec<u32> = j.live.keys().copied().collect();
        for c in live {
            self.remove_chunk((id, c));
        }
        // Unlisted through the one path that keeps the ready sets and the
        // project counts true.
        let j = self.jobs.get_mut(&id).expect("exists");
        j.ready.clear();
        j.ready_frames = 0;
        self.relist(id);
        self.jobs.remove(&id);
        self.dirty.retain(|d| *d != id);
        if self.next_job_id == id + 1 {
            self.next_job_id = id;
        }
    }

    pub(crate) fn record_of(&self, j: &Job) -> JobRecord {
        JobRecord {
            id: j.id,
            spec: (*j.spec).clone(),
            state: j.state,
            submitted_at_ms: j.submitted_at_ms,
            first_frame_at_ms: j.first_frame_at_ms,
            finished_at_ms: j.finished_at_ms,
            error: j.error.clone(),
            output_path: j.output_path.clone(),
            done: j.done.clone(),
            missing: j.missing.clone(),
            next_chunk: j.next_chunk,
            frames_stolen: j.frames_stolen,
            frames_wasted: j.frames_wasted,
            blocklisted_nodes: j
                .blocklist
                .iter()
                .filter_map(|n| self.node(*n).map(|n| n.name.to_string()))
                .collect(),
        }
    }

    /// The journal record of a job, hot or finished.
    pub fn record(&self, id: JobId) -> Option<JobRecord> {
        match self.jobs.get(&id) {
            Some(j) => Some(self.record_of(j)),
            None => self.finished.get(&id).cloned(),
        }
    }

    /// A finished job's output was joined: record where.
    pub(crate) fn set_output(&mut self, id: JobId, output: String) {
        if let Some(j) = self.jobs.get_mut(&id) {
            j.output_path = Some(output);
        }
    }
}

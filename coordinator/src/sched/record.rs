//! A job's journal record, submission, and rebuilding the core from
//! records after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_shared::api::{ChunkKind, JobState};
use drover_shared::caps;
use drover_shared::spec::JobSpec;
use serde::{Deserialize, Serialize};

use super::facts::{Fact, Recovery};
use super::nodes::{job_pixels, resolution_class};
use super::state::Timer;
use super::state::{Core, DoneSegment, Job, Range};
use super::types::{Command, CoreConfig, JobId};

/// A chunk that was running when its record was written: re-adopted from
/// its node after a restart, or its frames wait again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningChunk {
    /// First frame.
    pub start: u64,
    /// Last frame.
    pub end: u64,
    /// Epoch of the attempt.
    pub epoch: u32,
    /// Node name.
    pub node: String,
    /// How it came to be.
    pub kind: ChunkKind,
}

/// The API key a job was submitted with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Key id.
    pub key: String,
    /// Key name.
    pub name: String,
}

/// What the journal keeps of a job: enough to rebuild its state. Frames not
/// in `done`, `running` or `missing` are waiting.
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
    /// Chunks running on nodes, by chunk id.
    #[serde(default)]
    pub running: BTreeMap<u32, RunningChunk>,
    /// Its segments are deleted (it ended and will not run again).
    #[serde(default)]
    pub discarded: bool,
    /// Who submitted it.
    #[serde(default)]
    pub owner: Owner,
    /// Paused by a user: no new chunk starts.
    #[serde(default)]
    pub paused: bool,
}

impl JobRecord {
    /// A job just accepted: every frame waits.
    pub fn new(id: JobId, spec: JobSpec, at_ms: u64) -> JobRecord {
        JobRecord {
            id,
            spec,
            state: JobState::Queued,
            submitted_at_ms: at_ms,
            first_frame_at_ms: None,
            finished_at_ms: None,
            error: None,
            output_path: None,
            done: BTreeMap::new(),
            missing: Vec::new(),
            next_chunk: 0,
            frames_stolen: 0,
            frames_wasted: 0,
            blocklisted_nodes: Vec::new(),
            running: BTreeMap::new(),
            discarded: false,
            owner: Owner::default(),
            paused: false,
        }
    }

    /// Back from failed or cancelled to waiting: the frames it is missing
    /// (never rendered, or given up on) run again; stored segments stay.
    pub fn retry(&mut self) {
        self.state = if self.first_frame_at_ms.is_some() {
            JobState::Running
        } else {
            JobState::Queued
        };
        self.error = None;
        self.finished_at_ms = None;
        self.output_path = None;
        self.missing.clear();
        self.running.clear();
        self.blocklisted_nodes.clear();
        // A retry is a user asking for the job to run: a pause before it
        // ended is over.
        self.paused = false;
    }

    /// Frames in stored segments.
    pub fn frames_done(&self) -> u64 {
        self.done.iter().map(|(s, d)| d.end - s + 1).sum()
    }
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
            facts: Vec::new(),
            admin: Default::default(),
            to_learn: Default::default(),
            newly_listed: Vec::new(),
            owner_active: Default::default(),
        }
    }

    /// Rebuilds the core from the journal's state after a restart. Chunks
    /// that were running stay reserved for their nodes, which reconnect by
    /// themselves and report them; whatever is not re-adopted within
    /// `adopt_grace_ms` waits again. Jobs that were joining segments are
    /// joined again.
    pub fn restore(config: CoreConfig, state: Recovery, now_ms: u64) -> (Core, Vec<Command>) {
        let mut core = Core::new(config);
        let mut cmds = Vec::new();
        core.admin = state.nodes;
        core.next_job_id = core.next_job_id.max(state.next_job);
        let mut orphans = false;
        for (_, r) in state.jobs {
            core.next_job_id = core.next_job_id.max(r.id + 1);
            if r.state.is_terminal() {
                core.finished.insert(r.id, r);
                continue;
            }
            orphans |= !r.running.is_empty() && r.state != JobState::Muxing;
            core.hot_job(now_ms, r, &mut cmds);
        }
        while core.finished.len() > core.config.finished_job_retention {
            core.evict_finished(&mut cmds);
        }
        if orphans {
            core.arm(now_ms + core.config.adopt_grace_ms, Timer::Orphans);
        }
        // No node is connected yet: every job with frames to render says
        // so until its nodes reconnect.
        core.refresh_schedulable_all();
        (core, cmds)
    }

    /// Makes a job from its record hot again (restore, retry).
    fn hot_job(&mut self, now_ms: u64, r: JobRecord, cmds: &mut Vec<Command>) {
        let id = r.id;
        let mut job = self.new_job(id, Arc::new(r.spec), r.submitted_at_ms);
        *self.owner_active.entry(r.owner.key.clone()).or_default() += 1;
        job.owner = Arc::new(r.owner);
        job.paused = r.paused;
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
        if job.state != JobState::Muxing {
            job.orphans = r.running;
        }
        // Waiting frames: the span minus stored segments, chunks waiting
        // for re-adoption and missing frames.
        let mut taken: Vec<(u64, u64)> = r.done.iter().map(|(s, d)| (*s, d.end)).collect();
        taken.extend(job.orphans.values().map(|c| (c.start, c.end)));
        taken.extend(job.missing.iter().map(|m| (*m, *m)));
        taken.sort_unstable();
        job.ready.clear();
        job.ready_frames = 0;
        let mut next = job.spec.frames.start;
        let last = job.spec.frames.end;
        for (s, e) in taken
            .into_iter()
            .chain(std::iter::once((last + 1, last + 1)))
        {
            if s > next {
                let end = (s - 1).min(last);
                job.ready.insert(
                    next,
                    Range {
                        end,
                        failures: 0,
                        attempts: 0,
                    },
                );
                job.ready_frames += end - next + 1;
            }
            next = next.max(e + 1);
        }
        job.frames_done = r.done.iter().map(|(s, d)| d.end - s + 1).sum();
        job.done = r.done;
        job.blocklist_names = r.blocklisted_nodes;
        if job.state == JobState::Muxing {
            cmds.push(Command::Mux {
                job: id,
                segments: job.done.values().map(|d| d.segment.clone()).collect(),
            });
        }
        self.jobs.insert(id, job);
        self.relist(id);
        self.offer_job(now_ms, id, cmds);
    }

    /// Drops the oldest finished job from memory; its segments go unless
    /// already gone (the journal archives its record once they are).
    pub(crate) fn evict_finished(&mut self, cmds: &mut Vec<Command>) {
        if let Some((job, r)) = self.finished.pop_first() {
            if !r.discarded && r.state != JobState::Done {
                cmds.push(Command::Discard { job });
            }
        }
    }

    /// A user pauses or resumes a hot job. Paused, it is listed nowhere: no
    /// chunk of it starts and no idle node steals from it; chunks already
    /// running finish and are stored.
    pub(crate) fn set_paused(
        &mut self,
        now_ms: u64,
        id: JobId,
        paused: bool,
        cmds: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        if j.paused == paused || j.state.is_terminal() {
            return;
        }
        j.paused = paused;
        self.facts.push(Fact::Paused { job: id, paused });
        self.offer_job(now_ms, id, cmds);
    }

    /// A user changes a hot job's priority: its place in every ready set
    /// moves, and a raised job may take nodes from lower ones at once.
    pub(crate) fn set_priority(
        &mut self,
        now_ms: u64,
        id: JobId,
        priority: u8,
        cmds: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        if j.spec.priority == priority || j.state.is_terminal() {
            return;
        }
        let mut spec = (*j.spec).clone();
        spec.priority = priority;
        j.spec = Arc::new(spec);
        // Aging restarts from the new priority.
        j.aging_seq = j.aging_seq.wrapping_add(1);
        j.aging_armed = false;
        self.facts.push(Fact::Priority { job: id, priority });
        self.set_eff_prio(id, priority);
        self.offer_job(now_ms, id, cmds);
    }

    /// Whether a hot job may be paused, resumed or reprioritised: `Err`
    /// says why not.
    pub fn may_change(&self, id: JobId) -> Result<(), String> {
        match self.jobs.get(&id) {
            Some(j) if j.state == JobState::Muxing => Err(format!(
                "job {id} has every frame and is joining its output"
            )),
            Some(_) => Ok(()),
            None => match self.finished.get(&id) {
                Some(r) => Err(format!("job {id} is {:?}; it no longer runs", r.state)),
                None => Err(format!("job {id} does not exist")),
            },
        }
    }

    /// A user re-runs what a failed or cancelled job is missing; its stored
    /// segments are kept, so only those frames render.
    pub fn may_retry(&self, id: JobId) -> Result<(), String> {
        match self.finished.get(&id) {
            Some(r) if r.state == JobState::Done => {
                Err(format!("job {id} is done; there is nothing to retry"))
            }
            Some(r) if r.discarded => Err(format!(
                "job {id} ended too long ago: its stored frames were deleted; submit it again"
            )),
            Some(_) => Ok(()),
            None if self.jobs.contains_key(&id) => Err(format!(
                "job {id} has not ended; only a failed or cancelled job can be retried"
            )),
            None => Err(format!("job {id} is not known (or no longer kept)")),
        }
    }

    pub(crate) fn retry(&mut self, now_ms: u64, id: JobId, cmds: &mut Vec<Command>) {
        if self.may_retry(id).is_err() {
            return;
        }
        let mut r = self.finished.remove(&id).expect("checked");
        r.retry();
        self.fact(Fact::Retried { job: id });
        self.hot_job(now_ms, r, cmds);
        self.dirty.push(id);
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
            last_log: None,
            streak: 0,
            orphans: BTreeMap::new(),
            blocklist_names: Vec::new(),
            owner: Default::default(),
            paused: false,
            spec,
        }
    }

    /// Accepts a validated spec and offers its frames to free nodes at once.
    pub fn submit(&mut self, now_ms: u64, spec: JobSpec, owner: Owner) -> (JobId, Vec<Command>) {
        let id = self.next_job_id;
        self.next_job_id += 1;
        let spec = Arc::new(spec);
        self.fact(Fact::Accepted {
            job: id,
            spec: Box::new((*spec).clone()),
            at_ms: now_ms,
            owner: owner.clone(),
        });
        let mut job = self.new_job(id, spec, now_ms);
        *self.owner_active.entry(owner.key.clone()).or_default() += 1;
        job.owner = Arc::new(owner);
        self.jobs.insert(id, job);
        let mut cmds = Vec::new();
        self.offer_job(now_ms, id, &mut cmds);
        self.settle(now_ms, &mut cmds);
        (id, cmds)
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
            blocklisted_nodes: j.blocklist_names.clone(),
            running: j
                .live
                .iter()
                .map(|(id, c)| {
                    let node = self.node(c.node).map(|n| n.name.to_string());
                    let c = RunningChunk {
                        start: c.start,
                        end: c.end,
                        epoch: c.epoch,
                        node: node.unwrap_or_default(),
                        kind: c.kind,
                    };
                    (*id, c)
                })
                .chain(j.orphans.iter().map(|(id, c)| (*id, c.clone())))
                .collect(),
            discarded: false,
            owner: (*j.owner).clone(),
            paused: j.paused,
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

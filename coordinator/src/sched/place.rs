//! Placement: which job a free node runs, how many frames it gets, and what
//! an idle node does when nothing is waiting (steal a tail, copy a
//! straggler). Also priority preemption and the `unschedulable` reasons.

use std::cmp::Reverse;

use drover_shared::api::{ChunkKind, JobState};

use super::facts::Fact;
use super::state::{Chunk, ClassId, Core, PendingShrink, Range, Timer};
use super::types::{Assignment, ChunkKey, Chunking, Command, JobId, NodeId};

/// Time a new chunk costs before its first frame (pipeline compile, encoder
/// start) and after its last (flush, upload), assumed when deciding whether
/// a steal pays.
const CHUNK_OVERHEAD_MS: f64 = 300.0;
/// Most chunks of lower-priority jobs shrunk at once for one waiting job.
const PREEMPT_BATCH: u32 = 8;
/// Idle nodes looked at per straggler check.
const SPECULATE_SCAN_NODES: usize = 64;
/// Latest-finishing chunks of each job a thief considers.
const STEAL_CANDIDATES_PER_JOB: usize = 4;
/// Chunks a thief tries to split, latest-finishing first, before it gives
/// up: each try is a few lookups, and past the first few the tails are
/// short anyway.
const STEAL_TRIES: usize = 8;

impl Core {
    /// Whether `class` can run `job` (cached per job and class).
    pub(crate) fn class_ok(&mut self, job: JobId, class: ClassId) -> bool {
        let Some(j) = self.jobs.get_mut(&job) else {
            return false;
        };
        if j.class_ok.len() <= class {
            j.class_ok.resize(class + 1, None);
        }
        if let Some(ok) = j.class_ok[class] {
            return ok;
        }
        let caps = &self.classes[class].caps;
        let ok = j.needs.iter().all(|n| n.met_by(caps));
        j.class_ok[class] = Some(ok);
        ok
    }

    /// Puts the job in (or takes it out of) the ready sets of its classes,
    /// so that it is listed exactly when it has waiting frames and may take
    /// another node.
    pub(crate) fn relist(&mut self, job: JobId) {
        let Some(j) = self.jobs.get(&job) else { return };
        let want = j.ready_frames > 0 && !j.paused && !j.at_max_nodes() && !j.state.is_terminal();
        if want == j.listed {
            return;
        }
        let prio = j.eff_prio;
        for class in 0..self.classes.len() {
            if self.class_ok(job, class) {
                let set = &mut self.classes[class].ready_jobs;
                if want {
                    set.insert((Reverse(prio), job));
                } else {
                    set.remove(&(Reverse(prio), job));
                }
            }
        }
        let j = self.jobs.get_mut(&job).expect("exists");
        j.listed = want;
        if want {
            self.newly_listed.push(job);
        }
        let p = &mut self.projects[j.project as usize];
        if want {
            p.listed += 1;
            if p.listed == 1 {
                self.projects_listed += 1;
            }
        } else {
            p.listed -= 1;
            if p.listed == 0 {
                self.projects_listed -= 1;
            }
        }
    }

    /// Changes a job's effective priority, keeping the ready sets ordered.
    pub(crate) fn set_eff_prio(&mut self, job: JobId, prio: u8) {
        let Some(j) = self.jobs.get(&job) else { return };
        if j.eff_prio == prio {
            return;
        }
        let listed = j.listed;
        if listed {
            let old = j.eff_prio;
            for class in 0..self.classes.len() {
                if self.class_ok(job, class) {
                    let set = &mut self.classes[class].ready_jobs;
                    set.remove(&(Reverse(old), job));
                    set.insert((Reverse(prio), job));
                }
            }
        }
        self.jobs.get_mut(&job).expect("exists").eff_prio = prio;
    }

    /// Gives a node work until its slots are full: the best waiting job, or
    /// when nothing waits and it is idle, a stolen tail or a speculative
    /// copy.
    pub(crate) fn fill_node(&mut self, now_ms: u64, id: NodeId, cmds: &mut Vec<Command>) {
        loop {
            let Some(n) = self.node(id) else { return };
            if !n.usable() || n.awaiting_tail.is_some() || n.held.len() >= self.config.node_slots {
                break;
            }
            let idle = n.held.is_empty();
            match self.pick_job(id) {
                Some(job) => {
                    self.carve_and_assign(now_ms, job, id, None, cmds);
                }
                None => {
                    if idle {
                        if self.config.steal && self.try_steal(now_ms, id, cmds) {
                            break;
                        }
                        if self.config.speculate && self.try_speculate(now_ms, id, cmds) {
                            continue;
                        }
                        if self.config.speculate && !self.speculate_armed && self.live_chunks > 0 {
                            self.speculate_armed = true;
                            self.arm(now_ms + self.config.speculate_check_ms, Timer::Speculate);
                        }
                    }
                    break;
                }
            }
        }
        self.sync_free(id);
    }

    /// The job a free node should run next: highest effective priority
    /// first; among equals, the project furthest below its fair share; then
    /// the oldest job. Jobs that blocklisted the node or that reached their
    /// node limit are skipped.
    fn pick_job(&mut self, id: NodeId) -> Option<JobId> {
        let n = self.node(id)?;
        let class = n.class;
        let mut best: Option<(f64, JobId)> = None;
        let mut top: Option<u8> = None;
        let mut scanned = 0;
        // With one project there is no share to compare: the first job
        // the node may run wins.
        let compare = self.projects_listed > 1;
        for &(Reverse(prio), job) in &self.classes[class].ready_jobs {
            if top.is_some_and(|t| t != prio) && best.is_some() {
                break;
            }
            let j = &self.jobs[&job];
            if j.blocklist.contains(&id) || (j.at_max_nodes() && !j.working.contains_key(&id)) {
                continue;
            }
            if !compare {
                return Some(job);
            }
            top.get_or_insert(prio);
            let p = &self.projects[j.project as usize];
            let share = p.running as f64 / p.weight;
            if best.is_none_or(|(s, _)| share < s) {
                best = Some((share, job));
            }
            scanned += 1;
            if scanned >= self.config.fair_scan_limit {
                break;
            }
        }
        best.map(|(_, j)| j)
    }

    /// Frames a chunk of `job` on `node` should hold.
    fn chunk_size(&self, job: JobId, node: NodeId) -> u64 {
        match self.config.chunking {
            Chunking::Fixed(frames) => frames.max(1),
            Chunking::Target => {
                let j = &self.jobs[&job];
                let target_ms = j
                    .spec
                    .chunk_target_s
                    .map(|s| s * 1000.0)
                    .unwrap_or(self.config.chunk_target_ms as f64);
                let fps = self.expected_fps(node, job);
                ((fps * target_ms / 1000.0).round() as u64)
                    .clamp(self.config.min_chunk_frames, self.config.max_chunk_frames)
                    .max(1)
            }
        }
    }

    /// Carves the next chunk of `job` from its first waiting range, at most
    /// `cap` frames, and assigns it to `node`.
    pub(crate) fn carve_and_assign(
        &mut self,
        now_ms: u64,
        job: JobId,
        node: NodeId,
        cap: Option<u64>,
        cmds: &mut Vec<Command>,
    ) {
        let size = self
            .chunk_size(job, node)
            .min(cap.unwrap_or(u64::MAX))
            .max(1);
        let j = self.jobs.get_mut(&job).expect("listed job exists");
        let Some((&start, &range)) = j.ready.iter().next() else {
            return;
        };
        j.ready.remove(&start);
        let end = range.end.min(start + size - 1);
        if end < range.end {
            j.ready.insert(end + 1, Range { ..range });
        }
        j.ready_frames -= end - start + 1;
        self.assign(
            now_ms,
            job,
            node,
            start,
            end,
            ChunkKind::Normal,
            range,
            cmds,
        );
        self.relist(job);
        self.preempt_ahead(now_ms, job, node, cmds);
    }

    /// A chunk of `job` was queued behind a running chunk of a
    /// lower-priority job on `node`: the running one is shrunk to stop after
    /// the frame it is on, so the waiting job starts now; its tail waits
    /// again.
    fn preempt_ahead(&mut self, now_ms: u64, job: JobId, node: NodeId, cmds: &mut Vec<Command>) {
        let Some(&ahead) = self.node(node).and_then(|n| n.held.first()) else {
            return;
        };
        if ahead.0 == job {
            return;
        }
        let prio = self.jobs[&job].spec.priority;
        let Some(v) = self.jobs.get(&ahead.0) else {
            return;
        };
        if v.spec.priority >= prio {
            return;
        }
        let Some(c) = v.live.get(&ahead.1) else {
            return;
        };
        if !c.started || c.shrink.is_some() || c.twin.is_some() {
            return;
        }
        let proposed = c.start + c.frames_done + 1;
        if proposed < c.end {
            self.send_shrink(now_ms, ahead, node, proposed, None, Some(job), cmds);
        }
    }

    /// Makes a chunk of frames `start..=end` on `node` and sends it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assign(
        &mut self,
        now_ms: u64,
        job: JobId,
        node: NodeId,
        start: u64,
        end: u64,
        kind: ChunkKind,
        range: Range,
        cmds: &mut Vec<Command>,
    ) -> u32 {
        let epoch = self.config.incarnation;
        let j = self.jobs.get_mut(&job).expect("exists");
        let id = j.next_chunk;
        j.next_chunk += 1;
        let assignment = self.insert_live(now_ms, job, node, id, epoch, start, end, kind, range);
        cmds.push(Command::Assign { node, assignment });
        id
    }

    /// Takes back a chunk a reconnecting node still runs, under the id and
    /// epoch it was given; nothing is sent (the node has it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn adopt(
        &mut self,
        now_ms: u64,
        node: NodeId,
        key: ChunkKey,
        epoch: u32,
        start: u64,
        end: u64,
        kind: ChunkKind,
        frames_done: u64,
    ) {
        let range = Range {
            end,
            failures: 0,
            attempts: 0,
        };
        let j = self.jobs.get_mut(&key.0).expect("exists");
        j.next_chunk = j.next_chunk.max(key.1 + 1);
        self.insert_live(now_ms, key.0, node, key.1, epoch, start, end, kind, range);
        tracing::info!(
            job = key.0,
            chunk = key.1,
            frames = %format!("{start}-{end}"),
            frames_done,
            "chunk re-adopted from its node"
        );
        if frames_done > 0 {
            let report = super::types::ChunkReport {
                chunk: key,
                epoch,
                frames_done,
            };
            // Started: its clock and stall deadline run from now.
            self.progress(now_ms, node, report);
        }
    }

    /// Puts a chunk in every index, journals it and returns what the node
    /// must be told.
    #[allow(clippy::too_many_arguments)]
    fn insert_live(
        &mut self,
        now_ms: u64,
        job: JobId,
        node: NodeId,
        id: u32,
        epoch: u32,
        start: u64,
        end: u64,
        kind: ChunkKind,
        range: Range,
    ) -> Assignment {
        let fps = self.expected_fps(node, job);
        let n = self.node(node).expect("assigning to a known node");
        let frames = end - start + 1;
        let begin_ms = n.busy_until_ms.max(now_ms);
        let finish_ms = begin_ms + (frames as f64 * 1000.0 / fps) as u64;
        let j = self.jobs.get_mut(&job).expect("exists");
        let project = j.project as usize;
        j.live.insert(
            id,
            Chunk {
                node,
                epoch,
                start,
                end,
                kind,
                failures: range.failures,
                attempts: range.attempts,
                frames_done: 0,
                started: false,
                assigned_at_ms: now_ms,
                started_at_ms: 0,
                progress_at_ms: now_ms,
                expected_finish_ms: finish_ms,
                expected_fps: fps,
                shrink: None,
                twin: None,
                steal_refused: false,
            },
        );
        if kind != ChunkKind::Speculative {
            j.finish_index.insert((finish_ms, id));
        }
        *j.working.entry(node).or_insert(0) += 1;
        self.live_chunks += 1;
        if j.eff_prio != j.spec.priority {
            // It runs again: its aging starts over.
            let base = j.spec.priority;
            j.aging_seq += 1;
            self.set_eff_prio(job, base);
        }
        let j = self.jobs.get_mut(&job).expect("exists");
        j.schedulable_again();
        let assignment = Assignment {
            chunk: (job, id),
            epoch,
            start,
            end,
            spec: j.spec.clone(),
            encoder: j.encoder.clone(),
        };
        self.projects[project].running += 1;
        let n = self.node_mut(node).expect("exists");
        n.held.push((job, id));
        n.busy_until_ms = finish_ms;
        let name = n.name.to_string();
        self.sync_free(node);
        // Queued behind the running chunk, it gets twice the stall time;
        // its first progress arms the usual one.
        let at = now_ms + 2 * self.stall_limit_ms(job, id) + 1;
        self.arm(at, Timer::Stall(job, id));
        self.arm(
            now_ms + self.chunk_timeout_ms(job, id),
            Timer::ChunkTimeout(job, id, epoch),
        );
        // Journaled, and the driver sends the assignment only once that is
        // durable: after a crash the range is known to be on this node at
        // this epoch, so the node's report of it can be re-adopted.
        self.facts.push(Fact::Assigned {
            job,
            chunk: id,
            epoch,
            start,
            end,
            node: name,
            kind,
        });
        self.relist(job);
        assignment
    }

    /// Offers a job's waiting frames to free nodes able to run it, best
    /// node first; when none is free and the job outranks running work,
    /// shrinks lower-priority chunks to make room.
    pub(crate) fn offer_job(&mut self, now_ms: u64, job: JobId, cmds: &mut Vec<Command>) {
        self.relist(job);
        let Some(j) = self.jobs.get(&job) else { return };
        if !j.listed {
            self.refresh_schedulable(job);
            return;
        }
        // A node that is free now may be the best for another listed job of
        // higher priority; free nodes only exist when no listed job wanted
        // them, so this job may take them.
        loop {
            let Some(j) = self.jobs.get(&job) else { return };
            if !j.listed {
                break;
            }
            let Some((node, speed, idle_speed)) = self.best_free_node(job) else {
                break;
            };
            // Idle nodes share the waiting frames in proportion to their
            // speed instead of the first taking all of them, so they finish
            // together; stealing evens out what the estimates miss.
            let cap = (idle_speed > speed * 1.001).then(|| {
                let ready = self.jobs[&job].ready_frames;
                ((ready as f64 * speed / idle_speed).ceil() as u64)
                    .max(self.config.min_chunk_frames)
            });
            self.carve_and_assign(now_ms, job, node, cap, cmds);
        }
        if self.jobs.get(&job).is_some_and(|j| j.listed) {
            self.preempt_for(now_ms, job, cmds);
            self.arm_aging(now_ms, job);
        }
        self.refresh_schedulable(job);
    }

    /// The best free node for `job`, and how many free nodes could take it.
    fn best_free_node(&mut self, job: JobId) -> Option<(NodeId, f64, f64)> {
        // One candidate per class: its least loaded free node. Nodes of a
        // class are alike, so this is the best of the class; the scan is
        // over classes, never over nodes.
        let mut best: Option<((bool, u32, u64), NodeId, f64)> = None;
        let mut idle_speed = 0.0;
        for class in 0..self.classes.len() {
            if self.classes[class].free.is_empty() || !self.class_ok(job, class) {
                continue;
            }
            let j = &self.jobs[&job];
            let c = &self.classes[class];
            let pref = drover_shared::caps::preference(&j.spec, &c.caps);
            let Some(&(held, id)) = c.free.iter().find(|(_, id)| !j.blocklist.contains(id)) else {
                continue;
            };
            let speed = self
                .node(id)
                .map(|n| self.node_pixel_fps(n, j.speed_key))
                .unwrap_or(0.0);
            idle_speed += c.idle as f64 * speed;
            let key = (held == 0, pref, speed as u64);
            if best.is_none_or(|(k, _, _)| key > k) {
                best = Some((key, id, speed));
            }
        }
        best.map(|(_, id, speed)| (id, speed, idle_speed))
    }

    /// Work stealing: the idle `thief` asks the node whose chunk (of a job
    /// the thief can run) is expected to finish last to stop early; the
    /// tail comes to the thief when the node answers. When that chunk's
    /// tail is too short to pay, the next latest is tried: one chunk left
    /// with a single frame (a stalled one, say) must not keep every idle
    /// node from the others.
    fn try_steal(&mut self, now_ms: u64, thief: NodeId, cmds: &mut Vec<Command>) -> bool {
        let class = match self.node(thief) {
            Some(n) => n.class,
            None => return false,
        };
        let mut candidates: Vec<(u64, ChunkKey)> = Vec::new();
        for (&job, j) in &self.jobs {
            // Every hot job knows every class (computed when it was first
            // listed, and for each new class as it appears).
            if j.class_ok.get(class).copied().flatten() != Some(true)
                || j.finish_index.is_empty()
                || j.paused
                || j.state.is_terminal()
                || j.blocklist.contains(&thief)
                || (j.at_max_nodes() && !j.working.contains_key(&thief))
            {
                continue;
            }
            // The latest-finishing chunks whose node answers shrinks; one
            // that did not answer is for speculation.
            candidates.extend(
                j.finish_index
                    .iter()
                    .rev()
                    .filter(|(_, id)| !j.live[id].steal_refused)
                    .take(STEAL_CANDIDATES_PER_JOB)
                    .map(|&(finish, id)| (finish, (job, id))),
            );
        }
        // Latest first; ties by chunk, so the choice never depends on the
        // order the jobs map iterates in.
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, key) in candidates.iter().take(STEAL_TRIES) {
            if let Some((proposed_end, holder)) = self.steal_split(now_ms, key, thief) {
                self.send_shrink(now_ms, key, holder, proposed_end, Some(thief), None, cmds);
                return true;
            }
        }
        false
    }

    /// Where to cut `key` so that its node and the thief finish together;
    /// `None` when the tail would be too short to pay for a new chunk.
    fn steal_split(&self, now_ms: u64, key: ChunkKey, thief: NodeId) -> Option<(u64, NodeId)> {
        let j = self.jobs.get(&key.0)?;
        let c = j.live.get(&key.1)?;
        let holder = self.node(c.node)?;
        let stalled =
            c.started && now_ms.saturating_sub(c.progress_at_ms) >= self.config.speculate_stall_ms;
        if stalled {
            // A hung renderer whose agent still answers: it keeps only the
            // frame it is on, the thief takes every frame after it, and
            // that one frame is what speculation copies. Copying the whole
            // chunk instead restarted all its frames on one node (a
            // 68-frame chunk on a CPU node: 280 s, seed 11 --faults); a
            // node that does not answer is marked and left to speculation.
            let pos = c.start + c.frames_done;
            return (pos < c.end).then_some((pos, c.node));
        }
        let (pos, wait_ms, rate) = if c.started {
            let elapsed = now_ms.saturating_sub(c.started_at_ms);
            let rate = if elapsed >= 2_000 && c.frames_done > 0 {
                c.frames_done as f64 * 1000.0 / elapsed as f64
            } else {
                c.expected_fps
            };
            (c.start + c.frames_done, 0.0, rate)
        } else {
            // Queued behind the node's running chunk.
            let ahead = holder
                .held
                .iter()
                .take_while(|k| **k != key)
                .filter_map(|k| self.jobs.get(&k.0).and_then(|j| j.live.get(&k.1)))
                .map(|a| a.expected_finish_ms)
                .max()
                .unwrap_or(now_ms);
            // Its speed as known now, not when it was assigned: the job's
            // cost may have been learned since.
            let rate = self.expected_fps(c.node, key.0);
            (c.start, ahead.saturating_sub(now_ms) as f64, rate)
        };
        if pos > c.end {
            return None;
        }
        let remaining = (c.end - pos + 1) as f64;
        let thief_fps = self.expected_fps(thief, key.0);
        let (vh, vt) = (rate.max(1e-6) / 1000.0, thief_fps.max(1e-6) / 1000.0);
        // Holder keeps k frames: wait + k/vh = overhead + (r - k)/vt.
        let k = ((CHUNK_OVERHEAD_MS + remaining / vt - wait_ms) / (1.0 / vh + 1.0 / vt))
            .floor()
            .clamp(1.0, remaining);
        let tail = remaining - k;
        // Worth it only if the chunk's frames end sooner by a margin that
        // covers what the estimate may have wrong.
        let before_ms = wait_ms + remaining / vh;
        let after_ms = (wait_ms + k / vh).max(CHUNK_OVERHEAD_MS + tail / vt);
        if tail < 1.0 || before_ms - after_ms < self.config.min_steal_gain_ms as f64 {
            return None;
        }
        Some((pos + k as u64 - 1, c.node))
    }

    /// Sends a shrink proposal and remembers it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_shrink(
        &mut self,
        now_ms: u64,
        key: ChunkKey,
        holder: NodeId,
        proposed_end: u64,
        thief: Option<NodeId>,
        for_job: Option<JobId>,
        cmds: &mut Vec<Command>,
    ) {
        self.shrink_seq = self.shrink_seq.wrapping_add(1);
        let seq = self.shrink_seq;
        let j = self.jobs.get_mut(&key.0).expect("exists");
        let c = j.live.get_mut(&key.1).expect("live");
        c.shrink = Some(PendingShrink {
            proposed_end,
            thief,
            seq,
            for_job,
        });
        let epoch = c.epoch;
        j.finish_index.remove(&(c.expected_finish_ms, key.1));
        if let Some(t) = thief {
            self.node_mut(t).expect("thief exists").awaiting_tail = Some(key);
            self.sync_free(t);
        }
        if let Some(w) = for_job.and_then(|w| self.jobs.get_mut(&w)) {
            w.shrinks_for_priority += 1;
        }
        self.arm(
            now_ms + self.config.shrink_timeout_ms,
            Timer::ShrinkTimeout(key.0, key.1, seq),
        );
        cmds.push(Command::Shrink {
            node: holder,
            chunk: key,
            epoch,
            proposed_end,
        });
    }

    /// Speculation: near the end of a job (nothing of it waits), a chunk
    /// that stalls or runs far slower than its node's measured speed gets a
    /// copy on the idle `node`; the first to finish wins.
    fn try_speculate(&mut self, now_ms: u64, node: NodeId, cmds: &mut Vec<Command>) -> bool {
        let class = match self.node(node) {
            Some(n) => n.class,
            None => return false,
        };
        if now_ms < self.next_speculate_scan_ms {
            return false;
        }
        let stall_ms = self.config.speculate_stall_ms;
        let slow = self.config.speculate_slow_factor;
        let mut best: Option<(f64, ChunkKey)> = None;
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in ids {
            // A job the idle node cannot run is skipped before its chunks
            // are looked at (it used to reset the best candidate found in
            // earlier jobs, so a straggler went uncopied).
            if !self.class_ok(job, class) {
                continue;
            }
            let j = &self.jobs[&job];
            if j.live.is_empty() || j.paused || j.state.is_terminal() || j.blocklist.contains(&node)
            {
                continue;
            }
            // Crawling chunks are judged near the job's end only (before,
            // the crawl is often frames dearer than the average); a
            // stalled one is stuck whatever else waits, and the idle node
            // asking has nothing better to do.
            let tail = j.ready_frames == 0 && j.delayed.is_empty();
            let thief_fps = self.expected_fps(node, job);
            for (&id, c) in &j.live {
                if !c.started
                    || c.twin.is_some()
                    || c.shrink.is_some()
                    || c.node == node
                    || c.failures + 1 >= self.config.max_frame_failures
                {
                    continue;
                }
                let elapsed = now_ms.saturating_sub(c.started_at_ms);
                let stalled = now_ms.saturating_sub(c.progress_at_ms) >= stall_ms;
                let rate = c.frames_done as f64 * 1000.0 / elapsed.max(1) as f64;
                let min_elapsed = (5_000.0f64).max(3_000.0 / c.expected_fps.max(1e-6));
                let crawling = elapsed as f64 >= min_elapsed && rate * slow < c.expected_fps;
                if !(stalled || (crawling && tail)) {
                    continue;
                }
                // A crawling chunk with frames still to start is for
                // stealing, which takes its tail at its measured rate; a
                // copy restarts all its frames and, twinned, the chunk is
                // out of stealing's reach, so idle fast nodes could only
                // watch two slow copies.
                if !stalled && self.config.steal && c.frames() - c.frames_done > 1 {
                    continue;
                }
                // A chunk still moving is judged at the best rate it may
                // have (the frame in progress about to finish), not as
                // never finishing; and the copy renders the same frames, so
                // it is judged with the same surprise: a crawl is often
                // frames dearer than the job's average, not a slow node,
                // and a copy on a node no faster only restarts them.
                let (left_ms, surprise) = if stalled {
                    (f64::INFINITY, 1.0)
                } else {
                    let best_rate = (c.frames_done + 1) as f64 * 1000.0 / elapsed.max(1) as f64;
                    (
                        (c.end - c.start + 1 - c.frames_done) as f64 * 1000.0 / best_rate,
                        (c.expected_fps / best_rate).max(1.0),
                    )
                };
                let copy_ms = c.frames() as f64 * 1000.0 / thief_fps * surprise + CHUNK_OVERHEAD_MS;
                if copy_ms >= left_ms {
                    continue;
                }
                if best.is_none_or(|(l, _)| left_ms > l) {
                    best = Some((left_ms, (job, id)));
                }
            }
        }
        let Some((_, key)) = best else {
            // Nothing straggles now; look again a little later.
            self.next_speculate_scan_ms = now_ms + self.config.speculate_check_ms / 4;
            return false;
        };
        let j = &self.jobs[&key.0];
        let c = &j.live[&key.1];
        let (start, end, range) = (
            c.start,
            c.end,
            Range {
                end: c.end,
                failures: c.failures,
                attempts: c.attempts,
            },
        );
        let finish = c.expected_finish_ms;
        tracing::info!(job = key.0, chunk = key.1, "straggler: speculative copy");
        let copy = self.assign(
            now_ms,
            key.0,
            node,
            start,
            end,
            ChunkKind::Speculative,
            range,
            cmds,
        );
        let j = self.jobs.get_mut(&key.0).expect("exists");
        j.finish_index.remove(&(finish, key.1));
        j.live.get_mut(&key.1).expect("live").twin = Some(copy);
        j.live.get_mut(&copy).expect("live").twin = Some(key.1);
        true
    }

    /// Idle nodes look again for stragglers (speeds change while chunks run).
    pub(crate) fn speculate_check(&mut self, now_ms: u64, cmds: &mut Vec<Command>) {
        self.speculate_armed = false;
        self.next_speculate_scan_ms = 0;
        let mut idle = Vec::new();
        for c in &self.classes {
            for &(held, id) in &c.free {
                if held == 0 {
                    idle.push(id);
                }
                if idle.len() >= SPECULATE_SCAN_NODES {
                    break;
                }
            }
        }
        if self.live_chunks == 0 {
            return;
        }
        for id in idle {
            self.fill_node(now_ms, id, cmds);
        }
    }

    /// A waiting job outranks running work: queued chunks of lower-priority
    /// jobs on nodes it can use are taken back, running ones shrunk to stop
    /// after the frame they are on.
    fn preempt_for(&mut self, now_ms: u64, job: JobId, cmds: &mut Vec<Command>) {
        let (prio, outstanding, wanted) = {
            let j = &self.jobs[&job];
            let wanted = j
                .ready_frames
                .div_ceil(self.config.min_chunk_frames.max(1))
                .min(PREEMPT_BATCH as u64) as u32;
            (j.spec.priority, j.shrinks_for_priority, wanted)
        };
        // Nothing runs anywhere: there is nothing to preempt (and no reason
        // to look at every queued job, which a farm with no free node and a
        // long queue would do on every submission).
        if outstanding >= wanted || self.live_chunks == 0 {
            return;
        }
        let mut budget = wanted - outstanding;
        let mut victims: Vec<(u8, JobId)> = self
            .jobs
            .values()
            .filter(|v| v.spec.priority < prio && !v.live.is_empty() && !v.state.is_terminal())
            .map(|v| (v.spec.priority, v.id))
            .collect();
        victims.sort();
        for (_, victim) in victims {
            let keys: Vec<u32> = self.jobs[&victim].live.keys().copied().collect();
            for id in keys {
                if budget == 0 {
                    return;
                }
                let c = &self.jobs[&victim].live[&id];
                if c.shrink.is_some() || c.twin.is_some() {
                    continue;
                }
                let node = c.node;
                let Some(class) = self.node(node).map(|n| n.class) else {
                    continue;
                };
                if !self.class_ok(job, class) || self.jobs[&job].blocklist.contains(&node) {
                    continue;
                }
                let c = &self.jobs[&victim].live[&id];
                if !c.started {
                    let epoch = c.epoch;
                    cmds.push(Command::Cancel {
                        node,
                        chunk: (victim, id),
                        epoch,
                    });
                    self.take_back(now_ms, (victim, id), cmds);
                    self.fill_node(now_ms, node, cmds);
                } else {
                    let proposed = (c.start + c.frames_done + 1).min(c.end);
                    if proposed >= c.end {
                        continue;
                    }
                    self.send_shrink(now_ms, (victim, id), node, proposed, None, Some(job), cmds);
                }
                budget -= 1;
            }
        }
    }

    /// Recomputes whether a job can run anywhere, and why not.
    pub(crate) fn refresh_schedulable(&mut self, job: JobId) {
        let Some(j) = self.jobs.get(&job) else { return };
        if j.state.is_terminal() || j.state == JobState::Muxing {
            return;
        }
        let waiting = j.ready_frames > 0 || !j.delayed.is_empty();
        let reason = if waiting && j.live.is_empty() {
            self.unschedulable_reason(job)
        } else {
            None
        };
        let j = self.jobs.get_mut(&job).expect("exists");
        match reason {
            Some(why) => {
                if j.state != JobState::Unschedulable || j.error.as_deref() != Some(&why) {
                    j.state = JobState::Unschedulable;
                    j.error = Some(why);
                }
            }
            None => {
                j.schedulable_again();
            }
        }
    }

    /// Every hot job's schedulability, after the set of available classes
    /// changed; jobs that can run again are offered.
    pub(crate) fn refresh_schedulable_all(&mut self) {
        let ids: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .map(|j| j.id)
            .collect();
        for id in ids {
            self.refresh_schedulable(id);
        }
    }

    /// Why no available node can run `job`, per requirement; `None` when
    /// some node can.
    pub(crate) fn unschedulable_reason(&mut self, job: JobId) -> Option<String> {
        let mut eligible_blocked = Vec::new();
        for class in 0..self.classes.len() {
            if self.classes[class].available == 0 || !self.class_ok(job, class) {
                continue;
            }
            // Some node of the class is available; is one not blocklisted?
            // Blocklists are short, so count their available members.
            let j = &self.jobs[&job];
            let blocked: Vec<&super::state::Node> = j
                .blocklist
                .iter()
                .filter_map(|id| self.node(*id))
                .filter(|n| n.class == class && n.usable())
                .collect();
            if (blocked.len() as u32) < self.classes[class].available {
                return None;
            }
            eligible_blocked.extend(blocked.iter().map(|n| n.name.to_string()));
        }
        let j = &self.jobs[&job];
        if !eligible_blocked.is_empty() {
            return Some(format!(
                "every connected node able to run it is blocklisted for it after failures: {}",
                eligible_blocked.join(", ")
            ));
        }
        let available: Vec<&super::state::Class> =
            self.classes.iter().filter(|c| c.available > 0).collect();
        if available.is_empty() {
            return Some("no node is connected".into());
        }
        let unmet: Vec<String> = j
            .needs
            .iter()
            .filter(|need| !available.iter().any(|c| need.met_by(&c.caps)))
            .map(|need| format!("{}: no connected node has it", need.describe()))
            .collect();
        Some(if unmet.is_empty() {
            let all: Vec<String> = j.needs.iter().map(|n| n.describe()).collect();
            format!(
                "no connected node meets all its requirements together ({})",
                all.join("; ")
            )
        } else {
            unmet.join("; ")
        })
    }
}

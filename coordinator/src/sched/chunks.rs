//! Chunk life: progress, shrink answers, uploads, done, failures, retries
//! with backoff, bad frames isolated by bisection, and the end of a job.

use drover_shared::api::{ChunkKind, JobState};

use super::facts::Fact;
use super::record::RunningChunk;
use super::state::{Chunk, Core, DoneSegment, Range, Timer};
use super::types::{ChunkKey, ChunkReport, Command, JobId, NodeId, UploadVerdict};

/// Frames a running chunk must have rendered before its rate stands for
/// its job's cost while no chunk of the job has finished: fewer, and the
/// frame in progress (up to one frame's time, uncounted) skews the rate.
const EARLY_COST_MIN_FRAMES: u64 = 3;

/// Stored chunks waiting for their node's `Done` (which carries the render
/// time speed is learned from): a node that never sends it must not grow
/// the table without bound.
const MAX_TO_LEARN: usize = 4_096;

impl Core {
    /// The live chunk `key` if `node` holds it at `epoch`; messages from an
    /// earlier attempt or another node get `None`.
    pub(crate) fn current(&self, node: NodeId, key: ChunkKey, epoch: u32) -> Option<&Chunk> {
        let c = self.jobs.get(&key.0)?.live.get(&key.1)?;
        (c.node == node && c.epoch == epoch).then_some(c)
    }

    fn indexed(c: &Chunk) -> bool {
        c.shrink.is_none() && c.twin.is_none()
    }

    /// Progress of a chunk: starts its clock, moves its stall deadline,
    /// refreshes its expected finish (what stealing compares).
    pub(crate) fn progress(&mut self, now_ms: u64, node: NodeId, r: ChunkReport) {
        if self.current(node, r.chunk, r.epoch).is_none() {
            return;
        }
        let (job, id) = r.chunk;
        // What the node is expected to do now: the job's cost may have
        // been learned since the chunk was assigned (a chunk queued behind
        // a long one was sized when the job's cost was still a guess), and
        // stealing and speculation judge the chunk by this.
        let fps_now = self.expected_fps(node, job);
        let j = self.jobs.get_mut(&job).expect("current");
        let c = j.live.get_mut(&id).expect("current");
        let frames_done = r.frames_done.min(c.frames());
        let mut arm_stall = false;
        if !c.started {
            c.started = true;
            c.started_at_ms = now_ms;
            c.progress_at_ms = now_ms;
            c.expected_fps = fps_now;
            arm_stall = true;
        } else if frames_done > c.frames_done {
            c.progress_at_ms = now_ms;
        }
        c.frames_done = frames_done;
        let elapsed = now_ms.saturating_sub(c.started_at_ms);
        let rate = if elapsed >= 1_000 && frames_done > 0 {
            frames_done as f64 * 1000.0 / elapsed as f64
        } else {
            c.expected_fps
        };
        let left = c.frames() - frames_done;
        let finish = now_ms + (left as f64 * 1000.0 / rate.max(1e-6)) as u64;
        if j.frames_done == 0 && frames_done >= EARLY_COST_MIN_FRAMES && elapsed >= 1_000 {
            // No chunk of the job has finished, so its cost is still the
            // guess it was submitted with (1, the calibration shader), and
            // every chunk cut meanwhile is sized by that guess: a shader
            // ten times dearer got 200 s chunks for a 20 s target. The
            // running chunk's rate on a node of known speed says what the
            // cost is; finished chunks refine it from then on.
            j.cost = (j.cost * fps_now / rate.max(1e-6)).clamp(1e-3, 1e6);
        }
        if Self::indexed(c) {
            j.finish_index.remove(&(c.expected_finish_ms, id));
            j.finish_index.insert((finish, id));
        }
        c.expected_finish_ms = finish;
        if j.first_frame_at_ms.is_none() {
            j.first_frame_at_ms = Some(now_ms);
        }
        if matches!(j.state, JobState::Queued | JobState::Unschedulable) {
            j.state = JobState::Running;
            j.error = None;
            self.fact(Fact::Started { job, at_ms: now_ms });
        }
        if arm_stall {
            let at = now_ms + self.stall_limit_ms(job, id) + 1;
            self.arm(at, Timer::Stall(job, id));
        }
    }

    /// Takes a chunk out of every index; returns it with the idle node that
    /// was waiting for its tail, which the caller must give work.
    pub(crate) fn remove_chunk(&mut self, key: ChunkKey) -> Option<(Chunk, Option<NodeId>)> {
        let j = self.jobs.get_mut(&key.0)?;
        let c = j.live.remove(&key.1)?;
        self.live_chunks -= 1;
        self.dirty.push(key.0);
        self.facts.push(Fact::Released {
            job: key.0,
            chunk: key.1,
        });
        j.finish_index.remove(&(c.expected_finish_ms, key.1));
        if let Some(w) = j.working.get_mut(&c.node) {
            *w -= 1;
            if *w == 0 {
                j.working.remove(&c.node);
            }
        }
        if let Some(t) = c.twin {
            if let Some(other) = j.live.get_mut(&t) {
                other.twin = None;
                if other.shrink.is_none() {
                    j.finish_index.insert((other.expected_finish_ms, t));
                }
            }
        }
        let p = &mut self.projects[j.project as usize];
        p.running = p.running.saturating_sub(1);
        // One node fewer on the job may list it again (a node limit).
        self.relist(key.0);
        let mut thief = None;
        if let Some(s) = c.shrink {
            if let Some(w) = s.for_job.and_then(|w| self.jobs.get_mut(&w)) {
                w.shrinks_for_priority = w.shrinks_for_priority.saturating_sub(1);
            }
            if let Some(t) = s.thief {
                if let Some(n) = self.node_mut(t) {
                    if n.awaiting_tail == Some(key) {
                        n.awaiting_tail = None;
                        thief = Some(t);
                    }
                }
                self.sync_free(t);
            }
        }
        if let Some(n) = self.node_mut(c.node) {
            n.held.retain(|k| *k != key);
        }
        self.sync_free(c.node);
        self.relist(key.0);
        Some((c, thief))
    }

    /// Puts frames back among a job's waiting frames.
    pub(crate) fn return_range(&mut self, job: JobId, start: u64, range: Range) {
        if start > range.end {
            return;
        }
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.ready_frames += range.end - start + 1;
        j.ready.insert(start, range);
        self.relist(job);
    }

    /// The node's answer to a shrink. Any answer that shortens the chunk is
    /// applied, late or not: the node will stop there either way.
    pub(crate) fn shrink_ack(
        &mut self,
        now_ms: u64,
        node: NodeId,
        key: ChunkKey,
        epoch: u32,
        end: Option<u64>,
        cmds: &mut Vec<Command>,
    ) {
        if self.current(node, key, epoch).is_none() {
            return;
        }
        let j = self.jobs.get_mut(&key.0).expect("current");
        let c = j.live.get_mut(&key.1).expect("current");
        let pending = c.shrink.take();
        if let (Some(p), Some(e)) = (pending, end) {
            if e < p.proposed_end {
                // The node must never stop before the proposal; its answer
                // still rules, since it is what the segment will hold.
                tracing::warn!(
                    job = key.0,
                    chunk = key.1,
                    end = e,
                    proposed = p.proposed_end,
                    "node stopped before the proposed end"
                );
            }
        }
        let mut thief = pending.and_then(|p| p.thief);
        if let Some(w) = pending.and_then(|p| p.for_job) {
            if let Some(w) = self.jobs.get_mut(&w) {
                w.shrinks_for_priority = w.shrinks_for_priority.saturating_sub(1);
            }
        }
        if let Some(t) = thief {
            match self.node_mut(t) {
                Some(n) if n.awaiting_tail == Some(key) => n.awaiting_tail = None,
                _ => thief = None,
            }
        }
        if let Some(e) = end {
            self.cut_tail(now_ms, key, e, thief.take(), cmds);
        }
        let j = self.jobs.get_mut(&key.0).expect("current");
        let c = j.live.get_mut(&key.1).expect("current");
        if Self::indexed(c) {
            j.finish_index.insert((c.expected_finish_ms, key.1));
        }
        if let Some(t) = thief {
            self.sync_free(t);
            self.fill_node(now_ms, t, cmds);
        }
    }

    /// Moves a live chunk's end back to `end`: the frames after it go to
    /// `thief` as a stolen chunk, or back to the job's waiting frames.
    fn cut_tail(
        &mut self,
        now_ms: u64,
        key: ChunkKey,
        end: u64,
        thief: Option<NodeId>,
        cmds: &mut Vec<Command>,
    ) {
        let j = self.jobs.get_mut(&key.0).expect("live");
        let c = j.live.get_mut(&key.1).expect("live");
        let end = end.max(c.start);
        let mut refill = Vec::new();
        if end >= c.end {
            if let Some(t) = thief {
                self.sync_free(t);
                self.fill_node(now_ms, t, cmds);
            }
            return;
        }
        if let Some(t) = c.twin {
            // A late answer shrank a chunk that has a speculative copy of
            // its whole range: the copy goes, so each frame has one owner.
            if let Some(copy) = j.live.get(&t) {
                cmds.push(Command::Cancel {
                    node: copy.node,
                    chunk: (key.0, t),
                    epoch: copy.epoch,
                });
            }
            if let Some((copy, thief2)) = self.remove_chunk((key.0, t)) {
                self.count(key.0, 0, copy.frames_done);
                // Given work only once the cut is made, or it could copy
                // the chunk again before its end moves.
                refill.push(copy.node);
                refill.extend(thief2);
            }
        }
        let j = self.jobs.get_mut(&key.0).expect("live");
        let c = j.live.get_mut(&key.1).expect("live");
        let tail = Range {
            end: c.end,
            failures: c.failures,
            attempts: c.attempts,
        };
        let tail_start = end + 1;
        let was = c.frames();
        c.end = end;
        self.facts.push(Fact::Shrunk {
            job: key.0,
            chunk: key.1,
            end,
        });
        let j = self.jobs.get_mut(&key.0).expect("live");
        let c = j.live.get_mut(&key.1).expect("live");
        c.frames_done = c.frames_done.min(c.frames());
        let fin = c.expected_finish_ms;
        let shortened =
            now_ms + (fin.saturating_sub(now_ms) as f64 * c.frames() as f64 / was as f64) as u64;
        if Self::indexed(c) {
            j.finish_index.remove(&(fin, key.1));
            j.finish_index.insert((shortened, key.1));
        }
        c.expected_finish_ms = shortened;
        let tail_frames = tail.end - tail_start + 1;
        let usable = thief.filter(|t| {
            self.node(*t).is_some_and(|n| {
                n.connected && n.quarantined.is_none() && n.held.len() < self.config.node_slots
            })
        });
        match usable {
            Some(t) => {
                self.count(key.0, tail_frames, 0);
                tracing::info!(
                    job = key.0,
                    chunk = key.1,
                    frames = tail_frames,
                    "tail stolen"
                );
                self.assign(
                    now_ms,
                    key.0,
                    t,
                    tail_start,
                    tail.end,
                    ChunkKind::Stolen,
                    tail,
                    cmds,
                );
                refill.push(t);
            }
            None => {
                self.return_range(key.0, tail_start, tail);
                self.offer_job(now_ms, key.0, cmds);
                if let Some(t) = thief {
                    self.sync_free(t);
                    refill.push(t);
                }
            }
        }
        for n in refill {
            self.fill_node(now_ms, n, cmds);
        }
    }

    /// A shrink went unanswered: the waiting node looks elsewhere. A late
    /// answer is still applied when it comes.
    pub(crate) fn shrink_timeout(
        &mut self,
        now_ms: u64,
        job: JobId,
        id: u32,
        seq: u32,
        cmds: &mut Vec<Command>,
    ) {
        let Some(c) = self.jobs.get_mut(&job).and_then(|j| j.live.get_mut(&id)) else {
            return;
        };
        if c.shrink.is_none_or(|s| s.seq != seq) {
            return;
        }
        let s = c.shrink.take().expect("checked");
        c.steal_refused = true;
        let j = self.jobs.get_mut(&job).expect("exists");
        let c = &j.live[&id];
        if Self::indexed(c) {
            j.finish_index.insert((c.expected_finish_ms, id));
        }
        if let Some(w) = s.for_job.and_then(|w| self.jobs.get_mut(&w)) {
            w.shrinks_for_priority = w.shrinks_for_priority.saturating_sub(1);
        }
        if let Some(t) = s.thief {
            if let Some(n) = self.node_mut(t) {
                if n.awaiting_tail == Some((job, id)) {
                    n.awaiting_tail = None;
                }
            }
            self.sync_free(t);
            self.fill_node(now_ms, t, cmds);
        }
    }

    /// Upload admission: the node holding the attempt, once, a segment
    /// that starts where the chunk starts and ends inside it (a shorter one
    /// means the node stopped early; the rest waits again). A segment from
    /// an earlier session is taken when its chunk is reserved for this node
    /// (re-adoption after a restart or a lost connection); anything else is
    /// not needed and the node deletes it.
    pub fn may_upload(
        &self,
        node: NodeId,
        key: ChunkKey,
        epoch: u32,
        start: u64,
        end: u64,
    ) -> UploadVerdict {
        let Some(j) = self.jobs.get(&key.0) else {
            return UploadVerdict::NotNeeded(format!("job {} has ended", key.0));
        };
        if j.state == JobState::Muxing {
            return UploadVerdict::NotNeeded(format!("job {} has every frame", key.0));
        }
        let (c_start, c_end) = if let Some(c) = self.current(node, key, epoch) {
            (c.start, c.end)
        } else if let Some(o) = j
            .orphans
            .get(&key.1)
            .filter(|o| o.epoch == epoch && self.node(node).is_some_and(|n| *n.name == *o.node))
        {
            (o.start, o.end)
        } else {
            return UploadVerdict::NotNeeded(format!(
                "chunk {}/{} epoch {epoch} is not assigned to this node",
                key.0, key.1
            ));
        };
        if start != c_start || end < c_start || end > c_end {
            return UploadVerdict::NotNeeded(format!(
                "segment frames {start}-{end} do not fit chunk {}/{} (frames {c_start}-{c_end})",
                key.0, key.1
            ));
        }
        UploadVerdict::Accept
    }

    /// A stored segment of a chunk reserved for its node (it finished while
    /// the node was away from this coordinator): its frames are done, the
    /// rest of the reservation waits again.
    #[allow(clippy::too_many_arguments)]
    fn adopt_frames(
        &mut self,
        now_ms: u64,
        node: NodeId,
        key: ChunkKey,
        epoch: u32,
        start: u64,
        end: u64,
        segment: String,
        hash: String,
        cmds: &mut Vec<Command>,
    ) {
        let j = self.jobs.get_mut(&key.0).expect("admitted");
        let o = j.orphans.remove(&key.1).expect("admitted");
        self.record_done(node, key, epoch, start, end, o.kind, segment, hash);
        if end < o.end {
            let rest = Range {
                end: o.end,
                failures: 0,
                attempts: 0,
            };
            self.return_range(key.0, end + 1, rest);
        }
        tracing::info!(
            job = key.0,
            chunk = key.1,
            frames = %format!("{start}-{end}"),
            "segment from an earlier session taken"
        );
        self.dirty.push(key.0);
        self.maybe_complete(now_ms, key.0, cmds);
        self.offer_job(now_ms, key.0, cmds);
    }

    /// Reserved chunks no node re-adopted wait again: all of them when the
    /// adoption deadline passes.
    pub(crate) fn release_orphans(&mut self, now_ms: u64, cmds: &mut Vec<Command>) {
        self.release_orphans_where(now_ms, cmds, |_, _, _| true);
    }

    /// Reserved chunks for which `release` says so wait again.
    pub(crate) fn release_orphans_where(
        &mut self,
        now_ms: u64,
        cmds: &mut Vec<Command>,
        release: impl Fn(JobId, u32, &RunningChunk) -> bool,
    ) {
        let ids: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| !j.orphans.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for job in ids {
            let j = self.jobs.get_mut(&job).expect("listed");
            let gone: Vec<u32> = j
                .orphans
                .iter()
                .filter(|(c, o)| release(job, **c, o))
                .map(|(c, _)| *c)
                .collect();
            if gone.is_empty() {
                continue;
            }
            for id in gone {
                let j = self.jobs.get_mut(&job).expect("listed");
                let o = j.orphans.remove(&id).expect("listed");
                self.facts.push(Fact::Released { job, chunk: id });
                let range = Range {
                    end: o.end,
                    failures: 0,
                    attempts: 0,
                };
                self.return_range(job, o.start, range);
            }
            self.dirty.push(job);
            self.offer_job(now_ms, job, cmds);
        }
    }

    /// How long a chunk may go without progress: the job's frame limit
    /// when it sets one, else ten times the expected frame time (the job's
    /// cost may still be a guess), at least a minute, at most the
    /// configured stall timeout.
    pub(crate) fn stall_limit_ms(&self, job: JobId, id: u32) -> u64 {
        let Some(j) = self.jobs.get(&job) else {
            return self.config.chunk_stall_timeout_ms;
        };
        if let Some(s) = j.spec.frame_timeout_s {
            // The node kills a frame past its limit; this catches a node
            // that does not.
            return u64::from(s) * 1000 + 30_000;
        }
        let fps = j.live.get(&id).map_or(0.0, |c| c.expected_fps);
        let frame_ms = if fps > 0.0 { 1000.0 / fps } else { 0.0 };
        ((10.0 * frame_ms) as u64)
            .max(60_000)
            .min(self.config.chunk_stall_timeout_ms)
    }

    /// The overall limit of a chunk from its assignment: a multiple of its
    /// expected duration, with a floor.
    pub(crate) fn chunk_timeout_ms(&self, job: JobId, id: u32) -> u64 {
        let Some(c) = self.jobs.get(&job).and_then(|j| j.live.get(&id)) else {
            return self.config.min_chunk_timeout_ms;
        };
        let expected = c.frames() as f64 * 1000.0 / c.expected_fps.max(1e-6);
        let by_speed = (expected * self.config.chunk_timeout_factor as f64) as u64;
        let by_frame = self.jobs[&job]
            .spec
            .frame_timeout_s
            .map_or(0, |s| u64::from(s) * 1000 * c.frames());
        by_speed.max(by_frame).max(self.config.min_chunk_timeout_ms)
    }

    /// A chunk's overall limit passed: it is taken back as a failure. A
    /// chunk queued behind another started late, so its limit runs from
    /// its start.
    pub(crate) fn chunk_timeout(
        &mut self,
        now_ms: u64,
        job: JobId,
        id: u32,
        epoch: u32,
        cmds: &mut Vec<Command>,
    ) {
        let Some(c) = self.jobs.get(&job).and_then(|j| j.live.get(&id)) else {
            return;
        };
        if c.epoch != epoch {
            return;
        }
        let limit = self.chunk_timeout_ms(job, id);
        let from = if c.started {
            c.started_at_ms
        } else {
            c.assigned_at_ms
        };
        if now_ms < from + limit {
            self.arm(from + limit, Timer::ChunkTimeout(job, id, epoch));
            return;
        }
        let node = c.node;
        cmds.push(Command::Cancel {
            node,
            chunk: (job, id),
            epoch,
        });
        let why = format!(
            "chunk timed out after {} s (its expected time times {})",
            limit / 1000,
            self.config.chunk_timeout_factor
        );
        self.chunk_failed(now_ms, node, (job, id), epoch, why, None, cmds);
    }

    /// The store verified a segment: its frames are done. This is the
    /// moment they count (and are journaled), before the node hears
    /// `Stored` and deletes its copy, so a frame stored is never rendered
    /// again. A segment shorter than its chunk returns the rest.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn segment_stored(
        &mut self,
        now_ms: u64,
        node: NodeId,
        key: ChunkKey,
        epoch: u32,
        start: u64,
        end: u64,
        segment: String,
        hash: String,
        cmds: &mut Vec<Command>,
    ) {
        if self.may_upload(node, key, epoch, start, end) != UploadVerdict::Accept {
            return;
        }
        if self.current(node, key, epoch).is_none() {
            // A segment from an earlier session (spooled across a lost
            // connection or a restart) whose frames still wait.
            self.adopt_frames(now_ms, node, key, epoch, start, end, segment, hash, cmds);
            return;
        }
        let c = self.current(node, key, epoch).expect("checked");
        if end < c.end {
            // The node stopped early (a shrink answer may still be on its
            // way); what it did not render goes back to the job.
            self.shrink_ack(now_ms, node, key, epoch, Some(end), cmds);
        }
        let Some((c, thief)) = self.remove_chunk(key) else {
            return;
        };
        self.record_done(node, key, epoch, c.start, c.end, c.kind, segment, hash);
        // Speed is learned from the node's own render time, which comes in
        // its `Done` right after `Stored`.
        if self.to_learn.len() >= MAX_TO_LEARN {
            self.to_learn.clear();
        }
        self.to_learn.insert(key, (node, c.frames()));
        let mut refill = vec![node];
        refill.extend(thief);
        if let Some(t) = c.twin {
            // The first copy home wins; the other is thrown away.
            if let Some(loser) = self.jobs.get(&key.0).and_then(|j| j.live.get(&t)) {
                cmds.push(Command::Cancel {
                    node: loser.node,
                    chunk: (key.0, t),
                    epoch: loser.epoch,
                });
                if let Some((l, lt)) = self.remove_chunk((key.0, t)) {
                    self.count(key.0, 0, l.frames_done);
                    refill.push(l.node);
                    refill.extend(lt);
                }
            }
        }
        self.maybe_complete(now_ms, key.0, cmds);
        for n in refill {
            self.fill_node(now_ms, n, cmds);
        }
    }

    /// Puts a stored segment in its job's done map and journals it.
    #[allow(clippy::too_many_arguments)]
    fn record_done(
        &mut self,
        node: NodeId,
        key: ChunkKey,
        epoch: u32,
        start: u64,
        end: u64,
        kind: ChunkKind,
        segment: String,
        hash: String,
    ) {
        let name = self
            .node(node)
            .map(|n| n.name.to_string())
            .unwrap_or_default();
        if let Some(n) = self.node_mut(node) {
            n.frames_rendered += end - start + 1;
            n.failing_jobs.clear();
        }
        let j = self.jobs.get_mut(&key.0).expect("exists");
        j.frames_done += end - start + 1;
        j.next_chunk = j.next_chunk.max(key.1 + 1);
        let clear_streak = j.streak > 0;
        j.streak = 0;
        j.done.insert(
            start,
            DoneSegment {
                end,
                chunk: key.1,
                node: name.clone(),
                kind,
                segment: segment.clone(),
                hash: hash.clone(),
            },
        );
        self.facts.push(Fact::Stored {
            job: key.0,
            chunk: key.1,
            epoch,
            start,
            end,
            node: name,
            kind,
            segment,
            hash,
        });
        if clear_streak {
            self.relist(key.0);
        }
    }

    /// Frames stolen or wasted, counted and journaled.
    pub(crate) fn count(&mut self, job: JobId, stolen: u64, wasted: u64) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if stolen == 0 && wasted == 0 {
            return;
        }
        j.frames_stolen += stolen;
        j.frames_wasted += wasted;
        self.facts.push(Fact::Counters {
            job,
            stolen,
            wasted,
        });
    }

    /// A node reports a chunk done. Its segment was stored before (that
    /// ended the chunk); a chunk still live was never stored, so the
    /// report is a failure, never a hole.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn chunk_done(
        &mut self,
        now_ms: u64,
        node: NodeId,
        key: ChunkKey,
        epoch: u32,
        elapsed_ms: u64,
        cmds: &mut Vec<Command>,
    ) {
        if self.current(node, key, epoch).is_none() {
            if let Some((n, frames)) = self.to_learn.remove(&key) {
                if n == node && elapsed_ms > 0 {
                    self.learn_speed(node, key.0, frames, elapsed_ms);
                }
            }
            return;
        }
        let why = "node reported done but its segment was not stored with that range and hash";
        self.chunk_failed(now_ms, node, key, epoch, why.into(), None, cmds);
    }

    /// A chunk failed on its node: the node's failure counts toward its
    /// blocklisting for the job and its quarantine; the frames are retried
    /// after a backoff, split so that a bad frame ends up alone.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn chunk_failed(
        &mut self,
        now_ms: u64,
        node: NodeId,
        key: ChunkKey,
        epoch: u32,
        reason: String,
        failed_frame: Option<u64>,
        cmds: &mut Vec<Command>,
    ) {
        if self.current(node, key, epoch).is_none() {
            return;
        }
        let Some((c, thief)) = self.remove_chunk(key) else {
            return;
        };
        let node_name = self
            .node(node)
            .map(|n| n.name.to_string())
            .unwrap_or_default();
        let blocklist_after = self.config.blocklist_after;
        self.count(key.0, 0, c.frames_done);
        let j = self.jobs.get_mut(&key.0).expect("exists");
        j.failures += 1;
        j.streak += 1;
        j.last_failure = Some(format!("{node_name}: {reason}"));
        let count = j.node_failures.entry(node).or_insert(0);
        *count += 1;
        if *count >= blocklist_after && !j.blocklist.contains(&node) {
            tracing::warn!(job = key.0, node = %node_name, "node blocklisted for this job");
            j.blocklist.push(node);
            j.blocklist_names.push(node_name.clone());
            self.facts.push(Fact::Blocklisted {
                job: key.0,
                node: node_name,
            });
        }
        self.relist(key.0);
        self.note_node_failure(node, key.0);
        if c.twin.is_none() {
            let range = Range {
                end: c.end,
                failures: c.failures,
                attempts: c.attempts,
            };
            self.fail_range(now_ms, key.0, c.start, range, &reason, failed_frame, cmds);
        } else if let Some(other) = c
            .twin
            .and_then(|t| self.jobs.get_mut(&key.0)?.live.get_mut(&t))
        {
            // The frames failed on a second node: the surviving copy
            // carries the count. Without it, a bad frame in a stalled
            // chunk was copied and failed on node after node, each
            // failure blocklisting one more node for the job.
            other.failures += 1;
        }
        self.fill_node(now_ms, node, cmds);
        if let Some(t) = thief {
            self.fill_node(now_ms, t, cmds);
        }
        self.offer_job(now_ms, key.0, cmds);
    }

    /// Frames `start..=range.end` failed. A known bad frame is retried alone
    /// (the frames around it are innocent); otherwise the range is halved,
    /// so repeated failures corner the bad frame. A frame out of retries
    /// fails the job, or is left out when the job allows it.
    #[allow(clippy::too_many_arguments)]
    fn fail_range(
        &mut self,
        now_ms: u64,
        job: JobId,
        start: u64,
        range: Range,
        reason: &str,
        failed_frame: Option<u64>,
        cmds: &mut Vec<Command>,
    ) {
        let (max_job, max_frame) = (self.config.max_job_failures, self.config.max_frame_failures);
        let Some(j) = self.jobs.get(&job) else { return };
        if j.failures >= max_job {
            let why = format!(
                "{} chunk failures across the job; last error: {reason}",
                j.failures
            );
            self.finish_job(now_ms, job, JobState::Failed, Some(why), cmds);
            return;
        }
        let failures = range.failures + 1;
        match failed_frame.filter(|f| (start..=range.end).contains(f)) {
            Some(f) => {
                if f > start {
                    self.return_range(
                        job,
                        start,
                        Range {
                            end: f - 1,
                            ..range
                        },
                    );
                }
                if f < range.end {
                    self.return_range(job, f + 1, range);
                }
                let bad = Range {
                    end: f,
                    failures,
                    attempts: range.attempts,
                };
                if failures >= max_frame {
                    self.give_up_frame(now_ms, job, f, failures, reason, cmds);
                } else {
                    self.delay(now_ms, job, f, bad);
                }
            }
            None if start == range.end => {
                if failures >= max_frame {
                    self.give_up_frame(now_ms, job, start, failures, reason, cmds);
                } else {
                    self.delay(now_ms, job, start, Range { failures, ..range });
                }
            }
            None => {
                let mid = start + (range.end - start) / 2;
                self.delay(
                    now_ms,
                    job,
                    start,
                    Range {
                        end: mid,
                        failures,
                        attempts: range.attempts,
                    },
                );
                self.delay(now_ms, job, mid + 1, Range { failures, ..range });
            }
        }
    }

    /// Holds failed frames back for an exponential backoff with jitter.
    fn delay(&mut self, now_ms: u64, job: JobId, start: u64, range: Range) {
        let base = self.config.retry_backoff_ms;
        let max = self.config.max_retry_backoff_ms;
        let shift = range.failures.saturating_sub(1).min(20);
        let backoff = base.saturating_mul(1 << shift).min(max);
        // Jitter without a random source: the core stays deterministic, and
        // frames that failed together still spread out.
        let jitter = (job ^ start.rotate_left(17) ^ (range.failures as u64) << 40)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> 54; // 0..1024
        let at = now_ms + backoff + backoff * jitter / 2048;
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.delayed.push((at, start, range));
        self.arm(at, Timer::Backoff(job));
    }

    /// A frame failed on every retry.
    fn give_up_frame(
        &mut self,
        now_ms: u64,
        job: JobId,
        frame: u64,
        failures: u32,
        reason: &str,
        cmds: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if j.spec.allow_missing_frames {
            tracing::warn!(
                job,
                frame,
                "frame left out after {failures} failures: {reason}"
            );
            j.missing.push(frame);
            j.missing.sort_unstable();
            self.facts.push(Fact::Missing { job, frame });
            self.maybe_complete(now_ms, job, cmds);
        } else {
            let why = format!("frame {frame} failed {failures} times; last error: {reason}");
            self.finish_job(now_ms, job, JobState::Failed, Some(why), cmds);
        }
    }

    /// Failed frames whose backoff is over wait for nodes again.
    pub(crate) fn release_backoff(&mut self, now_ms: u64, job: JobId, cmds: &mut Vec<Command>) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        let (due, later): (Vec<_>, Vec<_>) =
            j.delayed.drain(..).partition(|(at, _, _)| *at <= now_ms);
        j.delayed = later;
        for (_, start, range) in due {
            self.return_range(job, start, range);
        }
        self.offer_job(now_ms, job, cmds);
    }

    /// A chunk lost its node: its frames wait again; a range that keeps
    /// losing its node counts that as a failure.
    pub(crate) fn lose_chunk(
        &mut self,
        now_ms: u64,
        key: ChunkKey,
        why: &str,
        cmds: &mut Vec<Command>,
    ) {
        let Some((c, thief)) = self.remove_chunk(key) else {
            return;
        };
        let max_attempts = self.config.max_range_attempts;
        self.count(key.0, 0, c.frames_done);
        let j = self.jobs.get_mut(&key.0).expect("exists");
        if c.twin.is_none() {
            let range = Range {
                end: c.end,
                failures: c.failures,
                attempts: c.attempts + 1,
            };
            if range.attempts >= max_attempts {
                let why = format!(
                    "{why}; frames {}-{} lost their node {} times",
                    c.start, c.end, range.attempts
                );
                j.failures += 1;
                self.fail_range(now_ms, key.0, c.start, range, &why, None, cmds);
            } else {
                self.return_range(key.0, c.start, range);
            }
        }
        if let Some(t) = thief {
            self.fill_node(now_ms, t, cmds);
        }
    }

    /// A queued chunk goes back to its job unchanged (preemption).
    pub(crate) fn take_back(&mut self, _now_ms: u64, key: ChunkKey, _cmds: &mut Vec<Command>) {
        let Some((c, _)) = self.remove_chunk(key) else {
            return;
        };
        if c.twin.is_none() {
            let range = Range {
                end: c.end,
                failures: c.failures,
                attempts: c.attempts,
            };
            self.return_range(key.0, c.start, range);
        }
    }

    /// The stall deadline of a chunk fired.
    pub(crate) fn stall_check(
        &mut self,
        now_ms: u64,
        job: JobId,
        id: u32,
        cmds: &mut Vec<Command>,
    ) {
        let stall = self.stall_limit_ms(job, id);
        let Some(c) = self.jobs.get(&job).and_then(|j| j.live.get(&id)) else {
            return;
        };
        if c.started && c.frames_done >= c.frames() {
            // Every frame is rendered: the encoder's flush and the upload
            // are not a stall (the chunk's overall limit still applies).
            return;
        }
        // A chunk still queued behind the running one gets twice as long.
        let limit = if c.started { stall } else { 2 * stall };
        let silent = now_ms.saturating_sub(c.progress_at_ms);
        if silent <= limit {
            let at = c.progress_at_ms + limit + 1;
            self.arm(at, Timer::Stall(job, id));
            return;
        }
        let (node, epoch) = (c.node, c.epoch);
        cmds.push(Command::Cancel {
            node,
            chunk: (job, id),
            epoch,
        });
        let name = self
            .node(node)
            .map(|n| n.name.to_string())
            .unwrap_or_default();
        let why = format!("no progress for {} s on {name}", limit / 1000);
        self.chunk_failed(now_ms, node, (job, id), epoch, why, None, cmds);
    }

    /// A starving job gains a priority point.
    pub(crate) fn aging(&mut self, now_ms: u64, job: JobId, seq: u32) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if j.aging_seq != seq {
            return;
        }
        j.aging_armed = false;
        if !j.listed || !j.live.is_empty() {
            return;
        }
        let prio = j
            .eff_prio
            .saturating_add(1)
            .min(drover_shared::spec::MAX_PRIORITY);
        self.set_eff_prio(job, prio);
        self.arm_aging(now_ms, job);
    }

    /// Starts a waiting job's aging clock if it is not running.
    pub(crate) fn arm_aging(&mut self, now_ms: u64, job: JobId) {
        let aging_ms = self.config.aging_ms;
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if j.aging_armed || !j.listed || !j.live.is_empty() {
            return;
        }
        j.aging_armed = true;
        let seq = j.aging_seq;
        self.arm(now_ms + aging_ms, Timer::Aging(job, seq));
    }

    /// Every frame is stored (or given up on): join the segments.
    fn maybe_complete(&mut self, now_ms: u64, job: JobId, cmds: &mut Vec<Command>) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if j.state.is_terminal() || j.state == JobState::Muxing || !j.live.is_empty() {
            return;
        }
        if j.frames_done + j.missing.len() as u64 != j.total_frames() {
            return;
        }
        if j.done.is_empty() {
            let why = format!(
                "every frame failed; last error: {}",
                j.last_failure.clone().unwrap_or_default()
            );
            self.finish_job(now_ms, job, JobState::Failed, Some(why), cmds);
            return;
        }
        j.state = JobState::Muxing;
        let segments = j.done.values().map(|d| d.segment.clone()).collect();
        self.relist(job);
        self.facts.push(Fact::Joining { job });
        cmds.push(Command::Mux { job, segments });
    }

    /// Moves a job to a terminal state: its chunks are cancelled on their
    /// nodes, and it leaves the hot state.
    pub(crate) fn finish_job(
        &mut self,
        now_ms: u64,
        job: JobId,
        state: JobState,
        error: Option<String>,
        cmds: &mut Vec<Command>,
    ) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.state = state;
        j.finished_at_ms = Some(now_ms);
        if error.is_some() {
            j.error = error;
        }
        j.ready.clear();
        j.ready_frames = 0;
        j.delayed.clear();
        let live: Vec<u32> = j.live.keys().copied().collect();
        let mut refill = Vec::new();
        for id in live {
            if let Some((c, thief)) = self.remove_chunk((job, id)) {
                cmds.push(Command::Cancel {
                    node: c.node,
                    chunk: (job, id),
                    epoch: c.epoch,
                });
                self.count(job, 0, c.frames_done);
                refill.push(c.node);
                refill.extend(thief);
            }
        }
        self.relist(job);
        // Shrinks this job asked of others stay pending; their answers
        // find no job to credit (ids are never reused), which is harmless.
        let j = self.jobs.remove(&job).expect("exists");
        if let Some(n) = self.owner_active.get_mut(&j.owner.key) {
            *n -= 1;
            if *n == 0 {
                self.owner_active.remove(&j.owner.key);
            }
        }
        let mut record = self.record_of(&j);
        record.running.clear();
        if state == JobState::Done {
            self.facts.push(Fact::Output {
                job,
                path: record.output_path.clone().unwrap_or_default(),
                at_ms: now_ms,
            });
            // The output holds every frame: the segments only fill the
            // disk. The driver deletes them once the output's fact is
            // durable.
            cmds.push(Command::Discard { job });
            record.discarded = true;
        } else {
            // Failed or cancelled: the segments stay, so a retry renders
            // only what is missing, until the job leaves memory.
            self.facts.push(Fact::Ended {
                job,
                state,
                error: record.error.clone(),
                at_ms: now_ms,
            });
        }
        self.finished.insert(job, record);
        while self.finished.len() > self.config.finished_job_retention {
            self.evict_finished(cmds);
        }
        for n in refill {
            self.fill_node(now_ms, n, cmds);
        }
    }
}

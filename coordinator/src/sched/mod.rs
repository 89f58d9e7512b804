//! The scheduler core: every scheduling decision and the job state machine,
//! with no I/O.
//!
//! [`Core::handle`] takes an [`Event`] and the current time (milliseconds,
//! injected by the caller) and returns [`Command`]s for the driver: welcome
//! or refuse a node, send an assignment, a shrink or a cancel, journal a
//! job, join segments. [`Core::poll_timeout`] says when the core next needs
//! to be woken (with [`Event::Timeout`]), as quinn-proto's `poll_timeout`
//! does: nothing is ticked blindly. The actix scheduler actor drives it in
//! production; the tests and the `simulate` benchmark drive the same core on
//! a virtual clock.
//!
//! # Layout
//! - [`types`]: ids, configuration, events and commands.
//! - `state`: the state and its indexes (node slots, capability classes
//!   with free nodes and ready jobs, per-job waiting ranges, the deadline
//!   heap).
//! - `nodes`: admission, classes, liveness, speed learning, quarantine.
//! - `place`: which job a free node runs, chunk sizing, stealing,
//!   speculation, priority preemption, `unschedulable` reasons.
//! - `chunks`: progress, shrink answers, uploads, done, failures, backoff,
//!   bad-frame bisection, the end of a job.
//! - [`pools`]: what the autoscaler reads of a pool; preemption notices.
//! - [`record`]: the journal record, submission, restore.
//! - `views`: what the API shows.
//! - [`summary`]: the load `/metrics` reports (jobs, queue, nodes by state).
//! - `invariants`: [`Core::check_invariants`].
//!
//! # How a job runs
//! A submitted job is one waiting range of frames. Whenever a node has a
//! free slot, the best listed job for its capability class (priority, then
//! fair share between projects, then age) gives it a chunk carved from the
//! front of its waiting frames, sized to take about the job's target time
//! on that node by the node's measured speed. A node with nothing to do
//! steals: the chunk expected to finish last is shrunk (its node answers
//! with the frame where it really stops) and the tail becomes the idle
//! node's chunk. Near a job's end, a chunk that stalls or crawls gets a
//! speculative copy; the first to finish wins.

mod chunks;
pub mod facts;
mod invariants;
mod nodes;
mod place;
pub mod pools;
pub mod record;
mod state;
pub mod summary;
pub mod types;
pub mod views;

#[cfg(test)]
mod tests;

pub use facts::{Fact, NodeRecord, Recovery};
pub use nodes::{resolution_class, MAX_NODE_NAME_BYTES, RESOLUTION_CLASSES};
pub use record::{JobRecord, Owner, RunningChunk};
pub use state::{Core, DoneSegment};
pub use types::{
    Assignment, ChunkKey, ChunkReport, Chunking, Command, CoreConfig, Event, JobId, NodeId,
    RunningReport, SpooledReport, UploadVerdict,
};

use drover_shared::api::JobState;
use state::Timer;

impl Core {
    /// Applies one event.
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Command> {
        let mut cmds = Vec::new();
        match event {
            Event::Hello {
                session,
                name,
                node_id,
                caps,
                running,
                spooled,
            } => self.hello(
                now_ms, session, name, node_id, *caps, running, spooled, &mut cmds,
            ),
            Event::NodeLeaving { node } => self.node_leaving(now_ms, node, &mut cmds),
            Event::Disconnected { node, session } => {
                if self
                    .node(node)
                    .is_some_and(|n| n.session == session && n.connected)
                {
                    self.node_lost(now_ms, node, &mut cmds);
                }
            }
            Event::Heartbeat {
                node,
                cpu_load_pct,
                memory_load_pct,
                chunks,
            } => {
                self.heartbeat(now_ms, node, cpu_load_pct, &mut cmds);
                if let Some(n) = self.node_mut(node) {
                    n.memory_load_pct = memory_load_pct;
                }
                for r in chunks {
                    self.progress(now_ms, node, r);
                }
            }
            Event::Progress { node, report } => {
                if let Some(n) = self.node_mut(node) {
                    n.last_heartbeat_ms = now_ms;
                }
                self.progress(now_ms, node, report);
            }
            Event::ShrinkAck {
                node,
                chunk,
                epoch,
                end,
            } => self.shrink_ack(now_ms, node, chunk, epoch, end, &mut cmds),
            Event::SegmentStored {
                node,
                chunk,
                epoch,
                start,
                end,
                segment,
                hash,
            } => self.segment_stored(
                now_ms, node, chunk, epoch, start, end, segment, hash, &mut cmds,
            ),
            Event::ChunkDone {
                node,
                chunk,
                epoch,
                elapsed_ms,
                ..
            } => self.chunk_done(now_ms, node, chunk, epoch, elapsed_ms, &mut cmds),
            Event::ChunkFailed {
                node,
                chunk,
                epoch,
                reason,
                failed_frame,
                log_tail,
            } => {
                if !log_tail.is_empty() && self.current(node, chunk, epoch).is_some() {
                    if let Some(j) = self.jobs.get_mut(&chunk.0) {
                        j.last_log = Some(log_tail);
                    }
                }
                self.chunk_failed(now_ms, node, chunk, epoch, reason, failed_frame, &mut cmds)
            }
            Event::CancelJob { job } => {
                if self.jobs.get(&job).is_some_and(|j| !j.state.is_terminal()) {
                    self.finish_job(now_ms, job, JobState::Cancelled, None, &mut cmds);
                }
            }
            Event::MuxDone { job, output } => {
                if self
                    .jobs
                    .get(&job)
                    .is_some_and(|j| j.state == JobState::Muxing)
                {
                    self.set_output(job, output);
                    self.finish_job(now_ms, job, JobState::Done, None, &mut cmds);
                }
            }
            Event::MuxFailed { job, reason } => {
                if self
                    .jobs
                    .get(&job)
                    .is_some_and(|j| j.state == JobState::Muxing)
                {
                    let why = format!("joining segments failed: {reason}");
                    self.finish_job(now_ms, job, JobState::Failed, Some(why), &mut cmds);
                }
            }
            Event::ClearQuarantine { name } => self.clear_quarantine(now_ms, &name, &mut cmds),
            Event::Drain { name, now } => self.drain(now_ms, &name, now, &mut cmds),
            Event::Preempt { name } => self.preempt(now_ms, &name, &mut cmds),
            Event::Undrain { name } => self.undrain(now_ms, &name, &mut cmds),
            Event::RetryJob { job } => self.retry(now_ms, job, &mut cmds),
            Event::PauseJob { job, paused } => self.set_paused(now_ms, job, paused, &mut cmds),
            Event::SetTags { name, tags } => self.set_tags(now_ms, &name, tags, &mut cmds),
            Event::SetPriority { job, priority } => {
                self.set_priority(now_ms, job, priority, &mut cmds)
            }
            Event::Timeout => self.expire(now_ms, &mut cmds),
        }
        self.settle(now_ms, &mut cmds);
        cmds
    }

    /// Brings the `unschedulable` state of every job touched by this event
    /// up to date.
    pub(crate) fn settle(&mut self, now_ms: u64, cmds: &mut Vec<Command>) {
        // A job that became listed (a node limit or probation lifted)
        // is offered to free nodes, which would otherwise wait for their
        // next event.
        while let Some(job) = self.newly_listed.pop() {
            if self.jobs.get(&job).is_some_and(|j| j.listed) {
                self.offer_job(now_ms, job, cmds);
            }
        }
        while let Some(job) = self.dirty.pop() {
            self.refresh_schedulable(job);
        }
    }

    /// The facts the last events produced, in order, for the journal. The
    /// driver must make them durable before it carries out any command of
    /// the same events that a node, a client or the disk would act on.
    pub fn take_facts(&mut self) -> Vec<Fact> {
        std::mem::take(&mut self.facts)
    }

    /// Records a fact for the journal.
    pub(crate) fn fact(&mut self, fact: Fact) {
        self.facts.push(fact);
    }

    /// When the core next needs [`Event::Timeout`], if ever. A deadline may
    /// turn out to have nothing to do (it was superseded); that costs one
    /// lookup.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|t| t.0 .0)
    }

    /// Runs every deadline that is due.
    fn expire(&mut self, now_ms: u64, cmds: &mut Vec<Command>) {
        while let Some(std::cmp::Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now_ms {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Liveness(node, session) => self.liveness(now_ms, node, session, cmds),
                Timer::Stall(job, id) => self.stall_check(now_ms, job, id, cmds),
                Timer::Backoff(job) => self.release_backoff(now_ms, job, cmds),
                Timer::ShrinkTimeout(job, id, seq) => {
                    self.shrink_timeout(now_ms, job, id, seq, cmds)
                }
                Timer::Aging(job, seq) => self.aging(now_ms, job, seq),
                Timer::Speculate => self.speculate_check(now_ms, cmds),
                Timer::Forget(node, session) => self.forget(node, session, cmds),
                Timer::Orphans => self.release_orphans(now_ms, cmds),
                Timer::ChunkTimeout(job, id, epoch) => {
                    self.chunk_timeout(now_ms, job, id, epoch, cmds)
                }
            }
        }
    }
}

//! The executor's supervisor as a state machine: it decides everything about
//! the executor process (when to start one, what to send it, when to kill
//! it, what each chunk's end is) and does no I/O itself, as the scheduler's
//! core does. Time is an argument; the driver ([`super::Executor`]'s thread)
//! feeds it inputs, performs the [`Action`]s it pulls with
//! [`Supervisor::poll_action`], and wakes it at [`Supervisor::poll_timeout`].
//! The events for the agent go straight into each chunk's channel, as they
//! did from the executor thread.
//!
//! Rules (the why is in the module doc of [`super`]):
//! - One worker process at a time, started eagerly; at most one chunk
//!   rendering in it, and the previous chunk's encoder may still be
//!   flushing (so at most two chunks are active).
//! - Every frame is granted here, under the chunk's `FrameWindow`.
//! - A rendering chunk whose oldest unfinished frame has run past the
//!   chunk's frame limit, a flushing segment past its flush limit, or a
//!   cancelled chunk the worker has not given up within
//!   [`super::CANCEL_GRACE_MS`]: the worker is killed, every chunk in it
//!   fails (the one at fault naming its frame), and a new worker starts at
//!   once.
//! - Each chunk keeps its log ([`ChunkLogBuffer`]): the worker's lines
//!   about it and this side's notes (a kill and why, a dead worker's last
//!   stderr lines); its head goes to the agent every
//!   [`LOG_FLUSH_INTERVAL_MS`] as [`WorkerEvent::Log`] pieces, and the
//!   rest right before the chunk's end is reported.
//! - A worker that dies on its own fails its chunks the same way and is
//!   restarted after a backoff that grows with each death before a
//!   segment was finished; a worker that cannot start fails the chunk
//!   waiting first, so nothing waits forever on a node that cannot work.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::wire::{cut, ChunkKey, FromWorker, Job, ToWorker, MAX_REPORT_BYTES};
use super::{
    frame_limit, segment_path, WorkItem, WorkerEvent, CANCEL_GRACE_MS, FLUSH_TIMEOUT_MIN_S,
    RESTART_BACKOFF_BASE_MS, RESTART_BACKOFF_MAX_MS, STABLE_UPTIME_S, WORKER_STARTUP_TIMEOUT_S,
};
use crate::chunklog::{strip_ansi, ChunkLogBuffer, MAX_CHUNK_LOG_PIECE_BYTES};
use crate::render::AdapterReport;

/// How often a running chunk's new log lines go to the agent (and on to
/// the coordinator), in milliseconds: often enough to follow a chunk that
/// seems stuck, rarely enough that a chunk's log is a few messages a
/// second at most.
pub const LOG_FLUSH_INTERVAL_MS: u64 = 500;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Start a worker process as `generation` and send it its `Init`.
    /// Inputs from it carry the generation; those of an earlier one are
    /// ignored.
    Spawn { generation: u64 },
    /// Write a message to the current worker.
    Send(ToWorker),
    /// SIGKILL the current worker if it still runs and reap it; for the
    /// supervisor it is gone already.
    Kill,
    /// Remove a segment a dead worker may have left half written.
    Discard(PathBuf),
}

#[derive(Debug)]
enum Worker {
    /// No process; start one at `retry_at`.
    Down { retry_at: Instant },
    /// Spawned, its device not yet open.
    Starting { generation: u64, since: Instant },
    /// Takes chunks.
    Ready { generation: u64, since: Instant },
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Frames are being rendered; `clock_from` is when the oldest
    /// unfinished frame became the one the worker waits for (the chunk
    /// was sent, or the frame before it was done).
    Rendering { clock_from: Instant },
    /// Every frame is rendered; the segment must be complete by `by`.
    Flushing { by: Instant },
}

/// A chunk the worker holds.
struct Active {
    item: WorkItem,
    key: ChunkKey,
    /// The chunk's frame time limit.
    limit: Duration,
    phase: Phase,
    /// Frames the worker has handed to its encoder.
    frames_done: u64,
    /// When a cancel was sent, the moment the worker must have given up.
    cancel_by: Option<Instant>,
    /// The chunk's log, and when its head last went to the agent.
    log: ChunkLogBuffer,
    log_flushed: Instant,
}

impl Active {
    /// The frame the worker is on: the oldest not yet done, if the window
    /// still holds it.
    fn frame_on(&self) -> Option<u64> {
        let f = self.item.window.start() + self.frames_done;
        (f <= self.item.window.end()).then_some(f)
    }
}

/// Why the supervisor kills its worker.
enum Cause {
    FrameTimeout(ChunkKey),
    FlushTimeout(ChunkKey),
    Cancelled(ChunkKey),
    Broken(String),
}

/// The supervisor's state; see the module doc.
pub(crate) struct Supervisor {
    spool: PathBuf,
    frame_timeout_default: Duration,
    /// The adapter named in failure reports: the agent's until a worker
    /// reports its own.
    adapter: AdapterReport,
    queue: VecDeque<WorkItem>,
    active: Vec<Active>,
    worker: Worker,
    next_generation: u64,
    /// Worker deaths (not kills) since a segment was last finished, or
    /// since a worker lived [`STABLE_UPTIME_S`]: the restart backoff.
    deaths: u32,
    closed: bool,
    actions: VecDeque<Action>,
}

impl Supervisor {
    /// A supervisor whose first worker starts at once.
    pub(crate) fn new(
        now: Instant,
        spool: PathBuf,
        frame_timeout_default: Duration,
        adapter: AdapterReport,
    ) -> Supervisor {
        let mut s = Supervisor {
            spool,
            frame_timeout_default,
            adapter,
            queue: VecDeque::new(),
            active: Vec::new(),
            worker: Worker::Down { retry_at: now },
            next_generation: 1,
            deaths: 0,
            closed: false,
            actions: VecDeque::new(),
        };
        s.pump(now);
        s
    }

    /// The next thing the driver must do.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest moment a deadline falls, if any: the driver calls
    /// [`Supervisor::tick`] then.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let worker = match self.worker {
            Worker::Down { retry_at } if !self.is_done() => Some(retry_at),
            Worker::Down { .. } => None,
            Worker::Starting { since, .. } => {
                Some(since + Duration::from_secs(WORKER_STARTUP_TIMEOUT_S))
            }
            Worker::Ready { .. } => None,
        };
        let chunks = self.active.iter().flat_map(|a| {
            let phase = match a.phase {
                Phase::Rendering { clock_from } => clock_from + a.limit,
                Phase::Flushing { by } => by,
            };
            [Some(phase), a.cancel_by]
        });
        worker.into_iter().chain(chunks.flatten()).min()
    }

    /// Chunks are held whose cancel flag (set by the agent) the driver must
    /// look at now and then, by calling [`Supervisor::tick`].
    pub(crate) fn holds_chunks(&self) -> bool {
        !(self.queue.is_empty() && self.active.is_empty())
    }

    /// The executor was dropped and every chunk has ended: the driver stops
    /// its worker and ends.
    pub(crate) fn is_done(&self) -> bool {
        self.closed && !self.holds_chunks()
    }

    /// The generation of the live worker, if any.
    pub(crate) fn generation(&self) -> Option<u64> {
        match self.worker {
            Worker::Starting { generation, .. } | Worker::Ready { generation, .. } => {
                Some(generation)
            }
            Worker::Down { .. } => None,
        }
    }

    /// A chunk from the agent.
    pub(crate) fn submit(&mut self, now: Instant, item: WorkItem) {
        self.queue.push_back(item);
        self.pump(now);
    }

    /// The executor was dropped: run what is held, start nothing more.
    pub(crate) fn close(&mut self, now: Instant) {
        self.closed = true;
        self.pump(now);
    }

    /// The driver could not start worker `generation`.
    pub(crate) fn spawn_failed(&mut self, now: Instant, generation: u64, error: String) {
        if self.generation() == Some(generation) {
            self.start_failed(now, error);
            self.pump(now);
        }
    }

    /// Worker `generation` wrote a line that is not a message.
    pub(crate) fn garbled(&mut self, now: Instant, generation: u64, error: String) {
        match self.worker {
            Worker::Starting { generation: g, .. } if g == generation => {
                self.start_failed(now, format!("it wrote {error}"));
            }
            Worker::Ready { generation: g, .. } if g == generation => {
                self.kill(now, Cause::Broken(error));
            }
            _ => return,
        }
        self.pump(now);
    }

    /// Worker `generation` ended (its output closed and it was reaped):
    /// `status` as the OS says, `stderr_tail` its last log lines.
    pub(crate) fn exited(
        &mut self,
        now: Instant,
        generation: u64,
        status: &str,
        stderr_tail: &str,
    ) {
        if self.generation() != Some(generation) {
            return;
        }
        let how = if stderr_tail.is_empty() {
            status.to_string()
        } else {
            format!("{status}; its last log lines:\n{stderr_tail}")
        };
        match self.worker {
            Worker::Starting { .. } => self.start_failed(now, how),
            Worker::Ready { since, .. } => {
                if now.saturating_duration_since(since) >= Duration::from_secs(STABLE_UPTIME_S) {
                    self.deaths = 0;
                }
                self.deaths += 1;
                let delay = restart_backoff(self.deaths);
                warn!(
                    "the executor process ended on its own ({status}); a new one starts in {} ms",
                    delay.as_millis()
                );
                self.actions.push_back(Action::Kill);
                self.worker = Worker::Down {
                    retry_at: now + delay,
                };
                for a in std::mem::take(&mut self.active) {
                    let reason = match (a.phase, a.frame_on()) {
                        (Phase::Rendering { .. }, Some(f)) => {
                            format!("the executor process died on frame {f} ({status})")
                        }
                        _ => format!(
                            "the executor process died while finishing the segment ({status})"
                        ),
                    };
                    let frame = match a.phase {
                        Phase::Rendering { .. } => a.frame_on(),
                        Phase::Flushing { .. } => None,
                    };
                    self.discard_and_fail(a, reason, &how, frame);
                }
            }
            Worker::Down { .. } => {}
        }
        self.pump(now);
    }

    /// A line worker `generation` wrote on its stderr (a warning of the
    /// encoder or the driver, a panic): it goes into the log of every chunk
    /// the worker holds, since a process's stderr is not per chunk.
    pub(crate) fn stderr_line(&mut self, generation: u64, line: &str) {
        if self.generation() != Some(generation) {
            return;
        }
        let line = strip_ansi(line);
        if line.trim().is_empty() {
            return;
        }
        for a in &mut self.active {
            a.log.push_line(&format!("stderr: {line}"));
        }
    }

    /// A message from worker `generation`.
    pub(crate) fn message(&mut self, now: Instant, generation: u64, msg: FromWorker) {
        if self.generation() != Some(generation) {
            return;
        }
        self.handle(now, generation, msg);
        self.pump(now);
    }

    fn handle(&mut self, now: Instant, generation: u64, msg: FromWorker) {
        if let Worker::Starting { .. } = self.worker {
            match msg {
                FromWorker::Ready {
                    adapter,
                    device_type,
                } => {
                    info!(%adapter, "executor process ready");
                    self.adapter.name = adapter;
                    self.adapter.device_type = device_type;
                    self.worker = Worker::Ready {
                        generation,
                        since: now,
                    };
                }
                FromWorker::Fatal { reason } => self.start_failed(now, reason),
                other => {
                    self.start_failed(now, format!("it sent {} before it was ready", kind(&other)))
                }
            }
            return;
        }
        match msg {
            FromWorker::Ready { .. } => {
                self.kill(now, Cause::Broken("said it was ready twice".into()));
            }
            FromWorker::Fatal { reason } => {
                self.kill(now, Cause::Broken(format!("gave up: {reason}")));
            }
            FromWorker::Start { chunk, frame } => {
                let Some(a) = self.rendering(chunk) else {
                    // The chunk ended first: its encoder failed and said so
                    // (from its own thread) while the renderer was still
                    // asking. It starts nothing more.
                    self.actions.push_back(Action::Send(ToWorker::Answer {
                        chunk,
                        frame,
                        go: false,
                    }));
                    return;
                };
                let w = &a.item.window;
                let expected = w.start() + w.frames_started();
                if frame != expected {
                    return self.kill(
                        now,
                        Cause::Broken(format!(
                            "asked to start frame {frame}; the next frame is {expected}"
                        )),
                    );
                }
                // The window decides under its lock, as the agent's shrink
                // does: this is what keeps a shrink's answer exact.
                let go = !a.item.cancel.load(Ordering::Relaxed) && w.try_start(frame);
                self.actions
                    .push_back(Action::Send(ToWorker::Answer { chunk, frame, go }));
            }
            FromWorker::Progress { chunk, frames_done } => {
                // As for a start: the chunk may have ended first.
                let Some(a) = self.rendering(chunk) else {
                    return;
                };
                let started = a.item.window.frames_started();
                if frames_done <= a.frames_done || frames_done > started {
                    let was = a.frames_done;
                    return self.kill(
                        now,
                        Cause::Broken(format!(
                            "reported {frames_done} frames done after {was}, with {started} started"
                        )),
                    );
                }
                a.frames_done = frames_done;
                a.phase = Phase::Rendering { clock_from: now };
                a.item.frames_done.store(frames_done, Ordering::Relaxed);
                let _ = a.item.events.send(WorkerEvent::Progress {
                    chunk: chunk.into(),
                    frames_done,
                    // Read anew: a shrink changes the total while it runs.
                    total: a.item.window.frames(),
                });
            }
            FromWorker::Rendered { chunk } => {
                // The segment's own end may have come first (its encoder
                // runs on another thread of the worker): then there is
                // nothing left to move.
                if let Some(a) = self.rendering(chunk) {
                    let flush = a.limit.max(Duration::from_secs(FLUSH_TIMEOUT_MIN_S));
                    a.phase = Phase::Flushing { by: now + flush };
                }
            }
            FromWorker::Finished {
                chunk,
                start,
                end,
                path,
                hash,
                adapter,
                elapsed_ms,
            } => {
                let Some(i) = self.active.iter().position(|a| a.key == chunk) else {
                    return self.kill(
                        now,
                        Cause::Broken(format!("finished {chunk:?}, which it does not hold")),
                    );
                };
                let a = self.active.swap_remove(i);
                let w = &a.item.window;
                // Checked again on this side of the pipe: the segment must
                // hold exactly the frames the window granted, where this
                // node said it would be.
                let want_path = segment_path(&self.spool, chunk.into());
                let checked = if (start, end) != (w.start(), w.end()) {
                    Err(format!(
                        "the executor process wrote frames {start}-{end}; the chunk holds {}-{}",
                        w.start(),
                        w.end()
                    ))
                } else if path != want_path {
                    Err(format!(
                        "the executor process wrote {}, not {}",
                        path.display(),
                        want_path.display()
                    ))
                } else {
                    parse_hash(&hash)
                };
                match checked {
                    Ok(hash) => {
                        self.deaths = 0;
                        let mut a = a;
                        a.log.push_line(&format!(
                            "chunk finished: frames {start}-{end} in {elapsed_ms} ms on {adapter}"
                        ));
                        ship_log(&a.item, &mut a.log, true);
                        let _ = a.item.events.send(WorkerEvent::Finished {
                            assign: a.item.assign,
                            start,
                            end,
                            path,
                            hash,
                            adapter,
                            elapsed_ms,
                        });
                    }
                    Err(reason) => self.discard_and_fail(a, reason, "", None),
                }
            }
            FromWorker::Log { chunk, line } => {
                // The chunk may have ended first (its encoder reported from
                // another thread): the line is dropped with it.
                if let Some(a) = self.active.iter_mut().find(|a| a.key == chunk) {
                    a.log.push_line(&line);
                }
            }
            FromWorker::Failed {
                chunk,
                reason,
                log_tail,
                failed_frame,
            } => {
                let Some(i) = self.active.iter().position(|a| a.key == chunk) else {
                    return self.kill(
                        now,
                        Cause::Broken(format!("failed {chunk:?}, which it does not hold")),
                    );
                };
                let mut a = self.active.swap_remove(i);
                a.item.window.stop();
                a.log.push_line(&failure_line(&reason, failed_frame));
                ship_log(&a.item, &mut a.log, true);
                let _ = a.item.events.send(WorkerEvent::Failed {
                    chunk: chunk.into(),
                    reason: cut(&reason, MAX_REPORT_BYTES).to_string(),
                    log_tail: cut(&log_tail, MAX_REPORT_BYTES).to_string(),
                    failed_frame,
                });
            }
        }
    }

    /// Looks at the cancel flags and the deadlines.
    pub(crate) fn tick(&mut self, now: Instant) {
        if let Worker::Starting { since, .. } = self.worker {
            let limit = Duration::from_secs(WORKER_STARTUP_TIMEOUT_S);
            if now.saturating_duration_since(since) >= limit {
                self.start_failed(
                    now,
                    format!(
                        "it did not open its render device within {WORKER_STARTUP_TIMEOUT_S} s"
                    ),
                );
            }
        }
        let grace = Duration::from_millis(CANCEL_GRACE_MS);
        let mut cause = None;
        for a in &mut self.active {
            if a.cancel_by.is_none() && a.item.cancel.load(Ordering::Relaxed) {
                a.cancel_by = Some(now + grace);
                self.actions
                    .push_back(Action::Send(ToWorker::Cancel { chunk: a.key }));
            }
            if cause.is_some() {
                continue;
            }
            // A cancel the worker ignored comes first: the coordinator no
            // longer wants the chunk, whatever its frames are doing.
            if a.cancel_by.is_some_and(|t| now >= t) {
                cause = Some(Cause::Cancelled(a.key));
            } else {
                match a.phase {
                    Phase::Rendering { clock_from } if now >= clock_from + a.limit => {
                        cause = Some(Cause::FrameTimeout(a.key));
                    }
                    Phase::Flushing { by } if now >= by => {
                        cause = Some(Cause::FlushTimeout(a.key));
                    }
                    _ => {}
                }
            }
        }
        if let Some(cause) = cause {
            self.kill(now, cause);
        }
        let every = Duration::from_millis(LOG_FLUSH_INTERVAL_MS);
        for a in &mut self.active {
            if now.saturating_duration_since(a.log_flushed) >= every {
                a.log_flushed = now;
                ship_log(&a.item, &mut a.log, false);
            }
        }
        self.pump(now);
    }

    fn rendering(&mut self, chunk: ChunkKey) -> Option<&mut Active> {
        self.active
            .iter_mut()
            .find(|a| a.key == chunk && matches!(a.phase, Phase::Rendering { .. }))
    }

    /// Starts a worker when one is due, fails queued chunks that were
    /// cancelled, and sends the next chunk when none is rendering.
    fn pump(&mut self, now: Instant) {
        let queue = std::mem::take(&mut self.queue);
        for item in queue {
            if item.cancel.load(Ordering::Relaxed) {
                item.window.stop();
                let _ = item.events.send(WorkerEvent::Failed {
                    chunk: item.assign.chunk,
                    reason: "cancelled before it started".into(),
                    log_tail: String::new(),
                    failed_frame: None,
                });
            } else {
                self.queue.push_back(item);
            }
        }
        match self.worker {
            Worker::Down { retry_at } if now >= retry_at && !self.is_done() => {
                let generation = self.next_generation;
                self.next_generation += 1;
                self.worker = Worker::Starting {
                    generation,
                    since: now,
                };
                self.actions.push_back(Action::Spawn { generation });
            }
            Worker::Ready { .. } => {
                let rendering = self
                    .active
                    .iter()
                    .any(|a| matches!(a.phase, Phase::Rendering { .. }));
                if !rendering {
                    if let Some(item) = self.queue.pop_front() {
                        self.run(now, item);
                    }
                }
            }
            _ => {}
        }
    }

    fn run(&mut self, now: Instant, item: WorkItem) {
        let key = ChunkKey::from(item.assign.chunk);
        let limit = frame_limit(&item.assign, self.frame_timeout_default);
        item.frames_done.store(0, Ordering::Relaxed);
        let _ = item.events.send(WorkerEvent::Progress {
            chunk: item.assign.chunk,
            frames_done: 0,
            total: item.window.frames(),
        });
        self.actions
            .push_back(Action::Send(ToWorker::Run(Job::from_assign(&item.assign))));
        let mut log = ChunkLogBuffer::new();
        let a = &item.assign;
        log.push_line(&format!(
            "job {} chunk {} (attempt epoch {}): frames {}-{}, sent to the node's executor process #{}, frame time limit {} s",
            a.chunk.job,
            a.chunk.index,
            a.chunk.epoch,
            a.start,
            item.window.end(),
            self.generation().unwrap_or(0),
            limit.as_secs_f64()
        ));
        self.active.push(Active {
            item,
            key,
            limit,
            phase: Phase::Rendering { clock_from: now },
            frames_done: 0,
            cancel_by: None,
            log,
            log_flushed: now,
        });
    }

    /// The worker could not start: back off, and fail the chunk waiting
    /// first, so that a node whose worker never starts does not hold work.
    fn start_failed(&mut self, now: Instant, why: String) {
        self.deaths += 1;
        let delay = restart_backoff(self.deaths);
        warn!(
            "the executor process did not start: {why}; retrying in {} ms",
            delay.as_millis()
        );
        self.actions.push_back(Action::Kill);
        self.worker = Worker::Down {
            retry_at: now + delay,
        };
        if let Some(item) = self.queue.pop_front() {
            item.window.stop();
            let reason = format!("the executor process did not start: {why}");
            let mut log = ChunkLogBuffer::new();
            for line in reason.lines() {
                log.push_line(line);
            }
            ship_log(&item, &mut log, true);
            let _ = item.events.send(WorkerEvent::Failed {
                chunk: item.assign.chunk,
                reason: cut(&reason, MAX_REPORT_BYTES).to_string(),
                log_tail: String::new(),
                failed_frame: None,
            });
        }
    }

    /// Kills the worker and fails every chunk in it; a new worker starts at
    /// once (the kill was this side's decision, not a sign that the worker
    /// cannot run).
    fn kill(&mut self, now: Instant, cause: Cause) {
        let culprit = match &cause {
            Cause::FrameTimeout(k) | Cause::FlushTimeout(k) | Cause::Cancelled(k) => Some(*k),
            Cause::Broken(_) => None,
        };
        let mut why = String::new();
        let mut failures = Vec::new();
        for a in std::mem::take(&mut self.active) {
            let secs = a.limit.as_secs_f64();
            let (reason, frame) = match &cause {
                Cause::FrameTimeout(k) if *k == a.key => match a.frame_on() {
                    Some(f) => (
                        format!("frame {f} exceeded the frame time limit of {secs} s"),
                        Some(f),
                    ),
                    None => (
                        format!("rendering did not end within the frame time limit of {secs} s"),
                        None,
                    ),
                },
                Cause::FlushTimeout(k) if *k == a.key => {
                    let flush = a.limit.max(Duration::from_secs(FLUSH_TIMEOUT_MIN_S));
                    (
                        format!(
                            "the segment was not finished within {} s of its last frame",
                            flush.as_secs_f64()
                        ),
                        None,
                    )
                }
                Cause::Cancelled(k) if *k == a.key => ("cancelled".to_string(), None),
                Cause::Broken(what) => (
                    format!("the executor process broke its protocol: {what}"),
                    None,
                ),
                _ => (String::new(), None),
            };
            if Some(a.key) == culprit {
                why = reason.clone();
            }
            failures.push((a, reason, frame));
        }
        if why.is_empty() {
            if let Cause::Broken(what) = &cause {
                why = format!("the executor process broke its protocol: {what}");
            }
        }
        // A kill for a chunk's sake is this side's decision: the next
        // worker starts at once. A worker that broke the protocol is
        // broken, and may be again: it backs off as a death does.
        let delay = match &cause {
            Cause::Broken(_) => {
                self.deaths += 1;
                restart_backoff(self.deaths)
            }
            _ => Duration::ZERO,
        };
        warn!("killing the executor process: {why}");
        self.actions.push_back(Action::Kill);
        self.worker = Worker::Down {
            retry_at: now + delay,
        };
        for (a, reason, frame) in failures {
            let reason = if reason.is_empty() {
                // A bystander: the other chunk in the killed worker.
                format!("the executor process was killed ({why})")
            } else {
                reason
            };
            let note = format!("the executor process was killed: {why}");
            self.discard_and_fail(a, reason, &note, frame);
        }
    }

    /// Reports a chunk failed after its worker is gone (so its segment may
    /// be half written) or after its segment was refused.
    fn discard_and_fail(
        &mut self,
        mut a: Active,
        reason: String,
        detail: &str,
        frame: Option<u64>,
    ) {
        a.log.push_line(&failure_line(&reason, frame));
        if !detail.is_empty() && !reason.contains(detail) {
            for line in detail.lines() {
                a.log.push_line(line);
            }
        }
        ship_log(&a.item, &mut a.log, true);
        let w = &a.item.window;
        w.stop();
        self.actions
            .push_back(Action::Discard(segment_path(&self.spool, a.key.into())));
        let c = a.item.assign.chunk;
        let mut log_tail = format!(
            "job {} chunk {} frames {}-{} on {} ({}): {reason}",
            c.job,
            c.index,
            w.start(),
            w.end(),
            self.adapter.name,
            self.adapter.device_type
        );
        if !detail.is_empty() && !reason.contains(detail) {
            log_tail.push('\n');
            log_tail.push_str(detail);
        }
        // The end of a long tail is what explains a crash.
        let keep = log_tail.len().saturating_sub(MAX_REPORT_BYTES);
        let mut from = keep;
        while !log_tail.is_char_boundary(from) {
            from += 1;
        }
        let _ = a.item.events.send(WorkerEvent::Failed {
            chunk: c,
            reason: cut(&reason, MAX_REPORT_BYTES).to_string(),
            log_tail: log_tail[from..].to_string(),
            failed_frame: frame,
        });
    }
}

/// The last line of a failed chunk's log: why, naming the frame.
fn failure_line(reason: &str, frame: Option<u64>) -> String {
    match frame {
        Some(f) => format!("chunk failed on frame {f}: {reason}"),
        None => format!("chunk failed: {reason}"),
    }
}

/// Hands the agent the chunk's log pieces not yet sent: those of the head
/// so far, or (`end`) all the rest, the last piece marked.
fn ship_log(item: &WorkItem, log: &mut ChunkLogBuffer, end: bool) {
    let chunk = item.assign.chunk;
    let send = |offset, text, last| {
        let _ = item.events.send(WorkerEvent::Log {
            chunk,
            offset,
            text,
            last,
        });
    };
    if end {
        let pieces = log.finish(MAX_CHUNK_LOG_PIECE_BYTES);
        let n = pieces.len();
        for (i, (offset, text)) in pieces.into_iter().enumerate() {
            send(offset, text, i + 1 == n);
        }
    } else {
        while let Some((offset, text)) = log.take_piece(MAX_CHUNK_LOG_PIECE_BYTES) {
            send(offset, text, false);
        }
    }
}

/// The wait before starting a worker after `deaths` deaths in a row:
/// [`RESTART_BACKOFF_BASE_MS`] doubling up to [`RESTART_BACKOFF_MAX_MS`].
pub(crate) fn restart_backoff(deaths: u32) -> Duration {
    if deaths == 0 {
        return Duration::ZERO;
    }
    let doublings = (deaths - 1).min(16);
    Duration::from_millis((RESTART_BACKOFF_BASE_MS << doublings).min(RESTART_BACKOFF_MAX_MS))
}

fn parse_hash(hex_text: &str) -> Result<[u8; 32], String> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut hash)
        .map_err(|e| format!("the executor process sent a bad hash {hex_text:?}: {e}"))?;
    Ok(hash)
}

fn kind(msg: &FromWorker) -> &'static str {
    match msg {
        FromWorker::Ready { .. } => "ready",
        FromWorker::Fatal { .. } => "fatal",
        FromWorker::Start { .. } => "start",
        FromWorker::Progress { .. } => "progress",
        FromWorker::Rendered { .. } => "rendered",
        FromWorker::Finished { .. } => "finished",
        FromWorker::Failed { .. } => "failed",
        FromWorker::Log { .. } => "log",
    }
}

#[cfg(test)]
mod tests {
    //! The supervisor on a virtual clock: scripts of what the worker says
    //! and when, and what the supervisor does and reports.

    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Arc;

    use drover_protocol::{Assign, ChunkRef};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    use super::*;
    use crate::exec::FrameWindow;

    const SPOOL: &str = "/spool";

    /// A supervisor, its clock and the agent's end of the events.
    struct Harness {
        sup: Supervisor,
        t0: Instant,
        now: Instant,
        tx: UnboundedSender<WorkerEvent>,
        rx: UnboundedReceiver<WorkerEvent>,
        /// Each chunk's log as its pieces put it together, and whether
        /// its last piece came.
        logs: std::collections::HashMap<u32, (String, bool)>,
    }

    /// The agent's handles on a chunk.
    struct Held {
        key: ChunkKey,
        window: Arc<FrameWindow>,
        cancel: Arc<AtomicBool>,
    }

    fn key(index: u32) -> ChunkKey {
        ChunkKey {
            job: 7,
            index,
            epoch: 1,
        }
    }

    fn adapter() -> AdapterReport {
        AdapterReport {
            name: "agent's".into(),
            backend: "Vulkan".into(),
            device_type: "Cpu".into(),
            driver: String::new(),
            vendor_id: 0,
        }
    }

    impl Harness {
        /// A supervisor whose worker 1 is spawned and ready.
        fn ready() -> Harness {
            let mut h = Harness::new();
            assert_eq!(h.actions(), ["spawn 1"]);
            h.say(1, ready_msg());
            h
        }

        fn new() -> Harness {
            let t0 = Instant::now();
            let (tx, rx) = unbounded_channel();
            Harness {
                sup: Supervisor::new(t0, SPOOL.into(), Duration::from_secs(300), adapter()),
                t0,
                now: t0,
                tx,
                rx,
                logs: Default::default(),
            }
        }

        /// Moves the clock to `ms` after the start and ticks.
        fn at(&mut self, ms: u64) {
            self.now = self.t0 + Duration::from_millis(ms);
            self.sup.tick(self.now);
        }

        fn submit(&mut self, index: u32, start: u64, end: u64, frame_timeout_s: u32) -> Held {
            let chunk = ChunkRef::from(key(index));
            let window = Arc::new(FrameWindow::new(start, end).unwrap());
            let cancel = Arc::new(AtomicBool::new(false));
            let item = WorkItem {
                assign: Assign {
                    chunk,
                    start,
                    end,
                    fps: 24,
                    width: 64,
                    height: 64,
                    shader_source: "src".into(),
                    encoder: "libx264".into(),
                    crf: 23,
                    frame_timeout_s,
                },
                cancel: cancel.clone(),
                frames_done: Arc::new(AtomicU64::new(u64::MAX)),
                window: window.clone(),
                events: self.tx.clone(),
            };
            self.sup.submit(self.now, item);
            Held {
                key: key(index),
                window,
                cancel,
            }
        }

        fn say(&mut self, generation: u64, msg: FromWorker) {
            self.sup.message(self.now, generation, msg);
        }

        /// The worker asks for `frame` of chunk `index`; the answer.
        fn ask(&mut self, generation: u64, index: u32, frame: u64) -> bool {
            self.say(
                generation,
                FromWorker::Start {
                    chunk: key(index),
                    frame,
                },
            );
            // Earlier actions (the chunk's run) are not this test's point.
            let actions = self.actions();
            match actions.last() {
                Some(a) if *a == format!("answer {index} {frame} go") => true,
                Some(a) if *a == format!("answer {index} {frame} no") => false,
                _ => panic!("asked for frame {frame}: {actions:?}"),
            }
        }

        fn progress(&mut self, generation: u64, index: u32, frames_done: u64) {
            self.say(
                generation,
                FromWorker::Progress {
                    chunk: key(index),
                    frames_done,
                },
            );
        }

        fn finished(&mut self, generation: u64, index: u32, start: u64, end: u64) {
            self.say(
                generation,
                FromWorker::Finished {
                    chunk: key(index),
                    start,
                    end,
                    path: segment_path(std::path::Path::new(SPOOL), key(index).into()),
                    hash: "ab".repeat(32),
                    adapter: "worker's".into(),
                    elapsed_ms: 5,
                },
            );
        }

        /// What the supervisor asked of its driver since last asked.
        fn actions(&mut self) -> Vec<String> {
            std::iter::from_fn(|| self.sup.poll_action())
                .map(|a| match a {
                    Action::Spawn { generation } => format!("spawn {generation}"),
                    Action::Send(ToWorker::Run(job)) => format!("run {}", job.chunk.index),
                    Action::Send(ToWorker::Answer { chunk, frame, go }) => {
                        format!(
                            "answer {} {frame} {}",
                            chunk.index,
                            if go { "go" } else { "no" }
                        )
                    }
                    Action::Send(ToWorker::Cancel { chunk }) => format!("cancel {}", chunk.index),
                    Action::Send(ToWorker::Init { .. }) => "init".into(),
                    Action::Kill => "kill".into(),
                    Action::Discard(p) => format!("discard {}", p.display()),
                })
                .collect()
        }

        /// What the agent heard since last asked; log pieces are put
        /// together in [`Harness::logs`] instead, checking that they follow
        /// each other and that the last comes right before the chunk's end.
        fn events(&mut self) -> Vec<String> {
            let mut events = Vec::new();
            while let Ok(e) = self.rx.try_recv() {
                let ended = match &e {
                    WorkerEvent::Finished { assign, .. } => Some(assign.chunk.index),
                    WorkerEvent::Failed { chunk, reason, .. }
                        if reason != "cancelled before it started" =>
                    {
                        Some(chunk.index)
                    }
                    _ => None,
                };
                if let Some(index) = ended {
                    let log = self.logs.get(&index);
                    assert!(
                        log.is_some_and(|l| l.1),
                        "chunk {index} ended before its log: {log:?}"
                    );
                }
                if let WorkerEvent::Log {
                    chunk,
                    offset,
                    text,
                    last,
                } = e
                {
                    let log = self.logs.entry(chunk.index).or_default();
                    assert!(!log.1, "a piece after the last of chunk {}", chunk.index);
                    assert_eq!(offset as usize, log.0.len(), "pieces follow each other");
                    log.0.push_str(&text);
                    log.1 = last;
                    continue;
                }
                events.push(e);
            }
            events
                .into_iter()
                .map(|e| match e {
                    WorkerEvent::Progress {
                        chunk,
                        frames_done,
                        total,
                    } => format!("progress {} {frames_done}/{total}", chunk.index),
                    WorkerEvent::Finished {
                        assign, start, end, ..
                    } => format!("finished {} {start}-{end}", assign.chunk.index),
                    WorkerEvent::Failed {
                        chunk,
                        reason,
                        failed_frame,
                        ..
                    } => format!("failed {} {failed_frame:?}: {reason}", chunk.index),
                    WorkerEvent::Log { .. } => unreachable!("taken above"),
                })
                .collect()
        }

        /// Chunk `index`'s log so far.
        fn log(&mut self, index: u32) -> String {
            self.events();
            self.logs
                .get(&index)
                .map(|l| l.0.clone())
                .unwrap_or_default()
        }

        fn ms(&self, at: Option<Instant>) -> Option<u64> {
            at.map(|t| t.duration_since(self.t0).as_millis() as u64)
        }
    }

    fn ready_msg() -> FromWorker {
        FromWorker::Ready {
            adapter: "worker's".into(),
            device_type: "Cpu".into(),
        }
    }

    #[test]
    fn a_chunk_runs_frame_by_frame_and_finishes() {
        let mut h = Harness::ready();
        let c = h.submit(0, 10, 12, 0);
        assert_eq!(h.actions(), ["run 0"]);
        assert_eq!(h.events(), ["progress 0 0/3"]);
        assert!(h.ask(1, 0, 10) && h.ask(1, 0, 11));
        h.progress(1, 0, 1);
        assert!(h.ask(1, 0, 12));
        h.progress(1, 0, 2);
        h.progress(1, 0, 3);
        assert!(!h.ask(1, 0, 13), "past the window's end");
        h.say(1, FromWorker::Rendered { chunk: c.key });
        h.finished(1, 0, 10, 12);
        assert_eq!(
            h.events(),
            [
                "progress 0 1/3",
                "progress 0 2/3",
                "progress 0 3/3",
                "finished 0 10-12"
            ]
        );
        assert!(h.actions().is_empty());
        h.sup.close(h.now);
        assert!(h.sup.is_done());
    }

    /// The window decides each frame under its lock, so the agent's shrink
    /// answer is exactly the segment's end.
    #[test]
    fn a_shrink_ends_the_chunk_where_it_answered() {
        let mut h = Harness::ready();
        let c = h.submit(0, 10, 99, 0);
        h.actions();
        assert!(h.ask(1, 0, 10) && h.ask(1, 0, 11));
        assert_eq!(c.window.shrink(10), Some(11));
        assert!(!h.ask(1, 0, 12));
        h.progress(1, 0, 2);
        h.say(1, FromWorker::Rendered { chunk: c.key });
        // A segment that does not match the answer is refused.
        h.finished(1, 0, 10, 12);
        let events = h.events();
        assert_eq!(
            events.last().unwrap(),
            "failed 0 None: the executor process wrote frames 10-12; the chunk holds 10-11"
        );
        assert_eq!(h.actions(), ["discard /spool/job-7-chunk-00000-e1.mp4"]);
        assert_eq!(c.window.shrink(11), None);
    }

    #[test]
    fn a_frame_past_its_limit_kills_the_worker_and_the_next_chunk_runs_in_a_new_one() {
        let mut h = Harness::ready();
        let hung = h.submit(0, 10, 19, 2);
        let next = h.submit(1, 20, 21, 0);
        assert_eq!(h.actions(), ["run 0"]);
        assert_eq!(h.ms(h.sup.poll_timeout()), Some(2_000));
        assert!(h.ask(1, 0, 10) && h.ask(1, 0, 11) && h.ask(1, 0, 12));
        h.at(1_500);
        h.progress(1, 0, 1);
        // The clock of frame 11 started when frame 10 was done.
        assert_eq!(h.ms(h.sup.poll_timeout()), Some(3_500));
        h.at(3_499);
        assert!(h.actions().is_empty());
        h.at(3_500);
        assert_eq!(
            h.actions(),
            ["kill", "discard /spool/job-7-chunk-00000-e1.mp4", "spawn 2"]
        );
        assert_eq!(
            h.events(),
            [
                "progress 0 0/10",
                "progress 0 1/10",
                "failed 0 Some(11): frame 11 exceeded the frame time limit of 2 s"
            ]
        );
        assert_eq!(hung.window.shrink(12), None);
        // The dead worker's last words are not heard.
        h.progress(1, 0, 2);
        assert!(h.actions().is_empty() && h.events().is_empty());
        h.say(2, ready_msg());
        assert_eq!(h.actions(), ["run 1"]);
        assert!(h.ask(2, 1, 20));
        assert_eq!(next.window.frames_started(), 1);
    }

    /// The chunk whose encoder is still flushing fails with the worker, and
    /// says why.
    #[test]
    fn a_kill_fails_the_flushing_chunk_too() {
        let mut h = Harness::ready();
        let a = h.submit(0, 0, 0, 0);
        h.submit(1, 1, 5, 1);
        assert!(h.ask(1, 0, 0));
        h.progress(1, 0, 1);
        h.say(1, FromWorker::Rendered { chunk: a.key });
        assert_eq!(h.actions(), ["run 1"]);
        h.at(1_000);
        assert_eq!(
            &h.actions()[..3],
            [
                "kill",
                "discard /spool/job-7-chunk-00000-e1.mp4",
                "discard /spool/job-7-chunk-00001-e1.mp4"
            ]
        );
        let events = h.events();
        assert_eq!(
            events[events.len() - 2..],
            [
                "failed 0 None: the executor process was killed (frame 1 exceeded the frame time limit of 1 s)",
                "failed 1 Some(1): frame 1 exceeded the frame time limit of 1 s"
            ]
        );
    }

    #[test]
    fn a_segment_has_the_longer_of_the_frame_limit_and_the_flush_minimum() {
        let mut h = Harness::ready();
        let c = h.submit(0, 0, 0, 2);
        assert!(h.ask(1, 0, 0));
        h.progress(1, 0, 1);
        h.at(100);
        h.say(1, FromWorker::Rendered { chunk: c.key });
        assert_eq!(
            h.ms(h.sup.poll_timeout()),
            Some(100 + FLUSH_TIMEOUT_MIN_S * 1000)
        );
        h.at(100 + FLUSH_TIMEOUT_MIN_S * 1000);
        assert_eq!(
            h.events().last().unwrap(),
            "failed 0 None: the segment was not finished within 60 s of its last frame"
        );
    }

    #[test]
    fn a_cancel_is_passed_on_and_a_worker_that_ignores_it_is_killed() {
        let mut h = Harness::ready();
        let a = h.submit(0, 0, 99, 0);
        assert!(h.ask(1, 0, 0));
        h.actions();
        a.cancel.store(true, Ordering::Relaxed);
        // No frame starts once cancelled, even before the worker hears.
        assert!(!h.ask(1, 0, 1));
        h.at(10);
        assert_eq!(h.actions(), ["cancel 0"]);
        assert_eq!(h.ms(h.sup.poll_timeout()), Some(10 + CANCEL_GRACE_MS));
        h.at(10 + CANCEL_GRACE_MS);
        assert_eq!(
            h.actions(),
            ["kill", "discard /spool/job-7-chunk-00000-e1.mp4", "spawn 2"]
        );
        assert_eq!(h.events().last().unwrap(), "failed 0 None: cancelled");

        // A worker that gives up in time is not killed.
        h.say(2, ready_msg());
        let b = h.submit(1, 0, 99, 0);
        h.actions();
        b.cancel.store(true, Ordering::Relaxed);
        h.at(3_000);
        assert_eq!(h.actions(), ["cancel 1"]);
        h.say(
            2,
            FromWorker::Failed {
                chunk: b.key,
                reason: "cancelled".into(),
                log_tail: String::new(),
                failed_frame: None,
            },
        );
        h.at(10_000);
        assert!(h.actions().is_empty());
        assert_eq!(h.events().last().unwrap(), "failed 1 None: cancelled");
    }

    #[test]
    fn a_queued_chunk_cancelled_never_reaches_the_worker() {
        let mut h = Harness::ready();
        h.submit(0, 0, 99, 0);
        let queued = h.submit(1, 100, 199, 0);
        queued.cancel.store(true, Ordering::Relaxed);
        h.at(50);
        assert_eq!(h.actions(), ["run 0"]);
        assert_eq!(
            h.events(),
            [
                "progress 0 0/100",
                "failed 1 None: cancelled before it started"
            ]
        );
    }

    #[test]
    fn a_worker_that_dies_fails_its_chunks_and_restarts_after_a_backoff() {
        let mut h = Harness::ready();
        let a = h.submit(0, 10, 19, 0);
        assert!(h.ask(1, 0, 10) && h.ask(1, 0, 11) && h.ask(1, 0, 12));
        h.progress(1, 0, 2);
        h.at(1_000);
        h.sup
            .exited(h.now, 1, "signal: 11 (SIGSEGV)", "thread panicked at ...");
        assert_eq!(
            h.actions(),
            ["kill", "discard /spool/job-7-chunk-00000-e1.mp4"]
        );
        assert_eq!(
            h.events().last().unwrap(),
            "failed 0 Some(12): the executor process died on frame 12 (signal: 11 (SIGSEGV))"
        );
        assert_eq!(a.window.shrink(15), None);
        assert_eq!(
            h.ms(h.sup.poll_timeout()),
            Some(1_000 + RESTART_BACKOFF_BASE_MS)
        );
        h.at(1_000 + RESTART_BACKOFF_BASE_MS);
        assert_eq!(h.actions(), ["spawn 2"]);
        // The second death in a row waits twice as long.
        h.say(2, ready_msg());
        h.at(2_000);
        h.sup.exited(h.now, 2, "exit status: 1", "");
        assert_eq!(h.actions(), ["kill"]);
        assert_eq!(
            h.ms(h.sup.poll_timeout()),
            Some(2_000 + 2 * RESTART_BACKOFF_BASE_MS)
        );
    }

    /// A worker that cannot start fails the chunk waiting first on each
    /// attempt, and the attempts back off.
    #[test]
    fn a_worker_that_cannot_start_fails_waiting_chunks_and_backs_off() {
        let mut h = Harness::new();
        assert_eq!(h.actions(), ["spawn 1"]);
        h.submit(0, 0, 9, 0);
        h.submit(1, 10, 19, 0);
        h.sup
            .spawn_failed(h.now, 1, "/bin/drover: not found".into());
        assert_eq!(h.actions(), ["kill"]);
        assert_eq!(
            h.events(),
            ["failed 0 None: the executor process did not start: /bin/drover: not found"]
        );
        h.at(RESTART_BACKOFF_BASE_MS);
        assert_eq!(h.actions(), ["spawn 2"]);
        h.say(
            2,
            FromWorker::Fatal {
                reason: "no render device".into(),
            },
        );
        assert_eq!(
            h.events(),
            ["failed 1 None: the executor process did not start: no render device"]
        );
        assert_eq!(
            h.ms(h.sup.poll_timeout()),
            Some(3 * RESTART_BACKOFF_BASE_MS)
        );
        // One that never says it is ready is given up on too.
        h.at(3 * RESTART_BACKOFF_BASE_MS);
        assert_eq!(h.actions(), ["kill", "spawn 3"]);
        h.at(3 * RESTART_BACKOFF_BASE_MS + WORKER_STARTUP_TIMEOUT_S * 1000);
        assert_eq!(h.actions(), ["kill"]);
    }

    /// A chunk whose encoder failed (reported from the encoder's thread)
    /// while its renderer was still asking: the late question gets a no and
    /// the late progress is dropped; the worker is not killed.
    #[test]
    fn late_words_about_an_ended_chunk_are_answered_no() {
        let mut h = Harness::ready();
        let c = h.submit(0, 0, 9, 0);
        assert!(h.ask(1, 0, 0));
        h.say(
            1,
            FromWorker::Failed {
                chunk: c.key,
                reason: "encode: broken pipe".into(),
                log_tail: String::new(),
                failed_frame: None,
            },
        );
        h.progress(1, 0, 1);
        assert!(!h.ask(1, 0, 1));
        assert_eq!(
            h.events(),
            ["progress 0 0/10", "failed 0 None: encode: broken pipe"]
        );
        assert_eq!(h.sup.generation(), Some(1));
    }

    #[test]
    fn restart_backoff_doubles_up_to_its_cap() {
        let ms = |n| restart_backoff(n).as_millis() as u64;
        assert_eq!(ms(0), 0);
        assert_eq!(ms(1), RESTART_BACKOFF_BASE_MS);
        assert_eq!(ms(2), 2 * RESTART_BACKOFF_BASE_MS);
        assert_eq!(ms(4), 8 * RESTART_BACKOFF_BASE_MS);
        assert_eq!(ms(10), RESTART_BACKOFF_MAX_MS);
        assert_eq!(ms(u32::MAX), RESTART_BACKOFF_MAX_MS);
    }

    /// A worker that says what it cannot mean is killed; its chunk fails
    /// naming the breach.
    #[test]
    fn a_worker_that_breaks_the_protocol_is_killed() {
        let check = |script: &dyn Fn(&mut Harness), want: &str| {
            let mut h = Harness::ready();
            h.submit(0, 10, 19, 0);
            assert!(h.ask(1, 0, 10));
            h.actions();
            script(&mut h);
            assert_eq!(
                h.actions(),
                ["kill", "discard /spool/job-7-chunk-00000-e1.mp4"],
                "{want}"
            );
            // A broken worker may break again: the next one backs off.
            assert_eq!(h.ms(h.sup.poll_timeout()), Some(RESTART_BACKOFF_BASE_MS));
            let got = h.events().pop().unwrap();
            assert_eq!(
                got,
                format!("failed 0 None: the executor process broke its protocol: {want}")
            );
        };
        check(
            &|h| {
                h.say(
                    1,
                    FromWorker::Start {
                        chunk: key(0),
                        frame: 15,
                    },
                );
            },
            "asked to start frame 15; the next frame is 11",
        );
        check(
            &|h| h.progress(1, 0, 2),
            "reported 2 frames done after 0, with 1 started",
        );
        check(
            &|h| h.finished(1, 5, 0, 0),
            "finished ChunkKey { job: 7, index: 5, epoch: 1 }, which it does not hold",
        );
        check(&|h| h.say(1, ready_msg()), "said it was ready twice");
        check(
            &|h| h.sup.garbled(h.now, 1, "unreadable message: x".into()),
            "unreadable message: x",
        );

        // Garbage before it is ready (another program's output, say) is a
        // worker that did not start.
        let mut h = Harness::new();
        h.submit(0, 0, 9, 0);
        h.sup
            .garbled(h.now, 1, "unreadable message: expected value".into());
        assert_eq!(h.actions(), ["spawn 1", "kill"]);
        assert_eq!(
            h.events(),
            ["failed 0 None: the executor process did not start: it wrote unreadable message: expected value"]
        );
        assert_eq!(h.ms(h.sup.poll_timeout()), Some(RESTART_BACKOFF_BASE_MS));
    }

    /// A chunk's log holds the worker's lines about it and this side's
    /// notes; its head goes out while it runs, the rest before its end.
    #[test]
    fn a_chunk_keeps_its_log_and_ships_it_before_its_end() {
        let mut h = Harness::ready();
        let c = h.submit(0, 10, 12, 2);
        h.actions();
        let line = |h: &mut Harness, text: &str| {
            h.say(
                1,
                FromWorker::Log {
                    chunk: c.key,
                    line: text.into(),
                },
            )
        };
        line(&mut h, "adapter llvmpipe");
        assert!(h.ask(1, 0, 10));
        line(&mut h, "frame 10: 3.0 ms");
        // Nothing goes before the flush interval, everything after it.
        h.at(LOG_FLUSH_INTERVAL_MS - 1);
        assert_eq!(h.log(0), "");
        h.at(LOG_FLUSH_INTERVAL_MS);
        assert_eq!(
            h.log(0),
            "job 7 chunk 0 (attempt epoch 1): frames 10-12, sent to the node's executor process #1, frame time limit 2 s\n\
             adapter llvmpipe\nframe 10: 3.0 ms\n"
        );
        // What the worker writes on stderr goes to the chunks it holds,
        // without terminal colours; an older worker's does not.
        h.sup
            .stderr_line(1, "\x1b[33m WARN\x1b[0m x264: [warning] VBV underflow");
        h.sup.stderr_line(0, "an older worker");
        h.at(LOG_FLUSH_INTERVAL_MS * 2);
        assert!(
            h.log(0)
                .ends_with("frame 10: 3.0 ms\nstderr:  WARN x264: [warning] VBV underflow\n"),
            "{}",
            h.log(0)
        );
        // A line for another chunk is not this one's.
        h.say(
            1,
            FromWorker::Log {
                chunk: key(5),
                line: "stray".into(),
            },
        );
        // The frame passes its limit: the kill names it, last in the log.
        h.at(2_000);
        let log = h.log(0);
        assert!(
            log.ends_with(
                "VBV underflow\n\
                 chunk failed on frame 10: frame 10 exceeded the frame time limit of 2 s\n\
                 the executor process was killed: frame 10 exceeded the frame time limit of 2 s\n"
            ),
            "{log}"
        );
        assert!(h.logs[&0].1, "complete");
        assert!(!log.contains("stray"));
    }

    #[test]
    fn a_finished_or_failed_chunk_says_how_it_ended() {
        let mut h = Harness::ready();
        let c = h.submit(0, 0, 0, 0);
        assert!(h.ask(1, 0, 0));
        h.progress(1, 0, 1);
        h.say(1, FromWorker::Rendered { chunk: c.key });
        h.finished(1, 0, 0, 0);
        assert!(
            h.log(0)
                .ends_with("chunk finished: frames 0-0 in 5 ms on worker's\n"),
            "{}",
            h.log(0)
        );

        let d = h.submit(1, 1, 9, 0);
        assert!(h.ask(1, 1, 1));
        h.say(
            1,
            FromWorker::Failed {
                chunk: d.key,
                reason: "test aid: frame 1 fails (--fail-frame)".into(),
                log_tail: String::new(),
                failed_frame: Some(1),
            },
        );
        assert!(h
            .log(1)
            .ends_with("chunk failed on frame 1: test aid: frame 1 fails (--fail-frame)\n"));

        // A worker that dies leaves its last stderr lines in the log.
        let e = h.submit(2, 10, 19, 0);
        h.actions();
        assert!(h.ask(1, 2, 10));
        h.sup.exited(
            h.now,
            1,
            "signal: 11 (SIGSEGV)",
            "panicked at render.rs\nnote: backtrace",
        );
        let log = h.log(2);
        assert!(log.contains("chunk failed on frame 10: the executor process died on frame 10 (signal: 11 (SIGSEGV))\n"), "{log}");
        assert!(
            log.ends_with("panicked at render.rs\nnote: backtrace\n"),
            "{log}"
        );
        assert_eq!(e.window.shrink(12), None);
    }
}

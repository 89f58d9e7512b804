//! The actix actors that own the coordinator's state.
//!
//! - [`Scheduler`] owns the sans-IO [`Core`], the [`Journal`] and the table of
//!   live sessions. It feeds every event to the core, carries out the
//!   commands that come back (welcomes and refusals, assignments, shrinks
//!   and cancels to sessions, records to the journal, finished jobs to the
//!   muxer on a blocking thread), and arms one timer for the core's next
//!   deadline.
//! - [`NodeSession`], one per node connection, turns wire messages into core
//!   events and core commands into wire messages. It decides nothing: upload
//!   admission, node admission and the encoder are the core's decisions.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use drover_protocol::{Assign, ChunkRef, CoordToNode, NodeToCoord};
use drover_shared::api::{JobState, JobView, NodeView};
use drover_shared::caps::Capabilities;
use drover_shared::spec::JobSpec;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::events::{EventBus, NewEvent};
use crate::journal::scheduler::SchedulerJournal as Journal;
use crate::journal::Seq;
use crate::sched::Fact;
use crate::sched::{
    ChunkKey, ChunkReport, Command, Core, Event, NodeId, Owner, RunningReport, SpooledReport,
    UploadVerdict,
};
use crate::store::ArtifactStore;

fn node_event(kind: &'static str, node: &str) -> NewEvent {
    NewEvent {
        kind,
        job: None,
        project: None,
        node: Some(node.to_string()),
        data: serde_json::json!({}),
    }
}

/// Milliseconds since the Unix epoch, read once at start and advanced by
/// the monotonic clock: the clock injected into the core. A wall-clock step
/// (NTP) must not reap every node at once or reorder events.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    let (t0, wall0) = START.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        (std::time::Instant::now(), wall)
    });
    wall0 + t0.elapsed().as_millis() as u64
}

/// Where the journal's writer thread reports durability: the scheduler
/// sets it when it starts.
pub type DurableCell = Arc<OnceLock<Recipient<Durable>>>;

/// The callback [`crate::journal::scheduler::open`] takes: forwards each durable
/// watermark (or the journal's failure) to the scheduler.
pub fn durable_callback(cell: DurableCell) -> crate::journal::OnDurable {
    Box::new(move |r| {
        if let Some(rc) = cell.get() {
            rc.do_send(Durable(r.map_err(|e| e.to_string())));
        }
    })
}

/// Effects held back until the facts before them are durable.
struct Held {
    /// The journal position they wait for.
    seq: Seq,
    commands: Vec<Command>,
    /// Answers (to a client, an upload) released with them.
    waiters: Vec<oneshot::Sender<()>>,
    /// Changes published to the event stream with them.
    events: Vec<NewEvent>,
    /// Webhook deliveries enqueued with them.
    hooks: Vec<HookCall>,
}

/// A job outcome to deliver to the job's webhooks.
#[derive(Debug, Clone)]
pub struct HookCall {
    /// Job.
    pub job: u64,
    /// `job.done`, `job.failed` or `job.cancelled`.
    pub event: &'static str,
    /// The job's webhook URLs.
    pub urls: Vec<String>,
    /// The body: the event, the job's summary and where its files are.
    pub body: serde_json::Value,
}

/// The body of a webhook call: what happened, the job as a list shows it,
/// and the URL paths to read more.
pub fn hook_body(event: &str, view: &JobView) -> serde_json::Value {
    serde_json::json!({
        "event": event,
        "job": drover_shared::api::JobSummary::from(view),
        "job_url": format!("/v1/jobs/{}", view.id),
        "artifacts_url": (view.state == JobState::Done)
            .then(|| format!("/v1/jobs/{}/artifacts", view.id)),
    })
}

/// Enqueues webhook calls off the actor's thread (the enqueue waits for
/// its journal's fsync).
pub fn enqueue_hooks(hooks: &crate::webhook::Webhooks, calls: Vec<HookCall>) {
    if calls.is_empty() {
        return;
    }
    let hooks = hooks.clone();
    tokio::task::spawn_blocking(move || {
        for c in calls {
            match hooks.enqueue(c.job, c.event, &c.urls, &c.body) {
                Ok(()) => info!(
                    job = c.job,
                    event = c.event,
                    urls = c.urls.len(),
                    "webhooks enqueued"
                ),
                Err(e) => error!(job = c.job, event = c.event, "webhooks not enqueued: {e:#}"),
            }
        }
    });
}

/// The scheduler actor.
pub struct Scheduler {
    core: Core,
    journal: Journal,
    store: ArtifactStore,
    /// Every session that sent a hello, by session id.
    sessions: HashMap<u64, Addr<NodeSession>>,
    /// The session of each admitted node.
    by_node: HashMap<NodeId, u64>,
    /// The core's answer to a hello, read back by [`SessionOpened`].
    hello_answers: HashMap<u64, Result<NodeId, String>>,
    pending_commands: Vec<Command>,
    /// The deadline the armed timer wakes the core for.
    armed: Option<(u64, SpawnHandle)>,
    /// Effects waiting for the journal, in order.
    outbox: VecDeque<Held>,
    /// The last journal position appended, and the last known durable.
    appended: Seq,
    durable: Seq,
    durable_cell: DurableCell,
    /// False once shutdown began: no new jobs.
    accepting: bool,
    /// The event stream.
    events: EventBus,
    /// Events of the change being committed that no fact carries (a node
    /// connected or left).
    pending_events: Vec<NewEvent>,
    /// Webhook deliveries (`None`: webhooks off, in tests of the actors).
    hooks: Option<crate::webhook::Webhooks>,
    /// Chunk logs (`None`: off, in tests of the actors); see
    /// [`Scheduler::with_chunk_logs`].
    chunk_logs: Option<crate::chunklog::ChunkLogs>,
}

impl Scheduler {
    /// A scheduler over a restored core; `startup` are the commands
    /// [`Core::restore`] returned (muxes to redo).
    pub fn new(
        core: Core,
        journal: Journal,
        store: ArtifactStore,
        startup: Vec<Command>,
        durable_cell: DurableCell,
        events: EventBus,
        hooks: Option<crate::webhook::Webhooks>,
    ) -> Self {
        let durable = journal.durable();
        Scheduler {
            core,
            journal,
            store,
            sessions: HashMap::new(),
            by_node: HashMap::new(),
            hello_answers: HashMap::new(),
            pending_commands: startup,
            armed: None,
            outbox: VecDeque::new(),
            appended: durable,
            durable,
            durable_cell,
            accepting: true,
            events,
            pending_events: Vec::new(),
            hooks,
            chunk_logs: None,
        }
    }

    /// The webhook calls a commit's facts make: a job done, failed or
    /// cancelled that names webhooks.
    fn hook_calls(&self, facts: &[Fact]) -> Vec<HookCall> {
        let mut out = Vec::new();
        for f in facts {
            let (job, event) = match f {
                Fact::Output { job, .. } => (*job, "job.done"),
                Fact::Ended { job, state, .. } if *state == JobState::Cancelled => {
                    (*job, "job.cancelled")
                }
                Fact::Ended { job, .. } => (*job, "job.failed"),
                _ => continue,
            };
            let Some(r) = self.core.record(job) else {
                continue;
            };
            if r.spec.webhooks.is_empty() {
                continue;
            }
            let Some(view) = self.core.job_view(job) else {
                continue;
            };
            out.push(HookCall {
                job,
                event,
                urls: r.spec.webhooks.clone(),
                body: hook_body(event, &view),
            });
        }
        out
    }

    fn release(&mut self, events: Vec<NewEvent>, hooks: Vec<HookCall>) {
        self.events.publish(events);
        if let Some(h) = &self.hooks {
            enqueue_hooks(h, hooks);
        }
    }

    /// What the event stream shows of a commit's facts.
    fn events_of(&self, facts: &[Fact]) -> Vec<NewEvent> {
        let mut out = self.pending_events.clone();
        for f in facts {
            let (kind, node, extra) = match f {
                Fact::Accepted { .. } => ("job.submitted", None, None),
                Fact::Started { .. } => ("job.started", None, None),
                Fact::Stored {
                    node, start, end, ..
                } => (
                    "job.progress",
                    Some(node.clone()),
                    Some(serde_json::json!({ "start": start, "end": end })),
                ),
                Fact::Joining { .. } => ("job.joining", None, None),
                Fact::Output { .. } => ("job.done", None, None),
                Fact::Ended { state, .. } => (
                    if *state == JobState::Cancelled {
                        "job.cancelled"
                    } else {
                        "job.failed"
                    },
                    None,
                    None,
                ),
                Fact::Retried { .. } => ("job.retried", None, None),
                Fact::Paused { paused, .. } => (
                    if *paused { "job.paused" } else { "job.resumed" },
                    None,
                    None,
                ),
                Fact::Priority { .. } => ("job.priority", None, None),
                Fact::Drained { node, drained } => {
                    out.push(node_event(
                        if *drained {
                            "node.drained"
                        } else {
                            "node.undrained"
                        },
                        node,
                    ));
                    continue;
                }
                Fact::Quarantined { node, reason } => {
                    let mut e = node_event(
                        if reason.is_some() {
                            "node.quarantined"
                        } else {
                            "node.cleared"
                        },
                        node,
                    );
                    e.data = serde_json::json!({ "reason": reason });
                    out.push(e);
                    continue;
                }
                _ => continue,
            };
            let Some(job) = f.job() else { continue };
            let Some(summary) = self.core.job_summary(job) else {
                continue;
            };
            let project = summary.project.clone();
            let mut data = serde_json::to_value(summary).unwrap_or_default();
            if let (Some(extra), Some(obj)) = (extra, data.as_object_mut()) {
                obj.insert("chunk".into(), extra);
            }
            out.push(NewEvent {
                kind,
                job: Some(job),
                project: Some(project),
                node,
                data,
            });
        }
        out
    }

    fn apply(&mut self, event: Event, ctx: &mut Context<Self>) {
        crate::metrics::global().event_seen(&self.core, &event);
        let decided = std::time::Instant::now();
        let cmds = self.core.handle(now_ms(), event);
        crate::metrics::global()
            .decision_latency
            .observe(decided.elapsed().as_secs_f64());
        self.commit(cmds, None, ctx);
    }

    /// The write-ahead rule: the facts of an event go to the journal, and
    /// every effect of it a node, a client or the disk would act on waits
    /// until they are durable (and behind any effect still waiting, so
    /// nodes see commands in the core's order). Welcomes and refusals are
    /// answers to a hello and change nothing durable: they go at once.
    fn commit(
        &mut self,
        cmds: Vec<Command>,
        waiter: Option<oneshot::Sender<()>>,
        ctx: &mut Context<Self>,
    ) {
        let facts = self.core.take_facts();
        crate::metrics::global().count_facts(&facts);
        let events = self.events_of(&facts);
        let hooks = self.hook_calls(&facts);
        self.pending_events.clear();
        let (now, later): (Vec<Command>, Vec<Command>) = cmds
            .into_iter()
            .partition(|c| matches!(c, Command::Welcome { .. } | Command::Refuse { .. }));
        self.execute(now, ctx);
        if !facts.is_empty() {
            match self.journal.append(facts) {
                Ok(seq) => self.appended = seq,
                Err(e) => journal_failed(&e.to_string()),
            }
        }
        if self.outbox.is_empty() && self.appended <= self.durable {
            self.execute(later, ctx);
            self.release(events, hooks);
            if let Some(w) = waiter {
                let _ = w.send(());
            }
            return;
        }
        self.outbox.push_back(Held {
            seq: self.appended,
            commands: later,
            waiters: waiter.into_iter().collect(),
            events,
            hooks,
        });
        self.rearm(ctx);
    }

    /// A receiver that fires once everything committed so far is durable.
    fn after_durable(&mut self, ctx: &mut Context<Self>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.commit(Vec::new(), Some(tx), ctx);
        rx
    }

    /// Wakes the core at its next deadline, and only then.
    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let next = self.core.poll_timeout();
        match (next, &self.armed) {
            (Some(at), Some((armed, _))) if *armed <= at => return,
            (None, None) => return,
            _ => {}
        }
        if let Some((_, handle)) = self.armed.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let delay = Duration::from_millis(at.saturating_sub(now_ms()));
            let handle = ctx.run_later(delay, |act, ctx| {
                act.armed = None;
                act.apply(Event::Timeout, ctx);
            });
            self.armed = Some((at, handle));
        }
    }

    fn deliver(&self, node: NodeId, msg: CoordToNode) {
        if let Some(addr) = self.by_node.get(&node).and_then(|s| self.sessions.get(s)) {
            addr.do_send(Deliver(msg));
        }
    }

    fn execute(&mut self, cmds: Vec<Command>, ctx: &mut Context<Self>) {
        for cmd in cmds {
            match cmd {
                Command::Welcome { session, node } => {
                    self.by_node.insert(node, session);
                    if let Some(addr) = self.sessions.get(&session) {
                        addr.do_send(Admitted(node));
                    }
                    self.hello_answers.insert(session, Ok(node));
                }
                Command::Refuse { session, reason } => {
                    self.hello_answers.insert(session, Err(reason));
                }
                Command::CloseSession { session } => {
                    if let Some(addr) = self.sessions.remove(&session) {
                        addr.do_send(Close);
                    }
                    self.by_node.retain(|_, s| *s != session);
                }
                Command::Assign { node, assignment } => {
                    let spec = &assignment.spec;
                    let (job, index) = assignment.chunk;
                    info!(job, chunk = index, epoch = assignment.epoch,
                        node = self.core.node_name(node).unwrap_or("?"),
                        frames = %format!("{}-{}", assignment.start, assignment.end), "assign");
                    let msg = CoordToNode::Assign(Assign {
                        chunk: chunk_ref(assignment.chunk, assignment.epoch),
                        start: assignment.start,
                        end: assignment.end,
                        fps: spec.fps,
                        width: spec.resolution.width,
                        height: spec.resolution.height,
                        shader_source: spec.shader_source().to_string(),
                        encoder: assignment.encoder.to_string(),
                        crf: spec.output.quality,
                        frame_timeout_s: spec.frame_timeout_s.unwrap_or(0),
                    });
                    self.deliver(node, msg);
                }
                Command::Cancel { node, chunk, epoch } => {
                    self.deliver(node, CoordToNode::Cancel(chunk_ref(chunk, epoch)));
                }
                Command::Shrink {
                    node,
                    chunk,
                    epoch,
                    proposed_end,
                } => {
                    info!(
                        job = chunk.0,
                        chunk = chunk.1,
                        proposed_end,
                        node = self.core.node_name(node).unwrap_or("?"),
                        "shrink"
                    );
                    self.deliver(
                        node,
                        CoordToNode::Shrink {
                            chunk: chunk_ref(chunk, epoch),
                            proposed_end,
                        },
                    );
                }
                Command::Discard { job } => {
                    // Carried out only once the job's end is durable (the
                    // write-ahead rule), so no restored job can need a
                    // deleted segment. The journal hears `Discarded` after
                    // the files are gone.
                    let dir = self.store.job_dir(job);
                    let addr = ctx.address();
                    actix::spawn(async move {
                        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
                            while let Ok(Some(e)) = entries.next_entry().await {
                                let name = e.file_name().to_string_lossy().into_owned();
                                // Segments and partial uploads of the job;
                                // its output stays.
                                if name.starts_with("chunk-") {
                                    let _ = tokio::fs::remove_file(e.path()).await;
                                }
                            }
                        }
                        addr.do_send(Discarded(job));
                    });
                }
                Command::Mux { job, segments } => {
                    let out = self.store.output_path(job);
                    let addr = ctx.address();
                    let (frames, fps) = self.core.job_frames(job);
                    let frames = crate::mux::Expected { frames, fps };
                    info!(job, segments = segments.len(), "joining segments");
                    actix::spawn(async move {
                        let segs: Vec<PathBuf> = segments.iter().map(PathBuf::from).collect();
                        let out2 = out.clone();
                        let res = tokio::task::spawn_blocking(move || {
                            crate::mux::join_and_verify(&segs, &out2, frames)
                        })
                        .await;
                        let event = match res {
                            Ok(Ok(report)) => {
                                info!(
                                    job,
                                    frames = report.frames,
                                    bytes = report.bytes,
                                    "output written, synced and verified"
                                );
                                Event::MuxDone {
                                    job,
                                    output: out.display().to_string(),
                                }
                            }
                            Ok(Err(e)) => Event::MuxFailed {
                                job,
                                reason: e.to_string(),
                            },
                            Err(e) => Event::MuxFailed {
                                job,
                                reason: e.to_string(),
                            },
                        };
                        addr.do_send(CoreEvent(event));
                    });
                }
            }
        }
        self.rearm(ctx);
    }
}

/// The journal cannot write: nothing more may be acknowledged, so the
/// coordinator stops; a restart replays what is durable.
fn journal_failed(why: &str) -> ! {
    error!("the journal failed ({why}); stopping so that nothing unrecorded is acknowledged. Check the data dir's disk, then start again: what was durable is replayed");
    std::process::exit(70)
}

/// The journal's writer made facts durable up to a position, or failed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Durable(pub Result<Seq, String>);

impl Handler<Durable> for Scheduler {
    type Result = ();
    fn handle(&mut self, msg: Durable, ctx: &mut Context<Self>) {
        let seq = match msg.0 {
            Ok(seq) => seq,
            Err(e) => journal_failed(&e),
        };
        self.durable = self.durable.max(seq);
        while self.outbox.front().is_some_and(|h| h.seq <= self.durable) {
            let held = self.outbox.pop_front().expect("checked");
            self.execute(held.commands, ctx);
            self.release(held.events, held.hooks);
            for w in held.waiters {
                let _ = w.send(());
            }
        }
    }
}

/// A job's segments are deleted.
#[derive(Message)]
#[rtype(result = "()")]
struct Discarded(u64);

impl Handler<Discarded> for Scheduler {
    type Result = ();
    fn handle(&mut self, msg: Discarded, _: &mut Context<Self>) {
        if let Err(e) = self.journal.append(vec![Fact::Discarded { job: msg.0 }]) {
            journal_failed(&e.to_string());
        }
    }
}

fn chunk_ref(chunk: ChunkKey, epoch: u32) -> ChunkRef {
    ChunkRef {
        job: chunk.0,
        index: chunk.1,
        epoch,
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The journal's writer reports here from now on; nothing was
        // appended before.
        let _ = self.durable_cell.set(ctx.address().recipient());
        let startup = std::mem::take(&mut self.pending_commands);
        self.commit(startup, None, ctx);
        self.prune_chunk_logs_every(ctx);
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitError {
    /// The coordinator is stopping.
    ShuttingDown,
    /// The key has as many jobs queued or running as it may.
    TooManyJobs {
        /// Its limit.
        limit: u32,
    },
    /// The scheduler stopped before the job was durable.
    Stopped,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::ShuttingDown => f.write_str(SHUTTING_DOWN),
            SubmitError::TooManyJobs { limit } => write!(
                f,
                "this key has {limit} jobs queued or running, its limit (max_active_jobs); submit again when one ends"
            ),
            SubmitError::Stopped => f.write_str("the scheduler stopped"),
        }
    }
}

/// Submit a validated spec for a key. Answers once its acceptance is
/// durable.
#[derive(Message)]
#[rtype(result = "Result<u64, SubmitError>")]
pub struct Submit {
    /// The spec.
    pub spec: JobSpec,
    /// The key submitting it.
    pub owner: Owner,
    /// Jobs the key may have queued or running at once.
    pub max_active_jobs: u32,
}

impl Handler<Submit> for Scheduler {
    type Result = ResponseFuture<Result<u64, SubmitError>>;
    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        if !self.accepting {
            return Box::pin(async { Err(SubmitError::ShuttingDown) });
        }
        if self.core.active_jobs_of(&msg.owner.key) >= msg.max_active_jobs as usize {
            let limit = msg.max_active_jobs;
            return Box::pin(async move { Err(SubmitError::TooManyJobs { limit }) });
        }
        let decided = std::time::Instant::now();
        let (id, cmds) = self.core.submit(now_ms(), msg.spec, msg.owner);
        crate::metrics::global()
            .decision_latency
            .observe(decided.elapsed().as_secs_f64());
        // Durable first, then visible to nodes and to the client: the
        // assignments and the 201 wait behind the acceptance fact.
        let (tx, rx) = oneshot::channel();
        self.commit(cmds, Some(tx), ctx);
        Box::pin(async move {
            rx.await.map_err(|_| SubmitError::Stopped)?;
            info!(job = id, "job accepted");
            Ok(id)
        })
    }
}

/// Why a submission is refused during shutdown.
pub const SHUTTING_DOWN: &str = "the coordinator is shutting down; submit again once it is back";

/// Outcome of a cancel request.
#[derive(Debug, PartialEq)]
pub enum CancelOutcome {
    /// Cancelled now.
    Cancelled,
    /// No such job.
    NotFound,
    /// Already in a terminal state (given).
    AlreadyFinished(drover_shared::api::JobState),
    /// Its segments are being joined into the output: a cancel now would
    /// delete files under the join.
    Joining,
}

/// Cancel a job. Answers once the cancel is durable.
#[derive(Message)]
#[rtype(result = "CancelOutcome")]
pub struct CancelJob(pub u64);

impl Handler<CancelJob> for Scheduler {
    type Result = ResponseFuture<CancelOutcome>;
    fn handle(&mut self, msg: CancelJob, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = match self.core.job_state(msg.0) {
            None => CancelOutcome::NotFound,
            Some(s) if s.is_terminal() => CancelOutcome::AlreadyFinished(s),
            Some(drover_shared::api::JobState::Muxing) => CancelOutcome::Joining,
            Some(_) => CancelOutcome::Cancelled,
        };
        if outcome != CancelOutcome::Cancelled {
            return Box::pin(async move { outcome });
        }
        info!(job = msg.0, "cancel requested");
        self.apply(Event::CancelJob { job: msg.0 }, ctx);
        let rx = self.after_durable(ctx);
        Box::pin(async move {
            let _ = rx.await;
            CancelOutcome::Cancelled
        })
    }
}

/// Re-run what a failed or cancelled job is missing. Answers once that is
/// durable, with the job, or why not (`Err((status, why))`: 404 or 409).
#[derive(Message)]
#[rtype(result = "Result<JobView, (u16, String)>")]
pub struct RetryJob(pub u64);

impl Handler<RetryJob> for Scheduler {
    type Result = ResponseFuture<Result<JobView, (u16, String)>>;
    fn handle(&mut self, msg: RetryJob, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        if let Err(why) = self.core.may_retry(id) {
            let status = if self.core.job_state(id).is_none() {
                404
            } else {
                409
            };
            return Box::pin(async move { Err((status, why)) });
        }
        info!(job = id, "retry requested");
        self.apply(Event::RetryJob { job: id }, ctx);
        let view = self.core.job_view(id);
        let rx = self.after_durable(ctx);
        Box::pin(async move {
            let _ = rx.await;
            view.ok_or((404, format!("job {id} vanished")))
        })
    }
}

/// Drain a node (stop new work; `now`: hand back what it has not rendered)
/// or undrain it. Answers once durable with the node, or 404.
#[derive(Message)]
#[rtype(result = "Result<NodeView, (u16, String)>")]
pub struct DrainNode {
    /// Node name.
    pub name: String,
    /// Drain (`Some(now)`) or undrain (`None`).
    pub drain: Option<bool>,
}

impl Handler<DrainNode> for Scheduler {
    type Result = ResponseFuture<Result<NodeView, (u16, String)>>;
    fn handle(&mut self, msg: DrainNode, ctx: &mut Context<Self>) -> Self::Result {
        if !self.core.knows_node(&msg.name) {
            let why = format!("no node named {:?} is known", msg.name);
            return Box::pin(async move { Err((404, why)) });
        }
        let event = match msg.drain {
            Some(now) => {
                info!(node = %msg.name, now, "drained by an admin");
                Event::Drain {
                    name: msg.name.clone(),
                    now,
                }
            }
            None => {
                info!(node = %msg.name, "undrained by an admin");
                Event::Undrain {
                    name: msg.name.clone(),
                }
            }
        };
        self.apply(event, ctx);
        let view = self.core.node_view(&msg.name, now_ms());
        let rx = self.after_durable(ctx);
        let name = msg.name;
        Box::pin(async move {
            let _ = rx.await;
            view.ok_or((
                404,
                format!("node {name:?} is not connected; the drain is remembered for when it is"),
            ))
        })
    }
}

/// Set a node's tags (`Some`, replacing its own) or give it back its own
/// (`None`). Answers once durable with the node, `Ok(None)` if it is not
/// connected (remembered for when it is), or 404.
#[derive(Message)]
#[rtype(result = "Result<Option<NodeView>, (u16, String)>")]
pub struct SetNodeTags {
    /// Node name.
    pub name: String,
    /// The tags.
    pub tags: Option<Vec<String>>,
}

impl Handler<SetNodeTags> for Scheduler {
    type Result = ResponseFuture<Result<Option<NodeView>, (u16, String)>>;
    fn handle(&mut self, msg: SetNodeTags, ctx: &mut Context<Self>) -> Self::Result {
        if !self.core.knows_node(&msg.name) {
            let why = format!("no node named {:?} is known", msg.name);
            return Box::pin(async move { Err((404, why)) });
        }
        info!(node = %msg.name, tags = ?msg.tags, "tags set by an admin");
        self.apply(
            Event::SetTags {
                name: msg.name.clone(),
                tags: msg.tags,
            },
            ctx,
        );
        let view = self.core.node_view(&msg.name, now_ms());
        let rx = self.after_durable(ctx);
        Box::pin(async move {
            let _ = rx.await;
            Ok(view)
        })
    }
}

/// Shutdown (SIGTERM): no new jobs, node sessions closed, the journal
/// drained, fsynced and closed. Nodes keep their work and reconnect.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Scheduler {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.accepting = false;
        for (_, addr) in self.sessions.drain() {
            addr.do_send(Close);
        }
        self.by_node.clear();
        let journal = self.journal.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || journal.close()).await {
                Ok(Ok(())) => info!("journal flushed and closed"),
                Ok(Err(e)) => error!("closing the journal: {e}"),
                Err(e) => error!("closing the journal: {e}"),
            }
        })
    }
}

/// Outcome of clearing a node's quarantine.
#[derive(Debug)]
pub enum ClearOutcome {
    /// Cleared; the node as it is now.
    Cleared(NodeView),
    /// The node was not quarantined; nothing changed.
    NotQuarantined(NodeView),
    /// No node of that name is known.
    NotFound,
}

/// Clear a node's quarantine.
#[derive(Message)]
#[rtype(result = "ClearOutcome")]
pub struct ClearQuarantine(pub String);

impl Handler<ClearQuarantine> for Scheduler {
    type Result = MessageResult<ClearQuarantine>;
    fn handle(&mut self, msg: ClearQuarantine, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = match self.core.node_view(&msg.0, now_ms()) {
            None => ClearOutcome::NotFound,
            Some(v) if v.quarantined.is_none() => ClearOutcome::NotQuarantined(v),
            Some(_) => {
                info!(node = %msg.0, "quarantine cleared by an admin");
                self.apply(
                    Event::ClearQuarantine {
                        name: msg.0.clone(),
                    },
                    ctx,
                );
                match self.core.node_view(&msg.0, now_ms()) {
                    Some(v) => ClearOutcome::Cleared(v),
                    None => ClearOutcome::NotFound,
                }
            }
        };
        MessageResult(outcome)
    }
}

/// Read one job.
#[derive(Message)]
#[rtype(result = "Option<JobView>")]
pub struct GetJob(pub u64);

impl Handler<GetJob> for Scheduler {
    type Result = ResponseFuture<Option<JobView>>;
    fn handle(&mut self, msg: GetJob, _: &mut Context<Self>) -> Self::Result {
        if let Some(v) = self.core.job_view(msg.0) {
            return Box::pin(async move { Some(v) });
        }
        // Finished long enough ago to have left memory: the archive has it
        // for its retention (a disk read, off this thread).
        let journal = self.journal.clone();
        Box::pin(async move {
            let r = tokio::task::spawn_blocking(move || {
                crate::journal::scheduler::archived(&journal, msg.0)
            })
            .await
            .ok()?
            .ok()??;
            Some(crate::sched::views::record_view(&r))
        })
    }
}

/// Which jobs a list shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this project.
    pub project: Option<String>,
    /// Only jobs submitted with this key (its id or its name).
    pub submitter: Option<String>,
}

impl JobFilter {
    /// Whether `v` passes.
    pub fn admits(&self, v: &JobView) -> bool {
        self.state.is_none_or(|s| v.state == s)
            && self.project.as_deref().is_none_or(|p| v.project == p)
            && self
                .submitter
                .as_deref()
                .is_none_or(|s| v.submitter == s || v.submitter_key == s)
    }
}

/// Archived records one list request reads at most: a filter that matches
/// little ends the page early (with a cursor to go on) instead of reading
/// the whole history.
pub const LIST_SCAN_LIMIT: usize = 5_000;

/// A page of jobs, newest first.
#[derive(Debug, Clone, Default)]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<JobView>,
    /// The cursor of the next page (jobs with smaller ids), if any.
    pub next: Option<u64>,
}

/// Read a page of jobs, newest first: those with ids below `before`
/// passing `filter`, at most `limit`. Hot and recently finished jobs come
/// from memory, older ones from the journal's archive.
#[derive(Message)]
#[rtype(result = "JobPage")]
pub struct ListJobs {
    /// Filter.
    pub filter: JobFilter,
    /// Cursor: only ids below it.
    pub before: Option<u64>,
    /// Most jobs.
    pub limit: usize,
}

impl Handler<ListJobs> for Scheduler {
    type Result = ResponseFuture<JobPage>;
    fn handle(&mut self, msg: ListJobs, _: &mut Context<Self>) -> Self::Result {
        let limit = msg.limit.max(1);
        let before = msg.before.unwrap_or(u64::MAX);
        let in_memory = self.core.job_ids_below(before);
        // Memory matches, newest first, one more than a page (to know
        // whether another page follows).
        let mut mem: Vec<JobView> = Vec::new();
        for id in in_memory.iter().rev() {
            if let Some(v) = self.core.job_view(*id).filter(|v| msg.filter.admits(v)) {
                mem.push(v);
                if mem.len() > limit {
                    break;
                }
            }
        }
        let journal = self.journal.clone();
        Box::pin(async move {
            let filter = msg.filter;
            let floor = if mem.len() > limit { mem[limit].id } else { 0 };
            let archived = tokio::task::spawn_blocking(move || {
                scan_archive(&journal, &filter, before, floor, limit + 1, &in_memory)
            })
            .await
            .unwrap_or_default();
            merge_page(mem, archived, limit)
        })
    }
}

/// Archived jobs below `before` and above `floor` passing `filter`, newest
/// first, at most `want`; skips ids still in memory. Returns them and, when
/// the scan stopped at [`LIST_SCAN_LIMIT`], the id it stopped at.
fn scan_archive(
    journal: &Journal,
    filter: &JobFilter,
    before: u64,
    floor: u64,
    want: usize,
    in_memory: &std::collections::BTreeSet<u64>,
) -> (Vec<JobView>, Option<u64>) {
    let mut out = Vec::new();
    let mut cursor = before;
    let mut scanned = 0usize;
    loop {
        let keys = match journal.archived_keys_before(Some(cursor), 256) {
            Ok(k) => k,
            Err(e) => {
                warn!("listing the archive: {e}");
                return (out, None);
            }
        };
        if keys.is_empty() {
            return (out, None);
        }
        for key in keys {
            cursor = key;
            if key <= floor {
                return (out, None);
            }
            if in_memory.contains(&key) {
                continue;
            }
            scanned += 1;
            if let Ok(Some(r)) = crate::journal::scheduler::archived(journal, key) {
                let v = crate::sched::views::record_view(&r);
                if filter.admits(&v) {
                    out.push(v);
                    if out.len() >= want {
                        return (out, None);
                    }
                }
            }
            if scanned >= LIST_SCAN_LIMIT {
                return (out, Some(key));
            }
        }
    }
}

/// Merges memory and archive matches (each newest first) into one page.
fn merge_page(mem: Vec<JobView>, archived: (Vec<JobView>, Option<u64>), limit: usize) -> JobPage {
    let (arch, stopped_at) = archived;
    let mut all: Vec<JobView> = mem.into_iter().chain(arch).collect();
    all.sort_by_key(|v| std::cmp::Reverse(v.id));
    all.dedup_by_key(|v| v.id);
    // A scan that stopped early only vouches for ids above where it
    // stopped.
    if let Some(stop) = stopped_at {
        all.retain(|v| v.id >= stop);
    }
    let next = if all.len() > limit {
        all.truncate(limit);
        all.last().map(|v| v.id)
    } else {
        stopped_at
    };
    JobPage { jobs: all, next }
}

/// An action on a job by a user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JobAction {
    /// No new chunk starts until resumed.
    Pause,
    /// Starts chunks again.
    Resume,
    /// A new priority, 0..=100.
    Priority(u8),
}

/// Act on a hot job. Answers once durable with the job, or why not
/// (`Err((status, why))`: 404 or 409).
#[derive(Message)]
#[rtype(result = "Result<JobView, (u16, String)>")]
pub struct ActOnJob {
    /// Job.
    pub job: u64,
    /// What to do.
    pub action: JobAction,
}

impl Handler<ActOnJob> for Scheduler {
    type Result = ResponseFuture<Result<JobView, (u16, String)>>;
    fn handle(&mut self, msg: ActOnJob, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.job;
        if let Err(why) = self.core.may_change(id) {
            let status = if self.core.job_state(id).is_none() {
                404
            } else {
                409
            };
            return Box::pin(async move { Err((status, why)) });
        }
        info!(job = id, action = ?msg.action, "job changed by a user");
        let event = match msg.action {
            JobAction::Pause => Event::PauseJob {
                job: id,
                paused: true,
            },
            JobAction::Resume => Event::PauseJob {
                job: id,
                paused: false,
            },
            JobAction::Priority(priority) => Event::SetPriority { job: id, priority },
        };
        self.apply(event, ctx);
        let view = self.core.job_view(id);
        let rx = self.after_durable(ctx);
        Box::pin(async move {
            let _ = rx.await;
            view.ok_or((404, format!("job {id} vanished")))
        })
    }
}

/// Read every node.
#[derive(Message)]
#[rtype(result = "Vec<NodeView>")]
pub struct ListNodes;

impl Handler<ListNodes> for Scheduler {
    type Result = MessageResult<ListNodes>;
    fn handle(&mut self, _: ListNodes, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.node_views(now_ms()))
    }
}

/// The core's load, read by `/metrics` at scrape time.
#[derive(Message)]
#[rtype(result = "crate::sched::summary::LoadSummary")]
pub struct Summarize;

impl Handler<Summarize> for Scheduler {
    type Result = MessageResult<Summarize>;
    fn handle(&mut self, _: Summarize, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.load_summary())
    }
}

/// Does nothing: `/readyz` asks it to learn that the scheduler's thread
/// answers, at no cost to the scheduler.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for Scheduler {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

/// Read the fleet (`GET /v1/fleet`): nodes and the jobs that matter now,
/// only `project`'s jobs when set.
#[derive(Message)]
#[rtype(result = "drover_shared::api::FleetView")]
pub struct Fleet {
    /// The caller's project, for a key scoped to one.
    pub project: Option<String>,
}

impl Handler<Fleet> for Scheduler {
    type Result = MessageResult<Fleet>;
    fn handle(&mut self, msg: Fleet, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.fleet_view(now_ms(), msg.project.as_deref()))
    }
}

/// A core event from a session or the muxer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CoreEvent(pub Event);

impl Handler<CoreEvent> for Scheduler {
    type Result = ();
    fn handle(&mut self, msg: CoreEvent, ctx: &mut Context<Self>) {
        self.apply(msg.0, ctx);
    }
}

/// A read of the core on the scheduler's thread, for a client that keeps
/// its own state beside it (the autoscaler's pool reports). The closure
/// only reads and must not block.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadCore(pub Box<dyn FnOnce(&Core) + Send>);

impl Handler<ReadCore> for Scheduler {
    type Result = ();
    fn handle(&mut self, msg: ReadCore, _: &mut Context<Self>) {
        (msg.0)(&self.core);
    }
}

/// A node sent its hello; `session` is a process-unique id so that a stale
/// session closing never unregisters a newer one. The core admits it (its
/// node id) or refuses it (the reason).
#[derive(Message)]
#[rtype(result = "Result<NodeId, String>")]
pub struct SessionOpened {
    /// Node name.
    pub name: String,
    /// Node id from the hello (persistent per node data dir).
    pub node_id: String,
    /// Session id.
    pub session: u64,
    /// Its actor.
    pub addr: Addr<NodeSession>,
    /// What it has.
    pub caps: Capabilities,
    /// Chunks it still holds from an earlier session.
    pub running: Vec<RunningReport>,
    /// Finished segments in its spool not confirmed stored.
    pub spooled: Vec<SpooledReport>,
}

impl Handler<SessionOpened> for Scheduler {
    type Result = Result<NodeId, String>;
    fn handle(&mut self, msg: SessionOpened, ctx: &mut Context<Self>) -> Self::Result {
        self.sessions.insert(msg.session, msg.addr);
        let adapter = msg.caps.render_adapter.as_ref().map(|a| a.name.clone());
        self.apply(
            Event::Hello {
                session: msg.session,
                name: msg.name.clone(),
                node_id: msg.node_id.clone(),
                caps: Box::new(msg.caps),
                running: msg.running,
                spooled: msg.spooled,
            },
            ctx,
        );
        let answer = self
            .hello_answers
            .remove(&msg.session)
            .unwrap_or_else(|| Err("the scheduler did not answer the hello".into()));
        match &answer {
            Ok(_) => {
                info!(node = %msg.name, session = msg.session, adapter = ?adapter, "node connected");
                self.pending_events
                    .push(node_event("node.connected", &msg.name));
                self.commit(Vec::new(), None, ctx);
            }
            Err(reason) => {
                warn!(node = %msg.name, node_id = %msg.node_id, "refused: {reason}");
                self.sessions.remove(&msg.session);
            }
        }
        answer
    }
}

/// A session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    /// Its node, once admitted.
    pub node: Option<NodeId>,
    /// Session id.
    pub session: u64,
}

impl Handler<SessionClosed> for Scheduler {
    type Result = ();
    fn handle(&mut self, msg: SessionClosed, ctx: &mut Context<Self>) {
        self.sessions.remove(&msg.session);
        let Some(node) = msg.node else { return };
        if self.by_node.get(&node) == Some(&msg.session) {
            let name = self.core.node_name(node).unwrap_or("?").to_string();
            warn!(node = %name, "node disconnected");
            self.pending_events
                .push(node_event("node.disconnected", &name));
            self.by_node.remove(&node);
        }
        self.apply(
            Event::Disconnected {
                node,
                session: msg.session,
            },
            ctx,
        );
    }
}

/// May this node upload this segment? The core decides.
#[derive(Message)]
#[rtype(result = "UploadVerdict")]
pub struct MayUpload {
    /// Node.
    pub node: NodeId,
    /// The attempt.
    pub chunk: ChunkRef,
    /// First frame in the segment.
    pub start: u64,
    /// Last frame in the segment.
    pub end: u64,
}

impl Handler<MayUpload> for Scheduler {
    type Result = MessageResult<MayUpload>;
    fn handle(&mut self, m: MayUpload, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.core
                .may_upload(m.node, key(&m.chunk), m.chunk.epoch, m.start, m.end),
        )
    }
}

/// A segment is in the store, complete and verified: the core records it.
/// The answer comes once that is durable in the journal; only then may the
/// node hear `Stored` and delete its spool copy.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct CommitSegment {
    /// Node.
    pub node: NodeId,
    /// The attempt.
    pub chunk: ChunkRef,
    /// First frame in the segment.
    pub start: u64,
    /// Last frame in the segment.
    pub end: u64,
    /// Stored path.
    pub segment: String,
    /// BLAKE3, hex.
    pub hash: String,
}

impl Handler<CommitSegment> for Scheduler {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, m: CommitSegment, ctx: &mut Context<Self>) -> Self::Result {
        self.apply(
            Event::SegmentStored {
                node: m.node,
                chunk: key(&m.chunk),
                epoch: m.chunk.epoch,
                start: m.start,
                end: m.end,
                segment: m.segment,
                hash: m.hash,
            },
            ctx,
        );
        let rx = self.after_durable(ctx);
        Box::pin(async move {
            rx.await
                .map_err(|_| "the coordinator is stopping".to_string())
        })
    }
}

fn key(c: &ChunkRef) -> ChunkKey {
    (c.job, c.index)
}

/// One node connection.
pub struct NodeSession {
    node: Option<NodeId>,
    name: String,
    session: u64,
    scheduler: Addr<Scheduler>,
    out: Sender<CoordToNode>,
}

impl NodeSession {
    /// A session writing to `out` (drained by the connection's writer task).
    pub fn new(
        name: String,
        session: u64,
        scheduler: Addr<Scheduler>,
        out: Sender<CoordToNode>,
    ) -> Self {
        NodeSession {
            node: None,
            name,
            session,
            scheduler,
            out,
        }
    }
}

impl Actor for NodeSession {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.scheduler.do_send(SessionClosed {
            node: self.node,
            session: self.session,
        });
    }
}

/// The core admitted the session's node under this id.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Admitted(pub NodeId);

impl Handler<Admitted> for NodeSession {
    type Result = ();
    fn handle(&mut self, msg: Admitted, _: &mut Context<Self>) {
        self.node = Some(msg.0);
    }
}

/// Send a message to the node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub CoordToNode);

impl Handler<Deliver> for NodeSession {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        match self.out.try_send(msg.0) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                warn!(
                    node = %self.name,
                    "node reads nothing while {} messages wait; closing its session",
                    crate::quic::SESSION_QUEUE
                );
                ctx.stop();
            }
            Err(TrySendError::Closed(_)) => ctx.stop(),
        }
    }
}

/// A message the node sent on its control stream.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound(pub NodeToCoord);

impl Handler<Inbound> for NodeSession {
    type Result = ();
    fn handle(&mut self, msg: Inbound, _: &mut Context<Self>) {
        let Some(node) = self.node else {
            warn!(node = %self.name, "message before admission ignored");
            return;
        };
        let report = |c: &ChunkRef, frames_done| ChunkReport {
            chunk: key(c),
            epoch: c.epoch,
            frames_done,
        };
        let event = match msg.0 {
            NodeToCoord::Hello(_) => {
                warn!(node = %self.name, "second hello ignored");
                return;
            }
            NodeToCoord::Heartbeat(hb) => Event::Heartbeat {
                node,
                cpu_load_pct: hb.cpu_load_pct,
                memory_load_pct: hb.memory_load_pct,
                // At most `MAX_HEARTBEAT_ENTRIES`: the connection checked
                // the message (`validate`) before it got here.
                chunks: hb
                    .chunks
                    .iter()
                    .map(|p| report(&p.chunk, p.frames_done))
                    .collect(),
            },
            NodeToCoord::Progress(p) => Event::Progress {
                node,
                report: report(&p.chunk, p.frames_done),
            },
            NodeToCoord::ShrinkAck(a) => {
                info!(job = a.chunk.job, chunk = a.chunk.index, end = ?a.end, node = %self.name, "shrink answered");
                Event::ShrinkAck {
                    node,
                    chunk: key(&a.chunk),
                    epoch: a.chunk.epoch,
                    end: a.end,
                }
            }
            NodeToCoord::Done(d) => {
                info!(job = d.chunk.job, chunk = d.chunk.index, node = %self.name, adapter = %d.adapter,
                    frames = %format!("{}-{}", d.start, d.end), elapsed_ms = d.elapsed_ms, "chunk done");
                Event::ChunkDone {
                    node,
                    chunk: key(&d.chunk),
                    epoch: d.chunk.epoch,
                    start: d.start,
                    end: d.end,
                    hash: hex::encode(d.output_hash),
                    elapsed_ms: d.elapsed_ms,
                }
            }
            NodeToCoord::Preempted => {
                warn!(node = %self.name, "preemption notice from the node: draining it at once");
                Event::Preempt {
                    name: self.name.to_string(),
                }
            }
            NodeToCoord::Leaving => {
                info!(node = %self.name, "node leaving: draining its work");
                Event::NodeLeaving { node }
            }
            NodeToCoord::ChunkLog(log) => {
                self.scheduler.do_send(ChunkLogPiece { node, log });
                return;
            }
            NodeToCoord::Failed(f) => {
                // Before the failure reaches the core: the attempt is
                // still this node's when the note is admitted.
                self.scheduler.do_send(ChunkLogFailed {
                    node,
                    chunk: f.chunk,
                    reason: f.reason.clone(),
                });
                warn!(job = f.chunk.job, chunk = f.chunk.index, node = %self.name, reason = %f.reason,
                    failed_frame = ?f.failed_frame, log = %f.log_tail, "chunk failed");
                Event::ChunkFailed {
                    node,
                    chunk: key(&f.chunk),
                    epoch: f.chunk.epoch,
                    reason: f.reason,
                    failed_frame: f.failed_frame,
                    log_tail: f.log_tail,
                }
            }
        };
        self.scheduler.do_send(CoreEvent(event));
    }
}

/// Stop the session (connection gone or replaced).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for NodeSession {
    type Result = ();
    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// How often the scheduler drops the chunk logs of jobs it no longer holds
/// (they left the finished-job retention), in seconds: a job's logs outlive
/// it by at most this.
pub const CHUNK_LOG_PRUNE_INTERVAL_S: u64 = 60;

impl Scheduler {
    /// Keeps each chunk attempt's executor log in `logs`: pieces from the
    /// node holding the attempt are written, others dropped.
    pub fn with_chunk_logs(mut self, logs: crate::chunklog::ChunkLogs) -> Self {
        self.chunk_logs = Some(logs);
        self
    }

    /// Drops, now and then every [`CHUNK_LOG_PRUNE_INTERVAL_S`], the logs
    /// of the jobs the core no longer holds.
    fn prune_chunk_logs_every(&mut self, ctx: &mut Context<Self>) {
        if self.chunk_logs.is_none() {
            return;
        }
        self.prune_chunk_logs();
        ctx.run_interval(
            Duration::from_secs(CHUNK_LOG_PRUNE_INTERVAL_S),
            |this, _| this.prune_chunk_logs(),
        );
    }

    fn prune_chunk_logs(&mut self) {
        let Some(logs) = &self.chunk_logs else { return };
        // Busy writing: the next round prunes.
        let Some(jobs) = logs.try_jobs() else { return };
        // Every job in memory, hot or retained, in one pass.
        let held = self.core.job_ids_below(u64::MAX);
        let keep: Vec<u64> = jobs.iter().copied().filter(|j| held.contains(j)).collect();
        if keep.len() < jobs.len() {
            logs.retain_jobs(keep);
        }
    }
}

/// A piece of a chunk attempt's log from a node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChunkLogPiece {
    /// The node that sent it.
    pub node: NodeId,
    /// The piece.
    pub log: drover_protocol::ChunkLog,
}

impl Handler<ChunkLogPiece> for Scheduler {
    type Result = ();
    fn handle(&mut self, m: ChunkLogPiece, _: &mut Context<Self>) {
        let Some(logs) = &self.chunk_logs else { return };
        let c = m.log.chunk;
        let node = self.core.node_name(m.node).unwrap_or("?").to_string();
        // Only the node holding this attempt writes its log, as only it may
        // upload its segment: a late piece of an old attempt, or another
        // node's, must not land on it. Once its log is open, the same node
        // may finish it after the attempt ended (a cancelled chunk's last
        // lines come after the cancel).
        let held = self
            .core
            .current(m.node, key(&c), c.epoch)
            .map(|h| (h.start, h.end));
        let Some((start, end)) = logs.admit(c.job, c.index, c.epoch, &node, held) else {
            tracing::debug!(
                job = c.job,
                chunk = c.index,
                epoch = c.epoch,
                "chunk log piece of an attempt the node does not hold: dropped"
            );
            return;
        };
        logs.submit(crate::chunklog::Piece {
            job: c.job,
            chunk: c.index,
            epoch: c.epoch,
            node,
            start,
            end,
            offset: m.log.offset,
            text: m.log.text,
            last: m.log.last,
        });
    }
}

/// A node reported a chunk attempt failed: its log says so.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChunkLogFailed {
    /// The node that sent it.
    pub node: NodeId,
    /// The attempt.
    pub chunk: ChunkRef,
    /// Why.
    pub reason: String,
}

impl Handler<ChunkLogFailed> for Scheduler {
    type Result = ();
    fn handle(&mut self, m: ChunkLogFailed, _: &mut Context<Self>) {
        let Some(logs) = &self.chunk_logs else { return };
        let c = m.chunk;
        if self.core.current(m.node, key(&c), c.epoch).is_some() {
            logs.submit_failed(c.job, c.index, c.epoch, m.reason);
        }
    }
}

/// The chunk log store, for the API (`None` when logs are off).
#[derive(Message)]
#[rtype(result = "Option<crate::chunklog::ChunkLogs>")]
pub struct GetChunkLogs;

impl Handler<GetChunkLogs> for Scheduler {
    type Result = MessageResult<GetChunkLogs>;
    fn handle(&mut self, _: GetChunkLogs, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.chunk_logs.clone())
    }
}

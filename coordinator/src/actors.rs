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

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use drover_protocol::{Assign, ChunkRef, CoordToNode, NodeToCoord};
use drover_shared::api::{JobView, NodeView};
use drover_shared::caps::Capabilities;
use drover_shared::spec::JobSpec;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use crate::journal::Journal;
use crate::sched::{
    ChunkKey, ChunkReport, Command, Core, Event, NodeId, RunningReport, SpooledReport,
    UploadVerdict,
};
use crate::store::ArtifactStore;

/// Chunk entries read from one heartbeat: a node holds a handful of chunks,
/// so a longer list is a broken or hostile peer and the rest is ignored.
pub const MAX_HEARTBEAT_CHUNKS: usize = 16;

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
}

impl Scheduler {
    /// A scheduler over a restored core; `startup` are the commands
    /// [`Core::restore`] returned (muxes to redo).
    pub fn new(core: Core, journal: Journal, store: ArtifactStore, startup: Vec<Command>) -> Self {
        Scheduler {
            core,
            journal,
            store,
            sessions: HashMap::new(),
            by_node: HashMap::new(),
            hello_answers: HashMap::new(),
            pending_commands: startup,
            armed: None,
        }
    }

    fn apply(&mut self, event: Event, ctx: &mut Context<Self>) {
        let cmds = self.core.handle(now_ms(), event);
        self.execute(cmds, ctx);
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
                    // The job's final state must be durable before its
                    // segments go: a crash in between would otherwise restore
                    // a job that needs segments which no longer exist.
                    if let Err(e) = self.journal.flush() {
                        error!(job, "journal flush failed; keeping the segments: {e}");
                        continue;
                    }
                    let dir = self.store.job_dir(job);
                    actix::spawn(async move {
                        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
                            while let Ok(Some(e)) = entries.next_entry().await {
                                let name = e.file_name().to_string_lossy().into_owned();
                                // Finished segments only: a partial file
                                // belongs to an upload still running.
                                if name.starts_with("chunk-") && name.ends_with(".mp4") {
                                    let _ = tokio::fs::remove_file(e.path()).await;
                                }
                            }
                        }
                    });
                }
                Command::Persist { job } => {
                    if let Some(r) = self.core.record(job) {
                        if let Err(e) = self.journal.put(&r) {
                            error!(job, "journal write failed: {e}");
                        }
                    }
                }
                Command::Mux { job, segments } => {
                    let out = self.store.output_path(job);
                    let addr = ctx.address();
                    info!(job, segments = segments.len(), "joining segments");
                    actix::spawn(async move {
                        let segs: Vec<PathBuf> = segments.iter().map(PathBuf::from).collect();
                        let out2 = out.clone();
                        let res = tokio::task::spawn_blocking(move || {
                            crate::mux::concat_segments(&segs, &out2)
                        })
                        .await;
                        let event = match res {
                            Ok(Ok(report)) => {
                                info!(
                                    job,
                                    frames = report.frames,
                                    bytes = report.bytes,
                                    "output written"
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
        let startup = std::mem::take(&mut self.pending_commands);
        self.execute(startup, ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Err(e) = self.journal.flush() {
            error!("journal flush at shutdown failed: {e}");
        }
    }
}

/// Submit a validated spec. Answers once the record is durable.
#[derive(Message)]
#[rtype(result = "Result<u64, String>")]
pub struct Submit(pub JobSpec);

impl Handler<Submit> for Scheduler {
    type Result = Result<u64, String>;
    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        let (id, cmds) = self.core.submit(now_ms(), msg.0);
        // Durable first, then visible to nodes: if the journal cannot keep
        // the job, it is withdrawn before any node hears of it, and the
        // client's error is the whole truth.
        let durable = self
            .core
            .record(id)
            .ok_or_else(|| "job vanished".to_string())
            .and_then(|j| self.journal.put(&j).map_err(|e| e.to_string()))
            .and_then(|()| self.journal.flush().map_err(|e| e.to_string()));
        if let Err(e) = durable {
            error!(job = id, "journal write failed, job withdrawn: {e}");
            self.core.withdraw(id);
            if let Err(e) = self.journal.remove(id) {
                error!(job = id, "removing the withdrawn record failed too: {e}");
            }
            // What `submit` did for other jobs (preemption) still happens.
            let others = cmds.into_iter().filter(|c| c.job() != Some(id)).collect();
            self.execute(others, ctx);
            return Err(e);
        }
        info!(job = id, "job accepted");
        // The record just written is the one a Persist would write again.
        let mut cmds = cmds;
        cmds.retain(|c| !matches!(c, Command::Persist { job } if *job == id));
        self.execute(cmds, ctx);
        Ok(id)
    }
}

/// Outcome of a cancel request.
#[derive(Debug, PartialEq)]
pub enum CancelOutcome {
    /// Cancelled now.
    Cancelled,
    /// No such job.
    NotFound,
    /// Already in a terminal state (given).
    AlreadyFinished(drover_shared::api::JobState),
}

/// Cancel a job.
#[derive(Message)]
#[rtype(result = "CancelOutcome")]
pub struct CancelJob(pub u64);

impl Handler<CancelJob> for Scheduler {
    type Result = MessageResult<CancelJob>;
    fn handle(&mut self, msg: CancelJob, ctx: &mut Context<Self>) -> Self::Result {
        let Some(state) = self.core.job_state(msg.0) else {
            return MessageResult(CancelOutcome::NotFound);
        };
        if state.is_terminal() {
            return MessageResult(CancelOutcome::AlreadyFinished(state));
        }
        info!(job = msg.0, "cancel requested");
        self.apply(Event::CancelJob { job: msg.0 }, ctx);
        if let Err(e) = self.journal.flush() {
            error!(job = msg.0, "journal flush failed: {e}");
        }
        MessageResult(CancelOutcome::Cancelled)
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
    type Result = MessageResult<GetJob>;
    fn handle(&mut self, msg: GetJob, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.job_view(msg.0))
    }
}

/// Read every job.
#[derive(Message)]
#[rtype(result = "Vec<JobView>")]
pub struct ListJobs;

impl Handler<ListJobs> for Scheduler {
    type Result = MessageResult<ListJobs>;
    fn handle(&mut self, _: ListJobs, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.job_views())
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
                info!(node = %msg.name, session = msg.session, adapter = ?adapter, "node connected")
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
            warn!(
                node = self.core.node_name(node).unwrap_or("?"),
                "node disconnected"
            );
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
    type Result = Result<(), String>;
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
        Ok(())
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
    out: UnboundedSender<CoordToNode>,
}

impl NodeSession {
    /// A session writing to `out` (drained by the connection's writer task).
    pub fn new(
        name: String,
        session: u64,
        scheduler: Addr<Scheduler>,
        out: UnboundedSender<CoordToNode>,
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
        if self.out.send(msg.0).is_err() {
            ctx.stop();
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
                chunks: hb
                    .chunks
                    .iter()
                    .take(MAX_HEARTBEAT_CHUNKS)
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
            NodeToCoord::Leaving => {
                info!(node = %self.name, "node leaving: draining its work");
                Event::NodeLeaving { node }
            }
            NodeToCoord::Failed(f) => {
                warn!(job = f.chunk.job, chunk = f.chunk.index, node = %self.name, reason = %f.reason,
                    failed_frame = ?f.failed_frame, log = %f.log_tail, "chunk failed");
                Event::ChunkFailed {
                    node,
                    chunk: key(&f.chunk),
                    epoch: f.chunk.epoch,
                    reason: f.reason,
                    failed_frame: f.failed_frame,
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

//! The actix actors that own the coordinator's state.
//!
//! - [`Scheduler`] owns the sans-IO [`Core`], the [`Journal`] and the table of
//!   live sessions. It feeds every event to the core and carries out the
//!   commands that come back: assignments go to sessions, records go to the
//!   journal, finished jobs go to the muxer (on a blocking thread).
//! - [`NodeSession`], one per node connection, turns wire messages into core
//!   events and core commands into wire messages. It remembers which uploads
//!   its connection stored and verified, so a `Done` without its segment is a
//!   failure, never a hole in the output.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use drover_protocol::{Assign, ChunkRef, CoordToNode, NodeToCoord};
use drover_shared::api::{JobView, NodeView};
use drover_shared::caps::{self, Capabilities};
use drover_shared::spec::JobSpec;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use crate::journal::Journal;
use crate::sched::{Command, Core, Event};
use crate::store::ArtifactStore;

/// How often the scheduler ticks (reaps silent nodes, releases backoffs).
pub const TICK_INTERVAL_MS: u64 = 250;

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

/// A live session: its id, actor and the node id its hello carried.
struct SessionEntry {
    session: u64,
    addr: Addr<NodeSession>,
    node_id: String,
}

/// The scheduler actor.
pub struct Scheduler {
    core: Core,
    journal: Journal,
    store: ArtifactStore,
    sessions: HashMap<String, SessionEntry>,
    pending_commands: Vec<Command>,
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
            pending_commands: startup,
        }
    }

    fn apply(&mut self, event: Event, ctx: &mut Context<Self>) {
        let cmds = self.core.handle(now_ms(), event);
        self.execute(cmds, ctx);
    }

    fn execute(&mut self, cmds: Vec<Command>, ctx: &mut Context<Self>) {
        for cmd in cmds {
            match cmd {
                Command::Assign { node, assignment } => {
                    let Some(job) = self.core.job(assignment.chunk.0) else {
                        continue;
                    };
                    let spec = &job.spec;
                    let encoder = caps::encoders_for_codec(&spec.output.codec)
                        .first()
                        .copied()
                        .unwrap_or("libx264");
                    let msg = CoordToNode::Assign(Assign {
                        chunk: ChunkRef {
                            job: assignment.chunk.0,
                            index: assignment.chunk.1,
                            epoch: assignment.epoch,
                        },
                        start: assignment.start,
                        end: assignment.end,
                        fps: spec.fps,
                        width: spec.resolution.width,
                        height: spec.resolution.height,
                        shader_source: spec.shader_source().to_string(),
                        encoder: encoder.to_string(),
                        crf: spec.output.quality,
                    });
                    info!(job = assignment.chunk.0, chunk = assignment.chunk.1, epoch = assignment.epoch, %node,
                        frames = %format!("{}-{}", assignment.start, assignment.end), "assign");
                    if let Some(s) = self.sessions.get(&node) {
                        s.addr.do_send(Deliver(msg));
                    }
                }
                Command::Cancel { node, chunk, epoch } => {
                    if let Some(s) = self.sessions.get(&node) {
                        s.addr.do_send(Deliver(CoordToNode::Cancel(ChunkRef {
                            job: chunk.0,
                            index: chunk.1,
                            epoch,
                        })));
                    }
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
                    if let Some(j) = self.core.job(job) {
                        if let Err(e) = self.journal.put(j) {
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
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let startup = std::mem::take(&mut self.pending_commands);
        self.execute(startup, ctx);
        ctx.run_interval(Duration::from_millis(TICK_INTERVAL_MS), |act, ctx| {
            act.apply(Event::Tick, ctx)
        });
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
            .job(id)
            .ok_or_else(|| "job vanished".to_string())
            .and_then(|j| self.journal.put(j).map_err(|e| e.to_string()))
            .and_then(|()| self.journal.flush().map_err(|e| e.to_string()));
        if let Err(e) = durable {
            error!(job = id, "journal write failed, job withdrawn: {e}");
            self.core.withdraw(id);
            if let Err(e) = self.journal.remove(id) {
                error!(job = id, "removing the withdrawn record failed too: {e}");
            }
            // `submit` dispatched every job; what it did for the others
            // still has to happen.
            let others = cmds.into_iter().filter(|c| c.job() != id).collect();
            self.execute(others, ctx);
            return Err(e);
        }
        info!(job = id, "job accepted");
        // The record just written already holds the assignments `submit` made.
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
        let Some(job) = self.core.job(msg.0) else {
            return MessageResult(CancelOutcome::NotFound);
        };
        if job.state.is_terminal() {
            return MessageResult(CancelOutcome::AlreadyFinished(job.state));
        }
        info!(job = msg.0, "cancel requested");
        self.apply(Event::CancelJob { job: msg.0 }, ctx);
        if let Err(e) = self.journal.flush() {
            error!(job = msg.0, "journal flush failed: {e}");
        }
        MessageResult(CancelOutcome::Cancelled)
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

/// A node finished its handshake; `session` is a process-unique id so that a
/// stale session closing never unregisters a newer one of the same name.
/// Refused (with the reason) when another live node already uses the name.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
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
}

impl Handler<SessionOpened> for Scheduler {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: SessionOpened, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(old) = self.sessions.get(&msg.name) {
            if old.node_id != msg.node_id && old.addr.connected() {
                warn!(node = %msg.name, node_id = %msg.node_id, "refused: name in use by node {}", old.node_id);
                return Err(format!(
                    "node name {:?} is already used by another connected node (id {}); give this node its own --name",
                    msg.name, old.node_id
                ));
            }
        }
        info!(node = %msg.name, session = msg.session, adapter = ?msg.caps.render_adapter.as_ref().map(|a| &a.name), "node connected");
        let entry = SessionEntry {
            session: msg.session,
            addr: msg.addr,
            node_id: msg.node_id,
        };
        // The same node reconnecting before its old connection was noticed
        // dead: the old session goes, and its chunks are requeued below.
        if let Some(old) = self.sessions.insert(msg.name.clone(), entry) {
            old.addr.do_send(Close);
        }
        self.apply(
            Event::NodeConnected {
                node: msg.name,
                caps: msg.caps,
            },
            ctx,
        );
        Ok(())
    }
}

/// A session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    /// Node name.
    pub name: String,
    /// Session id.
    pub session: u64,
}

impl Handler<SessionClosed> for Scheduler {
    type Result = ();
    fn handle(&mut self, msg: SessionClosed, ctx: &mut Context<Self>) {
        if self.sessions.get(&msg.name).map(|s| s.session) == Some(msg.session) {
            warn!(node = %msg.name, "node disconnected");
            self.sessions.remove(&msg.name);
            self.apply(Event::NodeDisconnected { node: msg.name }, ctx);
        }
    }
}

/// One node connection.
pub struct NodeSession {
    name: String,
    session: u64,
    scheduler: Addr<Scheduler>,
    out: UnboundedSender<CoordToNode>,
    /// Chunks assigned to this node and not yet finished: the only ones it
    /// may upload.
    assigned: HashSet<ChunkRef>,
    uploads: HashMap<ChunkRef, (String, String)>,
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
            name,
            session,
            scheduler,
            out,
            assigned: HashSet::new(),
            uploads: HashMap::new(),
        }
    }

    fn key(c: &ChunkRef) -> (u64, u32) {
        (c.job, c.index)
    }
}

impl Actor for NodeSession {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.scheduler.do_send(SessionClosed {
            name: self.name.clone(),
            session: self.session,
        });
    }
}

/// Send a message to the node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub CoordToNode);

impl Handler<Deliver> for NodeSession {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        match &msg.0 {
            CoordToNode::Assign(a) => {
                self.assigned.insert(a.chunk);
            }
            CoordToNode::Cancel(c) => {
                self.assigned.remove(c);
                self.uploads.remove(c);
            }
            _ => {}
        }
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
        let node = self.name.clone();
        let event = match msg.0 {
            NodeToCoord::Hello(_) => {
                warn!(%node, "second hello ignored");
                return;
            }
            NodeToCoord::Heartbeat(hb) => {
                for p in &hb.chunks {
                    self.scheduler.do_send(CoreEvent(Event::Progress {
                        node: node.clone(),
                        chunk: Self::key(&p.chunk),
                        epoch: p.chunk.epoch,
                        frames_done: p.frames_done,
                    }));
                }
                Event::Heartbeat {
                    node,
                    cpu_load_pct: hb.cpu_load_pct,
                }
            }
            NodeToCoord::Progress(p) => Event::Progress {
                node,
                chunk: Self::key(&p.chunk),
                epoch: p.chunk.epoch,
                frames_done: p.frames_done,
            },
            NodeToCoord::Done(d) => {
                self.assigned.remove(&d.chunk);
                let hash = hex::encode(d.output_hash);
                match self.uploads.remove(&d.chunk) {
                    Some((segment, stored)) if stored == hash => {
                        info!(job = d.chunk.job, chunk = d.chunk.index, %node, adapter = %d.adapter,
                            elapsed_ms = d.elapsed_ms, "chunk done");
                        Event::ChunkDone {
                            node,
                            chunk: Self::key(&d.chunk),
                            epoch: d.chunk.epoch,
                            segment,
                            hash,
                        }
                    }
                    _ => Event::ChunkFailed {
                        node,
                        chunk: Self::key(&d.chunk),
                        epoch: d.chunk.epoch,
                        reason: "node reported done but its segment was not stored with that hash"
                            .into(),
                    },
                }
            }
            NodeToCoord::Failed(f) => {
                self.assigned.remove(&f.chunk);
                self.uploads.remove(&f.chunk);
                warn!(job = f.chunk.job, chunk = f.chunk.index, %node, reason = %f.reason, log = %f.log_tail, "chunk failed");
                Event::ChunkFailed {
                    node,
                    chunk: Self::key(&f.chunk),
                    epoch: f.chunk.epoch,
                    reason: f.reason,
                }
            }
        };
        self.scheduler.do_send(CoreEvent(event));
    }
}

/// May this connection upload the segment of `0`? Only for a chunk assigned
/// to it, not finished, and not already uploaded.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct MayUpload(pub ChunkRef);

impl Handler<MayUpload> for NodeSession {
    type Result = bool;
    fn handle(&mut self, msg: MayUpload, _: &mut Context<Self>) -> bool {
        self.assigned.contains(&msg.0) && !self.uploads.contains_key(&msg.0)
    }
}

/// An upload on this connection was stored and verified.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Uploaded {
    /// The attempt.
    pub chunk: ChunkRef,
    /// Stored path.
    pub path: String,
    /// Verified hash, hex.
    pub hash: String,
}

impl Handler<Uploaded> for NodeSession {
    type Result = ();
    fn handle(&mut self, msg: Uploaded, _: &mut Context<Self>) {
        self.uploads.insert(msg.chunk, (msg.path, msg.hash));
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

//! The node agent: connect, preamble and hello, heartbeats, assignments,
//! shrinks, uploads, reconnection with backoff and jitter, and the drain on
//! SIGTERM.
//!
//! # The work outlives sessions
//! The executor, the table of chunks the node holds and the spool belong to
//! the agent ([`Agent`]), not to a connection. When the connection drops the
//! node keeps rendering its current chunk and keeps the queued ones, spools
//! what finishes, and reconnects; its next [`Hello`] lists the chunks it
//! still holds (`running`) and the segments its spool holds (`spooled`).
//! The coordinator re-adopts what it still wants (nothing special is sent:
//! progress and heartbeats simply resume) and cancels the rest.
//!
//! # Tasks
//! - the control loop of the current session ([`session`]): assignments,
//!   cancels and shrinks (answered at once through the chunk's
//!   [`FrameWindow`], which the executor consults before each frame);
//! - the session's writer and heartbeat;
//! - the executor's events ([`events_loop`], agent-wide): progress, and each
//!   finished segment made durable in the spool;
//! - the uploader ([`upload_loop`], agent-wide): offers spooled segments, at
//!   most [`MAX_UPLOADS_IN_FLIGHT`] at a time, each on its own task beside
//!   rendering; `Stored` or `NotNeeded` delete the copy (then `Done` is
//!   sent for a stored one), `Later` keeps it for another offer, `Rejected`
//!   deletes it and reports the chunk failed. An upload cut off by a lost
//!   connection resumes after the reconnect from the coordinator's offset.
//!
//! # Spool full
//! When the spool's finished segments reach the limit
//! ([`AgentLimits::spool_limit_bytes`]), new assignments are held, queued
//! and reported, but not started, until uploads free room. Failing them
//! instead would, when the coordinator's disk is what is full, fail and
//! quarantine every node of the farm at once.
//!
//! # Leaving
//! On SIGTERM (or SIGINT) the node sends `Leaving`, drops the chunks it has
//! not started (the coordinator hands them to others), finishes the ones it
//! renders, and waits until its spool holds nothing more to upload, at most
//! [`AgentLimits::drain_timeout_ms`]; a second signal ends the wait at
//! once. It then closes the connection with
//! [`close_code::NODE_LEAVING`] and returns. Whatever is still in the spool
//! stays on disk and is offered after the next start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use drover_protocol::preamble::{self, PreambleError};
use drover_protocol::{
    close_code, codec, Assign, ChunkDone, ChunkFailed, ChunkLog, ChunkProgress, ChunkRef,
    CoordToNode, Heartbeat, Hello, NodeToCoord, RunningChunk, ShrinkAck, SpooledSegment,
    StreamKind, MAX_CONTROL_FRAME_BYTES, MAX_HELLO_RUNNING, MAX_HELLO_SPOOLED, PROTOCOL_VERSION,
};
use drover_shared::caps::Capabilities;
use drover_shared::config::CERT_SERVER_NAME;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::exec::{Executor, FrameWindow, TestAids, WorkItem, WorkerEvent};
use crate::render::Gpu;
use crate::spool::{self, SegmentMeta, Spool, SpoolKey, Spooled};
use crate::tls::Trust;
use crate::upload::{self, Offered, UploadError};

/// First reconnection delay; doubles up to [`RECONNECT_MAX_MS`].
pub const RECONNECT_MIN_MS: u64 = 200;
/// Longest reconnection delay: a restarted coordinator sees its nodes back
/// within this (plus jitter).
pub const RECONNECT_MAX_MS: u64 = 5_000;
/// QUIC keep-alive: well inside the coordinator's idle timeout.
const KEEP_ALIVE_MS: u64 = 1_000;
/// Minimum interval between two progress messages of one chunk.
const PROGRESS_INTERVAL_MS: u64 = 100;
/// `frames_done` of a chunk the executor has not started yet.
const NOT_STARTED: u64 = u64::MAX;
/// Longest wait for a QUIC handshake with the coordinator before retrying.
const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// The node's QUIC idle timeout: a coordinator silent this long is gone.
/// A killed coordinator sends no close, so this is how long its nodes take
/// to notice; as long as the coordinator takes to declare a silent node
/// lost. A spurious timeout costs little: the work carries on and the next
/// hello hands it back.
const IDLE_TIMEOUT_MS: u64 = drover_shared::config::NODE_TIMEOUT_MS;
/// Longest wait for the coordinator's preamble. QUIC keep-alives keep a
/// connection open even when the coordinator never answers on the stream,
/// so the idle timeout alone would not end such a session.
const PREAMBLE_TIMEOUT_MS: u64 = 10_000;
/// Uploads a node runs at once: two keep the link busy while one waits for
/// the coordinator's fsync and journal; the coordinator allows as many.
pub const MAX_UPLOADS_IN_FLIGHT: usize = 2;
/// First wait before a segment answered "later" (or cut off) is offered
/// again; doubles up to [`UPLOAD_RETRY_MAX_MS`].
const UPLOAD_RETRY_MIN_MS: u64 = 1_000;
/// Longest wait before a segment is offered again.
const UPLOAD_RETRY_MAX_MS: u64 = 30_000;
/// `Done` and `Failed` messages kept while no coordinator is connected, to
/// send after the next welcome. A node holds a handful of chunks; past this
/// the oldest go (the coordinator times those chunks out instead).
const MAX_OUTBOX: usize = 256;
/// How often the drain looks whether the node is done.
const DRAIN_POLL_MS: u64 = 200;
/// Longest wait, when leaving, for the last messages and the close to
/// reach the coordinator.
const CLOSE_LINGER_MS: u64 = 2_000;
/// Longest wait at exit for the endpoint to send the connection's close.
const CLOSE_FLUSH_MS: u64 = 500;
/// Default bound on the drain after SIGTERM: the chunk being rendered
/// finishes and its segment uploads within this, or the node leaves anyway
/// (its spool stays on disk for the next start).
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10 * 60 * 1_000;

/// Settings of one node agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Coordinator's QUIC address.
    pub coordinator: SocketAddr,
    /// Node name, unique in the farm.
    pub name: String,
    /// Data dir: the spool of segments not yet confirmed.
    pub data_dir: PathBuf,
    /// How the coordinator's certificate is pinned.
    pub trust: Trust,
    /// Admin-given labels that jobs can require (`requirements.tags`).
    pub tags: Vec<String>,
    /// The node's pool, empty for none (`requirements.pool`).
    pub pool: String,
    /// Test aid: the node renders `slowdown_factor` times slower (1 is
    /// normal; at most [`crate::exec::MAX_SLOWDOWN_FACTOR`]).
    pub slowdown_factor: f64,
    /// Test aid: report the render adapter as a discrete NVIDIA GPU of this
    /// name (rendering still uses the real one).
    pub test_gpu: Option<String>,
    /// Test aid: frames (job frame numbers) whose render fails on purpose.
    pub fail_frames: Vec<u64>,
    /// The join token (`drj1_...`) for the first connection, before the
    /// coordinator knows this node's certificate.
    pub join_token: Option<String>,
}

/// Bounds of the agent that have defaults (the `--spool-limit-mb`-style
/// settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLimits {
    /// Finished segments the spool may hold, in bytes, before new chunks
    /// wait for room ([`spool::DEFAULT_SPOOL_LIMIT_BYTES`]).
    pub spool_limit_bytes: u64,
    /// Longest drain after SIGTERM ([`DEFAULT_DRAIN_TIMEOUT_MS`]).
    pub drain_timeout_ms: u64,
}

impl Default for AgentLimits {
    fn default() -> Self {
        AgentLimits {
            spool_limit_bytes: spool::DEFAULT_SPOOL_LIMIT_BYTES,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
        }
    }
}

/// One chunk the node holds, shared with the executor (which writes
/// progress and starts frames), the heartbeat (reads progress) and the
/// control loop (cancels and shrinks).
struct HeldChunk {
    /// Set when the coordinator cancels the chunk or the node leaves
    /// before starting it.
    cancel: Arc<AtomicBool>,
    /// Frames read back so far, [`NOT_STARTED`] before the executor starts.
    frames_done: Arc<AtomicU64>,
    /// The frames the chunk may still start.
    window: Arc<FrameWindow>,
}

impl HeldChunk {
    /// The answer to a shrink proposal: the last frame the segment will
    /// hold, or `None` when this chunk will deliver nothing (cancelled, or
    /// rendering failed).
    fn shrink(&self, proposed_end: u64) -> Option<u64> {
        if self.cancel.load(Ordering::Relaxed) {
            return None;
        }
        self.window.shrink(proposed_end)
    }

    fn started(&self) -> bool {
        self.frames_done.load(Ordering::Relaxed) != NOT_STARTED
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// What the node holds, under one lock so that a hello sees every chunk
/// exactly once: held (running or queued) or spooled.
struct Work {
    /// Chunks assigned and not yet finished or failed.
    held: HashMap<ChunkRef, HeldChunk>,
    /// Held chunks waiting for spool room before they go to the executor.
    waiting: VecDeque<WorkItem>,
    /// Finished segments not yet taken by the coordinator.
    spool: Spool,
}

/// The current session's connection and the queue of its writer.
#[derive(Clone)]
struct Link {
    conn: quinn::Connection,
    out: mpsc::UnboundedSender<NodeToCoord>,
}

/// The agent's state, shared by its tasks (see the module doc).
struct Agent {
    work: Mutex<Work>,
    executor: Mutex<Executor>,
    /// Where the executor reports, for every chunk of every session.
    events: mpsc::UnboundedSender<WorkerEvent>,
    /// The session connected now, if any.
    link: watch::Sender<Option<Link>>,
    /// Wakes the uploader: a segment was spooled.
    spooled: Notify,
    /// `Done` and `Failed` messages waiting for a session.
    outbox: Mutex<VecDeque<NodeToCoord>>,
    /// SIGTERM came: no new work.
    leaving: AtomicBool,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the agent down with it; the data
    // (maps and queues) stays consistent between statements.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    fn new(spool: Spool, executor: Executor, events: mpsc::UnboundedSender<WorkerEvent>) -> Agent {
        Agent {
            work: Mutex::new(Work {
                held: HashMap::new(),
                waiting: VecDeque::new(),
                spool,
            }),
            executor: Mutex::new(executor),
            events,
            link: watch::Sender::new(None),
            spooled: Notify::new(),
            outbox: Mutex::new(VecDeque::new()),
            leaving: AtomicBool::new(false),
        }
    }

    /// Sends to the current session; dropped when there is none (progress,
    /// heartbeats and shrink answers only matter to a live session).
    fn send(&self, msg: NodeToCoord) {
        if let Some(link) = self.link.borrow().as_ref() {
            let _ = link.out.send(msg);
        }
    }

    /// Sends to the current session, or keeps the message for the next one
    /// (chunk outcomes).
    fn send_or_keep(&self, msg: NodeToCoord) {
        let msg = match self.link.borrow().as_ref() {
            Some(link) => match link.out.send(msg) {
                Ok(()) => return,
                Err(mpsc::error::SendError(msg)) => msg,
            },
            None => msg,
        };
        let mut outbox = locked(&self.outbox);
        if outbox.len() >= MAX_OUTBOX {
            warn!("no coordinator for a while: an old chunk report is dropped");
            outbox.pop_front();
        }
        outbox.push_back(msg);
    }

    /// The hello's lists: every chunk held and every segment spooled.
    fn hello_lists(&self) -> (Vec<RunningChunk>, Vec<SpooledSegment>) {
        let work = locked(&self.work);
        let mut running: Vec<RunningChunk> = work
            .held
            .iter()
            .filter(|(_, h)| !h.cancelled())
            .map(|(c, h)| RunningChunk {
                chunk: *c,
                start: h.window.start(),
                end: h.window.end(),
                frames_done: match h.frames_done.load(Ordering::Relaxed) {
                    NOT_STARTED => 0,
                    n => n,
                },
            })
            .collect();
        running.sort_by_key(|r| (r.chunk.job, r.chunk.index, r.chunk.epoch));
        running.truncate(MAX_HELLO_RUNNING);
        let spooled = work
            .spool
            .entries()
            .filter_map(|s| s.meta.wire())
            .take(MAX_HELLO_SPOOLED)
            .collect();
        (running, spooled)
    }

    /// A new assignment: held at once, started when the spool has room.
    fn assign(&self, a: Assign) {
        if self.leaving.load(Ordering::Relaxed) {
            warn!(
                job = a.chunk.job,
                chunk = a.chunk.index,
                "assignment after leaving ignored"
            );
            return;
        }
        info!(job = a.chunk.job, chunk = a.chunk.index, epoch = a.chunk.epoch,
            frames = %format!("{}-{}", a.start, a.end), "assigned");
        let window = match FrameWindow::new(a.start, a.end) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                warn!(
                    job = a.chunk.job,
                    chunk = a.chunk.index,
                    "refusing assignment: {e}"
                );
                self.send_or_keep(NodeToCoord::Failed(ChunkFailed {
                    chunk: a.chunk,
                    reason: e.to_string(),
                    log_tail: String::new(),
                    failed_frame: None,
                }));
                return;
            }
        };
        let mut work = locked(&self.work);
        if work.held.contains_key(&a.chunk) {
            warn!(
                job = a.chunk.job,
                chunk = a.chunk.index,
                epoch = a.chunk.epoch,
                "assignment of a chunk already held ignored"
            );
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let frames_done = Arc::new(AtomicU64::new(NOT_STARTED));
        work.held.insert(
            a.chunk,
            HeldChunk {
                cancel: cancel.clone(),
                frames_done: frames_done.clone(),
                window: window.clone(),
            },
        );
        work.waiting.push_back(WorkItem {
            assign: a,
            cancel,
            frames_done,
            window,
            events: self.events.clone(),
        });
        self.start_waiting(&mut work);
    }

    /// Hands waiting chunks to the executor while the spool has room.
    fn start_waiting(&self, work: &mut Work) {
        while work.spool.has_room() {
            let Some(item) = work.waiting.pop_front() else {
                return;
            };
            locked(&self.executor).submit(item);
        }
        if let Some(item) = work.waiting.front() {
            info!(
                job = item.assign.chunk.job,
                chunk = item.assign.chunk.index,
                used_bytes = work.spool.used_bytes(),
                limit_bytes = work.spool.limit_bytes(),
                waiting = work.waiting.len(),
                "spool full: new chunks wait for uploads to free room"
            );
        }
    }

    /// The coordinator cancels a chunk.
    fn cancel(&self, c: ChunkRef) {
        info!(
            job = c.job,
            chunk = c.index,
            epoch = c.epoch,
            "cancelled by coordinator"
        );
        let mut work = locked(&self.work);
        if let Some(h) = work.held.get(&c) {
            h.cancel.store(true, Ordering::Relaxed);
        }
        // Not given to the executor yet: nobody else will report it gone.
        if let Some(i) = work.waiting.iter().position(|w| w.assign.chunk == c) {
            work.waiting.remove(i);
            work.held.remove(&c);
        }
    }

    /// The answer to a shrink proposal.
    fn shrink(&self, c: ChunkRef, proposed_end: u64) -> Option<u64> {
        locked(&self.work)
            .held
            .get(&c)
            .and_then(|h| h.shrink(proposed_end))
    }

    /// SIGTERM: no new work, and the chunks not started yet go back.
    fn start_leaving(&self) {
        if self.leaving.swap(true, Ordering::Relaxed) {
            return;
        }
        {
            let mut guard = locked(&self.work);
            let work = &mut *guard;
            for w in work.waiting.drain(..) {
                work.held.remove(&w.assign.chunk);
            }
            for (c, h) in &work.held {
                if !h.started() {
                    info!(
                        job = c.job,
                        chunk = c.index,
                        "leaving: a queued chunk goes back"
                    );
                    h.cancel.store(true, Ordering::Relaxed);
                }
            }
        }
        self.send(NodeToCoord::Leaving);
    }

    /// Whether a leaving node may go: nothing renders, and the spool holds
    /// nothing to upload, or there is no coordinator to take it.
    fn drained(&self) -> bool {
        let connected = self.link.borrow().is_some();
        let work = locked(&self.work);
        work.held.is_empty() && work.waiting.is_empty() && (work.spool.is_empty() || !connected)
    }

    /// Forgets a spooled segment and deletes its files (off the runtime).
    async fn unspool(&self, key: SpoolKey) -> Option<Spooled> {
        let s = {
            let mut work = locked(&self.work);
            let s = work.spool.remove(&key)?;
            self.start_waiting(&mut work);
            s
        };
        let path = s.path.clone();
        match tokio::task::spawn_blocking(move || spool::discard(&path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(path = %s.path.display(), "deleting a spooled segment: {e}"),
            Err(e) => warn!("deleting a spooled segment: {e}"),
        }
        Some(s)
    }
}

/// How a session ended.
#[derive(Debug, PartialEq)]
enum SessionEnd {
    /// The coordinator refused us; `permanent` when it speaks another
    /// protocol version (retrying cannot help), otherwise (name in use, say)
    /// the node retries with backoff, as the cause may clear.
    Refused { reason: String, permanent: bool },
    /// The connection went away.
    Lost(String),
    /// The node is leaving: the session closed on purpose.
    Left,
}

/// Runs the agent with the default [`AgentLimits`] until the coordinator
/// refuses it for good (an error) or a signal ends it (after the drain).
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    // Every line the agent logs names the node (`--log-format json` puts
    // the span's fields on each line), its tasks' lines included.
    let span = tracing::info_span!("node", node = %cfg.name);
    tracing::Instrument::instrument(run_with(cfg, AgentLimits::default()), span).await
}

/// [`run`] with the given limits. SIGTERM and SIGINT stop the node: the
/// first drains it, a second ends the drain at once.
pub async fn run_with(cfg: AgentConfig, limits: AgentLimits) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Caught from the start: a SIGTERM during the probe must not kill the
    // node without its drain.
    let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("catching SIGINT")?;
    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if stop_tx.send(name).is_err() {
                return;
            }
        }
    });
    run_until(cfg, limits, stop_rx).await
}

/// [`run_with`], stopped by what `stop` brings (named in the logs, such as
/// "SIGTERM") instead of signals: the first stop drains the node (see the
/// module doc), a second ends the drain at once.
pub async fn run_until(
    cfg: AgentConfig,
    limits: AgentLimits,
    mut stop: mpsc::UnboundedReceiver<&'static str>,
) -> anyhow::Result<()> {
    // SIGUSR1 is a preemption notice (a spot instance's warning, relayed
    // by whatever watches for it): caught from the start, as its default
    // action would kill the node before it could say so.
    let mut preempt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("catching SIGUSR1")?;
    let aids = TestAids {
        slowdown_factor: cfg.slowdown_factor,
        fail_frames: cfg.fail_frames.clone(),
    };
    aids.check()
        .map_err(|e| anyhow::anyhow!("--slowdown: {e}"))?;
    let spool_dir = cfg.data_dir.join("spool");
    // What an earlier run spooled is kept and offered again; what it could
    // not finish is dropped.
    let (spool, loaded) = {
        let dir = spool_dir.clone();
        let limit = limits.spool_limit_bytes;
        tokio::task::spawn_blocking(move || Spool::open(&dir, limit))
            .await?
            .with_context(|| format!("opening the spool {}", spool_dir.display()))?
    };
    if loaded.kept > 0 || !loaded.dropped.is_empty() {
        info!(
            segments = loaded.kept,
            bytes = spool.used_bytes(),
            dropped = loaded.dropped.len(),
            "spool from an earlier run loaded"
        );
    }
    let node_id = load_or_create_node_id(&cfg.data_dir)?;
    // Probing opens the GPU and test-encodes, and the calibration renders:
    // blocking work.
    let calibration_dir = cfg.data_dir.clone();
    let calibration_aids = aids.clone();
    let (gpu, mut caps) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Gpu, Capabilities)> {
            let gpu = Gpu::new().context(
                "no usable graphics adapter (install Mesa's Vulkan driver for CPU rendering)",
            )?;
            let mut caps = crate::probe::capabilities(gpu.adapter());
            if caps.encoders.is_empty() {
                anyhow::bail!("no FFmpeg encoder opened in the probe; install FFmpeg with libx264");
            }
            // A node that cannot calibrate can still render: the
            // scheduler then starts from its default estimate.
            caps.calibration = crate::exec::calibration_encoder(&caps.encoders)
                .map(|encoder| {
                    crate::exec::calibrate(&gpu, &calibration_dir, &calibration_aids, encoder)
                })
                .transpose()
                .unwrap_or_else(|e| {
                    warn!("calibration render failed: {e}");
                    None
                });
            Ok((gpu, caps))
        })
        .await??;
    caps.tags = clean_tags(&cfg.tags);
    caps.pool = cfg.pool.trim().to_string();
    // A tag or pool no job could name would route nothing, silently: the
    // node refuses to start instead, with the rule jobs are held to.
    for t in &caps.tags {
        drover_shared::spec::label("--tags", t)?;
    }
    if !caps.pool.is_empty() {
        drover_shared::spec::label("--pool", &caps.pool)?;
    }
    crate::probe::apply_test_aids(
        &mut caps,
        cfg.test_gpu.as_deref(),
        aids.slowdown_factor,
        &aids.fail_frames,
    );
    if let Some(k) = caps.calibration {
        info!(
            frames_per_s = format!("{:.1}", k.frames_per_s),
            size = format!("{}x{}", k.width, k.height),
            slowdown = aids.slowdown_factor,
            "calibrated"
        );
    }
    if let Some(aid) = &caps.test_override {
        warn!("test aids in use, this node does not report its real hardware or speed: {aid}");
    }
    info!(name = %cfg.name, %node_id, adapter = %gpu.adapter().name, device = %gpu.adapter().device_type,
        encoders = ?caps.encoders, tags = ?caps.tags, pool = %caps.pool, "node ready");
    let (ev_tx, ev_rx) = mpsc::unbounded_channel::<WorkerEvent>();
    let executor = Executor::start(gpu, spool_dir, aids);
    let agent = Arc::new(Agent::new(spool, executor, ev_tx));
    tokio::spawn(tracing::Instrument::in_current_span(events_loop(
        agent.clone(),
        ev_rx,
    )));
    tokio::spawn(tracing::Instrument::in_current_span(upload_loop(
        agent.clone(),
    )));
    // A preemption notice goes to the coordinator, which drains the node
    // at once and takes back the frames it has not rendered; the node
    // goes on uploading what it rendered until its machine is taken.
    let notified = agent.clone();
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        while preempt.recv().await.is_some() {
            warn!("SIGUSR1: preemption notice; the coordinator takes back the frames not rendered yet");
            notified.send_or_keep(NodeToCoord::Preempted);
        }
    }));

    // The node's identity: its own certificate, kept in its data dir.
    let identity = crate::tls::Identity::load_or_create(&cfg.data_dir)?;
    info!(fingerprint = %identity.fingerprint(), "node identity");
    let client = crate::tls::client_config_with(&cfg.trust, &identity)?;
    let bind: SocketAddr = if cfg.coordinator.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()?;
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(client);

    let (quit_tx, quit_rx) = watch::channel(false);
    let mut sessions = tokio::spawn(tracing::Instrument::in_current_span(reconnect_loop(
        endpoint.clone(),
        node_id,
        cfg.clone(),
        caps,
        agent.clone(),
        quit_rx,
    )));
    // A closed stop channel never stops the node.
    let mut stopped = async || match stop.recv().await {
        Some(name) => name,
        None => std::future::pending().await,
    };
    tokio::select! {
        ended = &mut sessions => return ended.context("the connection task")?,
        name = stopped() => info!("{name}: leaving once the running chunk is done and uploaded"),
    }
    agent.start_leaving();
    let deadline = tokio::time::sleep(Duration::from_millis(limits.drain_timeout_ms));
    tokio::pin!(deadline);
    let mut refused = None;
    loop {
        tokio::select! {
            _ = &mut deadline => {
                warn!(timeout_ms = limits.drain_timeout_ms, "drain timed out; leaving, the spool stays on disk");
                break;
            }
            name = stopped() => {
                warn!("second stop ({name}): leaving now, the spool stays on disk");
                break;
            }
            ended = &mut sessions => {
                refused = Some(ended);
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)) => {
                if agent.drained() {
                    break;
                }
            }
        }
    }
    let _ = quit_tx.send(true);
    if refused.is_none() {
        // The session says goodbye itself (its last messages, then the
        // close with NODE_LEAVING).
        if tokio::time::timeout(Duration::from_millis(CLOSE_LINGER_MS), &mut sessions)
            .await
            .is_err()
        {
            sessions.abort();
        }
    }
    // The close frame goes out on the next datagram; a short wait lets the
    // endpoint send it.
    let _ = tokio::time::timeout(Duration::from_millis(CLOSE_FLUSH_MS), endpoint.wait_idle()).await;
    let left = locked(&agent.work).spool.len();
    info!(spooled = left, "node stopped");
    match refused {
        Some(ended) => ended.context("the connection task")?,
        None => Ok(()),
    }
}

/// Connects, runs a session, and reconnects with backoff and jitter, until
/// the coordinator refuses the node for good (an error) or `quit` is set.
async fn reconnect_loop(
    endpoint: quinn::Endpoint,
    node_id: String,
    cfg: AgentConfig,
    caps: Capabilities,
    agent: Arc<Agent>,
    mut quit: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff_ms = RECONNECT_MIN_MS;
    loop {
        if *quit.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        match session(&endpoint, &node_id, &cfg, &caps, &agent, quit.clone()).await {
            Ok(SessionEnd::Refused {
                reason,
                permanent: true,
            }) => {
                anyhow::bail!("coordinator refused this node: {reason}")
            }
            Ok(SessionEnd::Refused {
                reason,
                permanent: false,
            }) => {
                error!("coordinator refused this node, retrying: {reason}");
                backoff_ms = RECONNECT_MAX_MS;
            }
            Ok(SessionEnd::Lost(why)) => {
                warn!("connection to coordinator lost: {why}");
                // It was up a moment ago (a restart, a blip): try again
                // soon, however short the session was. A coordinator
                // killed every few seconds otherwise found its nodes
                // backing off to the longest delay.
                backoff_ms = RECONNECT_MIN_MS;
            }
            Ok(SessionEnd::Left) => return Ok(()),
            Err(e) => warn!("cannot reach coordinator at {}: {e:#}", cfg.coordinator),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff_ms = RECONNECT_MIN_MS;
        }
        // Full jitter: a farm of nodes must not reconnect in lockstep.
        let delay = rand::rng().random_range(backoff_ms / 2..=backoff_ms);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            _ = quit.wait_for(|q| *q) => return Ok(()),
        }
        backoff_ms = (backoff_ms * 2).min(RECONNECT_MAX_MS);
    }
}

/// One connection to the coordinator, from the handshake to its end. The
/// work it leaves behind stays with the agent.
async fn session(
    endpoint: &quinn::Endpoint,
    node_id: &str,
    cfg: &AgentConfig,
    caps: &Capabilities,
    agent: &Arc<Agent>,
    mut quit: watch::Receiver<bool>,
) -> anyhow::Result<SessionEnd> {
    let connecting = endpoint.connect(cfg.coordinator, CERT_SERVER_NAME)?;
    let conn = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
        .await
        .map_err(|_| anyhow::anyhow!("no QUIC handshake within {CONNECT_TIMEOUT_MS} ms"))??;
    let (mut send, mut recv) = conn.open_bi().await?;
    let (running, spooled) = agent.hello_lists();
    let (n_running, n_spooled) = (running.len(), spooled.len());
    let hello = Hello {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: node_id.to_string(),
        name: cfg.name.clone(),
        capabilities: caps.into(),
        running,
        spooled,
        join_token: cfg.join_token.clone().unwrap_or_default(),
    };
    let heartbeat_ms = match open_control(&mut send, &mut recv, hello).await? {
        Opened::Welcome {
            heartbeat_interval_ms,
        } => heartbeat_interval_ms,
        Opened::Ended(end) => {
            conn.close(close_code::BYE.into(), b"bye");
            return Ok(end);
        }
    };
    info!(coordinator = %cfg.coordinator, running = n_running, spooled = n_spooled, "connected");

    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<NodeToCoord>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if codec::write_msg(&mut send, &msg).await.is_err() {
                return;
            }
        }
        // Every sender is gone: the session is over, said in full.
        let _ = send.finish();
    });
    // A leaving node says so before anything else, so that the
    // coordinator sends it no new work.
    if agent.leaving.load(Ordering::Relaxed) {
        let _ = out_tx.send(NodeToCoord::Leaving);
    }
    for msg in locked(&agent.outbox).drain(..) {
        let _ = out_tx.send(msg);
    }
    agent.link.send_replace(Some(Link {
        conn: conn.clone(),
        out: out_tx.clone(),
    }));
    let heartbeat = tokio::spawn(heartbeats(agent.clone(), out_tx.clone(), heartbeat_ms));
    drop(out_tx);
    // Frames are read on a task of their own: reading is not cancel-safe,
    // and the loop below also waits for the node to leave.
    let (in_tx, mut in_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let msg = codec::read_msg::<_, CoordToNode>(&mut recv, MAX_CONTROL_FRAME_BYTES).await;
            let last = !matches!(msg, Ok(Some(_)));
            if in_tx.send(msg).is_err() || last {
                return;
            }
        }
    });

    let end = loop {
        let msg = tokio::select! {
            msg = in_rx.recv() => msg,
            _ = quit.wait_for(|q| *q) => break SessionEnd::Left,
        };
        match msg {
            Some(Ok(Some(CoordToNode::Assign(a)))) => agent.assign(a),
            Some(Ok(Some(CoordToNode::Cancel(c)))) => agent.cancel(c),
            Some(Ok(Some(CoordToNode::Shrink {
                chunk,
                proposed_end,
            }))) => {
                // Answered here, on the control loop, without waiting for
                // the executor: the window's lock makes the answer exact
                // whatever the executor is doing.
                let end = agent.shrink(chunk, proposed_end);
                info!(job = chunk.job, chunk = chunk.index, epoch = chunk.epoch, proposed_end,
                    answer = ?end, "shrink");
                agent.send(NodeToCoord::ShrinkAck(ShrinkAck { chunk, end }));
            }
            // After the welcome a refusal is the coordinator's to give,
            // never a version matter (the preambles settled that).
            Some(Ok(Some(CoordToNode::Refused { reason, permanent }))) => {
                break SessionEnd::Refused { reason, permanent }
            }
            Some(Ok(Some(CoordToNode::Welcome { .. }))) => warn!("unexpected second welcome"),
            Some(Ok(None)) | None => {
                break SessionEnd::Lost(lost_why(&conn, "coordinator closed the control stream"))
            }
            Some(Err(e)) => break SessionEnd::Lost(lost_why(&conn, &e.to_string())),
        }
    };
    // The work stays; only this connection goes.
    agent.link.send_replace(None);
    heartbeat.abort();
    reader.abort();
    if end == SessionEnd::Left {
        // The last outcomes and the goodbye reach the coordinator before
        // the close.
        let _ = tokio::time::timeout(Duration::from_millis(CLOSE_LINGER_MS), writer).await;
        conn.close(close_code::NODE_LEAVING.into(), b"node leaving");
    } else {
        writer.abort();
        conn.close(close_code::BYE.into(), b"bye");
    }
    Ok(end)
}

/// Why a session was lost, in words; a coordinator shutting down says so
/// in its close, and the node then waits for it like for any lost one.
fn lost_why(conn: &quinn::Connection, fallback: &str) -> String {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == close_code::COORDINATOR_SHUTTING_DOWN.into() =>
        {
            "the coordinator is shutting down; reconnecting until it is back".into()
        }
        Some(e) => format!("{fallback}: {e}"),
        None => fallback.to_string(),
    }
}

/// Memory in use (total less what the kernel says is available: page cache
/// counts as free), percent of the machine's memory, within the bound the
/// coordinator checks.
fn memory_load_pct(sys: &sysinfo::System) -> f32 {
    let total = sys.total_memory();
    if total == 0 {
        return 0.0;
    }
    let used = total.saturating_sub(sys.available_memory());
    ((used as f64 / total as f64) * 100.0).clamp(0.0, 100.0) as f32
}

/// Sends a heartbeat every `interval_ms` on one session.
async fn heartbeats(agent: Arc<Agent>, out: mpsc::UnboundedSender<NodeToCoord>, interval_ms: u64) {
    let mut sys = sysinfo::System::new().ok();
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.clamp(100, 60_000)));
    loop {
        tick.tick().await;
        let (cpu_load_pct, memory_load_pct) = match sys.as_mut() {
            Some(sys) => {
                sys.refresh_cpu_usage();
                sys.refresh_memory();
                (sys.global_cpu_usage(), memory_load_pct(sys))
            }
            None => (0.0, 0.0),
        };
        let chunks = locked(&agent.work)
            .held
            .iter()
            // Queued chunks are not reported: only the executor's first
            // progress (0 frames) marks a chunk started.
            .filter(|(_, h)| h.started())
            .map(|(c, h)| ChunkProgress {
                chunk: *c,
                frames_done: h.frames_done.load(Ordering::Relaxed),
            })
            .collect();
        let hb = Heartbeat {
            cpu_load_pct,
            memory_load_pct,
            chunks,
        };
        if out.send(NodeToCoord::Heartbeat(hb)).is_err() {
            return;
        }
    }
}

/// The executor's reports, for the agent's whole life.
async fn events_loop(agent: Arc<Agent>, mut events: mpsc::UnboundedReceiver<WorkerEvent>) {
    let mut last_progress: HashMap<ChunkRef, Instant> = HashMap::new();
    while let Some(ev) = events.recv().await {
        match ev {
            WorkerEvent::Progress {
                chunk,
                frames_done,
                total,
            } => {
                let now = Instant::now();
                let due = last_progress.get(&chunk).is_none_or(|t| {
                    now.duration_since(*t) >= Duration::from_millis(PROGRESS_INTERVAL_MS)
                });
                if due || frames_done == 0 || frames_done == total {
                    last_progress.insert(chunk, now);
                    agent.send(NodeToCoord::Progress(ChunkProgress { chunk, frames_done }));
                }
            }
            WorkerEvent::Finished {
                assign,
                start,
                end,
                path,
                hash,
                adapter,
                elapsed_ms,
            } => {
                last_progress.remove(&assign.chunk);
                let meta = SegmentMeta {
                    job: assign.chunk.job,
                    index: assign.chunk.index,
                    epoch: assign.chunk.epoch,
                    start,
                    end,
                    size_bytes: 0,
                    hash: hex::encode(hash),
                    encoder: assign.encoder.clone(),
                    adapter,
                    elapsed_ms,
                };
                finished(&agent, meta, path).await;
            }
            WorkerEvent::Log {
                chunk,
                offset,
                text,
                last,
            } => {
                let msg = NodeToCoord::ChunkLog(ChunkLog {
                    chunk,
                    offset,
                    text,
                    last,
                });
                // The last piece waits for a session with the chunk's
                // outcome, which it must precede; the others matter only
                // to a live session (the coordinator marks a hole).
                if last {
                    agent.send_or_keep(msg);
                } else {
                    agent.send(msg);
                }
            }
            WorkerEvent::Failed {
                chunk,
                reason,
                log_tail,
                failed_frame,
            } => {
                last_progress.remove(&chunk);
                let cancelled = locked(&agent.work)
                    .held
                    .remove(&chunk)
                    .is_none_or(|h| h.cancelled());
                if !cancelled {
                    error!(
                        job = chunk.job,
                        chunk = chunk.index,
                        "chunk failed: {reason}"
                    );
                    agent.send_or_keep(NodeToCoord::Failed(ChunkFailed {
                        chunk,
                        reason,
                        log_tail,
                        failed_frame,
                    }));
                }
            }
        }
    }
}

/// A segment is finished: made durable in the spool (or dropped, when its
/// chunk was cancelled meanwhile), then offered for upload.
async fn finished(agent: &Agent, mut meta: SegmentMeta, path: PathBuf) {
    let chunk = meta.chunk();
    let cancelled = locked(&agent.work)
        .held
        .get(&chunk)
        .is_some_and(|h| h.cancelled());
    let kept = if cancelled {
        Err(anyhow::anyhow!("cancelled"))
    } else {
        let path = path.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Spooled> {
            meta.size_bytes = std::fs::metadata(&path)?.len();
            Ok(spool::keep(&path, &meta)?)
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
    };
    // Held until now, spooled from now: a hello in between sees it once.
    let failed = {
        let mut work = locked(&agent.work);
        work.held.remove(&chunk);
        match kept {
            Ok(s) => {
                info!(job = chunk.job, chunk = chunk.index,
                    frames = %format!("{}-{}", s.meta.start, s.meta.end),
                    bytes = s.meta.size_bytes, "segment spooled");
                work.spool.insert(s);
                None
            }
            Err(e) => Some(e),
        }
    };
    let Some(e) = failed else {
        agent.spooled.notify_one();
        return;
    };
    let _ = tokio::task::spawn_blocking(move || spool::discard(&path)).await;
    if !cancelled {
        error!(
            job = chunk.job,
            chunk = chunk.index,
            "spooling the segment failed: {e:#}"
        );
        agent.send_or_keep(NodeToCoord::Failed(ChunkFailed {
            chunk,
            reason: format!("spooling the segment failed: {e:#}"),
            log_tail: String::new(),
            failed_frame: None,
        }));
    }
}

/// When a segment may be offered again.
struct Retry {
    attempts: u32,
    at: Instant,
}

/// Offers spooled segments to the coordinator of the moment, for the
/// agent's whole life (see the module doc).
async fn upload_loop(agent: Arc<Agent>) {
    let mut link_rx = agent.link.subscribe();
    let mut in_flight: JoinSet<(SpoolKey, Result<Offered, UploadError>)> = JoinSet::new();
    let mut by_task: HashMap<tokio::task::Id, SpoolKey> = HashMap::new();
    let mut retry: HashMap<SpoolKey, Retry> = HashMap::new();
    loop {
        let link = link_rx.borrow_and_update().clone();
        if let Some(link) = link {
            let now = Instant::now();
            let busy: HashSet<SpoolKey> = by_task.values().copied().collect();
            let free = MAX_UPLOADS_IN_FLIGHT.saturating_sub(busy.len());
            let next: Vec<Spooled> = locked(&agent.work)
                .spool
                .entries()
                .filter(|s| {
                    let k = spool::key(&s.meta.chunk());
                    !busy.contains(&k) && retry.get(&k).is_none_or(|r| r.at <= now)
                })
                .take(free)
                .cloned()
                .collect();
            for s in next {
                let k = spool::key(&s.meta.chunk());
                let conn = link.conn.clone();
                let handle =
                    in_flight.spawn(async move { (k, upload::offer_quic(&conn, &s).await) });
                by_task.insert(handle.id(), k);
            }
        }
        let next_retry = retry.values().map(|r| r.at).min();
        let wait = next_retry
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(50));
        tokio::select! {
            _ = agent.spooled.notified() => {}
            changed = link_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new session: every segment is offered at once.
                if link_rx.borrow().is_some() {
                    retry.clear();
                }
            }
            _ = tokio::time::sleep(wait) => {}
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                let (id, key, result) = match done {
                    Ok((id, (key, result))) => (id, key, result),
                    Err(e) => {
                        error!("an upload task failed: {e}");
                        by_task.remove(&e.id());
                        continue;
                    }
                };
                by_task.remove(&id);
                uploaded(&agent, key, result, &mut retry).await;
            }
        }
    }
}

/// Acts on the end of one offer.
async fn uploaded(
    agent: &Agent,
    key: SpoolKey,
    result: Result<Offered, UploadError>,
    retry: &mut HashMap<SpoolKey, Retry>,
) {
    let (job, index, _) = key;
    let mut later = |why: &str| {
        let r = retry.entry(key).or_insert(Retry {
            attempts: 0,
            at: Instant::now(),
        });
        r.attempts += 1;
        let ms = UPLOAD_RETRY_MIN_MS
            .saturating_mul(1 << r.attempts.min(16).saturating_sub(1))
            .min(UPLOAD_RETRY_MAX_MS);
        let ms = rand::rng().random_range(ms / 2..=ms);
        r.at = Instant::now() + Duration::from_millis(ms);
        info!(job, chunk = index, retry_ms = ms, "upload deferred: {why}");
    };
    match result {
        Ok(Offered::Stored { offset_bytes }) => {
            retry.remove(&key);
            let Some(s) = agent.unspool(key).await else {
                return;
            };
            info!(
                job,
                chunk = index,
                bytes = s.meta.size_bytes,
                resumed_at = offset_bytes,
                "segment stored"
            );
            let Some(output_hash) = s.meta.hash_bytes() else {
                return;
            };
            agent.send_or_keep(NodeToCoord::Done(ChunkDone {
                chunk: s.meta.chunk(),
                start: s.meta.start,
                end: s.meta.end,
                output_hash,
                adapter: s.meta.adapter,
                elapsed_ms: s.meta.elapsed_ms,
            }));
        }
        Ok(Offered::NotNeeded(why)) => {
            retry.remove(&key);
            info!(job, chunk = index, "segment not needed, deleted: {why}");
            agent.unspool(key).await;
        }
        Ok(Offered::Later(why)) => later(&why),
        Ok(Offered::Rejected(why)) => {
            retry.remove(&key);
            warn!(job, chunk = index, "segment rejected, deleted: {why}");
            bad_copy(
                agent,
                key,
                format!("the coordinator rejected the segment: {why}"),
            )
            .await;
        }
        Err(e @ UploadError::Spool { .. }) => {
            retry.remove(&key);
            warn!(job, chunk = index, "spooled segment unusable, deleted: {e}");
            bad_copy(agent, key, e.to_string()).await;
        }
        Err(e @ UploadError::Transport(_)) => later(&e.to_string()),
    }
}

/// Deletes a bad spooled copy and reports its chunk failed (the node
/// renders nothing again by itself: the coordinator decides).
async fn bad_copy(agent: &Agent, key: SpoolKey, reason: String) {
    if let Some(s) = agent.unspool(key).await {
        agent.send_or_keep(NodeToCoord::Failed(ChunkFailed {
            chunk: s.meta.chunk(),
            reason,
            log_tail: String::new(),
            failed_frame: None,
        }));
    }
}

/// How opening the control stream ended.
#[derive(Debug, PartialEq)]
enum Opened {
    /// The coordinator took the node.
    Welcome { heartbeat_interval_ms: u64 },
    /// The session is over before it began.
    Ended(SessionEnd),
}

/// Opens the control stream: the stream kind, both preambles, then hello
/// and the coordinator's welcome or refusal.
///
/// The preambles come first, before any archive, so that a coordinator of
/// another protocol version is told apart from a broken one: the node
/// stops for good when the versions differ or the peer is not Drover at
/// all, and retries when the stream merely closed. Transport errors while
/// writing are `Err` (the caller retries).
async fn open_control<W, R>(send: &mut W, recv: &mut R, hello: Hello) -> anyhow::Result<Opened>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    send.write_u8(StreamKind::Control as u8).await?;
    preamble::write(send, PROTOCOL_VERSION).await?;
    let theirs = tokio::time::timeout(
        Duration::from_millis(PREAMBLE_TIMEOUT_MS),
        preamble::read(recv),
    )
    .await;
    match theirs {
        Ok(Ok(version)) if version == PROTOCOL_VERSION => {}
        Ok(Ok(version)) => {
            return Ok(Opened::Ended(SessionEnd::Refused {
                reason: format!(
                    "coordinator speaks protocol {version}, this node speaks {PROTOCOL_VERSION}; upgrade the older side"
                ),
                permanent: true,
            }))
        }
        Ok(Err(e @ PreambleError::BadMagic(_))) => {
            return Ok(Opened::Ended(SessionEnd::Refused {
                reason: format!("the coordinator's address answers, but not as Drover: {e}"),
                permanent: true,
            }))
        }
        Ok(Err(PreambleError::Io(e))) => {
            return Ok(Opened::Ended(SessionEnd::Lost(format!(
                "coordinator closed the stream before answering the preamble: {e}"
            ))))
        }
        Err(_) => {
            return Ok(Opened::Ended(SessionEnd::Lost(format!(
                "no preamble from the coordinator within {PREAMBLE_TIMEOUT_MS} ms"
            ))))
        }
    }
    codec::write_msg(send, &NodeToCoord::Hello(Box::new(hello))).await?;
    // The same bound as the preamble's: keep-alives would hold a coordinator
    // that never answers the hello open forever.
    let answer = tokio::time::timeout(
        Duration::from_millis(PREAMBLE_TIMEOUT_MS),
        codec::read_msg::<_, CoordToNode>(recv, MAX_CONTROL_FRAME_BYTES),
    )
    .await;
    let Ok(answer) = answer else {
        return Ok(Opened::Ended(SessionEnd::Lost(format!(
            "no answer to the hello within {PREAMBLE_TIMEOUT_MS} ms"
        ))));
    };
    match answer? {
        Some(CoordToNode::Welcome {
            heartbeat_interval_ms,
        }) => Ok(Opened::Welcome {
            heartbeat_interval_ms,
        }),
        // A refusal after equal preambles may clear (a name in use: the
        // node retries) or not (not admitted: it stops).
        Some(CoordToNode::Refused { reason, permanent }) => {
            Ok(Opened::Ended(SessionEnd::Refused { reason, permanent }))
        }
        Some(other) => anyhow::bail!("expected welcome, got {other:?}"),
        None => Ok(Opened::Ended(SessionEnd::Lost(
            "coordinator closed the stream during the handshake".into(),
        ))),
    }
}

/// Tags as the node reports them: trimmed, without empty ones or repeats,
/// in the order given.
fn clean_tags(tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in tags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    out
}

/// The node's id, made on first start (16 random bytes, hex) and kept in
/// `data_dir/node-id`.
pub fn load_or_create_node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
        warn!(path = %path.display(), "ignoring a malformed node id; making a new one");
    }
    let id = hex::encode(rand::random::<[u8; 16]>());
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Keeps quinn's keep-alive in one place.
pub(crate) fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS))
            .expect("small timeout"),
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// What the coordinator side of the test does after reading the node's
    /// stream kind and preamble.
    enum Coordinator {
        /// Answers these preamble bytes, then `welcome` or a refusal.
        Preamble([u8; preamble::PREAMBLE_BYTES], Option<CoordToNode>),
        /// Closes the stream without a preamble.
        Close,
    }

    /// Opens the control stream against a scripted coordinator over an
    /// in-memory pipe; returns the outcome and the hello it received.
    async fn open_against(script: Coordinator) -> (Opened, Option<Hello>) {
        let (node, coord) = tokio::io::duplex(64 * 1024);
        let peer = tokio::spawn(async move {
            let mut coord: DuplexStream = coord;
            assert_eq!(coord.read_u8().await.unwrap(), StreamKind::Control as u8);
            let theirs = preamble::read(&mut coord).await.unwrap();
            assert_eq!(theirs, PROTOCOL_VERSION);
            match script {
                Coordinator::Close => None,
                Coordinator::Preamble(bytes, answer) => {
                    coord.write_all(&bytes).await.unwrap();
                    let answer = answer?;
                    let hello = match codec::read_msg::<_, NodeToCoord>(&mut coord, 1 << 20)
                        .await
                        .unwrap()
                    {
                        Some(NodeToCoord::Hello(h)) => *h,
                        other => panic!("expected hello, got {other:?}"),
                    };
                    codec::write_msg(&mut coord, &answer).await.unwrap();
                    Some(hello)
                }
            }
        });
        let (mut recv, mut send) = tokio::io::split(node);
        let hello = Hello {
            agent_version: "test".into(),
            node_id: "0".repeat(32),
            name: "n1".into(),
            capabilities: (&Capabilities::default()).into(),
            running: vec![],
            spooled: vec![],
            join_token: String::new(),
        };
        let opened = open_control(&mut send, &mut recv, hello).await.unwrap();
        (opened, peer.await.unwrap())
    }

    fn refused(opened: &Opened) -> (&str, bool) {
        match opened {
            Opened::Ended(SessionEnd::Refused { reason, permanent }) => (reason, *permanent),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn another_protocol_version_is_a_permanent_refusal_naming_both() {
        let (opened, hello) = open_against(Coordinator::Preamble(preamble::encode(1), None)).await;
        let (reason, permanent) = refused(&opened);
        assert!(permanent);
        assert_eq!(
            reason,
            format!("coordinator speaks protocol 1, this node speaks {PROTOCOL_VERSION}; upgrade the older side")
        );
        assert!(hello.is_none(), "no hello after a version mismatch");
    }

    #[tokio::test]
    async fn bad_magic_is_permanent() {
        let (opened, _) = open_against(Coordinator::Preamble(*b"HTTP/1.1", None)).await;
        let (reason, permanent) = refused(&opened);
        assert!(permanent);
        assert!(reason.contains("not a Drover peer"), "{reason}");
    }

    #[tokio::test]
    async fn a_stream_closed_before_the_preamble_is_lost_not_refused() {
        let (opened, _) = open_against(Coordinator::Close).await;
        assert!(
            matches!(&opened, Opened::Ended(SessionEnd::Lost(why)) if why.contains("before answering the preamble")),
            "{opened:?}"
        );
    }

    #[tokio::test]
    async fn same_version_goes_on_to_hello_and_welcome() {
        let welcome = CoordToNode::Welcome {
            heartbeat_interval_ms: 750,
        };
        let (opened, hello) = open_against(Coordinator::Preamble(
            preamble::encode(PROTOCOL_VERSION),
            Some(welcome),
        ))
        .await;
        assert_eq!(
            opened,
            Opened::Welcome {
                heartbeat_interval_ms: 750
            }
        );
        assert_eq!(hello.map(|h| h.name), Some("n1".to_string()));

        // A refusal of the same version (a name in use) is retried.
        let refusal = CoordToNode::Refused {
            reason: "name n1 is in use".into(),
            permanent: false,
        };
        let (opened, _) = open_against(Coordinator::Preamble(
            preamble::encode(PROTOCOL_VERSION),
            Some(refusal),
        ))
        .await;
        assert_eq!(refused(&opened), ("name n1 is in use", false));
        // Not admitted: the node stops, saying why.
        let refusal = CoordToNode::Refused {
            reason: "not admitted: no join token".into(),
            permanent: true,
        };
        let (opened, _) = open_against(Coordinator::Preamble(
            preamble::encode(PROTOCOL_VERSION),
            Some(refusal),
        ))
        .await;
        assert_eq!(refused(&opened), ("not admitted: no join token", true));
    }

    #[test]
    fn tags_are_cleaned() {
        let v = |s: &[&str]| s.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_eq!(
            clean_tags(&v(&[" fast", "gpu ", "", "fast", "  "])),
            v(&["fast", "gpu"])
        );
        assert!(clean_tags(&[]).is_empty());
    }
}

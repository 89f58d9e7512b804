//! The node agent's connection to the coordinator: connect, preamble and
//! hello, heartbeats, assignments, shrinks, uploads, and reconnection with
//! backoff and jitter.
//!
//! One executor thread runs chunks one at a time (rendering and encoding
//! overlap inside a chunk); the async side only moves messages and files.
//! A `Shrink` is answered at once on the control loop, through the chunk's
//! [`FrameWindow`], which the executor consults before starting each frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use drover_protocol::preamble::{self, PreambleError};
use drover_protocol::{
    codec, ChunkDone, ChunkFailed, ChunkProgress, ChunkRef, CoordToNode, Heartbeat, Hello,
    NodeToCoord, ShrinkAck, StreamKind, UploadHeader, UploadReply, MAX_CONTROL_FRAME_BYTES,
    PROTOCOL_VERSION,
};
use drover_shared::caps::Capabilities;
use drover_shared::config::CERT_SERVER_NAME;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::exec::{Executor, FrameWindow, TestAids, WorkItem, WorkerEvent};
use crate::render::Gpu;
use crate::tls::Trust;

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
const IDLE_TIMEOUT_MS: u64 = 10_000;
/// Longest wait for the coordinator's preamble. QUIC keep-alives keep a
/// connection open even when the coordinator never answers on the stream,
/// so the idle timeout alone would not end such a session.
const PREAMBLE_TIMEOUT_MS: u64 = 10_000;

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
}

/// One chunk this session holds, shared with the executor (which writes
/// progress and starts frames), the heartbeat (reads progress) and the
/// control loop (cancels and shrinks).
struct HeldChunk {
    /// Set when the coordinator cancels the chunk or the session ends.
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
}

/// Chunks this session holds.
type Held = Arc<Mutex<HashMap<ChunkRef, HeldChunk>>>;

/// How a session ended.
#[derive(Debug, PartialEq)]
enum SessionEnd {
    /// The coordinator refused us; `permanent` when it speaks another
    /// protocol version (retrying cannot help), otherwise (name in use, say)
    /// the node retries with backoff, as the cause may clear.
    Refused { reason: String, permanent: bool },
    /// The connection went away.
    Lost(String),
}

/// Runs the agent until the coordinator refuses it (an error) or the process
/// is stopped.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let aids = TestAids {
        slowdown_factor: cfg.slowdown_factor,
        fail_frames: cfg.fail_frames.clone(),
    };
    aids.check()
        .map_err(|e| anyhow::anyhow!("--slowdown: {e}"))?;
    let spool = cfg.data_dir.join("spool");
    // Segments left by an earlier run belong to chunks the coordinator has
    // requeued since (it re-adopts nothing yet), so they are dropped.
    if spool.exists() {
        std::fs::remove_dir_all(&spool).with_context(|| format!("clearing {}", spool.display()))?;
    }
    std::fs::create_dir_all(&spool).with_context(|| format!("creating {}", spool.display()))?;
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
    let executor = Executor::start(gpu, spool, aids);
    let client = crate::tls::client_config(&cfg.trust)?;
    let bind: SocketAddr = if cfg.coordinator.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()?;
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(client);

    let mut backoff_ms = RECONNECT_MIN_MS;
    loop {
        let started = Instant::now();
        match session(&endpoint, &node_id, &cfg, &caps, &executor).await {
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
            Ok(SessionEnd::Lost(why)) => warn!("connection to coordinator lost: {why}"),
            Err(e) => warn!("cannot reach coordinator at {}: {e:#}", cfg.coordinator),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff_ms = RECONNECT_MIN_MS;
        }
        // Full jitter: a farm of nodes must not reconnect in lockstep.
        let delay = rand::rng().random_range(backoff_ms / 2..=backoff_ms);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        backoff_ms = (backoff_ms * 2).min(RECONNECT_MAX_MS);
    }
}

async fn session(
    endpoint: &quinn::Endpoint,
    node_id: &str,
    cfg: &AgentConfig,
    caps: &Capabilities,
    executor: &Executor,
) -> anyhow::Result<SessionEnd> {
    let connecting = endpoint.connect(cfg.coordinator, CERT_SERVER_NAME)?;
    let conn = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
        .await
        .map_err(|_| anyhow::anyhow!("no QUIC handshake within {CONNECT_TIMEOUT_MS} ms"))??;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: node_id.to_string(),
        name: cfg.name.clone(),
        capabilities: caps.into(),
    };
    let heartbeat_ms = match open_control(&mut send, &mut recv, hello).await? {
        Opened::Welcome {
            heartbeat_interval_ms,
        } => heartbeat_interval_ms,
        Opened::Ended(end) => {
            conn.close(0u32.into(), b"bye");
            return Ok(end);
        }
    };
    info!(coordinator = %cfg.coordinator, "connected");

    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<NodeToCoord>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if codec::write_msg(&mut send, &msg).await.is_err() {
                break;
            }
        }
    });
    let held: Held = Arc::default();
    let heartbeat = {
        let out = out_tx.clone();
        let held = held.clone();
        tokio::spawn(async move {
            let mut sys = sysinfo::System::new().ok();
            let mut tick =
                tokio::time::interval(Duration::from_millis(heartbeat_ms.clamp(100, 60_000)));
            loop {
                tick.tick().await;
                let cpu_load_pct = match sys.as_mut() {
                    Some(sys) => {
                        sys.refresh_cpu_usage();
                        sys.global_cpu_usage()
                    }
                    None => 0.0,
                };
                let chunks = held
                    .lock()
                    .expect("held map")
                    .iter()
                    // Queued chunks are not reported: only the executor's
                    // first progress (0 frames) marks a chunk started.
                    .filter(|(_, h)| h.frames_done.load(Ordering::Relaxed) != NOT_STARTED)
                    .map(|(c, h)| ChunkProgress {
                        chunk: *c,
                        frames_done: h.frames_done.load(Ordering::Relaxed),
                    })
                    .collect();
                let hb = Heartbeat {
                    cpu_load_pct,
                    chunks,
                };
                if out.send(NodeToCoord::Heartbeat(hb)).is_err() {
                    break;
                }
            }
        })
    };
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<WorkerEvent>();
    let events = {
        let out = out_tx.clone();
        let held = held.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut last_progress: HashMap<ChunkRef, Instant> = HashMap::new();
            while let Some(ev) = ev_rx.recv().await {
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
                            let _ = out
                                .send(NodeToCoord::Progress(ChunkProgress { chunk, frames_done }));
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
                        let segment = Segment {
                            chunk: assign.chunk,
                            start,
                            end,
                            path: &path,
                            hash,
                        };
                        let msg = match upload(&conn, &segment).await {
                            Ok(()) => {
                                // The coordinator has it: the spool copy can go.
                                let _ = tokio::fs::remove_file(&path).await;
                                NodeToCoord::Done(ChunkDone {
                                    chunk: assign.chunk,
                                    start,
                                    end,
                                    output_hash: hash,
                                    adapter,
                                    elapsed_ms,
                                })
                            }
                            Err(e) => {
                                // The chunk will be rendered again; a stale
                                // segment must not fill the spool.
                                let _ = tokio::fs::remove_file(&path).await;
                                NodeToCoord::Failed(ChunkFailed {
                                    chunk: assign.chunk,
                                    reason: format!("upload failed: {e:#}"),
                                    log_tail: String::new(),
                                    failed_frame: None,
                                })
                            }
                        };
                        held.lock().expect("held map").remove(&assign.chunk);
                        let _ = out.send(msg);
                    }
                    WorkerEvent::Failed {
                        chunk,
                        reason,
                        log_tail,
                        failed_frame,
                    } => {
                        last_progress.remove(&chunk);
                        let cancelled = held
                            .lock()
                            .expect("held map")
                            .remove(&chunk)
                            .is_none_or(|h| h.cancel.load(Ordering::Relaxed));
                        if !cancelled {
                            error!(
                                job = chunk.job,
                                chunk = chunk.index,
                                "chunk failed: {reason}"
                            );
                            let _ = out.send(NodeToCoord::Failed(ChunkFailed {
                                chunk,
                                reason,
                                log_tail,
                                failed_frame,
                            }));
                        }
                    }
                }
            }
        })
    };

    let end = loop {
        match codec::read_msg::<_, CoordToNode>(&mut recv, MAX_CONTROL_FRAME_BYTES).await {
            Ok(Some(CoordToNode::Assign(a))) => {
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
                        let _ = out_tx.send(NodeToCoord::Failed(ChunkFailed {
                            chunk: a.chunk,
                            reason: e.to_string(),
                            log_tail: String::new(),
                            failed_frame: None,
                        }));
                        continue;
                    }
                };
                let cancel = Arc::new(AtomicBool::new(false));
                let done = Arc::new(AtomicU64::new(NOT_STARTED));
                held.lock().expect("held map").insert(
                    a.chunk,
                    HeldChunk {
                        cancel: cancel.clone(),
                        frames_done: done.clone(),
                        window: window.clone(),
                    },
                );
                executor.submit(WorkItem {
                    assign: a,
                    cancel,
                    frames_done: done,
                    window,
                    events: ev_tx.clone(),
                });
            }
            Ok(Some(CoordToNode::Cancel(c))) => {
                info!(job = c.job, chunk = c.index, "cancelled by coordinator");
                if let Some(h) = held.lock().expect("held map").get(&c) {
                    h.cancel.store(true, Ordering::Relaxed);
                }
            }
            Ok(Some(CoordToNode::Shrink {
                chunk,
                proposed_end,
            })) => {
                // Answered here, on the control loop, without waiting for the
                // executor: the window's lock makes the answer exact whatever
                // the executor is doing.
                let end = held
                    .lock()
                    .expect("held map")
                    .get(&chunk)
                    .and_then(|h| h.shrink(proposed_end));
                info!(job = chunk.job, chunk = chunk.index, epoch = chunk.epoch, proposed_end,
                    answer = ?end, "shrink");
                let _ = out_tx.send(NodeToCoord::ShrinkAck(ShrinkAck { chunk, end }));
            }
            Ok(Some(CoordToNode::Refused {
                reason,
                protocol_version,
            })) => {
                break SessionEnd::Refused {
                    reason,
                    permanent: protocol_version != PROTOCOL_VERSION,
                }
            }
            Ok(Some(CoordToNode::Welcome { .. })) => warn!("unexpected second welcome"),
            Ok(None) => break SessionEnd::Lost("coordinator closed the control stream".into()),
            Err(e) => break SessionEnd::Lost(e.to_string()),
        }
    };
    // The coordinator requeues whatever this session held; stop working on it.
    for h in held.lock().expect("held map").values() {
        h.cancel.store(true, Ordering::Relaxed);
    }
    heartbeat.abort();
    writer.abort();
    events.abort();
    conn.close(0u32.into(), b"bye");
    Ok(end)
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
            ..
        }) => Ok(Opened::Welcome {
            heartbeat_interval_ms,
        }),
        Some(CoordToNode::Refused {
            reason,
            protocol_version,
        }) => Ok(Opened::Ended(SessionEnd::Refused {
            reason,
            permanent: protocol_version != PROTOCOL_VERSION,
        })),
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

/// A finished segment in the spool.
struct Segment<'a> {
    chunk: ChunkRef,
    /// First frame it holds, inclusive.
    start: u64,
    /// Last frame it holds, inclusive (after any shrink).
    end: u64,
    path: &'a Path,
    hash: [u8; 32],
}

/// Sends a finished segment on its own stream and waits for the
/// coordinator's verdict.
async fn upload(conn: &quinn::Connection, seg: &Segment<'_>) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(seg.path)
        .await
        .with_context(|| format!("opening {}", seg.path.display()))?;
    let bytes = file.metadata().await?.len();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_u8(StreamKind::Upload as u8).await?;
    codec::write_msg(
        &mut send,
        &UploadHeader {
            chunk: seg.chunk,
            start: seg.start,
            end: seg.end,
            bytes,
            hash: seg.hash,
        },
    )
    .await?;
    // The coordinator may refuse before reading the body (not assigned,
    // too large): the copy then fails, but its verdict is still on the way.
    let sent = match tokio::io::copy(&mut file, &mut send).await {
        Ok(_) => send.finish().map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    let verdict = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        codec::read_msg::<_, UploadReply>(&mut recv, 64 * 1024),
    )
    .await;
    let verdict = match (sent, verdict) {
        (_, Ok(Ok(Some(v)))) => Some(v),
        (Err(e), _) => return Err(e.context("sending the segment")),
        (Ok(()), Ok(Err(e))) => return Err(e.into()),
        (Ok(()), Ok(Ok(None))) => None,
        (Ok(()), Err(_)) => {
            // Sent in full; a large segment may take long to verify.
            codec::read_msg::<_, UploadReply>(&mut recv, 64 * 1024).await?
        }
    };
    match verdict {
        Some(UploadReply::Stored) => Ok(()),
        Some(UploadReply::Rejected { reason }) => {
            anyhow::bail!("coordinator rejected the segment: {reason}")
        }
        None => anyhow::bail!("coordinator closed the upload stream without a verdict"),
    }
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
            protocol_version: PROTOCOL_VERSION,
            agent_version: "test".into(),
            node_id: "0".repeat(32),
            name: "n1".into(),
            capabilities: (&Capabilities::default()).into(),
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
            protocol_version: PROTOCOL_VERSION,
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
            protocol_version: PROTOCOL_VERSION,
        };
        let (opened, _) = open_against(Coordinator::Preamble(
            preamble::encode(PROTOCOL_VERSION),
            Some(refusal),
        ))
        .await;
        assert_eq!(refused(&opened), ("name n1 is in use", false));
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

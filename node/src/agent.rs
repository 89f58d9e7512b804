//! The node agent's connection to the coordinator: connect, hello,
//! heartbeats, assignments, uploads, and reconnection with backoff and jitter.
//!
//! One executor thread runs chunks one at a time (rendering and encoding
//! overlap inside a chunk); the async side only moves messages and files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use drover_protocol::{
    codec, Assign, ChunkDone, ChunkFailed, ChunkProgress, ChunkRef, CoordToNode, Heartbeat, Hello,
    NodeToCoord, StreamKind, UploadHeader, UploadReply, MAX_CONTROL_FRAME_BYTES, PROTOCOL_VERSION,
};
use drover_shared::caps::Capabilities;
use drover_shared::config::CERT_SERVER_NAME;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::exec::{Executor, WorkItem, WorkerEvent};
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
}

/// Chunks this session holds: cancel flag and frames done, shared with the
/// executor (writes) and the heartbeat (reads).
type Held = Arc<Mutex<HashMap<ChunkRef, (Arc<AtomicBool>, Arc<AtomicU64>)>>>;

/// How a session ended.
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
    let spool = cfg.data_dir.join("spool");
    // Segments left by an earlier run belong to chunks the coordinator has
    // requeued since (it re-adopts nothing yet), so they are dropped.
    if spool.exists() {
        std::fs::remove_dir_all(&spool).with_context(|| format!("clearing {}", spool.display()))?;
    }
    std::fs::create_dir_all(&spool).with_context(|| format!("creating {}", spool.display()))?;
    let node_id = load_or_create_node_id(&cfg.data_dir)?;
    // Probing opens the GPU and test-encodes: blocking work.
    let (gpu, caps) = tokio::task::spawn_blocking(|| -> anyhow::Result<(Gpu, Capabilities)> {
        let gpu = Gpu::new().context(
            "no usable graphics adapter (install Mesa's Vulkan driver for CPU rendering)",
        )?;
        let caps = crate::probe::capabilities(gpu.adapter());
        Ok((gpu, caps))
    })
    .await??;
    if caps.encoders.is_empty() {
        anyhow::bail!("no FFmpeg encoder opened in the probe; install FFmpeg with libx264");
    }
    info!(name = %cfg.name, %node_id, adapter = %gpu.adapter().name, device = %gpu.adapter().device_type,
        encoders = ?caps.encoders, "node ready");
    let executor = Executor::start(gpu, spool);
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
    send.write_u8(StreamKind::Control as u8).await?;
    codec::write_msg(
        &mut send,
        &NodeToCoord::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: node_id.to_string(),
            name: cfg.name.clone(),
            capabilities: caps.into(),
        }),
    )
    .await?;
    let heartbeat_ms =
        match codec::read_msg::<_, CoordToNode>(&mut recv, MAX_CONTROL_FRAME_BYTES).await? {
            Some(CoordToNode::Welcome {
                heartbeat_interval_ms,
                ..
            }) => heartbeat_interval_ms,
            Some(CoordToNode::Refused {
                reason,
                protocol_version,
            }) => {
                return Ok(SessionEnd::Refused {
                    reason,
                    permanent: protocol_version != PROTOCOL_VERSION,
                })
            }
            Some(other) => anyhow::bail!("expected welcome, got {other:?}"),
            None => anyhow::bail!("coordinator closed the stream during the handshake"),
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
                    .filter(|(_, (_, done))| done.load(Ordering::Relaxed) != NOT_STARTED)
                    .map(|(c, (_, done))| ChunkProgress {
                        chunk: *c,
                        frames_done: done.load(Ordering::Relaxed),
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
                        path,
                        hash,
                        adapter,
                        elapsed_ms,
                    } => {
                        last_progress.remove(&assign.chunk);
                        let msg = match upload(&conn, &assign, &path, hash).await {
                            Ok(()) => {
                                // The coordinator has it: the spool copy can go.
                                let _ = tokio::fs::remove_file(&path).await;
                                NodeToCoord::Done(ChunkDone {
                                    chunk: assign.chunk,
                                    start: assign.start,
                                    end: assign.end,
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
                    } => {
                        last_progress.remove(&chunk);
                        let cancelled = held
                            .lock()
                            .expect("held map")
                            .remove(&chunk)
                            .is_none_or(|(c, _)| c.load(Ordering::Relaxed));
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
                let cancel = Arc::new(AtomicBool::new(false));
                let done = Arc::new(AtomicU64::new(NOT_STARTED));
                held.lock()
                    .expect("held map")
                    .insert(a.chunk, (cancel.clone(), done.clone()));
                executor.submit(WorkItem {
                    assign: a,
                    cancel,
                    frames_done: done,
                    events: ev_tx.clone(),
                });
            }
            Ok(Some(CoordToNode::Cancel(c))) => {
                info!(job = c.job, chunk = c.index, "cancelled by coordinator");
                if let Some((flag, _)) = held.lock().expect("held map").get(&c) {
                    flag.store(true, Ordering::Relaxed);
                }
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
    for (flag, _) in held.lock().expect("held map").values() {
        flag.store(true, Ordering::Relaxed);
    }
    heartbeat.abort();
    writer.abort();
    events.abort();
    conn.close(0u32.into(), b"bye");
    Ok(end)
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

/// Sends a finished segment on its own stream and waits for the
/// coordinator's verdict.
async fn upload(
    conn: &quinn::Connection,
    a: &Assign,
    path: &Path,
    hash: [u8; 32],
) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let bytes = file.metadata().await?.len();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_u8(StreamKind::Upload as u8).await?;
    codec::write_msg(
        &mut send,
        &UploadHeader {
            chunk: a.chunk,
            bytes,
            hash,
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

impl Executor {
    fn submit(&self, item: WorkItem) {
        // The executor thread only ends if it panicked; report the chunk
        // failed rather than take the agent down with it.
        if let Err(std::sync::mpsc::SendError(item)) = self.queue.send(item) {
            let _ = item.events.send(WorkerEvent::Failed {
                chunk: item.assign.chunk,
                reason: "the node's executor thread has stopped; restart the node".into(),
                log_tail: String::new(),
            });
        }
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

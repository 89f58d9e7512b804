//! The whole agent (probe, executor, spool, uploads, reconnects, drain)
//! against a scripted coordinator over real QUIC on loopback. The control
//! stream is scripted here; uploads go to the coordinator's real upload
//! handler and artifact store, with the scheduler's verdict scripted.
//!
//! - A lost connection does not lose the chunk: the node keeps rendering,
//!   lists the chunk in its next hello, uploads it and says `Done`.
//! - A stop drains: `Leaving`, the running chunk finishes and uploads, the
//!   connection closes with `NODE_LEAVING`, the agent returns.
//! - A segment the coordinator did not take survives an agent restart and
//!   is listed in the next hello, then uploaded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_coordinator::actors::{CommitSegment, MayUpload};
use drover_coordinator::quic::{UploadGate, UploadSlots};
use drover_coordinator::sched::{NodeId, UploadVerdict};
use drover_coordinator::store::{ArtifactStore, SegmentKey};
use drover_node::agent::{AgentConfig, AgentLimits};
use drover_node::tls::Trust;
use drover_protocol::{
    close_code, codec, preamble, Assign, ChunkDone, ChunkRef, CoordToNode, Hello, NodeToCoord,
    StreamKind, MAX_CONTROL_FRAME_BYTES, PROTOCOL_VERSION,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

const NODE: NodeId = NodeId(1);
/// A generous bound for anything the node does: its start probes the GPU
/// and runs a calibration render on lavapipe.
const PATIENCE: Duration = Duration::from_secs(120);

/// The scheduler's side of uploads, scripted.
#[derive(Clone)]
struct Script {
    verdict: Arc<Mutex<UploadVerdict>>,
    offers: Arc<Mutex<u32>>,
    commits: Arc<Mutex<Vec<String>>>,
}

impl UploadGate for Script {
    async fn may_upload(&self, _: MayUpload) -> anyhow::Result<UploadVerdict> {
        *self.offers.lock().unwrap() += 1;
        Ok(self.verdict.lock().unwrap().clone())
    }

    async fn commit(&self, m: CommitSegment) -> anyhow::Result<Result<(), String>> {
        self.commits.lock().unwrap().push(m.segment);
        Ok(Ok(()))
    }
}

/// One node connection whose hello was read.
struct Session {
    hello: Hello,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Each chunk's executor log as this session's pieces put it together
    /// (from the offset of the first it got), and whether its last piece
    /// came.
    logs: std::collections::HashMap<ChunkRef, (String, bool)>,
}

impl Session {
    async fn say(&mut self, msg: CoordToNode) {
        codec::write_msg(&mut self.send, &msg).await.unwrap();
    }

    /// The next message that is not a heartbeat or a log piece (those are
    /// put together in [`Session::logs`]).
    async fn next(&mut self) -> NodeToCoord {
        loop {
            let msg = tokio::time::timeout(
                PATIENCE,
                codec::read_msg::<_, NodeToCoord>(&mut self.recv, MAX_CONTROL_FRAME_BYTES),
            )
            .await
            .expect("a message from the node in time")
            .unwrap()
            .expect("the control stream open");
            match msg {
                NodeToCoord::Heartbeat(_) => {}
                NodeToCoord::ChunkLog(l) => {
                    // A lost session may have taken the first pieces.
                    let log = self
                        .logs
                        .entry(l.chunk)
                        .or_insert_with(|| (" ".repeat(l.offset as usize), false));
                    assert_eq!(l.offset as usize, log.0.len(), "pieces follow each other");
                    assert!(!log.1, "a piece after the last");
                    log.0.push_str(&l.text);
                    log.1 = l.last;
                }
                msg => return msg,
            }
        }
    }

    /// Skips progress until `pick` takes a message.
    async fn until<T>(&mut self, mut pick: impl FnMut(&NodeToCoord) -> Option<T>) -> T {
        loop {
            let msg = self.next().await;
            if let Some(t) = pick(&msg) {
                return t;
            }
            assert!(
                matches!(msg, NodeToCoord::Progress(_)),
                "unexpected {msg:?}"
            );
        }
    }

    async fn started(&mut self, chunk: ChunkRef) {
        self.until(|m| match m {
            NodeToCoord::Progress(p) if p.chunk == chunk && p.frames_done > 0 => Some(()),
            _ => None,
        })
        .await
    }

    /// Waits for the chunk's `Done`; its log must have ended by then (when
    /// this session got any of it).
    async fn done(&mut self, chunk: ChunkRef) -> ChunkDone {
        let d = self
            .until(|m| match m {
                NodeToCoord::Done(d) if d.chunk == chunk => Some(d.clone()),
                _ => None,
            })
            .await;
        if let Some((log, last)) = self.logs.get(&chunk) {
            assert!(*last, "the log is complete before Done:\n{log}");
            assert!(log.contains("chunk finished: frames "), "{log}");
        }
        d
    }
}

struct Coordinator {
    addr: std::net::SocketAddr,
    cert: PathBuf,
    store: ArtifactStore,
    script: Script,
    sessions: mpsc::UnboundedReceiver<Session>,
    _dir: tempfile::TempDir,
}

impl Coordinator {
    fn start() -> Coordinator {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = drover_coordinator::quic::load_or_create_identity(dir.path()).unwrap();
        let endpoint =
            drover_coordinator::quic::bind(dir.path(), "127.0.0.1:0".parse().unwrap(), cert, key)
                .unwrap();
        let store = ArtifactStore::open(&dir.path().join("artifacts"))
            .unwrap()
            .with_min_free_disk_bytes(0);
        let script = Script {
            verdict: Arc::new(Mutex::new(UploadVerdict::Accept)),
            offers: Arc::default(),
            commits: Arc::default(),
        };
        let (tx, sessions) = mpsc::unbounded_channel();
        let addr = endpoint.local_addr().unwrap();
        let (st, sc) = (store.clone(), script.clone());
        tokio::spawn(async move {
            let slots = UploadSlots::new(2, 64);
            while let Some(incoming) = endpoint.accept().await {
                let Ok(conn) = incoming.await else { continue };
                let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                    continue;
                };
                assert_eq!(recv.read_u8().await.unwrap(), StreamKind::Control as u8);
                assert_eq!(preamble::read(&mut recv).await.unwrap(), PROTOCOL_VERSION);
                preamble::write(&mut send, PROTOCOL_VERSION).await.unwrap();
                let hello = match codec::read_msg(&mut recv, MAX_CONTROL_FRAME_BYTES).await {
                    Ok(Some(NodeToCoord::Hello(h))) => *h,
                    other => panic!("expected a hello, got {other:?}"),
                };
                let uploads = conn.clone();
                let (st, sc, slots) = (st.clone(), sc.clone(), slots.clone());
                tokio::spawn(async move {
                    while let Ok((send, recv)) = uploads.accept_bi().await {
                        let (st, sc, slots) = (st.clone(), sc.clone(), slots.clone());
                        tokio::spawn(drover_coordinator::quic::upload(
                            send, recv, st, sc, slots, NODE,
                        ));
                    }
                });
                let _ = tx.send(Session {
                    hello,
                    conn,
                    send,
                    recv,
                    logs: Default::default(),
                });
            }
        });
        Coordinator {
            addr,
            cert: dir.path().join(drover_shared::config::CERT_FILE),
            store,
            script,
            sessions,
            _dir: dir,
        }
    }

    /// The next connection, welcomed.
    async fn session(&mut self) -> Session {
        let mut s = tokio::time::timeout(PATIENCE, self.sessions.recv())
            .await
            .expect("the node connects in time")
            .unwrap();
        s.say(CoordToNode::Welcome {
            heartbeat_interval_ms: 1_000,
        })
        .await;
        s
    }
}

/// A running agent and the handle that stops it.
struct Node {
    stop: mpsc::UnboundedSender<&'static str>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_node(c: &Coordinator, data: &Path, drain_timeout_ms: u64) -> Node {
    // The executor runs in a child process: this crate's worker binary.
    std::env::set_var(
        drover_node::exec::EXEC_PROGRAM_ENV,
        env!("CARGO_BIN_EXE_drover-exec-worker"),
    );
    let cfg = AgentConfig {
        coordinator: c.addr,
        name: "n1".into(),
        data_dir: data.to_path_buf(),
        trust: Trust::CertFile(c.cert.clone()),
        tags: vec![],
        pool: String::new(),
        // Frames slow enough that a chunk is still running when the
        // test cuts the connection.
        slowdown_factor: 25.0,
        test_gpu: None,
        fail_frames: vec![],
        join_token: None,
    };
    let limits = AgentLimits {
        drain_timeout_ms,
        ..AgentLimits::default()
    };
    let (stop, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(drover_node::agent::run_until(cfg, limits, rx));
    Node { stop, task }
}

fn chunk(index: u32) -> ChunkRef {
    ChunkRef {
        job: 1,
        index,
        epoch: 1,
    }
}

fn assign(index: u32) -> CoordToNode {
    let start = u64::from(index) * 24;
    CoordToNode::Assign(Assign {
        chunk: chunk(index),
        start,
        end: start + 23,
        fps: 24,
        width: 64,
        height: 64,
        shader_source: drover_shaders::get("plasma").unwrap().source.to_string(),
        encoder: "libx264".into(),
        crf: 23,
        frame_timeout_s: 0,
    })
}

/// The stored segment a `Done` names, and its hash checked.
fn stored(c: &Coordinator, d: &ChunkDone) -> PathBuf {
    let path = c.store.segment_path(&SegmentKey {
        job: d.chunk.job,
        index: d.chunk.index,
        epoch: d.chunk.epoch,
        start: d.start,
        end: d.end,
        hash: d.output_hash,
    });
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(*blake3::hash(&bytes).as_bytes(), d.output_hash);
    path
}

/// Files in the node's spool.
fn spool(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("spool"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_keeps_the_chunk_and_a_stop_drains() {
    let mut c = Coordinator::start();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&c, data.path(), 60_000);

    let mut s = c.session().await;
    assert!(s.hello.running.is_empty() && s.hello.spooled.is_empty());
    s.say(assign(0)).await;
    s.started(chunk(0)).await;
    // The coordinator goes away mid-chunk.
    s.conn.close(
        close_code::COORDINATOR_SHUTTING_DOWN.into(),
        b"coordinator shutting down",
    );

    // The node comes back still holding it: running, or spooled if it
    // finished meanwhile.
    let mut s = c.session().await;
    let held: Vec<(ChunkRef, u64, u64)> = s
        .hello
        .running
        .iter()
        .map(|r| (r.chunk, r.start, r.end))
        .chain(s.hello.spooled.iter().map(|p| (p.chunk, p.start, p.end)))
        .collect();
    assert_eq!(held, [(chunk(0), 0, 23)], "{:?}", s.hello);
    let done = s.done(chunk(0)).await;
    assert_eq!((done.start, done.end), (0, 23));
    let path = stored(&c, &done);
    assert_eq!(
        *c.script.commits.lock().unwrap(),
        [path.display().to_string()]
    );

    // A stop drains: the node says it leaves, finishes and uploads its
    // chunk, then closes.
    s.say(assign(1)).await;
    s.started(chunk(1)).await;
    node.stop.send("test stop").unwrap();
    s.until(|m| matches!(m, NodeToCoord::Leaving).then_some(()))
        .await;
    let done = s.done(chunk(1)).await;
    assert_eq!((done.start, done.end), (24, 47));
    stored(&c, &done);
    let closed = tokio::time::timeout(PATIENCE, s.conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(a)
            if a.error_code == close_code::NODE_LEAVING.into()),
        "{closed:?}"
    );
    tokio::time::timeout(PATIENCE, node.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(spool(data.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_not_taken_survives_a_restart_of_the_agent() {
    let mut c = Coordinator::start();
    *c.script.verdict.lock().unwrap() = UploadVerdict::Later("job 1 is joining".into());
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&c, data.path(), 60_000);
    let mut s = c.session().await;
    s.say(assign(0)).await;
    // Offered, answered "later": it stays in the spool.
    for _ in 0..(PATIENCE.as_millis() / 50) {
        if *c.script.offers.lock().unwrap() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        *c.script.offers.lock().unwrap() > 0,
        "the segment was never offered"
    );
    // Two stops: the drain would wait for the upload; the second ends it.
    node.stop.send("test stop").unwrap();
    node.stop.send("test stop again").unwrap();
    tokio::time::timeout(PATIENCE, node.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        spool(data.path()),
        ["job-1-chunk-00000-e1.mp4", "job-1-chunk-00000-e1.mp4.json"]
    );

    // The next start lists it and uploads it.
    *c.script.verdict.lock().unwrap() = UploadVerdict::Accept;
    let node = start_node(&c, data.path(), 60_000);
    let mut s = c.session().await;
    assert!(s.hello.running.is_empty(), "{:?}", s.hello.running);
    assert_eq!(s.hello.spooled.len(), 1, "{:?}", s.hello.spooled);
    let spooled = s.hello.spooled[0];
    assert_eq!(
        (spooled.chunk, spooled.start, spooled.end),
        (chunk(0), 0, 23)
    );
    let done = s.done(chunk(0)).await;
    assert_eq!(done.output_hash, spooled.hash);
    let path = stored(&c, &done);
    assert_eq!(std::fs::metadata(path).unwrap().len(), spooled.size_bytes);
    // Nothing more to do: a stop ends it at once.
    node.stop.send("test stop").unwrap();
    tokio::time::timeout(PATIENCE, node.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(spool(data.path()), Vec::<String>::new());
}

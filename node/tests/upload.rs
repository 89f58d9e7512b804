//! Uploads over real QUIC on loopback: the node's client
//! (`drover_node::upload`) against the coordinator's upload handler
//! (`drover_coordinator::quic::upload`) and its real artifact store, with
//! the scheduler's answers scripted. An upload cut off by a lost connection
//! resumes from the bytes the coordinator kept; an upload repeated after
//! `Stored` is answered without writing; the limits answer "later".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_coordinator::actors::{CommitSegment, MayUpload};
use drover_coordinator::quic::{UploadGate, UploadSlots};
use drover_coordinator::sched::{NodeId, UploadVerdict};
use drover_coordinator::store::{ArtifactStore, Begin, SegmentKey, StoreError};
use drover_node::spool::{SegmentMeta, Spooled};
use drover_node::tls::Trust;
use drover_node::upload::{offer_quic, Offered};
use drover_protocol::{codec, StreamKind, UploadAdmission, UploadHeader, MAX_UPLOAD_FRAME_BYTES};
use tokio::io::AsyncWriteExt;

const NODE: NodeId = NodeId(1);

/// The scheduler's side, scripted: one verdict for every offer; commits
/// are recorded and succeed.
#[derive(Clone)]
struct Script {
    verdict: Arc<Mutex<UploadVerdict>>,
    commits: Arc<Mutex<Vec<(String, String)>>>,
}

impl UploadGate for Script {
    async fn may_upload(&self, _: MayUpload) -> anyhow::Result<UploadVerdict> {
        Ok(self.verdict.lock().unwrap().clone())
    }

    async fn commit(&self, m: CommitSegment) -> anyhow::Result<Result<(), String>> {
        self.commits.lock().unwrap().push((m.segment, m.hash));
        Ok(Ok(()))
    }
}

/// A coordinator endpoint serving upload streams only.
struct Coordinator {
    addr: SocketAddr,
    cert: PathBuf,
    store: ArtifactStore,
    script: Script,
    _dir: tempfile::TempDir,
}

fn coordinator(slots: UploadSlots, min_free_disk_bytes: u64) -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = drover_coordinator::quic::load_or_create_identity(dir.path()).unwrap();
    let endpoint =
        drover_coordinator::quic::bind(dir.path(), "127.0.0.1:0".parse().unwrap(), cert, key)
            .unwrap();
    let store = ArtifactStore::open(&dir.path().join("artifacts"))
        .unwrap()
        .with_min_free_disk_bytes(min_free_disk_bytes);
    let script = Script {
        verdict: Arc::new(Mutex::new(UploadVerdict::Accept)),
        commits: Arc::default(),
    };
    let addr = endpoint.local_addr().unwrap();
    let (s, sc) = (store.clone(), script.clone());
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let (s, sc, slots) = (s.clone(), sc.clone(), slots.clone());
            tokio::spawn(async move {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let (s, sc, slots) = (s.clone(), sc.clone(), slots.clone());
                    tokio::spawn(drover_coordinator::quic::upload(
                        send, recv, s, sc, slots, NODE,
                    ));
                }
            });
        }
    });
    Coordinator {
        addr,
        cert: dir.path().join(drover_shared::config::CERT_FILE),
        store,
        script,
        _dir: dir,
    }
}

async fn connect(c: &Coordinator) -> quinn::Connection {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        drover_node::tls::client_config(&Trust::CertFile(c.cert.clone())).unwrap(),
    );
    ep.connect(c.addr, drover_shared::config::CERT_SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

/// A spooled segment of `data` under `dir`.
fn spooled(dir: &Path, data: &[u8]) -> Spooled {
    let path = dir.join("job-3-chunk-00002-e5.mp4");
    std::fs::write(&path, data).unwrap();
    Spooled {
        meta: SegmentMeta {
            job: 3,
            index: 2,
            epoch: 5,
            start: 48,
            end: 71,
            size_bytes: data.len() as u64,
            hash: blake3::hash(data).to_hex().to_string(),
            encoder: "libx264".into(),
            adapter: "test".into(),
            elapsed_ms: 10,
        },
        path,
    }
}

fn key(s: &Spooled) -> SegmentKey {
    SegmentKey {
        job: 3,
        index: 2,
        epoch: 5,
        start: 48,
        end: 71,
        hash: s.meta.hash_bytes().unwrap(),
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_upload_resumes_from_the_coordinators_offset_and_a_repeat_writes_nothing() {
    let c = coordinator(UploadSlots::new(2, 64), 0);
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let s = spooled(dir.path(), &data);
    let half = 1_200_000usize;

    // A first upload sends part of the bytes, then its connection dies.
    let conn = connect(&c).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_u8(StreamKind::Upload as u8).await.unwrap();
    let header = drover_node::upload::header(&s).unwrap();
    codec::write_msg(&mut send, &header).await.unwrap();
    let admission: UploadAdmission = codec::read_msg(&mut recv, MAX_UPLOAD_FRAME_BYTES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(admission, UploadAdmission::Accept { offset_bytes: 0 });
    send.write_all(&data[..half]).await.unwrap();
    let partial = c.store.partial_path(&key(&s));
    eventually("the first bytes on the coordinator's disk", || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() == half as u64)
    })
    .await;
    conn.close(0u32.into(), b"cut");
    // The coordinator's task notices and lets go of the segment.
    let store = c.store.clone();
    let k = key(&s);
    let mut offset = None;
    for _ in 0..500 {
        match store.begin(k, data.len() as u64).await {
            Err(StoreError::Busy) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(Begin::Receive(up)) => {
                offset = Some(up.offset_bytes());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(offset, Some(half as u64), "the bytes received are kept");
    assert!(c.script.commits.lock().unwrap().is_empty());

    // The node offers it again on a new connection: only the rest is sent.
    let conn = connect(&c).await;
    let got = offer_quic(&conn, &s).await.unwrap();
    assert_eq!(
        got,
        Offered::Stored {
            offset_bytes: half as u64
        }
    );
    let dest = c.store.segment_path(&key(&s));
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!partial.exists());
    let hash = blake3::hash(&data).to_hex().to_string();
    assert_eq!(
        *c.script.commits.lock().unwrap(),
        [(dest.display().to_string(), hash.clone())]
    );

    // Offered once more (its `Stored` was lost, say): answered from what is
    // stored, nothing sent or written, committed again (idempotent).
    let modified = std::fs::metadata(&dest).unwrap().modified().unwrap();
    let got = offer_quic(&conn, &s).await.unwrap();
    assert_eq!(
        got,
        Offered::Stored {
            offset_bytes: data.len() as u64
        }
    );
    assert_eq!(
        std::fs::metadata(&dest).unwrap().modified().unwrap(),
        modified
    );
    assert_eq!(c.script.commits.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_reaches_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![9u8; 50_000];
    let s = spooled(dir.path(), &data);

    // The scheduler's verdicts.
    let c = coordinator(UploadSlots::new(2, 64), 0);
    let conn = connect(&c).await;
    for (verdict, want) in [
        (
            UploadVerdict::NotNeeded("chunk 3/2 is done".into()),
            Offered::NotNeeded("chunk 3/2 is done".into()),
        ),
        (
            UploadVerdict::Later("job 3 is joining".into()),
            Offered::Later("job 3 is joining".into()),
        ),
    ] {
        *c.script.verdict.lock().unwrap() = verdict;
        assert_eq!(offer_quic(&conn, &s).await.unwrap(), want);
    }

    // No upload slot for this node.
    let c = coordinator(UploadSlots::new(0, 64), 0);
    let got = offer_quic(&connect(&c).await, &s).await.unwrap();
    assert_eq!(
        got,
        Offered::Later("this node already has 0 uploads running (the limit is 0)".into())
    );

    // The artifact disk keeps its reserve.
    let c = coordinator(UploadSlots::new(2, 64), u64::MAX / 2);
    let got = offer_quic(&connect(&c).await, &s).await.unwrap();
    assert!(
        matches!(&got, Offered::Later(why) if why.starts_with("artifact disk nearly full: ")),
        "{got:?}"
    );

    // A spool copy whose bytes no longer match its sidecar's hash.
    let c = coordinator(UploadSlots::new(2, 64), 0);
    std::fs::write(&s.path, vec![8u8; 50_000]).unwrap();
    let got = offer_quic(&connect(&c).await, &s).await.unwrap();
    assert!(
        matches!(&got, Offered::Rejected(why) if why.starts_with("hash mismatch")),
        "{got:?}"
    );
    assert!(c.script.commits.lock().unwrap().is_empty());

    // A segment over the store's limit is refused before any byte.
    let c = coordinator(UploadSlots::new(2, 64), 0);
    let mut big = s.clone();
    big.meta.size_bytes = drover_coordinator::store::MAX_SEGMENT_BYTES + 1;
    let conn = connect(&c).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_u8(StreamKind::Upload as u8).await.unwrap();
    let header: UploadHeader = drover_node::upload::header(&big).unwrap();
    codec::write_msg(&mut send, &header).await.unwrap();
    let admission: UploadAdmission = codec::read_msg(&mut recv, MAX_UPLOAD_FRAME_BYTES)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&admission, UploadAdmission::Rejected { reason } if reason.contains("exceeds the limit")),
        "{admission:?}"
    );
}

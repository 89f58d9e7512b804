//! The coordinator's QUIC endpoint: TLS identity, handshake, and one task set
//! per node connection (control reader, control writer, upload acceptor).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use drover_protocol::{
    codec, preamble, CoordToNode, NodeToCoord, StreamKind, UploadHeader, UploadReply,
    MAX_CONTROL_FRAME_BYTES, PROTOCOL_VERSION,
};
use drover_shared::config::{CERT_FILE, CERT_SERVER_NAME, HEARTBEAT_INTERVAL_MS, KEY_FILE};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use crate::actors::{
    CommitSegment, Inbound, MayUpload, NodeSession, Scheduler, SessionOpened,
};

use crate::sched::{NodeId, UploadVerdict};
use crate::store::ArtifactStore;

/// Time a new connection has to send its hello.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// Largest upload header frame.
const MAX_UPLOAD_HEADER_BYTES: usize = 4 * 1024;
/// QUIC idle timeout: a connection silent this long is closed. Nodes send
/// keep-alives and heartbeats well inside it.
pub const IDLE_TIMEOUT_MS: u64 = 10_000;

/// Streams a node may have open at once (control plus uploads).
pub const MAX_STREAMS_PER_NODE: u32 = 8;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Loads the coordinator's certificate and key from `data_dir`, making a
/// self-signed pair on first start. Returns the certificate's SHA-256
/// fingerprint (hex) too, which nodes may pin instead of the file.
pub fn load_or_create_identity(
    data_dir: &Path,
) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>, String)> {
    let cert_path = data_dir.join(CERT_FILE);
    let key_path = data_dir.join(KEY_FILE);
    if !cert_path.exists() || !key_path.exists() {
        let ck = rcgen::generate_simple_self_signed(vec![CERT_SERVER_NAME.to_string()])
            .context("generating the coordinator certificate")?;
        std::fs::write(&cert_path, ck.cert.der())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        write_private(&key_path, &ck.signing_key.serialize_der())?;
        info!(cert = %cert_path.display(), "created a self-signed certificate");
    }
    let cert =
        std::fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let key =
        std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let fingerprint = cert_fingerprint(&cert);
    Ok((
        CertificateDer::from(cert),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        fingerprint,
    ))
}

/// SHA-256 of a DER certificate, hex.
pub fn cert_fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Binds the QUIC endpoint.
pub fn bind(
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<quinn::Endpoint> {
    let mut server =
        quinn::ServerConfig::with_single_cert(vec![cert], key).context("TLS configuration")?;
    let mut transport = quinn::TransportConfig::default();
    // Uploads per node at once: a node holds at most two chunks, so eight
    // leaves room for retries without letting a peer open hundreds.
    transport.max_concurrent_bidi_streams(MAX_STREAMS_PER_NODE.into());
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS))
            .expect("small timeout"),
    ));
    server.transport_config(Arc::new(transport));
    quinn::Endpoint::server(server, addr).with_context(|| format!("binding QUIC on {addr}"))
}

/// Accepts node connections until the endpoint closes. Runs on the actix
/// system's thread (it creates actors).
pub async fn serve(endpoint: quinn::Endpoint, scheduler: Addr<Scheduler>, store: ArtifactStore) {
    while let Some(incoming) = endpoint.accept().await {
        let scheduler = scheduler.clone();
        let store = store.clone();
        actix::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = connection(conn, scheduler, store).await {
                        warn!(%remote, "node connection ended: {e:#}");
                    }
                }
                Err(e) => warn!(%remote, "QUIC handshake failed: {e}"),
            }
        });
    }
}

async fn connection(
    conn: quinn::Connection,
    scheduler: Addr<Scheduler>,
    store: ArtifactStore,
) -> anyhow::Result<()> {
    let (mut send, mut recv) =
        tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), conn.accept_bi())
            .await
            .context("no control stream within the hello timeout")??;
    let kind = tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), recv.read_u8())
        .await
        .context("no stream kind within the hello timeout")?
        .context("reading stream kind")?;
    if StreamKind::from_byte(kind) != Some(StreamKind::Control) {
        anyhow::bail!("first stream is of kind {kind}, expected the control stream");
    }
    // The raw preamble comes before any archive, so a peer of any other
    // version learns ours and we learn theirs, whatever the layout of the
    // messages that follow.
    let theirs = tokio::time::timeout(
        Duration::from_millis(HELLO_TIMEOUT_MS),
        preamble::read(&mut recv),
    )
    .await
    .context("no preamble within the hello timeout")??;
    preamble::write(&mut send, PROTOCOL_VERSION).await?;
    if theirs != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version mismatch: the node speaks {theirs}, this coordinator speaks {PROTOCOL_VERSION}; upgrade the older side"
        );
        warn!(remote = %conn.remote_address(), "{reason}");
        send.finish().ok();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        conn.close(2u32.into(), reason.as_bytes());
        anyhow::bail!(reason);
    }
    let hello: NodeToCoord = tokio::time::timeout(
        Duration::from_millis(HELLO_TIMEOUT_MS),
        codec::read_msg(&mut recv, MAX_CONTROL_FRAME_BYTES),
    )
    .await
    .context("no hello within the hello timeout")??
    .context("stream closed before hello")?;
    let NodeToCoord::Hello(hello) = hello else {
        anyhow::bail!("first message is not a hello");
    };
    info!(node = %hello.name, node_id = %hello.node_id, agent_version = %hello.agent_version, "hello");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<CoordToNode>();
    let session_id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let name = hello.name.clone();
    let session = NodeSession::new(name.clone(), session_id, scheduler.clone(), tx).start();
    let opened = scheduler
        .send(SessionOpened {
            name: name.clone(),
            node_id: hello.node_id.clone(),
            session: session_id,
            addr: session.clone(),
            caps: (&hello.capabilities).into(),
        })
        .await?;
    let node = match opened {
        Ok(node) => node,
        Err(reason) => {
            session.do_send(crate::actors::Close);
            refuse(&conn, &mut send, &reason).await?;
            anyhow::bail!(reason);
        }
    };
    // Welcome goes first; assignments the scheduler made meanwhile wait in
    // the channel for the writer below.
    let welcome = codec::write_msg(
        &mut send,
        &CoordToNode::Welcome {
            protocol_version: PROTOCOL_VERSION,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
        },
    )
    .await;
    if let Err(e) = welcome {
        // The session is registered: end it, or it would hold the name.
        session.do_send(crate::actors::Close);
        return Err(e.into());
    }

    // Writer: the only task that writes the control stream.
    let writer = actix::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if codec::write_msg(&mut send, &msg).await.is_err() {
                break;
            }
        }
    });
    // Uploads: one bidirectional stream per segment.
    let uploads = {
        let conn = conn.clone();
        let scheduler = scheduler.clone();
        actix::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let store = store.clone();
                let scheduler = scheduler.clone();
                actix::spawn(async move {
                    if let Err(e) = upload(send, recv, store, scheduler, node).await {
                        warn!("upload failed: {e:#}");
                    }
                });
            }
        })
    };
    // Reader: every control message goes through the session actor.
    let result = loop {
        match codec::read_msg::<_, NodeToCoord>(&mut recv, MAX_CONTROL_FRAME_BYTES).await {
            // A session that stopped (replaced, or its writer failed) must
            // take its connection with it: a node whose messages go nowhere
            // would heartbeat forever and never reconnect.
            Ok(Some(_)) if !session.connected() => {
                break Err(anyhow::anyhow!("the session of {name} has ended"))
            }
            Ok(Some(msg)) => session.do_send(Inbound(msg)),
            Ok(None) => break Ok(()),
            Err(e) => {
                break Err(anyhow::Error::from(e).context(format!("control stream of {name}")))
            }
        }
    };
    session.do_send(crate::actors::Close);
    writer.abort();
    uploads.abort();
    conn.close(0u32.into(), b"bye");
    result
}

/// Sends a refusal on the control stream, lets it reach the node, closes.
async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reason: &str,
) -> anyhow::Result<()> {
    codec::write_msg(
        send,
        &CoordToNode::Refused {
            reason: reason.to_string(),
            protocol_version: PROTOCOL_VERSION,
        },
    )
    .await?;
    send.finish().ok();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    conn.close(1u32.into(), b"refused");
    Ok(())
}

async fn upload(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    store: ArtifactStore,
    scheduler: Addr<Scheduler>,
    node: NodeId,
) -> anyhow::Result<()> {
    // Kind and header must arrive promptly; the body may take as long as
    // its size needs (the connection's idle timeout still applies).
    let header: UploadHeader =
        tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), async {
            let kind = recv.read_u8().await?;
            if StreamKind::from_byte(kind) != Some(StreamKind::Upload) {
                anyhow::bail!("stream of kind {kind} where an upload was expected");
            }
            codec::read_msg(&mut recv, MAX_UPLOAD_HEADER_BYTES)
                .await?
                .context("upload stream closed before its header")
        })
        .await
        .context("no upload header within the timeout")??;
    let c = header.chunk;
    let admitted = scheduler
        .send(MayUpload {
            node,
            chunk: c,
            start: header.start,
            end: header.end,
        })
        .await?;
    if let UploadVerdict::NotNeeded(reason) | UploadVerdict::Later(reason) = admitted {
        warn!(job = c.job, chunk = c.index, "upload refused: {reason}");
        codec::write_msg(&mut send, &UploadReply::Rejected { reason }).await?;
        send.finish()?;
        return Ok(());
    }
    let dest = store.segment_path(c.job, c.index, c.epoch);
    let reply = match store
        .receive(&mut recv, &dest, header.bytes, header.hash)
        .await
    {
        Ok(hash) => {
            // The core learns of the segment before the node hears
            // "stored", so its `Done` (sent after the reply) always finds
            // the segment recorded.
            match scheduler
                .send(CommitSegment {
                    node,
                    chunk: c,
                    start: header.start,
                    end: header.end,
                    segment: dest.display().to_string(),
                    hash,
                })
                .await?
            {
                Ok(()) => UploadReply::Stored,
                Err(reason) => UploadReply::Rejected { reason },
            }
        }
        Err(e) => {
            warn!(job = c.job, chunk = c.index, "segment refused: {e}");
            UploadReply::Rejected {
                reason: e.to_string(),
            }
        }
    };
    codec::write_msg(&mut send, &reply).await?;
    send.finish()?;
    Ok(())
}

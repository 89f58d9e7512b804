//! The coordinator's QUIC endpoint: TLS identity, handshake, and one task set
//! per node connection (control reader, control writer, upload acceptor).
//!
//! # Uploads
//! Each segment comes on a stream of its own ([`upload`]): the header, then
//! admission in this order: the core's verdict (`MayUpload`: not needed,
//! later, or accept), the upload slots ([`MAX_UPLOADS_PER_NODE`],
//! [`MAX_UPLOADS_TOTAL`]), the segment's lease and resume offset in the
//! store, and the free disk space. Then the bytes from that offset; the
//! store verifies and renames; `CommitSegment` makes the segment durable in
//! the journal; only then does the node hear `Stored`.

pub mod admission;
pub mod client;

pub use admission::{Connections, HandshakeLimits};

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use drover_protocol::{
    clip_reason, close_code, codec, preamble, CoordToNode, Hello, NodeToCoord, StreamKind,
    UploadAdmission, UploadHeader, UploadOutcome, MAX_CONTROL_FRAME_BYTES, MAX_HELLO_RUNNING,
    MAX_HELLO_SPOOLED, MAX_UPLOAD_FRAME_BYTES, PROTOCOL_VERSION,
};
use drover_shared::config::{CERT_FILE, CERT_SERVER_NAME, HEARTBEAT_INTERVAL_MS, KEY_FILE};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncReadExt;
use tracing::{error, info, warn};

use crate::actors::{CommitSegment, Inbound, MayUpload, NodeSession, Scheduler, SessionOpened};
use crate::sched::{NodeId, RunningReport, SpooledReport, UploadVerdict};
use crate::store::{ArtifactStore, Begin, SegmentKey, StoreError};

/// Time a new connection has to send its hello.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// QUIC idle timeout: a connection silent this long is closed. Nodes send
/// keep-alives and heartbeats well inside it.
pub const IDLE_TIMEOUT_MS: u64 = 10_000;

/// Messages waiting for a node's connection at most. A node gets a few
/// per chunk; one that reads nothing while this many pile up is cut off
/// (it reconnects, keeping its work) rather than growing the queue.
pub const SESSION_QUEUE: usize = 1_024;

/// Streams a node may have open at once (control plus uploads).
pub const MAX_STREAMS_PER_NODE: u32 = 8;

/// Uploads one node may run at once; more are answered "later". A node
/// sends at most two at a time; a reconnecting node's old uploads may still
/// hold theirs for a moment.
pub const MAX_UPLOADS_PER_NODE: usize = 2;

/// Uploads the coordinator runs at once, over all nodes; more are answered
/// "later". Each holds a blocking writer and up to 1 MiB of buffers, and the
/// disk is shared: past a few dozen, more only slow each other down.
pub const MAX_UPLOADS_TOTAL: usize = 64;

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
        crate::auth::secret::write_private(&key_path, &ck.signing_key.serialize_der())?;
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

/// File in the data dir holding the secret stateless resets are derived
/// from.
pub const RESET_KEY_FILE: &str = "quic-reset-key";

/// The endpoint's stateless-reset key, kept in the data dir so a restarted
/// coordinator derives the same reset tokens as the one that died: a node
/// still talking to the dead one gets a valid reset at its next packet and
/// reconnects at once, instead of waiting out its idle timeout (a
/// SIGKILLed coordinator sends no close).
fn endpoint_config(data_dir: &Path) -> anyhow::Result<quinn::EndpointConfig> {
    let path = data_dir.join(RESET_KEY_FILE);
    let secret = match std::fs::read(&path) {
        Ok(s) if s.len() == 32 => s,
        _ => {
            let mut s = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s)
                .map_err(|_| anyhow::anyhow!("no system randomness for the QUIC reset key"))?;
            let _ = std::fs::remove_file(&path);
            crate::auth::secret::write_private(&path, &s)?;
            s
        }
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    // quinn's default connection ids carry a check keyed per process: a new
    // endpoint would drop the old ids as invalid instead of resetting them.
    config.cid_generator(|| Box::new(RandomCids));
    Ok(config)
}

/// Random 8-byte connection ids that any endpoint accepts as its own, so
/// a packet for a connection it does not know gets a stateless reset.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; 8];
        // The system source cannot fail on Linux; zeros would still be a
        // working (if guessable) id.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Binds the QUIC endpoint.
pub fn bind(
    data_dir: &Path,
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<quinn::Endpoint> {
    // Mutual TLS: every peer shows a certificate of its own; admission by
    // its fingerprint comes with the hello (see `admission`).
    let crypto = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .context("TLS configuration")?
    .with_client_cert_verifier(admission::AnyClientCert::new())
    .with_single_cert(vec![cert], key)
    .context("TLS configuration")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .context("TLS configuration for QUIC")?,
    ));
    let mut transport = quinn::TransportConfig::default();
    // Uploads per node at once: a node holds at most two chunks, so eight
    // leaves room for retries without letting a peer open hundreds.
    transport.max_concurrent_bidi_streams(MAX_STREAMS_PER_NODE.into());
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS))
            .expect("small timeout"),
    ));
    server.transport_config(Arc::new(transport));
    let socket =
        std::net::UdpSocket::bind(addr).with_context(|| format!("binding QUIC on {addr}"))?;
    quinn::Endpoint::new(
        endpoint_config(data_dir)?,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .with_context(|| format!("binding QUIC on {addr}"))
}

/// What the QUIC endpoint's connections reach.
#[derive(Clone)]
pub struct Quic {
    /// The REST API's state: the scheduler, the store, the keys (client
    /// streams run the same operations).
    pub api: Arc<crate::api::Api>,
    /// Handshake limits.
    pub limits: HandshakeLimits,
}

/// Accepts connections until the endpoint closes. Runs on the actix
/// system's thread (it creates actors).
pub async fn serve(endpoint: quinn::Endpoint, quic: Quic) {
    let slots = UploadSlots::new(MAX_UPLOADS_PER_NODE, MAX_UPLOADS_TOTAL);
    // `/readyz` reports the endpoint up while this loop accepts.
    crate::metrics::health().set_quic_accepting(true);
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        // Over the limits: refused before any crypto is spent on it.
        let permit = match quic.limits.admit() {
            Ok(p) => p,
            Err(why) => {
                warn!(%remote, "connection refused: {why}");
                incoming.refuse();
                continue;
            }
        };
        let quic = quic.clone();
        let slots = slots.clone();
        actix::spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = connection(conn, quic, slots, permit).await {
                        warn!(%remote, "connection ended: {e:#}");
                    }
                }
                Err(e) => warn!(%remote, "QUIC handshake failed: {e}"),
            }
        });
    }
    crate::metrics::health().set_quic_accepting(false);
}

async fn connection(
    conn: quinn::Connection,
    quic: Quic,
    slots: UploadSlots,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let scheduler = quic.api.sched.clone();
    let store = quic.api.store.clone();
    let (mut send, mut recv) =
        tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), conn.accept_bi())
            .await
            .context("no control stream within the hello timeout")??;
    let kind = tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), recv.read_u8())
        .await
        .context("no stream kind within the hello timeout")?
        .context("reading stream kind")?;
    match StreamKind::from_byte(kind) {
        Some(StreamKind::Control) => {}
        Some(StreamKind::Client) => {
            drop(permit);
            return crate::quic::client::serve_client(conn, send, recv, quic.api.clone()).await;
        }
        _ => anyhow::bail!("first stream is of kind {kind}, expected the control stream"),
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
        conn.close(close_code::VERSION_MISMATCH.into(), reason.as_bytes());
        anyhow::bail!(reason);
    }
    let hello: NodeToCoord = tokio::time::timeout(
        Duration::from_millis(HELLO_TIMEOUT_MS),
        codec::read_msg(&mut recv, MAX_CONTROL_FRAME_BYTES),
    )
    .await
    .context("no hello within the hello timeout")??
    .context("stream closed before hello")?;
    let NodeToCoord::Hello(mut hello) = hello else {
        anyhow::bail!("first message is not a hello");
    };
    // Every string and list it sends within its bounds, or no session.
    if let Err(v) = hello.validate() {
        let reason = format!("invalid hello: {v}");
        warn!(remote = %conn.remote_address(), "{reason}");
        refuse_with(&conn, &mut send, &reason, true).await?;
        anyhow::bail!(reason);
    }
    info!(node = %hello.name, node_id = %hello.node_id, agent_version = %hello.agent_version,
        running = hello.running.len(), spooled = hello.spooled.len(), "hello");
    // Who it is: its certificate's identity, or enrolled by its token.
    let fingerprint =
        admission::peer_fingerprint(&conn).context("the node presented no client certificate")?;
    // (The token's length is within its bound: `validate` checked.)
    let verdict = {
        let auth = quic.api.gate.auth().clone();
        let (fp, name, token) = (
            fingerprint.clone(),
            hello.name.clone(),
            std::mem::take(&mut hello.join_token),
        );
        tokio::task::spawn_blocking(move || {
            auth.admit(&fp, &name, (!token.is_empty()).then_some(token.as_str()))
        })
        .await
        .context("admission")?
    };
    let admitted = match verdict {
        Ok(a) => a,
        Err(reason) => {
            warn!(node = %hello.name, remote = %conn.remote_address(), fingerprint = %fingerprint, "{reason}");
            refuse_with(&conn, &mut send, &reason, true).await?;
            anyhow::bail!(reason);
        }
    };
    if let Some(pool) = admitted.pool {
        hello.capabilities.pool = pool;
    }
    drop(permit);
    let (running, spooled) = held_work(&hello);

    let (tx, mut rx) = tokio::sync::mpsc::channel::<CoordToNode>(SESSION_QUEUE);
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
            running,
            spooled,
        })
        .await?;
    let node = match opened {
        Ok(node) => node,
        Err(reason) => {
            session.do_send(crate::actors::Close);
            refuse_with(&conn, &mut send, &reason, false).await?;
            anyhow::bail!(reason);
        }
    };
    quic.api.connections.insert(&name, &conn);
    // Welcome goes first; assignments the scheduler made meanwhile wait in
    // the channel for the writer below.
    let welcome = codec::write_msg(
        &mut send,
        &CoordToNode::Welcome {
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
        // Every log line of an upload names the node it came from.
        let span = tracing::info_span!("upload", node = %name);
        actix::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let store = store.clone();
                let scheduler = scheduler.clone();
                let slots = slots.clone();
                actix::spawn(tracing::Instrument::instrument(
                    async move {
                        if let Err(e) = upload(send, recv, store, scheduler, slots, node).await {
                            warn!("upload failed: {e:#}");
                        }
                    },
                    span.clone(),
                ));
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
            Ok(Some(msg)) => match msg.validate() {
                Ok(()) => session.do_send(Inbound(msg)),
                // A peer breaking the protocol's bounds is cut off; it
                // reconnects (with its work) if it was a glitch.
                Err(v) => {
                    conn.close(
                        close_code::REFUSED.into(),
                        clip_reason(format!("protocol violation: {v}")).as_bytes(),
                    );
                    break Err(anyhow::anyhow!("{name} broke the protocol: {v}"));
                }
            },
            Ok(None) => break Ok(()),
            Err(e) => {
                break Err(anyhow::Error::from(e).context(format!("control stream of {name}")))
            }
        }
    };
    session.do_send(crate::actors::Close);
    quic.api.connections.remove(&name, &conn);
    writer.abort();
    uploads.abort();
    conn.close(close_code::BYE.into(), b"bye");
    result
}

/// The work a hello says its node kept from earlier sessions, as core
/// reports, each list cut at its protocol limit.
fn held_work(hello: &Hello) -> (Vec<RunningReport>, Vec<SpooledReport>) {
    let running = hello
        .running
        .iter()
        .take(MAX_HELLO_RUNNING)
        .map(|r| RunningReport {
            chunk: (r.chunk.job, r.chunk.index),
            epoch: r.chunk.epoch,
            start: r.start,
            end: r.end,
            frames_done: r.frames_done,
        })
        .collect();
    let spooled = hello
        .spooled
        .iter()
        .take(MAX_HELLO_SPOOLED)
        .map(|s| SpooledReport {
            chunk: (s.chunk.job, s.chunk.index),
            epoch: s.chunk.epoch,
            start: s.start,
            end: s.end,
            hash: hex::encode(s.hash),
        })
        .collect();
    (running, spooled)
}

/// Sends a refusal on the control stream, lets it reach the node, closes
/// (with [`close_code::NOT_ADMITTED`] for a permanent one).
async fn refuse_with(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reason: &str,
    permanent: bool,
) -> anyhow::Result<()> {
    codec::write_msg(
        send,
        &CoordToNode::Refused {
            reason: reason.to_string(),
            permanent,
        },
    )
    .await?;
    send.finish().ok();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    let code = if permanent {
        close_code::NOT_ADMITTED
    } else {
        close_code::REFUSED
    };
    conn.close(code.into(), clip_reason(reason.to_string()).as_bytes());
    Ok(())
}

/// What an upload asks of the scheduler: the actor in production, a script
/// in tests.
pub trait UploadGate: Clone + 'static {
    /// The core's verdict on an offered segment.
    fn may_upload(&self, m: MayUpload) -> impl Future<Output = anyhow::Result<UploadVerdict>>;
    /// Records a stored segment; resolves once the fact is durable.
    fn commit(&self, m: CommitSegment) -> impl Future<Output = anyhow::Result<Result<(), String>>>;
}

impl UploadGate for Addr<Scheduler> {
    async fn may_upload(&self, m: MayUpload) -> anyhow::Result<UploadVerdict> {
        Ok(self.send(m).await?)
    }

    async fn commit(&self, m: CommitSegment) -> anyhow::Result<Result<(), String>> {
        Ok(self.send(m).await?)
    }
}

/// Upload slots: at most `per_node` running uploads per node and `total`
/// over all; a slot is given back when its [`UploadSlot`] drops.
#[derive(Clone)]
pub struct UploadSlots {
    per_node: usize,
    total: usize,
    taken: Arc<Mutex<SlotsTaken>>,
}

#[derive(Default)]
struct SlotsTaken {
    by_node: HashMap<NodeId, usize>,
    total: usize,
}

impl UploadSlots {
    /// At most `per_node` uploads per node and `total` over all.
    pub fn new(per_node: usize, total: usize) -> UploadSlots {
        UploadSlots {
            per_node,
            total,
            taken: Arc::default(),
        }
    }

    /// A slot for `node`, or the reason there is none.
    pub fn take(&self, node: NodeId) -> Result<UploadSlot, String> {
        let mut t = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let mine = t.by_node.get(&node).copied().unwrap_or(0);
        if mine >= self.per_node {
            return Err(format!(
                "this node already has {mine} uploads running (the limit is {})",
                self.per_node
            ));
        }
        if t.total >= self.total {
            return Err(format!(
                "the coordinator already has {} uploads running (the limit is {})",
                t.total, self.total
            ));
        }
        *t.by_node.entry(node).or_default() += 1;
        t.total += 1;
        Ok(UploadSlot {
            slots: self.taken.clone(),
            node,
        })
    }
}

/// One taken upload slot.
pub struct UploadSlot {
    slots: Arc<Mutex<SlotsTaken>>,
    node: NodeId,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut t = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        t.total -= 1;
        if let Some(n) = t.by_node.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                t.by_node.remove(&self.node);
            }
        }
    }
}

/// Serves one upload stream of `node` (see the module doc for the order of
/// the checks).
pub async fn upload<G: UploadGate>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    store: ArtifactStore,
    scheduler: G,
    slots: UploadSlots,
    node: NodeId,
) -> anyhow::Result<()> {
    // Kind and header must arrive promptly; the body may take as long as
    // its size needs, as long as bytes keep coming.
    let header: UploadHeader =
        tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), async {
            let kind = recv.read_u8().await?;
            if StreamKind::from_byte(kind) != Some(StreamKind::Upload) {
                anyhow::bail!("stream of kind {kind} where an upload was expected");
            }
            codec::read_msg(&mut recv, MAX_UPLOAD_FRAME_BYTES)
                .await?
                .context("upload stream closed before its header")
        })
        .await
        .context("no upload header within the timeout")??;
    header
        .validate()
        .map_err(|v| anyhow::anyhow!("invalid upload header: {v}"))?;
    let c = header.chunk;
    let (admission, admitted) = admit(&header, &store, &scheduler, &slots, node).await?;
    if let UploadAdmission::NotNeeded { reason }
    | UploadAdmission::Later { reason }
    | UploadAdmission::Rejected { reason } = &admission
    {
        info!(
            job = c.job,
            chunk = c.index,
            epoch = c.epoch,
            "upload not taken now: {reason}"
        );
    }
    codec::write_msg(&mut send, &admission).await?;
    let Some(admitted) = admitted else {
        send.finish()?;
        return Ok(());
    };
    let stored = match admitted.begin {
        Begin::Complete(path) => Ok(path),
        Begin::Receive(up) => up.receive(&mut recv).await,
    };
    let outcome = match stored {
        Ok(dest) => {
            // Durable in the journal before the node hears "stored" and
            // deletes its copy; its `Done` (sent after this answer) then
            // always finds the segment recorded.
            let committed = scheduler
                .commit(CommitSegment {
                    node,
                    chunk: c,
                    start: header.start,
                    end: header.end,
                    segment: dest.display().to_string(),
                    hash: hex::encode(header.hash),
                })
                .await?;
            match committed {
                Ok(()) => UploadOutcome::Stored,
                // The file stays under its final name: the next offer is
                // answered without sending the bytes again.
                Err(reason) => UploadOutcome::Later {
                    reason: clip_reason(format!("the segment could not be recorded: {reason}")),
                },
            }
        }
        // The stream is gone: nobody to answer, the partial file waits for
        // the node's next offer.
        Err(e @ (StoreError::Short { .. } | StoreError::Stalled { .. })) => {
            drop(admitted.slot);
            return Err(
                anyhow::Error::from(e).context(format!("segment of chunk {}/{}", c.job, c.index))
            );
        }
        // Bytes kept from an earlier upload may be what is wrong: they are
        // gone now, so the node sends the whole segment once more.
        Err(e @ StoreError::HashMismatch { resumed_from, .. }) if resumed_from > 0 => {
            warn!(job = c.job, chunk = c.index, "segment refused: {e}");
            UploadOutcome::Later {
                reason: clip_reason(format!("{e}; the kept bytes are dropped, send it whole")),
            }
        }
        Err(e @ StoreError::HashMismatch { .. }) => {
            warn!(job = c.job, chunk = c.index, "segment refused: {e}");
            UploadOutcome::Rejected {
                reason: clip_reason(e.to_string()),
            }
        }
        // The coordinator's own trouble (a disk error): the node keeps its
        // copy.
        Err(e) => {
            error!(
                job = c.job,
                chunk = c.index,
                "storing a segment failed: {e}"
            );
            UploadOutcome::Later {
                reason: clip_reason(e.to_string()),
            }
        }
    };
    drop(admitted.slot);
    codec::write_msg(&mut send, &outcome).await?;
    send.finish()?;
    Ok(())
}

/// An upload let in: its slot and where the store starts.
struct Admitted {
    slot: UploadSlot,
    begin: Begin,
}

/// The answer to an upload's header, and what an accepted upload holds.
async fn admit<G: UploadGate>(
    header: &UploadHeader,
    store: &ArtifactStore,
    scheduler: &G,
    slots: &UploadSlots,
    node: NodeId,
) -> anyhow::Result<(UploadAdmission, Option<Admitted>)> {
    let c = header.chunk;
    let verdict = scheduler
        .may_upload(MayUpload {
            node,
            chunk: c,
            start: header.start,
            end: header.end,
        })
        .await?;
    match verdict {
        UploadVerdict::Accept => {}
        UploadVerdict::NotNeeded(reason) => {
            let reason = clip_reason(reason);
            return Ok((UploadAdmission::NotNeeded { reason }, None));
        }
        UploadVerdict::Later(reason) => {
            let reason = clip_reason(reason);
            return Ok((UploadAdmission::Later { reason }, None));
        }
    }
    let slot = match slots.take(node) {
        Ok(slot) => slot,
        Err(reason) => return Ok((UploadAdmission::Later { reason }, None)),
    };
    let key = SegmentKey {
        job: c.job,
        index: c.index,
        epoch: c.epoch,
        start: header.start,
        end: header.end,
        hash: header.hash,
    };
    let begin = match store.begin(key, header.size_bytes).await {
        Ok(begin) => begin,
        Err(e @ (StoreError::TooLarge { .. } | StoreError::BadRange { .. })) => {
            let reason = clip_reason(e.to_string());
            return Ok((UploadAdmission::Rejected { reason }, None));
        }
        Err(e) => {
            let reason = clip_reason(e.to_string());
            return Ok((UploadAdmission::Later { reason }, None));
        }
    };
    let offset_bytes = match &begin {
        Begin::Complete(_) => header.size_bytes,
        Begin::Receive(up) => {
            if let Err(reason) = store.check_room(up.remaining_bytes()).await {
                warn!(job = c.job, chunk = c.index, "{reason}");
                return Ok((
                    UploadAdmission::Later {
                        reason: clip_reason(reason),
                    },
                    None,
                ));
            }
            up.offset_bytes()
        }
    };
    Ok((
        UploadAdmission::Accept { offset_bytes },
        Some(Admitted { slot, begin }),
    ))
}

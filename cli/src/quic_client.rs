//! A client of the coordinator's QUIC endpoint (`drover submit --quic`):
//! API calls on a stream of their own kind, for tools that keep a
//! connection open instead of paying for HTTP per call. Same keys, same
//! validation, same problem documents as REST.

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use drover_node::tls::Trust;
use drover_protocol::{
    codec, preamble, ClientRequest, ClientResponse, StreamKind, MAX_CLIENT_FRAME_BYTES,
    PROTOCOL_VERSION,
};
use drover_shared::api::{Problem, Submitted};
use drover_shared::config::CERT_SERVER_NAME;
use tokio::io::AsyncWriteExt;

/// One answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After` for a 429.
    pub retry_after_s: u32,
    /// JSON body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as `T` for a 2xx, or the problem as an error.
    pub fn into_json<T: serde::de::DeserializeOwned>(self) -> anyhow::Result<T> {
        if (200..300).contains(&self.status) {
            return serde_json::from_slice(&self.body).context("reading the answer");
        }
        match serde_json::from_slice::<Problem>(&self.body) {
            Ok(p) => match p.field {
                Some(f) => bail!("{} ({}): {} [field: {f}]", p.title, self.status, p.detail),
                None => bail!("{} ({}): {}", p.title, self.status, p.detail),
            },
            Err(_) => bail!(
                "status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

/// A connection with one open client stream.
pub struct QuicClient {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    key: String,
    next_id: u64,
}

impl QuicClient {
    /// Connects to the coordinator at `addr`, pinned by `trust`, calling
    /// with API key `key`.
    pub async fn connect(addr: SocketAddr, trust: &Trust, key: &str) -> anyhow::Result<QuicClient> {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(drover_node::tls::client_config(trust)?);
        let conn = endpoint
            .connect(addr, CERT_SERVER_NAME)?
            .await
            .with_context(|| format!("connecting to the coordinator's QUIC endpoint {addr}"))?;
        let (send, recv) = open(&conn).await?;
        Ok(QuicClient {
            _endpoint: endpoint,
            conn,
            send,
            recv,
            key: key.to_string(),
            next_id: 1,
        })
    }

    /// One API call, as over REST.
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        let id = self.next_id;
        self.next_id += 1;
        let req = ClientRequest {
            id,
            api_key: self.key.clone(),
            method: method.to_string(),
            path: path.to_string(),
            content_type: content_type.to_string(),
            body,
        };
        codec::write_msg(&mut self.send, &req).await?;
        let resp: ClientResponse = codec::read_msg(&mut self.recv, MAX_CLIENT_FRAME_BYTES)
            .await?
            .context("the coordinator closed the client stream")?;
        if resp.id != id {
            bail!("answer {} to request {id}", resp.id);
        }
        Ok(Answer {
            status: resp.status,
            retry_after_s: resp.retry_after_s,
            body: resp.body,
        })
    }

    /// Submits a JSON spec.
    pub async fn submit_json(&mut self, spec: &serde_json::Value) -> anyhow::Result<Submitted> {
        self.call(
            "POST",
            "/v1/jobs",
            "application/json",
            serde_json::to_vec(spec)?,
        )
        .await?
        .into_json()
    }

    /// Closes the connection.
    pub fn close(self) {
        self.conn
            .close(drover_protocol::close_code::BYE.into(), b"bye");
    }
}

async fn open(conn: &quinn::Connection) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_u8(StreamKind::Client as u8).await?;
    preamble::write(&mut send, PROTOCOL_VERSION).await?;
    let theirs = preamble::read(&mut recv).await?;
    if theirs != PROTOCOL_VERSION {
        bail!("the coordinator speaks protocol {theirs}, this client {PROTOCOL_VERSION}");
    }
    Ok((send, recv))
}

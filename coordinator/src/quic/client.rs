//! Client streams: API calls over the coordinator's QUIC endpoint, for
//! tools that keep a connection (`drover submit --quic`).
//!
//! A client connects with any certificate of its own (mutual TLS is on for
//! every peer; a client's certificate is not an identity), opens a stream
//! of kind [`StreamKind::Client`], exchanges preambles, then sends
//! [`ClientRequest`]s and reads one [`ClientResponse`] per request, in
//! order. Each request carries its API key and is checked, limited and
//! answered exactly as over REST ([`crate::api::rpc::call`]). More streams
//! may be opened on the same connection; each is served in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use drover_protocol::{
    codec, preamble, ClientRequest, ClientResponse, StreamKind, MAX_CLIENT_FRAME_BYTES,
    PROTOCOL_VERSION,
};
use tokio::io::AsyncReadExt;
use tracing::debug;

use crate::api::Api;

/// Client streams open at once on one connection.
pub const MAX_CLIENT_STREAMS: usize = 8;
/// A client stream silent this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// Serves a client connection whose first stream (kind byte read) is
/// `send`/`recv`, and any further client streams it opens.
pub async fn serve_client(
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    api: Arc<Api>,
) -> anyhow::Result<()> {
    let first = actix::spawn(stream(send, recv, api.clone(), false));
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENT_STREAMS - 1));
    while let Ok((send, recv)) = conn.accept_bi().await {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            conn.close(
                drover_protocol::close_code::REFUSED.into(),
                b"too many client streams on one connection",
            );
            break;
        };
        let api = api.clone();
        actix::spawn(async move {
            if let Err(e) = stream(send, recv, api, true).await {
                debug!("client stream ended: {e:#}");
            }
            drop(permit);
        });
    }
    first.abort();
    Ok(())
}

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    api: Arc<Api>,
    read_kind: bool,
) -> anyhow::Result<()> {
    if read_kind {
        let kind = recv.read_u8().await.context("reading the stream kind")?;
        if StreamKind::from_byte(kind) != Some(StreamKind::Client) {
            anyhow::bail!("a client connection opened a stream of kind {kind}");
        }
    }
    let theirs = tokio::time::timeout(Duration::from_secs(10), preamble::read(&mut recv))
        .await
        .context("no preamble")??;
    preamble::write(&mut send, PROTOCOL_VERSION).await?;
    if theirs != PROTOCOL_VERSION {
        send.finish().ok();
        anyhow::bail!("client speaks protocol {theirs}, this coordinator {PROTOCOL_VERSION}");
    }
    loop {
        let req: Option<ClientRequest> =
            tokio::time::timeout(IDLE, codec::read_msg(&mut recv, MAX_CLIENT_FRAME_BYTES))
                .await
                .context("client stream idle")??;
        let Some(req) = req else {
            send.finish().ok();
            return Ok(());
        };
        let reply = crate::api::rpc::call(
            &api,
            &req.api_key,
            &req.method,
            &req.path,
            &req.content_type,
            &req.body,
        )
        .await;
        let resp = ClientResponse {
            id: req.id,
            status: reply.status,
            content_type: reply.content_type.to_string(),
            retry_after_s: reply.retry_after_s,
            body: reply.body,
        };
        codec::write_msg(&mut send, &resp).await?;
    }
}

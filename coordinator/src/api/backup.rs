//! `GET /v1/admin/backup`: an online backup streamed as a tar
//! ([`crate::backup`] has what it holds and why it is consistent).

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpResponse};
use drover_shared::api::Problem as ProblemDoc;
use serde::Deserialize;
use tracing::{info, warn};

use super::{ApiResult, Problem};
use crate::auth::http::AdminCaller;
use crate::backup::{Running, Sources};

/// Pieces of the archive waiting to be sent: bounds what a slow client
/// makes the coordinator hold (8 x 256 KiB); the backup thread waits
/// meanwhile.
const STREAM_QUEUE_CHUNKS: usize = 8;

/// Bytes per piece sent.
const STREAM_CHUNK_BYTES: usize = 256 * 1024;

/// Query of `GET /v1/admin/backup`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct BackupQuery {
    /// Include done jobs' outputs and posters (by default only what
    /// unfinished jobs need, and the index of the rest).
    #[serde(default)]
    pub artifacts: bool,
}

/// A `Write` that sends what it is given to the response, in pieces.
struct ToResponse {
    tx: tokio::sync::mpsc::Sender<Result<web::Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ToResponse {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = web::Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(STREAM_CHUNK_BYTES),
        ));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl std::io::Write for ToResponse {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= STREAM_CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A consistent online backup of the coordinator: its journals, the
/// segments of unfinished jobs, the artifact index (with `artifacts`, the
/// outputs and posters too) and its secrets, as a tar whose last members
/// are a manifest of every member's SHA-256 and the manifest's own. It
/// holds the coordinator's keys: store it as a secret. One backup runs at a
/// time. An error midway ends the stream early, without the manifest, so
/// the archive is refused by `drover restore`.
#[utoipa::path(operation_id = "backup",
    tag = "admin",
    params(BackupQuery),
    responses(
        (status = 200, description = "The archive (application/x-tar)", content_type = "application/x-tar", body = Vec<u8>),
        (status = 403, body = ProblemDoc),
        (status = 409, body = ProblemDoc)
    )
)]
#[get("/v1/admin/backup")]
pub async fn backup(
    _admin: AdminCaller,
    sources: web::Data<Sources>,
    q: web::Query<BackupQuery>,
) -> ApiResult<HttpResponse> {
    let sources: Arc<Sources> = sources.into_inner();
    let running = Running::begin(sources)
        .map_err(|e| Problem::new(StatusCode::CONFLICT, "backup running", e.to_string(), None))?;
    let artifacts = q.artifacts;
    let (tx, mut rx) = tokio::sync::mpsc::channel(STREAM_QUEUE_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut out = ToResponse {
            tx: tx.clone(),
            buf: Vec::with_capacity(STREAM_CHUNK_BYTES),
        };
        match crate::backup::write_backup(&running, artifacts, &mut out) {
            Ok(m) => info!(
                members = m.counts.members,
                bytes = m.counts.bytes,
                jobs = m.counts.jobs,
                segments = m.counts.segments,
                missing = m.counts.segments_missing,
                ms = started.elapsed().as_millis() as u64,
                "backup streamed"
            ),
            Err(e) => {
                warn!("backup failed: {e}");
                // Ends the response early: the archive has no manifest.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
        drop(running);
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(HttpResponse::Ok()
        .content_type("application/x-tar")
        .streaming(body))
}

//! Chunk logs: each chunk attempt's executor output, as its node shipped it
//! ([`crate::chunklog`]). A job's logs are seen by whoever sees the job;
//! another project's key gets the same 404 as for a job that does not
//! exist.

use actix_web::{get, web, HttpResponse};
use drover_shared::api::{ChunkLogEntry, ChunkLogList, ChunkState, JobView, Problem as ProblemDoc};

use super::jobs::visible_job;
use super::{parse_id, Api, ApiResult, Problem};
use crate::actors::GetChunkLogs;
use crate::auth::http::Caller;
use crate::chunklog::{ChunkLogMeta, ChunkLogs};

async fn store(api: &Api) -> ApiResult<ChunkLogs> {
    match api.sched.send(GetChunkLogs).await {
        Ok(Some(logs)) => Ok(logs),
        Ok(None) => Err(Problem::not_found(
            "no chunk logs",
            "this coordinator keeps no chunk logs".into(),
            "id",
        )),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

fn parse_index(raw: &str) -> ApiResult<u32> {
    raw.parse::<u32>().map_err(|_| {
        Problem::bad_request(
            "invalid chunk index",
            format!("{raw:?} is not a chunk index (an integer 0..={})", u32::MAX),
            "index",
        )
    })
}

/// The state of a logged attempt: the job's own word while it lists the
/// chunk, else how its log ended.
fn state_of(view: &JobView, meta: &ChunkLogMeta) -> &'static str {
    let listed = view
        .chunks
        .iter()
        .find(|c| c.index == Some(meta.chunk))
        .map(|c| c.state);
    match listed {
        Some(ChunkState::Done) => "done",
        _ if meta.failed.is_some() => "failed",
        // Its log may be complete while its segment uploads.
        Some(ChunkState::Assigned) => "running",
        // Ended without a failure report: the node dropped it because the
        // coordinator cancelled it (a lost speculative copy, a cancelled
        // job, a chunk taken back).
        _ if meta.complete => "cancelled",
        _ => "lost",
    }
}

fn entry(id: u64, view: &JobView, meta: ChunkLogMeta) -> ChunkLogEntry {
    ChunkLogEntry {
        state: state_of(view, &meta).to_string(),
        url: format!("/v1/jobs/{id}/chunks/{}/log", meta.chunk),
        index: meta.chunk,
        epoch: meta.epoch,
        start: meta.start,
        end: meta.end,
        node: meta.node,
        error: meta.failed,
        size_bytes: meta.size_bytes,
        complete: meta.complete,
    }
}

/// A job's chunk logs: for each chunk attempt that sent one, its frames,
/// node, state, size and URL.
#[utoipa::path(operation_id = "job_logs",
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses(
        (status = 200, body = ChunkLogList),
        (status = 400, body = ProblemDoc, description = "not a job id"),
        (status = 404, body = ProblemDoc, description = "no such job (or another project's)"),
    )
)]
#[get("/v1/jobs/{id}/logs")]
pub async fn job_logs(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<ChunkLogList>> {
    let id = parse_id(&path)?;
    let view = visible_job(&api, &caller, id).await?;
    let logs = store(&api).await?;
    let logs = logs
        .list(id)
        .into_iter()
        .map(|m| entry(id, &view, m))
        .collect();
    Ok(web::Json(ChunkLogList { job: id, logs }))
}

/// One chunk's executor log, as plain text: the adapter, the encoder,
/// frame timings, warnings and the failure, as the node's executor wrote
/// them (the head and the tail of a very long one).
#[utoipa::path(operation_id = "chunk_log",
    tag = "jobs",
    params(
        ("id" = u64, Path, description = "Job id"),
        ("index" = u32, Path, description = "Chunk id within the job"),
    ),
    responses(
        (status = 200, content_type = "text/plain; charset=utf-8", body = String),
        (status = 400, body = ProblemDoc, description = "not a job id or chunk index"),
        (status = 404, body = ProblemDoc, description = "no such job, or no log of that chunk"),
    )
)]
#[get("/v1/jobs/{id}/chunks/{index}/log")]
pub async fn chunk_log(
    caller: Caller,
    path: web::Path<(String, String)>,
    api: web::Data<Api>,
) -> ApiResult {
    let (raw_id, raw_index) = path.into_inner();
    let id = parse_id(&raw_id)?;
    let index = parse_index(&raw_index)?;
    visible_job(&api, &caller, id).await?;
    let logs = store(&api).await?;
    let read = web::block(move || logs.read(id, index))
        .await
        .map_err(|e| Problem::internal("reading a chunk log failed", e.to_string()))?
        .map_err(|e| Problem::internal("reading a chunk log failed", e.to_string()))?;
    let Some((_, text)) = read else {
        return Err(Problem::not_found(
            "no such chunk log",
            format!("job {id} has no log of chunk {index}"),
            "index",
        ));
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(text))
}

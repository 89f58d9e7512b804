//! Jobs: submit, list, read, act on, and fetch what they made.

use actix_web::http::StatusCode;
use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use drover_shared::api::{
    ArtifactList, ArtifactView, ChunkList, JobPage, JobState, JobSummary, JobUpdate, JobView,
    Problem as ProblemDoc, Role, Submitted,
};
use drover_shared::spec::{JobSpec, DEFAULT_PROJECT, MAX_PRIORITY, MAX_SPEC_BYTES};
use serde::Deserialize;

use super::links::{DEFAULT_TTL_S, MAX_TTL_S, MIN_TTL_S};
use super::{parse_id, Api, ApiResult, Problem};
use crate::actors::{
    ActOnJob, CancelJob, CancelOutcome, GetJob, JobAction, JobFilter, ListJobs, RetryJob, Submit,
    SubmitError,
};
use crate::auth::http::{Caller, SubmitterCaller};
use crate::sched::Owner;

/// Jobs per page by default, and at most.
pub const DEFAULT_PAGE: usize = 50;
/// Most jobs on one page.
pub const MAX_PAGE: usize = 500;

/// A job the caller may see, or 404 (a job of another project is as good
/// as absent to it).
pub async fn visible_job(api: &Api, caller: &Caller, id: u64) -> ApiResult<JobView> {
    let missing = || Problem::not_found("no such job", format!("job {id} does not exist"), "id");
    match api.sched.send(GetJob(id)).await {
        Ok(Some(v)) if caller.sees(&v.project) => Ok(v),
        Ok(_) => Err(missing()),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

fn content_type(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

/// Submit a job: a JSON spec (`application/json`) or TOML
/// (`application/toml`). A key scoped to a project submits to it (a spec
/// naming another project is refused). Answers once the job is durable.
#[utoipa::path(operation_id = "submit_job", 
    tag = "jobs",
    request_body(content = Object, description = "The job spec (see README: the job spec)", content_type = "application/json"),
    responses(
        (status = 201, body = Submitted, description = "accepted and durable; `Location` is the job"),
        (status = 400, body = ProblemDoc, description = "not a parsable spec"),
        (status = 401, body = ProblemDoc), (status = 403, body = ProblemDoc),
        (status = 413, body = ProblemDoc, description = "larger than the spec limit"),
        (status = 415, body = ProblemDoc, description = "neither JSON nor TOML"),
        (status = 422, body = ProblemDoc, description = "a field is out of its limits; `field` names it"),
        (status = 429, body = ProblemDoc, description = "rate limit, or the key's active jobs"),
        (status = 503, body = ProblemDoc),
    )
)]
#[post("/v1/jobs")]
pub async fn submit(
    caller: Caller,
    req: HttpRequest,
    mut payload: web::Payload,
    api: web::Data<Api>,
) -> ApiResult {
    use futures_util::StreamExt;
    caller.require(Role::Submitter)?;
    let is_toml = spec_is_toml(content_type(&req).as_deref())?;
    // Read by hand so that an oversize body is refused before it is all
    // buffered, with the limit named.
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            Problem::bad_request("invalid job spec", format!("reading the body: {e}"), "spec")
        })?;
        if body.len() + chunk.len() > MAX_SPEC_BYTES {
            return Err(spec_too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let sub = submit_spec(&api, &caller, is_toml, &body).await?;
    Ok(HttpResponse::Created()
        .insert_header(("location", sub.status_url.clone()))
        .json(sub))
}

fn spec_too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body too large",
        format!("the job spec limit is {MAX_SPEC_BYTES} bytes"),
        Some("spec"),
    )
}

/// Whether a spec of this media type is TOML (else JSON); 415 for any
/// other type.
pub fn spec_is_toml(content_type: Option<&str>) -> ApiResult<bool> {
    match content_type {
        None | Some("" | "application/json") => Ok(false),
        Some("application/toml" | "text/toml" | "application/x-toml" | "text/x-toml") => Ok(true),
        Some(other) => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported media type",
            format!("{other} is not a job spec: send application/json or application/toml"),
            Some("content-type"),
        )),
    }
}

/// Parses, checks and submits a spec for `caller`: what `POST /v1/jobs`
/// does, over any transport.
pub async fn submit_spec(
    api: &Api,
    caller: &Caller,
    is_toml: bool,
    body: &[u8],
) -> ApiResult<Submitted> {
    caller.require(Role::Submitter)?;
    if body.len() > MAX_SPEC_BYTES {
        return Err(spec_too_large());
    }
    let text = std::str::from_utf8(body).map_err(|_| {
        Problem::bad_request("invalid job spec", "body is not UTF-8".into(), "spec")
    })?;
    let parsed = if is_toml {
        JobSpec::from_toml(text)
    } else {
        JobSpec::from_json(text)
    };
    let mut spec =
        parsed.map_err(|e| Problem::bad_request("invalid job spec", e.to_string(), &e.field))?;
    spec.validate()
        .map_err(|e| Problem::unprocessable("invalid job spec", e.to_string(), &e.field))?;
    if let Some(p) = &caller.project {
        if spec.project == DEFAULT_PROJECT {
            spec.project = p.clone();
        }
        caller.require_project(&spec.project)?;
    }
    let msg = Submit {
        spec,
        owner: Owner {
            key: caller.key_id.clone(),
            name: caller.name.clone(),
        },
        max_active_jobs: caller.max_active_jobs,
    };
    match api.sched.send(msg).await {
        Ok(Ok(id)) => Ok(Submitted {
            id,
            status_url: format!("/v1/jobs/{id}"),
        }),
        Ok(Err(e @ SubmitError::TooManyJobs { .. })) => {
            Err(Problem::too_many(e.to_string(), "max_active_jobs", 10))
        }
        Ok(Err(e @ SubmitError::ShuttingDown)) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down",
            e.to_string(),
            None,
        )),
        Ok(Err(e)) => Err(Problem::internal("not accepted", e.to_string())),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

/// Filters and cursor of a job list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this project.
    pub project: Option<String>,
    /// Only jobs submitted with this key (its name or id).
    pub submitter: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Jobs per page, 1..=500 (default 50).
    pub limit: Option<usize>,
}

fn encode_query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::api::admin::percent(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// List jobs, newest first, a page at a time; filter by state, project
/// and submitter. A key scoped to a project sees only that project.
#[utoipa::path(operation_id = "list_jobs", 
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, body = JobPage),
        (status = 400, body = ProblemDoc), (status = 401, body = ProblemDoc), (status = 403, body = ProblemDoc),
    )
)]
#[get("/v1/jobs")]
pub async fn list(
    caller: Caller,
    q: web::Query<ListQuery>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<JobPage>> {
    Ok(web::Json(list_jobs(&api, &caller, q.into_inner()).await?))
}

/// A page of jobs for `caller`: what `GET /v1/jobs` does.
pub async fn list_jobs(api: &Api, caller: &Caller, q: ListQuery) -> ApiResult<JobPage> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(Problem::bad_request(
            "invalid query",
            format!("limit {limit}; it must be 1..={MAX_PAGE}"),
            "limit",
        ));
    }
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            Problem::bad_request(
                "invalid query",
                format!("{c:?} is not a cursor from this API"),
                "cursor",
            )
        })?),
    };
    let mut project = q.project.clone();
    if let Some(own) = &caller.project {
        match &project {
            Some(p) => caller.require_project(p)?,
            None => project = Some(own.clone()),
        }
    }
    let filter = JobFilter {
        state: q.state,
        project,
        submitter: q.submitter.clone(),
    };
    let page = api
        .sched
        .send(ListJobs {
            filter,
            before,
            limit,
        })
        .await
        .map_err(Problem::unavailable)?;
    let next = page.next.map(|n| {
        let mut pairs = vec![("cursor", n.to_string()), ("limit", limit.to_string())];
        if let Some(s) = q.state {
            pairs.push((
                "state",
                serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            ));
        }
        if let Some(p) = &q.project {
            pairs.push(("project", p.clone()));
        }
        if let Some(s) = &q.submitter {
            pairs.push(("submitter", s.clone()));
        }
        format!("/v1/jobs?{}", encode_query(&pairs))
    });
    Ok(JobPage {
        jobs: page.jobs.iter().map(JobSummary::from).collect(),
        next_cursor: page.next.map(|n| n.to_string()),
        next,
    })
}

/// One job with its chunks.
#[utoipa::path(operation_id = "get_job", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = ProblemDoc), (status = 401, body = ProblemDoc))
)]
#[get("/v1/jobs/{id}")]
pub async fn get(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<JobView>> {
    let id = parse_id(&path)?;
    Ok(web::Json(visible_job(&api, &caller, id).await?))
}

/// Cancels a job for `caller`: what `DELETE /v1/jobs/{id}` does.
pub async fn do_cancel(id: u64, caller: &Caller, api: &Api) -> ApiResult<web::Json<JobView>> {
    caller.require(Role::Submitter)?;
    visible_job(api, caller, id).await?;
    match api.sched.send(CancelJob(id)).await {
        Ok(CancelOutcome::Cancelled) => Ok(web::Json(visible_job(api, caller, id).await?)),
        Ok(CancelOutcome::NotFound) => Err(Problem::not_found(
            "no such job",
            format!("job {id} does not exist"),
            "id",
        )),
        Ok(CancelOutcome::AlreadyFinished(state)) => Err(Problem::conflict(
            "job already finished",
            format!("job {id} is {state:?} and cannot be cancelled"),
            "id",
        )),
        Ok(CancelOutcome::Joining) => Err(Problem::conflict(
            "job is joining its output",
            format!("job {id} has every frame and its segments are being joined into the output; it cannot be cancelled now (it is done in moments)"),
            "id",
        )),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

/// Cancel a job: running chunks stop, stored frames are kept (a retry
/// renders only the rest).
#[utoipa::path(operation_id = "cancel_job", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc, description = "already ended, or joining its output"))
)]
#[delete("/v1/jobs/{id}")]
pub async fn cancel(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<JobView>> {
    do_cancel(parse_id(&path)?, &caller, &api).await
}

/// Cancel a job (the same as `DELETE /v1/jobs/{id}`, for clients that
/// cannot send DELETE).
#[utoipa::path(operation_id = "cancel_job_post", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc))
)]
#[post("/v1/jobs/{id}/cancel")]
pub async fn cancel_post(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<JobView>> {
    do_cancel(parse_id(&path)?, &caller, &api).await
}

fn status_problem(status: u16, title: &str, why: String) -> Problem {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT);
    Problem::new(status, title, why, Some("id"))
}

/// Run again the frames a failed or cancelled job is missing.
#[utoipa::path(operation_id = "retry_job", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc, description = "done, still running, or its frames were deleted"))
)]
#[post("/v1/jobs/{id}/retry")]
pub async fn retry(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<JobView>> {
    Ok(web::Json(do_retry(parse_id(&path)?, &caller, &api).await?))
}

/// Retries a job for `caller`.
pub async fn do_retry(id: u64, caller: &Caller, api: &Api) -> ApiResult<JobView> {
    caller.require(Role::Submitter)?;
    visible_job(api, caller, id).await?;
    match api.sched.send(RetryJob(id)).await {
        Ok(Ok(job)) => Ok(job),
        Ok(Err((status, why))) => Err(status_problem(status, "cannot retry", why)),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

/// Pauses, resumes or reprioritises a job for `caller`.
pub async fn act(
    id: u64,
    action: JobAction,
    caller: &Caller,
    api: &Api,
) -> ApiResult<web::Json<JobView>> {
    caller.require(Role::Submitter)?;
    visible_job(api, caller, id).await?;
    match api.sched.send(ActOnJob { job: id, action }).await {
        Ok(Ok(job)) => Ok(web::Json(job)),
        Ok(Err((status, why))) => Err(status_problem(status, "cannot change the job", why)),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

/// Pause a job: no new chunk starts; running chunks finish and are kept.
#[utoipa::path(operation_id = "pause_job", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc, description = "ended or joining"))
)]
#[post("/v1/jobs/{id}/pause")]
pub async fn pause(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<JobView>> {
    act(parse_id(&path)?, JobAction::Pause, &caller, &api).await
}

/// Resume a paused job.
#[utoipa::path(operation_id = "resume_job", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc))
)]
#[post("/v1/jobs/{id}/resume")]
pub async fn resume(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<JobView>> {
    act(parse_id(&path)?, JobAction::Resume, &caller, &api).await
}

/// Change a running job: its priority (0..=100). A raised job takes free
/// nodes first and may shrink lower-priority chunks at once.
#[utoipa::path(operation_id = "update_job", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    request_body = JobUpdate,
    responses((status = 200, body = JobView), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc), (status = 422, body = ProblemDoc))
)]
#[patch("/v1/jobs/{id}")]
pub async fn update(
    caller: SubmitterCaller,
    path: web::Path<String>,
    body: web::Json<JobUpdate>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<JobView>> {
    Ok(web::Json(
        update_job(parse_id(&path)?, body.into_inner(), &caller.0, &api).await?,
    ))
}

/// Changes a job for `caller`: what `PATCH /v1/jobs/{id}` does.
pub async fn update_job(
    id: u64,
    body: JobUpdate,
    caller: &Caller,
    api: &Api,
) -> ApiResult<JobView> {
    let Some(priority) = body.priority else {
        return Err(Problem::unprocessable(
            "nothing to change",
            "name a field to change: priority".into(),
            "priority",
        ));
    };
    if priority > MAX_PRIORITY {
        return Err(Problem::unprocessable(
            "invalid priority",
            format!("{priority}; it must be 0..={MAX_PRIORITY}"),
            "priority",
        ));
    }
    Ok(act(id, JobAction::Priority(priority), caller, api).await?.0)
}

/// A job's chunks and waiting frame ranges, with state, node, attempts
/// and the last error.
#[utoipa::path(operation_id = "job_chunks", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = ChunkList), (status = 404, body = ProblemDoc))
)]
#[get("/v1/jobs/{id}/chunks")]
pub async fn chunks(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<ChunkList>> {
    let id = parse_id(&path)?;
    let v = visible_job(&api, &caller, id).await?;
    Ok(web::Json(ChunkList {
        job: id,
        chunks: v.chunks,
    }))
}

/// Lifetime of the links of an artifact list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LinkQuery {
    /// Seconds the download links stay valid, 60..=604800 (default 3600).
    ttl_s: Option<u64>,
}

/// A done job's files (the output and a poster frame) with their size,
/// SHA-256, and signed download links that expire.
#[utoipa::path(operation_id = "job_artifacts", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id"), LinkQuery),
    responses((status = 200, body = ArtifactList), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc, description = "not done yet"), (status = 410, body = ProblemDoc, description = "the output is gone"))
)]
#[get("/v1/jobs/{id}/artifacts")]
pub async fn artifacts(
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<LinkQuery>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<ArtifactList>> {
    let id = parse_id(&path)?;
    let ttl = q.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(MIN_TTL_S..=MAX_TTL_S).contains(&ttl) {
        return Err(Problem::bad_request(
            "invalid query",
            format!("ttl_s {ttl}; it must be {MIN_TTL_S}..={MAX_TTL_S}"),
            "ttl_s",
        ));
    }
    let v = visible_job(&api, &caller, id).await?;
    let file = done_output(&v)?;
    let cache = api.store.job_dir(id);
    let infos = web::block(move || crate::artifact::describe(&file, &cache))
        .await
        .map_err(|e| Problem::internal("artifacts", e.to_string()))?
        .map_err(|e| {
            Problem::new(
                StatusCode::GONE,
                "output missing",
                format!("job {id}'s output cannot be read: {e:#}"),
                None,
            )
        })?;
    let artifacts = infos
        .into_iter()
        .map(|a| {
            let (download_url, expires_at) = api.links.sign(id, &a.name, ttl);
            ArtifactView {
                name: a.name,
                content_type: a.content_type.to_string(),
                bytes: a.bytes,
                sha256: a.sha256,
                download_url,
                expires_at,
            }
        })
        .collect();
    Ok(web::Json(ArtifactList { job: id, artifacts }))
}

fn done_output(v: &JobView) -> ApiResult<std::path::PathBuf> {
    match (v.state, &v.output_path) {
        (JobState::Done, Some(p)) => Ok(p.into()),
        (state, _) => Err(Problem::conflict(
            "output not ready",
            format!(
                "job {} is {state:?}; its output exists once it is done",
                v.id
            ),
            "id",
        )),
    }
}

async fn serve_file(
    req: &HttpRequest,
    path: std::path::PathBuf,
    download_name: String,
    what: String,
) -> ApiResult {
    match actix_files::NamedFile::open_async(&path).await {
        Ok(f) => Ok(f
            .set_content_disposition(actix_web::http::header::ContentDisposition::attachment(
                download_name,
            ))
            .into_response(req)),
        Err(e) => Err(Problem::new(
            StatusCode::GONE,
            "file missing",
            format!("{what} cannot be read: {e}"),
            None,
        )),
    }
}

/// A done job's output video, with a key.
#[utoipa::path(operation_id = "job_output", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, description = "the MP4", content_type = "video/mp4"), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc), (status = 410, body = ProblemDoc))
)]
#[get("/v1/jobs/{id}/output")]
pub async fn output(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult {
    let id = parse_id(&path)?;
    let v = visible_job(&api, &caller, id).await?;
    let file = done_output(&v)?;
    let name = format!("{}-{id}.mp4", v.name.replace(' ', "_"));
    serve_file(&req, file, name, format!("job {id}'s output")).await
}

/// A signed link's query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    /// Expiry, seconds since the Unix epoch.
    expires: u64,
    /// HMAC-SHA256 signature, hex.
    sig: String,
}

/// A file by signed link (no key: the signature is the permission).
/// Refused when altered (403) or expired (410).
#[utoipa::path(operation_id = "download_artifact", 
    tag = "jobs",
    params(("job" = u64, Path, description = "Job id"), ("name" = String, Path, description = "output.mp4 or poster.png"), SignedQuery),
    responses((status = 200, description = "the file"), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc), (status = 410, body = ProblemDoc)),
    security(())
)]
#[get("/v1/downloads/{job}/{name}")]
pub async fn download(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Query<SignedQuery>,
    api: web::Data<Api>,
) -> ApiResult {
    let (job, name) = path.into_inner();
    let job = parse_id(&job)?;
    api.links.check(job, &name, q.expires, &q.sig)?;
    let out_file = api.store.output_path(job);
    let cache = api.store.job_dir(job);
    let infos = web::block(move || crate::artifact::describe(&out_file, &cache))
        .await
        .map_err(|e| Problem::internal("artifacts", e.to_string()))?
        .map_err(|e| {
            Problem::new(
                StatusCode::GONE,
                "file missing",
                format!("job {job}'s output cannot be read: {e:#}"),
                None,
            )
        })?;
    let Some(file) = infos.into_iter().find(|a| a.name == name) else {
        return Err(Problem::not_found(
            "no such artifact",
            format!("{name:?} is not an artifact of job {job}: output.mp4 or poster.png"),
            "name",
        ));
    };
    serve_file(
        &req,
        file.path,
        format!("job-{job}-{name}"),
        format!("{name} of job {job}"),
    )
    .await
}

/// Every webhook delivery of a job, with each attempt: time, HTTP status
/// or error, and when the next try is due.
#[utoipa::path(operation_id = "job_webhooks", 
    tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = Vec<crate::webhook::DeliveryView>), (status = 404, body = ProblemDoc))
)]
#[get("/v1/jobs/{id}/webhooks")]
pub async fn webhooks(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<Vec<crate::webhook::DeliveryView>>> {
    let id = parse_id(&path)?;
    visible_job(&api, &caller, id).await?;
    Ok(web::Json(api.hooks.deliveries(id)))
}

//! The REST API (actix-web). Every error is an RFC 9457 problem document
//! naming what is wrong; every handler talks to the scheduler actor only.

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use drover_shared::api::{JobState, Problem, Submitted};
use drover_shared::spec::{JobSpec, MAX_SPEC_BYTES};

use crate::actors::{
    CancelJob, CancelOutcome, ClearOutcome, ClearQuarantine, DrainNode, GetJob, ListJobs,
    ListNodes, RetryJob, Scheduler, Submit, SHUTTING_DOWN,
};

/// Routes under `/v1` and the health check.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/v1/jobs", web::post().to(submit))
        .route("/v1/jobs", web::get().to(list_jobs))
        .route("/v1/jobs/{id}", web::get().to(get_job))
        .route("/v1/jobs/{id}", web::delete().to(cancel_job))
        .route("/v1/jobs/{id}/output", web::get().to(output))
        .route("/v1/nodes", web::get().to(list_nodes))
        .route("/v1/jobs/{id}/retry", web::post().to(retry_job))
        .route(
            "/v1/nodes/{name}/clear-quarantine",
            web::post().to(clear_quarantine),
        )
        .route("/v1/nodes/{name}/drain", web::post().to(drain_node))
        .route("/v1/nodes/{name}/undrain", web::post().to(undrain_node));
}

fn problem(status: StatusCode, title: &str, detail: String, field: Option<&str>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .json(Problem {
            title: title.to_string(),
            status: status.as_u16(),
            detail,
            field: field.map(str::to_string),
        })
}

fn unavailable(e: actix::MailboxError) -> HttpResponse {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "scheduler unavailable",
        e.to_string(),
        None,
    )
}

fn not_found(id: u64) -> HttpResponse {
    problem(
        StatusCode::NOT_FOUND,
        "no such job",
        format!("job {id} does not exist"),
        Some("id"),
    )
}

async fn healthz() -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `POST /v1/jobs`: a JSON spec, or TOML with `Content-Type: application/toml`.
async fn submit(
    req: HttpRequest,
    mut payload: web::Payload,
    sched: web::Data<Addr<Scheduler>>,
) -> HttpResponse {
    use futures_util::StreamExt;
    // Read by hand so that an oversize body gets a problem document that
    // names the limit, and is refused before it is all buffered.
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid job spec",
                "request body could not be read".into(),
                Some("spec"),
            );
        };
        if body.len() + chunk.len() > MAX_SPEC_BYTES {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                format!("the job spec limit is {MAX_SPEC_BYTES} bytes"),
                Some("spec"),
            );
        }
        body.extend_from_slice(&chunk);
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid job spec",
            "body is not UTF-8".into(),
            Some("spec"),
        );
    };
    let is_toml = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("toml"));
    let parsed = if is_toml {
        JobSpec::from_toml(text)
    } else {
        JobSpec::from_json(text)
    };
    let spec = match parsed.and_then(|mut s| s.validate().map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid job spec",
                e.to_string(),
                Some(&e.field),
            );
        }
    };
    match sched.send(Submit(spec)).await {
        Ok(Ok(id)) => {
            let status_url = format!("/v1/jobs/{id}");
            HttpResponse::Created()
                .insert_header(("location", status_url.clone()))
                .json(Submitted { id, status_url })
        }
        Ok(Err(e)) if e == SHUTTING_DOWN => {
            problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down", e, None)
        }
        Ok(Err(e)) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "journal write failed",
            e,
            None,
        ),
        Err(e) => unavailable(e),
    }
}

async fn list_jobs(sched: web::Data<Addr<Scheduler>>) -> HttpResponse {
    match sched.send(ListJobs).await {
        Ok(jobs) => HttpResponse::Ok().json(jobs),
        Err(e) => unavailable(e),
    }
}

fn bad_id(raw: &str) -> HttpResponse {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid job id",
        format!("{raw:?} is not a job id (a positive integer)"),
        Some("id"),
    )
}

async fn get_job(path: web::Path<String>, sched: web::Data<Addr<Scheduler>>) -> HttpResponse {
    let Ok(id) = path.parse::<u64>() else {
        return bad_id(&path);
    };
    match sched.send(GetJob(id)).await {
        Ok(Some(job)) => HttpResponse::Ok().json(job),
        Ok(None) => not_found(id),
        Err(e) => unavailable(e),
    }
}

async fn cancel_job(path: web::Path<String>, sched: web::Data<Addr<Scheduler>>) -> HttpResponse {
    let Ok(id) = path.parse::<u64>() else {
        return bad_id(&path);
    };
    match sched.send(CancelJob(id)).await {
        Ok(CancelOutcome::Cancelled) => match sched.send(GetJob(id)).await {
            Ok(Some(job)) => HttpResponse::Ok().json(job),
            _ => HttpResponse::NoContent().finish(),
        },
        Ok(CancelOutcome::NotFound) => not_found(id),
        Ok(CancelOutcome::AlreadyFinished(state)) => problem(
            StatusCode::CONFLICT,
            "job already finished",
            format!("job {id} is {state:?} and cannot be cancelled"),
            Some("id"),
        ),
        Ok(CancelOutcome::Joining) => problem(
            StatusCode::CONFLICT,
            "job is joining its output",
            format!("job {id} has every frame and its segments are being joined into the output; it cannot be cancelled now (it is done in moments)"),
            Some("id"),
        ),
        Err(e) => unavailable(e),
    }
}

async fn output(
    req: HttpRequest,
    path: web::Path<String>,
    sched: web::Data<Addr<Scheduler>>,
) -> HttpResponse {
    let Ok(id) = path.parse::<u64>() else {
        return bad_id(&path);
    };
    let job = match sched.send(GetJob(id)).await {
        Ok(Some(job)) => job,
        Ok(None) => return not_found(id),
        Err(e) => return unavailable(e),
    };
    match (job.state, job.output_path) {
        (JobState::Done, Some(p)) => match actix_files::NamedFile::open_async(&p).await {
            Ok(f) => f
                .set_content_disposition(actix_web::http::header::ContentDisposition::attachment(
                    format!("{}-{id}.mp4", job.name.replace(' ', "_")),
                ))
                .into_response(&req),
            Err(e) => problem(
                StatusCode::GONE,
                "output missing",
                format!("job {id}'s output {p} cannot be read: {e}"),
                None,
            ),
        },
        (state, _) => problem(
            StatusCode::CONFLICT,
            "output not ready",
            format!("job {id} is {state:?}; its output exists once it is done"),
            Some("id"),
        ),
    }
}

async fn list_nodes(sched: web::Data<Addr<Scheduler>>) -> HttpResponse {
    match sched.send(ListNodes).await {
        Ok(nodes) => HttpResponse::Ok().json(nodes),
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/nodes/{name}/clear-quarantine`: the node takes work again.
async fn clear_quarantine(
    path: web::Path<String>,
    sched: web::Data<Addr<Scheduler>>,
) -> HttpResponse {
    let name = path.into_inner();
    match sched.send(ClearQuarantine(name.clone())).await {
        Ok(ClearOutcome::Cleared(node)) => HttpResponse::Ok().json(node),
        Ok(ClearOutcome::NotQuarantined(_)) => problem(
            StatusCode::CONFLICT,
            "node not quarantined",
            format!("node {name:?} is not quarantined; nothing to clear"),
            Some("name"),
        ),
        Ok(ClearOutcome::NotFound) => problem(
            StatusCode::NOT_FOUND,
            "no such node",
            format!("no node named {name:?} is known"),
            Some("name"),
        ),
        Err(e) => unavailable(e),
    }
}

fn status_problem(status: u16, title: &str, detail: String, field: &str) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT);
    problem(status, title, detail, Some(field))
}

/// `POST /v1/jobs/{id}/retry`: a failed or cancelled job runs again for
/// the frames it is missing.
async fn retry_job(path: web::Path<String>, sched: web::Data<Addr<Scheduler>>) -> HttpResponse {
    let Ok(id) = path.parse::<u64>() else {
        return bad_id(&path);
    };
    match sched.send(RetryJob(id)).await {
        Ok(Ok(job)) => HttpResponse::Ok().json(job),
        Ok(Err((status, why))) => status_problem(status, "cannot retry", why, "id"),
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/nodes/{name}/drain[?now=true]`: no new work on the node; its
/// current chunk finishes, or with `now` what it has not rendered goes back
/// at once.
async fn drain_node(
    path: web::Path<String>,
    query: web::Query<DrainQuery>,
    sched: web::Data<Addr<Scheduler>>,
) -> HttpResponse {
    node_admin(path.into_inner(), Some(query.now), sched).await
}

/// `POST /v1/nodes/{name}/undrain`: the node takes work again.
async fn undrain_node(path: web::Path<String>, sched: web::Data<Addr<Scheduler>>) -> HttpResponse {
    node_admin(path.into_inner(), None, sched).await
}

/// Query of a drain.
#[derive(serde::Deserialize)]
struct DrainQuery {
    #[serde(default)]
    now: bool,
}

async fn node_admin(
    name: String,
    drain: Option<bool>,
    sched: web::Data<Addr<Scheduler>>,
) -> HttpResponse {
    match sched.send(DrainNode { name, drain }).await {
        Ok(Ok(node)) => HttpResponse::Ok().json(node),
        Ok(Err((404, why))) if why.contains("remembered") => HttpResponse::Accepted()
            .json(serde_json::json!({ "status": "remembered", "detail": why })),
        Ok(Err((status, why))) => status_problem(status, "no such node", why, "name"),
        Err(e) => unavailable(e),
    }
}

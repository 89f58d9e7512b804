//! The API's operations behind one entry point, for transports other than
//! HTTP (the QUIC client stream): the same key check and rate limit as the
//! gate, the same handlers' logic, the same problem documents.

use actix_web::http::StatusCode;
use actix_web::web;
use drover_shared::api::{ChunkList, Role};
use serde::Serialize;

use super::jobs::{self, ListQuery};
use super::{parse_id, Api, ApiResult, Problem};
use crate::auth::http::Caller;
use crate::auth::AuthError;

/// What a call answered.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `application/json` or `application/problem+json`.
    pub content_type: &'static str,
    /// `Retry-After`, seconds (0: none).
    pub retry_after_s: u32,
    /// JSON body.
    pub body: Vec<u8>,
}

fn ok<T: Serialize>(status: StatusCode, v: &T) -> Reply {
    Reply {
        status: status.as_u16(),
        content_type: "application/json",
        retry_after_s: 0,
        body: serde_json::to_vec(v).unwrap_or_default(),
    }
}

fn problem(p: Problem) -> Reply {
    Reply {
        status: p.status().as_u16(),
        content_type: "application/problem+json",
        retry_after_s: p.retry_after_s().unwrap_or(0) as u32,
        body: serde_json::to_vec(p.body()).unwrap_or_default(),
    }
}

fn answer<T: Serialize>(status: StatusCode, r: ApiResult<T>) -> Reply {
    match r {
        Ok(v) => ok(status, &v),
        Err(p) => problem(p),
    }
}

/// Who `key` is, and one request from its bucket: 401 or 429 otherwise.
fn caller(api: &Api, key: &str) -> Result<Caller, Problem> {
    let p = if key.is_empty() {
        Err(AuthError::Missing)
    } else {
        api.gate.auth().authenticate(key)
    }
    .map_err(|e| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            e.to_string(),
            Some("authorization"),
        )
    })?;
    api.gate.take(&p).map_err(|wait| {
        Problem::too_many(
            format!(
                "key {} is limited to {} requests per second (burst {}); retry in {wait} s",
                p.key_id,
                p.rate_per_s,
                p.rate_per_s.saturating_mul(2)
            ),
            "rate_per_s",
            wait,
        )
    })?;
    Ok(Caller(p))
}

/// Runs one API call: `method` and `path` (with its query) as over REST.
/// Served: submitting, listing, reading and acting on jobs, their chunks
/// and webhook deliveries, and reading nodes. Downloads and the event
/// stream stay on REST (they stream).
pub async fn call(
    api: &Api,
    key: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Reply {
    let c = match caller(api, key) {
        Ok(c) => c,
        Err(p) => return problem(p),
    };
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match (method, segs.as_slice()) {
        ("POST", ["v1", "jobs"]) => {
            let r = match jobs::spec_is_toml(Some(&ct)) {
                Ok(toml) => jobs::submit_spec(api, &c, toml, body).await,
                Err(p) => Err(p),
            };
            answer(StatusCode::CREATED, r)
        }
        ("GET", ["v1", "jobs"]) => {
            let r = match web::Query::<ListQuery>::from_query(query) {
                Ok(q) => jobs::list_jobs(api, &c, q.into_inner()).await,
                Err(e) => Err(Problem::bad_request(
                    "invalid query",
                    e.to_string(),
                    "query",
                )),
            };
            answer(StatusCode::OK, r)
        }
        (m, ["v1", "jobs", id, rest @ ..]) => {
            let id = match parse_id(id) {
                Ok(id) => id,
                Err(p) => return problem(p),
            };
            match (m, rest) {
                ("GET", []) => answer(StatusCode::OK, jobs::visible_job(api, &c, id).await),
                ("DELETE", []) | ("POST", ["cancel"]) => answer(
                    StatusCode::OK,
                    jobs::do_cancel(id, &c, api).await.map(|j| j.0),
                ),
                ("POST", ["retry"]) => answer(StatusCode::OK, jobs::do_retry(id, &c, api).await),
                ("POST", ["pause"]) => answer(
                    StatusCode::OK,
                    jobs::act(id, crate::actors::JobAction::Pause, &c, api)
                        .await
                        .map(|j| j.0),
                ),
                ("POST", ["resume"]) => answer(
                    StatusCode::OK,
                    jobs::act(id, crate::actors::JobAction::Resume, &c, api)
                        .await
                        .map(|j| j.0),
                ),
                ("PATCH", []) => {
                    let r = match serde_json::from_slice::<drover_shared::api::JobUpdate>(body) {
                        Ok(u) => jobs::update_job(id, u, &c, api).await,
                        Err(e) => Err(Problem::unprocessable(
                            "invalid request body",
                            e.to_string(),
                            "body",
                        )),
                    };
                    answer(StatusCode::OK, r)
                }
                ("GET", ["chunks"]) => answer(
                    StatusCode::OK,
                    jobs::visible_job(api, &c, id).await.map(|v| ChunkList {
                        job: id,
                        chunks: v.chunks,
                    }),
                ),
                ("GET", ["webhooks"]) => answer(
                    StatusCode::OK,
                    jobs::visible_job(api, &c, id)
                        .await
                        .map(|_| api.hooks.deliveries(id)),
                ),
                _ => problem(not_here(method, path)),
            }
        }
        ("GET", ["v1", "nodes"]) => answer(
            StatusCode::OK,
            api.sched
                .send(crate::actors::ListNodes)
                .await
                .map_err(Problem::unavailable),
        ),
        ("GET", ["v1", "nodes", name]) => {
            let r = match api.sched.send(crate::actors::ListNodes).await {
                Ok(nodes) => nodes.into_iter().find(|n| n.name == *name).ok_or_else(|| {
                    Problem::not_found(
                        "no such node",
                        format!("no node named {name:?} is known"),
                        "name",
                    )
                }),
                Err(e) => Err(Problem::unavailable(e)),
            };
            answer(StatusCode::OK, r)
        }
        _ => {
            let _ = c.require(Role::Viewer);
            problem(not_here(method, path))
        }
    }
}

fn not_here(method: &str, path: &str) -> Problem {
    Problem::not_found(
        "not served over QUIC",
        format!("{method} {path} is not one of the QUIC client stream's operations (jobs and nodes); use the REST API"),
        "path",
    )
}

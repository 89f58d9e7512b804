//! `/healthz` (the process answers), `/readyz` (every check a load
//! balancer or Kubernetes needs before sending work, each named) and
//! `/metrics` (Prometheus, behind its own scrape token).
//!
//! All three are outside `/v1` and outside the API keys: the gate lets them
//! through ([`crate::auth::http::is_public`]) and `/metrics` does its own
//! check ([`crate::metrics::MetricsAccess`]).

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpRequest, HttpResponse};

use super::problem::problem;
use super::Api;
use crate::metrics::MetricsAccess;

/// Liveness: the process answers. Nothing else is checked, so a slow disk
/// makes the coordinator unready, never restarted.
#[utoipa::path(operation_id = "healthz", tag = "health", responses((status = 200, description = "alive")))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// The outcome of one readiness check: `None` when it passed.
pub type Check = (&'static str, Option<String>);

/// Readiness: the scheduler answers, the journal is writable (its writer
/// alive and caught up, a probe file synced in its directory), the QUIC
/// endpoint accepts, and the artifact store is writable with its free-space
/// reserve. `200` lists every check; `503` is a problem document naming
/// each failing check in `detail` and `field`, with every check under
/// `checks`.
#[utoipa::path(operation_id = "readyz", tag = "health", responses(
    (status = 200, description = "ready: every check and its status"),
    (status = 503, description = "a check failed; each failing one is named", body = drover_shared::api::Problem),
))]
#[get("/readyz")]
pub async fn readyz(api: web::Data<Api>) -> HttpResponse {
    // One check at a time, its result kept for READY_CACHE: `/readyz` needs
    // no key, so a flood of probes must not turn into a flood of fsyncs, and
    // two probes at once (a kubelet and a load balancer) must not race on
    // the probe files.
    let mut last = api.ready.lock().await;
    if let Some((at, checks)) = last.as_ref() {
        if at.elapsed() < READY_CACHE {
            return ready_answer(checks);
        }
    }
    let checks = run_checks(&api).await;
    let answer = ready_answer(&checks);
    *last = Some((std::time::Instant::now(), checks));
    answer
}

/// How long a readiness result is reused: short beside any probe period
/// (Kubernetes' least is 1 s), long enough that probes cost at most a few
/// fsyncs a second whoever sends them.
const READY_CACHE: std::time::Duration = std::time::Duration::from_millis(500);

/// The last readiness result and when it was taken; its lock makes the
/// checks single-flight.
pub type ReadyCache = std::sync::Arc<tokio::sync::Mutex<Option<(std::time::Instant, Vec<Check>)>>>;

async fn run_checks(api: &Api) -> Vec<Check> {
    // A no-op message: the scheduler's thread answers, at no cost to it.
    let scheduler = match api.sched.send(crate::actors::Ping).await {
        Ok(()) => None,
        Err(e) => Some(format!("does not answer: {e}")),
    };
    // The disk checks fsync: off the async threads, side by side.
    let journal = web::block(|| crate::metrics::health().check_journal());
    let store = api.store.clone();
    let store = web::block(move || store.check_writable());
    let (journal, store) = futures_util::future::join(journal, store).await;
    let flatten = |r: Result<Result<(), String>, actix_web::error::BlockingError>| match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(format!("the check did not run: {e}")),
    };
    let quic = (!crate::metrics::health().quic_accepting())
        .then(|| "the endpoint does not accept connections".to_string());
    vec![
        ("scheduler", scheduler),
        ("journal", flatten(journal)),
        ("quic_endpoint", quic),
        ("artifact_store", flatten(store)),
    ]
}

/// `200` with every check, or `503` naming each failing one.
fn ready_answer(checks: &[Check]) -> HttpResponse {
    let statuses: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .map(|(name, failed)| (name.to_string(), failed.as_deref().unwrap_or("ok").into()))
        .collect();
    let failing: Vec<&Check> = checks.iter().filter(|(_, f)| f.is_some()).collect();
    if failing.is_empty() {
        return HttpResponse::Ok().json(serde_json::json!({
            "status": "ready",
            "checks": statuses,
        }));
    }
    let detail = failing
        .iter()
        .map(|(name, why)| format!("{name}: {}", why.as_deref().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("; ");
    let names = failing
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(",");
    HttpResponse::ServiceUnavailable()
        .content_type("application/problem+json")
        .json(serde_json::json!({
            "title": "not ready",
            "status": 503,
            "detail": detail,
            "field": names,
            "checks": statuses,
        }))
}

/// Prometheus metrics (text format 0.0.4). Needs
/// `Authorization: Bearer <scrape token>` when the coordinator runs with
/// `--metrics-token-file`; open with `--metrics-public`; otherwise `403`
/// saying how to enable it. Never an API key.
#[utoipa::path(operation_id = "metrics", tag = "health", responses(
    (status = 200, description = "the metrics, Prometheus text format", content_type = "text/plain"),
    (status = 401, description = "no scrape token", body = drover_shared::api::Problem),
    (status = 403, description = "a wrong scrape token, or /metrics not enabled", body = drover_shared::api::Problem),
))]
#[get("/metrics")]
pub async fn metrics(
    req: HttpRequest,
    api: web::Data<Api>,
    access: Option<web::Data<MetricsAccess>>,
) -> HttpResponse {
    let access = access.map_or(MetricsAccess::Closed, |a| a.get_ref().clone());
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if let Err((status, why)) = access.check(header) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        let mut r = problem(
            status,
            "metrics not readable",
            why.to_string(),
            Some("authorization"),
        );
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer realm=\"metrics\""),
            );
        }
        return r;
    }
    let load = match api.sched.send(crate::actors::Summarize).await {
        Ok(load) => load,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "scheduler unavailable",
                e.to_string(),
                None,
            )
        }
    };
    match crate::metrics::render(&load) {
        Ok(text) => HttpResponse::Ok()
            .content_type(crate::metrics::CONTENT_TYPE)
            .body(text),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics not encoded",
            e.to_string(),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: HttpResponse) -> (u16, serde_json::Value) {
        let status = r.status().as_u16();
        let bytes = actix_web::body::to_bytes(r.into_body()).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[actix_web::test]
    async fn readiness_names_every_failing_check() {
        let (status, doc) = body(ready_answer(&[
            ("scheduler", None),
            ("journal", None),
            ("quic_endpoint", Some("down".into())),
            ("artifact_store", Some("/x is not writable".into())),
        ]))
        .await;
        assert_eq!(status, 503);
        assert_eq!(
            doc["detail"],
            "quic_endpoint: down; artifact_store: /x is not writable"
        );
        assert_eq!(doc["field"], "quic_endpoint,artifact_store");
        assert_eq!(doc["checks"]["journal"], "ok");

        let (status, doc) = body(ready_answer(&[("scheduler", None), ("journal", None)])).await;
        assert_eq!(status, 200);
        assert_eq!(doc["status"], "ready");
        assert_eq!(doc["checks"]["scheduler"], "ok");
    }
}

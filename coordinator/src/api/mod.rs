//! The REST API under `/v1` (actix-web).
//!
//! - Closed by default: the gate ([`crate::auth::http::gate`]) lets a
//!   request through only with a valid key within its rate limit; only
//!   health, readiness, the OpenAPI document and signed download links are
//!   public.
//! - One error format: every error is an RFC 9457 problem document
//!   ([`problem::Problem`]) naming the field and the limit; unknown paths are
//!   404, a known path with another method 405 with `Allow`.
//! - Described by itself: the routes are listed once, in [`routes!`], which
//!   both registers them and puts them in the OpenAPI 3.1 document served
//!   at `/v1/openapi.json` (with a page at `/v1/docs`).
//! - Every handler talks to the scheduler actor only; none decides
//!   anything the core decides.

pub mod admin;
pub mod backup;
pub mod events;
pub mod fleet;
pub mod health;
pub mod jobs;
pub mod links;
pub mod logs;
pub mod pools;
pub mod problem;
pub mod rpc;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{get, web, HttpRequest, HttpResponse};
use utoipa::OpenApi as _;

use crate::actors::Scheduler;
use crate::auth::http::Gate;
use crate::store::ArtifactStore;
use links::Links;
pub use problem::{ApiResult, Problem};

/// What every handler reaches.
#[derive(Clone)]
pub struct Api {
    /// The scheduler actor.
    pub sched: Addr<Scheduler>,
    /// Keys and the rate limits.
    pub gate: Gate,
    /// Signs download links.
    pub links: Links,
    /// The artifact store (outputs and their posters).
    pub store: ArtifactStore,
    /// The event stream.
    pub events: crate::events::EventBus,
    /// Open event streams.
    pub streams: events::Streams,
    /// Webhook deliveries.
    pub hooks: crate::webhook::Webhooks,
    /// Live node connections, to cut off a revoked node.
    pub connections: crate::quic::Connections,
    /// SHA-256 of the coordinator's certificate, for join tokens.
    pub cert_sha256: String,
    /// The QUIC address join tokens send nodes to.
    pub quic_advertise: String,
    /// The last readiness result; its lock makes `/readyz`'s checks
    /// single-flight.
    pub ready: health::ReadyCache,
}

/// Largest JSON body of any request but a job spec (which has its own
/// limit, [`drover_shared::spec::MAX_SPEC_BYTES`]).
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// Registers the routes and builds the OpenAPI document from one list.
macro_rules! routes {
    ($($handler:path),* $(,)?) => {
        /// The OpenAPI document of every route.
        #[derive(utoipa::OpenApi)]
        #[openapi(
            info(
                title = "Drover",
                description = "The REST API of Drover's coordinator. Every route but health, readiness, this document and signed download links needs `Authorization: Bearer <API key>`. Errors are RFC 9457 problem documents.",
            ),
            paths($($handler),*),
            modifiers(&BearerAuth),
            security(("bearer" = [])),
        )]
        pub struct ApiDoc;

        fn register(cfg: &mut web::ServiceConfig) {
            $(cfg.service($handler);)*
        }
    };
}

routes!(
    health::healthz,
    health::readyz,
    health::metrics,
    openapi_json,
    docs,
    jobs::submit,
    jobs::list,
    jobs::get,
    jobs::cancel,
    jobs::cancel_post,
    jobs::retry,
    jobs::pause,
    jobs::resume,
    jobs::update,
    jobs::chunks,
    jobs::artifacts,
    jobs::output,
    jobs::download,
    jobs::webhooks,
    logs::job_logs,
    logs::chunk_log,
    events::events,
    events::stream_link,
    admin::list_nodes,
    fleet::fleet,
    admin::get_node,
    admin::drain_node,
    admin::undrain_node,
    admin::clear_quarantine,
    admin::set_tags,
    admin::list_keys,
    admin::create_key,
    admin::revoke_key,
    admin::list_tokens,
    admin::create_token,
    admin::revoke_token,
    admin::list_identities,
    admin::revoke_identity,
    backup::backup,
    pools::list_pools,
    pools::get_pool,
    pools::pool_decisions,
    pools::preempt_node,
);

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: drv_<id>_<secret>"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document, public routes marked as needing no key.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for (path, item) in doc.paths.paths.iter_mut() {
        if !crate::auth::http::is_public(&path.replace("{job}", "1").replace("{name}", "x")) {
            continue;
        }
        for op in operations_mut(item) {
            op.security = Some(vec![
                utoipa::openapi::security::SecurityRequirement::default(),
            ]);
        }
    }
    doc
}

fn operations_mut(
    item: &mut utoipa::openapi::path::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Every documented route as (method, path template), for 405 answers and
/// the tests.
pub fn documented_routes() -> Vec<(String, String)> {
    let doc = ApiDoc::openapi();
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (m, op) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ] {
            if op.is_some() {
                out.push((m.to_string(), path.clone()));
            }
        }
    }
    out
}

/// Whether a concrete path matches a template with `{param}` segments.
fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

/// Unmatched requests: 405 with `Allow` for a known path, else 404.
async fn fallback(req: HttpRequest) -> HttpResponse {
    // Built once: the document does not change while the process runs.
    static ROUTES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    let mut allowed: Vec<String> = ROUTES
        .get_or_init(documented_routes)
        .iter()
        .filter(|(_, t)| template_matches(t, req.path()))
        .map(|(m, _)| m.clone())
        .collect();
    if allowed.is_empty() {
        return problem::problem(
            StatusCode::NOT_FOUND,
            "no such route",
            format!(
                "{} {} is not part of this API; see /v1/openapi.json",
                req.method(),
                req.path()
            ),
            None,
        );
    }
    allowed.sort();
    allowed.dedup();
    let mut r = problem::problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
        format!(
            "{} does not take {}; it takes {}",
            req.path(),
            req.method(),
            allowed.join(", ")
        ),
        Some("method"),
    );
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&allowed.join(", ")) {
        r.headers_mut().insert(actix_web::http::header::ALLOW, v);
    }
    r
}

/// Routes, error formats and the gate.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_JSON_BYTES)
            .error_handler(|e, _| json_error(e).into()),
    )
    .app_data(
        web::PathConfig::default().error_handler(|e, _| {
            Problem::bad_request("invalid path", e.to_string(), "path").into()
        }),
    )
    .app_data(
        web::QueryConfig::default().error_handler(|e, _| {
            Problem::bad_request("invalid query", e.to_string(), "query").into()
        }),
    );
    register(cfg);
    cfg.default_service(web::to(fallback));
}

fn json_error(e: actix_web::error::JsonPayloadError) -> Problem {
    use actix_web::error::JsonPayloadError as E;
    match e {
        E::OverflowKnownLength { length, limit } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            format!("{length} bytes; the limit is {limit} bytes"),
            Some("body"),
        ),
        E::Overflow { limit } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            format!("the limit is {limit} bytes"),
            Some("body"),
        ),
        E::ContentType => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported media type",
            "this endpoint takes application/json".into(),
            Some("content-type"),
        ),
        E::Deserialize(d) => Problem::unprocessable("invalid request body", d.to_string(), "body"),
        other => Problem::bad_request("invalid request body", other.to_string(), "body"),
    }
}

/// The gate's middleware, for `App::wrap`.
pub use crate::auth::http::gate;

/// This document.
#[utoipa::path(operation_id = "openapi_document", tag = "health", responses((status = 200, description = "the OpenAPI 3.1 document")))]
#[get("/v1/openapi.json")]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(openapi())
}

/// A browsable page of the API, rendered from the document (no scripts).
#[utoipa::path(operation_id = "docs_page", tag = "health", responses((status = 200, description = "HTML")))]
#[get("/v1/docs")]
async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(docs_page(&openapi()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn docs_page(doc: &utoipa::openapi::OpenApi) -> String {
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Drover API</title>\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}\
         code{background:#f3f3f3;padding:0 .2em}.m{display:inline-block;width:5em;font-weight:bold}\
         section{border-top:1px solid #ddd;padding:.5em 0}</style></head><body>",
    );
    html.push_str(&format!(
        "<h1>{}</h1><p>{}</p><p>The machine-readable document: <a href=\"/v1/openapi.json\">/v1/openapi.json</a> (OpenAPI 3.1).</p>",
        esc(&doc.info.title),
        esc(doc.info.description.as_deref().unwrap_or(""))
    ));
    for (path, item) in &doc.paths.paths {
        for (m, op) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ] {
            let Some(op) = op else { continue };
            html.push_str(&format!(
                "<section><span class=\"m\">{m}</span><code>{}</code><p>{}</p>",
                esc(path),
                esc(op
                    .description
                    .as_deref()
                    .or(op.summary.as_deref())
                    .unwrap_or(""))
            ));
            if let Some(params) = &op.parameters {
                html.push_str("<ul>");
                for p in params {
                    html.push_str(&format!(
                        "<li><code>{}</code> ({}) {}</li>",
                        esc(&p.name),
                        serde_json::to_value(&p.parameter_in)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        esc(p.description.as_deref().unwrap_or(""))
                    ));
                }
                html.push_str("</ul>");
            }
            let codes: Vec<&String> = op.responses.responses.keys().collect();
            html.push_str(&format!(
                "<p>Responses: {}</p></section>",
                esc(&codes
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
            ));
        }
    }
    html.push_str("</body></html>");
    html
}

/// Parses a job id path segment.
pub fn parse_id(raw: &str) -> Result<u64, Problem> {
    raw.parse::<u64>().map_err(|_| {
        Problem::bad_request(
            "invalid job id",
            format!("{raw:?} is not a job id (a positive integer)"),
            "id",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_concrete_paths_segment_by_segment() {
        assert!(template_matches("/v1/jobs/{id}", "/v1/jobs/12"));
        assert!(template_matches("/v1/jobs/{id}/retry", "/v1/jobs/x/retry"));
        assert!(!template_matches("/v1/jobs/{id}", "/v1/jobs/12/retry"));
        assert!(!template_matches("/v1/jobs/{id}", "/v1/jobs/"));
        assert!(!template_matches("/v1/nodes", "/v1/jobs"));
    }

    #[test]
    fn the_document_lists_every_route_once_and_marks_the_public_ones() {
        let routes = documented_routes();
        let mut seen = std::collections::HashSet::new();
        for r in &routes {
            assert!(seen.insert(r.clone()), "{r:?} twice");
        }
        assert!(routes.contains(&("POST".into(), "/v1/jobs".into())));
        let doc = openapi();
        let json = serde_json::to_value(&doc).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
        let health = &json["paths"]["/healthz"]["get"]["security"];
        assert_eq!(health, &serde_json::json!([{}]), "public: no key needed");
        assert!(json["paths"]["/v1/jobs"]["post"]["security"].is_null());
        assert!(docs_page(&doc).contains("/v1/jobs/{id}/retry"));
    }
}

//! The REST API's front gate: every request but the public ones presents
//! a key (`Authorization: Bearer <key>`), passes its key's rate limit, and
//! reaches its handler with the key's [`Principal`] in the request's
//! extensions. Closed by default: a route is public only if it is listed in
//! [`is_public`].

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use drover_shared::api::Role;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::{Auth, AuthError, Principal};
use crate::api::problem::{problem, Problem};

/// Paths that answer without a key: health, readiness, the API's own
/// description, signed download links (the signature is the key), and
/// `/metrics`, which checks its own scrape token instead.
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.json" | "/v1/docs"
    ) || path.starts_with("/v1/downloads/")
}

/// The gate's state, shared by every worker.
#[derive(Clone)]
pub struct Gate {
    auth: Auth,
    limits: Arc<Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>>,
    /// Checks signed event-stream links (a browser's `EventSource` sends
    /// no header).
    links: Option<crate::api::links::Links>,
}

/// What a signed event-stream link carries.
#[derive(Debug, serde::Deserialize)]
struct SignedStream {
    key: Option<String>,
    expires: Option<u64>,
    sig: Option<String>,
    job: Option<u64>,
    kinds: Option<String>,
}

impl Gate {
    /// A gate over `auth`'s keys.
    pub fn new(auth: Auth) -> Gate {
        Gate {
            auth,
            limits: Default::default(),
            links: None,
        }
    }

    /// The gate, also letting signed event-stream links in.
    pub fn with_links(mut self, links: crate::api::links::Links) -> Gate {
        self.links = Some(links);
        self
    }

    /// The principal of a signed `/v1/events` link, if the request is one.
    fn signed_stream(&self, req: &ServiceRequest) -> Option<Result<Principal, Problem>> {
        if req.path() != "/v1/events" {
            return None;
        }
        let q = web::Query::<SignedStream>::from_query(req.query_string()).ok()?;
        let sig = q.sig.as_deref()?;
        let links = self.links.as_ref()?;
        let key = q.key.as_deref().unwrap_or_default();
        let checked = links
            .check_stream(
                key,
                q.job,
                q.kinds.as_deref().unwrap_or_default(),
                q.expires.unwrap_or(0),
                sig,
            )
            .and_then(|()| {
                self.auth.principal_of(key).map_err(|e| {
                    Problem::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        e.to_string(),
                        Some("key"),
                    )
                })
            });
        Some(checked)
    }

    /// The key store.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Takes one request from `p`'s bucket; `Err(seconds)` to wait when it
    /// is empty.
    pub fn take(&self, p: &Principal) -> Result<(), u64> {
        let limiter = {
            let mut map = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(p.key_id.clone())
                .or_insert_with(|| {
                    let rate = NonZeroU32::new(p.rate_per_s.max(1)).unwrap_or(NonZeroU32::MIN);
                    let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
                    Arc::new(RateLimiter::direct(
                        Quota::per_second(rate).allow_burst(burst),
                    ))
                })
                .clone()
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// The bearer token of a request, if any (`Authorization: Bearer <key>`).
fn presented(req: &ServiceRequest) -> Option<String> {
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, rest) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_string())
}

fn unauthorized(e: &AuthError) -> HttpResponse {
    let mut r = problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        e.to_string(),
        Some("authorization"),
    );
    r.headers_mut().insert(
        actix_web::http::header::WWW_AUTHENTICATE,
        actix_web::http::header::HeaderValue::from_static("Bearer realm=\"drover\""),
    );
    r
}

/// The middleware (`middleware::from_fn(gate)`).
pub async fn gate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if is_public(req.path()) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let Some(gate) = req.app_data::<web::Data<Gate>>().cloned() else {
        // Misconfigured server: refuse rather than serve unauthenticated.
        let r = problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no key store",
            "the API has no key store configured".into(),
            None,
        );
        return Ok(req.into_response(r).map_into_right_body());
    };
    let principal = match gate.signed_stream(&req) {
        Some(Ok(p)) => p,
        Some(Err(p)) => return Ok(req.into_response(p.error_response()).map_into_right_body()),
        None => match presented(&req)
            .ok_or(AuthError::Missing)
            .and_then(|k| gate.auth.authenticate(&k))
        {
            Ok(p) => p,
            Err(e) => return Ok(req.into_response(unauthorized(&e)).map_into_right_body()),
        },
    };
    if let Err(wait) = gate.take(&principal) {
        let r = Problem::too_many(
            format!(
                "key {} is limited to {} requests per second (burst {}); retry in {wait} s",
                principal.key_id,
                principal.rate_per_s,
                principal.rate_per_s.saturating_mul(2)
            ),
            "rate_per_s",
            wait,
        )
        .error_response();
        return Ok(req.into_response(r).map_into_right_body());
    }
    req.extensions_mut().insert(principal);
    Ok(next.call(req).await?.map_into_left_body())
}

/// The caller of a handler: the principal the gate found. Extracting it
/// from a request that did not pass the gate is a 401, never a pass.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl Caller {
    /// 403 unless its role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), Problem> {
        if self.is_at_least(role) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "key {} has role {:?}; this needs {:?} or above",
                    self.key_id, self.role, role
                ),
                Some("authorization"),
            ))
        }
    }

    /// 403 unless it sees `project`.
    pub fn require_project(&self, project: &str) -> Result<(), Problem> {
        if self.sees(project) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "key {} is scoped to project {:?}, not {project:?}",
                    self.key_id,
                    self.project.as_deref().unwrap_or_default()
                ),
                Some("project"),
            ))
        }
    }
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = std::future::Ready<Result<Caller, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(principal(req))
    }
}

/// A caller whose role is admin, checked before the request's body is
/// read (so a viewer gets 403, not a complaint about its body).
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Caller);

/// A caller whose role is submitter or admin, checked before the body.
#[derive(Debug, Clone)]
pub struct SubmitterCaller(pub Caller);

fn with_role(req: &HttpRequest, role: Role) -> Result<Caller, Problem> {
    let c = principal(req)?;
    c.require(role)?;
    Ok(c)
}

fn principal(req: &HttpRequest) -> Result<Caller, Problem> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .map(Caller)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                AuthError::Missing.to_string(),
                Some("authorization"),
            )
        })
}

impl FromRequest for AdminCaller {
    type Error = Problem;
    type Future = std::future::Ready<Result<AdminCaller, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(with_role(req, Role::Admin).map(AdminCaller))
    }
}

impl FromRequest for SubmitterCaller {
    type Error = Problem;
    type Future = std::future::Ready<Result<SubmitterCaller, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(with_role(req, Role::Submitter).map(SubmitterCaller))
    }
}

//! Nodes (list, read, drain, undrain, clear quarantine) and API keys.

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, web, HttpResponse};
use drover_shared::api::{KeyCreated, KeyView, NodeView, Problem as ProblemDoc, Role};
use serde::Deserialize;

use super::{Api, ApiResult, Problem};
use crate::actors::{ClearOutcome, ClearQuarantine, DrainNode, ListNodes};
use crate::auth::http::Caller;
use crate::auth::NewKey;

/// `text` percent-encoded for a URL path segment or query value: anything
/// but unreserved characters.
pub fn percent(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn nodes(api: &Api) -> ApiResult<Vec<NodeView>> {
    api.sched
        .send(ListNodes)
        .await
        .map_err(Problem::unavailable)
}

fn no_node(name: &str) -> Problem {
    Problem::not_found(
        "no such node",
        format!("no node named {name:?} is known"),
        "name",
    )
}

/// Every node the coordinator knows.
#[utoipa::path(tag = "nodes", responses((status = 200, body = Vec<NodeView>), (status = 401, body = ProblemDoc)))]
#[get("/v1/nodes")]
pub async fn list_nodes(
    _caller: Caller,
    api: web::Data<Api>,
) -> ApiResult<web::Json<Vec<NodeView>>> {
    Ok(web::Json(nodes(&api).await?))
}

/// One node.
#[utoipa::path(
    tag = "nodes",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = NodeView), (status = 404, body = ProblemDoc))
)]
#[get("/v1/nodes/{name}")]
pub async fn get_node(
    _caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<NodeView>> {
    let name = path.into_inner();
    nodes(&api)
        .await?
        .into_iter()
        .find(|n| n.name == name)
        .map(web::Json)
        .ok_or_else(|| no_node(&name))
}

/// Query of a drain.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DrainQuery {
    /// Hand back at once the frames the node has not rendered, instead of
    /// letting its chunks finish.
    #[serde(default)]
    now: bool,
}

async fn node_admin(name: String, drain: Option<bool>, api: &Api) -> ApiResult {
    match api.sched.send(DrainNode { name, drain }).await {
        Ok(Ok(node)) => Ok(HttpResponse::Ok().json(node)),
        Ok(Err((404, why))) if why.contains("remembered") => Ok(HttpResponse::Accepted()
            .json(serde_json::json!({ "status": "remembered", "detail": why }))),
        Ok(Err((status, why))) => Err(Problem::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND),
            "no such node",
            why,
            Some("name"),
        )),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

/// Drain a node: it takes no new work; its chunks finish, or with
/// `now=true` what it has not rendered goes back at once. 202 when the
/// node is known but not connected (remembered for when it is).
#[utoipa::path(
    tag = "nodes",
    params(("name" = String, Path, description = "Node name"), DrainQuery),
    responses((status = 200, body = NodeView), (status = 202, description = "remembered"), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc))
)]
#[post("/v1/nodes/{name}/drain")]
pub async fn drain_node(
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<DrainQuery>,
    api: web::Data<Api>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    node_admin(path.into_inner(), Some(q.now), &api).await
}

/// Return a drained node to work.
#[utoipa::path(
    tag = "nodes",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = NodeView), (status = 202, description = "remembered"), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc))
)]
#[post("/v1/nodes/{name}/undrain")]
pub async fn undrain_node(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    node_admin(path.into_inner(), None, &api).await
}

/// Let a quarantined node take work again.
#[utoipa::path(
    tag = "nodes",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = NodeView), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc, description = "not quarantined"))
)]
#[post("/v1/nodes/{name}/clear-quarantine")]
pub async fn clear_quarantine(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<NodeView>> {
    caller.require(Role::Admin)?;
    let name = path.into_inner();
    match api.sched.send(ClearQuarantine(name.clone())).await {
        Ok(ClearOutcome::Cleared(node)) => Ok(web::Json(node)),
        Ok(ClearOutcome::NotQuarantined(_)) => Err(Problem::conflict(
            "node not quarantined",
            format!("node {name:?} is not quarantined; nothing to clear"),
            "name",
        )),
        Ok(ClearOutcome::NotFound) => Err(no_node(&name)),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

/// Every API key, revoked ones included (never their secrets).
#[utoipa::path(tag = "keys", responses((status = 200, body = Vec<KeyView>), (status = 403, body = ProblemDoc)))]
#[get("/v1/keys")]
pub async fn list_keys(caller: Caller, api: web::Data<Api>) -> ApiResult<web::Json<Vec<KeyView>>> {
    caller.require(Role::Admin)?;
    Ok(web::Json(
        api.gate.auth().keys().iter().map(|k| k.view()).collect(),
    ))
}

/// Create a key. Its secret is in this answer only: it is stored hashed.
#[utoipa::path(
    tag = "keys",
    request_body = NewKey,
    responses((status = 201, body = KeyCreated), (status = 403, body = ProblemDoc), (status = 422, body = ProblemDoc))
)]
#[post("/v1/keys")]
pub async fn create_key(body: web::Json<NewKey>, caller: Caller, api: web::Data<Api>) -> ApiResult {
    caller.require(Role::Admin)?;
    body.validate()
        .map_err(|e| Problem::unprocessable("invalid key", e.to_string(), &e.field))?;
    let auth = api.gate.auth().clone();
    let new = body.into_inner();
    let (record, secret) = web::block(move || auth.create_key(&new))
        .await
        .map_err(|e| Problem::internal("key not created", e.to_string()))?
        .map_err(|e| Problem::unprocessable("key not created", format!("{e:#}"), "name"))?;
    Ok(HttpResponse::Created().json(KeyCreated {
        key: record.view(),
        secret,
    }))
}

/// Revoke a key at once; requests with it get 401 from now on.
#[utoipa::path(
    tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, body = KeyView), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc))
)]
#[delete("/v1/keys/{id}")]
pub async fn revoke_key(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<KeyView>> {
    caller.require(Role::Admin)?;
    let id = path.into_inner();
    let auth = api.gate.auth().clone();
    let id2 = id.clone();
    match web::block(move || auth.revoke_key(&id2)).await {
        Ok(Ok(Some(k))) => Ok(web::Json(k.view())),
        Ok(Ok(None)) => Err(Problem::not_found(
            "no such key",
            format!("no key has id {id:?}"),
            "id",
        )),
        Ok(Err(e)) => Err(Problem::internal("key not revoked", format!("{e:#}"))),
        Err(e) => Err(Problem::internal("key not revoked", e.to_string())),
    }
}

//! Nodes (list, read, drain, undrain, clear quarantine) and API keys.

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, put, web, HttpResponse};
use drover_shared::api::{
    IdentityView, JoinTokenCreated, JoinTokenView, KeyCreated, KeyView, NewJoinToken, NodeView,
    Problem as ProblemDoc, Role,
};
use serde::Deserialize;

use super::{Api, ApiResult, Problem};
use crate::actors::{ClearOutcome, ClearQuarantine, DrainNode, ListNodes, SetNodeTags};
use crate::auth::http::{AdminCaller, Caller};
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
#[utoipa::path(operation_id = "list_nodes", tag = "nodes", responses((status = 200, body = Vec<NodeView>), (status = 401, body = ProblemDoc)))]
#[get("/v1/nodes")]
pub async fn list_nodes(
    _caller: Caller,
    api: web::Data<Api>,
) -> ApiResult<web::Json<Vec<NodeView>>> {
    Ok(web::Json(nodes(&api).await?))
}

/// One node.
#[utoipa::path(operation_id = "get_node", 
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
#[utoipa::path(operation_id = "drain_node", 
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
#[utoipa::path(operation_id = "undrain_node", 
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
#[utoipa::path(operation_id = "clear_quarantine", 
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
#[utoipa::path(operation_id = "list_keys", tag = "keys", responses((status = 200, body = Vec<KeyView>), (status = 403, body = ProblemDoc)))]
#[get("/v1/keys")]
pub async fn list_keys(caller: Caller, api: web::Data<Api>) -> ApiResult<web::Json<Vec<KeyView>>> {
    caller.require(Role::Admin)?;
    Ok(web::Json(
        api.gate.auth().keys().iter().map(|k| k.view()).collect(),
    ))
}

/// Create a key. Its secret is in this answer only: it is stored hashed.
#[utoipa::path(operation_id = "create_key", 
    tag = "keys",
    request_body = NewKey,
    responses((status = 201, body = KeyCreated), (status = 403, body = ProblemDoc), (status = 422, body = ProblemDoc))
)]
#[post("/v1/keys")]
pub async fn create_key(
    _admin: AdminCaller,
    body: web::Json<NewKey>,
    api: web::Data<Api>,
) -> ApiResult {
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
#[utoipa::path(operation_id = "revoke_key", 
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
    let k = revoke_with(&api, "key", path.into_inner(), |a, id| a.revoke_key(id)).await?;
    Ok(web::Json(k.view()))
}

/// Runs a revocation on the blocking pool: the revoked record, or 404
/// naming `what` and `id`, or 500.
async fn revoke_with<T: Send + 'static>(
    api: &Api,
    what: &str,
    id: String,
    revoke: impl FnOnce(&crate::auth::Auth, &str) -> anyhow::Result<Option<T>> + Send + 'static,
) -> ApiResult<T> {
    let auth = api.gate.auth().clone();
    let id2 = id.clone();
    match web::block(move || revoke(&auth, &id2)).await {
        Ok(Ok(Some(t))) => Ok(t),
        Ok(Ok(None)) => Err(Problem::not_found(
            &format!("no such {what}"),
            format!("no {what} has id {id:?}"),
            "id",
        )),
        Ok(Err(e)) => Err(Problem::internal(
            &format!("{what} not revoked"),
            format!("{e:#}"),
        )),
        Err(e) => Err(Problem::internal(
            &format!("{what} not revoked"),
            e.to_string(),
        )),
    }
}

/// Every join token (never their secrets).
#[utoipa::path(operation_id = "list_tokens", tag = "admission", responses((status = 200, body = Vec<JoinTokenView>), (status = 403, body = ProblemDoc)))]
#[get("/v1/join-tokens")]
pub async fn list_tokens(
    caller: Caller,
    api: web::Data<Api>,
) -> ApiResult<web::Json<Vec<JoinTokenView>>> {
    caller.require(Role::Admin)?;
    let auth = api.gate.auth();
    Ok(web::Json(
        auth.tokens().iter().map(|t| auth.token_view(t)).collect(),
    ))
}

/// Create a join token for new nodes: `drover node --join TOKEN` is all a
/// node needs (the token carries the coordinator's address and certificate
/// fingerprint). Shown once; stored hashed.
#[utoipa::path(operation_id = "create_token", 
    tag = "admission",
    request_body = NewJoinToken,
    responses((status = 201, body = JoinTokenCreated), (status = 403, body = ProblemDoc), (status = 422, body = ProblemDoc))
)]
#[post("/v1/join-tokens")]
pub async fn create_token(
    _admin: AdminCaller,
    body: web::Json<NewJoinToken>,
    api: web::Data<Api>,
) -> ApiResult {
    let auth = api.gate.auth().clone();
    let new = body.into_inner();
    let (fp, addr) = (api.cert_sha256.clone(), api.quic_advertise.clone());
    let (record, secret) = web::block(move || auth.create_token(&new, &fp, &addr))
        .await
        .map_err(|e| Problem::internal("token not created", e.to_string()))?
        .map_err(|e| Problem::unprocessable("invalid join token", e.to_string(), &e.field))?;
    Ok(HttpResponse::Created().json(JoinTokenCreated {
        token: api.gate.auth().token_view(&record),
        secret,
    }))
}

/// Revoke a join token: no node joins with it any more. Nodes that joined
/// with it keep their identities (revoke those one by one).
#[utoipa::path(operation_id = "revoke_token", 
    tag = "admission",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 200, body = JoinTokenView), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc))
)]
#[delete("/v1/join-tokens/{id}")]
pub async fn revoke_token(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<JoinTokenView>> {
    caller.require(Role::Admin)?;
    let t = revoke_with(&api, "join token", path.into_inner(), |a, id| {
        a.revoke_token(id)
    })
    .await?;
    Ok(web::Json(api.gate.auth().token_view(&t)))
}

/// Every node identity (the certificates nodes joined with).
#[utoipa::path(operation_id = "list_identities", tag = "admission", responses((status = 200, body = Vec<IdentityView>), (status = 403, body = ProblemDoc)))]
#[get("/v1/identities")]
pub async fn list_identities(
    caller: Caller,
    api: web::Data<Api>,
) -> ApiResult<web::Json<Vec<IdentityView>>> {
    caller.require(Role::Admin)?;
    Ok(web::Json(
        api.gate
            .auth()
            .identities()
            .iter()
            .map(|i| i.view())
            .collect(),
    ))
}

/// Revoke a node's identity (by certificate fingerprint or node name): the
/// node is disconnected at once, its chunks go back to the queue, and it is
/// refused at every later handshake.
#[utoipa::path(operation_id = "revoke_identity", 
    tag = "admission",
    params(("id" = String, Path, description = "Certificate fingerprint, or the node name")),
    responses((status = 200, body = IdentityView), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc))
)]
#[delete("/v1/identities/{id}")]
pub async fn revoke_identity(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<IdentityView>> {
    caller.require(Role::Admin)?;
    let i = revoke_with(&api, "node identity", path.into_inner(), |a, id| {
        a.revoke_identity(id)
    })
    .await?;
    api.connections.kick(
        &i.name,
        drover_protocol::close_code::REVOKED,
        "this node's identity was revoked by an admin",
    );
    Ok(web::Json(i.view()))
}

/// Most tags an admin may set on a node.
pub const MAX_NODE_TAGS: usize = 16;

/// Set a node's tags, replacing what it reports itself (`{"tags": [...]}`),
/// or give it back its own (`{"tags": null}`). Routing follows at once:
/// chunks of jobs it can no longer run go back to the queue. Remembered
/// across restarts and reconnections; 202 when the node is known but not
/// connected.
#[utoipa::path(operation_id = "set_node_tags",
    tag = "nodes",
    params(("name" = String, Path, description = "Node name")),
    request_body = drover_shared::api::NodeTags,
    responses((status = 200, body = NodeView), (status = 202, description = "remembered"), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc), (status = 422, body = ProblemDoc))
)]
#[put("/v1/nodes/{name}/tags")]
pub async fn set_tags(
    _admin: AdminCaller,
    path: web::Path<String>,
    body: web::Json<drover_shared::api::NodeTags>,
    api: web::Data<Api>,
) -> ApiResult {
    let name = path.into_inner();
    let tags = body.into_inner().tags;
    if let Some(t) = &tags {
        if t.len() > MAX_NODE_TAGS {
            return Err(Problem::unprocessable(
                "invalid tags",
                format!("{} tags; the limit is {MAX_NODE_TAGS}", t.len()),
                "tags",
            ));
        }
        for (i, tag) in t.iter().enumerate() {
            let ok = !tag.is_empty()
                && tag.len() <= 64
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(Problem::unprocessable(
                    "invalid tags",
                    format!("{tag:?}: a tag is 1..=64 bytes of letters, digits, '-', '_', '.'"),
                    &format!("tags[{i}]"),
                ));
            }
        }
    }
    match api.sched.send(SetNodeTags { name, tags }).await {
        Ok(Ok(Some(node))) => Ok(HttpResponse::Ok().json(node)),
        Ok(Ok(None)) => Ok(HttpResponse::Accepted().json(
            serde_json::json!({ "status": "remembered", "detail": "the node is not connected; its tags apply when it is" }),
        )),
        Ok(Err((status, why))) => Err(Problem::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND),
            "no such node",
            why,
            Some("name"),
        )),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

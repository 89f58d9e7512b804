//! Auto-scaling pools (list, read, decisions) and preemption notices.

use actix_web::{get, post, web};
use drover_shared::api::{NodeView, PoolView, Problem as ProblemDoc, Role, ScaleDecisionView};
use serde::Deserialize;

use super::{Api, ApiResult, Problem};
use crate::actors::DrainNode;
use crate::auth::http::Caller;
use crate::autoscale::decisions::MAX_DECISIONS_PER_POOL;
use crate::autoscale::Pools;

fn no_pool(name: &str) -> Problem {
    Problem::not_found(
        "no such pool",
        format!("no pool named {name:?} is configured (coordinator --pools)"),
        "name",
    )
}

/// Every auto-scaling pool, in the pools file's order.
#[utoipa::path(operation_id = "list_pools", tag = "pools", responses((status = 200, body = Vec<PoolView>), (status = 401, body = ProblemDoc)))]
#[get("/v1/pools")]
pub async fn list_pools(_caller: Caller, pools: web::Data<Pools>) -> web::Json<Vec<PoolView>> {
    web::Json(pools.views())
}

/// One auto-scaling pool.
#[utoipa::path(operation_id = "get_pool",
    tag = "pools",
    params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, body = PoolView), (status = 404, body = ProblemDoc))
)]
#[get("/v1/pools/{name}")]
pub async fn get_pool(
    _caller: Caller,
    path: web::Path<String>,
    pools: web::Data<Pools>,
) -> ApiResult<web::Json<PoolView>> {
    let name = path.into_inner();
    pools
        .view(&name)
        .map(web::Json)
        .ok_or_else(|| no_pool(&name))
}

/// Query of a pool's decisions.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DecisionsQuery {
    /// Most decisions to return, newest first (1..=500, default 100).
    #[serde(default)]
    limit: Option<usize>,
}

/// A pool's scaling decisions, newest first, each with its reason and
/// outcome (the journal keeps the last 500 per pool).
#[utoipa::path(operation_id = "pool_decisions",
    tag = "pools",
    params(("name" = String, Path, description = "Pool name"), DecisionsQuery),
    responses((status = 200, body = Vec<ScaleDecisionView>), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc))
)]
#[get("/v1/pools/{name}/decisions")]
pub async fn pool_decisions(
    _caller: Caller,
    path: web::Path<String>,
    q: web::Query<DecisionsQuery>,
    pools: web::Data<Pools>,
) -> ApiResult<web::Json<Vec<ScaleDecisionView>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_DECISIONS_PER_POOL).contains(&limit) {
        return Err(Problem::bad_request(
            "bad limit",
            format!("limit {limit}; it must be 1..={MAX_DECISIONS_PER_POOL}"),
            "limit",
        ));
    }
    let name = path.into_inner();
    pools
        .decisions(&name, limit)
        .map(web::Json)
        .ok_or_else(|| no_pool(&name))
}

/// A preemption notice for a node (a spot instance about to go): it is
/// drained at once, and its running chunks are cut at the frame they are
/// on so their remaining frames wait for other nodes now. Segments it
/// already rendered still upload. Answers once durable.
#[utoipa::path(operation_id = "preempt_node",
    tag = "nodes",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = NodeView), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc))
)]
#[post("/v1/nodes/{name}/preempt")]
pub async fn preempt_node(
    caller: Caller,
    path: web::Path<String>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<NodeView>> {
    caller.require(Role::Admin)?;
    let name = path.into_inner();
    tracing::warn!(node = %name, "preemption notice from the API");
    match api
        .sched
        .send(DrainNode {
            name: name.clone(),
            drain: Some(true),
        })
        .await
    {
        Ok(Ok(node)) => Ok(web::Json(node)),
        Ok(Err((_, why))) => Err(Problem::not_found("no such node", why, "name")),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

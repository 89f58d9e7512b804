//! `GET /v1/fleet`: every node with its state and what it renders, and the
//! jobs that matter now with their rate and ETA, in one answer. `drover
//! top` reads it at start, after its event stream resets, and every second
//! or two for what is not an event (heartbeat ages, loads, speeds).

use actix_web::{get, web};
use drover_shared::api::{FleetView, Problem as ProblemDoc};

use super::{Api, ApiResult, Problem};
use crate::actors::Fleet;
use crate::auth::http::Caller;

/// The fleet: every node (state idle, busy, draining, lost or quarantined;
/// its current job and frame range; measured speed and current frames per
/// second; heartbeat age; CPU and memory load) and the jobs that matter now
/// (active ones by priority, then the latest ended ones; rate and ETA; the
/// nodes on each; the reason for its state). A key scoped to a project sees
/// its project's jobs and every node, as in `GET /v1/nodes`.
#[utoipa::path(operation_id = "fleet",
    tag = "nodes",
    responses((status = 200, body = FleetView), (status = 401, body = ProblemDoc))
)]
#[get("/v1/fleet")]
pub async fn fleet(caller: Caller, api: web::Data<Api>) -> ApiResult<web::Json<FleetView>> {
    let view = api
        .sched
        .send(Fleet {
            project: caller.project.clone(),
        })
        .await
        .map_err(Problem::unavailable)?;
    Ok(web::Json(view))
}

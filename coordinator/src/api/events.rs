//! `GET /v1/events`: the event stream as Server-Sent Events.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{get, web, HttpRequest, HttpResponse};
use drover_shared::api::Problem as ProblemDoc;
use serde::Deserialize;

use super::jobs::visible_job;
use super::{Api, ApiResult, Problem};
use crate::auth::http::Caller;
use crate::events::{ApiEvent, Batch, Cursor, EventBus};

/// Open event streams at most, over all keys.
pub const MAX_STREAMS_TOTAL: usize = 4_096;
/// Open event streams one key may hold.
pub const MAX_STREAMS_PER_KEY: usize = 64;
/// A comment line keeps idle connections (and proxies) open this often.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events read from the bus per wake-up.
const BATCH: usize = 256;

/// Counts open streams, per key and in all.
#[derive(Clone, Default)]
pub struct Streams {
    open: Arc<Mutex<(usize, HashMap<String, usize>)>>,
}

/// One open stream; closing it (drop) gives its place back.
pub struct StreamSlot {
    streams: Streams,
    key: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut g = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.key);
            }
        }
    }
}

impl Streams {
    /// Takes a place for `key`, or 429 naming the limit hit.
    pub fn open(&self, key: &str) -> Result<StreamSlot, Problem> {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= MAX_STREAMS_TOTAL {
            return Err(Problem::too_many(
                format!("{MAX_STREAMS_TOTAL} event streams are open, the coordinator's limit"),
                "streams",
                5,
            ));
        }
        let n = g.1.entry(key.to_string()).or_insert(0);
        if *n >= MAX_STREAMS_PER_KEY {
            return Err(Problem::too_many(
                format!("key {key} has {MAX_STREAMS_PER_KEY} event streams open, its limit"),
                "streams",
                5,
            ));
        }
        *n += 1;
        g.0 += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            key: key.to_string(),
        })
    }
}

/// Which events a stream carries.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events of this job.
    job: Option<u64>,
    /// Only these kinds, comma-separated; a prefix such as `job` or `node`
    /// takes every kind under it.
    kinds: Option<String>,
    /// Resume after this event id (as the `Last-Event-ID` header does,
    /// for clients that cannot set headers).
    last_event_id: Option<String>,
    /// A signed link's key id (see `GET /v1/events/link`). The link's
    /// three fields are checked by the gate, which opens the stream as
    /// that key.
    #[allow(dead_code)]
    key: Option<String>,
    /// A signed link's expiry, seconds since the Unix epoch.
    #[allow(dead_code)]
    expires: Option<u64>,
    /// A signed link's signature.
    #[allow(dead_code)]
    sig: Option<String>,
}

/// What a stream link is for.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LinkQuery {
    /// Only events of this job.
    job: Option<u64>,
    /// Only these kinds, comma-separated.
    kinds: Option<String>,
    /// Seconds the link may be opened (and reopened) for, 60..=86400
    /// (default 3600).
    ttl_s: Option<u64>,
}

/// A signed link to the event stream.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StreamLink {
    /// `/v1/events?...&sig=...`: opens the stream as the key that asked,
    /// with no header (for a browser's `EventSource`).
    pub url: String,
    /// It can be opened until then, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// A link to the event stream that needs no `Authorization` header, for a
/// browser's `EventSource` (which cannot send one): it opens the stream as
/// the calling key, with its filters, until it expires. Reconnecting
/// (with `Last-Event-ID`) works with the same link until then.
#[utoipa::path(operation_id = "event_stream_link",
    tag = "events",
    params(LinkQuery),
    responses((status = 200, body = StreamLink), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc))
)]
#[get("/v1/events/link")]
pub async fn stream_link(
    caller: Caller,
    q: web::Query<LinkQuery>,
    api: web::Data<Api>,
) -> ApiResult<web::Json<StreamLink>> {
    let q = q.into_inner();
    let ttl = q.ttl_s.unwrap_or(3_600);
    if !(60..=86_400).contains(&ttl) {
        return Err(Problem::bad_request(
            "invalid query",
            format!("ttl_s {ttl}; it must be 60..=86400"),
            "ttl_s",
        ));
    }
    if let Some(job) = q.job {
        visible_job(&api, &caller, job).await?;
    }
    let (url, expires_at) = api.links.sign_stream(
        &caller.key_id,
        q.job,
        q.kinds.as_deref().unwrap_or_default(),
        ttl,
    );
    Ok(web::Json(StreamLink { url, expires_at }))
}

struct Filter {
    job: Option<u64>,
    kinds: Vec<String>,
    project: Option<String>,
}

impl Filter {
    fn admits(&self, e: &ApiEvent) -> bool {
        if self.job.is_some() && e.job != self.job {
            return false;
        }
        if let (Some(mine), Some(theirs)) = (&self.project, &e.project) {
            if mine != theirs {
                return false;
            }
        }
        self.kinds.is_empty()
            || self.kinds.iter().any(|k| {
                e.kind == *k
                    || (e.kind.starts_with(k.as_str())
                        && e.kind.as_bytes().get(k.len()) == Some(&b'.'))
            })
    }
}

fn frame(e: &ApiEvent) -> Bytes {
    let data = serde_json::to_string(e).unwrap_or_default();
    Bytes::from(format!("id: {}\nevent: {}\ndata: {data}\n\n", e.id, e.kind))
}

fn reset_frame(bus_id: &str, seq: u64) -> Bytes {
    let inc = bus_id.split('.').next().unwrap_or("0");
    Bytes::from(format!(
        "id: {inc}.{seq}\nevent: reset\ndata: {{\"kind\":\"reset\",\"detail\":\"events were missed (the coordinator restarted, or this client fell behind): read the state again, then follow on\"}}\n\n"
    ))
}

struct State {
    bus: EventBus,
    rx: tokio::sync::watch::Receiver<u64>,
    cursor: Cursor,
    filter: Filter,
    out: VecDeque<Bytes>,
    _slot: StreamSlot,
}

/// Job and node changes as Server-Sent Events, in order, each with an id.
/// Reconnect with `Last-Event-ID` to get every event after it; a `reset`
/// event means some were missed (re-read the state). A key scoped to a
/// project sees its project's jobs and every node.
#[utoipa::path(operation_id = "follow_events", 
    tag = "events",
    params(EventQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "text/event-stream; each event's data is an ApiEvent", content_type = "text/event-stream", body = ApiEvent),
        (status = 404, body = ProblemDoc), (status = 429, body = ProblemDoc, description = "too many open streams"),
    )
)]
#[get("/v1/events")]
pub async fn events(
    caller: Caller,
    req: HttpRequest,
    q: web::Query<EventQuery>,
    api: web::Data<Api>,
) -> ApiResult {
    let q = q.into_inner();
    if let Some(job) = q.job {
        visible_job(&api, &caller, job).await?;
    }
    let slot = api.streams.open(&caller.key_id)?;
    let last = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(q.last_event_id);
    let bus = api.events.clone();
    let mut out = VecDeque::new();
    let cursor = match bus.resume(last.as_deref()) {
        Ok(c) => c,
        Err(c) => {
            out.push_back(reset_frame(&bus.last_id(), c.seq));
            c
        }
    };
    // Tells the client (and any proxy) the stream is open before the first
    // event, and how soon to reconnect.
    out.push_front(Bytes::from_static(b"retry: 2000\n: stream open\n\n"));
    let state = State {
        rx: bus.subscribe(),
        bus,
        cursor,
        filter: Filter {
            job: q.job,
            kinds: q
                .kinds
                .map(|k| {
                    k.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            project: caller.project.clone(),
        },
        out,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(b) = s.out.pop_front() {
                return Some((Ok::<_, actix_web::Error>(b), s));
            }
            match s.bus.read(s.cursor, BATCH) {
                Batch::Reset(c) => {
                    s.out.push_back(reset_frame(&s.bus.last_id(), c.seq));
                    s.cursor = c;
                }
                Batch::Events(evs) if !evs.is_empty() => {
                    for e in &evs {
                        if s.filter.admits(e) {
                            s.out.push_back(frame(e));
                        }
                    }
                    s.cursor.seq += evs.len() as u64;
                }
                Batch::Events(_) => {
                    // Nothing new: wait for a publish, or say we are alive.
                    match tokio::time::timeout(KEEPALIVE, s.rx.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return None,
                        Err(_) => s.out.push_back(Bytes::from_static(b": keepalive\n\n")),
                    }
                }
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream))
}

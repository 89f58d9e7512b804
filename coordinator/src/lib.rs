//! Drover's coordinator.
//!
//! # Layout
//! - [`sched`]: the sans-IO scheduler core (events in, commands out, clock
//!   injected). No tokio, no actix, no sled in there.
//! - [`journal`]: the sled journal; the only module that writes sled.
//! - [`store`]: the artifact store (segments and outputs on local disk).
//! - [`mux`]: joins encoded segments into the job's output by stream copy.
//! - [`actors`]: the actix scheduler actor and one session actor per node.
//! - [`quic`]: the quinn endpoint, TLS certificate, and per-connection tasks.
//! - [`api`]: the actix-web REST API under `/v1`, its OpenAPI document,
//!   signed download links and the event stream's SSE endpoint.
//! - [`auth`]: API keys (roles, projects, rate limits) and the gate every
//!   request passes.
//! - [`chunklog`]: each chunk attempt's executor log, as nodes ship it.
//! - [`events`]: the ordered, resumable stream of job and node changes.
//! - [`artifact`]: a finished job's files, their checksums and poster frame.
//! - [`webhook`]: signed, journaled, retried deliveries of job outcomes.
//! - [`backup`]: online backup of the journals, artifacts and secrets, and
//!   restore into a new data dir.
//! - [`autoscale`]: auto-scaling node pools: policy, providers, driver.
//! - [`metrics`]: Prometheus series for `/metrics` and the readiness checks.
//! - [`server`]: wires everything together for `drover coordinator`.
#![warn(missing_docs)]

pub mod actors;
pub mod api;
pub mod artifact;
pub mod auth;
pub mod autoscale;
pub mod backup;
pub mod chunklog;
pub mod events;
pub mod journal;
pub mod metrics;
pub mod mux;
pub mod quic;
pub mod sched;
pub mod server;
pub mod store;
pub mod webhook;

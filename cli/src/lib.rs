//! The library half of the `drover` binary: the REST client, job watching,
//! and the local-cluster launcher shared by `drover demo`, the benchmarks
//! and the end-to-end tests.
//!
//! # Layout
//! - [`client`]: blocking REST client, one typed method per route.
//! - [`commands`]: the client commands' flags and output (text or the
//!   API's JSON).
//! - [`events`]: the event stream (Server-Sent Events), resumed across
//!   dropped connections.
//! - [`download`]: artifacts by signed link, checked against their SHA-256.
//! - [`watch`]: progress display until a job ends, driven by its events.
//! - [`top`]: `drover top`, the fleet and its jobs live in a terminal.
//! - [`logs`]: `drover logs`, the executor log of each chunk of a job.
//! - [`pools`]: `drover pools` and `drover preempt`.
//! - [`backup`]: `drover backup` and `drover restore`.
//! - [`cluster`]: a coordinator and nodes as real processes on loopback.
//! - [`demo`]: `drover demo`.
//! - [`chaos`]: seeded process kills against a local farm, and the node-log
//!   ledger of frames rendered more than once (the chaos test and bench).
//! - [`media_check`]: decoded frame counts and per-frame PSNR against a
//!   reference video.
#![warn(missing_docs)]

pub mod backup;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod commands;
pub mod demo;
pub mod download;
pub mod events;
pub mod join;
pub mod logs;
pub mod media_check;
pub mod pools;
pub mod quic_client;
pub mod top;
pub mod watch;

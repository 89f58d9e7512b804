//! The library half of the `drover` binary: the REST client, job watching,
//! and the local-cluster launcher shared by `drover demo`, the benchmarks
//! and the end-to-end tests.
//!
//! # Layout
//! - [`client`]: blocking REST client.
//! - [`watch`]: progress display until a job ends.
//! - [`cluster`]: a coordinator and nodes as real processes on loopback.
//! - [`demo`]: `drover demo`.
//! - [`chaos`]: seeded process kills against a local farm, and the node-log
//!   ledger of frames rendered more than once (the chaos test and bench).
//! - [`media_check`]: decoded frame counts and per-frame PSNR against a
//!   reference video.
#![warn(missing_docs)]

pub mod chaos;
pub mod client;
pub mod cluster;
pub mod demo;
pub mod media_check;
pub mod watch;

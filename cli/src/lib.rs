//! The library half of the `drover` binary: the REST client, job watching,
//! and the local-cluster launcher shared by `drover demo`, the benchmarks
//! and the end-to-end tests.
//!
//! # Layout
//! - [`client`]: blocking REST client.
//! - [`watch`]: progress display until a job ends.
//! - [`cluster`]: a coordinator and nodes as real processes on loopback.
//! - [`demo`]: `drover demo`.
#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod demo;
pub mod watch;

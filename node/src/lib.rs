//! Drover's node agent.
//!
//! # Layout
//! - [`agent`]: connection, preamble and hello, heartbeats, assignments,
//!   shrinks, reconnect; the work and the spool outlive connections; the
//!   drain on SIGTERM.
//! - [`chunklog`]: each chunk attempt's executor log, bounded (head and
//!   tail), in pieces for the coordinator.
//! - [`spool`]: finished segments kept on disk, with a sidecar each, until
//!   the coordinator has them, across restarts.
//! - [`upload`]: one resumable upload exchange.
//! - [`tls`]: pinning the coordinator's certificate.
//! - [`probe`]: capabilities (sysinfo, wgpu adapters with vendor and VRAM,
//!   encoders that open) and the test aids that override them.
//! - [`exec`]: the executor thread: render and encode one chunk at a time,
//!   each over a frame window that a shrink can end early; the start-up
//!   calibration; the slowdown and fail-frame test aids.
//! - [`render`]: the wgpu executor (headless, GPU adapter or lavapipe).
//! - [`encode`]: the FFmpeg executor (RGBA frames to an H.264 segment).
#![warn(missing_docs)]

pub mod agent;
pub mod chunklog;
pub mod encode;
pub mod exec;
pub mod probe;
pub mod render;
pub mod spool;
pub mod tls;
pub mod upload;

//! Drover's node agent.
//!
//! # Layout
//! - [`agent`]: connection, hello, heartbeats, assignments, uploads, reconnect.
//! - [`tls`]: pinning the coordinator's certificate.
//! - [`probe`]: capabilities (sysinfo, wgpu adapters, encoders that open).
//! - [`exec`]: the executor thread: render and encode one chunk at a time.
//! - [`render`]: the wgpu executor (headless, GPU adapter or lavapipe).
//! - [`encode`]: the FFmpeg executor (RGBA frames to an H.264 segment).
#![warn(missing_docs)]

pub mod agent;
pub mod encode;
pub mod exec;
pub mod probe;
pub mod render;
pub mod tls;

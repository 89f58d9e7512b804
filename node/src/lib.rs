//! Drover's node agent.
//!
//! # Layout
//! - [`render`]: the wgpu executor (headless, GPU adapter or lavapipe).
//! - [`encode`]: the FFmpeg executor (RGBA frames to an H.264 segment).
#![warn(missing_docs)]

pub mod encode;
pub mod render;

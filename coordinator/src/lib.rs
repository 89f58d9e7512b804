//! Drover's coordinator.
//!
//! # Layout
//! - [`mux`]: joins encoded segments into the job's output by stream copy.
#![warn(missing_docs)]

pub mod mux;

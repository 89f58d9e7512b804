//! Domain types shared by Drover's coordinator, node agent and CLI. No async,
//! no I/O beyond parsing text handed in.
//!
//! # Layout
//! - [`spec`]: the job spec (TOML/JSON), its limits and validation.
//! - [`shader`]: the shader contract (uniforms, prelude) and naga validation.
//! - [`caps`]: node capabilities and requirement matching.
//! - [`api`]: REST response bodies.
//! - [`config`]: defaults every binary agrees on (ports, timeouts).
//! - [`fuzzing`]: the job spec's fuzzing entry point (a request body through
//!   what `POST /v1/jobs` does with it) and the per-thread peak-counting
//!   allocator the fuzz tests bound memory with.
#![warn(missing_docs)]

pub mod api;
pub mod caps;
pub mod config;
pub mod fuzzing;
pub mod join;
pub mod shader;
pub mod spec;

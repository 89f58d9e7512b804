//! Domain types shared by Drover's coordinator, node agent and CLI.
//!
//! # Layout
//! - [`shader`]: the shader contract (uniforms, prelude) and naga validation.
#![warn(missing_docs)]

pub mod shader;

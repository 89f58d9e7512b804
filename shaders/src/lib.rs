//! Drover's built-in WGSL shader library.
//!
//! Every shader here is a *fragment program* in Drover's shader contract (see
//! `drover_shared::shader`): it defines `fs_main`, reads the `drover` uniforms
//! (`resolution`, `time`, `frame`) and returns a colour. The renderer appends
//! the prelude that declares the uniforms and the full-screen vertex stage, so
//! line numbers in errors are the user's own.
//!
//! # Layout
//! - `wgsl/*.wgsl`: one file per shader, embedded at compile time.
//! - [`BUILTIN`]: the table the job spec's `render.shader = "name"` looks up.

/// One built-in shader: the name a job spec uses and its WGSL source.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Name used in a job spec (`render.shader = "plasma"`).
    pub name: &'static str,
    /// One line saying what it draws, for `--help` and the docs.
    pub summary: &'static str,
    /// WGSL fragment program in Drover's shader contract.
    pub source: &'static str,
}

/// The built-in shaders, in the order the docs list them.
pub const BUILTIN: &[Builtin] = &[
    Builtin {
        name: "plasma",
        summary: "smooth moving colour plasma (the demo's default)",
        source: include_str!("../wgsl/plasma.wgsl"),
    },
    Builtin {
        name: "rings",
        summary: "concentric rings that pulse outwards from the centre",
        source: include_str!("../wgsl/rings.wgsl"),
    },
    Builtin {
        name: "fractal",
        summary: "a slowly zooming, rotating Julia set",
        source: include_str!("../wgsl/fractal.wgsl"),
    },
];

/// Looks a built-in shader up by name.
pub fn get(name: &str) -> Option<&'static Builtin> {
    BUILTIN.iter().find(|b| b.name == name)
}

/// The names of all built-in shaders, for error messages.
pub fn names() -> Vec<&'static str> {
    BUILTIN.iter().map(|b| b.name).collect()
}

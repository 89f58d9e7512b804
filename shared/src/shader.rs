//! Drover's shader contract and its validation with naga.
//!
//! A job's shader is a WGSL *fragment program*: it defines
//! `@fragment fn fs_main(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32>`
//! and may read the uniforms `drover.resolution` (pixels, `vec2<f32>`),
//! `drover.time` (seconds, `f32`, `frame / fps`) and `drover.frame` (`u32`).
//! The renderer appends [`PRELUDE`] after the user's source (WGSL declarations
//! are order independent), so line and column numbers in naga's messages are
//! the user's own.

use thiserror::Error;

/// Name of the fragment entry point every shader must define.
pub const FRAGMENT_ENTRY: &str = "fs_main";
/// Name of the vertex entry point the prelude defines.
pub const VERTEX_ENTRY: &str = "drover_vs_main";
/// Largest shader source accepted, in bytes: shaders travel inside the job
/// record and every assignment, so they must stay small.
pub const MAX_SHADER_SOURCE_BYTES: usize = 64 * 1024;

/// Declarations appended to every user shader: the uniform block (16 bytes,
/// matching [`Uniforms`]) and a full-screen triangle vertex stage.
pub const PRELUDE: &str = r#"
// ---- Drover prelude (appended by the renderer) ----
struct DroverUniforms {
    resolution: vec2<f32>,
    time: f32,
    frame: u32,
}
@group(0) @binding(0) var<uniform> drover: DroverUniforms;

@vertex
fn drover_vs_main(@builtin(vertex_index) i: u32) -> @builtin(position) vec4<f32> {
    let x = f32((i << 1u) & 2u);
    let y = f32(i & 2u);
    return vec4<f32>(x * 2.0 - 1.0, 1.0 - y * 2.0, 0.0, 1.0);
}
"#;

/// The uniform block as the GPU sees it (std140-compatible, 16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Uniforms {
    /// Output size in pixels.
    pub resolution: [f32; 2],
    /// Seconds since frame 0: `frame / fps`.
    pub time: f32,
    /// The absolute frame number being rendered.
    pub frame: u32,
}

impl Uniforms {
    /// The uniforms for `frame` of a job at `fps` frames per second.
    pub fn for_frame(frame: u64, fps: u32, width: u32, height: u32) -> Self {
        Uniforms {
            resolution: [width as f32, height as f32],
            time: frame as f32 / fps.max(1) as f32,
            frame: frame as u32,
        }
    }

    /// The 16 bytes uploaded to the uniform buffer (little endian, as WGSL
    /// expects on every backend wgpu supports).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&self.resolution[0].to_le_bytes());
        out[4..8].copy_from_slice(&self.resolution[1].to_le_bytes());
        out[8..12].copy_from_slice(&self.time.to_le_bytes());
        out[12..16].copy_from_slice(&self.frame.to_le_bytes());
        out
    }
}

/// Why a shader was refused. Line and column are 1-based and refer to the
/// user's source.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ShaderError {
    /// The source is larger than [`MAX_SHADER_SOURCE_BYTES`].
    #[error("shader source is {bytes} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Size of the source sent.
        bytes: usize,
        /// [`MAX_SHADER_SOURCE_BYTES`].
        limit: usize,
    },
    /// naga could not parse the WGSL.
    #[error("{}", located("parse error", message, *line, *column))]
    Parse {
        /// naga's message.
        message: String,
        /// 1-based line in the user's source, when naga gave one.
        line: Option<u32>,
        /// 1-based column, when naga gave one.
        column: Option<u32>,
    },
    /// The WGSL parsed but does not validate (types, bindings, uniformity).
    #[error("{}", located("validation error", message, *line, *column))]
    Invalid {
        /// naga's message, with its chain of causes.
        message: String,
        /// 1-based line in the user's source, when naga gave one.
        line: Option<u32>,
        /// 1-based column, when naga gave one.
        column: Option<u32>,
    },
    /// The module has no `@fragment fn fs_main`.
    #[error("shader has no `@fragment fn {FRAGMENT_ENTRY}` entry point")]
    MissingEntryPoint,
    /// Nested or chained deeper than a compiler can take without running
    /// out of stack (the compiler recurses over expressions).
    #[error("{}", located("too complex", message, Some(*line), None))]
    TooComplex {
        /// What is over which limit.
        message: String,
        /// 1-based line where it is.
        line: u32,
    },
}

/// Deepest nesting of `(`, `[` and `{` a shader may use.
pub const MAX_SHADER_NESTING: usize = 64;
/// Most operators in one statement (between `;`, `{` and `}`): a chain of
/// a few thousand `+` terms makes naga (the WGSL compiler, here and in
/// wgpu on every node) recurse deep enough to overflow a thread's stack.
pub const MAX_SHADER_OPERATORS_PER_STATEMENT: usize = 512;

/// Refuses sources whose expressions nest or chain beyond what a compiler
/// can take: before any compiler sees them, by counting brackets and
/// operators (comments skipped). A real shader is far inside both limits.
fn check_complexity(src: &str) -> Result<(), ShaderError> {
    let bytes = src.as_bytes();
    let (mut depth, mut ops, mut line) = (0usize, 0usize, 1u32);
    let mut i = 0;
    let too = |message: String, line: u32| Err(ShaderError::TooComplex { message, line });
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => line += 1,
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
                i += 2;
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_SHADER_NESTING {
                    return too(
                        format!("brackets nest deeper than {MAX_SHADER_NESTING}"),
                        line,
                    );
                }
                if b == b'{' {
                    ops = 0;
                }
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if b == b'}' {
                    ops = 0;
                }
            }
            b';' => ops = 0,
            b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'|' | b'^' | b'<' | b'>' | b'!' | b'~'
            | b'?' => {
                ops += 1;
                if ops > MAX_SHADER_OPERATORS_PER_STATEMENT {
                    return too(
                        format!(
                            "more than {MAX_SHADER_OPERATORS_PER_STATEMENT} operators in one statement"
                        ),
                        line,
                    );
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn located(kind: &str, message: &str, line: Option<u32>, column: Option<u32>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{kind} at line {l}, column {c}: {message}"),
        (Some(l), None) => format!("{kind} at line {l}: {message}"),
        _ => format!("{kind}: {message}"),
    }
}

/// The full WGSL module the renderer compiles: user source, then the prelude.
pub fn compose(user_source: &str) -> String {
    let mut s = String::with_capacity(user_source.len() + PRELUDE.len() + 1);
    s.push_str(user_source);
    s.push('\n');
    s.push_str(PRELUDE);
    s
}

/// Parses and validates a user shader exactly as the renderer will compile it.
pub fn validate(user_source: &str) -> Result<(), ShaderError> {
    if user_source.len() > MAX_SHADER_SOURCE_BYTES {
        return Err(ShaderError::TooLarge {
            bytes: user_source.len(),
            limit: MAX_SHADER_SOURCE_BYTES,
        });
    }
    check_complexity(user_source)?;
    let full = compose(user_source);
    let user_lines = user_source.lines().count().max(1) as u32;
    // A location inside the prelude means the user's code clashes with it
    // (for example redeclares `drover`); report it without a misleading line.
    let clip = |loc: Option<naga::SourceLocation>| match loc {
        Some(l) if l.line_number <= user_lines => (Some(l.line_number), Some(l.line_position)),
        _ => (None, None),
    };
    let module = naga::front::wgsl::parse_str(&full).map_err(|e| {
        let (line, column) = clip(e.location(&full));
        ShaderError::Parse {
            message: e.message().to_string(),
            line,
            column,
        }
    })?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    );
    validator.validate(&module).map_err(|e| {
        let (line, column) = clip(e.location(&full));
        let mut message = e.as_inner().to_string();
        let mut source = std::error::Error::source(e.as_inner());
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        ShaderError::Invalid {
            message,
            line,
            column,
        }
    })?;
    let has_fragment = module
        .entry_points
        .iter()
        .any(|ep| ep.name == FRAGMENT_ENTRY && ep.stage == naga::ShaderStage::Fragment);
    if !has_fragment {
        return Err(ShaderError::MissingEntryPoint);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str, expect: Result<(), &str>) {
        let got = validate(src).map_err(|e| e.to_string());
        match (got, expect) {
            (Ok(()), Ok(())) => {}
            (Err(g), Err(want)) => assert!(g.contains(want), "error {g:?} lacks {want:?}"),
            (g, w) => panic!("got {g:?}, want {w:?}"),
        }
    }

    #[test]
    fn chains_and_nesting_a_compiler_cannot_take_are_refused_before_it_sees_them() {
        let chain = format!(
            "@fragment\nfn fs_main() -> @location(0) vec4<f32> {{\n  let x = 1.0{};\n  return vec4<f32>(x, 0.0, 0.0, 1.0);\n}}\n",
            " + 1.0".repeat(31_000 / 7)
        );
        assert!(chain.len() < MAX_SHADER_SOURCE_BYTES);
        check(&chain, Err("too complex at line 3"));
        let nested = format!(
            "@fragment\nfn fs_main() -> @location(0) vec4<f32> {{\n  let x = {}1.0{};\n  return vec4<f32>(x, 0.0, 0.0, 1.0);\n}}\n",
            "(".repeat(100),
            ")".repeat(100)
        );
        check(&nested, Err("brackets nest deeper than 64"));
        // Operators in comments do not count; a long but ordinary shader
        // passes.
        let commented = format!(
            "// {}\n@fragment\nfn fs_main() -> @location(0) vec4<f32> {{\n  /* {} */\n  return vec4<f32>(1.0, 0.0, 0.0, 1.0);\n}}\n",
            "+".repeat(5_000),
            "-*".repeat(5_000)
        );
        check(&commented, Ok(()));
    }

    #[test]
    fn builtins_validate() {
        for b in drover_shaders::BUILTIN {
            validate(b.source).unwrap_or_else(|e| panic!("{}: {e}", b.name));
        }
    }

    #[test]
    fn bad_shaders_are_located() {
        check("fn fs_main( {", Err("parse error at line 1"));
        check(
            "@fragment\nfn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> {\n  return vec4<f32>(undefined_thing);\n}",
            Err("line 3"),
        );
        check(
            "@fragment fn other(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> { return p; }",
            Err("no `@fragment fn fs_main`"),
        );
        check(
            &"/".repeat(MAX_SHADER_SOURCE_BYTES + 1),
            Err("limit is 65536"),
        );
        check(
            "@fragment fn fs_main(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> { return vec4<f32>(drover.time); }",
            Ok(()),
        );
    }

    #[test]
    fn uniforms_layout() {
        let u = Uniforms::for_frame(48, 24, 1280, 720);
        assert_eq!(u.time, 2.0);
        let b = u.to_bytes();
        assert_eq!(&b[12..16], &48u32.to_le_bytes());
        assert_eq!(&b[0..4], &1280f32.to_le_bytes());
    }
}

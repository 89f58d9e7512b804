//! The job spec: what a user submits (TOML or JSON, one schema), and its
//! validation. A spec that passes [`JobSpec::validate`] is safe to store and
//! schedule; every refusal names the field and the limit.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::shader;

/// Most frames one job may hold: over an hour at 24 fps. Bounds the size of a
/// job record and of the scheduler's per-job state.
pub const MAX_FRAMES_PER_JOB: u64 = 100_000;
/// Highest frame number accepted: shaders see the frame as a `u32`.
pub const MAX_FRAME_NUMBER: u64 = 10_000_000;
/// Largest width in pixels (8K UHD).
pub const MAX_WIDTH: u32 = 7680;
/// Largest height in pixels (8K UHD).
pub const MAX_HEIGHT: u32 = 4320;
/// Smallest width or height: H.264 macroblocks are 16 pixels.
pub const MIN_DIMENSION: u32 = 16;
/// Highest frame rate accepted.
pub const MAX_FPS: u32 = 240;
/// Longest job name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Largest job spec document accepted, in bytes (the shader dominates it).
pub const MAX_SPEC_BYTES: usize = shader::MAX_SHADER_SOURCE_BYTES + 16 * 1024;
/// Highest x264 CRF value.
pub const MAX_QUALITY_CRF: u8 = 51;

/// A refused spec: which field, and why (with the limit where there is one).
#[derive(Debug, Clone, Error, PartialEq, Serialize, Deserialize)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Dotted path of the offending field (`resolution.width`, `render.source`).
    pub field: String,
    /// What is wrong, with the limit.
    pub message: String,
}

impl SpecError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        SpecError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// An inclusive frame range as users write it: `frames = { start = 1, end = 240 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameSpan {
    /// First frame, inclusive.
    pub start: u64,
    /// Last frame, inclusive.
    pub end: u64,
}

impl FrameSpan {
    /// Number of frames in the span.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start) + 1
    }

    /// Always false for a validated span; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
}

/// Output size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    /// Width in pixels, even, 16..=7680.
    pub width: u32,
    /// Height in pixels, even, 16..=4320.
    pub height: u32,
}

/// Which renderer runs each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenderKind {
    /// The built-in wgpu renderer runs a WGSL fragment program per frame.
    Shader,
}

/// The render stage of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderSpec {
    /// Renderer kind; only `shader` today.
    pub kind: RenderKind,
    /// Name of a built-in shader (`plasma`, `rings`, `fractal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shader: Option<String>,
    /// Path of a WGSL file; the CLI reads it into `source` before submitting,
    /// because the coordinator cannot see the user's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// WGSL source, which travels with the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The encode and mux stages of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Container of the final file; only `mp4`.
    #[serde(default = "default_container")]
    pub container: String,
    /// Video codec; only `h264` (libx264 on the nodes).
    #[serde(default = "default_codec")]
    pub codec: String,
    /// x264 constant rate factor, 0 (lossless) ..= 51; lower is better.
    #[serde(default = "default_quality")]
    pub quality: u8,
}

fn default_container() -> String {
    "mp4".into()
}
fn default_codec() -> String {
    "h264".into()
}
fn default_quality() -> u8 {
    18
}
fn default_fps() -> u32 {
    24
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec {
            container: default_container(),
            codec: default_codec(),
            quality: default_quality(),
        }
    }
}

/// How much a job wants a GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuRequirement {
    /// Only nodes with a GPU adapter may run it.
    Required,
    /// GPU nodes first; CPU nodes when no GPU node is free.
    Preferred,
    /// Any node.
    #[default]
    Any,
}

/// What a node must have to run the job. Every field is optional; a chunk is
/// only ever placed on a node that meets all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// GPU need.
    #[serde(default)]
    pub gpu: GpuRequirement,
    /// Vendor of the render adapter: `nvidia`, `amd`, `intel`, `apple`, `mesa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_vendor: Option<String>,
    /// Pattern for the render adapter's name (`*` wildcards, case-insensitive;
    /// without `*` a substring): `"H100"`, `"NVIDIA*RTX*"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_name: Option<String>,
    /// Least VRAM of the render adapter, MiB. Nodes measure VRAM only on
    /// NVIDIA GPUs (nvidia-smi); a node whose VRAM is unknown does not
    /// qualify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_vram_mib: Option<u64>,
    /// Graphics backend: `vulkan`, `metal`, `dx12`, `gl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// FFmpeg encoder for every chunk (`libx264`, `h264_nvenc`, ...); the
    /// codec's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    /// Least logical cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cores: Option<u32>,
    /// Least memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory_mib: Option<u64>,
    /// Tags the node must all carry (`drover node --tags`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Pool the node must be in (`drover node --pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Highest job priority.
pub const MAX_PRIORITY: u8 = 100;
/// Priority of a job that names none.
pub const DEFAULT_PRIORITY: u8 = 50;
/// Project of a job that names none.
pub const DEFAULT_PROJECT: &str = "default";
/// Bounds of `chunk_target_s`: below a second per-chunk costs (encoder
/// start, upload, one more segment) dominate; above an hour a lost node
/// loses too much.
pub const CHUNK_TARGET_S_RANGE: std::ops::RangeInclusive<f64> = 1.0..=3600.0;
/// Longest tag, pool, vendor, backend or encoder name, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// Most tags a job may require.
pub const MAX_TAGS: usize = 16;
/// Bounds of `frame_timeout_s`: a day per frame is beyond any real render;
/// zero would kill every frame.
pub const FRAME_TIMEOUT_S_RANGE: std::ops::RangeInclusive<u32> = 1..=86_400;
/// Largest `max_nodes`: the farm size the scheduler is built for.
pub const MAX_NODES_PER_JOB: u32 = 100_000;

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}
fn default_project() -> String {
    DEFAULT_PROJECT.to_string()
}

/// A job as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Human name, 1..=128 bytes of letters, digits, space, `-`, `_`, `.`.
    pub name: String,
    /// Inclusive frame range.
    pub frames: FrameSpan,
    /// Frames per second of the output.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Output size.
    pub resolution: Resolution,
    /// Render stage.
    pub render: RenderSpec,
    /// Encode and mux stages.
    #[serde(default)]
    pub output: OutputSpec,
    /// What a node must have.
    #[serde(default)]
    pub requirements: Requirements,
    /// 0..=100, higher first: a higher-priority job takes free nodes first and
    /// shrinks running chunks of lower-priority jobs while it waits.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Project the job is accounted to for fair share between projects.
    #[serde(default = "default_project")]
    pub project: String,
    /// Most nodes working on this job at once; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nodes: Option<u32>,
    /// Seconds a chunk should take on the node it goes to; the coordinator's
    /// default (20 s) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_target_s: Option<f64>,
    /// When a frame fails on every retry, finish the job without it (listed
    /// in `missing_frames`) instead of failing the job.
    #[serde(default)]
    pub allow_missing_frames: bool,
    /// Longest one frame may take to render, seconds: a frame past it is
    /// killed on its node and counts as that frame's failure. Absent: the
    /// node's default limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_timeout_s: Option<u32>,
    /// URLs called (POST, signed) when the job is done, fails or is
    /// cancelled: `http://` or `https://`, at most [`MAX_WEBHOOKS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<String>,
}

/// Webhook URLs per job at most.
pub const MAX_WEBHOOKS: usize = 8;
/// Longest webhook URL, bytes.
pub const MAX_WEBHOOK_URL_BYTES: usize = 2_048;

/// Checks a webhook URL: `http://` or `https://`, a host, no credentials,
/// no whitespace or control characters, at most [`MAX_WEBHOOK_URL_BYTES`].
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_WEBHOOK_URL_BYTES {
        return Err(format!(
            "is {} bytes; the limit is {MAX_WEBHOOK_URL_BYTES}",
            url.len()
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character".into());
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "must not carry credentials (user@host); sign with the webhook secret instead".into(),
        );
    }
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// Deserializes with the path of the failing field in the error.
fn parse_with_path<'de, D: serde::Deserializer<'de>>(de: D) -> Result<JobSpec, SpecError>
where
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" || path.is_empty() {
            "spec".to_string()
        } else {
            path
        };
        SpecError::new(&field, e.into_inner().to_string())
    })
}

impl JobSpec {
    /// Parses a JSON spec (unknown fields are refused).
    pub fn from_json(text: &str) -> Result<JobSpec, SpecError> {
        check_size(text)?;
        let mut de = serde_json::Deserializer::from_str(text);
        let spec = parse_with_path(&mut de)?;
        de.end()
            .map_err(|e| SpecError::new("spec", format!("trailing data: {e}")))?;
        Ok(spec)
    }

    /// Parses a TOML spec (unknown fields are refused).
    pub fn from_toml(text: &str) -> Result<JobSpec, SpecError> {
        check_size(text)?;
        parse_with_path(toml::Deserializer::new(text))
    }

    /// Checks every field against its limit and resolves the shader to its
    /// source, so the stored job carries everything a node needs. Returns the
    /// WGSL source to render.
    pub fn validate(&mut self) -> Result<(), SpecError> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(SpecError::new("name", "must not be empty"));
        }
        if self.name.len() > MAX_NAME_BYTES {
            return Err(SpecError::new(
                "name",
                format!(
                    "is {} bytes; the limit is {MAX_NAME_BYTES}",
                    self.name.len()
                ),
            ));
        }
        if let Some(c) = self
            .name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.')))
        {
            return Err(SpecError::new(
                "name",
                format!("contains {c:?}; allowed are letters, digits, space, '-', '_', '.'"),
            ));
        }
        if self.frames.end < self.frames.start {
            return Err(SpecError::new(
                "frames.end",
                format!(
                    "{} is before frames.start {}",
                    self.frames.end, self.frames.start
                ),
            ));
        }
        if self.frames.end > MAX_FRAME_NUMBER {
            return Err(SpecError::new(
                "frames.end",
                format!(
                    "{} is above the highest frame number {MAX_FRAME_NUMBER}",
                    self.frames.end
                ),
            ));
        }
        if self.frames.len() > MAX_FRAMES_PER_JOB {
            return Err(SpecError::new(
                "frames",
                format!(
                    "{} frames; the limit is {MAX_FRAMES_PER_JOB} per job",
                    self.frames.len()
                ),
            ));
        }
        if self.fps == 0 || self.fps > MAX_FPS {
            return Err(SpecError::new(
                "fps",
                format!("{} is outside 1..={MAX_FPS}", self.fps),
            ));
        }
        for (field, value, max) in [
            ("resolution.width", self.resolution.width, MAX_WIDTH),
            ("resolution.height", self.resolution.height, MAX_HEIGHT),
        ] {
            if !(MIN_DIMENSION..=max).contains(&value) {
                return Err(SpecError::new(
                    field,
                    format!("{value} is outside {MIN_DIMENSION}..={max} pixels"),
                ));
            }
            if value % 2 != 0 {
                return Err(SpecError::new(
                    field,
                    format!("{value} is odd; yuv420p video needs even sizes"),
                ));
            }
        }
        if self.output.container != "mp4" {
            return Err(SpecError::new(
                "output.container",
                format!("{:?} is not supported; use \"mp4\"", self.output.container),
            ));
        }
        if self.output.codec != "h264" {
            return Err(SpecError::new(
                "output.codec",
                format!("{:?} is not supported; use \"h264\"", self.output.codec),
            ));
        }
        if self.output.quality > MAX_QUALITY_CRF {
            return Err(SpecError::new(
                "output.quality",
                format!(
                    "{} is outside 0..={MAX_QUALITY_CRF} (x264 CRF)",
                    self.output.quality
                ),
            ));
        }
        self.validate_scheduling()?;
        self.resolve_shader()
    }

    fn validate_scheduling(&self) -> Result<(), SpecError> {
        if self.priority > MAX_PRIORITY {
            return Err(SpecError::new(
                "priority",
                format!("{} is outside 0..={MAX_PRIORITY}", self.priority),
            ));
        }
        label("project", &self.project)?;
        if let Some(n) = self.max_nodes {
            if n == 0 || n > MAX_NODES_PER_JOB {
                return Err(SpecError::new(
                    "max_nodes",
                    format!("{n} is outside 1..={MAX_NODES_PER_JOB}"),
                ));
            }
        }
        if let Some(t) = self.frame_timeout_s {
            if !FRAME_TIMEOUT_S_RANGE.contains(&t) {
                return Err(SpecError::new(
                    "frame_timeout_s",
                    format!(
                        "{t} is outside {}..={} seconds",
                        FRAME_TIMEOUT_S_RANGE.start(),
                        FRAME_TIMEOUT_S_RANGE.end()
                    ),
                ));
            }
        }
        if self.webhooks.len() > MAX_WEBHOOKS {
            return Err(SpecError::new(
                "webhooks",
                format!("{} URLs; the limit is {MAX_WEBHOOKS}", self.webhooks.len()),
            ));
        }
        for (i, url) in self.webhooks.iter().enumerate() {
            check_webhook_url(url).map_err(|why| SpecError::new(&format!("webhooks[{i}]"), why))?;
        }
        if let Some(t) = self.chunk_target_s {
            if !CHUNK_TARGET_S_RANGE.contains(&t) {
                return Err(SpecError::new(
                    "chunk_target_s",
                    format!(
                        "{t} is outside {}..={} seconds",
                        CHUNK_TARGET_S_RANGE.start(),
                        CHUNK_TARGET_S_RANGE.end()
                    ),
                ));
            }
        }
        let r = &self.requirements;
        if let Some(v) = &r.gpu_vendor {
            const VENDORS: [&str; 5] = ["nvidia", "amd", "intel", "apple", "mesa"];
            if !VENDORS.contains(&v.as_str()) {
                return Err(SpecError::new(
                    "requirements.gpu_vendor",
                    format!("{v:?} is not one of {}", VENDORS.join(", ")),
                ));
            }
        }
        if let Some(p) = &r.gpu_name {
            label("requirements.gpu_name", p)?;
        }
        if let Some(b) = &r.backend {
            const BACKENDS: [&str; 4] = ["vulkan", "metal", "dx12", "gl"];
            if !BACKENDS.contains(&b.to_ascii_lowercase().as_str()) {
                return Err(SpecError::new(
                    "requirements.backend",
                    format!("{b:?} is not one of {}", BACKENDS.join(", ")),
                ));
            }
        }
        if let Some(e) = &r.encoder {
            let allowed = crate::caps::encoders_for_codec(&self.output.codec);
            if !allowed.contains(&e.as_str()) {
                return Err(SpecError::new(
                    "requirements.encoder",
                    format!(
                        "{e:?} does not produce output.codec {:?}; use one of {}",
                        self.output.codec,
                        allowed.join(", ")
                    ),
                ));
            }
        }
        if r.tags.len() > MAX_TAGS {
            return Err(SpecError::new(
                "requirements.tags",
                format!("{} tags; the limit is {MAX_TAGS}", r.tags.len()),
            ));
        }
        for t in &r.tags {
            label("requirements.tags", t)?;
        }
        if let Some(p) = &r.pool {
            label("requirements.pool", p)?;
        }
        Ok(())
    }

    fn resolve_shader(&mut self) -> Result<(), SpecError> {
        let r = &mut self.render;
        if r.path.is_some() {
            return Err(SpecError::new(
                "render.path",
                "paths are read by the drover CLI, which sends the file as render.source; \
                 the coordinator cannot read client files",
            ));
        }
        match (&r.shader, &r.source) {
            (Some(_), Some(_)) => Err(SpecError::new(
                "render.shader",
                "give either render.shader (a built-in name) or render.source, not both",
            )),
            (None, None) => Err(SpecError::new(
                "render.shader",
                format!(
                    "missing: name a built-in shader ({}) or give render.source / render.path",
                    drover_shaders::names().join(", ")
                ),
            )),
            (Some(name), None) => match drover_shaders::get(name) {
                Some(b) => {
                    // The source travels with the job so that a node never
                    // depends on having the same built-in table.
                    r.source = Some(b.source.to_string());
                    Ok(())
                }
                None => Err(SpecError::new(
                    "render.shader",
                    format!(
                        "{name:?} is not a built-in shader; known: {}",
                        drover_shaders::names().join(", ")
                    ),
                )),
            },
            (None, Some(src)) => {
                shader::validate(src).map_err(|e| SpecError::new("render.source", e.to_string()))
            }
        }
    }

    /// The WGSL source of a validated spec.
    pub fn shader_source(&self) -> &str {
        self.render.source.as_deref().unwrap_or_default()
    }
}

/// Checks a short label (project, tag, pool, name pattern): 1..=64 bytes of
/// letters, digits, `-`, `_`, `.`, `*` and space.
pub fn label(field: &str, value: &str) -> Result<(), SpecError> {
    if value.is_empty() || value.len() > MAX_LABEL_BYTES {
        return Err(SpecError::new(
            field,
            format!(
                "{value:?} is {} bytes; allowed are 1..={MAX_LABEL_BYTES}",
                value.len()
            ),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | '*')))
    {
        return Err(SpecError::new(
            field,
            format!("contains {c:?}; allowed are letters, digits, space, '-', '_', '.', '*'"),
        ));
    }
    Ok(())
}

fn check_size(text: &str) -> Result<(), SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecError::new(
            "spec",
            format!(
                "document is {} bytes; the limit is {MAX_SPEC_BYTES}",
                text.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"name":"shot 010","frames":{"start":1,"end":48},"fps":24,
        "resolution":{"width":320,"height":180},"render":{"kind":"shader","shader":"plasma"}}"#;

    /// Applies `edit` to the good spec and checks which field is refused.
    fn check(edit: impl FnOnce(&mut serde_json::Value), field: &str, msg: &str) {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        edit(&mut v);
        let err = JobSpec::from_json(&v.to_string()).and_then(|mut s| s.validate());
        let err = err.expect_err("spec should be refused");
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(msg), "{err} lacks {msg:?}");
    }

    #[test]
    fn good_spec_resolves_builtin() {
        let mut s = JobSpec::from_json(GOOD).unwrap();
        s.validate().unwrap();
        assert!(s.shader_source().contains("fs_main"));
        assert_eq!(s.output.quality, 18);
        let toml_spec = r#"
            name = "t"
            frames = { start = 0, end = 9 }
            resolution = { width = 64, height = 64 }
            [render]
            kind = "shader"
            shader = "rings"
        "#;
        let mut t = JobSpec::from_toml(toml_spec).unwrap();
        t.validate().unwrap();
        assert_eq!(t.frames.len(), 10);
    }

    #[test]
    fn bad_specs_name_the_field() {
        use serde_json::json;
        check(
            |v| v["colour"] = json!(1),
            "colour",
            "unknown field `colour`",
        );
        check(
            |v| v["output"] = json!({"codex": "h264"}),
            "output.codex",
            "unknown field `codex`",
        );
        check(
            |v| v["frames"] = json!({"start": 10, "end": 2}),
            "frames.end",
            "before",
        );
        check(
            |v| v["frames"] = json!({"start": 0, "end": 200000}),
            "frames",
            "limit is 100000",
        );
        check(
            |v| v["resolution"]["width"] = json!(9000),
            "resolution.width",
            "16..=7680",
        );
        check(
            |v| v["resolution"]["height"] = json!(181),
            "resolution.height",
            "odd",
        );
        check(|v| v["fps"] = json!(0), "fps", "1..=240");
        check(|v| v["name"] = json!(""), "name", "empty");
        check(
            |v| v["render"]["shader"] = json!("nope"),
            "render.shader",
            "not a built-in",
        );
        check(
            |v| v["render"]["kind"] = json!("blender"),
            "render.kind",
            "unknown variant",
        );
        check(
            |v| v["output"] = json!({"codec": "prores"}),
            "output.codec",
            "not supported",
        );
        check(
            |v| v["output"] = json!({"quality": 80}),
            "output.quality",
            "0..=51",
        );
        check(
            |v| v["resolution"]["width"] = json!(-5),
            "resolution.width",
            "invalid value",
        );
        check(
            |v| v["render"] = json!({"kind": "shader", "source": "fn fs_main( {"}),
            "render.source",
            "line 1",
        );
        check(|v| v["priority"] = json!(101), "priority", "0..=100");
        check(|v| v["max_nodes"] = json!(0), "max_nodes", "1..=100000");
        check(
            |v| v["frame_timeout_s"] = json!(0),
            "frame_timeout_s",
            "1..=86400",
        );
        check(
            |v| v["chunk_target_s"] = json!(0.1),
            "chunk_target_s",
            "1..=3600",
        );
        check(|v| v["project"] = json!("a/b"), "project", "contains '/'");
        check(
            |v| v["webhooks"] = json!(["ftp://x/y"]),
            "webhooks[0]",
            "not an http",
        );
        check(
            |v| v["webhooks"] = json!(["http://ok/a", "https://u:p@host/x"]),
            "webhooks[1]",
            "credentials",
        );
        check(
            |v| v["webhooks"] = json!(["http:///path"]),
            "webhooks[0]",
            "no host",
        );
        check(
            |v| v["webhooks"] = json!(vec!["http://h/"; 9]),
            "webhooks",
            "limit is 8",
        );
        check(
            |v| v["requirements"] = json!({"gpu_vendor": "3dfx"}),
            "requirements.gpu_vendor",
            "not one of",
        );
        check(
            |v| v["requirements"] = json!({"encoder": "hevc_nvenc"}),
            "requirements.encoder",
            "does not produce",
        );
        check(
            |v| v["requirements"] = json!({"backend": "glide"}),
            "requirements.backend",
            "not one of",
        );
        check(
            |v| v["requirements"] = json!({"min_cores": -1}),
            "requirements.min_cores",
            "invalid value",
        );
        check(
            |v| v["render"] = json!({"kind": "shader", "path": "x.wgsl"}),
            "render.path",
            "CLI",
        );
    }
}

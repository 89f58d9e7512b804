//! What a node has (probed at start and sent in its hello) and the matching of
//! a job's requirements against it.
//!
//! Matching is split into [`Need`]s, one per requirement, so that the
//! scheduler can say which requirement no connected node meets ("needs
//! encoder h264_nvenc: no connected node has it") rather than only that a
//! job cannot run.

use serde::{Deserialize, Serialize};

use crate::spec::{GpuRequirement, JobSpec};

/// Kind of a graphics adapter, as wgpu reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum DeviceType {
    /// A discrete GPU.
    DiscreteGpu,
    /// A GPU sharing memory with the CPU.
    IntegratedGpu,
    /// A virtualised GPU.
    VirtualGpu,
    /// A software rasteriser such as Mesa's lavapipe.
    Cpu,
    /// Anything else.
    Other,
}

impl DeviceType {
    /// Parses wgpu's `Debug` name of a device type; unknown names are `Other`.
    pub fn from_name(name: &str) -> DeviceType {
        match name {
            "DiscreteGpu" => DeviceType::DiscreteGpu,
            "IntegratedGpu" => DeviceType::IntegratedGpu,
            "VirtualGpu" => DeviceType::VirtualGpu,
            "Cpu" => DeviceType::Cpu,
            _ => DeviceType::Other,
        }
    }

    /// True for real GPUs (discrete, integrated, virtual).
    pub fn is_gpu(self) -> bool {
        matches!(
            self,
            DeviceType::DiscreteGpu | DeviceType::IntegratedGpu | DeviceType::VirtualGpu
        )
    }
}

/// One graphics adapter of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Adapter {
    /// Adapter name (`NVIDIA H100 80GB HBM3`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// wgpu backend (`Vulkan`, `Metal`, `Dx12`, `Gl`).
    pub backend: String,
    /// Device kind.
    pub device_type: DeviceType,
    /// Vendor in lower case (`nvidia`, `amd`, `intel`, `apple`, `mesa`), from
    /// the PCI vendor id; empty when unknown.
    #[serde(default)]
    pub vendor: String,
    /// Dedicated video memory in bytes, when the node could measure it.
    #[serde(default)]
    pub vram_bytes: Option<u64>,
}

/// The node's own measure of its speed, taken at start by rendering a short
/// fixed sequence; the scheduler's first estimate before real frames exist.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Calibration {
    /// Frames per second rendered and encoded.
    pub frames_per_s: f64,
    /// Width of the calibration frames, pixels.
    pub width: u32,
    /// Height of the calibration frames, pixels.
    pub height: u32,
}

/// Everything a node reports about itself in its hello.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Capabilities {
    /// Host name of the machine.
    pub hostname: String,
    /// Operating system and version.
    pub os: String,
    /// CPU brand string.
    pub cpu_brand: String,
    /// Logical CPU cores.
    pub cpu_cores: u32,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Every adapter wgpu enumerates.
    pub adapters: Vec<Adapter>,
    /// The adapter the node's renderer uses.
    pub render_adapter: Option<Adapter>,
    /// FFmpeg encoders that really opened in a test encode.
    pub encoders: Vec<String>,
    /// Admin-given labels (`--tags`), matched by `requirements.tags`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Node pool (`--pool`), matched by `requirements.pool`.
    #[serde(default)]
    pub pool: String,
    /// The calibration render's result.
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// Set when a test aid replaced probed values (`--test-gpu`,
    /// `--slowdown`); says what was changed, so that no one mistakes such a
    /// node for real hardware.
    #[serde(default)]
    pub test_override: Option<String>,
}

impl Capabilities {
    /// True when the node renders on a real GPU.
    pub fn renders_on_gpu(&self) -> bool {
        self.render_adapter
            .as_ref()
            .is_some_and(|a| a.device_type.is_gpu())
    }
}

/// Encoders able to produce each output codec, the default first. Every
/// chunk of a job uses the same encoder: segments joined by stream copy must
/// share codec parameters.
pub fn encoders_for_codec(codec: &str) -> &'static [&'static str] {
    match codec {
        "h264" => &["libx264", "h264_nvenc", "h264_qsv", "h264_vaapi"],
        _ => &[],
    }
}

/// The encoder every chunk of this job uses: the one the job requires, or
/// the codec's default (the software encoder every node has).
pub fn job_encoder(spec: &JobSpec) -> &str {
    spec.requirements
        .encoder
        .as_deref()
        .or_else(|| encoders_for_codec(&spec.output.codec).first().copied())
        .unwrap_or("libx264")
}

/// One requirement of a job, checked against one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Need {
    /// A usable graphics adapter at all.
    Adapter,
    /// Rendering on a GPU (`requirements.gpu = "required"`).
    Gpu,
    /// The render adapter's vendor.
    GpuVendor(String),
    /// The render adapter's name matches this pattern (`*` wildcards,
    /// case-insensitive; without `*`, a substring).
    GpuName(String),
    /// At least this much VRAM on the render adapter, MiB.
    MinVramMib(u64),
    /// The render adapter's backend (case-insensitive).
    Backend(String),
    /// This FFmpeg encoder opened in the node's probe.
    Encoder(String),
    /// At least this many logical cores.
    MinCores(u32),
    /// At least this much memory, MiB.
    MinMemoryMib(u64),
    /// The node carries this tag.
    Tag(String),
    /// The node is in this pool.
    Pool(String),
}

const MIB: u64 = 1024 * 1024;

impl Need {
    /// Whether `caps` meets this need.
    pub fn met_by(&self, caps: &Capabilities) -> bool {
        let ra = caps.render_adapter.as_ref();
        match self {
            Need::Adapter => ra.is_some(),
            Need::Gpu => caps.renders_on_gpu(),
            Need::GpuVendor(v) => ra.is_some_and(|a| a.vendor.eq_ignore_ascii_case(v)),
            Need::GpuName(p) => ra.is_some_and(|a| name_matches(p, &a.name)),
            Need::MinVramMib(m) => {
                ra.and_then(|a| a.vram_bytes).unwrap_or(0) >= m.saturating_mul(MIB)
            }
            Need::Backend(b) => ra.is_some_and(|a| a.backend.eq_ignore_ascii_case(b)),
            Need::Encoder(e) => caps.encoders.iter().any(|c| c == e),
            Need::MinCores(c) => caps.cpu_cores >= *c,
            Need::MinMemoryMib(m) => caps.memory_bytes >= m.saturating_mul(MIB),
            Need::Tag(t) => caps.tags.iter().any(|x| x == t),
            Need::Pool(p) => &caps.pool == p,
        }
    }

    /// The requirement in words, with the spec field it comes from.
    pub fn describe(&self) -> String {
        match self {
            Need::Adapter => "needs a usable graphics adapter".into(),
            Need::Gpu => "needs a GPU (requirements.gpu = \"required\")".into(),
            Need::GpuVendor(v) => format!("needs GPU vendor {v} (requirements.gpu_vendor)"),
            Need::GpuName(p) => format!("needs a GPU named like {p:?} (requirements.gpu_name)"),
            Need::MinVramMib(m) => format!(
                "needs {m} MiB of VRAM (requirements.min_vram_mib; nodes report VRAM only for NVIDIA GPUs, through nvidia-smi)"
            ),
            Need::Backend(b) => format!("needs graphics backend {b} (requirements.backend)"),
            Need::Encoder(e) => format!("needs encoder {e}"),
            Need::MinCores(c) => format!("needs {c} cores (requirements.min_cores)"),
            Need::MinMemoryMib(m) => {
                format!("needs {m} MiB of memory (requirements.min_memory_mib)")
            }
            Need::Tag(t) => format!("needs tag {t:?} (requirements.tags)"),
            Need::Pool(p) => format!("needs pool {p:?} (requirements.pool)"),
        }
    }
}

/// Case-insensitive match of an adapter name against a pattern: `*` matches
/// any run of characters; a pattern without `*` matches as a substring.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let n = name.to_ascii_lowercase();
    if !p.contains('*') {
        return n.contains(&p);
    }
    let parts: Vec<&str> = p.split('*').collect();
    let mut rest = n.as_str();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Every requirement of a job, the encoder it will use included.
pub fn needs(spec: &JobSpec) -> Vec<Need> {
    let r = &spec.requirements;
    let mut out = vec![Need::Adapter];
    if r.gpu == GpuRequirement::Required {
        out.push(Need::Gpu);
    }
    if let Some(v) = &r.gpu_vendor {
        out.push(Need::GpuVendor(v.clone()));
    }
    if let Some(p) = &r.gpu_name {
        out.push(Need::GpuName(p.clone()));
    }
    if let Some(m) = r.min_vram_mib {
        out.push(Need::MinVramMib(m));
    }
    if let Some(b) = &r.backend {
        out.push(Need::Backend(b.clone()));
    }
    out.push(Need::Encoder(job_encoder(spec).to_string()));
    if let Some(c) = r.min_cores {
        out.push(Need::MinCores(c));
    }
    if let Some(m) = r.min_memory_mib {
        out.push(Need::MinMemoryMib(m));
    }
    for t in &r.tags {
        out.push(Need::Tag(t.clone()));
    }
    if let Some(p) = &r.pool {
        out.push(Need::Pool(p.clone()));
    }
    out
}

/// Whether a node can run a job at all; `Err` names the first requirement it
/// misses.
pub fn can_run(spec: &JobSpec, caps: &Capabilities) -> Result<(), String> {
    match needs(spec).into_iter().find(|n| !n.met_by(caps)) {
        Some(n) => Err(n.describe()),
        None => Ok(()),
    }
}

/// Preference of a node for a job among those that can run it; higher first.
pub fn preference(spec: &JobSpec, caps: &Capabilities) -> u32 {
    match (spec.requirements.gpu, caps.renders_on_gpu()) {
        (GpuRequirement::Preferred | GpuRequirement::Required, true) => 2,
        (GpuRequirement::Any, true) => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_patterns() {
        let check = |p: &str, n: &str, want: bool| assert_eq!(name_matches(p, n), want, "{p} {n}");
        check("h100", "NVIDIA H100 80GB HBM3", true);
        check("NVIDIA*", "NVIDIA H100 80GB HBM3", true);
        check("*HBM3", "NVIDIA H100 80GB HBM3", true);
        check("nvidia*80gb*", "NVIDIA H100 80GB HBM3", true);
        check("amd*", "NVIDIA H100 80GB HBM3", false);
        check("*a100*", "NVIDIA H100 80GB HBM3", false);
        check("llvmpipe", "llvmpipe (LLVM 15.0.6, 256 bits)", true);
    }
}

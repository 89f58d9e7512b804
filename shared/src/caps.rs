//! What a node has (probed at start and sent in its hello) and the matching of
//! a job's requirements against it.

use serde::{Deserialize, Serialize};

use crate::spec::{GpuRequirement, JobSpec};

/// Kind of a graphics adapter, as wgpu reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adapter {
    /// Adapter name (`NVIDIA H100 80GB HBM3`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// wgpu backend (`Vulkan`, `Metal`, `Dx12`, `Gl`).
    pub backend: String,
    /// Device kind.
    pub device_type: DeviceType,
}

/// Everything a node reports about itself in its hello.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Capabilities {
    /// True when the node renders on a real GPU.
    pub fn renders_on_gpu(&self) -> bool {
        self.render_adapter
            .as_ref()
            .is_some_and(|a| a.device_type.is_gpu())
    }
}

/// Encoders able to produce each output codec, in order of preference.
pub fn encoders_for_codec(codec: &str) -> &'static [&'static str] {
    match codec {
        "h264" => &["libx264"],
        _ => &[],
    }
}

/// Whether a node can run a job at all; `Err` says why not, for the
/// `unschedulable` reason shown to users.
pub fn can_run(spec: &JobSpec, caps: &Capabilities) -> Result<(), String> {
    if spec.requirements.gpu == GpuRequirement::Required && !caps.renders_on_gpu() {
        return Err("requirements.gpu = \"required\" but the node renders on a CPU adapter".into());
    }
    if caps.render_adapter.is_none() {
        return Err("the node has no usable graphics adapter".into());
    }
    let wanted = encoders_for_codec(&spec.output.codec);
    if !wanted.iter().any(|e| caps.encoders.iter().any(|c| c == e)) {
        return Err(format!(
            "output.codec = {:?} needs one of the encoders {:?}, which the node lacks",
            spec.output.codec, wanted
        ));
    }
    Ok(())
}

/// Preference of a node for a job among those that can run it; higher first.
pub fn preference(spec: &JobSpec, caps: &Capabilities) -> u32 {
    match (spec.requirements.gpu, caps.renders_on_gpu()) {
        (GpuRequirement::Preferred | GpuRequirement::Required, true) => 2,
        (GpuRequirement::Any, true) => 1,
        _ => 0,
    }
}

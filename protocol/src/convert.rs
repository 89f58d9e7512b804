//! Conversions between wire types and `drover_shared` domain types. Only this
//! module knows both, so a wire change never ripples into the scheduler.

use drover_shared::caps::{Adapter, Calibration, Capabilities, DeviceType};

use crate::messages::{WireAdapter, WireCalibration, WireCapabilities};

impl From<&Adapter> for WireAdapter {
    fn from(a: &Adapter) -> Self {
        WireAdapter {
            name: a.name.clone(),
            backend: a.backend.clone(),
            device_type: format!("{:?}", a.device_type),
            vendor: a.vendor.clone(),
            vram_bytes: a.vram_bytes.unwrap_or(0),
        }
    }
}

impl From<&WireAdapter> for Adapter {
    fn from(a: &WireAdapter) -> Self {
        Adapter {
            name: a.name.clone(),
            backend: a.backend.clone(),
            device_type: DeviceType::from_name(&a.device_type),
            vendor: a.vendor.clone(),
            vram_bytes: (a.vram_bytes > 0).then_some(a.vram_bytes),
        }
    }
}

impl From<&Capabilities> for WireCapabilities {
    fn from(c: &Capabilities) -> Self {
        WireCapabilities {
            hostname: c.hostname.clone(),
            os: c.os.clone(),
            cpu_brand: c.cpu_brand.clone(),
            cpu_cores: c.cpu_cores,
            memory_bytes: c.memory_bytes,
            adapters: c.adapters.iter().map(Into::into).collect(),
            render_adapter: c.render_adapter.as_ref().map(Into::into),
            encoders: c.encoders.clone(),
            tags: c.tags.clone(),
            pool: c.pool.clone(),
            calibration: c.calibration.map(|k| WireCalibration {
                frames_per_s: k.frames_per_s,
                width: k.width,
                height: k.height,
            }),
            test_override: c.test_override.clone(),
        }
    }
}

impl From<&WireCapabilities> for Capabilities {
    fn from(c: &WireCapabilities) -> Self {
        Capabilities {
            hostname: c.hostname.clone(),
            os: c.os.clone(),
            cpu_brand: c.cpu_brand.clone(),
            cpu_cores: c.cpu_cores,
            memory_bytes: c.memory_bytes,
            adapters: c.adapters.iter().map(Into::into).collect(),
            render_adapter: c.render_adapter.as_ref().map(Into::into),
            encoders: c.encoders.clone(),
            tags: c.tags.clone(),
            pool: c.pool.clone(),
            calibration: c.calibration.map(|k| Calibration {
                frames_per_s: k.frames_per_s,
                width: k.width,
                height: k.height,
            }),
            test_override: c.test_override.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_survive_the_wire() {
        let gpu = Adapter {
            name: "NVIDIA H100".into(),
            backend: "Vulkan".into(),
            device_type: DeviceType::DiscreteGpu,
            vendor: "nvidia".into(),
            vram_bytes: Some(80 << 30),
        };
        let caps = Capabilities {
            hostname: "n1".into(),
            os: "Debian 12".into(),
            cpu_brand: "x".into(),
            cpu_cores: 16,
            memory_bytes: 1 << 30,
            adapters: vec![gpu.clone()],
            render_adapter: Some(gpu),
            encoders: vec!["libx264".into()],
            tags: vec!["fast".into()],
            pool: "studio".into(),
            calibration: Some(Calibration {
                frames_per_s: 120.5,
                width: 640,
                height: 360,
            }),
            test_override: None,
        };
        let wire = WireCapabilities::from(&caps);
        assert_eq!(Capabilities::from(&wire), caps);
    }
}

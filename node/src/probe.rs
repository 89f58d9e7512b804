//! The capability probe: what this machine has, measured rather than assumed.
//! Encoders are listed only when a real test encode opened them.

use drover_shared::caps::{Adapter, Capabilities, DeviceType};

use crate::render::AdapterReport;

fn adapter(a: &AdapterReport) -> Adapter {
    Adapter {
        name: a.name.clone(),
        backend: a.backend.clone(),
        device_type: DeviceType::from_name(&a.device_type),
    }
}

/// Probes the machine. `render_adapter` is the adapter the node's renderer
/// chose ([`crate::render::Gpu::adapter`]).
pub fn capabilities(render_adapter: &AdapterReport) -> Capabilities {
    // sysinfo can fail on exotic systems; the probe then reports what it
    // has rather than refusing to start a node that can still render.
    let (cpu_brand, cpu_cores, memory_bytes) = match sysinfo::System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            sys.refresh_cpu_all();
            let brand = sys
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_string())
                .unwrap_or_default();
            (brand, sys.cpus().len() as u32, sys.total_memory())
        }
        Err(e) => {
            tracing::warn!("sysinfo failed: {e}");
            (String::new(), 0, 0)
        }
    };
    Capabilities {
        hostname: sysinfo::System::host_name().unwrap_or_default(),
        os: sysinfo::System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.to_string()),
        cpu_brand,
        cpu_cores,
        memory_bytes,
        adapters: crate::render::probe_adapters()
            .iter()
            .map(adapter)
            .collect(),
        render_adapter: Some(adapter(render_adapter)),
        encoders: crate::encode::probe_encoders(),
    }
}

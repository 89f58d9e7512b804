//! The capability probe: what this machine has, measured rather than assumed.
//! Encoders are listed only when a real test encode opened them.
//!
//! Test aids (`--test-gpu`, `--slowdown`) may replace probed values
//! afterwards ([`apply_test_aids`]); every such node says so in
//! `Capabilities::test_override`, so that no one mistakes it for real
//! hardware.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_shared::caps::{Adapter, Capabilities, DeviceType};

use crate::render::AdapterReport;

/// PCI vendor id of NVIDIA.
const VENDOR_ID_NVIDIA: u32 = 0x10DE;

/// Longest wait for `nvidia-smi`. It can hang for a long time when the
/// driver is wedged, and the VRAM figure is not worth delaying the node's
/// start for.
const NVIDIA_SMI_TIMEOUT_MS: u64 = 5_000;

/// Most bytes of `nvidia-smi` output read: one short line per GPU, so this
/// bounds a misbehaving tool without cutting off a real machine's answer.
const NVIDIA_SMI_MAX_OUTPUT_BYTES: u64 = 64 * 1024;

/// The vendor's name in lower case for a PCI (or Khronos) vendor id, as
/// `Adapter::vendor` carries it; empty for ids Drover does not know.
pub fn vendor_name(vendor_id: u32) -> &'static str {
    match vendor_id {
        VENDOR_ID_NVIDIA => "nvidia",
        0x1002 => "amd",
        0x8086 => "intel",
        0x106B => "apple",
        // VK_VENDOR_ID_MESA: Mesa's software drivers (lavapipe, llvmpipe).
        0x10005 => "mesa",
        _ => "",
    }
}

/// VRAM of each NVIDIA GPU by name, from `nvidia-smi`. Empty when the tool
/// is missing, fails, hangs or prints something unexpected: VRAM is a
/// nicety, never a reason to refuse a node.
fn nvidia_vram() -> Vec<(String, u64)> {
    let output = match run_with_timeout(
        Command::new("nvidia-smi").args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
        ]),
        Duration::from_millis(NVIDIA_SMI_TIMEOUT_MS),
    ) {
        Ok(out) => out,
        Err(e) => {
            tracing::debug!("no VRAM figure from nvidia-smi: {e}");
            return Vec::new();
        }
    };
    parse_nvidia_smi(&output)
}

/// Parses `nvidia-smi --query-gpu=name,memory.total
/// --format=csv,noheader,nounits`: one `name, MiB` line per GPU. Lines that
/// do not parse are skipped.
pub fn parse_nvidia_smi(output: &str) -> Vec<(String, u64)> {
    output
        .lines()
        .filter_map(|line| {
            // The name may itself hold commas; the figure is the last field.
            let (name, mib) = line.rsplit_once(',')?;
            let mib: u64 = mib.trim().parse().ok()?;
            Some((name.trim().to_string(), mib.checked_mul(1024 * 1024)?))
        })
        .collect()
}

/// The VRAM of the adapter named `name`: the GPU of that name, or the only
/// GPU when there is just one (names can differ slightly between the
/// Vulkan driver and `nvidia-smi`). With several GPUs and no name match the
/// answer would be a guess, so there is none.
fn vram_for(name: &str, gpus: &[(String, u64)]) -> Option<u64> {
    gpus.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .or_else(|| (gpus.len() == 1).then(|| &gpus[0]))
        .map(|(_, bytes)| *bytes)
}

/// Runs `cmd` with its stdout captured, killing it after `timeout`.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> std::io::Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            // Killing and reaping our own child; errors only mean it has
            // just exited by itself.
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} ms", timeout.as_millis()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        return Err(std::io::Error::other(format!("exited with {status}")));
    }
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        stdout
            .take(NVIDIA_SMI_MAX_OUTPUT_BYTES)
            .read_to_string(&mut out)?;
    }
    Ok(out)
}

fn adapter(a: &AdapterReport, nvidia: &[(String, u64)]) -> Adapter {
    Adapter {
        name: a.name.clone(),
        backend: a.backend.clone(),
        device_type: DeviceType::from_name(&a.device_type),
        vendor: vendor_name(a.vendor_id).to_string(),
        vram_bytes: if a.vendor_id == VENDOR_ID_NVIDIA {
            vram_for(&a.name, nvidia)
        } else {
            None
        },
    }
}

/// Probes the machine. `render_adapter` is the adapter the node's renderer
/// chose ([`crate::render::Gpu::adapter`]). Tags, pool, calibration and test
/// overrides are the agent's to fill in.
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
    let reports = crate::render::probe_adapters();
    // Asked once for every adapter, and only on machines that have an
    // NVIDIA adapter at all, so other nodes never run the tool.
    let nvidia = if reports
        .iter()
        .chain(std::iter::once(render_adapter))
        .any(|a| a.vendor_id == VENDOR_ID_NVIDIA)
    {
        nvidia_vram()
    } else {
        Vec::new()
    };
    Capabilities {
        hostname: sysinfo::System::host_name().unwrap_or_default(),
        os: sysinfo::System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.to_string()),
        cpu_brand,
        cpu_cores,
        memory_bytes,
        adapters: reports.iter().map(|a| adapter(a, &nvidia)).collect(),
        render_adapter: Some(adapter(render_adapter, &nvidia)),
        encoders: crate::encode::probe_encoders(),
        tags: Vec::new(),
        pool: String::new(),
        calibration: None,
        test_override: None,
    }
}

/// Applies the test aids to probed capabilities: `test_gpu` makes the
/// render adapter a discrete NVIDIA GPU of that name (the node still renders
/// on what it has), and a `slowdown_factor` above 1 is recorded. Either one
/// sets `test_override`, which says what was changed.
pub fn apply_test_aids(
    caps: &mut Capabilities,
    test_gpu: Option<&str>,
    slowdown_factor: f64,
    fail_frames: &[u64],
) {
    let mut changed = Vec::new();
    if let Some(name) = test_gpu {
        let real = caps
            .render_adapter
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_default();
        let backend = caps
            .render_adapter
            .as_ref()
            .map(|a| a.backend.clone())
            .unwrap_or_default();
        caps.render_adapter = Some(Adapter {
            name: name.to_string(),
            backend,
            device_type: DeviceType::DiscreteGpu,
            vendor: "nvidia".to_string(),
            vram_bytes: None,
        });
        changed.push(format!("test-gpu {name:?} (renders on {real:?})"));
    }
    if slowdown_factor > 1.0 {
        changed.push(format!("slowdown x{slowdown_factor}"));
    }
    if !fail_frames.is_empty() {
        changed.push(format!("fail-frame {fail_frames:?}"));
    }
    caps.test_override = (!changed.is_empty()).then(|| changed.join("; "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendors_by_id() {
        let check = |id: u32, want: &str| assert_eq!(vendor_name(id), want, "{id:#x}");
        check(0x10DE, "nvidia");
        check(0x1002, "amd");
        check(0x8086, "intel");
        check(0x106B, "apple");
        check(0x10005, "mesa");
        check(0, "");
        check(0x5143, "");
    }

    #[test]
    fn nvidia_smi_lines() {
        let out =
            "NVIDIA H100 80GB HBM3, 81559\nNVIDIA GeForce RTX 4090, 24564\n\nnot a line\nX, lots\n";
        let gpus = parse_nvidia_smi(out);
        assert_eq!(
            gpus,
            vec![
                ("NVIDIA H100 80GB HBM3".to_string(), 81559 << 20),
                ("NVIDIA GeForce RTX 4090".to_string(), 24564 << 20),
            ]
        );
        assert_eq!(
            vram_for("nvidia geforce rtx 4090", &gpus),
            Some(24564 << 20)
        );
        // Several GPUs and none of that name: no guess.
        assert_eq!(vram_for("NVIDIA A100", &gpus), None);
        // One GPU: its figure, whatever the driver calls it.
        assert_eq!(vram_for("NVIDIA A100", &gpus[..1]), Some(81559 << 20));
        assert_eq!(vram_for("NVIDIA A100", &[]), None);
    }

    #[test]
    fn a_missing_tool_is_no_figure() {
        let err = run_with_timeout(
            &mut Command::new("drover-no-such-tool"),
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let slow = run_with_timeout(Command::new("sleep").arg("5"), Duration::from_millis(100))
            .unwrap_err();
        assert_eq!(slow.kind(), std::io::ErrorKind::TimedOut);
    }

    #[test]
    fn test_aids_are_declared() {
        let lavapipe = Adapter {
            name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
            backend: "Vulkan".into(),
            device_type: DeviceType::Cpu,
            vendor: "mesa".into(),
            vram_bytes: None,
        };
        let base = Capabilities {
            render_adapter: Some(lavapipe.clone()),
            adapters: vec![lavapipe.clone()],
            ..Default::default()
        };
        let check = |gpu: Option<&str>, slowdown: f64, want: Option<&str>| {
            let mut caps = base.clone();
            apply_test_aids(&mut caps, gpu, slowdown, &[]);
            assert_eq!(caps.test_override.as_deref(), want);
            // The real adapter list is never rewritten.
            assert_eq!(caps.adapters, base.adapters);
            caps
        };
        check(None, 1.0, None);
        // Failing frames on purpose is a test aid too, and says so.
        let mut caps = base.clone();
        apply_test_aids(&mut caps, None, 1.0, &[17, 40]);
        assert_eq!(caps.test_override.as_deref(), Some("fail-frame [17, 40]"));
        check(None, 2.5, Some("slowdown x2.5"));
        let faked = check(
            Some("NVIDIA H100"),
            3.0,
            Some("test-gpu \"NVIDIA H100\" (renders on \"llvmpipe (LLVM 15.0.6, 256 bits)\"); slowdown x3"),
        );
        assert!(faked.renders_on_gpu());
        let ra = faked.render_adapter.unwrap();
        assert_eq!(ra.name, "NVIDIA H100");
        assert_eq!(ra.device_type, DeviceType::DiscreteGpu);
        assert_eq!(ra.vendor, "nvidia");
        assert_eq!(ra.backend, "Vulkan");
    }
}

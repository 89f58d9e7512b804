//! The pools file (`drover coordinator --pools PATH`, TOML).
//!
//! ```toml
//! [[pool]]
//! name = "cpu"
//! provider = "process"      # process | kubernetes | command
//! min = 0
//! max = 2
//! target_drain_s = 60       # scale up when the queue takes longer to drain
//! idle_cooldown_s = 120     # drain nodes idle longer than this
//! scale_up_cooldown_s = 30  # least time between two scale-ups
//! frame_s_estimate = 1.0    # a frame's time before the pool's nodes measured one
//! tags = ["blender"]        # the tags the pool's nodes will have
//! gpu = false               # whether they render on a GPU
//! [pool.process]
//! args = ["--slowdown", "2"]
//! ```

use drover_shared::caps::{Adapter, Capabilities, DeviceType};
use serde::Deserialize;

use super::policy::{PolicyConfig, DEFAULT_JOIN_TIMEOUT_MS};
use super::provider::{CommandConfig, KubernetesConfig, ProcessConfig};

/// Most pools in one file: each has a thread and a tick; a farm has a few.
pub const MAX_POOLS: usize = 32;

/// Most nodes one pool may ask for: a bound against a typo (`max =
/// 10000`) that would ask a cloud for thousands of instances.
pub const MAX_POOL_NODES: u32 = 1_000;

/// Longest a pool's drain target may be, seconds (a day): beyond that the
/// pool would never scale up.
pub const MAX_TARGET_DRAIN_S: f64 = 86_400.0;

/// Longest cooldown, seconds (a day).
pub const MAX_COOLDOWN_S: f64 = 86_400.0;

/// Longest pool name, bytes: nodes are named `POOL-N` and node names are
/// at most 64 bytes.
pub const MAX_POOL_NAME_BYTES: usize = 40;

/// The largest pools file read, bytes.
pub const MAX_POOLS_FILE_BYTES: u64 = 256 * 1024;

/// Longest command timeout, seconds (an hour).
pub const MAX_COMMAND_TIMEOUT_S: u64 = 3_600;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsFile {
    /// The pools.
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
}

/// Which provider a pool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Local `drover node` processes.
    Process,
    /// A Kubernetes Deployment or StatefulSet.
    Kubernetes,
    /// Admin-given shell commands.
    Command,
}

impl ProviderKind {
    /// Its name in the file.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Process => "process",
            ProviderKind::Kubernetes => "kubernetes",
            ProviderKind::Command => "command",
        }
    }
}

/// One pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The pool's name: its nodes join with `--pool NAME`.
    pub name: String,
    /// Which provider adds and removes its nodes.
    pub provider: ProviderKind,
    /// Fewest nodes.
    #[serde(default)]
    pub min: u32,
    /// Most nodes.
    pub max: u32,
    /// Scale up when the pool's queue would take longer than this to
    /// drain, seconds.
    #[serde(default = "default_target_drain_s")]
    pub target_drain_s: f64,
    /// Drain and remove nodes idle longer than this, seconds.
    #[serde(default = "default_idle_cooldown_s")]
    pub idle_cooldown_s: f64,
    /// Least time between two scale-ups, seconds.
    #[serde(default = "default_scale_up_cooldown_s")]
    pub scale_up_cooldown_s: f64,
    /// How long a node asked for may take to join before it no longer
    /// counts as starting, seconds.
    #[serde(default)]
    pub join_timeout_s: Option<f64>,
    /// A frame's render time on one of the pool's nodes before any of them
    /// measured one, seconds.
    #[serde(default = "default_frame_s_estimate")]
    pub frame_s_estimate: f64,
    /// Tags the pool's nodes will have.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The pool's nodes render on a GPU.
    #[serde(default)]
    pub gpu: bool,
    /// Encoders the pool's nodes will have (default: `libx264`, which
    /// every node has).
    #[serde(default)]
    pub encoders: Vec<String>,
    /// The `process` provider's settings.
    #[serde(default)]
    pub process: Option<ProcessConfig>,
    /// The `command` provider's settings.
    #[serde(default)]
    pub command: Option<CommandConfig>,
    /// The `kubernetes` provider's settings.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
}

fn default_target_drain_s() -> f64 {
    300.0
}
fn default_idle_cooldown_s() -> f64 {
    300.0
}
fn default_scale_up_cooldown_s() -> f64 {
    60.0
}
fn default_frame_s_estimate() -> f64 {
    1.0
}

/// A pools file that cannot be used: the field and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("pools file {path}: {field}: {message}")]
pub struct PoolsError {
    /// The file.
    pub path: String,
    /// The field (`pool[1].max`).
    pub field: String,
    /// What is wrong, with the limit.
    pub message: String,
}

impl PoolConfig {
    /// The policy's tunables.
    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            min: self.min,
            max: self.max,
            target_drain_s: self.target_drain_s,
            scale_up_cooldown_ms: (self.scale_up_cooldown_s * 1000.0) as u64,
            idle_cooldown_ms: (self.idle_cooldown_s * 1000.0) as u64,
            join_timeout_ms: self
                .join_timeout_s
                .map_or(DEFAULT_JOIN_TIMEOUT_MS, |s| (s * 1000.0) as u64),
        }
    }

    /// The capabilities the pool's nodes will have, to match jobs while
    /// the pool has no node. Hardware a job may ask for that the file does
    /// not describe (a GPU vendor, VRAM) counts as present: the pool is
    /// the admin's promise, and a job no pool could run would otherwise
    /// never start a node. Once a node joined, its real capabilities are
    /// used instead.
    pub fn declared_caps(&self) -> Capabilities {
        let adapter = Adapter {
            name: format!("pool {}", self.name),
            backend: String::new(),
            device_type: if self.gpu {
                DeviceType::DiscreteGpu
            } else {
                DeviceType::Cpu
            },
            vendor: String::new(),
            vram_bytes: None,
        };
        Capabilities {
            render_adapter: Some(adapter),
            encoders: if self.encoders.is_empty() {
                vec!["libx264".into()]
            } else {
                self.encoders.clone()
            },
            tags: self.tags.clone(),
            pool: self.name.clone(),
            cpu_cores: u32::MAX,
            memory_bytes: u64::MAX,
            ..Capabilities::default()
        }
    }
}

/// Reads and checks a pools file.
pub fn load(path: &std::path::Path) -> Result<Vec<PoolConfig>, PoolsError> {
    let err = |field: &str, message: String| PoolsError {
        path: path.display().to_string(),
        field: field.to_string(),
        message,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err("(file)", e.to_string()))?
        .len();
    if len > MAX_POOLS_FILE_BYTES {
        return Err(err(
            "(file)",
            format!("{len} bytes; the limit is {MAX_POOLS_FILE_BYTES}"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err("(file)", e.to_string()))?;
    parse(&text).map_err(|(field, message)| err(&field, message))
}

/// Parses and checks a pools file's text; an error names the field.
pub fn parse(text: &str) -> Result<Vec<PoolConfig>, (String, String)> {
    let file: PoolsFile = toml::from_str(text).map_err(|e| {
        (
            "(toml)".to_string(),
            e.to_string().trim().replace('\n', " "),
        )
    })?;
    if file.pool.len() > MAX_POOLS {
        return Err((
            "pool".into(),
            format!("{} pools; the limit is {MAX_POOLS}", file.pool.len()),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in file.pool.iter().enumerate() {
        let f = |name: &str| format!("pool[{i}].{name}");
        let bad = |name: &str, m: String| Err((f(name), m));
        if p.name.is_empty()
            || p.name.len() > MAX_POOL_NAME_BYTES
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(
                "name",
                format!(
                    "{:?}: 1..={MAX_POOL_NAME_BYTES} bytes of letters, digits, '-' and '_'",
                    p.name
                ),
            );
        }
        if !names.insert(p.name.clone()) {
            return bad("name", format!("{:?} is named twice", p.name));
        }
        if p.max == 0 || p.max > MAX_POOL_NODES {
            return bad("max", format!("{}; it must be 1..={MAX_POOL_NODES}", p.max));
        }
        if p.min > p.max {
            return bad("min", format!("{} is above max ({})", p.min, p.max));
        }
        let secs = [
            ("target_drain_s", p.target_drain_s, 1.0, MAX_TARGET_DRAIN_S),
            ("idle_cooldown_s", p.idle_cooldown_s, 0.0, MAX_COOLDOWN_S),
            (
                "scale_up_cooldown_s",
                p.scale_up_cooldown_s,
                0.0,
                MAX_COOLDOWN_S,
            ),
            ("frame_s_estimate", p.frame_s_estimate, 0.001, 3_600.0),
            (
                "join_timeout_s",
                p.join_timeout_s.unwrap_or(60.0),
                1.0,
                MAX_COOLDOWN_S,
            ),
        ];
        for (name, v, lo, hi) in secs {
            if !(lo..=hi).contains(&v) {
                return bad(name, format!("{v}; it must be {lo}..={hi}"));
            }
        }
        let section = match p.provider {
            ProviderKind::Process => p.command.is_none() && p.kubernetes.is_none(),
            ProviderKind::Command => p.command.is_some() && p.kubernetes.is_none(),
            ProviderKind::Kubernetes => p.kubernetes.is_some() && p.command.is_none(),
        };
        if !section || (p.process.is_some() && p.provider != ProviderKind::Process) {
            return bad(
                "provider",
                format!(
                    "{:?} needs its own section [pool.{}] and no other provider's",
                    p.provider.name(),
                    p.provider.name()
                ),
            );
        }
        if let Some(c) = &p.command {
            if c.add_command.trim().is_empty() {
                return bad("command.add_command", "empty".into());
            }
            if c.remove_command.trim().is_empty() {
                return bad("command.remove_command", "empty".into());
            }
            if let Some(t) = c.timeout_s {
                if !(1..=MAX_COMMAND_TIMEOUT_S).contains(&t) {
                    return bad(
                        "command.timeout_s",
                        format!("{t}; it must be 1..={MAX_COMMAND_TIMEOUT_S}"),
                    );
                }
            }
        }
    }
    Ok(file.pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, want: Result<usize, &str>) {
        match (parse(text), want) {
            (Ok(p), Ok(n)) => assert_eq!(p.len(), n),
            (Err((field, msg)), Err(w)) => {
                let got = format!("{field}: {msg}");
                assert!(got.contains(w), "{got:?} does not contain {w:?}");
            }
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    const OK: &str = "[[pool]]\nname = \"cpu\"\nprovider = \"process\"\nmax = 2\n";

    #[test]
    fn pools_files() {
        check("", Ok(0));
        check(OK, Ok(1));
        check(&format!("{OK}{}", OK.replace("cpu", "gpu")), Ok(2));
        check(
            &format!("{OK}{OK}"),
            Err("pool[1].name: \"cpu\" is named twice"),
        );
        check(
            &OK.replace("max = 2", "max = 0"),
            Err("pool[0].max: 0; it must be 1..=1000"),
        );
        check(
            &OK.replace("max = 2", "max = 2\nmin = 3"),
            Err("pool[0].min: 3 is above max (2)"),
        );
        check(&OK.replace("cpu", "a b"), Err("pool[0].name"));
        check(
            &OK.replace("max = 2", "max = 2\ntarget_drain_s = 0"),
            Err("pool[0].target_drain_s: 0; it must be 1..=86400"),
        );
        check(
            &OK.replace("max = 2", "max = 2\nsize = 3"),
            Err("unknown field `size`"),
        );
        check(&OK.replace("process", "cloud"), Err("(toml)"));
        check(
            &OK.replace("process", "command"),
            Err("pool[0].provider: \"command\" needs its own section"),
        );
        check(
            &OK.replace("process", "command").replace("max = 2", "max = 2\n[pool.command]\nadd_command = \"x\"\nremove_command = \"y\"\ntimeout_s = 0"),
            Err("pool[0].command.timeout_s: 0; it must be 1..=3600"),
        );
        check(
            &OK.replace("process", "kubernetes").replace("max = 2", "max = 2\n[pool.kubernetes]\nnamespace = \"farm\"\nkind = \"Deployment\"\nname = \"nodes\""),
            Ok(1),
        );
    }
}

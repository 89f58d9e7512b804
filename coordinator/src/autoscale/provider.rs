//! The autoscaler's providers: what actually adds and removes a pool's nodes.
//!
//! A [`Provider`] is a blocking interface: the autoscaler's driver calls it
//! from its own thread, never from the actix thread, because starting a
//! process, running an admin's cloud command or talking to the Kubernetes
//! API may each take seconds.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Adds and removes the nodes of one pool.
///
/// Every call is blocking and is made off the actix thread.
pub trait Provider: Send + 'static {
    /// `process`, `kubernetes` or `command`.
    fn kind(&self) -> &'static str;
    /// Asks for `count` more nodes in the pool.
    fn add(&mut self, count: u32) -> Result<(), ProviderError>;
    /// Removes this node (named as it joins the farm), which the autoscaler has drained and which is idle.
    fn remove(&mut self, node: &str) -> Result<(), ProviderError>;
    /// How many nodes the provider has asked for and not removed (Kubernetes: the replica count).
    fn requested(&mut self) -> Result<u32, ProviderError>;
    /// Whether [`Provider::remove`] could remove `node` given the pool's
    /// connected `nodes` (it among them). The policy drains only such
    /// nodes: a node drained that can never be removed (a StatefulSet's
    /// pod below its highest ordinal) would stay drained for ever. Most
    /// providers remove any of their nodes.
    fn removable(&self, _node: &str, _nodes: &[&str]) -> bool {
        true
    }
    /// What the last call printed, for the decision's journal entry (the
    /// `command` provider's captured output); `None` when there is none.
    fn last_output(&mut self) -> Option<String> {
        None
    }
}

/// Why a provider could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The pool's provider configuration is wrong (a missing field, a
    /// value out of range, a kind this build does not know).
    #[error("pool {pool}: provider config: {message}")]
    Config {
        /// The pool.
        pool: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// Starting, stopping or waiting for a local process failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done, e.g. `spawning drover node for pool gpu`.
        action: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An admin-given command ran and failed (non-zero exit or timeout).
    ///
    /// The error names the command's field, never its text: decisions
    /// carry errors to every API key, and an admin's command line may hold
    /// credentials.
    #[error("pool {pool}: {field} failed: {message}; output: {output}")]
    Command {
        /// The pool.
        pool: String,
        /// Which command: `add_command` or `remove_command`.
        field: &'static str,
        /// The exit status or `timed out after N s`.
        message: String,
        /// The command's captured output (stdout then stderr), truncated.
        output: String,
    },
    /// The provider's remote API (Kubernetes) refused or failed a request.
    #[error("{operation}: {message}")]
    Api {
        /// The request, e.g. `PATCH deployments/render/scale`.
        operation: String,
        /// The answer's status and message.
        message: String,
    },
    /// The node to remove is not one this provider started.
    #[error("pool {pool}: node {node} is not one of this provider's nodes")]
    UnknownNode {
        /// The pool.
        pool: String,
        /// The node named.
        node: String,
    },
}

/// Which kind of Kubernetes workload holds a pool's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WorkloadKind {
    /// An `apps/v1` Deployment (scaled through `deployments/{name}/scale`).
    Deployment,
    /// An `apps/v1` StatefulSet (scaled through `statefulsets/{name}/scale`).
    StatefulSet,
}

/// The `kubernetes` provider's part of a pool's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The namespace of the workload.
    pub namespace: String,
    /// Deployment or StatefulSet.
    pub kind: WorkloadKind,
    /// The workload's name.
    pub name: String,
    /// The API server's URL; absent means in-cluster configuration (or
    /// the kubeconfig when run outside a cluster).
    #[serde(default)]
    pub api_url: Option<String>,
}

/// Longest an admin's `add_command` or `remove_command` may run when the
/// pool names no `timeout_s`: a cloud CLI that creates an instance answers
/// within minutes; one hung on a prompt must not stop the pool's scaling.
pub const DEFAULT_COMMAND_TIMEOUT_S: u64 = 300;

/// Most of a command's output kept in its decision, bytes (the end of it:
/// errors come last). Decisions are kept in a bounded journal; a chatty
/// CLI must not fill it.
pub const MAX_OUTPUT_BYTES: usize = 4 * 1024;

/// Longest a removed node agent is given to drain and exit after SIGTERM
/// before it is killed. The autoscaler removes only idle nodes, which
/// leave in well under a second; this covers a spool still uploading.
pub const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a waiting provider looks at its child again.
const POLL: Duration = Duration::from_millis(20);

/// The `process` provider's part of a pool's configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// More arguments for each `drover node` (e.g. `--slowdown 2`).
    #[serde(default)]
    pub args: Vec<String>,
    /// The `drover` binary to run (default: the coordinator's own).
    #[serde(default)]
    pub binary: Option<PathBuf>,
}

/// The `command` provider's part of a pool's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Run through `sh -c` to add nodes; `DROVER_POOL` and `DROVER_COUNT`
    /// are set.
    pub add_command: String,
    /// Run through `sh -c` to remove a node; `DROVER_POOL` and
    /// `DROVER_NODE` are set.
    pub remove_command: String,
    /// Longest either command may run, seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// One node agent the `process` provider started.
struct NodeChild {
    child: Child,
}

/// Starts and stops local `drover node` agents: the pool of a single
/// machine, the tests' and `drover demo --autoscale`'s provider.
///
/// Each node is `drover node --pool POOL --name POOL-N --data
/// DATA/pools/POOL/N` with the pool's join token in its environment (the
/// token carries the coordinator's address and certificate). Removal is
/// SIGTERM (the node drains itself and leaves) and a reap. Dropping the
/// provider (coordinator shutdown) stops every child it started.
pub struct ProcessProvider {
    pool: String,
    binary: PathBuf,
    args: Vec<String>,
    join_token: String,
    dir: PathBuf,
    children: BTreeMap<String, NodeChild>,
    /// The next node number: names are never reused within a pool's data
    /// dir, so a removed node's records (drained, identity) never meet a
    /// new node.
    next: u64,
}

impl ProcessProvider {
    /// A provider for `pool` whose nodes keep their data under `dir`
    /// (`DATA/pools/POOL`) and join with `join_token`.
    pub fn new(
        pool: &str,
        cfg: &ProcessConfig,
        dir: &Path,
        join_token: String,
    ) -> Result<ProcessProvider, ProviderError> {
        let binary = match &cfg.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe().map_err(|source| ProviderError::Io {
                action: "finding the drover binary".into(),
                source,
            })?,
        };
        std::fs::create_dir_all(dir).map_err(|source| ProviderError::Io {
            action: format!("creating {}", dir.display()),
            source,
        })?;
        let next = std::fs::read_to_string(dir.join("next"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1);
        Ok(ProcessProvider {
            pool: pool.to_string(),
            binary,
            args: cfg.args.clone(),
            join_token,
            dir: dir.to_path_buf(),
            children: BTreeMap::new(),
            next,
        })
    }

    /// Reaps children that exited by themselves.
    fn reap(&mut self) {
        self.children
            .retain(|_, c| matches!(c.child.try_wait(), Ok(None)));
    }

    fn spawn_one(&mut self) -> Result<(), ProviderError> {
        let n = self.next;
        self.next += 1;
        // Written before the node starts, so a crash never gives its name
        // to another node.
        let io = |action: String| move |source| ProviderError::Io { action, source };
        std::fs::write(self.dir.join("next"), self.next.to_string())
            .map_err(io(format!("writing {}", self.dir.join("next").display())))?;
        let name = format!("{}-{n}", self.pool);
        let data = self.dir.join(n.to_string());
        std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
        let log = std::fs::File::create(data.join("node.log"))
            .map_err(io(format!("creating {}", data.join("node.log").display())))?;
        let err = log
            .try_clone()
            .map_err(io("duplicating the log file".into()))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("node")
            .arg("--pool")
            .arg(&self.pool)
            .arg("--name")
            .arg(&name)
            .arg("--data")
            .arg(&data)
            .args(&self.args)
            // In the environment, not the argument list: the process list
            // is readable by every user of the machine.
            .env("DROVER_JOIN_TOKEN", &self.join_token)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        // A node outlives no coordinator: if the thread that started it
        // (the pool's driver) dies, so does the node.
        #[cfg(target_os = "linux")]
        // SAFETY: the closure runs between fork and exec and only calls
        // prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io(format!(
            "starting {} node for pool {}",
            self.binary.display(),
            self.pool
        )))?;
        tracing::info!(pool = %self.pool, node = %name, pid = child.id(), "node agent started");
        self.children.insert(name, NodeChild { child });
        Ok(())
    }

    /// SIGTERMs a child and waits for it, killing its process group after
    /// [`NODE_STOP_TIMEOUT`].
    fn stop(name: &str, mut c: NodeChild) -> Result<(), ProviderError> {
        let pid = c.child.id() as libc::pid_t;
        // SAFETY: kill(2) on a child we started and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + NODE_STOP_TIMEOUT;
        loop {
            match c.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => {
                    tracing::warn!(node = %name, "node did not leave after SIGTERM; killing it");
                    // SAFETY: the child's own process group (process_group(0)).
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    let _ = c.child.wait();
                    return Ok(());
                }
                Err(source) => {
                    return Err(ProviderError::Io {
                        action: format!("waiting for node {name}"),
                        source,
                    })
                }
            }
        }
    }
}

impl Provider for ProcessProvider {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn add(&mut self, count: u32) -> Result<(), ProviderError> {
        for _ in 0..count {
            self.spawn_one()?;
        }
        Ok(())
    }

    fn remove(&mut self, node: &str) -> Result<(), ProviderError> {
        self.reap();
        let Some(c) = self.children.remove(node) else {
            // Already gone by itself: what was asked is true.
            return if self.known(node) {
                Ok(())
            } else {
                Err(ProviderError::UnknownNode {
                    pool: self.pool.clone(),
                    node: node.to_string(),
                })
            };
        };
        Self::stop(node, c)?;
        tracing::info!(pool = %self.pool, node, "node agent stopped");
        Ok(())
    }

    fn requested(&mut self) -> Result<u32, ProviderError> {
        self.reap();
        Ok(self.children.len() as u32)
    }
}

impl ProcessProvider {
    /// Whether `node` is a name this provider gave.
    fn known(&self, node: &str) -> bool {
        node.strip_prefix(&self.pool)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n < self.next)
    }

    /// The names of the node agents running now.
    pub fn running(&mut self) -> Vec<String> {
        self.reap();
        self.children.keys().cloned().collect()
    }
}

impl Drop for ProcessProvider {
    fn drop(&mut self) {
        // Every child at once, then the waits: shutdown takes one node's
        // drain, not the sum.
        for c in self.children.values() {
            // SAFETY: kill(2) on children we started and have not reaped.
            unsafe { libc::kill(c.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let children = std::mem::take(&mut self.children);
        for (name, c) in children {
            let _ = Self::stop(&name, c);
        }
    }
}

/// Runs admin-given shell commands to add and remove nodes: any cloud's
/// CLI (`aws ec2 run-instances ...`, `gcloud compute instances create
/// ...`).
///
/// The provider cannot ask the cloud how many nodes it holds, so
/// [`Provider::requested`] is its own count: nodes added minus nodes
/// removed since the coordinator started, plus the nodes of the pool that
/// were connected then.
pub struct CommandProvider {
    pool: String,
    cfg: CommandConfig,
    log: PathBuf,
    count: u32,
    last_output: Option<String>,
}

impl CommandProvider {
    /// A provider for `pool`; a command's output goes to a file under
    /// `dir` while it runs (so no pipe can fill and block it).
    pub fn new(
        pool: &str,
        cfg: &CommandConfig,
        dir: &Path,
        count: u32,
    ) -> Result<Self, ProviderError> {
        std::fs::create_dir_all(dir).map_err(|source| ProviderError::Io {
            action: format!("creating {}", dir.display()),
            source,
        })?;
        Ok(CommandProvider {
            pool: pool.to_string(),
            cfg: cfg.clone(),
            log: dir.join("command.log"),
            count,
            last_output: None,
        })
    }

    /// Runs the command of `field` (`add_command` or `remove_command`);
    /// errors name the field, not the command's text (see
    /// [`ProviderError::Command`]).
    fn run(
        &mut self,
        field: &'static str,
        command: &str,
        env: &[(&str, String)],
    ) -> Result<(), ProviderError> {
        let io = |action: String| move |source| ProviderError::Io { action, source };
        let out = std::fs::File::create(&self.log)
            .map_err(io(format!("creating {}", self.log.display())))?;
        let err = out
            .try_clone()
            .map_err(io("duplicating the log file".into()))?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .env("DROVER_POOL", &self.pool)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(io(format!("running {field} for pool {}", self.pool)))?;
        let timeout = Duration::from_secs(self.cfg.timeout_s.unwrap_or(DEFAULT_COMMAND_TIMEOUT_S));
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => {
                    // SAFETY: the child's own process group (process_group(0)).
                    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                    let _ = child.wait();
                    break None;
                }
                Err(e) => return Err(io(format!("waiting for {field}"))(e)),
            }
        };
        let output = tail(&self.log);
        self.last_output = Some(output.clone());
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(ProviderError::Command {
                pool: self.pool.clone(),
                field,
                message: format!("exited with {s}"),
                output,
            }),
            None => Err(ProviderError::Command {
                pool: self.pool.clone(),
                field,
                message: format!("timed out after {} s", timeout.as_secs()),
                output,
            }),
        }
    }
}

/// The last [`MAX_OUTPUT_BYTES`] of a file, as text.
fn tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let skip = len.saturating_sub(MAX_OUTPUT_BYTES as u64);
    let _ = f.seek(std::io::SeekFrom::Start(skip));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim_end().to_string()
}

impl Provider for CommandProvider {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn add(&mut self, count: u32) -> Result<(), ProviderError> {
        let cmd = self.cfg.add_command.clone();
        self.run("add_command", &cmd, &[("DROVER_COUNT", count.to_string())])?;
        self.count += count;
        Ok(())
    }

    fn remove(&mut self, node: &str) -> Result<(), ProviderError> {
        let cmd = self.cfg.remove_command.clone();
        self.run(
            "remove_command",
            &cmd,
            &[
                ("DROVER_NODE", node.to_string()),
                ("DROVER_COUNT", "1".into()),
            ],
        )?;
        self.count = self.count.saturating_sub(1);
        Ok(())
    }

    fn requested(&mut self) -> Result<u32, ProviderError> {
        Ok(self.count)
    }

    fn last_output(&mut self) -> Option<String> {
        self.last_output.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(dir: &Path, add: &str, remove: &str, timeout_s: Option<u64>) -> CommandProvider {
        let cfg = CommandConfig {
            add_command: add.into(),
            remove_command: remove.into(),
            timeout_s,
        };
        CommandProvider::new("gpu", &cfg, dir, 0).unwrap()
    }

    #[test]
    fn command_provider_passes_the_pool_node_and_count_and_keeps_output() {
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls");
        let add = format!(
            "echo add $DROVER_POOL $DROVER_COUNT >> {}; echo started",
            calls.display()
        );
        let remove = format!(
            "echo remove $DROVER_POOL $DROVER_NODE >> {}",
            calls.display()
        );
        let mut p = provider(dir.path(), &add, &remove, None);
        p.add(3).unwrap();
        assert_eq!(p.last_output().as_deref(), Some("started"));
        assert_eq!(p.requested().unwrap(), 3);
        p.remove("gpu-7").unwrap();
        assert_eq!(p.requested().unwrap(), 2);
        let text = std::fs::read_to_string(&calls).unwrap();
        assert_eq!(text, "add gpu 3\nremove gpu gpu-7\n");
    }

    #[test]
    fn a_failing_command_is_an_error_with_its_status_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = provider(dir.path(), "echo quota exceeded >&2; exit 3", "true", None);
        let e = p.add(1).unwrap_err().to_string();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains("quota exceeded"), "{e}");
        assert_eq!(p.requested().unwrap(), 0);
    }

    #[test]
    fn a_failing_commands_error_names_its_field_not_its_text() {
        // The command lines hold a secret; the errors (which decisions show
        // to every API key) name the field instead.
        let dir = tempfile::tempdir().unwrap();
        let mut p = provider(
            dir.path(),
            "TOKEN=s3cret-add; exit 1",
            "TOKEN=s3cret-remove; exit 2",
            None,
        );
        let e = p.add(1).unwrap_err().to_string();
        assert!(e.contains("pool gpu: add_command failed"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = p.remove("gpu-1").unwrap_err().to_string();
        assert!(e.contains("pool gpu: remove_command failed"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert_eq!(p.requested().unwrap(), 0);
    }

    #[test]
    fn a_hung_command_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = provider(dir.path(), "echo waiting; sleep 30", "true", Some(1));
        let started = Instant::now();
        let e = p.add(1).unwrap_err().to_string();
        assert!(e.contains("timed out after 1 s"), "{e}");
        assert!(e.contains("waiting"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

//! A local farm of real `drover` processes: one coordinator and N nodes on
//! loopback, each with its own data dir and log file. Used by `drover demo`,
//! the benchmarks and the end-to-end tests, so all three exercise exactly
//! the binaries users run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_shared::config::ADDRS_FILE;

use crate::client::Client;

/// How long the coordinator may take to bind and write its addresses.
pub const COORDINATOR_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long nodes may take to probe and connect (the probe opens the GPU
/// and test-encodes).
pub const NODES_START_TIMEOUT: Duration = Duration::from_secs(90);

/// What the coordinator wrote to its address file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Addrs {
    /// REST address.
    pub http: std::net::SocketAddr,
    /// QUIC address.
    pub quic: std::net::SocketAddr,
    /// Certificate fingerprint.
    pub cert_sha256: String,
    /// Certificate path.
    pub cert_path: PathBuf,
}

/// A running local farm. Dropping it kills every process.
pub struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    coordinator: Option<Child>,
    nodes: Vec<(String, Child)>,
    /// Where the coordinator listens.
    pub addrs: Addrs,
    extra_env: Vec<(String, String)>,
    coordinator_args: Vec<String>,
}

fn spawn_logged(
    bin: &Path,
    args: &[String],
    log: &Path,
    env: &[(String, String)],
) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))
}

/// Waits until `cond` returns `Some`, checking every 20 ms, or fails after
/// `timeout` with `what`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Cluster {
    /// Starts a coordinator under `root/coordinator` on loopback ports the OS
    /// picks. `coordinator_args` are added to its command line.
    pub fn start(
        bin: &Path,
        root: &Path,
        coordinator_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(root)?;
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            root: root.to_path_buf(),
            coordinator: None,
            nodes: Vec::new(),
            addrs: Addrs {
                http: ([127, 0, 0, 1], 0).into(),
                quic: ([127, 0, 0, 1], 0).into(),
                cert_sha256: String::new(),
                cert_path: PathBuf::new(),
            },
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            coordinator_args: coordinator_args.iter().map(|s| s.to_string()).collect(),
        };
        cluster.spawn_coordinator()?;
        Ok(cluster)
    }

    fn spawn_coordinator(&mut self) -> anyhow::Result<()> {
        let data = self.root.join("coordinator");
        // Port 0 on first start; a restart keeps the ports it had, as a
        // restarted production coordinator does, so nodes can reconnect.
        let mut args: Vec<String> = vec![
            "coordinator".into(),
            "--data".into(),
            data.display().to_string(),
            "--http".into(),
            self.addrs.http.to_string(),
            "--quic".into(),
            self.addrs.quic.to_string(),
        ];
        args.extend(self.coordinator_args.iter().cloned());
        let log = self.root.join("coordinator.log");
        // Keep earlier logs of a restarted coordinator.
        if log.exists() {
            let old = std::fs::read(&log)?;
            std::fs::write(self.root.join("coordinator.previous.log"), old)?;
        }
        let mut child = spawn_logged(&self.bin, &args, &log, &self.extra_env)?;
        let addrs_file = data.join(ADDRS_FILE);
        let _ = std::fs::remove_file(&addrs_file);
        let addrs = wait_for(
            COORDINATOR_START_TIMEOUT,
            "the coordinator to start",
            || {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "coordinator exited with {status}; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                match std::fs::read(&addrs_file) {
                    Ok(bytes) => Ok(Some(serde_json::from_slice::<Addrs>(&bytes)?)),
                    Err(_) => Ok(None),
                }
            },
        )?;
        self.coordinator = Some(child);
        self.addrs = addrs;
        Ok(())
    }

    /// Stops the coordinator (SIGTERM, so it shuts down cleanly) and starts
    /// it again on the same data dir and the same ports; running nodes
    /// reconnect by themselves.
    pub fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.coordinator.take() {
            terminate(vec![c]);
        }
        self.spawn_coordinator()
    }

    /// Restarts the coordinator with other arguments (a scheduling
    /// strategy, say); nodes reconnect by themselves.
    pub fn restart_coordinator_with(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.coordinator_args = args.iter().map(|s| s.to_string()).collect();
        self.restart_coordinator()
    }

    /// The REST base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addrs.http)
    }

    /// A REST client.
    pub fn client(&self) -> Client {
        Client::new(&self.url())
    }

    /// Starts a node named `name` pinned to the coordinator's certificate.
    pub fn add_node(&mut self, name: &str) -> anyhow::Result<()> {
        self.add_node_with(name, &[])
    }

    /// Starts a node with extra arguments (`--slowdown 5`, `--tags a`).
    pub fn add_node_with(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<()> {
        let mut args: Vec<String> = vec![
            "node".into(),
            "--coordinator".into(),
            self.addrs.quic.to_string(),
            "--cert".into(),
            self.addrs.cert_path.display().to_string(),
            "--data".into(),
            self.root.join(name).display().to_string(),
            "--name".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = spawn_logged(
            &self.bin,
            &args,
            &self.root.join(format!("{name}.log")),
            &self.extra_env,
        )?;
        self.nodes.push((name.to_string(), child));
        Ok(())
    }

    /// Waits until `count` nodes are connected.
    pub fn wait_nodes(&mut self, count: usize) -> anyhow::Result<()> {
        let client = self.client();
        let root = self.root.clone();
        let nodes = &mut self.nodes;
        wait_for(NODES_START_TIMEOUT, "the nodes to connect", || {
            for (name, child) in nodes.iter_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "node {name} exited with {status}; log:\n{}",
                        std::fs::read_to_string(root.join(format!("{name}.log")))
                            .unwrap_or_default()
                    );
                }
            }
            let up = client.nodes()?.iter().filter(|n| n.connected).count();
            Ok((up >= count).then_some(()))
        })
    }

    /// SIGKILLs node `name` (fault injection).
    pub fn kill_node(&mut self, name: &str) -> anyhow::Result<()> {
        let (_, child) = self
            .nodes
            .iter_mut()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no node {name}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// The log of a process (`coordinator` or a node name).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Stops every process: SIGTERM first so the coordinator flushes its
    /// journal, SIGKILL for whatever is still running after two seconds.
    pub fn stop(&mut self) {
        let mut all: Vec<Child> = self.nodes.drain(..).map(|(_, c)| c).collect();
        all.extend(self.coordinator.take());
        terminate(all);
    }
}

/// SIGTERM, then SIGKILL after two seconds.
fn terminate(children: Vec<Child>) {
    for c in &children {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    for mut c in children {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

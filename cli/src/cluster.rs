//! A local farm of real `drover` processes: one coordinator and N nodes on
//! loopback, each with its own data dir and log file. Used by `drover demo`,
//! the benchmarks and the end-to-end tests, so all three exercise exactly
//! the binaries users run.

use std::os::unix::process::CommandExt as _;
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

/// A node process of the farm and how to start it again.
struct NodeProc {
    name: String,
    /// Arguments beyond the coordinator, certificate, data dir and name.
    extra: Vec<String>,
    /// `None` after [`Cluster::kill_node`] until [`Cluster::start_node`].
    child: Option<Child>,
    /// Stopped with SIGSTOP and not yet continued.
    frozen: bool,
}

/// A running local farm. Dropping it kills every process.
///
/// Each process logs to `root/NAME.log` (`coordinator.log` for the
/// coordinator); when a process is started again, the previous log is kept
/// as `root/NAME.K.log` (K = 1, 2, ...), so every incarnation's log survives
/// ([`Cluster::log_files`]).
pub struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    coordinator: Option<Child>,
    nodes: Vec<NodeProc>,
    /// Where the coordinator listens.
    pub addrs: Addrs,
    extra_env: Vec<(String, String)>,
    coordinator_args: Vec<String>,
    /// The join token nodes start with (made on the first start).
    join_token: Option<String>,
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
    // Its own process group, so that a kill or a freeze reaches whatever it
    // started too (a node's executor process), as a machine's crash would.
    cmd.process_group(0);
    // Out of the caller's group, a Ctrl-C no longer reaches it; so it dies
    // with the thread that started it (the test's or the benchmark's),
    // however that ends, instead of outliving it.
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs between fork and exec and only calls
    // prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))
}

/// Sends `signal` to the process group `child` leads (see [`spawn_logged`]).
fn signal_group(child: &Child, signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) on the group of a child we spawned as its leader and
    // have not reaped, so the group id is still ours.
    if unsafe { libc::kill(-(child.id() as libc::pid_t), signal) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILLs `child`'s whole process group and reaps `child`.
fn kill_group(mut child: Child) -> std::io::Result<()> {
    signal_group(&child, libc::SIGKILL)?;
    child.wait()?;
    Ok(())
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
            join_token: None,
        };
        cluster.spawn_coordinator()?;
        let token = cluster
            .create_join_token(None)
            .context("creating the farm's join token")?;
        cluster.join_token = Some(token);
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
            "--admin-key-file".into(),
            self.admin_key_file().display().to_string(),
        ];
        args.extend(self.coordinator_args.iter().cloned());
        let log = self.root.join("coordinator.log");
        // Keep earlier logs of a restarted coordinator: the last one under a
        // fixed name, and every one under its incarnation's number.
        if log.exists() {
            std::fs::copy(&log, self.root.join("coordinator.previous.log"))?;
            self.keep_log("coordinator")?;
        }
        // Removed before the start, so that the file read below can only be
        // the new process's.
        let addrs_file = data.join(ADDRS_FILE);
        let _ = std::fs::remove_file(&addrs_file);
        let mut child = spawn_logged(&self.bin, &args, &log, &self.extra_env)?;
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

    /// Renames `root/NAME.log` to the first free `root/NAME.K.log`.
    fn keep_log(&self, name: &str) -> anyhow::Result<()> {
        let current = self.root.join(format!("{name}.log"));
        let kept = (1..)
            .map(|k| self.root.join(format!("{name}.{k}.log")))
            .find(|p| !p.exists())
            .expect("some incarnation number is free");
        std::fs::rename(&current, &kept)
            .with_context(|| format!("keeping {} as {}", current.display(), kept.display()))
    }

    /// Every log of process `name` (`coordinator` or a node name), one per
    /// incarnation, oldest first; the last is the running one's.
    pub fn log_files(&self, name: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = (1..)
            .map(|k| self.root.join(format!("{name}.{k}.log")))
            .take_while(|p| p.exists())
            .collect();
        let current = self.root.join(format!("{name}.log"));
        if current.exists() {
            files.push(current);
        }
        files
    }

    /// The farm's directory: data dirs and logs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// SIGKILLs the coordinator (fault injection: no graceful shutdown, no
    /// journal flush) and reaps it. Start it again with
    /// [`Cluster::start_coordinator`].
    pub fn kill_coordinator(&mut self) -> anyhow::Result<()> {
        let c = self
            .coordinator
            .take()
            .context("the coordinator is not running")?;
        kill_group(c).context("SIGKILL to the coordinator")
    }

    /// Starts the coordinator again after [`Cluster::kill_coordinator`], on
    /// the same data dir, ports and arguments, and waits until it listens.
    pub fn start_coordinator(&mut self) -> anyhow::Result<()> {
        if self.coordinator.is_some() {
            bail!("the coordinator is already running");
        }
        self.spawn_coordinator()
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

    /// Creates a join token (for `pool`, or the node's own) with the admin
    /// key; returns the whole token.
    pub fn create_join_token(&self, pool: Option<&str>) -> anyhow::Result<String> {
        let mut body = serde_json::json!({ "note": "test farm" });
        if let Some(p) = pool {
            body["pool"] = serde_json::json!(p);
        }
        let resp = ureq::post(&format!("{}/v1/join-tokens", self.url()))
            .set("authorization", &format!("Bearer {}", self.admin_key()?))
            .send_json(body)
            .context("POST /v1/join-tokens")?;
        let created: drover_shared::api::JoinTokenCreated = resp.into_json()?;
        Ok(created.secret)
    }

    /// The join token the farm's nodes start with.
    pub fn join_token(&self) -> Option<&str> {
        self.join_token.as_deref()
    }

    /// The REST base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addrs.http)
    }

    /// Where the coordinator wrote its first admin key.
    pub fn admin_key_file(&self) -> PathBuf {
        self.root.join("admin.key")
    }

    /// The admin API key.
    pub fn admin_key(&self) -> anyhow::Result<String> {
        let f = self.admin_key_file();
        Ok(std::fs::read_to_string(&f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string())
    }

    /// A REST client with the admin key.
    pub fn client(&self) -> Client {
        let c = Client::new(&self.url());
        match self.admin_key() {
            Ok(k) => c.with_key(k),
            Err(_) => c,
        }
    }

    /// Starts a node named `name` pinned to the coordinator's certificate.
    pub fn add_node(&mut self, name: &str) -> anyhow::Result<()> {
        self.add_node_with(name, &[])
    }

    /// Starts a node with extra arguments (`--slowdown 5`, `--tags a`).
    pub fn add_node_with(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<()> {
        if self.nodes.iter().any(|n| n.name == name) {
            bail!("there is already a node {name}");
        }
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = self.spawn_node(name, &extra)?;
        self.nodes.push(NodeProc {
            name: name.to_string(),
            extra,
            child: Some(child),
            frozen: false,
        });
        Ok(())
    }

    fn spawn_node(&self, name: &str, extra: &[String]) -> anyhow::Result<Child> {
        let mut args: Vec<String> = vec![
            "node".into(),
            "--join".into(),
            self.join_token.clone().unwrap_or_default(),
            "--coordinator".into(),
            self.addrs.quic.to_string(),
            "--data".into(),
            self.root.join(name).display().to_string(),
            "--name".into(),
            name.into(),
        ];
        args.extend(extra.iter().cloned());
        spawn_logged(
            &self.bin,
            &args,
            &self.root.join(format!("{name}.log")),
            &self.extra_env,
        )
    }

    fn node_mut(&mut self, name: &str) -> anyhow::Result<&mut NodeProc> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name}"))
    }

    /// Starts node `name` again after [`Cluster::kill_node`], with the same
    /// name, data dir (so its node id and spool) and arguments. Its previous
    /// log is kept (see [`Cluster::log_files`]).
    pub fn start_node(&mut self, name: &str) -> anyhow::Result<()> {
        let node = self.node_mut(name)?;
        if node.child.is_some() {
            bail!("node {name} is already running");
        }
        let extra = node.extra.clone();
        self.keep_log(name)?;
        let child = self.spawn_node(name, &extra)?;
        let node = self.node_mut(name)?;
        node.child = Some(child);
        node.frozen = false;
        Ok(())
    }

    /// Sends `signal` to node `name`'s processes.
    fn signal_node(&mut self, name: &str, signal: libc::c_int) -> anyhow::Result<()> {
        let node = self.node_mut(name)?;
        let child = node
            .child
            .as_ref()
            .with_context(|| format!("node {name} is not running"))?;
        signal_group(child, signal).with_context(|| format!("signal {signal} to node {name}"))
    }

    /// Freezes node `name` with SIGSTOP (fault injection), its executor
    /// process too: it neither renders, nor sends heartbeats, nor closes its
    /// connection.
    pub fn freeze_node(&mut self, name: &str) -> anyhow::Result<()> {
        self.signal_node(name, libc::SIGSTOP)?;
        self.node_mut(name)?.frozen = true;
        Ok(())
    }

    /// Resumes a node frozen by [`Cluster::freeze_node`] with SIGCONT.
    pub fn thaw_node(&mut self, name: &str) -> anyhow::Result<()> {
        self.signal_node(name, libc::SIGCONT)?;
        self.node_mut(name)?.frozen = false;
        Ok(())
    }

    /// Waits until the running incarnation of node `name` has logged that
    /// it is connected (the API cannot tell a restarted node's new session
    /// from its old one until the old one times out).
    pub fn wait_node_connected(&self, name: &str) -> anyhow::Result<()> {
        let log = self.root.join(format!("{name}.log"));
        wait_for(
            NODES_START_TIMEOUT,
            &format!("node {name} to connect"),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                Ok(text
                    .lines()
                    .any(|l| l.contains("drover_node::agent") && l.contains(" connected"))
                    .then_some(()))
            },
        )
    }

    /// Waits until `count` nodes are connected.
    pub fn wait_nodes(&mut self, count: usize) -> anyhow::Result<()> {
        let client = self.client();
        let root = self.root.clone();
        let nodes = &mut self.nodes;
        wait_for(NODES_START_TIMEOUT, "the nodes to connect", || {
            for node in nodes.iter_mut() {
                let name = &node.name;
                let Some(child) = node.child.as_mut() else {
                    continue;
                };
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

    /// SIGKILLs node `name` (fault injection), its executor process too,
    /// and reaps it; its data dir stays, for [`Cluster::start_node`].
    pub fn kill_node(&mut self, name: &str) -> anyhow::Result<()> {
        let node = self.node_mut(name)?;
        let child = node
            .child
            .take()
            .with_context(|| format!("node {name} is not running"))?;
        node.frozen = false;
        kill_group(child).with_context(|| format!("SIGKILL to node {name}"))
    }

    /// The log of a process (`coordinator` or a node name).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Stops every process: SIGTERM first so the coordinator flushes its
    /// journal, SIGKILL for whatever is still running after two seconds.
    pub fn stop(&mut self) {
        // A frozen process would sit on its SIGTERM until the SIGKILL.
        let frozen: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.frozen)
            .map(|n| n.name.clone())
            .collect();
        for name in frozen {
            let _ = self.thaw_node(&name);
        }
        let mut all: Vec<Child> = self.nodes.drain(..).filter_map(|n| n.child).collect();
        all.extend(self.coordinator.take());
        terminate(all);
    }
}

/// SIGTERM, then SIGKILL to the whole process group after two seconds (so
/// nothing a child started outlives it).
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
        let _ = signal_group(&c, libc::SIGKILL);
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

//! `drover`: the one binary of the farm. Servers (`coordinator`, `node`),
//! client commands (`submit`, `status`, `nodes`, `cancel`) and `demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use drover_shared::config::{CERT_FILE, DEFAULT_HTTP_ADDR, DEFAULT_QUIC_ADDR};

use drover_cli::client::Client;
use drover_cli::{demo, watch};

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Drover: a distributed render farm",
    long_about = None,
    after_help = "Examples:\n  drover demo                      # a local farm renders a sample job\n  drover coordinator &             # then, on each render machine:\n  drover node --coordinator HOST:8271 --cert coordinator-cert.der\n  drover submit shot.toml --watch  # DROVER_URL points at the coordinator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the coordinator (scheduler, journal, QUIC endpoint, REST API).
    #[command(
        after_help = "Example:\n  drover coordinator --data /var/lib/drover --http 0.0.0.0:8270 --quic 0.0.0.0:8271"
    )]
    Coordinator {
        /// Data directory: journal, artifacts, certificate.
        #[arg(long, env = "DROVER_DATA")]
        data: Option<PathBuf>,
        /// REST API address.
        #[arg(long, env = "DROVER_HTTP", default_value = DEFAULT_HTTP_ADDR)]
        http: SocketAddr,
        /// QUIC address for nodes.
        #[arg(long, env = "DROVER_QUIC", default_value = DEFAULT_QUIC_ADDR)]
        quic: SocketAddr,
        /// How chunks are cut: `drover` (sized by each node's measured
        /// speed, with work stealing and speculative copies), `adaptive`
        /// (sized by speed, no stealing) or `static` (fixed chunks of
        /// --chunk-frames, the way most farms work; for comparisons).
        #[arg(long, env = "DROVER_STRATEGY", default_value = "drover", value_parser = ["drover", "adaptive", "static"])]
        strategy: String,
        /// Seconds a chunk should take on the node it goes to, unless the
        /// job sets `chunk_target_s`.
        #[arg(long, default_value_t = 20.0, value_parser = parse_target_s)]
        chunk_target_s: f64,
        /// Smallest chunk in frames (default 8); with --strategy static,
        /// every chunk's size (default 24, a common choice of the farms it
        /// stands for).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        chunk_frames: Option<u64>,
        /// Largest chunk in frames.
        #[arg(long, default_value_t = 2_400, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        max_chunk_frames: u64,
        /// First start only: write the first admin API key to this file
        /// (mode 0600) instead of printing it; if the file already holds a
        /// key, that key becomes the admin key (provisioned by a deployment).
        #[arg(long, env = "DROVER_ADMIN_KEY_FILE")]
        admin_key_file: Option<PathBuf>,
        /// First wait, ms, before a failed webhook delivery is tried again;
        /// it doubles per attempt (with jitter) up to 10 minutes, 12
        /// attempts in all.
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
        webhook_retry_base_ms: u64,
    },
    /// Run a node agent that renders and encodes chunks.
    #[command(
        after_help = "Example:\n  drover node --coordinator 10.0.0.5:8271 --cert coordinator-cert.der --name gpu-07 --tags fast,4k --pool studio\n\nTest aids (--slowdown, --test-gpu, --fail-frame) make a node pretend to be slower, another GPU or faulty, for testing a farm; such a node says so in its capabilities (test_override). Never use them in production."
    )]
    Node {
        /// The coordinator's QUIC address.
        #[arg(long, env = "DROVER_COORDINATOR", default_value = DEFAULT_QUIC_ADDR)]
        coordinator: SocketAddr,
        /// Data directory (spool of segments not yet confirmed).
        #[arg(long, env = "DROVER_NODE_DATA")]
        data: Option<PathBuf>,
        /// Node name, unique in the farm (default: the host name).
        #[arg(long, env = "DROVER_NODE_NAME")]
        name: Option<String>,
        /// The coordinator's certificate to pin (default: the one in the
        /// default coordinator data dir, for single-machine use).
        #[arg(long, env = "DROVER_CERT", conflicts_with = "cert_sha256")]
        cert: Option<PathBuf>,
        /// Pin the coordinator by the SHA-256 of its certificate instead (hex,
        /// printed by the coordinator at start).
        #[arg(long, env = "DROVER_CERT_SHA256")]
        cert_sha256: Option<String>,
        /// Labels for this node, comma-separated; jobs pick nodes by them
        /// (`requirements.tags`).
        #[arg(
            long,
            env = "DROVER_NODE_TAGS",
            value_delimiter = ',',
            value_name = "TAG,..."
        )]
        tags: Vec<String>,
        /// The node's pool; jobs pick a pool with `requirements.pool`
        /// (default: none).
        #[arg(long, env = "DROVER_NODE_POOL", value_name = "NAME")]
        pool: Option<String>,
        /// Test aid: make this node FACTOR times slower (1 to 1000) by
        /// pausing after each frame; its calibration reports the slower
        /// speed.
        #[arg(
            long,
            env = "DROVER_NODE_SLOWDOWN",
            value_name = "FACTOR",
            default_value_t = 1.0,
            value_parser = drover_node::exec::parse_slowdown_factor,
            help_heading = "Test aids (for testing a farm, never for production)"
        )]
        slowdown: f64,
        /// Test aid: report the render adapter as a discrete NVIDIA GPU named
        /// NAME (the node still renders on the adapter it has).
        #[arg(
            long,
            value_name = "NAME",
            help_heading = "Test aids (for testing a farm, never for production)"
        )]
        test_gpu: Option<String>,
        /// Test aid: fail any chunk that reaches frame N (a job frame
        /// number), naming the frame; repeat or separate with commas for
        /// several frames.
        #[arg(
            long,
            value_name = "N",
            value_delimiter = ',',
            help_heading = "Test aids (for testing a farm, never for production)"
        )]
        fail_frame: Vec<u64>,
    },
    /// Submit a job spec (TOML or JSON).
    #[command(after_help = "Example:\n  drover submit shot.toml --watch")]
    Submit {
        /// The spec file.
        file: PathBuf,
        /// Follow the job with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
        /// Coordinator REST URL.
        #[arg(long, env = "DROVER_URL", default_value = "http://127.0.0.1:8270")]
        url: String,
    },
    /// Show one job, or list all jobs.
    #[command(after_help = "Example:\n  drover status 12\n  drover status --json")]
    Status {
        /// Job id.
        job: Option<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Coordinator REST URL.
        #[arg(long, env = "DROVER_URL", default_value = "http://127.0.0.1:8270")]
        url: String,
    },
    /// Follow a job until it ends.
    #[command(after_help = "Example:\n  drover watch 12")]
    Watch {
        /// Job id.
        job: u64,
        /// Coordinator REST URL.
        #[arg(long, env = "DROVER_URL", default_value = "http://127.0.0.1:8270")]
        url: String,
    },
    /// List the nodes (speed, load, chunks, quarantine), or clear one's
    /// quarantine.
    #[command(after_help = "Example:\n  drover nodes\n  drover nodes --clear-quarantine gpu-07")]
    Nodes {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Let a quarantined node take work again.
        #[arg(long, value_name = "NODE")]
        clear_quarantine: Option<String>,
        /// Coordinator REST URL.
        #[arg(long, env = "DROVER_URL", default_value = "http://127.0.0.1:8270")]
        url: String,
    },
    /// Cancel a job.
    #[command(after_help = "Example:\n  drover cancel 12")]
    Cancel {
        /// Job id.
        job: u64,
        /// Coordinator REST URL.
        #[arg(long, env = "DROVER_URL", default_value = "http://127.0.0.1:8270")]
        url: String,
    },
    /// Re-run what a failed or cancelled job is missing (its stored frames
    /// are kept).
    #[command(after_help = "Example:\n  drover retry 12")]
    Retry {
        /// Job id.
        job: u64,
        /// Coordinator REST URL.
        #[arg(long, env = "DROVER_URL", default_value = "http://127.0.0.1:8270")]
        url: String,
    },
    /// Stop new work on a node: its current chunk finishes, or with --now
    /// what it has not rendered goes back to the queue at once.
    #[command(after_help = "Example:\n  drover drain gpu-07\n  drover drain gpu-07 --now")]
    Drain {
        /// Node name.
        node: String,
        /// Hand back the unrendered rest of its chunks at once.
        #[arg(long)]
        now: bool,
        /// Coordinator REST URL.
        #[arg(long, env = "DROVER_URL", default_value = "http://127.0.0.1:8270")]
        url: String,
    },
    /// Let a drained node take work again.
    #[command(after_help = "Example:\n  drover undrain gpu-07")]
    Undrain {
        /// Node name.
        node: String,
        /// Coordinator REST URL.
        #[arg(long, env = "DROVER_URL", default_value = "http://127.0.0.1:8270")]
        url: String,
    },
    /// Start a coordinator and local nodes, render a sample job, report.
    #[command(after_help = "Example:\n  drover demo --frames 240 --nodes 2 --out demo.mp4 --json")]
    Demo(demo::DemoArgs),
    /// The node's executor process, started by `drover node` itself (it
    /// speaks JSON lines on stdin and stdout): not for people, so hidden.
    #[command(name = drover_node::exec::WORKER_SUBCOMMAND, hide = true)]
    ExecWorker,
}

fn parse_target_s(text: &str) -> Result<f64, String> {
    let v: f64 = text.parse().map_err(|e| format!("{e}"))?;
    let range = drover_shared::spec::CHUNK_TARGET_S_RANGE;
    if !range.contains(&v) {
        return Err(format!(
            "{v} is outside {}..={} seconds",
            range.start(),
            range.end()
        ));
    }
    Ok(v)
}

/// The per-user data directory (`~/.local/share/drover` on Linux).
fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "drover")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".drover"))
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Reads a spec file, resolving `render.path` relative to it, into the JSON
/// the API takes. The spec is validated by the coordinator, which names the
/// field at fault.
fn load_spec(file: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let is_toml = file.extension().is_some_and(|e| e == "toml");
    let mut value: serde_json::Value = if is_toml {
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", file.display()))?
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", file.display()))?
    };
    if let Some(render) = value.get_mut("render").and_then(|r| r.as_object_mut()) {
        if let Some(p) = render.remove("path") {
            let p = p.as_str().context("render.path must be a string")?;
            let full = file.parent().unwrap_or(Path::new(".")).join(p);
            let src = std::fs::read_to_string(&full)
                .with_context(|| format!("render.path: reading shader {}", full.display()))?;
            render.insert("source".into(), serde_json::Value::String(src));
        }
    }
    Ok(value)
}

fn print_jobs(jobs: &[drover_shared::api::JobSummary]) {
    println!(
        "{:>5}  {:<10} {:>15}  {:<24} ERROR",
        "ID", "STATE", "FRAMES", "NAME"
    );
    for j in jobs {
        println!(
            "{:>5}  {:<10} {:>15}  {:<24} {}",
            j.id,
            format!("{:?}", j.state).to_lowercase(),
            format!("{}/{}", j.frames_done, j.frames_total),
            j.name,
            j.error.as_deref().unwrap_or("")
        );
    }
}

/// A job's chunks: which node rendered which frames, and how each chunk
/// came to be (stolen tails and speculative copies are marked).
fn print_chunks(j: &drover_shared::api::JobView) {
    println!(
        "priority {}  project {}  encoder {}  stolen {} frames  wasted {} frames{}{}",
        j.priority,
        j.project,
        j.encoder,
        j.frames_stolen,
        j.frames_wasted,
        if j.missing_frames.is_empty() {
            String::new()
        } else {
            format!("  missing frames {:?}", j.missing_frames)
        },
        if j.blocklisted_nodes.is_empty() {
            String::new()
        } else {
            format!("  blocklisted {}", j.blocklisted_nodes.join(","))
        }
    );
    println!(
        "{:>6} {:>13} {:<10} {:<12} {:<12} {:>8} {:>8}  LAST ERROR",
        "CHUNK", "FRAMES", "STATE", "KIND", "NODE", "DONE", "FAILURES"
    );
    for c in &j.chunks {
        println!(
            "{:>6} {:>13} {:<10} {:<12} {:<12} {:>8} {:>8}  {}",
            c.index.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            format!("{}-{}", c.start, c.end),
            format!("{:?}", c.state).to_lowercase(),
            format!("{:?}", c.kind).to_lowercase(),
            c.node.as_deref().unwrap_or("-"),
            c.frames_done,
            c.attempts,
            c.last_error.as_deref().unwrap_or("")
        );
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(
        cli.cmd,
        Cmd::Coordinator { .. } | Cmd::Node { .. } | Cmd::Demo(_)
    ) {
        // `drover status | head` must end quietly when the reader goes
        // away, as Unix tools do, not panic on a broken pipe: Rust ignores
        // SIGPIPE by default, so client commands restore the default
        // action. The servers keep ignoring it: a peer going away is
        // theirs to handle.
        // SAFETY: setting a signal disposition at start, before any thread.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.cmd {
        Cmd::Coordinator {
            data,
            http,
            quic,
            strategy,
            chunk_target_s,
            chunk_frames,
            max_chunk_frames,
            admin_key_file,
            webhook_retry_base_ms,
        } => {
            init_logs("info");
            let data_dir = data.unwrap_or_else(|| default_data_dir().join("coordinator"));
            use drover_coordinator::sched::{Chunking, CoreConfig};
            let drover = strategy == "drover";
            let chunk_frames = chunk_frames.unwrap_or(if strategy == "static" { 24 } else { 8 });
            let cfg = drover_coordinator::server::CoordinatorConfig {
                data_dir,
                http_addr: http,
                quic_addr: quic,
                core: CoreConfig {
                    chunking: if strategy == "static" {
                        Chunking::Fixed(chunk_frames)
                    } else {
                        Chunking::Target
                    },
                    steal: drover,
                    speculate: drover,
                    chunk_target_ms: (chunk_target_s * 1000.0) as u64,
                    min_chunk_frames: chunk_frames,
                    max_chunk_frames: max_chunk_frames.max(chunk_frames),
                    ..Default::default()
                },
                admin_key_file,
                webhook_retry_base_ms,
            };
            actix::System::new().block_on(drover_coordinator::server::run(cfg))
        }
        Cmd::Node {
            coordinator,
            data,
            name,
            cert,
            cert_sha256,
            tags,
            pool,
            slowdown,
            test_gpu,
            fail_frame,
        } => {
            init_logs("info");
            let name = name
                .or_else(|| std::env::var("HOSTNAME").ok())
                .or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|s| s.trim().to_string())
                })
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "node".into());
            let data_dir = data.unwrap_or_else(|| default_data_dir().join(format!("node-{name}")));
            let trust = match (cert, cert_sha256) {
                (_, Some(fp)) => drover_node::tls::Trust::Fingerprint(fp),
                (Some(p), None) => drover_node::tls::Trust::CertFile(p),
                (None, None) => drover_node::tls::Trust::CertFile(
                    default_data_dir().join("coordinator").join(CERT_FILE),
                ),
            };
            let cfg = drover_node::agent::AgentConfig {
                coordinator,
                name,
                data_dir,
                trust,
                tags,
                pool: pool.unwrap_or_default(),
                slowdown_factor: slowdown,
                test_gpu,
                fail_frames: fail_frame,
            };
            tokio::runtime::Runtime::new()?.block_on(drover_node::agent::run(cfg))
        }
        Cmd::Submit { file, watch, url } => {
            init_logs("warn");
            let client = Client::from_env(&url)?;
            let spec = load_spec(&file)?;
            let sub = client.submit_json(&spec)?;
            println!(
                "job {} submitted: {}{}",
                sub.id,
                url.trim_end_matches('/'),
                sub.status_url
            );
            if watch {
                let job = watch::watch(&client, sub.id, false)?;
                return report_end(&url, &job);
            }
            Ok(())
        }
        Cmd::Watch { job, url } => {
            init_logs("warn");
            let client = Client::from_env(&url)?;
            let job = watch::watch(&client, job, false)?;
            report_end(&url, &job)
        }
        Cmd::Status { job, json, url } => {
            init_logs("warn");
            let client = Client::from_env(&url)?;
            match job {
                Some(id) => {
                    let j = client.job(id)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&j)?);
                    } else {
                        print_jobs(&[drover_shared::api::JobSummary::from(&j)]);
                        println!();
                        print_chunks(&j);
                        if let Some(u) = &j.output_url {
                            println!("\noutput: {}{u}", url.trim_end_matches('/'));
                        }
                    }
                }
                None => {
                    let jobs = client.jobs()?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&jobs)?);
                    } else {
                        print_jobs(&jobs);
                    }
                }
            }
            Ok(())
        }
        Cmd::Retry { job, url } => {
            init_logs("warn");
            let v = Client::from_env(&url)?.retry(job)?;
            println!(
                "job {job}: {:?} again, {} of {} frames already stored",
                v.state, v.frames_done, v.frames_total
            );
            Ok(())
        }
        Cmd::Drain { node, now, url } => {
            init_logs("warn");
            Client::from_env(&url)?.drain(&node, Some(now))?;
            let how = if now {
                "unrendered frames handed back"
            } else {
                "its current chunks finish"
            };
            println!("node {node}: drained ({how})");
            Ok(())
        }
        Cmd::Undrain { node, url } => {
            init_logs("warn");
            Client::from_env(&url)?.drain(&node, None)?;
            println!("node {node}: takes work again");
            Ok(())
        }
        Cmd::Nodes {
            json,
            clear_quarantine,
            url,
        } => {
            init_logs("warn");
            if let Some(name) = clear_quarantine {
                Client::from_env(&url)?.clear_quarantine(&name)?;
                println!("node {name}: quarantine cleared");
                return Ok(());
            }
            let nodes = Client::from_env(&url)?.nodes()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
                return Ok(());
            }
            println!(
                "{:<16} {:<11} {:<40} {:>6} {:>8} {:>8}  {:<24} CHUNKS",
                "NAME", "STATE", "ADAPTER", "CPU%", "HB AGE", "FRAMES", "SPEED (frames/s)"
            );
            for n in nodes {
                let adapter = n
                    .capabilities
                    .render_adapter
                    .as_ref()
                    .map(|a| format!("{} ({:?})", a.name, a.device_type))
                    .unwrap_or_default();
                let speed: Vec<String> = n
                    .speed_fps
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                let state = match (n.connected, &n.quarantined) {
                    (_, Some(_)) => "quarantined",
                    (true, None) if n.drained => "drained",
                    (true, None) => "up",
                    (false, None) => "down",
                };
                let adapter = match &n.capabilities.test_override {
                    Some(t) => format!("{adapter} [test: {t}]"),
                    None => adapter,
                };
                println!(
                    "{:<16} {:<11} {:<40} {:>6.1} {:>7}ms {:>8}  {:<24} {}",
                    n.name,
                    state,
                    adapter,
                    n.cpu_load_pct,
                    n.heartbeat_age_ms,
                    n.frames_rendered,
                    speed.join(", "),
                    n.chunks.join(" ")
                );
                if let Some(q) = &n.quarantined {
                    println!("{:<16} quarantined: {q}", "");
                }
            }
            Ok(())
        }
        Cmd::Cancel { job, url } => {
            init_logs("warn");
            let j = Client::from_env(&url)?.cancel(job)?;
            println!("job {} is {:?}", j.id, j.state);
            Ok(())
        }
        Cmd::Demo(args) => {
            init_logs("warn");
            demo::run(args)
        }
        Cmd::ExecWorker => {
            // Its log goes to stderr, which the agent relays into its own.
            init_logs("info");
            drover_node::exec::worker::run()
        }
    }
}

fn report_end(url: &str, job: &drover_shared::api::JobView) -> anyhow::Result<()> {
    match job.state {
        drover_shared::api::JobState::Done => {
            println!(
                "job {} done: {} frames; output {}{}",
                job.id,
                job.frames_total,
                url.trim_end_matches('/'),
                job.output_url.as_deref().unwrap_or("")
            );
            Ok(())
        }
        state => anyhow::bail!(
            "job {} ended {:?}: {}",
            job.id,
            state,
            job.error.as_deref().unwrap_or("no reason recorded")
        ),
    }
}

//! `drover`: the one binary of the farm. Servers (`coordinator`, `node`),
//! client commands (`submit`, `jobs`, `status`, `watch`, `download`,
//! `nodes`, `keys`, `events`, ...; their flags and output are in
//! [`drover_cli::commands`]), `completions` and `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use drover_shared::config::{CERT_FILE, DEFAULT_HTTP_ADDR, DEFAULT_QUIC_ADDR};

use drover_cli::{commands, demo};

mod foreign_logs;

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Drover: a distributed render farm",
    long_about = None,
    after_help = "Examples:\n  drover demo                      # a local farm renders a sample job\n  drover coordinator &             # then, on each render machine:\n  drover node --coordinator HOST:8271 --cert coordinator-cert.der\n  drover submit shot.toml --watch  # DROVER_URL points at the coordinator"
)]
struct Cli {
    /// Log lines as text for people, or as one JSON object per line for
    /// log collectors (every line about a job carries `job`, `chunk` and
    /// `node`). Passed on to the processes drover starts.
    #[arg(long, global = true, env = "DROVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The format `init_logs` uses, set once from the command line.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Whether `init_logs` takes over fd 2 in JSON mode: only in the servers
/// and the executor, which own their stderr.
static CAPTURE_STDERR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

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
        /// The QUIC address join tokens point nodes at (host:port), when
        /// it differs from --quic (a wildcard bind, NAT, a DNS name).
        #[arg(long, env = "DROVER_ADVERTISE_QUIC")]
        advertise_quic: Option<String>,
        /// Serve `/metrics` only to scrapers sending
        /// `Authorization: Bearer <token>`, the token read from this file
        /// at start (an empty file is refused).
        #[arg(long, env = "DROVER_METRICS_TOKEN_FILE", value_name = "PATH")]
        metrics_token_file: Option<PathBuf>,
        /// Serve `/metrics` to anyone who reaches the HTTP port (without
        /// this or --metrics-token-file, `/metrics` answers 403).
        #[arg(
            long,
            env = "DROVER_METRICS_PUBLIC",
            conflicts_with = "metrics_token_file"
        )]
        metrics_public: bool,
        /// Auto-scaling node pools: a TOML file of `[[pool]]` tables
        /// (provider, min, max, target, cooldowns); see README's
        /// "Auto-scaling pools".
        #[arg(long, env = "DROVER_POOLS", value_name = "PATH")]
        pools: Option<PathBuf>,
    },
    /// Run a node agent that renders and encodes chunks.
    #[command(
        after_help = "Example:\n  drover node --coordinator 10.0.0.5:8271 --cert coordinator-cert.der --name gpu-07 --tags fast,4k --pool studio\n\nTest aids (--slowdown, --test-gpu, --fail-frame) make a node pretend to be slower, another GPU or faulty, for testing a farm; such a node says so in its capabilities (test_override). Never use them in production."
    )]
    Node {
        /// A join token from an admin (`drover join-tokens create`): it
        /// carries the coordinator's address and certificate fingerprint,
        /// so it is the only flag a new node needs. Kept in the data dir's
        /// `coordinator.json` (address and fingerprint only) for later
        /// starts; once joined, the node's own certificate is its identity.
        #[arg(long, env = "DROVER_JOIN_TOKEN", value_name = "TOKEN")]
        join: Option<String>,
        /// Read the join token from this file instead of --join (a secret
        /// mounted as a file by Compose, Kubernetes or systemd's
        /// LoadCredential=, so the token is never in the environment or
        /// the process list).
        #[arg(
            long,
            env = "DROVER_JOIN_FILE",
            value_name = "PATH",
            conflicts_with = "join"
        )]
        join_file: Option<PathBuf>,
        /// The coordinator's QUIC address, host:port (default: the join
        /// token's, the one saved at the first join, or 127.0.0.1:8271).
        #[arg(long, env = "DROVER_COORDINATOR")]
        coordinator: Option<String>,
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
    Submit(commands::SubmitArgs),
    /// List jobs, newest first: filter by state, project or submitter.
    #[command(
        after_help = "Example:\n  drover jobs --state running\n  drover jobs --project film --all --json"
    )]
    Jobs(commands::JobsArgs),
    /// Show one job with its chunks, or list all jobs.
    #[command(after_help = "Example:\n  drover status 12\n  drover status --json")]
    Status(commands::StatusArgs),
    /// Follow a job until it ends (by its event stream).
    #[command(after_help = "Example:\n  drover watch 12")]
    Watch(commands::JobArgs),
    /// Cancel a job: running chunks stop, stored frames are kept.
    #[command(after_help = "Example:\n  drover cancel 12")]
    Cancel(commands::JobArgs),
    /// Re-run what a failed or cancelled job is missing (its stored frames
    /// are kept).
    #[command(after_help = "Example:\n  drover retry 12")]
    Retry(commands::JobArgs),
    /// Pause a job: no new chunk starts; running chunks finish.
    #[command(after_help = "Example:\n  drover pause 12")]
    Pause(commands::JobArgs),
    /// Resume a paused job.
    #[command(after_help = "Example:\n  drover resume 12")]
    Resume(commands::JobArgs),
    /// Change a job's priority (0..=100, higher first).
    #[command(after_help = "Example:\n  drover priority 12 90")]
    Priority(commands::PriorityArgs),
    /// A job's chunks: frames, state, kind, node, failures.
    #[command(after_help = "Example:\n  drover chunks 12")]
    Chunks(commands::JobArgs),
    /// The executor log of each chunk of a job (adapter, encoder, frame
    /// timings, the failure), as its node sent it; or one chunk's.
    #[command(after_help = "Example:\n  drover logs 12\n  drover logs 12 --chunk 3")]
    Logs(drover_cli::logs::LogsArgs),
    /// A done job's files with size, SHA-256 and signed links (no key
    /// needed to fetch them).
    #[command(after_help = "Example:\n  drover artifacts 12 --ttl-s 86400")]
    Artifacts(commands::ArtifactsArgs),
    /// Download a done job's video (or poster), checked against its SHA-256.
    #[command(
        after_help = "Example:\n  drover download 12\n  drover download 12 -o shot.mp4\n  drover download 12 --poster -o posters/"
    )]
    Download(commands::DownloadArgs),
    /// A job's webhook deliveries and their attempts.
    #[command(after_help = "Example:\n  drover webhooks 12")]
    Webhooks(commands::JobArgs),
    /// List the nodes (speed, load, chunks, quarantine), or show one.
    #[command(
        after_help = "Example:\n  drover nodes\n  drover nodes gpu-07 --json\n  drover nodes --clear-quarantine gpu-07"
    )]
    Nodes(commands::NodesArgs),
    /// Stop new work on a node: its current chunk finishes, or with --now
    /// what it has not rendered goes back to the queue at once.
    #[command(after_help = "Example:\n  drover drain gpu-07\n  drover drain gpu-07 --now")]
    Drain(commands::DrainArgs),
    /// Auto-scaling pools: size, backlog and drain time; `decisions NAME`
    /// lists a pool's scaling decisions with their reasons.
    #[command(after_help = "Example:\n  drover pools\n  drover pools decisions gpu")]
    Pools(drover_cli::pools::PoolsArgs),
    /// A preemption notice for a node (a spot instance about to go): it is
    /// drained at once and the frames it has not rendered wait for others.
    #[command(after_help = "Example:\n  drover preempt spot-3")]
    Preempt(drover_cli::pools::PreemptArgs),
    /// Let a drained node take work again.
    #[command(after_help = "Example:\n  drover undrain gpu-07")]
    Undrain(commands::NodeArgs),
    /// Let a quarantined node take work again.
    #[command(after_help = "Example:\n  drover clear-quarantine gpu-07")]
    ClearQuarantine(commands::NodeArgs),
    /// API keys: list, create (the secret is shown once), revoke.
    #[command(
        subcommand,
        after_help = "Example:\n  drover keys list\n  drover keys create ci --role viewer\n  drover keys revoke 3f2a9c1d"
    )]
    Keys(commands::KeysCmd),
    /// Join tokens for new nodes (admin).
    #[command(subcommand, name = "join-tokens")]
    JoinTokens(commands::TokensCmd),
    /// Node identities: the certificates nodes joined with (admin).
    #[command(subcommand)]
    Identities(commands::IdentitiesCmd),
    /// Set a node's tags, replacing what it reports itself (admin).
    #[command(after_help = "Example:
  drover tags gpu-07 4k,fast
  drover tags gpu-07 --clear     # its own tags again")]
    Tags(commands::TagsArgs),
    /// Follow the coordinator's events (job and node changes), one line
    /// each.
    #[command(
        after_help = "Example:\n  drover events\n  drover events --job 12 --json\n  drover events --kinds job.done,job.failed,node"
    )]
    Events(commands::EventsArgs),
    /// Take a consistent online backup of the coordinator (journals,
    /// unfinished jobs' segments, the artifact index, its keys) into a new
    /// file, mode 0600 (admin).
    #[command(
        after_help = "Example:\n  drover backup /backups/drover-$(date +%F).tar\n  drover backup full.tar --artifacts   # done jobs' outputs and posters too"
    )]
    Backup(drover_cli::backup::BackupArgs),
    /// Restore a backup into a new data dir (checked whole before anything
    /// is written); then start `drover coordinator --data DIR` on it.
    #[command(
        after_help = "Example:\n  drover restore /backups/drover-2026-11-24.tar --data /var/lib/drover-restored"
    )]
    Restore(drover_cli::backup::RestoreArgs),
    /// The farm live in a terminal: nodes, jobs and events; drain, cancel,
    /// retry and pause from the keyboard (`?` lists the keys).
    #[command(after_help = "Example:\n  drover top\n  DROVER_URL=http://coord:8270 drover top")]
    Top(drover_cli::top::TopArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  drover completions bash > ~/.local/share/bash-completion/completions/drover\n  drover completions zsh > ~/.zfunc/_drover"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
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

/// Reads `--join-file`: the token alone, surrounding whitespace dropped (a
/// file written by `echo` or `kubectl create secret --from-file` ends in a
/// newline). Read no further than a token can be, so a wrong path (a disk
/// image, a device) fails fast with the flag named.
fn read_join_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let limit = drover_shared::join::MAX_JOIN_TOKEN_BYTES;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit as u64 + 64).read_to_string(&mut text))
        .map_err(|e| anyhow::anyhow!("--join-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("--join-file {}: the file is empty", path.display());
    }
    if token.len() > limit {
        anyhow::bail!(
            "--join-file {}: more than {limit} bytes, the limit of a join token",
            path.display()
        );
    }
    Ok(token.to_string())
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match LOG_FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Text => logs.init(),
        // An event's own fields sit at the top of its object, where a
        // collector filters on them directly; the fields of the spans it
        // happened in (a node's `node`) are listed under `spans`.
        LogFormat::Json => {
            let logs = logs.json().flatten_event(true);
            // In the servers, what libraries print to stderr becomes JSON
            // too; tracing writes to the original stderr (see
            // `foreign_logs`). Client commands keep theirs as it is: a
            // progress bar is no log line.
            if CAPTURE_STDERR.get() != Some(&true) {
                logs.init();
            } else {
                match foreign_logs::capture_stderr() {
                    Ok(stderr) => logs.with_writer(std::sync::Mutex::new(stderr)).init(),
                    Err(e) => {
                        logs.init();
                        tracing::warn!("stderr not captured, library output may not be JSON: {e}");
                    }
                }
            }
            foreign_logs::to_tracing();
            // A panic's message is a log record too (the default hook's
            // text goes through the captured stderr as well).
            let default_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                tracing::error!(target: "panic", "{info}");
                default_hook(info);
            }));
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    let _ = CAPTURE_STDERR.set(matches!(
        cli.cmd,
        Cmd::Coordinator { .. } | Cmd::Node { .. } | Cmd::ExecWorker
    ));
    if cli.log_format == LogFormat::Json {
        // The processes drover starts (a node's executor, a demo's
        // coordinator and nodes) log the same way.
        // SAFETY: at start, before any thread exists.
        unsafe { std::env::set_var("DROVER_LOG_FORMAT", "json") };
    }
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
    let result = match cli.cmd {
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
            advertise_quic,
            metrics_token_file,
            metrics_public,
            pools,
        } => {
            init_logs("info");
            let metrics = drover_coordinator::metrics::MetricsAccess::from_flags(
                metrics_token_file.as_deref(),
                metrics_public,
            )?;
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
                quic_advertise: advertise_quic,
                metrics,
                pools,
            };
            actix::System::new().block_on(drover_coordinator::server::run(cfg))
        }
        Cmd::Node {
            join,
            join_file,
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
            let join = match join_file {
                Some(f) => Some(read_join_file(&f)?),
                None => join,
            };
            let name = name
                .or_else(|| std::env::var("HOSTNAME").ok())
                .or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|s| s.trim().to_string())
                })
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "node".into());
            // What the coordinator would refuse, refused here with the flag
            // named.
            drover_protocol::check_node_name(&name)
                .map_err(|v| anyhow::anyhow!("--name {name:?} (default: the host name): {v}"))?;
            if tags.len() > drover_protocol::validate::MAX_NODE_TAGS {
                anyhow::bail!(
                    "--tags: {} tags; the limit is {}",
                    tags.len(),
                    drover_protocol::validate::MAX_NODE_TAGS
                );
            }
            let data_dir = data.unwrap_or_else(|| default_data_dir().join(format!("node-{name}")));
            let joined = drover_cli::join::resolve(
                &data_dir,
                join.as_deref(),
                coordinator.as_deref(),
                cert.as_deref(),
                cert_sha256.as_deref(),
                &default_data_dir().join("coordinator").join(CERT_FILE),
            )?;
            let cfg = drover_node::agent::AgentConfig {
                coordinator: joined.address,
                name,
                data_dir,
                trust: joined.trust,
                tags,
                pool: pool.unwrap_or_default(),
                slowdown_factor: slowdown,
                test_gpu,
                fail_frames: fail_frame,
                join_token: join,
            };
            tokio::runtime::Runtime::new()?.block_on(drover_node::agent::run(cfg))
        }
        Cmd::Submit(a) => {
            init_logs("warn");
            commands::submit(a)
        }
        Cmd::Jobs(a) => {
            init_logs("warn");
            commands::jobs(a)
        }
        Cmd::Status(a) => {
            init_logs("warn");
            commands::status(a)
        }
        Cmd::Watch(a) => {
            init_logs("warn");
            commands::watch(a)
        }
        Cmd::Cancel(a) => {
            init_logs("warn");
            commands::cancel(a)
        }
        Cmd::Retry(a) => {
            init_logs("warn");
            commands::retry(a)
        }
        Cmd::Pause(a) => {
            init_logs("warn");
            commands::pause(a, true)
        }
        Cmd::Resume(a) => {
            init_logs("warn");
            commands::pause(a, false)
        }
        Cmd::Priority(a) => {
            init_logs("warn");
            commands::priority(a)
        }
        Cmd::Chunks(a) => {
            init_logs("warn");
            commands::chunks(a)
        }
        Cmd::Logs(a) => {
            init_logs("warn");
            drover_cli::logs::logs(a)
        }
        Cmd::Artifacts(a) => {
            init_logs("warn");
            commands::artifacts(a)
        }
        Cmd::Download(a) => {
            init_logs("warn");
            commands::download(a)
        }
        Cmd::Webhooks(a) => {
            init_logs("warn");
            commands::webhooks(a)
        }
        Cmd::Nodes(a) => {
            init_logs("warn");
            commands::nodes(a)
        }
        Cmd::Drain(a) => {
            init_logs("warn");
            commands::drain(a)
        }
        Cmd::Pools(a) => {
            init_logs("warn");
            drover_cli::pools::pools(a)
        }
        Cmd::Preempt(a) => {
            init_logs("warn");
            drover_cli::pools::preempt(a)
        }
        Cmd::Undrain(a) => {
            init_logs("warn");
            commands::undrain(a)
        }
        Cmd::ClearQuarantine(a) => {
            init_logs("warn");
            commands::clear_quarantine(a)
        }
        Cmd::Keys(cmd) => {
            init_logs("warn");
            commands::keys(cmd)
        }
        Cmd::JoinTokens(cmd) => {
            init_logs("warn");
            commands::join_tokens(cmd)
        }
        Cmd::Identities(cmd) => {
            init_logs("warn");
            commands::identities(cmd)
        }
        Cmd::Tags(a) => {
            init_logs("warn");
            commands::tags(a)
        }
        Cmd::Events(a) => {
            init_logs("warn");
            commands::events(a)
        }
        Cmd::Backup(a) => {
            init_logs("warn");
            drover_cli::backup::backup(a)
        }
        Cmd::Restore(a) => {
            init_logs("warn");
            drover_cli::backup::restore(a)
        }
        // No log subscriber: a line on stderr would tear the screen; errors
        // show on its status line, and the command's own error after it
        // restores the terminal.
        Cmd::Top(a) => drover_cli::top::top(a),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "drover", &mut std::io::stdout());
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
    };
    if let Err(e) = &result {
        // As a log record as well: with `--log-format json`, the plain
        // `Error:` line main prints may not reach a collector intact.
        tracing::error!("{e:#}");
    }
    result
}

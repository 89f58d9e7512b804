//! The coordinator under many real connections: this process opens N QUIC
//! connections to a real `drover coordinator` (a separate process started by
//! [`Cluster`]) and speaks the protocol on each as a synthetic node, then
//! reports heartbeats per second, assignment latency and the coordinator's
//! CPU and memory.
//!
//! - Every synthetic node is one quinn client connection (connections are
//!   spread over a few client endpoints, one UDP socket each), on one
//!   multi-threaded tokio runtime in this process. It opens its control
//!   stream exactly as `node/src/agent.rs` does (stream kind, preamble,
//!   hello, welcome), starts sending a heartbeat every
//!   `heartbeat_interval_ms` of the welcome at once (at a random phase), and
//!   runs its assignments one at a time like the node's executor:
//!   `Progress` (0 frames), the "render", an upload of a tiny fake segment
//!   on a stream of its own (`UploadHeader`, `UploadAdmission`, the bytes
//!   from its offset, `UploadOutcome`), then
//!   `Done`. By default the render takes no time, so every node is a
//!   closed loop that asks for work as fast as the coordinator gives it;
//!   with `--render-ms` a chunk takes about that long (within 25 %) and the
//!   node sends progress every 100 ms while it renders, as the agent does.
//! - A `Shrink` is answered as the agent's frame window does: the proposal,
//!   or the last frame already started if later; `None` for a chunk no
//!   longer held. A `Cancel` drops a chunk, or stops it if it is rendering.
//! - Each node reports a calibration of `--chunk-frames` frames per chunk
//!   time at the jobs' 64x64, and a matching `elapsed_ms` in every `Done`;
//!   jobs ask for chunks of that time (`chunk_target_s`), so the scheduler
//!   keeps cutting chunks of `--chunk-frames` frames.
//! - Jobs (built-in `plasma`, 64x64) are submitted through the REST API
//!   whenever the frames submitted but not yet assigned fall below what
//!   refills every node's two slots, so no node waits for work. When a
//!   job's chunks are all done the coordinator joins the fake segments,
//!   which are not MP4 files: the job fails at the mux. That is expected and
//!   costs one failed open per job.
//! - After every node is connected and a warm-up, one window of `--seconds`
//!   is measured: heartbeats, progress messages, assignments and chunks
//!   done per second; assignment latency, from a node sending `Done` (which
//!   frees one of its slots) to that node receiving its next `Assign`;
//!   upload time; the coordinator's CPU (utime + stime from
//!   `/proc/<pid>/stat`, in total and by thread name) as a percentage of one
//!   core; its main thread's time on a CPU and waiting for one
//!   (`schedstat`), which is where the scheduler, every node session and the
//!   quinn endpoint run; and its resident memory (`VmRSS`, `VmHWM`). At the
//!   end of the window `GET /v1/nodes` tells how many nodes the coordinator
//!   still counts as connected and the age of the oldest heartbeat it has
//!   processed: an age well over the heartbeat interval means it is behind,
//!   and at `node_timeout_ms` (5 s) it reaps the node.
//!
//! This process and the coordinator share the machine: the synthetic nodes'
//! own CPU (`bench CPU%`) and every other process's (`others%`, from
//! `/proc/stat`) compete with the coordinator's. Figures are printed, never
//! asserted; they are recorded in `bench/RESULTS.md`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use drover_bench::WorkDir;
use drover_cli::client::Client;
use drover_cli::cluster::Cluster;
use drover_node::tls::{client_config, Trust};
use drover_protocol::{
    codec, preamble, Assign, ChunkDone, ChunkFailed, ChunkProgress, ChunkRef, CoordToNode,
    Heartbeat, Hello, NodeToCoord, ShrinkAck, StreamKind, UploadAdmission, UploadHeader,
    UploadOutcome, WireAdapter, WireCalibration, WireCapabilities, MAX_CONTROL_FRAME_BYTES,
    MAX_UPLOAD_FRAME_BYTES, PROTOCOL_VERSION,
};
use drover_shared::config::CERT_SERVER_NAME;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

/// The built-in shader every job names (nodes never run it).
const SHADER: &str = "plasma";
/// Frame width and height of every job: small, so the 64x64 calibration
/// the nodes report applies as it is.
const JOB_SIDE_PX: u32 = 64;
/// Handshakes (QUIC plus control-stream hello) in flight at once: enough to
/// keep the coordinator busy, few enough that none waits out its timeout in
/// a queue.
const CONNECT_CONCURRENCY: usize = 64;
/// Longest QUIC handshake, then longest preamble-hello-welcome exchange;
/// the node agent's own limits are 3 s and 10 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for an upload's verdict; the coordinator fsyncs each
/// segment before answering.
const UPLOAD_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections per client endpoint (one UDP socket and one driver task
/// each), so no single endpoint driver carries thousands of connections.
const CONNS_PER_ENDPOINT: usize = 500;
/// Most client endpoints.
const MAX_ENDPOINTS: usize = 16;
/// Messages queued for one node's control-stream writer: a heartbeat, a
/// progress and a done per chunk, two chunks at a time.
const OUT_QUEUE: usize = 64;
/// Assignments queued for one node's worker: the coordinator gives at most
/// two at once.
const WORK_QUEUE: usize = 16;
/// `Done` times kept per node for pairing with the next `Assign`.
const MAX_PENDING_DONES: usize = 64;
/// Samples of each kind kept in all, so a long window cannot grow memory
/// without bound.
const MAX_SAMPLES: usize = 2_000_000;
/// Least time between two progress messages of one chunk, as in the agent
/// (`PROGRESS_INTERVAL_MS` in `node/src/agent.rs`).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// How much a rendering node's chunk time varies around `--render-ms`:
/// uniformly within this fraction either side.
const PACE_JITTER: f64 = 0.25;
/// How often the submitter looks at the backlog.
const SUBMIT_POLL: Duration = Duration::from_millis(20);
/// Jobs one run may submit at most.
const MAX_JOBS_PER_RUN: u64 = 20_000;
/// How long node tasks and endpoints get to close at the end of a run.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;
/// Most synthetic nodes in one run.
const MAX_NODES: usize = 100_000;

/// Opens N QUIC connections that speak Drover's protocol as synthetic nodes
/// against a real coordinator, and measures it.
#[derive(Debug, Parser)]
#[command(
    name = "quic-load",
    after_help = "Example:\n  cargo build --release -p drover-cli\n  cargo build --release -p drover-bench --bin quic-load\n  target/release/quic-load --nodes 100,1000,2000 --seconds 10\n  target/release/quic-load --nodes 1000,4000 --render-ms 10000 --json > load.jsonl"
)]
struct Args {
    /// Farm sizes to measure, one fresh coordinator each, in this order.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000],
        value_parser = clap::value_parser!(usize))]
    nodes: Vec<usize>,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Seconds of load between the last node connecting and the window.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_s: u64,
    /// Frames per chunk the scheduler is led to cut (8..=2400, its limits).
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u64).range(8..=2400))]
    chunk_frames: u64,
    /// Milliseconds each chunk takes to "render": 0 finishes every chunk
    /// at once; otherwise (1000..=3600000) nodes render at a steady pace
    /// (each chunk within 25 % of this) and send progress every 100 ms, as
    /// the agent does.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    render_ms: u64,
    /// Frames per submitted job.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    job_frames: u64,
    /// Size of every fake segment, bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    segment_bytes: u64,
    /// `DROVER_LOG` for the coordinator (its default is `info`, which logs
    /// every assignment and every chunk done).
    #[arg(long)]
    coordinator_log: Option<String>,
    /// The `drover` binary (default: `drover` next to this executable, that
    /// is `target/release/drover` after `cargo build --release -p drover-cli`).
    #[arg(long)]
    drover: Option<PathBuf>,
    /// One JSON object per farm size on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Keep the working directory (coordinator data and log) and print its
    /// path.
    #[arg(long)]
    keep: bool,
}

/// Counters every node task adds to. They only grow; a window is the
/// difference of two snapshots.
#[derive(Default)]
struct Stats {
    heartbeats: AtomicU64,
    progress: AtomicU64,
    assigns: AtomicU64,
    dones: AtomicU64,
    failed: AtomicU64,
    shrinks: AtomicU64,
    cancels: AtomicU64,
    /// Frames of every assignment received.
    assigned_frames: AtomicU64,
    /// Frames given back by accepted shrinks.
    returned_frames: AtomicU64,
    /// Connections that ended before the bench stopped them.
    lost: AtomicU64,
    /// Latency samples are taken only while this is set.
    measuring: AtomicBool,
    /// `Done` to next `Assign`, microseconds.
    latency_us: Mutex<Vec<u32>>,
    /// Opening an upload stream to the coordinator's verdict,
    /// microseconds.
    upload_us: Mutex<Vec<u32>>,
}

impl Stats {
    /// Keeps one sample of `since` until now, if a window is being
    /// measured.
    fn sample(&self, into: &Mutex<Vec<u32>>, since: Instant) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let us = u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX);
        let mut v = into.lock().expect("samples");
        if v.len() < MAX_SAMPLES {
            v.push(us);
        }
    }
}

/// A snapshot of [`Stats`]' counters.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    heartbeats: u64,
    progress: u64,
    assigns: u64,
    dones: u64,
    failed: u64,
    shrinks: u64,
    cancels: u64,
    lost: u64,
}

impl Stats {
    fn counts(&self) -> Counts {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            heartbeats: r(&self.heartbeats),
            progress: r(&self.progress),
            assigns: r(&self.assigns),
            dones: r(&self.dones),
            failed: r(&self.failed),
            shrinks: r(&self.shrinks),
            cancels: r(&self.cancels),
            lost: r(&self.lost),
        }
    }
}

/// A chunk a synthetic node holds.
struct Held {
    start: u64,
    /// Last frame, lowered by an accepted shrink.
    end: u64,
    /// When the worker took it.
    started_at: Option<Instant>,
    /// Its time per frame, drawn when it starts; `None` on an instant node.
    per_frame: Option<Duration>,
    /// Frames rendered so far, as the heartbeat reports them.
    frames_done: u64,
    /// The coordinator cancelled it while it was rendering.
    cancelled: bool,
}

impl Held {
    /// Frames started by now, as the executor's frame window counts them:
    /// none before the chunk starts, all of them on an instant node.
    fn frames_started(&self) -> u64 {
        let frames = self.end - self.start + 1;
        match (self.started_at, self.per_frame) {
            (None, _) => 0,
            (Some(_), None) => frames,
            (Some(t), Some(pf)) => {
                let done = t.elapsed().as_nanos() / pf.as_nanos().max(1);
                u64::try_from(done)
                    .unwrap_or(u64::MAX)
                    .saturating_add(1)
                    .min(frames)
            }
        }
    }

    /// Frames finished by now at `per_frame` a frame.
    fn frames_rendered(&self, per_frame: Duration) -> u64 {
        let frames = self.end - self.start + 1;
        self.started_at.map_or(0, |t| {
            let done = t.elapsed().as_nanos() / per_frame.as_nanos().max(1);
            u64::try_from(done).unwrap_or(u64::MAX).min(frames)
        })
    }

    /// The answer to a shrink proposal, as the agent's frame window gives
    /// it: the proposal, or the last frame already started if later.
    fn shrink(&mut self, proposed_end: u64) -> Option<u64> {
        if self.cancelled {
            return None;
        }
        let started = self.frames_started();
        let floor = if started == 0 {
            self.start
        } else {
            self.start + started - 1
        };
        let new_end = proposed_end.max(floor).min(self.end);
        self.end = new_end;
        Some(self.end)
    }
}

/// One synthetic node's state shared by its tasks.
struct SynNode {
    conn: quinn::Connection,
    held: Mutex<HashMap<ChunkRef, Held>>,
    /// When each `Done` not yet followed by an `Assign` was sent.
    dones_at: Mutex<VecDeque<Instant>>,
}

/// What every node needs to know about the run.
struct RunCfg {
    chunk_frames: u64,
    /// Milliseconds a chunk of `chunk_frames` frames takes; 0 for instant.
    render_ms: u64,
    segment: Vec<u8>,
    segment_hash: [u8; 32],
}

impl RunCfg {
    /// Seconds a chunk of `chunk_frames` frames takes, as the jobs'
    /// `chunk_target_s` and the calibration say (at least 1 s, the spec's
    /// lower bound).
    fn chunk_s(&self) -> f64 {
        self.render_ms.max(1000) as f64 / 1000.0
    }

    /// Time per frame of a rendering node; `None` for an instant one.
    fn per_frame(&self) -> Option<Duration> {
        (self.render_ms > 0)
            .then(|| Duration::from_secs_f64(self.chunk_s() / self.chunk_frames as f64))
    }
}

/// The figures of one farm size.
#[derive(Debug, serde::Serialize)]
struct Row {
    /// Synthetic nodes asked for.
    nodes: usize,
    /// Nodes that completed the handshake and were welcomed.
    connected: usize,
    connect_failures: usize,
    first_connect_error: Option<String>,
    /// From the first connection attempt to the last welcome.
    connect_s: f64,
    window_s: f64,
    /// Messages the nodes sent per second of the window.
    heartbeats_per_s: f64,
    progress_per_s: f64,
    /// Assignments the nodes received, and chunks they finished (`Done`)
    /// or failed (an upload refused, typically after a reap), per second.
    assigns_per_s: f64,
    dones_per_s: f64,
    failed_per_s: f64,
    /// Shrink proposals and cancels the nodes received in the window.
    shrinks: u64,
    cancels: u64,
    /// `Done` sent to the next `Assign` received on the same node.
    latency_samples: usize,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    /// An upload from opening its stream to the verdict.
    upload_p50_ms: Option<f64>,
    upload_p99_ms: Option<f64>,
    /// The coordinator process, percent of one core.
    coordinator_cpu_pct: Option<f64>,
    /// The busiest thread names of the coordinator and their CPU, percent
    /// of one core (threads of one name summed).
    coordinator_threads: Vec<(String, f64)>,
    /// The coordinator's main thread (the actix system: scheduler, node
    /// sessions, quinn endpoint and connection tasks), percent of the
    /// window on a CPU (`/proc/<pid>/task/<pid>/schedstat`) ...
    actor_cpu_pct: Option<f64>,
    /// ... runnable but waiting for a CPU ...
    actor_runqueue_pct: Option<f64>,
    /// ... and, sampled every few milliseconds, blocked in the kernel
    /// (state `D`: disk) or sleeping (`S`: waiting for work or a lock).
    actor_blocked_pct: Option<f64>,
    actor_sleeping_pct: Option<f64>,
    /// The whole machine, percent of one core: every process's CPU, and
    /// CPU idle while waiting for disk.
    machine_busy_pct: Option<f64>,
    machine_iowait_pct: Option<f64>,
    /// Interrupts, softirqs and steal, percent of one core.
    machine_irq_pct: Option<f64>,
    /// CPU of every other process on the machine (other people's builds
    /// and tests on a shared one), percent of one core.
    others_cpu_pct: Option<f64>,
    /// The coordinator's `VmRSS` at the end of the window and `VmHWM`.
    coordinator_rss_mib: Option<f64>,
    coordinator_peak_rss_mib: Option<f64>,
    /// This process (every synthetic node), percent of one core.
    bench_cpu_pct: Option<f64>,
    /// Nodes `GET /v1/nodes` lists as connected at the end of the window.
    still_connected: usize,
    /// Connections the coordinator ended during the run (reaped nodes).
    lost: u64,
    /// Age of the last heartbeat the coordinator processed, over the
    /// connected nodes, at the end of the window.
    heartbeat_age_p99_ms: u64,
    heartbeat_age_max_ms: u64,
    /// Jobs submitted over the whole run, and whether the cap stopped the
    /// submitter.
    jobs_submitted: u64,
    jobs_capped: bool,
    /// How fast the coordinator's log grew during the window.
    coordinator_log_bytes_per_s: f64,
    /// Warnings and errors the coordinator logged during the window.
    coordinator_warnings: usize,
    /// Jobs the coordinator lists at the end of the window, by state.
    jobs_by_state: std::collections::BTreeMap<String, u64>,
    /// The first error of a listed job (the failed join of fake segments).
    first_job_error: Option<String>,
    /// `/proc/loadavg` at the end of the window: other work on the machine
    /// skews every figure.
    load_average: String,
    /// Size of the coordinator's journal (sled) at the end of the window.
    journal_mib: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(&n) = args.nodes.iter().find(|&&n| n == 0 || n > MAX_NODES) {
        bail!("--nodes {n}: each farm size must be 1..={MAX_NODES}");
    }
    let drover = drover_bench::drover_binary(args.drover.as_ref())?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // Declared before any cluster so it is dropped after them: the
    // coordinator stops before its data dir disappears.
    let work = WorkDir {
        path: std::env::temp_dir().join(format!("drover-bench-quic-load-{}", std::process::id())),
        keep: args.keep,
    };
    std::fs::create_dir_all(&work.path)
        .with_context(|| format!("creating {}", work.path.display()))?;
    let segment: Vec<u8> = (0..args.segment_bytes).map(|_| rand::random()).collect();
    if args.render_ms != 0 && args.render_ms < 1000 {
        bail!(
            "--render-ms {}: 0 (instant) or 1000..=3600000, the bounds of a job's chunk_target_s",
            args.render_ms
        );
    }
    let cfg = Arc::new(RunCfg {
        chunk_frames: args.chunk_frames,
        render_ms: args.render_ms,
        segment_hash: *blake3::hash(&segment).as_bytes(),
        segment,
    });
    if !args.json {
        println!(
            "synthetic nodes on {workers} runtime threads; jobs of {} frames at {JOB_SIDE_PX}x{JOB_SIDE_PX}, \
             chunks of {} frames, fake segments of {} bytes; window {} s after {} s of warm-up; \
             machine: {} cores, load average {}",
            args.job_frames,
            args.chunk_frames,
            args.segment_bytes,
            args.seconds,
            args.warmup_s,
            workers,
            load_average()
        );
    }
    let mut rows = Vec::new();
    for &n in &args.nodes {
        let root = work.path.join(format!("n{n}"));
        let row = run_one(&rt, &drover, &root, n, &args, cfg.clone())
            .with_context(|| format!("the run with {n} nodes"))?;
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            print_row_detail(&row);
        }
        rows.push(row);
    }
    if !args.json {
        print_table(&rows);
    }
    rt.shutdown_timeout(STOP_TIMEOUT);
    Ok(())
}

/// One farm size: a fresh coordinator, `n` synthetic nodes, one window.
fn run_one(
    rt: &tokio::runtime::Runtime,
    drover: &Path,
    root: &Path,
    n: usize,
    args: &Args,
    cfg: Arc<RunCfg>,
) -> anyhow::Result<Row> {
    let mut env = vec![("NO_COLOR", "1")];
    if let Some(level) = &args.coordinator_log {
        env.push(("DROVER_LOG", level.as_str()));
    }
    let mut cluster = Cluster::start(drover, root, &[], &env)?;
    let client = cluster.client();
    let coordinator_pid = coordinator_pid(&root.join("coordinator"))
        .context("the coordinator process is not in /proc")?;
    let trust = Trust::CertFile(cluster.addrs.cert_path.clone());
    let quic = cluster.addrs.quic;
    let token: Arc<str> = cluster.join_token().unwrap_or_default().into();
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    // Connect every node, a bounded number of handshakes at a time. Each
    // node starts its tasks (heartbeats first) as soon as it is welcomed,
    // as the agent does: one that waited for the whole farm to connect
    // would be reaped as silent.
    let endpoint_count = n.div_ceil(CONNS_PER_ENDPOINT).clamp(1, MAX_ENDPOINTS);
    let connect_started = Instant::now();
    let (endpoints, node_tasks, errors) = rt.block_on(async {
        let client_cfg = client_config(&trust)?;
        let mut endpoints = Vec::with_capacity(endpoint_count);
        for _ in 0..endpoint_count {
            let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
                .context("binding a client endpoint")?;
            ep.set_default_client_config(client_cfg.clone());
            endpoints.push(ep);
        }
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let mut set = JoinSet::new();
        for i in 0..n {
            let ep = endpoints[i % endpoint_count].clone();
            let gate = gate.clone();
            let cfg = cfg.clone();
            let stats = stats.clone();
            let stop_rx = stop_rx.clone();
            let (trust, token) = (trust.clone(), token.clone());
            set.spawn(async move {
                let permit = gate.acquire_owned().await.expect("never closed");
                // Each synthetic node is a node of its own: its own
                // certificate, enrolled with the farm's join token.
                let own = client_config(&trust)?;
                let c = connect(&ep, own, quic, i, &cfg, &token).await?;
                drop(permit);
                anyhow::Ok(tokio::spawn(run_node(c, stats, cfg, stop_rx)))
            });
        }
        let mut node_tasks = Vec::with_capacity(n);
        let mut errors = Vec::new();
        while let Some(res) = set.join_next().await {
            match res {
                Ok(Ok(task)) => node_tasks.push(task),
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(e) => errors.push(format!("connect task: {e}")),
            }
        }
        anyhow::Ok((endpoints, node_tasks, errors))
    })?;
    let connect_s = connect_started.elapsed().as_secs_f64();
    let connected_count = node_tasks.len();
    if !args.json {
        println!(
            "\n== {n} nodes: {connected_count} connected in {connect_s:.2} s over {endpoint_count} client endpoint(s), {} failed",
            errors.len()
        );
        if let Some(e) = errors.first() {
            println!("   first failure: {e}");
        }
    }

    // Keep the backlog full from a thread of its own (the REST client
    // blocks).
    let stop_submitting = Arc::new(AtomicBool::new(false));
    let submitter = {
        let client = client.clone();
        let stats = stats.clone();
        let stop = stop_submitting.clone();
        let job_frames = args.job_frames;
        let chunk_s = cfg.chunk_s();
        let low_water = (2 * job_frames).max(2 * n as u64 * args.chunk_frames);
        std::thread::spawn(move || {
            submit_loop(&client, &stats, &stop, job_frames, chunk_s, low_water)
        })
    };

    std::thread::sleep(Duration::from_secs(args.warmup_s));
    let log_path = root.join("coordinator.log");
    let log_before = file_len(&log_path);
    let before = stats.counts();
    let cpu_before = process_ticks(&coordinator_pid.to_string());
    let threads_before = thread_ticks(coordinator_pid);
    let sched_before = schedstat(coordinator_pid);
    let machine_before = machine_ticks();
    let bench_before = process_ticks("self");
    let started = Instant::now();
    stats.measuring.store(true, Ordering::Relaxed);
    let states = sample_states(coordinator_pid, Duration::from_secs(args.seconds));
    stats.measuring.store(false, Ordering::Relaxed);
    let window_s = started.elapsed().as_secs_f64();
    let after = stats.counts();
    let cpu_after = process_ticks(&coordinator_pid.to_string());
    let threads_after = thread_ticks(coordinator_pid);
    let sched_after = schedstat(coordinator_pid);
    let machine_after = machine_ticks();
    let bench_after = process_ticks("self");
    let log_after = file_len(&log_path);
    let (rss_kib, peak_kib) = process_memory_kib(coordinator_pid);
    let load = load_average();
    let journal_mib = dir_bytes(&root.join("coordinator").join("journal"), 4) as f64 / 1048576.0;
    let nodes_view = client.nodes();
    let jobs_view = client.jobs();

    // Stop: submitter, then nodes, then endpoints.
    stop_submitting.store(true, Ordering::Relaxed);
    let submitted = submitter
        .join()
        .map_err(|_| anyhow::anyhow!("the submitter panicked"))??;
    let _ = stop_tx.send(true);
    rt.block_on(async {
        let all = futures_join(node_tasks);
        if tokio::time::timeout(STOP_TIMEOUT, all).await.is_err() {
            eprintln!("some synthetic nodes did not stop within {STOP_TIMEOUT:?}");
        }
        for ep in &endpoints {
            ep.close(0u32.into(), b"bench over");
        }
        for ep in &endpoints {
            let _ = tokio::time::timeout(STOP_TIMEOUT, ep.wait_idle()).await;
        }
    });
    let window_log = read_range(&log_path, log_before, log_after);
    cluster.stop();

    let nodes_view = nodes_view.context("GET /v1/nodes at the end of the window")?;
    let mut ages: Vec<u64> = nodes_view
        .iter()
        .filter(|v| v.connected)
        .map(|v| v.heartbeat_age_ms)
        .collect();
    ages.sort_unstable();
    let jobs_view = jobs_view.context("GET /v1/jobs at the end of the window")?;
    let mut jobs_by_state = std::collections::BTreeMap::new();
    for j in &jobs_view {
        *jobs_by_state
            .entry(format!("{:?}", j.state).to_lowercase())
            .or_insert(0u64) += 1;
    }
    // CPU by thread name: which of the coordinator's threads does the work.
    let mut by_thread: HashMap<String, u64> = HashMap::new();
    for (tid, (comm, ticks)) in &threads_after {
        let was = threads_before.get(tid).map_or(0, |(_, t)| *t);
        *by_thread.entry(comm.clone()).or_insert(0) += ticks.saturating_sub(was);
    }
    let mut coordinator_threads: Vec<(String, f64)> = by_thread
        .into_iter()
        .filter(|(_, t)| *t > 0)
        .map(|(name, t)| (name, t as f64 * 100.0 / USER_HZ as f64 / window_s))
        .collect();
    coordinator_threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    coordinator_threads.truncate(6);
    // The actor thread: on a CPU, waiting for one, blocked in the kernel
    // (disk), or idle.
    let window_ns = window_s * 1e9;
    let (actor_cpu_pct, actor_runqueue_pct) = match (sched_before, sched_after) {
        (Some((r0, w0)), Some((r1, w1))) => (
            Some(r1.saturating_sub(r0) as f64 * 100.0 / window_ns),
            Some(w1.saturating_sub(w0) as f64 * 100.0 / window_ns),
        ),
        _ => (None, None),
    };
    let state_pct = |c: char| {
        let all: u64 = states.values().sum();
        (all > 0).then(|| states.get(&c).copied().unwrap_or(0) as f64 * 100.0 / all as f64)
    };
    let (machine_busy_pct, machine_iowait_pct, machine_irq_pct) =
        match (machine_before, machine_after) {
            (Some(a), Some(b)) => {
                let share = cores_on_machine() * 100.0 / (b.total - a.total).max(1) as f64;
                (
                    Some((b.busy - a.busy) as f64 * share),
                    Some((b.iowait - a.iowait) as f64 * share),
                    Some((b.irq - a.irq) as f64 * share),
                )
            }
            _ => (None, None, None),
        };
    let first_job_error = jobs_view.iter().find_map(|j| j.error.clone());
    let mut lat = std::mem::take(&mut *stats.latency_us.lock().expect("samples"));
    lat.sort_unstable();
    let mut up = std::mem::take(&mut *stats.upload_us.lock().expect("samples"));
    up.sort_unstable();
    let ms = |us: u32| us as f64 / 1000.0;
    let per_s = |a: u64, b: u64| (a - b) as f64 / window_s;
    let cpu_pct =
        |a: Option<u64>, b: Option<u64>| Some((a? - b?) as f64 * 100.0 / USER_HZ as f64 / window_s);
    Ok(Row {
        nodes: n,
        connected: connected_count,
        connect_failures: errors.len(),
        first_connect_error: errors.into_iter().next(),
        connect_s,
        window_s,
        heartbeats_per_s: per_s(after.heartbeats, before.heartbeats),
        progress_per_s: per_s(after.progress, before.progress),
        assigns_per_s: per_s(after.assigns, before.assigns),
        dones_per_s: per_s(after.dones, before.dones),
        failed_per_s: per_s(after.failed, before.failed),
        shrinks: after.shrinks - before.shrinks,
        cancels: after.cancels - before.cancels,
        latency_samples: lat.len(),
        latency_p50_ms: percentile(&lat, 0.50).map(ms),
        latency_p99_ms: percentile(&lat, 0.99).map(ms),
        latency_max_ms: lat.last().copied().map(ms),
        upload_p50_ms: percentile(&up, 0.50).map(ms),
        upload_p99_ms: percentile(&up, 0.99).map(ms),
        coordinator_cpu_pct: cpu_pct(cpu_after, cpu_before),
        coordinator_threads,
        actor_cpu_pct,
        actor_runqueue_pct,
        actor_blocked_pct: state_pct('D'),
        actor_sleeping_pct: state_pct('S'),
        others_cpu_pct: machine_busy_pct.and_then(|m| {
            let coordinator = cpu_pct(cpu_after, cpu_before)?;
            let bench = cpu_pct(bench_after, bench_before)?;
            Some((m - machine_irq_pct? - coordinator - bench).max(0.0))
        }),
        machine_busy_pct,
        machine_irq_pct,
        machine_iowait_pct,
        coordinator_rss_mib: rss_kib.map(|k| k as f64 / 1024.0),
        coordinator_peak_rss_mib: peak_kib.map(|k| k as f64 / 1024.0),
        bench_cpu_pct: cpu_pct(bench_after, bench_before),
        still_connected: nodes_view.iter().filter(|v| v.connected).count(),
        lost: after.lost,
        heartbeat_age_p99_ms: percentile(&ages, 0.99).unwrap_or(0),
        heartbeat_age_max_ms: ages.last().copied().unwrap_or(0),
        jobs_submitted: submitted,
        jobs_capped: submitted >= MAX_JOBS_PER_RUN,
        coordinator_log_bytes_per_s: log_after.saturating_sub(log_before) as f64 / window_s,
        coordinator_warnings: window_log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .count(),
        jobs_by_state,
        first_job_error,
        load_average: load,
        journal_mib,
    })
}

/// Waits for every task, ignoring how each ended.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// A connected synthetic node, its control stream open and welcomed.
struct Connected {
    node: Arc<SynNode>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    heartbeat_interval_ms: u64,
}

/// Connects synthetic node `index` and opens its control stream as the
/// node agent does (`open_control` in `node/src/agent.rs`).
async fn connect(
    endpoint: &quinn::Endpoint,
    tls: quinn::ClientConfig,
    addr: SocketAddr,
    index: usize,
    cfg: &RunCfg,
    token: &str,
) -> anyhow::Result<Connected> {
    let name = format!("syn-{:04}", index + 1);
    let connecting = endpoint.connect_with(tls, addr, CERT_SERVER_NAME)?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("{name}: no QUIC handshake within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("{name}: QUIC handshake"))?;
    let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_u8(StreamKind::Control as u8).await?;
        preamble::write(&mut send, PROTOCOL_VERSION).await?;
        let theirs = preamble::read(&mut recv).await?;
        if theirs != PROTOCOL_VERSION {
            bail!("coordinator speaks protocol {theirs}, this bench {PROTOCOL_VERSION}");
        }
        let mut h = hello(&name, cfg);
        h.join_token = token.to_string();
        codec::write_msg(&mut send, &NodeToCoord::Hello(Box::new(h))).await?;
        match codec::read_msg::<_, CoordToNode>(&mut recv, MAX_CONTROL_FRAME_BYTES).await? {
            Some(CoordToNode::Welcome {
                heartbeat_interval_ms,
                ..
            }) => Ok((send, recv, heartbeat_interval_ms)),
            Some(CoordToNode::Refused { reason, .. }) => bail!("refused: {reason}"),
            Some(other) => bail!("expected a welcome, got {other:?}"),
            None => bail!("the coordinator closed the stream during the handshake"),
        }
    })
    .await;
    let (send, recv, heartbeat_interval_ms) = match opened {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            conn.close(0u32.into(), b"bye");
            return Err(e.context(format!("{name}: control stream")));
        }
        Err(_) => {
            conn.close(0u32.into(), b"bye");
            bail!("{name}: no welcome within {CONNECT_TIMEOUT:?}");
        }
    };
    Ok(Connected {
        node: Arc::new(SynNode {
            conn,
            held: Mutex::default(),
            dones_at: Mutex::default(),
        }),
        send,
        recv,
        heartbeat_interval_ms,
    })
}

/// The hello of a synthetic node: a CPU adapter, libx264, and a calibration
/// of `chunk_frames` frames per second at the jobs' size.
fn hello(name: &str, cfg: &RunCfg) -> Hello {
    let adapter = WireAdapter {
        name: "synthetic".into(),
        backend: "Vulkan".into(),
        device_type: "Cpu".into(),
        vendor: String::new(),
        vram_bytes: 0,
    };
    Hello {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: format!("{:032x}", rand::random::<u128>()),
        name: name.to_string(),
        capabilities: WireCapabilities {
            hostname: name.to_string(),
            os: "synthetic".into(),
            cpu_brand: "synthetic".into(),
            cpu_cores: 1,
            memory_bytes: 1 << 30,
            adapters: vec![adapter.clone()],
            render_adapter: Some(adapter),
            encoders: vec!["libx264".into()],
            tags: vec![],
            pool: String::new(),
            calibration: Some(WireCalibration {
                frames_per_s: cfg.chunk_frames as f64 / cfg.chunk_s(),
                width: JOB_SIDE_PX,
                height: JOB_SIDE_PX,
            }),
            test_override: Some("synthetic bench node".into()),
        },
        running: vec![],
        spooled: vec![],
        join_token: String::new(),
    }
}

/// Runs one synthetic node until the bench stops it or the coordinator
/// goes away.
async fn run_node(
    c: Connected,
    stats: Arc<Stats>,
    cfg: Arc<RunCfg>,
    mut stop: watch::Receiver<bool>,
) {
    let Connected {
        node,
        mut send,
        mut recv,
        heartbeat_interval_ms,
    } = c;
    let (out_tx, mut out_rx) = mpsc::channel::<NodeToCoord>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if codec::write_msg(&mut send, &msg).await.is_err() {
                break;
            }
        }
    });
    let heartbeat = {
        let out = out_tx.clone();
        let node = node.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let period = Duration::from_millis(heartbeat_interval_ms.clamp(100, 60_000));
            // The nodes connect within a fraction of a second; a random
            // phase spreads their heartbeats over the period, as a real
            // farm's are, instead of all landing in the same instant.
            let phase = period.mul_f64(rand::random::<f64>());
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
            loop {
                tick.tick().await;
                let chunks = node
                    .held
                    .lock()
                    .expect("held map")
                    .iter()
                    .filter(|(_, h)| h.started_at.is_some())
                    .map(|(c, h)| ChunkProgress {
                        chunk: *c,
                        frames_done: h.frames_done,
                    })
                    .collect();
                let hb = Heartbeat {
                    cpu_load_pct: 0.0,
                    memory_load_pct: 0.0,
                    chunks,
                };
                if out.send(NodeToCoord::Heartbeat(hb)).await.is_err() {
                    break;
                }
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (work_tx, work_rx) = mpsc::channel::<Assign>(WORK_QUEUE);
    let worker = tokio::spawn(work(
        node.clone(),
        work_rx,
        out_tx.clone(),
        stats.clone(),
        cfg,
    ));

    let lost = loop {
        let msg = tokio::select! {
            _ = stop.changed() => break false,
            m = codec::read_msg::<_, CoordToNode>(&mut recv, MAX_CONTROL_FRAME_BYTES) => m,
        };
        match msg {
            Ok(Some(CoordToNode::Assign(a))) => {
                stats.assigns.fetch_add(1, Ordering::Relaxed);
                stats
                    .assigned_frames
                    .fetch_add(a.end.saturating_sub(a.start) + 1, Ordering::Relaxed);
                let freed_at = node.dones_at.lock().expect("done times").pop_front();
                if let Some(t) = freed_at {
                    stats.sample(&stats.latency_us, t);
                }
                node.held.lock().expect("held map").insert(
                    a.chunk,
                    Held {
                        start: a.start,
                        end: a.end,
                        started_at: None,
                        per_frame: None,
                        frames_done: 0,
                        cancelled: false,
                    },
                );
                if work_tx.send(a).await.is_err() {
                    break true;
                }
            }
            Ok(Some(CoordToNode::Shrink {
                chunk,
                proposed_end,
            })) => {
                stats.shrinks.fetch_add(1, Ordering::Relaxed);
                let end = {
                    let mut held = node.held.lock().expect("held map");
                    held.get_mut(&chunk).and_then(|h| {
                        let before = h.end;
                        let end = h.shrink(proposed_end);
                        stats
                            .returned_frames
                            .fetch_add(before - h.end, Ordering::Relaxed);
                        end
                    })
                };
                if out_tx
                    .send(NodeToCoord::ShrinkAck(ShrinkAck { chunk, end }))
                    .await
                    .is_err()
                {
                    break true;
                }
            }
            Ok(Some(CoordToNode::Cancel(chunk))) => {
                stats.cancels.fetch_add(1, Ordering::Relaxed);
                let mut held = node.held.lock().expect("held map");
                match held.get_mut(&chunk) {
                    Some(h) if h.started_at.is_none() => {
                        held.remove(&chunk);
                    }
                    Some(h) => h.cancelled = true,
                    None => {}
                }
            }
            Ok(Some(CoordToNode::Welcome { .. } | CoordToNode::Refused { .. })) => {}
            Ok(None) | Err(_) => break true,
        }
    };
    if lost {
        stats.lost.fetch_add(1, Ordering::Relaxed);
    }
    heartbeat.abort();
    worker.abort();
    drop(out_tx);
    writer.abort();
    node.conn.close(0u32.into(), b"bye");
}

/// The node's executor: takes assignments one at a time, renders each (at
/// once, or at a steady pace with progress every [`PROGRESS_INTERVAL`]),
/// then uploads it and reports it done.
async fn work(
    node: Arc<SynNode>,
    mut work_rx: mpsc::Receiver<Assign>,
    out: mpsc::Sender<NodeToCoord>,
    stats: Arc<Stats>,
    cfg: Arc<RunCfg>,
) {
    while let Some(a) = work_rx.recv().await {
        let started_at = Instant::now();
        // A rendering node's chunks vary in length around the chunk time,
        // as real ones do, so a farm that started together does not stay
        // in lockstep.
        let per_frame = cfg
            .per_frame()
            .map(|pf| pf.mul_f64(1.0 + PACE_JITTER * (2.0 * rand::random::<f64>() - 1.0)));
        let range = {
            let mut held = node.held.lock().expect("held map");
            held.get_mut(&a.chunk).map(|h| {
                h.started_at = Some(started_at);
                h.per_frame = per_frame;
                (h.start, h.end)
            })
        };
        // Cancelled before it started.
        let Some((start, mut end)) = range else {
            continue;
        };
        if out
            .send(NodeToCoord::Progress(ChunkProgress {
                chunk: a.chunk,
                frames_done: 0,
            }))
            .await
            .is_err()
        {
            return;
        }
        stats.progress.fetch_add(1, Ordering::Relaxed);
        if let Some(per_frame) = per_frame {
            match render(&node, a.chunk, per_frame, &out, &stats).await {
                Rendered::Done(last) => end = last,
                Rendered::Cancelled => continue,
                Rendered::Closed => return,
            }
        }
        let header = UploadHeader {
            chunk: a.chunk,
            start,
            end,
            size_bytes: cfg.segment.len() as u64,
            hash: cfg.segment_hash,
        };
        let frames = end - start + 1;
        let upload_started = Instant::now();
        let uploaded = upload(&node.conn, &header, &cfg.segment).await;
        stats.sample(&stats.upload_us, upload_started);
        let msg = match uploaded {
            Ok(()) => {
                let mut dones = node.dones_at.lock().expect("done times");
                if dones.len() >= MAX_PENDING_DONES {
                    dones.pop_front();
                }
                dones.push_back(Instant::now());
                stats.dones.fetch_add(1, Ordering::Relaxed);
                NodeToCoord::Done(ChunkDone {
                    chunk: a.chunk,
                    start,
                    end,
                    output_hash: cfg.segment_hash,
                    adapter: "synthetic".into(),
                    // An instant node reports the nominal speed of its
                    // calibration, so the scheduler's chunk size stays put.
                    elapsed_ms: if cfg.render_ms > 0 {
                        started_at.elapsed().as_millis() as u64
                    } else {
                        (frames as f64 * cfg.chunk_s() * 1000.0 / cfg.chunk_frames as f64) as u64
                    }
                    .max(1),
                })
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                NodeToCoord::Failed(ChunkFailed {
                    chunk: a.chunk,
                    reason: format!("upload failed: {e:#}"),
                    log_tail: String::new(),
                    failed_frame: None,
                })
            }
        };
        let sent = out.send(msg).await;
        node.held.lock().expect("held map").remove(&a.chunk);
        if sent.is_err() {
            return;
        }
    }
}

/// How rendering a chunk ended.
enum Rendered {
    /// Every frame up to this one (the end after any shrink) is rendered.
    Done(u64),
    /// The coordinator cancelled the chunk.
    Cancelled,
    /// The control stream is gone.
    Closed,
}

/// Renders a started chunk at `per_frame` a frame, sending progress every
/// [`PROGRESS_INTERVAL`] until its frames (after any shrink) are done.
async fn render(
    node: &SynNode,
    chunk: ChunkRef,
    per_frame: Duration,
    out: &mpsc::Sender<NodeToCoord>,
    stats: &Stats,
) -> Rendered {
    let (start, end) = {
        let held = node.held.lock().expect("held map");
        match held.get(&chunk) {
            Some(h) => (h.start, h.end),
            None => return Rendered::Cancelled,
        }
    };
    // The end only moves down, so the chunk never needs more ticks than
    // its first range does; two spare ones absorb rounding.
    let ticks = per_frame.as_nanos() * u128::from(end - start + 1) / PROGRESS_INTERVAL.as_nanos();
    let max_ticks = u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(2);
    let mut last = end;
    for _ in 0..max_ticks {
        tokio::time::sleep(PROGRESS_INTERVAL).await;
        let (frames_done, frames, cancelled) = {
            let mut held = node.held.lock().expect("held map");
            let Some(h) = held.get_mut(&chunk) else {
                return Rendered::Cancelled;
            };
            let frames = h.end - h.start + 1;
            let done = h.frames_rendered(per_frame);
            h.frames_done = done;
            last = h.end;
            let cancelled = h.cancelled;
            if cancelled {
                held.remove(&chunk);
            }
            (done, frames, cancelled)
        };
        if cancelled {
            return Rendered::Cancelled;
        }
        if frames_done >= frames {
            return Rendered::Done(last);
        }
        let progress = NodeToCoord::Progress(ChunkProgress { chunk, frames_done });
        if out.send(progress).await.is_err() {
            return Rendered::Closed;
        }
        stats.progress.fetch_add(1, Ordering::Relaxed);
    }
    Rendered::Done(last)
}

/// Sends a fake segment on its own stream and waits for the verdict.
async fn upload(
    conn: &quinn::Connection,
    header: &UploadHeader,
    body: &[u8],
) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_u8(StreamKind::Upload as u8).await?;
    codec::write_msg(&mut send, header).await?;
    let admission = tokio::time::timeout(
        UPLOAD_REPLY_TIMEOUT,
        codec::read_msg::<_, UploadAdmission>(&mut recv, MAX_UPLOAD_FRAME_BYTES),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no admission within {UPLOAD_REPLY_TIMEOUT:?}"))??;
    let offset = match admission {
        Some(UploadAdmission::Accept { offset_bytes }) => offset_bytes,
        Some(UploadAdmission::NotNeeded { reason }) => bail!("not needed: {reason}"),
        Some(UploadAdmission::Later { reason }) => bail!("later: {reason}"),
        Some(UploadAdmission::Rejected { reason }) => bail!("rejected: {reason}"),
        None => bail!("upload stream closed without an admission"),
    };
    let from = usize::try_from(offset)?.min(body.len());
    send.write_all(&body[from..]).await?;
    send.finish()?;
    let verdict = tokio::time::timeout(
        UPLOAD_REPLY_TIMEOUT,
        codec::read_msg::<_, UploadOutcome>(&mut recv, MAX_UPLOAD_FRAME_BYTES),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no verdict within {UPLOAD_REPLY_TIMEOUT:?}"))??;
    match verdict {
        Some(UploadOutcome::Stored) => Ok(()),
        Some(UploadOutcome::Later { reason }) => bail!("later: {reason}"),
        Some(UploadOutcome::Rejected { reason }) => bail!("rejected: {reason}"),
        None => bail!("upload stream closed without a verdict"),
    }
}

/// Submits a job whenever the frames submitted but not yet assigned fall
/// under `low_water`; returns how many jobs it submitted.
fn submit_loop(
    client: &Client,
    stats: &Stats,
    stop: &AtomicBool,
    job_frames: u64,
    chunk_s: f64,
    low_water: u64,
) -> anyhow::Result<u64> {
    let spec = serde_json::json!({
        "name": "quic load",
        "frames": { "start": 0, "end": job_frames - 1 },
        "fps": 24,
        "resolution": { "width": JOB_SIDE_PX, "height": JOB_SIDE_PX },
        "render": { "kind": "shader", "shader": SHADER },
        "chunk_target_s": chunk_s,
    });
    let mut submitted_frames = 0u64;
    let mut jobs = 0u64;
    while !stop.load(Ordering::Relaxed) && jobs < MAX_JOBS_PER_RUN {
        let taken = stats
            .assigned_frames
            .load(Ordering::Relaxed)
            .saturating_sub(stats.returned_frames.load(Ordering::Relaxed));
        if submitted_frames.saturating_sub(taken) < low_water {
            client.submit_json(&spec).context("submitting a job")?;
            submitted_frames += job_frames;
            jobs += 1;
        } else {
            std::thread::sleep(SUBMIT_POLL);
        }
    }
    Ok(jobs)
}

/// The `q` quantile of sorted `v` (nearest rank).
fn percentile<T: Copy>(v: &[T], q: f64) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    let idx = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[idx])
}

/// The coordinator whose command line names `data_dir` (`Cluster` does
/// not expose its children).
fn coordinator_pid(data_dir: &Path) -> Option<u32> {
    let want = data_dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == want))
        })
}

/// utime + stime of a process, clock ticks.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its `)`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `state` (field 3)
    // is the first after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Time on a CPU and time runnable but waiting for one, nanoseconds, of a
/// process's main thread.
fn schedstat(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat")).ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// How often the main thread's state is sampled.
const STATE_SAMPLE: Duration = Duration::from_millis(5);

/// Samples the state letter (`R`, `S`, `D`, ...) of a process's main thread
/// for `window`; returns the count of each.
fn sample_states(pid: u32, window: Duration) -> HashMap<char, u64> {
    let mut counts = HashMap::new();
    let path = format!("/proc/{pid}/task/{pid}/stat");
    let end = Instant::now() + window;
    while Instant::now() < end {
        let state = std::fs::read_to_string(&path).ok().and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next()?.chars().next()
        });
        if let Some(c) = state {
            *counts.entry(c).or_insert(0) += 1;
        }
        std::thread::sleep(STATE_SAMPLE);
    }
    counts
}

/// The machine's CPU time from `/proc/stat`, clock ticks.
struct MachineTicks {
    total: u64,
    /// Everything but idle and iowait.
    busy: u64,
    iowait: u64,
    /// Interrupts, softirqs (loopback packets are delivered there) and
    /// steal: busy time no process is charged for.
    irq: u64,
}

fn machine_ticks() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = *v.get(3)?;
    let iowait = *v.get(4)?;
    let irq = v.iter().skip(5).take(3).sum();
    Some(MachineTicks {
        total,
        busy: total - idle - iowait,
        iowait,
        irq,
    })
}

/// Cores of the machine, to turn `/proc/stat` shares into percent of one
/// core.
fn cores_on_machine() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Every thread of a process: its name and utime + stime, clock ticks.
fn thread_ticks(pid: u32) -> HashMap<u32, (String, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            let ticks = process_ticks(&format!("{pid}/task/{tid}"))?;
            Some((tid, (comm.trim().to_string(), ticks)))
        })
        .collect()
}

/// `VmRSS` and `VmHWM` of a process, KiB.
fn process_memory_kib(pid: u32) -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes of the files under `dir`, at most `depth` levels down.
fn dir_bytes(dir: &Path, depth: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() && depth > 0 => dir_bytes(&e.path(), depth - 1),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes `from..to` of a file, as text (lossy).
fn read_range(path: &Path, from: u64, to: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.take(to.saturating_sub(from)).read_to_end(&mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// `/proc/loadavg`'s first three fields, for the record.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn print_row_detail(r: &Row) {
    println!(
        "   window {:.1} s: {:.0} heartbeats/s, {:.0} progress/s, {:.0} assignments/s, {:.0} done/s, {:.1} failed/s, \
         {} shrinks, {} cancels; {} jobs submitted{}; coordinator log {:.0} KB/s, {} warnings",
        r.window_s,
        r.heartbeats_per_s,
        r.progress_per_s,
        r.assigns_per_s,
        r.dones_per_s,
        r.failed_per_s,
        r.shrinks,
        r.cancels,
        r.jobs_submitted,
        if r.jobs_capped { " (capped)" } else { "" },
        r.coordinator_log_bytes_per_s / 1000.0,
        r.coordinator_warnings,
    );
    let threads: Vec<String> = r
        .coordinator_threads
        .iter()
        .map(|(name, pct)| format!("{name} {pct:.0}%"))
        .collect();
    println!(
        "   upload (stream opened to verdict) p50 {} ms, p99 {} ms",
        opt(r.upload_p50_ms, 1),
        opt(r.upload_p99_ms, 1)
    );
    println!("   coordinator CPU by thread: {}", threads.join(", "));
    println!(
        "   coordinator main thread: on CPU {}%, waiting for a CPU {}%; blocked on disk {}%, sleeping {}% of samples; \
         machine busy {}% (other processes {}%, irq+softirq+steal {}%), iowait {}% of one core",
        opt(r.actor_cpu_pct, 0),
        opt(r.actor_runqueue_pct, 0),
        opt(r.actor_blocked_pct, 0),
        opt(r.actor_sleeping_pct, 0),
        opt(r.machine_busy_pct, 0),
        opt(r.others_cpu_pct, 0),
        opt(r.machine_irq_pct, 0),
        opt(r.machine_iowait_pct, 0),
    );
    println!(
        "   jobs at the end: {:?}; first job error: {}",
        r.jobs_by_state,
        r.first_job_error.as_deref().unwrap_or("none")
    );
    println!(
        "   journal {:.1} MiB at the end; load average at the end: {}",
        r.journal_mib, r.load_average
    );
}

/// The summary: one line per farm size. `main thr` is the coordinator's
/// main thread on a CPU plus waiting for one, percent of the window: near
/// 100 it is saturated.
fn print_table(rows: &[Row]) {
    println!();
    println!(
        "nodes | connected connect_s | hb_sent/s progress/s assign/s | assign latency p50 p99 ms | upload p50 ms \
         | coord CPU% main thr% RSS MiB | bench CPU% others% | still_conn lost | hb_age p99/max ms"
    );
    for r in rows {
        let main_thread = match (r.actor_cpu_pct, r.actor_runqueue_pct) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        println!(
            "{:5} | {:9} {:9.2} | {:9.0} {:10.0} {:8.0} | {:>14} {:>10} | {:>13} | {:>10} {:>9} {:>7} | {:>10} {:>7} | {:>10} {:4} | {:>6}/{}",
            r.nodes,
            r.connected,
            r.connect_s,
            r.heartbeats_per_s,
            r.progress_per_s,
            r.assigns_per_s,
            opt(r.latency_p50_ms, 1),
            opt(r.latency_p99_ms, 1),
            opt(r.upload_p50_ms, 1),
            opt(r.coordinator_cpu_pct, 0),
            opt(main_thread, 0),
            opt(r.coordinator_rss_mib, 0),
            opt(r.bench_cpu_pct, 0),
            opt(r.others_cpu_pct, 0),
            r.still_connected,
            r.lost,
            r.heartbeat_age_p99_ms,
            r.heartbeat_age_max_ms,
        );
    }
}

//! The coordinator's front door under load, against real `drover
//! coordinator` processes (started through [`Cluster`], no nodes, so jobs
//! just queue):
//!
//! 1. **Submissions, REST against QUIC, side by side in one run.** One key
//!    with a high rate limit and `max_active_jobs`. A phase opens
//!    `--clients` connections (64 setting up at a time; set-up is not
//!    timed), waits until all are open, then releases them at once: each
//!    submits `--per-client` jobs in a row, timing each request from send
//!    to its `201`. REST clients speak HTTP/1.1 over one keep-alive
//!    `TcpStream` each (a minimal client, `front_door/http.rs`); QUIC
//!    clients are `drover submit --quic`'s `QuicClient`, one connection
//!    (and UDP socket) each. Both are tasks on one tokio runtime with a
//!    thread per core. Rounds alternate which transport goes first.
//! 2. **`GET /v1/jobs` with a long history.** Before a coordinator starts,
//!    its data dir's journal is written with `--history` ended jobs
//!    (`front_door/history.rs`: spread over states and projects, archived as
//!    real ones are, the newest failed and cancelled ones still in memory).
//!    Then its start-up time, and the latency of pages requested one after
//!    another on one keep-alive connection: the first page, a page 100
//!    `next` links deep, one near the oldest job, `?state=done`,
//!    `?project=rare` (1 % of the jobs: the coordinator stops scanning the
//!    archive at its per-request limit and answers with a cursor, so the
//!    requests it takes to collect 50 matches are reported too) and
//!    `limit=500`. Every page is checked: the whole history is walked and
//!    must come back complete and newest first.
//! 3. **Event fan-out.** `--subscribers` SSE streams on `GET /v1/events`
//!    (over several keys: a key holds at most 64), all open (each has read
//!    the stream's `: stream open` comment) before one client submits
//!    `--events` jobs at `--event-rate` per second. Each subscriber records,
//!    for each `job.submitted` event, its receive time minus the event's
//!    `at_ms` (the publish time, in whole milliseconds, so latencies read up
//!    to 1 ms high); every event must reach every subscriber.
//!
//! The coordinator and this process share the machine's cores: the output
//! says how many, and how much CPU each used in each timed window.
//! Figures are printed, never asserted (bench/tests/front_door.rs checks a
//! small run); they are recorded in `bench/RESULTS.md`. `--json` adds one
//! JSON line with everything at the end.

#[path = "front_door/history.rs"]
mod history;
#[path = "front_door/http.rs"]
mod http;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use drover_bench::WorkDir;
use drover_cli::cluster::Cluster;
use drover_cli::quic_client::QuicClient;
use drover_coordinator::api::events::MAX_STREAMS_PER_KEY;
use drover_node::tls::Trust;
use drover_shared::api::{JobPage, JobState};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use history::{History, RARE_PROJECT};
use http::Conn;

/// Connections being set up at once (TCP connect, or QUIC handshake and
/// stream preamble): the coordinator admits 256 pending QUIC handshakes,
/// and actix answers a connection whose request takes more than 5 s with a
/// 408, so set-up must never queue long.
const CONNECT_CONCURRENCY: usize = 64;
/// Longest one connection's set-up may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries per connection: the coordinator refuses QUIC handshakes beyond
/// its rate (200/s after a burst of 2,000), and a refused one is tried
/// again after [`CONNECT_RETRY_PAUSE`].
const CONNECT_ATTEMPTS: u32 = 3;
/// Pause before trying a refused connection again.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Longest all connections of a phase may take to be set up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a submission phase may run after its start.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long subscribers may take to receive the last events once the
/// publisher is done; whatever has not arrived by then is missing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// `next` links followed for the deep page.
const DEEP_PAGES: usize = 100;
/// Jobs per page of the listing figures (the API's default).
const PAGE: usize = 50;
/// The API's largest page.
const BIG_PAGE: usize = 500;
/// Matches the rare-project figure collects.
const RARE_WANTED: usize = 50;
/// Requests any walk over pages may make: far more than a walk of
/// 1,000,000 jobs at 500 a page needs.
const MAX_WALK_REQUESTS: usize = 100_000;
/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`).
const USER_HZ: f64 = 100.0;
/// The job every submission sends: small, and no node will run it.
const SPEC_FRAMES: u64 = 4;

/// Measures the coordinator's REST and QUIC submissions, `GET /v1/jobs`
/// over a long history, and the event stream's fan-out.
#[derive(Debug, Parser)]
#[command(
    name = "front-door",
    after_help = "Example:\n  cargo build --release -p drover-cli -p drover-bench\n  target/release/front-door\n  target/release/front-door --clients 20 --per-client 2 --history 2000 --subscribers 20 --events 10 --json"
)]
struct Args {
    /// Concurrent clients per submission phase (each its own connection).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=4_000))]
    clients: u64,
    /// Jobs each client submits, one after another.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    per_client: u64,
    /// Rounds of the two submission phases; odd rounds start with REST,
    /// even ones with QUIC.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=10))]
    rounds: u64,
    /// Ended jobs in the history the listing figures run against (0 skips
    /// them).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    history: u64,
    /// Requests per listing figure.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    list_requests: u64,
    /// Event-stream subscribers (0 skips the fan-out); the coordinator
    /// allows 4,096 streams in all.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=4_096))]
    subscribers: u64,
    /// Jobs submitted while the subscribers listen (one event each).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    events: u64,
    /// Submissions per second during the fan-out.
    #[arg(long, default_value_t = 50.0)]
    event_rate: f64,
    /// Leave each submission phase's jobs queued. By default they are
    /// cancelled after the phase (untimed), so that every phase starts with
    /// an empty queue: a submission's cost grows with the jobs queued.
    #[arg(long)]
    keep_queue: bool,
    /// `DROVER_LOG` for the coordinators (their default, `info`, logs a
    /// line per accepted job).
    #[arg(long)]
    coordinator_log: Option<String>,
    /// The `drover` binary (default: `drover` next to this executable, that
    /// is `target/release/drover` after `cargo build --release -p drover-cli`).
    #[arg(long)]
    drover: Option<PathBuf>,
    /// One JSON line with every figure at the end.
    #[arg(long)]
    json: bool,
    /// Keep the working directory (data dirs and logs) and print its path.
    #[arg(long)]
    keep: bool,
}

// ---------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------

/// Latency quantiles of one set of samples, ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Quantiles {
    count: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Quantiles {
    fn of(mut ms: Vec<f64>) -> Quantiles {
        ms.sort_by(f64::total_cmp);
        Quantiles {
            count: ms.len(),
            p50_ms: percentile(&ms, 0.50),
            p99_ms: percentile(&ms, 0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// The `q` quantile of sorted `v` (nearest rank); 0 for none.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let idx = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

/// One submission phase.
#[derive(Debug, Clone, Serialize)]
struct Phase {
    transport: &'static str,
    clients: u64,
    /// Clients whose connection was set up.
    connected: u64,
    /// Time to set up every connection (not in the throughput).
    connect_s: f64,
    /// Connection attempts tried again after a refusal.
    connect_retries: u64,
    /// Submissions meant: clients x per client.
    requests: u64,
    /// Answered 201.
    ok: u64,
    /// Everything else: other statuses, broken connections, timeouts, and
    /// the submissions of clients that never connected.
    errors: u64,
    first_error: Option<String>,
    /// From the start signal to the last client's last answer.
    wall_s: f64,
    /// `ok / wall_s`.
    per_s: f64,
    latency: Quantiles,
    /// CPU of the coordinator and of this process during the timed part, %
    /// of one core.
    coordinator_cpu_pct: f64,
    bench_cpu_pct: f64,
}

/// One round: both transports, and QUIC's figures over REST's.
#[derive(Debug, Clone, Serialize)]
struct Round {
    round: u64,
    first: &'static str,
    rest: Phase,
    quic: Phase,
    quic_over_rest_per_s: f64,
    quic_over_rest_p50: f64,
    quic_over_rest_p99: f64,
}

/// One listing figure.
#[derive(Debug, Clone, Serialize)]
struct ListFigure {
    what: String,
    query: String,
    latency: Quantiles,
    /// Jobs on the page (the last answer).
    jobs: usize,
    /// Bytes of the page.
    bytes: usize,
    errors: u64,
}

/// Collecting matches of a filter that the archive scan ends early.
#[derive(Debug, Clone, Default, Serialize)]
struct Collect {
    /// Requests until 50 matches (or the end).
    requests_to_50: usize,
    /// Matches each of those requests returned.
    matches_per_request: Vec<usize>,
    ms_to_50: f64,
    /// Requests and time to walk every match to the end.
    requests_all: usize,
    matches_all: usize,
    ms_all: f64,
}

/// The listing section.
#[derive(Debug, Clone, Serialize)]
struct Listing {
    history: History,
    /// Coordinator start (process spawned to addresses written and a join
    /// token made over REST).
    start_s: f64,
    /// What the coordinator logged of its journal replay.
    replay_ms: Option<u64>,
    facts_replayed: Option<u64>,
    figures: Vec<ListFigure>,
    /// `next` links actually followed for the deep page.
    deep_pages: usize,
    rare: Collect,
    /// The whole history walked at 500 a page.
    walk_requests: usize,
    walk_jobs: usize,
    walk_s: f64,
    /// Pages that were wrong: out of order, missing or extra jobs, a job
    /// not passing the filter, a bad status.
    errors: u64,
    first_error: Option<String>,
}

/// The fan-out section.
#[derive(Debug, Clone, Serialize)]
struct Fanout {
    subscribers: u64,
    /// Streams that opened.
    open: u64,
    keys: u64,
    /// Time until every stream was open.
    connect_s: f64,
    /// Events published (jobs accepted).
    published: u64,
    publish_per_s: f64,
    publish_latency: Quantiles,
    /// Deliveries expected (subscribers x published) and received.
    expected: u64,
    delivered: u64,
    missing: u64,
    /// Delivery latency over every (subscriber, event).
    latency: Quantiles,
    /// Per event, the latency of its last copy to arrive.
    last_copy: Quantiles,
    /// Resets, duplicate or unknown events, broken streams, failed
    /// submissions, streams that did not open.
    errors: u64,
    first_error: Option<String>,
    coordinator_cpu_pct: f64,
    bench_cpu_pct: f64,
}

/// Everything, for `--json`.
#[derive(Debug, Serialize)]
struct Summary {
    cores: usize,
    cpu_model: String,
    rounds: Vec<Round>,
    listing: Option<Listing>,
    fanout: Option<Fanout>,
    /// Errors of every section.
    errors: u64,
}

// ---------------------------------------------------------------------
// Machine
// ---------------------------------------------------------------------

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The coordinator whose command line names `data_dir`.
fn coordinator_pid(data_dir: &Path) -> Option<String> {
    let want = data_dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == want))
        })
}

/// CPU used by the coordinator and by this process over a window.
struct CpuWindow {
    coordinator: Option<String>,
    started: Instant,
    coordinator_ticks: u64,
    bench_ticks: u64,
}

impl CpuWindow {
    fn start(coordinator: Option<String>) -> CpuWindow {
        CpuWindow {
            coordinator_ticks: coordinator.as_deref().and_then(cpu_ticks).unwrap_or(0),
            bench_ticks: cpu_ticks("self").unwrap_or(0),
            coordinator,
            started: Instant::now(),
        }
    }

    /// (coordinator, bench) CPU as % of one core since the start.
    fn end(&self) -> (f64, f64) {
        let s = self.started.elapsed().as_secs_f64().max(1e-9);
        let pct = |now: Option<u64>, then: u64| {
            now.map_or(0.0, |t| t.saturating_sub(then) as f64 / USER_HZ / s * 100.0)
        };
        (
            pct(
                self.coordinator.as_deref().and_then(cpu_ticks),
                self.coordinator_ticks,
            ),
            pct(cpu_ticks("self"), self.bench_ticks),
        )
    }
}

// ---------------------------------------------------------------------
// REST helpers
// ---------------------------------------------------------------------

/// A keep-alive connection that reconnects when the server closed it
/// (actix closes one idle for a few seconds), for sequential requests.
struct KeepAlive {
    addr: SocketAddr,
    key: String,
    conn: Option<Conn>,
}

impl KeepAlive {
    fn new(addr: SocketAddr, key: &str) -> KeepAlive {
        KeepAlive {
            addr,
            key: key.to_string(),
            conn: None,
        }
    }

    async fn connect(&mut self) -> anyhow::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(Conn::connect(self.addr).await?);
        }
        Ok(())
    }

    /// A request; a GET that finds the connection closed is sent once more
    /// on a new one (a POST is never repeated).
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> anyhow::Result<http::Response> {
        for attempt in 0..2 {
            self.connect().await?;
            let conn = self.conn.as_mut().expect("connected above");
            match tokio::time::timeout(REQUEST_TIMEOUT, conn.request(method, path, &self.key, body))
                .await
            {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => {
                    self.conn = None;
                    if attempt == 1 || method != "GET" {
                        return Err(e);
                    }
                }
                Err(_) => {
                    self.conn = None;
                    bail!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}");
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
    ) -> anyhow::Result<(T, usize)> {
        let r = self.request("GET", path, None).await?;
        if r.status != 200 {
            bail!(
                "GET {path}: status {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        let v = serde_json::from_slice(&r.body).with_context(|| format!("GET {path}"))?;
        Ok((v, r.body.len()))
    }
}

/// Creates an API key with the admin key; returns its secret.
async fn create_key(
    admin: &mut KeepAlive,
    name: &str,
    role: &str,
    rate_per_s: u32,
    max_active_jobs: Option<u32>,
) -> anyhow::Result<String> {
    let mut body = serde_json::json!({ "name": name, "role": role, "rate_per_s": rate_per_s });
    if let Some(m) = max_active_jobs {
        body["max_active_jobs"] = m.into();
    }
    let body = serde_json::to_vec(&body)?;
    let r = admin
        .request("POST", "/v1/keys", Some(("application/json", &body)))
        .await?;
    if r.status != 201 {
        bail!(
            "POST /v1/keys: status {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).context("POST /v1/keys")?;
    v["secret"]
        .as_str()
        .map(str::to_string)
        .context("POST /v1/keys answered no secret")
}

fn spec_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "name": "front-door",
        "frames": { "start": 1, "end": SPEC_FRAMES },
        "fps": 24,
        "resolution": { "width": 64, "height": 64 },
        "render": { "kind": "shader", "shader": "rings" },
    }))
    .expect("a JSON value encodes")
}

fn start_cluster(drover: &Path, root: &Path, args: &Args) -> anyhow::Result<(Cluster, f64)> {
    let mut env = vec![("NO_COLOR", "1")];
    if let Some(level) = &args.coordinator_log {
        env.push(("DROVER_LOG", level.as_str()));
    }
    let started = Instant::now();
    let cluster = Cluster::start(drover, root, &[], &env)
        .with_context(|| format!("starting a coordinator in {}", root.display()))?;
    Ok((cluster, started.elapsed().as_secs_f64()))
}

// ---------------------------------------------------------------------
// 1. Submissions
// ---------------------------------------------------------------------

/// A way to submit: its client and how it connects and submits.
trait Transport: Clone + Send + Sync + 'static {
    type Client: Send + 'static;
    const NAME: &'static str;
    fn connect(&self) -> impl Future<Output = anyhow::Result<Self::Client>> + Send;
    /// Submits `body`; the answer's status and body.
    fn submit(
        &self,
        client: &mut Self::Client,
        body: &[u8],
    ) -> impl Future<Output = anyhow::Result<(u16, Vec<u8>)>> + Send;
    fn close(client: Self::Client);
}

#[derive(Clone)]
struct Rest {
    addr: SocketAddr,
    key: Arc<str>,
}

impl Transport for Rest {
    type Client = Conn;
    const NAME: &'static str = "REST";

    fn connect(&self) -> impl Future<Output = anyhow::Result<Conn>> + Send {
        Conn::connect(self.addr)
    }

    async fn submit(&self, client: &mut Conn, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let r = client
            .request(
                "POST",
                "/v1/jobs",
                &self.key,
                Some(("application/json", body)),
            )
            .await?;
        Ok((r.status, r.body))
    }

    fn close(_: Conn) {}
}

#[derive(Clone)]
struct Quic {
    addr: SocketAddr,
    trust: Trust,
    key: Arc<str>,
}

impl Transport for Quic {
    type Client = QuicClient;
    const NAME: &'static str = "QUIC";

    async fn connect(&self) -> anyhow::Result<QuicClient> {
        QuicClient::connect(self.addr, &self.trust, &self.key).await
    }

    async fn submit(&self, client: &mut QuicClient, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let a = client
            .call("POST", "/v1/jobs", "application/json", body.to_vec())
            .await?;
        Ok((a.status, a.body))
    }

    fn close(client: QuicClient) {
        client.close();
    }
}

/// What one client did.
struct ClientRun {
    latency_ms: Vec<f64>,
    /// The jobs it submitted.
    jobs: Vec<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    finished: Option<Instant>,
}

/// Sets up a connection, trying a refused one again.
async fn connect_with_retry<T: Transport>(t: &T) -> (anyhow::Result<T::Client>, u64) {
    let mut retries = 0;
    loop {
        let r = match tokio::time::timeout(CONNECT_TIMEOUT, t.connect()).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("no connection within {CONNECT_TIMEOUT:?}")),
        };
        if r.is_ok() || retries + 1 >= u64::from(CONNECT_ATTEMPTS) {
            return (r, retries);
        }
        retries += 1;
        tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
    }
}

/// The job id of a `201` to `POST /v1/jobs`.
fn submitted_id(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("id")?
        .as_u64()
}

/// One phase: `clients` connections set up, then all released at once.
/// Returns its figures and the jobs it submitted.
async fn submit_phase<T: Transport>(
    t: T,
    clients: u64,
    per_client: u64,
    body: Arc<[u8]>,
    coordinator: Option<String>,
) -> (Phase, Vec<u64>) {
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<u64, (String, u64)>>(clients as usize);
    let (start_tx, start_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let setup_started = Instant::now();
    for _ in 0..clients {
        let (t, gate, ready_tx, mut start_rx, body) = (
            t.clone(),
            gate.clone(),
            ready_tx.clone(),
            start_rx.clone(),
            body.clone(),
        );
        set.spawn(async move {
            let mut run = ClientRun {
                latency_ms: Vec::with_capacity(per_client as usize),
                jobs: Vec::with_capacity(per_client as usize),
                ok: 0,
                errors: 0,
                first_error: None,
                finished: None,
            };
            let permit = gate.acquire_owned().await.expect("never closed");
            let (client, retries) = connect_with_retry(&t).await;
            drop(permit);
            let mut client = match client {
                Ok(c) => {
                    let _ = ready_tx.send(Ok(retries)).await;
                    c
                }
                Err(e) => {
                    let _ = ready_tx.send(Err((format!("{e:#}"), retries))).await;
                    run.errors = per_client;
                    return run;
                }
            };
            if start_rx.wait_for(|go| *go).await.is_err() {
                run.errors = per_client;
                return run;
            }
            for i in 0..per_client {
                let sent = Instant::now();
                let r =
                    tokio::time::timeout(REQUEST_TIMEOUT, t.submit(&mut client, &body[..])).await;
                let ms = sent.elapsed().as_secs_f64() * 1e3;
                match r {
                    Ok(Ok((201, body))) => {
                        run.ok += 1;
                        run.latency_ms.push(ms);
                        match submitted_id(&body) {
                            Some(id) => run.jobs.push(id),
                            None => {
                                run.errors += 1;
                                run.first_error
                                    .get_or_insert_with(|| "a 201 without a job id".into());
                            }
                        }
                    }
                    Ok(Ok((status, _))) => {
                        run.errors += 1;
                        run.first_error
                            .get_or_insert_with(|| format!("status {status}"));
                    }
                    Ok(Err(e)) => {
                        // The connection is gone: this and the rest fail.
                        run.errors += per_client - i;
                        run.first_error.get_or_insert_with(|| format!("{e:#}"));
                        break;
                    }
                    Err(_) => {
                        run.errors += per_client - i;
                        run.first_error
                            .get_or_insert_with(|| format!("no answer within {REQUEST_TIMEOUT:?}"));
                        break;
                    }
                }
            }
            run.finished = Some(Instant::now());
            T::close(client);
            run
        });
    }
    drop(ready_tx);
    let mut phase = Phase {
        transport: T::NAME,
        clients,
        connected: 0,
        connect_s: 0.0,
        connect_retries: 0,
        requests: clients * per_client,
        ok: 0,
        errors: 0,
        first_error: None,
        wall_s: 0.0,
        per_s: 0.0,
        latency: Quantiles::default(),
        coordinator_cpu_pct: 0.0,
        bench_cpu_pct: 0.0,
    };
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    while answered < clients {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(retries))) => {
                phase.connected += 1;
                phase.connect_retries += retries;
            }
            Ok(Some(Err((e, retries)))) => {
                phase.connect_retries += retries;
                phase
                    .first_error
                    .get_or_insert_with(|| format!("connecting: {e}"));
            }
            Ok(None) => break,
            Err(_) => {
                phase.first_error.get_or_insert_with(|| {
                    format!("not every connection was set up within {SETUP_TIMEOUT:?}")
                });
                break;
            }
        }
        answered += 1;
    }
    phase.connect_s = setup_started.elapsed().as_secs_f64();
    let cpu = CpuWindow::start(coordinator);
    let started = Instant::now();
    let _ = start_tx.send(true);
    let mut latency = Vec::with_capacity(phase.requests as usize);
    let mut jobs = Vec::with_capacity(phase.requests as usize);
    let mut last = started;
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(run))) => {
                phase.ok += run.ok;
                phase.errors += run.errors;
                if phase.first_error.is_none() {
                    phase.first_error = run.first_error;
                }
                latency.extend(run.latency_ms);
                jobs.extend(run.jobs);
                if let Some(f) = run.finished {
                    last = last.max(f);
                }
            }
            Ok(Some(Err(e))) => {
                phase.errors += per_client;
                phase
                    .first_error
                    .get_or_insert_with(|| format!("a client task failed: {e}"));
            }
            Ok(None) => break,
            Err(_) => {
                phase.first_error.get_or_insert_with(|| {
                    format!("clients still running after {PHASE_TIMEOUT:?}")
                });
                set.abort_all();
                break;
            }
        }
    }
    (phase.coordinator_cpu_pct, phase.bench_cpu_pct) = cpu.end();
    // Whatever did not finish counts as failed.
    phase.errors = phase.errors.max(phase.requests - phase.ok);
    phase.wall_s = (last - started).as_secs_f64();
    phase.per_s = phase.ok as f64 / phase.wall_s.max(1e-9);
    phase.latency = Quantiles::of(latency);
    (phase, jobs)
}

/// Cancels `jobs` over REST, [`CONNECT_CONCURRENCY`] connections at a
/// time; returns how many were cancelled and the first error.
async fn cancel_all(addr: SocketAddr, key: &str, jobs: Vec<u64>) -> (u64, Option<String>) {
    let jobs = Arc::new(jobs);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..CONNECT_CONCURRENCY {
        let (jobs, next, key) = (jobs.clone(), next.clone(), key.to_string());
        set.spawn(async move {
            let mut conn = KeepAlive::new(addr, &key);
            let mut done = 0u64;
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(id) = jobs.get(i) else { break };
                let path = format!("/v1/jobs/{id}/cancel");
                match conn.request("POST", &path, None).await {
                    Ok(r) if r.status == 200 => done += 1,
                    Ok(r) => {
                        first_error.get_or_insert(format!("{path}: status {}", r.status));
                    }
                    Err(e) => {
                        first_error.get_or_insert(format!("{path}: {e:#}"));
                    }
                }
            }
            (done, first_error)
        });
    }
    let mut done = 0;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok((d, e)) => {
                done += d;
                if first_error.is_none() {
                    first_error = e;
                }
            }
            Err(e) => {
                first_error.get_or_insert(format!("a cancelling task failed: {e}"));
            }
        }
    }
    (done, first_error)
}

fn submissions(
    rt: &tokio::runtime::Runtime,
    drover: &Path,
    root: &Path,
    args: &Args,
) -> anyhow::Result<Vec<Round>> {
    let (mut cluster, _) = start_cluster(drover, root, args)?;
    let coordinator = coordinator_pid(&root.join("coordinator"));
    let admin_key = cluster.admin_key()?;
    let http_addr = cluster.addrs.http;
    let key: Arc<str> = rt
        .block_on(async {
            let mut admin = KeepAlive::new(http_addr, &admin_key);
            create_key(
                &mut admin,
                "front-door",
                "submitter",
                100_000,
                Some(1_000_000),
            )
            .await
        })?
        .into();
    let rest = Rest {
        addr: http_addr,
        key: key.clone(),
    };
    let quic = Quic {
        addr: cluster.addrs.quic,
        trust: Trust::CertFile(cluster.addrs.cert_path.clone()),
        key,
    };
    let body: Arc<[u8]> = spec_body().into();
    println!(
        "submissions: {} clients x {} jobs per phase, {} round(s); job spec {} bytes (64x64, {SPEC_FRAMES} frames, `rings`), no nodes",
        args.clients,
        args.per_client,
        args.rounds,
        body.len()
    );
    println!(
        "  {:>5} {:<5} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7} {:>10} {:>7} {:>7}",
        "round",
        "via",
        "connect s",
        "wall s",
        "jobs/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "coord CPU%",
        "bench%",
        "retries"
    );
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let rest_first = round % 2 == 1;
        let mut rest_phase = None;
        let mut quic_phase = None;
        for step in 0..2 {
            let (mut phase, jobs) = if (step == 0) == rest_first {
                rt.block_on(submit_phase(
                    rest.clone(),
                    args.clients,
                    args.per_client,
                    body.clone(),
                    coordinator.clone(),
                ))
            } else {
                rt.block_on(submit_phase(
                    quic.clone(),
                    args.clients,
                    args.per_client,
                    body.clone(),
                    coordinator.clone(),
                ))
            };
            println!(
                "  {:>5} {:<5} {:>9.2} {:>9.2} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>10.0} {:>7.0} {:>7}",
                round,
                phase.transport,
                phase.connect_s,
                phase.wall_s,
                phase.per_s,
                phase.latency.p50_ms,
                phase.latency.p99_ms,
                phase.latency.max_ms,
                phase.errors,
                phase.coordinator_cpu_pct,
                phase.bench_cpu_pct,
                phase.connect_retries
            );
            if let Some(e) = &phase.first_error {
                println!("        first error: {e}");
            }
            if !args.keep_queue {
                let started = Instant::now();
                let n = jobs.len();
                let (cancelled, error) = rt.block_on(cancel_all(http_addr, &rest.key, jobs));
                println!(
                    "        (cancelled its {cancelled} of {n} jobs in {:.1} s, untimed, so the next phase starts with none queued)",
                    started.elapsed().as_secs_f64()
                );
                if let Some(e) = error {
                    phase.errors += n as u64 - cancelled;
                    phase.first_error.get_or_insert(format!("cancelling: {e}"));
                    println!("        cancelling: {e}");
                }
            }
            if phase.transport == Rest::NAME {
                rest_phase = Some(phase);
            } else {
                quic_phase = Some(phase);
            }
        }
        let (rest_phase, quic_phase) = (rest_phase.expect("ran"), quic_phase.expect("ran"));
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        rounds.push(Round {
            round,
            first: if rest_first { Rest::NAME } else { Quic::NAME },
            quic_over_rest_per_s: ratio(quic_phase.per_s, rest_phase.per_s),
            quic_over_rest_p50: ratio(quic_phase.latency.p50_ms, rest_phase.latency.p50_ms),
            quic_over_rest_p99: ratio(quic_phase.latency.p99_ms, rest_phase.latency.p99_ms),
            rest: rest_phase,
            quic: quic_phase,
        });
    }
    for r in &rounds {
        println!(
            "  round {} ({} first): QUIC/REST jobs/s {:.2}, p50 {:.2}, p99 {:.2}",
            r.round, r.first, r.quic_over_rest_per_s, r.quic_over_rest_p50, r.quic_over_rest_p99
        );
    }
    cluster.stop();
    Ok(rounds)
}

// ---------------------------------------------------------------------
// 2. Listing a long history
// ---------------------------------------------------------------------

/// Records what is wrong with pages without stopping the run.
#[derive(Default)]
struct Checks {
    errors: u64,
    first: Option<String>,
}

impl Checks {
    fn fail(&mut self, what: String) {
        self.errors += 1;
        self.first.get_or_insert(what);
    }

    /// A page must be newest first and below `before`, each job passing
    /// `admits`.
    fn page(
        &mut self,
        what: &str,
        page: &JobPage,
        before: Option<u64>,
        admits: impl Fn(&drover_shared::api::JobSummary) -> bool,
    ) {
        let mut prev = before.unwrap_or(u64::MAX);
        for j in &page.jobs {
            if j.id >= prev {
                self.fail(format!(
                    "{what}: job {} after {prev}: not newest first",
                    j.id
                ));
            }
            if !admits(j) {
                self.fail(format!(
                    "{what}: job {} ({:?}, project {}) does not pass the filter",
                    j.id, j.state, j.project
                ));
            }
            prev = j.id;
        }
    }
}

/// Times `requests` GETs of `path` on `conn`, checking each answer.
async fn time_page(
    conn: &mut KeepAlive,
    what: &str,
    path: &str,
    requests: u64,
    checks: &mut Checks,
    check: impl Fn(&JobPage, &mut Checks),
) -> ListFigure {
    let mut ms = Vec::with_capacity(requests as usize);
    let mut fig = ListFigure {
        what: what.to_string(),
        query: path.to_string(),
        latency: Quantiles::default(),
        jobs: 0,
        bytes: 0,
        errors: 0,
    };
    for _ in 0..requests {
        let sent = Instant::now();
        match conn.get_json::<JobPage>(path).await {
            Ok((page, bytes)) => {
                ms.push(sent.elapsed().as_secs_f64() * 1e3);
                fig.jobs = page.jobs.len();
                fig.bytes = bytes;
                check(&page, checks);
            }
            Err(e) => {
                fig.errors += 1;
                checks.fail(format!("{what}: {e:#}"));
            }
        }
    }
    fig.latency = Quantiles::of(ms);
    fig
}

/// Where a walk over pages ended.
struct Walked {
    /// The jobs of every page, in order.
    ids: Vec<u64>,
    /// Jobs on each page.
    per_request: Vec<usize>,
    /// The `next` link it stopped before, if any.
    next: Option<String>,
    /// The last page it fetched.
    last: String,
}

/// Follows `next` from `first` until `enough(jobs, pages)` says stop or
/// there is none; every page is checked.
async fn walk(
    conn: &mut KeepAlive,
    what: &str,
    first: &str,
    checks: &mut Checks,
    admits: impl Fn(&drover_shared::api::JobSummary) -> bool + Copy,
    enough: impl Fn(usize, usize) -> bool,
) -> Walked {
    let mut w = Walked {
        ids: Vec::new(),
        per_request: Vec::new(),
        next: None,
        last: first.to_string(),
    };
    let mut path = Some(first.to_string());
    let mut before: Option<u64> = None;
    while let Some(p) = path.take() {
        if w.per_request.len() >= MAX_WALK_REQUESTS {
            checks.fail(format!("{what}: more than {MAX_WALK_REQUESTS} pages"));
            break;
        }
        match conn.get_json::<JobPage>(&p).await {
            Ok((page, _)) => {
                checks.page(what, &page, before, admits);
                w.per_request.push(page.jobs.len());
                w.ids.extend(page.jobs.iter().map(|j| j.id));
                w.last = p;
                if let Some(c) = &page.next_cursor {
                    match c.parse::<u64>() {
                        Ok(c) => before = Some(c),
                        Err(_) => checks.fail(format!("{what}: cursor {c:?}")),
                    }
                }
                if let Some(last) = page.jobs.last() {
                    before = Some(before.map_or(last.id, |b| b.min(last.id)));
                }
                path = page.next;
                if path.is_some() && enough(w.ids.len(), w.per_request.len()) {
                    w.next = path;
                    return w;
                }
            }
            Err(e) => {
                checks.fail(format!("{what}: {e:#}"));
                break;
            }
        }
    }
    w
}

/// The `journal replayed` line of a coordinator log: (ms, facts replayed).
fn replay_figures(log: &str) -> (Option<u64>, Option<u64>) {
    let Some(line) = log.lines().find(|l| l.contains("journal replayed")) else {
        return (None, None);
    };
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
    };
    (field("ms="), field("facts_replayed="))
}

fn listing(
    rt: &tokio::runtime::Runtime,
    drover: &Path,
    root: &Path,
    args: &Args,
) -> anyhow::Result<Listing> {
    let n = args.history;
    println!();
    println!("listing: writing a history of {n} ended jobs into a fresh data dir's journal");
    let history = history::write(&root.join("coordinator"), n)?;
    println!(
        "  {} facts in {:.1} s: {} done, {} cancelled, {} failed; {} in project `{RARE_PROJECT}`; {} failed or cancelled kept in memory, the rest archived",
        history.facts,
        history.write_s,
        history.done,
        history.cancelled,
        history.failed,
        history.rare,
        history.in_memory
    );
    let (mut cluster, start_s) = start_cluster(drover, root, args)?;
    let (replay_ms, facts_replayed) = replay_figures(&cluster.log("coordinator"));
    println!(
        "  coordinator start with that history: {start_s:.2} s to ready (journal replay {} ms, {} facts replayed)",
        replay_ms.map_or("?".into(), |v| v.to_string()),
        facts_replayed.map_or("?".into(), |v| v.to_string())
    );
    let admin_key = cluster.admin_key()?;
    let addr = cluster.addrs.http;
    let reqs = args.list_requests;
    let out = rt.block_on(async {
        let mut conn = KeepAlive::new(addr, &admin_key);
        let mut checks = Checks::default();
        let mut figures = Vec::new();
        let all = |_: &drover_shared::api::JobSummary| true;

        let first = format!("/v1/jobs?limit={PAGE}");
        figures.push(
            time_page(
                &mut conn,
                "first page",
                &first,
                reqs,
                &mut checks,
                |p, c| {
                    c.page("first page", p, None, all);
                    if p.jobs.first().map(|j| j.id) != Some(n)
                        || p.jobs.len() != PAGE.min(n as usize)
                    {
                        c.fail(format!(
                            "first page: {} jobs from {:?}, want {} from {n}",
                            p.jobs.len(),
                            p.jobs.first().map(|j| j.id),
                            PAGE.min(n as usize)
                        ));
                    }
                },
            )
            .await,
        );

        // A page deep in the history: 100 `next` links down.
        // (A history too short for that gives its last page.)
        let w = walk(
            &mut conn,
            "deep walk",
            &first,
            &mut checks,
            all,
            |_, pages| pages >= DEEP_PAGES,
        )
        .await;
        let (deep_pages, deep_path, deep_top) = match w.next {
            Some(next) => (
                w.per_request.len(),
                next,
                w.ids.last().map_or(n, |id| id - 1),
            ),
            None => {
                let last_page = w.per_request.last().copied().unwrap_or(0);
                let top = w.ids.get(w.ids.len() - last_page).copied().unwrap_or(n);
                (w.per_request.len().saturating_sub(1), w.last, top)
            }
        };
        let deep_label = format!("page {deep_pages} links deep (from job {deep_top})");
        figures.push(
            time_page(
                &mut conn,
                &deep_label,
                &deep_path,
                reqs,
                &mut checks,
                |p, c| {
                    c.page("deep page", p, None, all);
                    if n > 0 && p.jobs.first().map(|j| j.id) != Some(deep_top) {
                        c.fail(format!(
                            "deep page starts at {:?}, want {deep_top}",
                            p.jobs.first().map(|j| j.id)
                        ));
                    }
                },
            )
            .await,
        );

        // The oldest end of the history.
        let oldest_before = (n + 1).min(1_001);
        let oldest = format!("/v1/jobs?limit={PAGE}&cursor={oldest_before}");
        figures.push(
            time_page(
                &mut conn,
                &format!("page at the oldest end (cursor {oldest_before})"),
                &oldest,
                reqs,
                &mut checks,
                |p, c| {
                    c.page("oldest page", p, Some(oldest_before), all);
                    let want = PAGE.min(oldest_before as usize - 1);
                    if p.jobs.len() != want {
                        c.fail(format!("oldest page: {} jobs, want {want}", p.jobs.len()));
                    }
                },
            )
            .await,
        );

        let done = format!("/v1/jobs?limit={PAGE}&state=done");
        let want_done = PAGE.min(history.done as usize);
        figures.push(
            time_page(&mut conn, "state=done", &done, reqs, &mut checks, |p, c| {
                c.page("state=done", p, None, |j| j.state == JobState::Done);
                if p.jobs.len() != want_done {
                    c.fail(format!(
                        "state=done: {} jobs, want {want_done}",
                        p.jobs.len()
                    ));
                }
            })
            .await,
        );

        let rare_first = format!("/v1/jobs?limit={PAGE}&project={RARE_PROJECT}");
        let is_rare = |j: &drover_shared::api::JobSummary| j.project == RARE_PROJECT;
        figures.push(
            time_page(
                &mut conn,
                &format!("project={RARE_PROJECT} (1 %), first request"),
                &rare_first,
                reqs,
                &mut checks,
                |p, c| c.page("rare project", p, None, is_rare),
            )
            .await,
        );
        let t = Instant::now();
        let w = walk(
            &mut conn,
            "rare project to 50",
            &rare_first,
            &mut checks,
            is_rare,
            |matches, _| matches >= RARE_WANTED,
        )
        .await;
        let mut rare = Collect {
            requests_to_50: w.per_request.len(),
            ms_to_50: t.elapsed().as_secs_f64() * 1e3,
            matches_per_request: w.per_request,
            ..Collect::default()
        };
        if w.ids.len() < RARE_WANTED.min(history.rare as usize) {
            checks.fail(format!(
                "rare project: {} matches before the end, want {}",
                w.ids.len(),
                RARE_WANTED.min(history.rare as usize)
            ));
        }
        let t = Instant::now();
        let w = walk(
            &mut conn,
            "rare project, all",
            &rare_first,
            &mut checks,
            is_rare,
            |_, _| false,
        )
        .await;
        rare.ms_all = t.elapsed().as_secs_f64() * 1e3;
        rare.requests_all = w.per_request.len();
        rare.matches_all = w.ids.len();
        let want_rare: Vec<u64> = (1..=n)
            .rev()
            .filter(|&i| history::project_of(i) == RARE_PROJECT)
            .collect();
        if w.ids != want_rare {
            checks.fail(format!(
                "rare project: {} matches, want {} (all of them, newest first)",
                w.ids.len(),
                want_rare.len()
            ));
        }

        let big = format!("/v1/jobs?limit={BIG_PAGE}");
        figures.push(
            time_page(&mut conn, "limit=500", &big, reqs, &mut checks, |p, c| {
                c.page("limit=500", p, None, all);
                if p.jobs.len() != BIG_PAGE.min(n as usize) {
                    c.fail(format!("limit=500: {} jobs", p.jobs.len()));
                }
            })
            .await,
        );

        // Everything, newest first, none missing.
        let t = Instant::now();
        let w = walk(
            &mut conn,
            "whole history",
            &big,
            &mut checks,
            all,
            |_, _| false,
        )
        .await;
        let walk_s = t.elapsed().as_secs_f64();
        if !w.ids.iter().copied().eq((1..=n).rev()) {
            checks.fail(format!(
                "whole history: {} jobs came back, want {n} from {n} down to 1",
                w.ids.len()
            ));
        }
        (
            figures,
            deep_pages,
            rare,
            w.per_request.len(),
            w.ids.len(),
            walk_s,
            checks,
        )
    });
    let (figures, deep_pages, rare, walk_requests, walk_jobs, walk_s, checks) = out;
    cluster.stop();
    println!(
        "  {:<44} {:>6} {:>9} {:>9} {:>9} {:>6} {:>9} {:>6}",
        "GET /v1/jobs", "reqs", "p50 ms", "p99 ms", "max ms", "jobs", "bytes", "errors"
    );
    for f in &figures {
        println!(
            "  {:<44} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>6} {:>9} {:>6}",
            f.what,
            f.latency.count,
            f.latency.p50_ms,
            f.latency.p99_ms,
            f.latency.max_ms,
            f.jobs,
            f.bytes,
            f.errors
        );
    }
    println!(
        "  project={RARE_PROJECT}: {} request(s) to collect {RARE_WANTED} matches (matches per request {:?}), {:.0} ms; all {} matches in {} requests, {:.0} ms",
        rare.requests_to_50,
        rare.matches_per_request,
        rare.ms_to_50,
        rare.matches_all,
        rare.requests_all,
        rare.ms_all
    );
    println!(
        "  whole history at {BIG_PAGE} a page: {walk_jobs} jobs in {walk_requests} requests, {walk_s:.2} s, newest first and complete: {}",
        if checks.errors == 0 { "yes" } else { "NO" }
    );
    if let Some(e) = &checks.first {
        println!("  first error: {e} ({} in all)", checks.errors);
    }
    Ok(Listing {
        history,
        start_s,
        replay_ms,
        facts_replayed,
        figures,
        deep_pages,
        rare,
        walk_requests,
        walk_jobs,
        walk_s,
        errors: checks.errors,
        first_error: checks.first,
    })
}

// ---------------------------------------------------------------------
// 3. Event fan-out
// ---------------------------------------------------------------------

/// The fields of an event's data this benchmark reads.
#[derive(serde::Deserialize)]
struct EventData {
    at_ms: u64,
    job: Option<u64>,
}

/// What one subscriber received.
#[derive(Default)]
struct Received {
    /// (job, latency ms) per `job.submitted` event.
    events: Vec<(u64, f64)>,
    errors: u64,
    first_error: Option<String>,
}

impl Received {
    fn fail(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// One subscriber: opens the stream, says when it is open, then records
/// `job.submitted` events until it has `expect` of them or is stopped.
async fn subscriber(
    addr: SocketAddr,
    key: Arc<str>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    expect: u64,
    mut stop: watch::Receiver<bool>,
) -> Received {
    let mut got = Received::default();
    let permit = gate.acquire_owned().await.expect("never closed");
    let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let conn = Conn::connect(addr).await?;
        let mut events = conn.events("/v1/events", &key).await?;
        let mut batch = Vec::new();
        // Up to the opening comment; nothing has been published yet.
        loop {
            events.next_batch(&mut batch).await?;
            if events.ended() {
                bail!("the stream ended before it opened");
            }
            if batch
                .iter()
                .any(|e| e.comments.iter().any(|c| c == "stream open"))
            {
                return Ok(events);
            }
        }
    })
    .await;
    drop(permit);
    let mut events = match opened {
        Ok(Ok(events)) => {
            let _ = ready.send(Ok(())).await;
            events
        }
        Ok(Err(e)) => {
            let _ = ready.send(Err(format!("{e:#}"))).await;
            got.fail(format!("opening the stream: {e:#}"));
            return got;
        }
        Err(_) => {
            let _ = ready.send(Err("timed out".into())).await;
            got.fail(format!(
                "the stream did not open within {CONNECT_TIMEOUT:?}"
            ));
            return got;
        }
    };
    drop(ready);
    let mut batch = Vec::new();
    while (got.events.len() as u64) < expect {
        let r = tokio::select! {
            r = events.next_batch(&mut batch) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let received_ms = match r {
            Ok(ms) => ms,
            Err(e) => {
                got.fail(format!("reading the stream: {e:#}"));
                break;
            }
        };
        if events.ended() && batch.is_empty() {
            got.fail("the coordinator ended the stream".into());
            break;
        }
        for e in &batch {
            match e.event.as_deref() {
                Some("job.submitted") => {
                    let parsed = e
                        .data
                        .as_deref()
                        .and_then(|d| serde_json::from_str::<EventData>(d).ok());
                    match parsed {
                        Some(EventData {
                            at_ms,
                            job: Some(job),
                        }) => got.events.push((job, received_ms - at_ms as f64)),
                        _ => got.fail(format!("a job.submitted event without at_ms or job: {e:?}")),
                    }
                }
                Some("reset") => got.fail("a reset event: events were missed".into()),
                _ => {}
            }
        }
    }
    got
}

fn fanout(
    rt: &tokio::runtime::Runtime,
    drover: &Path,
    root: &Path,
    args: &Args,
) -> anyhow::Result<Fanout> {
    let subs = args.subscribers;
    let (mut cluster, _) = start_cluster(drover, root, args)?;
    let coordinator = coordinator_pid(&root.join("coordinator"));
    let admin_key = cluster.admin_key()?;
    let addr = cluster.addrs.http;
    let key_count = subs.div_ceil(MAX_STREAMS_PER_KEY as u64).max(1);
    println!();
    println!(
        "fan-out: {subs} subscribers on GET /v1/events over {key_count} keys; {} jobs submitted at {} per second by one REST client; subscribers, publisher and coordinator share this machine's {} cores",
        args.events,
        args.event_rate,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let fan = rt.block_on(async {
        let mut admin = KeepAlive::new(addr, &admin_key);
        let mut keys: Vec<Arc<str>> = Vec::new();
        for k in 0..key_count {
            keys.push(
                create_key(&mut admin, &format!("fanout-{k}"), "viewer", 1_000, None)
                    .await?
                    .into(),
            );
        }
        let publisher_key = create_key(
            &mut admin,
            "fanout-publisher",
            "submitter",
            100_000,
            Some(1_000_000),
        )
        .await?;
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let (ready_tx, mut ready_rx) = mpsc::channel(subs as usize);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut set = JoinSet::new();
        let connect_started = Instant::now();
        for i in 0..subs {
            set.spawn(subscriber(
                addr,
                keys[(i % key_count) as usize].clone(),
                gate.clone(),
                ready_tx.clone(),
                args.events,
                stop_rx.clone(),
            ));
        }
        drop(ready_tx);
        let mut open = 0u64;
        let mut errors = 0u64;
        let mut first_error: Option<String> = None;
        let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
        while open + errors < subs {
            match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                Ok(Some(Ok(()))) => open += 1,
                Ok(Some(Err(e))) => {
                    errors += 1;
                    first_error.get_or_insert(format!("a stream did not open: {e}"));
                }
                Ok(None) => break,
                Err(_) => {
                    first_error
                        .get_or_insert(format!("not every stream opened within {SETUP_TIMEOUT:?}"));
                    break;
                }
            }
        }
        let connect_s = connect_started.elapsed().as_secs_f64();

        // Publish at a steady rate.
        let cpu = CpuWindow::start(coordinator);
        let mut publisher = KeepAlive::new(addr, &publisher_key);
        publisher.connect().await?;
        let body = spec_body();
        let mut published = HashSet::new();
        let mut publish_ms = Vec::new();
        let period = Duration::from_secs_f64(1.0 / args.event_rate.max(0.001));
        let mut tick = tokio::time::interval(period);
        let first_send = Instant::now();
        let mut last_send = first_send;
        for _ in 0..args.events {
            tick.tick().await;
            let sent = Instant::now();
            last_send = sent;
            match publisher
                .request("POST", "/v1/jobs", Some(("application/json", &body)))
                .await
            {
                Ok(r) if r.status == 201 => {
                    publish_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                    match serde_json::from_slice::<serde_json::Value>(&r.body)
                        .ok()
                        .and_then(|v| v["id"].as_u64())
                    {
                        Some(id) => {
                            published.insert(id);
                        }
                        None => {
                            errors += 1;
                            first_error.get_or_insert("a 201 without a job id".into());
                        }
                    }
                }
                Ok(r) => {
                    errors += 1;
                    first_error.get_or_insert(format!(
                        "publishing: status {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(format!("publishing: {e:#}"));
                }
            }
        }
        // The rate over the intervals between sends (the first send is at
        // once, the last interval ends at the last send).
        let publish_s = (last_send - first_send).as_secs_f64();

        // Every subscriber ends once it has every event; stragglers are
        // stopped after the drain timeout.
        let mut runs = Vec::new();
        let drain_deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        loop {
            match tokio::time::timeout_at(drain_deadline, set.join_next()).await {
                Ok(Some(Ok(r))) => runs.push(r),
                Ok(Some(Err(e))) => {
                    errors += 1;
                    first_error.get_or_insert(format!("a subscriber task failed: {e}"));
                }
                Ok(None) => break,
                Err(_) => {
                    let _ = stop_tx.send(true);
                    while let Some(r) = set.join_next().await {
                        if let Ok(r) = r {
                            runs.push(r);
                        }
                    }
                    break;
                }
            }
        }
        let (coordinator_cpu_pct, bench_cpu_pct) = cpu.end();

        let mut latency = Vec::new();
        let mut last_copy: HashMap<u64, f64> = HashMap::new();
        for r in &runs {
            errors += r.errors;
            if first_error.is_none() {
                first_error = r.first_error.clone();
            }
            let mut seen = HashSet::new();
            for &(job, ms) in &r.events {
                if !published.contains(&job) {
                    errors += 1;
                    first_error.get_or_insert(format!("an event for job {job}, not published"));
                } else if !seen.insert(job) {
                    errors += 1;
                    first_error.get_or_insert(format!("job {job}'s event twice"));
                } else {
                    latency.push(ms);
                    let e = last_copy.entry(job).or_insert(ms);
                    *e = e.max(ms);
                }
            }
        }
        let delivered = latency.len() as u64;
        let expected = open * published.len() as u64;
        anyhow::Ok(Fanout {
            subscribers: subs,
            open,
            keys: key_count,
            connect_s,
            published: published.len() as u64,
            publish_per_s: published.len().saturating_sub(1) as f64 / publish_s.max(1e-9),
            publish_latency: Quantiles::of(publish_ms),
            expected,
            delivered,
            missing: expected.saturating_sub(delivered),
            latency: Quantiles::of(latency),
            last_copy: Quantiles::of(last_copy.into_values().collect()),
            errors,
            first_error,
            coordinator_cpu_pct,
            bench_cpu_pct,
        })
    })?;
    cluster.stop();
    println!(
        "  {} of {subs} streams open in {:.2} s; published {} events at {:.1}/s (submit p50 {:.1} ms, p99 {:.1} ms)",
        fan.open,
        fan.connect_s,
        fan.published,
        fan.publish_per_s,
        fan.publish_latency.p50_ms,
        fan.publish_latency.p99_ms
    );
    println!(
        "  deliveries {} of {} (missing {}); delivery latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; last copy of an event p50 {:.1} ms, p99 {:.1} ms",
        fan.delivered,
        fan.expected,
        fan.missing,
        fan.latency.p50_ms,
        fan.latency.p99_ms,
        fan.latency.max_ms,
        fan.last_copy.p50_ms,
        fan.last_copy.p99_ms
    );
    println!(
        "  CPU while publishing: coordinator {:.0} %, this process (subscribers and publisher) {:.0} % of one core; errors {}",
        fan.coordinator_cpu_pct, fan.bench_cpu_pct, fan.errors
    );
    if let Some(e) = &fan.first_error {
        println!("  first error: {e}");
    }
    Ok(fan)
}

// ---------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------

fn print_summary(s: &Summary, args: &Args) {
    println!();
    println!(
        "summary ({} cores, {}; coordinator and clients on the same machine)",
        s.cores, s.cpu_model
    );
    if !s.rounds.is_empty() {
        println!();
        println!(
            "| round | first | via | clients x jobs | jobs/s | p50 ms | p99 ms | max ms | errors | coordinator CPU % |"
        );
        println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &s.rounds {
            for p in [&r.rest, &r.quic] {
                println!(
                    "| {} | {} | {} | {} x {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.0} |",
                    r.round,
                    r.first,
                    p.transport,
                    p.clients,
                    args.per_client,
                    p.per_s,
                    p.latency.p50_ms,
                    p.latency.p99_ms,
                    p.latency.max_ms,
                    p.errors,
                    p.coordinator_cpu_pct
                );
            }
        }
        println!();
        println!("| round | QUIC/REST jobs/s | QUIC/REST p50 | QUIC/REST p99 |");
        println!("|---:|---:|---:|---:|");
        for r in &s.rounds {
            println!(
                "| {} | {:.2} | {:.2} | {:.2} |",
                r.round, r.quic_over_rest_per_s, r.quic_over_rest_p50, r.quic_over_rest_p99
            );
        }
    }
    if let Some(l) = &s.listing {
        println!();
        println!(
            "| GET /v1/jobs, {} jobs in the history | p50 ms | p99 ms | max ms | jobs | bytes |",
            l.history.jobs
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for f in &l.figures {
            println!(
                "| {} | {:.2} | {:.2} | {:.2} | {} | {} |",
                f.what, f.latency.p50_ms, f.latency.p99_ms, f.latency.max_ms, f.jobs, f.bytes
            );
        }
        println!();
        println!(
            "start-up with the history: {:.2} s (replay {} ms); project={RARE_PROJECT}: {} requests to {RARE_WANTED} matches ({:.0} ms), all {} in {} requests; whole history {} jobs in {} requests, {:.2} s; errors {}",
            l.start_s,
            l.replay_ms.map_or("?".into(), |v| v.to_string()),
            l.rare.requests_to_50,
            l.rare.ms_to_50,
            l.rare.matches_all,
            l.rare.requests_all,
            l.walk_jobs,
            l.walk_requests,
            l.walk_s,
            l.errors
        );
    }
    if let Some(f) = &s.fanout {
        println!();
        println!(
            "| subscribers | events | publish/s | deliveries | missing | p50 ms | p99 ms | max ms | last copy p99 ms | errors |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            f.subscribers,
            f.published,
            f.publish_per_s,
            f.delivered,
            f.missing,
            f.latency.p50_ms,
            f.latency.p99_ms,
            f.latency.max_ms,
            f.last_copy.p99_ms,
            f.errors
        );
    }
    println!();
    println!("errors in all: {}", s.errors);
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.event_rate > 0.0 && args.event_rate <= 10_000.0) {
        bail!(
            "--event-rate {}: it must be above 0 and at most 10000",
            args.event_rate
        );
    }
    let drover = drover_bench::drover_binary(args.drover.as_ref())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // Declared before any cluster so it is dropped after them: each
    // coordinator stops before its data dir disappears.
    let work = WorkDir {
        path: std::env::temp_dir().join(format!("drover-bench-front-door-{}", std::process::id())),
        keep: args.keep,
    };
    std::fs::create_dir_all(&work.path)
        .with_context(|| format!("creating {}", work.path.display()))?;
    let cpu = cpu_model();
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "machine: {cores} cores ({cpu}), load average {}; this process runs {cores} tokio threads; drover: {}",
        load_average(),
        drover.display()
    );
    println!();

    let rounds = submissions(&rt, &drover, &work.path.join("submit"), &args)?;
    let listing = if args.history > 0 {
        Some(listing(&rt, &drover, &work.path.join("history"), &args)?)
    } else {
        None
    };
    let fan = if args.subscribers > 0 {
        Some(fanout(&rt, &drover, &work.path.join("fanout"), &args)?)
    } else {
        None
    };
    let errors = rounds
        .iter()
        .map(|r| r.rest.errors + r.quic.errors)
        .sum::<u64>()
        + listing.as_ref().map_or(0, |l| l.errors)
        + fan.as_ref().map_or(0, |f| f.errors + f.missing);
    let summary = Summary {
        cores,
        cpu_model: cpu,
        rounds,
        listing,
        fanout: fan,
        errors,
    };
    print_summary(&summary, &args);
    rt.shutdown_timeout(Duration::from_secs(5));
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

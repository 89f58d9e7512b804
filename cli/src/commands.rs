//! The client commands of `drover`: their flags and what they print.
//!
//! Every command has the same shape: flags (with [`ClientArgs`]: `--url`
//! and `--json`), one or more calls of [`Client`], then either exactly the
//! API's JSON on stdout (one document, or one per line for the event
//! stream) or a table for people. An error answer of the API is the
//! command's error, shown with its title, status, detail and field, and
//! the exit status is non-zero.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use drover_shared::api::{
    ArtifactView, ChunkView, JobPage, JobState, JobSummary, JobView, KeyView, NodeView, Role,
};
use serde::Serialize;

use crate::client::{state_name, Client, DeliveryView, JobQuery, NewKey, NodeChange};
use crate::events::{EventQuery, StreamItem};

/// The REST URL of a coordinator on this machine.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8270";

/// Flags every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Coordinator REST URL.
    #[arg(long, env = "DROVER_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Print the API's JSON instead of text, and nothing else on stdout.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    /// A client with the key from the environment or the config file.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::from_env(&self.url)
    }
}

/// `drover submit`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// The spec file.
    pub file: PathBuf,
    /// Follow the job with a progress bar until it ends (with --json,
    /// print the job as it ended instead of the submission).
    #[arg(long)]
    pub watch: bool,
    /// Submit over the coordinator's QUIC endpoint instead of REST (same
    /// key, same checks and errors); HOST:PORT, default 127.0.0.1:8271.
    #[arg(long, value_name = "HOST:PORT", num_args = 0..=1, default_missing_value = drover_shared::config::DEFAULT_QUIC_ADDR)]
    pub quic: Option<String>,
    /// With --quic: pin the coordinator by its certificate's SHA-256 (hex)
    /// (default: the certificate in the local coordinator's data dir).
    #[arg(long, env = "DROVER_CERT_SHA256", requires = "quic")]
    pub cert_sha256: Option<String>,
    /// With --quic: pin the coordinator by its certificate file.
    #[arg(
        long,
        env = "DROVER_CERT",
        requires = "quic",
        conflicts_with = "cert_sha256"
    )]
    pub cert: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// Submits `spec` over QUIC with the key from the environment.
fn submit_quic(
    a: &SubmitArgs,
    addr: &str,
    spec: &serde_json::Value,
) -> anyhow::Result<drover_shared::api::Submitted> {
    use std::net::ToSocketAddrs;
    let addr = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr:?}"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))?;
    let trust = match (&a.cert_sha256, &a.cert) {
        (Some(fp), _) => drover_node::tls::Trust::Fingerprint(fp.clone()),
        (None, Some(p)) => drover_node::tls::Trust::CertFile(p.clone()),
        (None, None) => drover_node::tls::Trust::CertFile(
            directories::ProjectDirs::from("", "", "drover")
                .map(|d| d.data_dir().to_path_buf())
                .unwrap_or_else(|| PathBuf::from(".drover"))
                .join("coordinator")
                .join(drover_shared::config::CERT_FILE),
        ),
    };
    let key = crate::client::api_key_from_env()?.unwrap_or_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut q = crate::quic_client::QuicClient::connect(addr, &trust, &key).await?;
            let sub = q.submit_json(spec).await;
            q.close();
            sub
        })
}

/// The job states a list can be filtered by.
pub const STATES: [&str; 7] = [
    "queued",
    "unschedulable",
    "running",
    "muxing",
    "done",
    "failed",
    "cancelled",
];

/// `drover jobs`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsArgs {
    /// Only jobs in this state.
    #[arg(long, value_parser = STATES)]
    pub state: Option<String>,
    /// Only jobs of this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only jobs submitted with this key (its name or id).
    #[arg(long, value_name = "KEY")]
    pub submitter: Option<String>,
    /// Jobs per page (1..=500; the API's default is 50).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=500))]
    pub limit: Option<u64>,
    /// Every page, not only the first (with --json: one page holding
    /// every job).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// `drover status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Job id (without it: every job, as `drover jobs --all`).
    pub job: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// A command about one job.
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// Job id.
    pub job: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// `drover priority`.
#[derive(Debug, Clone, clap::Args)]
pub struct PriorityArgs {
    /// Job id.
    pub job: u64,
    /// New priority, 0..=100 (higher runs first).
    #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
    pub priority: u8,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// `drover artifacts`.
#[derive(Debug, Clone, clap::Args)]
pub struct ArtifactsArgs {
    /// Job id.
    pub job: u64,
    /// Seconds the download links stay valid, 60..=604800 (default 3600).
    #[arg(long, value_parser = clap::value_parser!(u64).range(60..=604_800))]
    pub ttl_s: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// `drover download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// Job id.
    pub job: u64,
    /// Where to write it: a file, or a directory to put it in (default:
    /// `<job name>-<id>.mp4` in the current directory).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// The poster frame (PNG) instead of the video.
    #[arg(long)]
    pub poster: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// `drover nodes`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodesArgs {
    /// One node, in full (without it: every node, as a table).
    pub name: Option<String>,
    /// Let a quarantined node take work again (as `drover
    /// clear-quarantine`).
    #[arg(long, value_name = "NODE", conflicts_with = "name")]
    pub clear_quarantine: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// `drover drain`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Node name.
    pub node: String,
    /// Hand back the unrendered rest of its chunks at once.
    #[arg(long)]
    pub now: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// A command about one node.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Node name.
    pub node: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// `drover keys`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCmd {
    /// Every API key, revoked ones included (never their secrets).
    #[command(after_help = "Example:\n  drover keys list")]
    List {
        #[command(flatten)]
        #[allow(missing_docs)]
        c: ClientArgs,
    },
    /// Create a key; its secret is printed this once (the coordinator
    /// keeps only its hash).
    #[command(
        after_help = "Example:\n  drover keys create ci --role submitter --project film --rate 20 > ci.key"
    )]
    Create {
        /// Who or what it is for: letters, digits, `-`, `_`, `.`, `@`.
        name: String,
        /// What it may do.
        #[arg(long, value_parser = ["admin", "submitter", "viewer"])]
        role: String,
        /// The one project it may see and submit to (default: all).
        #[arg(long)]
        project: Option<String>,
        /// Requests per second (burst twice this; default 50).
        #[arg(long, value_name = "N")]
        rate: Option<u32>,
        /// Jobs it may have queued or running at once (default 1000).
        #[arg(long, value_name = "N")]
        max_active_jobs: Option<u32>,
        #[command(flatten)]
        #[allow(missing_docs)]
        c: ClientArgs,
    },
    /// Revoke a key at once: requests with it are refused from now on.
    #[command(after_help = "Example:\n  drover keys revoke 3f2a9c1d")]
    Revoke {
        /// Key id (as `drover keys list` shows it).
        id: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        c: ClientArgs,
    },
}

/// `drover events`.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Only this job's events.
    #[arg(long)]
    pub job: Option<u64>,
    /// Only these kinds, comma-separated; `job` or `node` takes every kind
    /// under it (`job.done`, `node.drained`, ...).
    #[arg(long, value_delimiter = ',', value_name = "KIND,...")]
    pub kinds: Vec<String>,
    /// Start after this event id (from an earlier run) instead of from now.
    #[arg(long, value_name = "ID")]
    pub last_event_id: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// Prints one JSON document on stdout.
fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `ms` since the Unix epoch as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (the proleptic Gregorian calendar), by eras of
    // 400 years.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn state_cell(state: JobState, paused: bool) -> String {
    if paused && !state.is_terminal() {
        format!("{} (paused)", state_name(state))
    } else {
        state_name(state)
    }
}

/// The job table.
pub fn print_jobs(jobs: &[JobSummary]) {
    println!(
        "{:>5}  {:<19} {:>15} {:>4}  {:<12} {:<12} {:<24} ERROR",
        "ID", "STATE", "FRAMES", "PRIO", "PROJECT", "SUBMITTER", "NAME"
    );
    for j in jobs {
        println!(
            "{:>5}  {:<19} {:>15} {:>4}  {:<12} {:<12} {:<24} {}",
            j.id,
            state_cell(j.state, j.paused),
            format!("{}/{}", j.frames_done, j.frames_total),
            j.priority,
            j.project,
            j.submitter,
            j.name,
            j.error.as_deref().unwrap_or("")
        );
    }
}

/// The chunk table: which node rendered which frames, and how each chunk
/// came to be (stolen tails and speculative copies are marked).
pub fn print_chunk_table(chunks: &[ChunkView]) {
    println!(
        "{:>6} {:>13} {:<10} {:<12} {:<12} {:>8} {:>8}  LAST ERROR",
        "CHUNK", "FRAMES", "STATE", "KIND", "NODE", "DONE", "FAILURES"
    );
    for c in chunks {
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

/// One job in full: its row, its figures and its chunks.
pub fn print_job(j: &JobView, base: &str) {
    print_jobs(&[JobSummary::from(j)]);
    println!();
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
    if !j.frames_by_node.is_empty() {
        let by_node: Vec<String> = j
            .frames_by_node
            .iter()
            .map(|(n, f)| format!("{n} {f}"))
            .collect();
        println!("frames stored by node: {}", by_node.join(", "));
    }
    print_chunk_table(&j.chunks);
    if let Some(u) = &j.output_url {
        println!("\noutput: {}{u}", base.trim_end_matches('/'));
    }
}

/// The last lines of a watched job: how it ended, its output and each
/// node's frames; an error when it did not end done.
pub fn report_end(base: &str, job: &JobView, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(job)?;
    } else if job.state == JobState::Done {
        println!(
            "job {} done: {} frames; output {}{}",
            job.id,
            job.frames_total,
            base.trim_end_matches('/'),
            job.output_url.as_deref().unwrap_or("")
        );
        for (node, frames) in &job.frames_by_node {
            println!("  {node}: {frames} frames");
        }
    }
    if job.state != JobState::Done {
        bail!(
            "job {} ended {}: {}",
            job.id,
            state_name(job.state),
            job.error.as_deref().unwrap_or("no reason recorded")
        );
    }
    Ok(())
}

/// Reads a spec file, resolving `render.path` relative to it, into the JSON
/// the API takes. The spec is validated by the coordinator, which names the
/// field at fault.
pub fn load_spec(file: &Path) -> anyhow::Result<serde_json::Value> {
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

/// `drover submit`.
pub fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let client = a.c.client()?;
    let spec = load_spec(&a.file)?;
    let sub = match &a.quic {
        Some(addr) => submit_quic(&a, addr, &spec)?,
        None => client.submit_json(&spec)?,
    };
    if a.c.json && !a.watch {
        return print_json(&sub);
    }
    if !a.c.json {
        println!(
            "job {} submitted: {}{}",
            sub.id,
            client.base(),
            sub.status_url
        );
    }
    if a.watch {
        let job = crate::watch::watch(&client, sub.id, false)?;
        return report_end(client.base(), &job, a.c.json);
    }
    Ok(())
}

/// `drover watch`.
pub fn watch(a: JobArgs) -> anyhow::Result<()> {
    let client = a.c.client()?;
    let job = crate::watch::watch(&client, a.job, false)?;
    report_end(client.base(), &job, a.c.json)
}

fn job_query(a: &JobsArgs) -> anyhow::Result<JobQuery> {
    let state = match &a.state {
        Some(s) => Some(
            serde_json::from_value::<JobState>(serde_json::Value::String(s.clone()))
                .with_context(|| format!("{s:?} is not a job state"))?,
        ),
        None => None,
    };
    Ok(JobQuery {
        state,
        project: a.project.clone(),
        submitter: a.submitter.clone(),
        limit: a.limit.map(|l| l as usize),
    })
}

/// `drover jobs`.
pub fn jobs(a: JobsArgs) -> anyhow::Result<()> {
    let client = a.c.client()?;
    let q = job_query(&a)?;
    let page: JobPage = if a.all {
        client.jobs_all(&q)?
    } else {
        client.list_jobs(&q)?
    };
    if a.c.json {
        return print_json(&page);
    }
    print_jobs(&page.jobs);
    if page.next.is_some() {
        eprintln!("more jobs on the next page: --all lists every one, --limit N more per page");
    }
    Ok(())
}

/// `drover status`.
pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    let Some(id) = a.job else {
        return jobs(JobsArgs {
            state: None,
            project: None,
            submitter: None,
            limit: Some(500),
            all: true,
            c: a.c,
        });
    };
    let client = a.c.client()?;
    let j = client.job(id)?;
    if a.c.json {
        return print_json(&j);
    }
    print_job(&j, client.base());
    Ok(())
}

/// `drover cancel`.
pub fn cancel(a: JobArgs) -> anyhow::Result<()> {
    let j = a.c.client()?.cancel(a.job)?;
    if a.c.json {
        return print_json(&j);
    }
    println!(
        "job {} is {}: running chunks stop, its {} stored frames are kept (`drover retry {}` renders the rest)",
        j.id,
        state_name(j.state),
        j.frames_done,
        j.id
    );
    Ok(())
}

/// `drover retry`.
pub fn retry(a: JobArgs) -> anyhow::Result<()> {
    let v = a.c.client()?.retry(a.job)?;
    if a.c.json {
        return print_json(&v);
    }
    println!(
        "job {}: {} again, {} of {} frames already stored",
        v.id,
        state_name(v.state),
        v.frames_done,
        v.frames_total
    );
    Ok(())
}

/// `drover pause` (`pause`) or `drover resume`.
pub fn pause(a: JobArgs, pause: bool) -> anyhow::Result<()> {
    let client = a.c.client()?;
    let v = if pause {
        client.pause(a.job)?
    } else {
        client.resume(a.job)?
    };
    if a.c.json {
        return print_json(&v);
    }
    if pause {
        println!(
            "job {} paused: no new chunk starts; running chunks finish and are kept",
            v.id
        );
    } else {
        println!("job {} resumed ({})", v.id, state_name(v.state));
    }
    Ok(())
}

/// `drover priority`.
pub fn priority(a: PriorityArgs) -> anyhow::Result<()> {
    let v = a.c.client()?.set_priority(a.job, a.priority)?;
    if a.c.json {
        return print_json(&v);
    }
    println!("job {}: priority {}", v.id, v.priority);
    Ok(())
}

/// `drover chunks`.
pub fn chunks(a: JobArgs) -> anyhow::Result<()> {
    let list = a.c.client()?.chunks(a.job)?;
    if a.c.json {
        return print_json(&list);
    }
    print_chunk_table(&list.chunks);
    Ok(())
}

fn full_url(base: &str, link: &str) -> String {
    if link.starts_with("http://") || link.starts_with("https://") {
        link.to_string()
    } else {
        format!("{}{link}", base.trim_end_matches('/'))
    }
}

/// `drover artifacts`.
pub fn artifacts(a: ArtifactsArgs) -> anyhow::Result<()> {
    let client = a.c.client()?;
    let list = client.artifacts(a.job, a.ttl_s)?;
    if a.c.json {
        return print_json(&list);
    }
    println!(
        "{:<12} {:>12}  {:<64}  {:<19}  LINK (no key needed)",
        "NAME", "BYTES", "SHA-256", "EXPIRES (UTC)"
    );
    for f in &list.artifacts {
        println!(
            "{:<12} {:>12}  {:<64}  {:<19}  {}",
            f.name,
            f.bytes,
            f.sha256,
            utc(f.expires_at * 1000),
            full_url(client.base(), &f.download_url)
        );
    }
    Ok(())
}

/// `drover download`.
pub fn download(a: DownloadArgs) -> anyhow::Result<()> {
    let client = a.c.client()?;
    let want = if a.poster { "poster.png" } else { "output.mp4" };
    let list = client.artifacts(a.job, None)?;
    let art: &ArtifactView = list
        .artifacts
        .iter()
        .find(|f| f.name == want)
        .with_context(|| format!("job {} has no {want}", a.job))?;
    let dest = match &a.output {
        Some(p) if p.is_dir() => {
            let job = client.job(a.job)?;
            p.join(crate::download::default_name(&job.name, a.job, want))
        }
        Some(p) => p.clone(),
        None => {
            let job = client.job(a.job)?;
            PathBuf::from(crate::download::default_name(&job.name, a.job, want))
        }
    };
    let bar = std::io::stderr().is_terminal();
    let bytes = crate::download::fetch(&client, art, &dest, bar)?;
    if a.c.json {
        return print_json(art);
    }
    println!(
        "{}: {bytes} bytes, SHA-256 {} (matches the artifact list)",
        dest.display(),
        art.sha256
    );
    Ok(())
}

/// `drover webhooks`.
pub fn webhooks(a: JobArgs) -> anyhow::Result<()> {
    let list: Vec<DeliveryView> = a.c.client()?.webhooks(a.job)?;
    if a.c.json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("job {}: no webhook deliveries", a.job);
        return Ok(());
    }
    println!(
        "{:<14} {:<10} {:>8}  {:<40} LAST ATTEMPT",
        "EVENT", "STATE", "ATTEMPTS", "URL"
    );
    for d in &list {
        let state = serde_json::to_value(d.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let last = match d.attempts.last() {
            None => "none yet".to_string(),
            Some(t) => {
                let outcome = match (t.status, &t.error) {
                    (Some(s), _) => format!("HTTP {s}"),
                    (None, Some(e)) => e.clone(),
                    (None, None) => "no answer".into(),
                };
                format!("{} {outcome}", utc(t.at_ms))
            }
        };
        let next = match d.next_attempt_at_ms {
            Some(at) => format!("; next {}", utc(at)),
            None => String::new(),
        };
        println!(
            "{:<14} {:<10} {:>8}  {:<40} {last}{next}",
            d.event,
            state,
            d.attempts.len(),
            d.url
        );
    }
    Ok(())
}

fn node_state(n: &NodeView) -> &'static str {
    match (n.connected, &n.quarantined) {
        (_, Some(_)) => "quarantined",
        (true, None) if n.drained => "drained",
        (true, None) => "up",
        (false, None) => "down",
    }
}

fn node_adapter(n: &NodeView) -> String {
    let adapter = n
        .capabilities
        .render_adapter
        .as_ref()
        .map(|a| format!("{} ({:?})", a.name, a.device_type))
        .unwrap_or_default();
    match &n.capabilities.test_override {
        Some(t) => format!("{adapter} [test: {t}]"),
        None => adapter,
    }
}

/// The node table.
pub fn print_nodes(nodes: &[NodeView]) {
    println!(
        "{:<16} {:<11} {:<40} {:>6} {:>8} {:>8}  {:<24} CHUNKS",
        "NAME", "STATE", "ADAPTER", "CPU%", "HB AGE", "FRAMES", "SPEED (frames/s)"
    );
    for n in nodes {
        let speed: Vec<String> = n
            .speed_fps
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "{:<16} {:<11} {:<40} {:>6.1} {:>7}ms {:>8}  {:<24} {}",
            n.name,
            node_state(n),
            node_adapter(n),
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
}

/// `drover nodes`.
pub fn nodes(a: NodesArgs) -> anyhow::Result<()> {
    if let Some(name) = a.clear_quarantine {
        return clear_quarantine(NodeArgs { node: name, c: a.c });
    }
    let client = a.c.client()?;
    let Some(name) = a.name else {
        let nodes = client.nodes()?;
        if a.c.json {
            return print_json(&nodes);
        }
        print_nodes(&nodes);
        return Ok(());
    };
    let n = client.node(&name)?;
    if a.c.json {
        return print_json(&n);
    }
    print_nodes(std::slice::from_ref(&n));
    let caps = &n.capabilities;
    println!();
    // The rest of what the node reported, as the API has it, for the
    // fields the table leaves out (host, encoders, every adapter, tags).
    let detail = serde_json::to_string_pretty(caps)?;
    println!("capabilities: {detail}");
    println!("slots: {}", n.slots);
    Ok(())
}

fn print_change(change: &NodeChange, done: &str, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(change);
    }
    match change {
        NodeChange::Node(n) => println!("node {}: {done}", n.name),
        NodeChange::Remembered { detail, .. } => println!("{detail}"),
    }
    Ok(())
}

/// `drover drain`.
pub fn drain(a: DrainArgs) -> anyhow::Result<()> {
    let change = a.c.client()?.drain_node(&a.node, Some(a.now))?;
    let how = if a.now {
        "drained (unrendered frames handed back)"
    } else {
        "drained (its current chunks finish)"
    };
    print_change(&change, how, a.c.json)
}

/// `drover undrain`.
pub fn undrain(a: NodeArgs) -> anyhow::Result<()> {
    let change = a.c.client()?.drain_node(&a.node, None)?;
    print_change(&change, "takes work again", a.c.json)
}

/// `drover clear-quarantine`.
pub fn clear_quarantine(a: NodeArgs) -> anyhow::Result<()> {
    let n = a.c.client()?.clear_quarantine(&a.node)?;
    if a.c.json {
        return print_json(&n);
    }
    println!("node {}: quarantine cleared", n.name);
    Ok(())
}

/// The key table.
pub fn print_keys(keys: &[KeyView]) {
    println!(
        "{:<18} {:<20} {:<10} {:<12} {:>6} {:>9}  {:<19}  REVOKED",
        "ID", "NAME", "ROLE", "PROJECT", "RATE/S", "MAX JOBS", "CREATED (UTC)"
    );
    for k in keys {
        println!(
            "{:<18} {:<20} {:<10} {:<12} {:>6} {:>9}  {:<19}  {}",
            k.id,
            k.name,
            format!("{:?}", k.role).to_lowercase(),
            k.project.as_deref().unwrap_or("(all)"),
            k.rate_per_s,
            k.max_active_jobs,
            utc(k.created_ms),
            k.revoked_ms.map(utc).unwrap_or_default()
        );
    }
}

/// `drover keys ...`.
pub fn keys(cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::List { c } => {
            let keys = c.client()?.keys()?;
            if c.json {
                return print_json(&keys);
            }
            print_keys(&keys);
            Ok(())
        }
        KeysCmd::Create {
            name,
            role,
            project,
            rate,
            max_active_jobs,
            c,
        } => {
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let created = c.client()?.create_key(&NewKey {
                name,
                role,
                project,
                rate_per_s: rate,
                max_active_jobs,
            })?;
            if c.json {
                return print_json(&created);
            }
            // The secret alone on stdout (`> ci.key` keeps just it); what
            // it is, on stderr.
            println!("{}", created.secret);
            let k = &created.key;
            eprintln!(
                "created key {} ({}, {}, project {}). This is the only time its secret is shown: the coordinator does not store it (only a hash), so keep it now.",
                k.id,
                k.name,
                format!("{:?}", k.role).to_lowercase(),
                k.project.as_deref().unwrap_or("(all)")
            );
            Ok(())
        }
        KeysCmd::Revoke { id, c } => {
            let k = c.client()?.revoke_key(&id)?;
            if c.json {
                return print_json(&k);
            }
            println!("key {} ({}) revoked", k.id, k.name);
            Ok(())
        }
    }
}

/// One event as a line for people.
pub fn event_line(e: &crate::events::ApiEvent) -> String {
    let mut line = format!("{} {:<8} {:<16}", utc(e.at_ms), e.id, e.kind);
    if let Some(j) = e.job {
        line.push_str(&format!(" job {j}"));
        let d = &e.data;
        if let Some(name) = d.get("name").and_then(|v| v.as_str()) {
            line.push_str(&format!(" {name:?}"));
        }
        if let Some(state) = d.get("state").and_then(|v| v.as_str()) {
            line.push_str(&format!(" {state}"));
        }
        if let (Some(done), Some(total)) = (
            d.get("frames_done").and_then(|v| v.as_u64()),
            d.get("frames_total").and_then(|v| v.as_u64()),
        ) {
            line.push_str(&format!(" {done}/{total} frames"));
        }
    }
    if let Some(n) = &e.node {
        line.push_str(&format!(" node {n}"));
    }
    if let Some(c) = e.data.get("chunk") {
        if let (Some(s), Some(t)) = (
            c.get("start").and_then(|v| v.as_u64()),
            c.get("end").and_then(|v| v.as_u64()),
        ) {
            line.push_str(&format!(" (frames {s}-{t})"));
        }
    }
    if let Some(r) = e.data.get("reason").and_then(|v| v.as_str()) {
        line.push_str(&format!(": {r}"));
    }
    line
}

/// `drover events`: follows the stream until it refuses for good (or the
/// reader of stdout goes away).
pub fn events(a: EventsArgs) -> anyhow::Result<()> {
    let client = a.c.client()?;
    let stream = client.events_with(EventQuery {
        job: a.job,
        kinds: a.kinds,
        last_event_id: a.last_event_id,
    });
    let mut last_err = None;
    for item in stream {
        match item {
            Ok(StreamItem::Connected { resumed }) => {
                // On stderr, so that stdout stays the events alone; from
                // here on no event is missed.
                eprintln!(
                    "following the events of {}{}",
                    client.base(),
                    if resumed { " (resumed)" } else { "" }
                );
                last_err = None;
            }
            Ok(StreamItem::Event { event, raw }) => {
                if a.c.json {
                    println!("{raw}");
                } else {
                    println!("{}", event_line(&event));
                }
            }
            Ok(StreamItem::Reset { detail, raw }) => {
                if a.c.json {
                    println!("{raw}");
                } else {
                    println!("reset: {detail}");
                }
            }
            Err(e) => {
                eprintln!("{e:#}");
                last_err = Some(e);
            }
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        let check = |ms: u64, want: &str| assert_eq!(utc(ms), want);
        check(0, "1970-01-01 00:00:00");
        check(951_782_400_000, "2000-02-29 00:00:00");
        check(1_700_000_000_123, "2023-11-14 22:13:20");
        check(4_102_444_799_000, "2099-12-31 23:59:59");
    }

    #[test]
    fn an_event_reads_as_one_line() {
        let check = |json: serde_json::Value, want: &str| {
            let e: crate::events::ApiEvent = serde_json::from_value(json).unwrap();
            assert_eq!(event_line(&e), want);
        };
        check(
            serde_json::json!({"id": "1.4", "kind": "job.progress", "at_ms": 0, "job": 3,
                "project": "default", "node": "n1",
                "data": {"name": "shot", "state": "running", "frames_done": 8,
                         "frames_total": 16, "chunk": {"start": 1, "end": 8}}}),
            "1970-01-01 00:00:00 1.4      job.progress     job 3 \"shot\" running 8/16 frames node n1 (frames 1-8)",
        );
        check(
            serde_json::json!({"id": "1.5", "kind": "node.quarantined", "at_ms": 0,
                "node": "n2", "data": {"reason": "3 jobs failed in a row"}}),
            "1970-01-01 00:00:00 1.5      node.quarantined node n2: 3 jobs failed in a row",
        );
    }
}

/// `drover join-tokens ...`: tokens new nodes join with.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokensCmd {
    /// Every join token (never their secrets).
    #[command(after_help = "Example:\n  drover join-tokens list")]
    List {
        #[command(flatten)]
        #[allow(missing_docs)]
        c: ClientArgs,
    },
    /// Create a join token; it is printed this once (the coordinator keeps
    /// only its hash). A new node needs nothing else: `drover node --join
    /// TOKEN`.
    #[command(
        after_help = "Example:\n  drover join-tokens create --pool gpu --ttl-s 86400 --note \"rack 4\" > join.token\n  # on the render machine:\n  drover node --join \"$(cat join.token)\""
    )]
    Create {
        /// Pool of the nodes that join with it (default: the node's own
        /// --pool).
        #[arg(long)]
        pool: Option<String>,
        /// Seconds it stays valid (60 to 31536000; default: until revoked).
        #[arg(long, value_name = "S")]
        ttl_s: Option<u64>,
        /// What it is for.
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        c: ClientArgs,
    },
    /// Revoke a join token: no node joins with it any more (nodes that
    /// joined keep their identities).
    #[command(after_help = "Example:\n  drover join-tokens revoke 5e0c9a1b2d3f4e5a")]
    Revoke {
        /// Token id (as `drover join-tokens list` shows it).
        id: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        c: ClientArgs,
    },
}

/// `drover identities ...`: the certificates nodes joined with.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum IdentitiesCmd {
    /// Every node identity.
    #[command(after_help = "Example:\n  drover identities list")]
    List {
        #[command(flatten)]
        #[allow(missing_docs)]
        c: ClientArgs,
    },
    /// Revoke a node's identity: it is cut off at once, its chunks go back
    /// to the queue, and it is refused at every later handshake.
    #[command(after_help = "Example:\n  drover identities revoke gpu-07")]
    Revoke {
        /// The node name, or its certificate fingerprint.
        node: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        c: ClientArgs,
    },
}

/// `drover tags`.
#[derive(Debug, Clone, clap::Args)]
pub struct TagsArgs {
    /// Node name.
    pub node: String,
    /// The node's tags from now on, comma-separated, replacing what it
    /// reports itself.
    #[arg(
        value_delimiter = ',',
        required_unless_present = "clear",
        value_name = "TAG,..."
    )]
    pub tags: Vec<String>,
    /// Give the node back its own tags.
    #[arg(long, conflicts_with = "tags")]
    pub clear: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

fn print_tokens(tokens: &[drover_shared::api::JoinTokenView]) {
    println!(
        "{:<18} {:<12} {:>6}  {:<19}  {:<19}  {:<19}  NOTE",
        "ID", "POOL", "JOINED", "CREATED (UTC)", "EXPIRES (UTC)", "REVOKED"
    );
    for t in tokens {
        println!(
            "{:<18} {:<12} {:>6}  {:<19}  {:<19}  {:<19}  {}",
            t.id,
            t.pool.as_deref().unwrap_or("(node's)"),
            t.joined,
            utc(t.created_ms),
            t.expires_ms.map(utc).unwrap_or_else(|| "never".into()),
            t.revoked_ms.map(utc).unwrap_or_default(),
            t.note
        );
    }
}

/// `drover join-tokens ...`.
pub fn join_tokens(cmd: TokensCmd) -> anyhow::Result<()> {
    match cmd {
        TokensCmd::List { c } => {
            let t = c.client()?.join_tokens()?;
            if c.json {
                return print_json(&t);
            }
            print_tokens(&t);
            Ok(())
        }
        TokensCmd::Create {
            pool,
            ttl_s,
            note,
            c,
        } => {
            let created = c
                .client()?
                .create_join_token(&drover_shared::api::NewJoinToken { pool, ttl_s, note })?;
            if c.json {
                return print_json(&created);
            }
            println!("{}", created.secret);
            eprintln!(
                "created join token {} (pool {}). This is the only time it is shown: keep it, and start nodes with `drover node --join TOKEN`.",
                created.token.id,
                created.token.pool.as_deref().unwrap_or("(the node's own)")
            );
            Ok(())
        }
        TokensCmd::Revoke { id, c } => {
            let t = c.client()?.revoke_join_token(&id)?;
            if c.json {
                return print_json(&t);
            }
            println!("join token {} revoked", t.id);
            Ok(())
        }
    }
}

/// `drover identities ...`.
pub fn identities(cmd: IdentitiesCmd) -> anyhow::Result<()> {
    match cmd {
        IdentitiesCmd::List { c } => {
            let ids = c.client()?.identities()?;
            if c.json {
                return print_json(&ids);
            }
            println!(
                "{:<20} {:<18} {:<12} {:<18} {:<19}  REVOKED",
                "NODE", "FINGERPRINT", "POOL", "TOKEN", "JOINED (UTC)"
            );
            for i in &ids {
                println!(
                    "{:<20} {:<18} {:<12} {:<18} {:<19}  {}",
                    i.name,
                    &i.fingerprint[..16.min(i.fingerprint.len())],
                    i.pool.as_deref().unwrap_or("-"),
                    i.token,
                    utc(i.enrolled_ms),
                    i.revoked_ms.map(utc).unwrap_or_default()
                );
            }
            Ok(())
        }
        IdentitiesCmd::Revoke { node, c } => {
            let i = c.client()?.revoke_identity(&node)?;
            if c.json {
                return print_json(&i);
            }
            println!(
                "identity of node {} revoked: it is cut off and refused from now on",
                i.name
            );
            Ok(())
        }
    }
}

/// `drover tags`.
pub fn tags(a: TagsArgs) -> anyhow::Result<()> {
    let tags = (!a.clear).then_some(a.tags);
    let node = a.c.client()?.set_node_tags(&a.node, tags)?;
    match (node, a.c.json) {
        (Some(n), true) => print_json(&n),
        (Some(n), false) => {
            println!("node {} tags: {}", n.name, n.capabilities.tags.join(","));
            Ok(())
        }
        (None, true) => print_json(&serde_json::json!({ "status": "remembered" })),
        (None, false) => {
            println!(
                "node {} is not connected; its tags apply when it is",
                a.node
            );
            Ok(())
        }
    }
}

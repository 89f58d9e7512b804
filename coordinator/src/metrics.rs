//! Prometheus metrics and the readiness checks behind `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! Two kinds of series:
//! - **Counters and histograms** fed where things happen: facts as the
//!   scheduler actor commits them (frames done, stolen, wasted, jobs
//!   ended), events as it handles them (decision latency, chunk durations,
//!   chunk failures), each journal group commit, every uploaded byte
//!   written to the store, every webhook answer. They live in one
//!   process-wide [`Metrics`] ([`global`]): a coordinator is one process,
//!   and the hooks stay one line each wherever they are.
//! - **Gauges that describe state** (jobs by state, the queue in frames and
//!   estimated seconds, nodes by state and pool), computed at scrape time
//!   from one [`crate::sched::summary::LoadSummary`] the scheduler actor
//!   builds, so they can never drift from the core.
//!
//! Every name starts with `drover_`; [`SERIES`] lists them (the tests and
//! the Grafana dashboard are checked against it).
//!
//! `/metrics` is guarded by its own scrape token ([`MetricsAccess`]), not by
//! the API keys: a Prometheus server gets read access to numbers, nothing
//! else.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::journal::scheduler::SchedulerJournal;
use crate::sched::summary::{state_key, LoadSummary};
use crate::sched::Fact;

/// Labels of one series: (name, value) pairs.
type Labels = Vec<(&'static str, String)>;

/// Every series `/metrics` serves, by the name a query uses (histograms by
/// their base name; counters with `_total`).
pub const SERIES: &[&str] = &[
    "drover_jobs",
    "drover_jobs_finished_total",
    "drover_frames_done_total",
    "drover_frames_failed_total",
    "drover_frames_missing_total",
    "drover_chunk_failures_total",
    "drover_queue_frames",
    "drover_queue_seconds",
    "drover_nodes",
    "drover_chunk_duration_seconds",
    "drover_frames_stolen_total",
    "drover_frames_wasted_total",
    "drover_scheduler_decision_seconds",
    "drover_journal_commit_seconds",
    "drover_uploaded_bytes_total",
    "drover_webhook_deliveries_total",
];

/// The counters and histograms fed as things happen.
pub struct Metrics {
    registry: Registry,
    /// Jobs that ended, by final state (`done`, `failed`, `cancelled`).
    pub jobs_finished: Family<Labels, Counter>,
    /// Frames stored in verified segments.
    pub frames_done: Counter,
    /// Frames thrown back by failed chunk attempts (to be retried).
    pub frames_failed: Counter,
    /// Frames left out after every retry failed.
    pub frames_missing: Counter,
    /// Chunk attempts that failed on their node.
    pub chunk_failures: Counter,
    /// Frames moved from one node to another by stealing.
    pub frames_stolen: Counter,
    /// Frames rendered and thrown away (a losing speculative copy, a
    /// failed upload).
    pub frames_wasted: Counter,
    /// A chunk's render and encode time on its node, as it reports it.
    pub chunk_duration: Histogram,
    /// Time the scheduler actor spends in the core for one event.
    pub decision_latency: Histogram,
    /// One journal group commit: encode, write, fsync; by journal (`wal`
    /// for the scheduler's, `webhooks` for deliveries').
    pub journal_commit: Family<Labels, Histogram>,
    /// Segment bytes written to the artifact store.
    pub uploaded_bytes: Counter,
    /// Webhook attempts by outcome: `delivered`, `retrying`, `gave_up`.
    pub webhook_deliveries: Family<Labels, Counter>,
}

/// Buckets for latencies from 10 µs to about 10 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_01, 4.0, 11)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("drover");
        let m = Metrics {
            registry: Registry::default(),
            jobs_finished: Family::default(),
            frames_done: Counter::default(),
            frames_failed: Counter::default(),
            frames_missing: Counter::default(),
            chunk_failures: Counter::default(),
            frames_stolen: Counter::default(),
            frames_wasted: Counter::default(),
            // 0.25 s to about 17 minutes: a chunk's target is 20 s by
            // default, and a job may ask for up to 10 minutes.
            chunk_duration: Histogram::new(exponential_buckets(0.25, 2.0, 13)),
            decision_latency: Histogram::new(latency_buckets()),
            journal_commit: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            uploaded_bytes: Counter::default(),
            webhook_deliveries: Family::default(),
        };
        registry.register(
            "jobs_finished",
            "Jobs that ended, by final state",
            m.jobs_finished.clone(),
        );
        registry.register(
            "frames_done",
            "Frames stored in verified segments",
            m.frames_done.clone(),
        );
        registry.register(
            "frames_failed",
            "Frames thrown back by failed chunk attempts (retried, or left out once out of retries)",
            m.frames_failed.clone(),
        );
        registry.register(
            "frames_missing",
            "Frames left out of their job after every retry failed",
            m.frames_missing.clone(),
        );
        registry.register(
            "chunk_failures",
            "Chunk attempts that failed on their node",
            m.chunk_failures.clone(),
        );
        registry.register(
            "frames_stolen",
            "Frames moved from a busy node to an idle one by stealing",
            m.frames_stolen.clone(),
        );
        registry.register(
            "frames_wasted",
            "Frames rendered and thrown away (losing speculative copies, lost uploads)",
            m.frames_wasted.clone(),
        );
        registry.register(
            "chunk_duration_seconds",
            "Render and encode time of a finished chunk on its node",
            m.chunk_duration.clone(),
        );
        registry.register(
            "scheduler_decision_seconds",
            "Time the scheduler core takes to handle one event",
            m.decision_latency.clone(),
        );
        registry.register(
            "journal_commit_seconds",
            "One journal group commit: encode, write and fsync",
            m.journal_commit.clone(),
        );
        registry.register(
            "uploaded_bytes",
            "Segment bytes written to the artifact store",
            m.uploaded_bytes.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome",
            m.webhook_deliveries.clone(),
        );
        // Present from the first scrape, so dashboards and alerts see a 0
        // rather than no data.
        for s in ["done", "failed", "cancelled"] {
            drop(
                m.jobs_finished
                    .get_or_create(&vec![("state", s.to_string())]),
            );
        }
        for o in ["delivered", "retrying", "gave_up"] {
            drop(
                m.webhook_deliveries
                    .get_or_create(&vec![("outcome", o.to_string())]),
            );
        }
        for j in ["wal", "webhooks"] {
            drop(
                m.journal_commit
                    .get_or_create(&vec![("journal", j.to_string())]),
            );
        }
        Metrics { registry, ..m }
    }

    /// Counts what a commit's facts say happened.
    pub fn count_facts(&self, facts: &[Fact]) {
        for f in facts {
            match f {
                Fact::Stored { start, end, .. } => {
                    self.frames_done.inc_by(end.saturating_sub(*start) + 1);
                }
                Fact::Counters { stolen, wasted, .. } => {
                    self.frames_stolen.inc_by(*stolen);
                    self.frames_wasted.inc_by(*wasted);
                }
                Fact::Missing { .. } => {
                    self.frames_missing.inc();
                }
                Fact::Output { .. } => {
                    self.jobs_finished
                        .get_or_create(&vec![("state", "done".to_string())])
                        .inc();
                }
                Fact::Ended { state, .. } => {
                    self.jobs_finished
                        .get_or_create(&vec![("state", state_key(*state).to_string())])
                        .inc();
                }
                _ => {}
            }
        }
    }

    /// Counts what an event says before the core handles it: a chunk's
    /// duration when it is done, a failure and the frames it throws back
    /// (read from the core before it forgets the attempt).
    pub fn event_seen(&self, core: &crate::sched::Core, event: &crate::sched::Event) {
        use crate::sched::Event;
        match event {
            Event::ChunkDone { elapsed_ms, .. } => {
                self.chunk_duration.observe(*elapsed_ms as f64 / 1000.0);
            }
            Event::ChunkFailed { chunk, epoch, .. } => {
                // A late report of an attempt already over changes nothing.
                if let Some(frames) = core.failing_attempt_frames(*chunk, *epoch) {
                    self.chunk_failures.inc();
                    self.frames_failed.inc_by(frames);
                }
            }
            _ => {}
        }
    }

    /// Times one journal group commit of the journal in `dir`.
    pub fn journal_committed(&self, dir: &std::path::Path, took: Duration) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.journal_commit
            .get_or_create(&vec![("journal", name)])
            .observe(took.as_secs_f64());
    }

    /// Counts one webhook answer: delivered, given up, or to be retried.
    pub fn webhook_answered(&self, delivered: bool, gave_up: bool) {
        let outcome = if delivered {
            "delivered"
        } else if gave_up {
            "gave_up"
        } else {
            "retrying"
        };
        self.webhook_deliveries
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The text `/metrics` serves: the counters and histograms, then the
/// scrape-time gauges of `load`, in the Prometheus text format 0.0.4.
pub fn render(load: &LoadSummary) -> Result<String, std::fmt::Error> {
    let mut gauges = Registry::with_prefix("drover");
    let jobs = Family::<Labels, Gauge>::default();
    for (state, n) in &load.jobs {
        jobs.get_or_create(&vec![("state", state_key(*state).to_string())])
            .set(*n as i64);
    }
    gauges.register(
        "jobs",
        "Jobs the coordinator holds (active, and ended ones still in memory), by state",
        jobs,
    );
    let queue_frames = Gauge::<i64>::default();
    queue_frames.set(load.queue_frames as i64);
    gauges.register(
        "queue_frames",
        "Frames of queued and running jobs not rendered yet",
        queue_frames,
    );
    let queue_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    queue_seconds.set(load.queue_seconds);
    gauges.register(
        "queue_seconds",
        "Estimated seconds one average connected node needs for the queued frames (from learned speeds)",
        queue_seconds,
    );
    let nodes = Family::<Labels, Gauge>::default();
    for ((pool, state), n) in &load.nodes {
        nodes
            .get_or_create(&vec![
                ("pool", pool.clone()),
                ("state", state.as_str().to_string()),
            ])
            .set(*n as i64);
    }
    gauges.register("nodes", "Nodes by pool and state", nodes);
    let mut out = String::new();
    prometheus_text::encode(&mut out, &global().registry)?;
    prometheus_text::encode(&mut out, &gauges)?;
    Ok(out)
}

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Longest a scrape token may be: a token is a secret of a few dozen
/// characters, and the file is read whole at start.
pub const MAX_SCRAPE_TOKEN_BYTES: usize = 4096;

/// Who may read `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Not configured: `/metrics` answers 403 saying how to enable it.
    Closed,
    /// Open to anyone who reaches the HTTP port (`--metrics-public`).
    Public,
    /// Only with `Authorization: Bearer <token>` (`--metrics-token-file`).
    Token(String),
}

/// Why a scrape token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("--metrics-token-file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("--metrics-token-file {path}: the file is empty; put the scrape token in it")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is too large to be a token.
    #[error("--metrics-token-file {path}: {bytes} bytes; the limit is {MAX_SCRAPE_TOKEN_BYTES}")]
    TooLong {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: usize,
    },
    /// The token holds characters a header cannot carry.
    #[error("--metrics-token-file {path}: the token must be printable ASCII without spaces")]
    NotPrintable {
        /// The file.
        path: PathBuf,
    },
}

impl MetricsAccess {
    /// The access `--metrics-token-file` and `--metrics-public` ask for
    /// (the command line makes them exclusive). The token file is read
    /// once, here; surrounding whitespace (a trailing newline) is not part
    /// of the token.
    pub fn from_flags(
        token_file: Option<&std::path::Path>,
        public: bool,
    ) -> Result<MetricsAccess, TokenFileError> {
        let Some(path) = token_file else {
            return Ok(if public {
                MetricsAccess::Public
            } else {
                MetricsAccess::Closed
            });
        };
        let raw = std::fs::read(path).map_err(|source| TokenFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if raw.len() > MAX_SCRAPE_TOKEN_BYTES {
            return Err(TokenFileError::TooLong {
                path: path.to_path_buf(),
                bytes: raw.len(),
            });
        }
        let text = String::from_utf8_lossy(&raw);
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenFileError::NotPrintable {
                path: path.to_path_buf(),
            });
        }
        Ok(MetricsAccess::Token(token.to_string()))
    }

    /// Whether a request with this `Authorization` header may scrape:
    /// `Ok`, or the status and the reason to answer with.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), (u16, &'static str)> {
        match self {
            MetricsAccess::Public => Ok(()),
            MetricsAccess::Closed => Err((
                403,
                "/metrics is not enabled: start the coordinator with --metrics-token-file PATH (scrapers send Authorization: Bearer <token>) or --metrics-public",
            )),
            MetricsAccess::Token(token) => {
                let presented = authorization
                    .and_then(|h| h.strip_prefix(b"Bearer "))
                    .unwrap_or_default();
                // Digests compared in constant time: neither the token's
                // contents nor its length show in the answer's timing.
                let equal = crate::auth::secret::ct_eq(
                    crate::auth::secret::sha256_hex(presented).as_bytes(),
                    crate::auth::secret::sha256_hex(token.as_bytes()).as_bytes(),
                );
                if authorization.is_none() {
                    Err((401, "/metrics needs Authorization: Bearer <scrape token>"))
                } else if equal {
                    Ok(())
                } else {
                    Err((403, "the scrape token is not this coordinator's"))
                }
            }
        }
    }
}

/// How long `/readyz` waits for the journal to make what was appended
/// durable before it calls the journal stuck: a group commit is one
/// fsync, milliseconds on a healthy disk, so seconds mean the disk hangs.
pub const JOURNAL_READY_WAIT: Duration = Duration::from_secs(5);

/// What `/readyz` checks beyond the scheduler and the store, set as the
/// coordinator starts (one coordinator per process).
#[derive(Default)]
pub struct Health {
    quic_accepting: AtomicBool,
    journal: OnceLock<(SchedulerJournal, PathBuf)>,
}

/// The process's readiness state.
pub fn health() -> &'static Health {
    static HEALTH: LazyLock<Health> = LazyLock::new(Health::default);
    &HEALTH
}

impl Health {
    /// The QUIC endpoint's accept loop runs (`true`) or has ended.
    pub fn set_quic_accepting(&self, up: bool) {
        self.quic_accepting.store(up, Ordering::Release);
    }

    /// Whether the QUIC endpoint accepts connections.
    pub fn quic_accepting(&self) -> bool {
        self.quic_accepting.load(Ordering::Acquire)
    }

    /// The scheduler's journal, and the directory it lives in (the probe
    /// file goes there).
    pub fn set_journal(&self, journal: SchedulerJournal, dir: PathBuf) {
        let _ = self.journal.set((journal, dir));
    }

    /// The journal is writable: its writer has not failed, everything
    /// appended so far becomes durable within [`JOURNAL_READY_WAIT`], and a
    /// probe file in its directory can be created, synced and removed.
    /// Blocking: call off the async threads.
    pub fn check_journal(&self) -> Result<(), String> {
        let Some((journal, dir)) = self.journal.get() else {
            return Err("not open yet".into());
        };
        let last = journal.append(Vec::new()).map_err(|e| e.to_string())?;
        journal
            .wait_durable(last, JOURNAL_READY_WAIT)
            .map_err(|e| e.to_string())?;
        let probe = dir.join(".ready-probe");
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&probe)?;
            f.write_all(b"ok")?;
            f.sync_all()?;
            std::fs::remove_file(&probe)
        };
        write().map_err(|e| format!("{} is not writable: {e}", dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(access: &MetricsAccess, header: Option<&str>) -> Result<(), u16> {
        access.check(header.map(str::as_bytes)).map_err(|(s, _)| s)
    }

    #[test]
    fn the_scrape_token_is_required_and_compared_exactly() {
        let t = MetricsAccess::Token("s3cret".into());
        assert_eq!(check(&t, None), Err(401));
        assert_eq!(check(&t, Some("Bearer s3cre")), Err(403));
        assert_eq!(check(&t, Some("Bearer s3cret2")), Err(403));
        assert_eq!(check(&t, Some("s3cret")), Err(403));
        assert_eq!(check(&t, Some("Bearer s3cret")), Ok(()));
        assert_eq!(check(&MetricsAccess::Public, None), Ok(()));
        assert_eq!(check(&MetricsAccess::Closed, Some("Bearer x")), Err(403));
    }

    #[test]
    fn token_files_are_read_once_and_refused_when_empty_or_odd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(
            MetricsAccess::from_flags(Some(&path), false).unwrap(),
            MetricsAccess::Token("abc".into())
        );
        std::fs::write(&path, " \n").unwrap();
        let e = MetricsAccess::from_flags(Some(&path), false).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        std::fs::write(&path, "a b").unwrap();
        let e = MetricsAccess::from_flags(Some(&path), false).unwrap_err();
        assert!(e.to_string().contains("printable"), "{e}");
        std::fs::write(&path, vec![b'a'; MAX_SCRAPE_TOKEN_BYTES + 1]).unwrap();
        let e = MetricsAccess::from_flags(Some(&path), false).unwrap_err();
        assert!(e.to_string().contains("the limit is 4096"), "{e}");
        let e = MetricsAccess::from_flags(Some(&dir.path().join("none")), false).unwrap_err();
        assert!(e.to_string().starts_with("--metrics-token-file"), "{e}");
        assert_eq!(
            MetricsAccess::from_flags(None, true).unwrap(),
            MetricsAccess::Public
        );
        assert_eq!(
            MetricsAccess::from_flags(None, false).unwrap(),
            MetricsAccess::Closed
        );
    }

    #[test]
    fn every_named_series_is_rendered_from_the_first_scrape() {
        let load = LoadSummary {
            jobs: crate::sched::summary::JOB_STATES
                .iter()
                .map(|s| (*s, 0))
                .collect(),
            nodes: crate::sched::summary::NodeState::ALL
                .iter()
                .map(|s| ((String::new(), *s), 0))
                .collect(),
            ..Default::default()
        };
        let text = render(&load).unwrap();
        for name in SERIES {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from:\n{text}"
            );
        }
    }
}

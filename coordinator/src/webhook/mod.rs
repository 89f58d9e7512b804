//! Webhooks: signed, journaled, retried deliveries of job outcomes.
//!
//! A job may name URLs to call when it finishes, fails or is cancelled.
//! [`Webhooks::enqueue`] records one *delivery* per (job, event, URL) in a
//! write-ahead journal (`DATA_DIR/webhooks`) and returns once that is
//! durable; worker threads POST each delivery, signed, until a receiver
//! answers 2xx or the attempts run out. [`Webhooks::deliveries`] shows a
//! job's deliveries with every attempt.
//!
//! # Layout
//! - `engine`: the sans-IO core: the journaled model of the deliveries
//!   (facts `Enqueued`, `Attempted`, `Delivered`, `GaveUp`, `Pruned`) and
//!   every decision (what is due, what an answer means, the backoff, the
//!   prune). Time and randomness are arguments.
//! - `worker`: the driver: threads that send with ureq and append the
//!   core's facts to the journal.
//! - [`mod@sign`]: the signature header, [`sign()`] and [`verify`].
//! - `secret`: [`load_or_create_secret`].
//! - `tests`: the tests, against a real HTTP receiver on loopback.
//!
//! # A delivery on the wire
//! `POST <url>` with the job's JSON as the body and these headers:
//!
//! | Header             | Value                                                  |
//! |--------------------|--------------------------------------------------------|
//! | `Content-Type`     | `application/json`                                     |
//! | `Drover-Event`     | the event: `job.done`, `job.failed`, `job.cancelled`   |
//! | `Drover-Delivery`  | the delivery id: 32 hex digits, the same on every attempt of one (job, event, URL) |
//! | `Drover-Signature` | `t=<unix seconds>,v1=<64 hex digits>`                  |
//! | `User-Agent`       | `Drover-Webhooks/<version>`                            |
//!
//! Deliveries are *at least once*: a crash between a receiver's answer and
//! the journal recording it means that attempt is made again, with the same
//! `Drover-Delivery`; a receiver that must act once keeps the ids it has
//! seen (for a few days) and ignores a repeat.
//!
//! # The signature
//! `v1` is the lowercase hex of `HMAC-SHA256(key = secret, message = t + "."
//! + body)`, where
//! - `secret` is the coordinator's webhook secret as bytes: the trimmed
//!   text of `DATA_DIR/webhook-secret` (64 hex digits made on the first
//!   start; the key is those 64 characters, not the 32 bytes they spell),
//!   or of the file `DROVER_WEBHOOK_SECRET_FILE` names;
//! - `t` is the `t=` value as decimal ASCII digits, exactly as in the
//!   header: the Unix time in seconds when this attempt was sent (each
//!   attempt is signed anew, so a retry carries a fresh `t`);
//! - `body` is the raw bytes of the request body as received, before any
//!   JSON parsing (the body is the same bytes on every attempt).
//!
//! The header's entries are separated by `,`; a receiver accepts when any
//! `v1=` entry matches (while a secret is rotated, a header may carry one
//! per secret), ignores keys it does not know (a later `v2`), compares in
//! constant time, and refuses a `t` more than a tolerance (5 minutes is
//! usual, [`sign::DEFAULT_TOLERANCE_S`]) away from its clock, so a captured
//! delivery cannot be replayed later. [`verify`] is the reference
//! implementation. In Python:
//!
//! ```python
//! import hashlib, hmac, time
//!
//! def verify(secret: bytes, header: str, body: bytes, tolerance_s: int = 300) -> bool:
//!     """secret: the secret file's text, stripped, as bytes; body: the raw request body."""
//!     entries = [part.strip().split("=", 1) for part in header.split(",")]
//!     ts = [v for k, v in entries if k == "t"]
//!     sigs = [v for k, v in entries if k == "v1"]
//!     if len(ts) != 1 or not sigs:
//!         return False
//!     expected = hmac.new(secret, ts[0].encode() + b"." + body, hashlib.sha256).hexdigest()
//!     if not any(hmac.compare_digest(expected, s) for s in sigs):
//!         return False
//!     return abs(time.time() - int(ts[0])) <= tolerance_s
//!
//! # e.g. in Flask:
//! # verify(open("webhook-secret").read().strip().encode(),
//! #        request.headers["Drover-Signature"], request.get_data())
//! ```
//!
//! # Retries
//! A 2xx answer delivers. Anything else (another status, a redirect, a
//! refused connection, a timeout after [`WebhookConfig::timeout_ms`]) is a
//! failed attempt, recorded with its status or error (clipped to 200
//! characters), and retried after `base_backoff_ms * 2^(attempt-1)` capped
//! at `max_backoff_ms`, with full jitter (uniform between half the base and
//! that), until `max_attempts` attempts were made; then the delivery has
//! failed. With the defaults (12 attempts, 1 s base, 10 min cap) the 11
//! waits add up to at most 1,623 s, so a receiver has about half an hour to
//! come back before the delivery fails. Pending deliveries survive a
//! restart with their attempts and next due time. Finished deliveries are
//! kept for [`WebhookConfig::retention_ms`] (7 days), then pruned: enqueueing
//! the same (job, event, URL) after that would deliver it again.
//!
//! # HTTPS
//! `https://` receivers are verified against the bundled Mozilla root
//! certificates (ureq's `tls` feature: rustls with webpki roots); plain
//! `http://` is allowed for receivers on a private network.

mod engine;
mod secret;
pub mod sign;
mod worker;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::journal::{Journal, JournalConfig};
/// The journal's model, for a restore (`crate::backup`) to check what it imports.
pub(crate) use engine::Deliveries as JournalModel;
use engine::{Core, Deliveries, RetryPolicy};
use worker::{Shared, State};

pub use secret::{load_or_create_secret, MIN_SECRET_BYTES, SECRET_FILE, SECRET_FILE_ENV};
pub use sign::{sign, verify, VerifyError};

/// The journal's directory under the data dir.
pub const JOURNAL_DIR: &str = "webhooks";

/// The longest URL accepted: 2,048 bytes is what browsers and proxies
/// reliably pass, and each delivery stores its URL in the journal.
pub const MAX_URL_BYTES: usize = 2_048;

/// URLs per enqueue at most: a job notifies a handful of systems; more is
/// a mistake that would multiply every outcome into a burst of requests.
pub const MAX_URLS: usize = 32;

/// The longest event name (`job.cancelled` is 13): it is a header value.
pub const MAX_EVENT_BYTES: usize = 64;

/// The largest body, as JSON text: a job's outcome is a few KiB, and every
/// pending delivery keeps its body in memory and in one journal fact (at
/// most [`crate::journal::MAX_FACT_BYTES`], which JSON escaping of the body
/// may double).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Pending deliveries at most: beyond this, receivers are down for long
/// enough that more would only grow memory and the journal; enqueue refuses
/// until some finish.
pub const MAX_PENDING: usize = 100_000;

/// The largest `max_attempts`: a delivery's history is kept whole and
/// shown by the API, so it stays short.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// The largest `concurrency`: each slot is an OS thread holding at most one
/// connection.
pub const MAX_CONCURRENCY: usize = 64;

/// How long [`Webhooks::enqueue`] waits for its facts to be durable before
/// it reports an error: a healthy journal syncs in milliseconds, so this
/// only fires on a stuck disk.
pub const ENQUEUE_DURABLE_TIMEOUT_MS: u64 = 30_000;

/// Facts between journal snapshots: deliveries are few (a handful of facts
/// per job), so a snapshot of the whole model is small and frequent enough
/// that the log (which holds bodies) stays short.
pub const JOURNAL_SNAPSHOT_EVERY_FACTS: u64 = 10_000;

/// Default attempts per delivery.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 12;
/// Default base of the backoff.
pub const DEFAULT_BASE_BACKOFF_MS: u64 = 1_000;
/// Default cap of the backoff.
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 600_000;
/// Default limit on one request (connect, send, answer's headers).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default number of deliveries sent at once.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Default retention of finished deliveries: a week, as for finished jobs
/// ([`crate::journal::DEFAULT_ARCHIVE_RETENTION_MS`]).
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;

/// How the webhook engine runs.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The coordinator's data dir; the journal goes in `webhooks/` under it.
    pub data_dir: PathBuf,
    /// The signing secret ([`load_or_create_secret`]), at least
    /// [`MIN_SECRET_BYTES`] bytes. Never logged (`Debug` hides it).
    pub secret: Vec<u8>,
    /// Attempts per delivery before it has failed, 1 to
    /// [`MAX_ATTEMPTS_LIMIT`].
    pub max_attempts: u32,
    /// The backoff's base: the first retry comes 0.5 to 1 times this after
    /// the first failure. At least 1.
    pub base_backoff_ms: u64,
    /// The backoff's cap, at least `base_backoff_ms`.
    pub max_backoff_ms: u64,
    /// One request's limit (connect, send, the answer's headers); a
    /// receiver slower than this has failed that attempt. At least 1.
    pub timeout_ms: u64,
    /// Deliveries sent at once (threads), 1 to [`MAX_CONCURRENCY`].
    pub concurrency: usize,
    /// How long finished deliveries stay visible before they are pruned.
    pub retention_ms: u64,
}

impl WebhookConfig {
    /// The defaults, for this data dir and secret.
    pub fn new(data_dir: impl Into<PathBuf>, secret: Vec<u8>) -> WebhookConfig {
        WebhookConfig {
            data_dir: data_dir.into(),
            secret,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_backoff_ms: DEFAULT_BASE_BACKOFF_MS,
            max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            concurrency: DEFAULT_CONCURRENCY,
            retention_ms: DEFAULT_RETENTION_MS,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        let checks: [(&str, u64, bool, String); 6] = [
            (
                "secret (bytes)",
                self.secret.len() as u64,
                self.secret.len() >= MIN_SECRET_BYTES,
                format!("at least {MIN_SECRET_BYTES}"),
            ),
            (
                "max_attempts",
                self.max_attempts.into(),
                (1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts),
                format!("1 to {MAX_ATTEMPTS_LIMIT}"),
            ),
            (
                "base_backoff_ms",
                self.base_backoff_ms,
                self.base_backoff_ms >= 1,
                "at least 1".into(),
            ),
            (
                "max_backoff_ms",
                self.max_backoff_ms,
                self.max_backoff_ms >= self.base_backoff_ms,
                format!("at least base_backoff_ms ({})", self.base_backoff_ms),
            ),
            (
                "timeout_ms",
                self.timeout_ms,
                self.timeout_ms >= 1,
                "at least 1".into(),
            ),
            (
                "concurrency",
                self.concurrency as u64,
                (1..=MAX_CONCURRENCY).contains(&self.concurrency),
                format!("1 to {MAX_CONCURRENCY}"),
            ),
        ];
        for (field, value, ok, rule) in checks {
            if !ok {
                bail!("webhook config: {field} = {value}: must be {rule}");
            }
        }
        Ok(())
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("data_dir", &self.data_dir)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("max_attempts", &self.max_attempts)
            .field("base_backoff_ms", &self.base_backoff_ms)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("concurrency", &self.concurrency)
            .field("retention_ms", &self.retention_ms)
            .finish()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet; another attempt will be made.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Every attempt failed; no more will be made.
    Failed,
}

/// One attempt at a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AttemptView {
    /// Its number, 1 for the first.
    pub attempt: u32,
    /// When it ended (Unix ms).
    pub at_ms: u64,
    /// The receiver's HTTP status, when it answered (2xx: delivered).
    pub status: Option<u16>,
    /// Why there was no answer (connection refused, timeout, ...), at most
    /// 200 characters.
    pub error: Option<String>,
    /// When the next attempt was scheduled (Unix ms); absent after the
    /// last one.
    pub next_at_ms: Option<u64>,
}

/// One delivery: one event of a job to one URL, with its attempts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The delivery id, sent as `Drover-Delivery` on every attempt.
    pub id: String,
    /// The job.
    pub job: u64,
    /// The event (`job.done`, `job.failed`, `job.cancelled`).
    pub event: String,
    /// The receiver's URL.
    pub url: String,
    /// Pending, delivered or failed.
    pub state: DeliveryState,
    /// Whether an attempt is being made right now.
    pub sending: bool,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// When the next attempt is due (Unix ms), while pending.
    pub next_attempt_at_ms: Option<u64>,
    /// When it was delivered or given up (Unix ms).
    pub finished_at_ms: Option<u64>,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<AttemptView>,
}

/// The webhook engine: a cheap, clonable handle to the journal and the
/// delivery threads. The threads stop on [`Webhooks::close`] or when the
/// last handle drops.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    data_dir: PathBuf,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.shared.lock();
        f.debug_struct("Webhooks")
            .field("data_dir", &self.inner.data_dir)
            .field("pending", &state.core.pending())
            .field("stopping", &state.stopping)
            .finish()
    }
}

impl Webhooks {
    /// The deliveries' journal, for an online backup (`crate::backup`).
    pub fn backup_journal(&self) -> Arc<dyn crate::journal::Exportable> {
        Arc::new(self.inner.shared.journal.clone())
    }

    /// Opens the journal in `DATA_DIR/webhooks` (recovering pending
    /// deliveries with their attempts and due times) and starts
    /// `concurrency` delivery threads. Blocking: call it before the async
    /// runtime, or from a blocking task.
    pub fn start(cfg: WebhookConfig) -> anyhow::Result<Webhooks> {
        cfg.validate()?;
        let dir = cfg.data_dir.join(JOURNAL_DIR);
        let mut journal_cfg = JournalConfig::new(&dir);
        journal_cfg.snapshot_every_facts = JOURNAL_SNAPSHOT_EVERY_FACTS;
        let on_durable: crate::journal::OnDurable = Box::new(|result| {
            if let Err(e) = result {
                error!(error = %e, "the webhook journal failed");
            }
        });
        let (journal, recovered) = Journal::<Deliveries>::open(journal_cfg, on_durable)
            .with_context(|| format!("opening the webhook journal in {}", dir.display()))?;
        let policy = RetryPolicy {
            max_attempts: cfg.max_attempts,
            base_backoff_ms: cfg.base_backoff_ms,
            max_backoff_ms: cfg.max_backoff_ms,
        };
        let core = Core::new(
            recovered.model,
            policy,
            cfg.retention_ms,
            crate::actors::now_ms(),
        );
        info!(
            pending = core.pending(),
            kept = core.model().iter().count(),
            "webhook deliveries recovered"
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                core,
                stopping: false,
            }),
            wake: Condvar::new(),
            journal,
            secret: cfg.secret,
            agent: worker::agent(cfg.timeout_ms),
        });
        let inner = Arc::new(Inner {
            shared: Arc::clone(&shared),
            threads: Mutex::new(Vec::with_capacity(cfg.concurrency)),
            data_dir: cfg.data_dir,
        });
        for slot in 0..cfg.concurrency {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("webhook-{slot}"))
                .spawn(move || worker::run(&shared))
                // Dropping `inner` stops the threads already started.
                .context("starting a webhook delivery thread")?;
            inner
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(handle);
        }
        Ok(Webhooks { inner })
    }

    /// Records a delivery of `body` for `event` of `job` to each URL, and
    /// returns once that is durable (blocking: from async code, call it in
    /// a blocking task). Idempotent per (job, event, URL): one already
    /// known, in any state, is left as it is, so the coordinator may enqueue
    /// again after a crash without a second delivery.
    ///
    /// Refuses the whole call, recording nothing, when the event name or a
    /// URL is invalid ([`check_url`]), there are more than [`MAX_URLS`]
    /// URLs, the body is over [`MAX_BODY_BYTES`], [`MAX_PENDING`]
    /// deliveries are pending, or the engine is stopped.
    pub fn enqueue(
        &self,
        job: u64,
        event: &str,
        urls: &[String],
        body: &serde_json::Value,
    ) -> anyhow::Result<()> {
        check_event(event).map_err(|e| anyhow!("webhook event `{}`: {e}", clip(event, 80)))?;
        if urls.len() > MAX_URLS {
            bail!(
                "job {job}: {} webhook URLs, more than the {MAX_URLS} allowed",
                urls.len()
            );
        }
        for url in urls {
            check_url(url).map_err(|e| anyhow!("webhook URL `{}`: {e}", clip(url, 200)))?;
        }
        let body = serde_json::to_string(body).context("encoding the webhook body")?;
        if body.len() > MAX_BODY_BYTES {
            bail!(
                "job {job}: the {event} webhook body is {} bytes, more than the {MAX_BODY_BYTES} \
                 allowed",
                body.len()
            );
        }
        let shared = &self.inner.shared;
        let seq = {
            let mut state = shared.lock();
            if state.stopping {
                bail!("webhook deliveries are stopped (closed, or their journal failed)");
            }
            let pending = state.core.pending();
            if pending + urls.len() > MAX_PENDING {
                bail!(
                    "job {job}: {pending} webhook deliveries are pending, the most allowed is \
                     {MAX_PENDING}: receivers are not answering; nothing was enqueued"
                );
            }
            let facts = state
                .core
                .enqueue(crate::actors::now_ms(), job, event, urls, &body);
            let fresh = !facts.is_empty();
            // With no new fact this is the last seq appended, which covers
            // an identical enqueue that another caller has not seen durable
            // yet.
            let seq = shared.record(&mut state, facts)?;
            if fresh {
                shared.wake.notify_all();
            }
            seq
        };
        shared
            .journal
            .wait_durable(seq, Duration::from_millis(ENQUEUE_DURABLE_TIMEOUT_MS))
            .context("making the webhook deliveries durable")?;
        Ok(())
    }

    /// Every delivery of a job (pruned ones aside), oldest first, with
    /// every attempt.
    pub fn deliveries(&self, job: u64) -> Vec<DeliveryView> {
        self.inner.shared.lock().core.views(job)
    }

    /// Pending deliveries of all jobs.
    pub fn pending(&self) -> usize {
        self.inner.shared.lock().core.pending()
    }

    /// Stops the delivery threads (of every clone) after their current
    /// attempts (each at most `timeout_ms`), and closes the journal. The
    /// journal's files are released when the last clone is gone.
    pub fn close(self) {
        self.inner.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        let shared = &self.shared;
        shared.lock().stopping = true;
        shared.wake.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in threads {
            if handle.join().is_err() {
                error!("a webhook delivery thread panicked");
            }
        }
        if let Err(e) = shared.journal.clone().close() {
            warn!(error = %e, "closing the webhook journal");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Checks a webhook URL: `http://` (see the module docs on HTTPS), a host,
/// at most [`MAX_URL_BYTES`] bytes, no `user:password@`, no whitespace or
/// control characters. The error says what is wrong, for a 400 answer.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!(
            "it is {} bytes long, more than the {MAX_URL_BYTES} allowed",
            url.len()
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or a control character".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("it is not an absolute URL: it must start with http://".into());
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {}
        _ => {
            return Err(format!(
                "the scheme `{}` is not supported: use http:// or https://",
                clip(scheme, 20)
            ))
        }
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "user:password@ is not allowed in a webhook URL (the signature authenticates \
             deliveries; put any token of the receiver's in the path or query)"
                .into(),
        );
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err("its IPv6 host has no closing `]`".into());
        };
        if !host
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
            || host.is_empty()
        {
            return Err(format!("`[{}]` is not an IPv6 address", clip(host, 60)));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("text follows its IPv6 host".into()),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    let v6 = authority.starts_with('[');
    if !v6
        && !host
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!(
            "its host `{}` has characters a host name cannot have",
            clip(host, 60)
        ));
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !ok {
            return Err(format!(
                "its port `{}` is not a number from 1 to 65535",
                clip(port, 20)
            ));
        }
    }
    Ok(())
}

/// Checks an event name: 1 to [`MAX_EVENT_BYTES`] of `a-z 0-9 . _ -` (it is
/// sent as a header value).
fn check_event(event: &str) -> Result<(), String> {
    if event.is_empty() || event.len() > MAX_EVENT_BYTES {
        return Err(format!(
            "an event name is 1 to {MAX_EVENT_BYTES} bytes, this one is {}",
            event.len()
        ));
    }
    if !event
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("an event name is made of a-z, 0-9, `.`, `_` and `-`".into());
    }
    Ok(())
}

/// The first `max_chars` characters of `text`.
fn clip(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

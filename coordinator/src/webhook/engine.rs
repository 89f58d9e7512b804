//! The sans-IO core of the delivery engine: the journaled model of every
//! delivery ([`Deliveries`], folded from [`Fact`]s) and the decisions on it
//! ([`Core`]): what to send next, when to wake, what an answer means, when
//! to retry, give up or prune. Time comes in as an argument and randomness
//! (the backoff's jitter) as a drawn number, so the tests drive it on a
//! virtual clock; the worker threads (`worker`) do the HTTP and the
//! journal writes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{clip, AttemptView, DeliveryState, DeliveryView};
use crate::journal::Model;

/// How often the worker prunes finished deliveries: hourly keeps the model
/// within an hour of the retention at the cost of one small fact.
pub const PRUNE_EVERY_MS: u64 = 3_600_000;

/// The longest error text kept per attempt: enough for "connection
/// refused" or a timeout with its address, short enough that a delivery's
/// history stays small in the journal and in API answers.
pub const MAX_ERROR_CHARS: usize = 200;

/// One change to the deliveries, as written to the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// A delivery was created. A second one with the same id is a no-op.
    Enqueued {
        /// [`delivery_id`] of (job, event, url).
        id: String,
        /// The job it is about.
        job: u64,
        /// The event name (`job.done`, ...).
        event: String,
        /// Where it goes.
        url: String,
        /// The exact body sent on every attempt (JSON text).
        body: String,
        /// When it was created (Unix ms); it is due from then.
        created_ms: u64,
    },
    /// One attempt ended.
    Attempted {
        /// The delivery.
        id: String,
        /// 1 for the first attempt.
        attempt: u32,
        /// When the attempt ended (Unix ms).
        at_ms: u64,
        /// The receiver's HTTP status, when it answered.
        status: Option<u16>,
        /// Why there was no answer (connection refused, timeout, ...).
        error: Option<String>,
        /// When the next attempt is due; `None` when there is none (a
        /// `Delivered` or `GaveUp` follows in the same append).
        next_at_ms: Option<u64>,
    },
    /// A 2xx answer was received.
    Delivered {
        /// The delivery.
        id: String,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// The last allowed attempt failed.
    GaveUp {
        /// The delivery.
        id: String,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// Finished deliveries that finished before `before_ms` are dropped.
    Pruned {
        /// The cut-off (Unix ms).
        before_ms: u64,
    },
}

impl Fact {
    /// The journal's kind tag.
    fn kind(&self) -> u8 {
        match self {
            Fact::Enqueued { .. } => 1,
            Fact::Attempted { .. } => 2,
            Fact::Delivered { .. } => 3,
            Fact::GaveUp { .. } => 4,
            Fact::Pruned { .. } => 5,
        }
    }
}

/// The delivery id of (job, event, url): the first 16 bytes of a SHA-256 of
/// the three, length-prefixed so no two triples share an input, as 32 hex
/// digits. Deterministic, so enqueueing the same triple again (after a
/// coordinator crash) finds the same delivery instead of sending twice.
pub fn delivery_id(job: u64, event: &str, url: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"drover-webhook-delivery-v1\0");
    h.update(job.to_be_bytes());
    h.update((event.len() as u64).to_be_bytes());
    h.update(event.as_bytes());
    h.update((url.len() as u64).to_be_bytes());
    h.update(url.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Waiting for its next attempt, due at `next_at_ms`.
    Pending {
        /// Unix ms.
        next_at_ms: u64,
    },
    /// A receiver answered 2xx.
    Delivered {
        /// Unix ms.
        at_ms: u64,
    },
    /// Every attempt failed.
    GaveUp {
        /// Unix ms.
        at_ms: u64,
    },
}

impl Stage {
    /// When it finished, if it has.
    fn finished_at_ms(self) -> Option<u64> {
        match self {
            Stage::Pending { .. } => None,
            Stage::Delivered { at_ms } | Stage::GaveUp { at_ms } => Some(at_ms),
        }
    }
}

/// One attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: u32,
    /// When it ended (Unix ms).
    pub at_ms: u64,
    /// The HTTP status, when the receiver answered.
    pub status: Option<u16>,
    /// Why there was no answer.
    pub error: Option<String>,
    /// When the next attempt is due, if any.
    pub next_at_ms: Option<u64>,
}

/// One delivery: one (job, event, url).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// [`delivery_id`] of (job, event, url).
    pub id: String,
    /// The job.
    pub job: u64,
    /// The event name.
    pub event: String,
    /// The receiver's URL.
    pub url: String,
    /// The exact body, while the delivery is pending; emptied when it
    /// finishes (nothing sends it again, and the model stays small).
    pub body: String,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// Every attempt so far, in order.
    pub attempts: Vec<Attempt>,
    /// Where it stands.
    pub stage: Stage,
}

/// Every delivery not yet pruned: the journal's model.
///
/// Stored as a plain list of deliveries; the index by job is rebuilt when
/// it is read back, so a snapshot holds each delivery once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<Delivery>", into = "Vec<Delivery>")]
pub struct Deliveries {
    by_id: BTreeMap<String, Delivery>,
    by_job: BTreeMap<u64, BTreeSet<String>>,
}

impl From<Vec<Delivery>> for Deliveries {
    fn from(list: Vec<Delivery>) -> Deliveries {
        let mut model = Deliveries::default();
        for d in list {
            model.insert(d);
        }
        model
    }
}

impl From<Deliveries> for Vec<Delivery> {
    fn from(model: Deliveries) -> Vec<Delivery> {
        model.by_id.into_values().collect()
    }
}

impl Deliveries {
    fn insert(&mut self, d: Delivery) {
        self.by_job.entry(d.job).or_default().insert(d.id.clone());
        self.by_id.insert(d.id.clone(), d);
    }

    /// The delivery with this id.
    pub fn get(&self, id: &str) -> Option<&Delivery> {
        self.by_id.get(id)
    }

    /// Every delivery, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.by_id.values()
    }

    /// The deliveries of one job, oldest first (then by event and URL).
    pub fn of_job(&self, job: u64) -> Vec<&Delivery> {
        let mut list: Vec<&Delivery> = self
            .by_job
            .get(&job)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .collect();
        list.sort_by(|a, b| {
            (a.created_ms, &a.event, &a.url).cmp(&(b.created_ms, &b.event, &b.url))
        });
        list
    }

    /// Folds one fact in. Facts about an unknown delivery (pruned, or never
    /// enqueued) and facts that would move a finished delivery are ignored,
    /// so a duplicate cannot change what was recorded.
    pub fn apply(&mut self, fact: &Fact) {
        match fact {
            Fact::Enqueued {
                id,
                job,
                event,
                url,
                body,
                created_ms,
            } => {
                if self.by_id.contains_key(id) {
                    return;
                }
                self.insert(Delivery {
                    id: id.clone(),
                    job: *job,
                    event: event.clone(),
                    url: url.clone(),
                    body: body.clone(),
                    created_ms: *created_ms,
                    attempts: Vec::new(),
                    stage: Stage::Pending {
                        next_at_ms: *created_ms,
                    },
                });
            }
            Fact::Attempted {
                id,
                attempt,
                at_ms,
                status,
                error,
                next_at_ms,
            } => {
                let Some(d) = self.pending_mut(id) else {
                    return;
                };
                d.attempts.push(Attempt {
                    attempt: *attempt,
                    at_ms: *at_ms,
                    status: *status,
                    error: error.clone(),
                    next_at_ms: *next_at_ms,
                });
                if let Some(next_at_ms) = *next_at_ms {
                    d.stage = Stage::Pending { next_at_ms };
                }
            }
            Fact::Delivered { id, at_ms } => {
                if let Some(d) = self.pending_mut(id) {
                    d.stage = Stage::Delivered { at_ms: *at_ms };
                    d.body = String::new();
                }
            }
            Fact::GaveUp { id, at_ms } => {
                if let Some(d) = self.pending_mut(id) {
                    d.stage = Stage::GaveUp { at_ms: *at_ms };
                    d.body = String::new();
                }
            }
            Fact::Pruned { before_ms } => {
                let gone: Vec<(u64, String)> = self
                    .by_id
                    .values()
                    .filter(|d| d.stage.finished_at_ms().is_some_and(|at| at < *before_ms))
                    .map(|d| (d.job, d.id.clone()))
                    .collect();
                for (job, id) in gone {
                    self.by_id.remove(&id);
                    if let Some(ids) = self.by_job.get_mut(&job) {
                        ids.remove(&id);
                        if ids.is_empty() {
                            self.by_job.remove(&job);
                        }
                    }
                }
            }
        }
    }

    fn pending_mut(&mut self, id: &str) -> Option<&mut Delivery> {
        self.by_id
            .get_mut(id)
            .filter(|d| matches!(d.stage, Stage::Pending { .. }))
    }

    /// Whether a `Pruned { before_ms }` would drop anything.
    fn prunable(&self, before_ms: u64) -> bool {
        self.by_id
            .values()
            .any(|d| d.stage.finished_at_ms().is_some_and(|at| at < before_ms))
    }
}

impl Model for Deliveries {
    type Fact = Fact;

    fn kind(fact: &Fact) -> u8 {
        fact.kind()
    }

    fn apply(&mut self, fact: &Fact) {
        Deliveries::apply(self, fact)
    }

    fn take_finished(&mut self) -> Vec<(u64, Vec<u8>, u64)> {
        // Finished deliveries stay in the model (their bodies dropped) so
        // that a job's history is one lookup; `Fact::Pruned` removes them
        // after the retention.
        Vec::new()
    }
}

/// The retry rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all before giving up (at least 1).
    pub max_attempts: u32,
    /// The first retry's delay ceiling, in ms (at least 1).
    pub base_backoff_ms: u64,
    /// No delay is longer than this, in ms (at least `base_backoff_ms`).
    pub max_backoff_ms: u64,
}

/// The delay before the retry that follows failed attempt number `attempt`
/// (1-based): exponential backoff with full jitter. The ceiling is
/// `base_ms * 2^(attempt-1)` capped at `max_ms`; the delay is uniform in
/// `[min(base_ms / 2, ceiling), ceiling]`, picked by `draw` (a uniformly
/// random u64). Full jitter spreads the retries of many deliveries that
/// failed together (a receiver that was down) instead of bringing them back
/// in one burst; the floor of half the base keeps a retry from following
/// its failure at once.
pub fn retry_delay_ms(attempt: u32, base_ms: u64, max_ms: u64, draw: u64) -> u64 {
    let doublings = attempt.saturating_sub(1);
    let ceiling = 1u64
        .checked_shl(doublings)
        .filter(|_| doublings < 64)
        .and_then(|factor| base_ms.checked_mul(factor))
        .map_or(max_ms, |delay| delay.min(max_ms));
    let floor = (base_ms / 2).min(ceiling);
    let span = ceiling - floor;
    match span.checked_add(1) {
        Some(n) => floor + draw % n,
        // The whole range of u64: every draw is in it.
        None => draw,
    }
}

/// What an attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The receiver answered with this HTTP status.
    Status(u16),
    /// No answer: connection refused, timeout, DNS, TLS, ...
    Error(String),
}

/// One HTTP request to make: everything the worker needs, so it never reads
/// the core back while sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// The delivery id (`Drover-Delivery`).
    pub id: String,
    /// The event name (`Drover-Event`).
    pub event: String,
    /// Where to POST.
    pub url: String,
    /// The exact body.
    pub body: String,
    /// The number of this attempt (1-based).
    pub attempt: u32,
}

/// The delivery engine's state and decisions, no I/O. Every method that
/// changes the deliveries returns the facts it applied, for the driver to
/// append to the journal in the same order.
#[derive(Debug)]
pub struct Core {
    model: Deliveries,
    policy: RetryPolicy,
    retention_ms: u64,
    /// Pending deliveries not being sent, by due time: (next_at_ms, id).
    due: BTreeSet<(u64, String)>,
    /// Deliveries being sent now (taken by [`Core::poll_send`], given back
    /// by [`Core::on_answer`]).
    in_flight: BTreeSet<String>,
    /// When the next prune is due (Unix ms).
    next_prune_ms: u64,
}

impl Core {
    /// The core over a recovered model. Pending deliveries keep their
    /// attempts and due times; nothing is in flight. The first prune is due
    /// at once.
    pub fn new(model: Deliveries, policy: RetryPolicy, retention_ms: u64, now_ms: u64) -> Core {
        let mut core = Core {
            model,
            policy,
            retention_ms,
            due: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            next_prune_ms: now_ms,
        };
        let ids: Vec<String> = core.model.by_id.keys().cloned().collect();
        for id in ids {
            core.index(&id);
        }
        core
    }

    /// The deliveries.
    pub fn model(&self) -> &Deliveries {
        &self.model
    }

    /// Pending deliveries, in flight or not.
    pub fn pending(&self) -> usize {
        self.due.len() + self.in_flight.len()
    }

    /// Creates the deliveries of (job, event, url) for each URL not already
    /// known (in any state): enqueueing is idempotent. The URLs and event
    /// must have been checked.
    pub fn enqueue(
        &mut self,
        now_ms: u64,
        job: u64,
        event: &str,
        urls: &[String],
        body: &str,
    ) -> Vec<Fact> {
        let mut facts = Vec::new();
        for url in urls {
            let id = delivery_id(job, event, url);
            // `apply` also ignores a known id; checking here keeps the
            // no-op out of the journal (and a URL repeated in one call).
            if self.model.by_id.contains_key(&id) {
                continue;
            }
            let fact = Fact::Enqueued {
                id,
                job,
                event: event.to_owned(),
                url: url.clone(),
                body: body.to_owned(),
                created_ms: now_ms,
            };
            self.apply(&fact);
            facts.push(fact);
        }
        facts
    }

    /// The most urgent delivery due at `now_ms`, now in flight; `None` when
    /// nothing is due.
    pub fn poll_send(&mut self, now_ms: u64) -> Option<Send> {
        let first = self.due.first()?;
        if first.0 > now_ms {
            return None;
        }
        let (_, id) = self.due.pop_first()?;
        let d = self.model.by_id.get(&id)?;
        let send = Send {
            id: id.clone(),
            event: d.event.clone(),
            url: d.url.clone(),
            body: d.body.clone(),
            attempt: d.attempts.len() as u32 + 1,
        };
        self.in_flight.insert(id);
        Some(send)
    }

    /// Records the answer to a send: delivered on 2xx; otherwise a retry
    /// after [`retry_delay_ms`] (jitter from `draw`), or giving up when
    /// that was the last allowed attempt.
    pub fn on_answer(&mut self, send: &Send, at_ms: u64, answer: Answer, draw: u64) -> Vec<Fact> {
        self.in_flight.remove(&send.id);
        let (status, error) = match answer {
            Answer::Status(code) => (Some(code), None),
            Answer::Error(text) => (None, Some(clip(&text, MAX_ERROR_CHARS).to_owned())),
        };
        let id = send.id.clone();
        let delivered = status.is_some_and(|code| (200..300).contains(&code));
        let last = send.attempt >= self.policy.max_attempts;
        let next_at_ms = (!delivered && !last).then(|| {
            let delay = retry_delay_ms(
                send.attempt,
                self.policy.base_backoff_ms,
                self.policy.max_backoff_ms,
                draw,
            );
            at_ms.saturating_add(delay)
        });
        let mut facts = vec![Fact::Attempted {
            id: id.clone(),
            attempt: send.attempt,
            at_ms,
            status,
            error,
            next_at_ms,
        }];
        if delivered {
            facts.push(Fact::Delivered { id, at_ms });
        } else if last {
            facts.push(Fact::GaveUp { id, at_ms });
        }
        for fact in &facts {
            self.apply(fact);
        }
        facts
    }

    /// A `Pruned` fact when the hourly prune is due and would drop a
    /// delivery finished more than the retention ago.
    pub fn poll_prune(&mut self, now_ms: u64) -> Option<Fact> {
        if now_ms < self.next_prune_ms {
            return None;
        }
        self.next_prune_ms = now_ms.saturating_add(PRUNE_EVERY_MS);
        let before_ms = now_ms.checked_sub(self.retention_ms)?;
        if !self.model.prunable(before_ms) {
            return None;
        }
        let fact = Fact::Pruned { before_ms };
        self.apply(&fact);
        Some(fact)
    }

    /// When the core next needs the worker (Unix ms): the first due
    /// delivery or the next prune.
    pub fn next_deadline_ms(&self) -> u64 {
        match self.due.first() {
            Some((at, _)) => (*at).min(self.next_prune_ms),
            None => self.next_prune_ms,
        }
    }

    /// The deliveries of a job, for the API.
    pub fn views(&self, job: u64) -> Vec<DeliveryView> {
        self.model
            .of_job(job)
            .into_iter()
            .map(|d| view(d, self.in_flight.contains(&d.id)))
            .collect()
    }

    /// Applies a fact and keeps the indexes in step.
    fn apply(&mut self, fact: &Fact) {
        let touched: Vec<String> = match fact {
            Fact::Enqueued { id, .. }
            | Fact::Attempted { id, .. }
            | Fact::Delivered { id, .. }
            | Fact::GaveUp { id, .. } => vec![id.clone()],
            // Only finished deliveries go, and those are in no index.
            Fact::Pruned { .. } => Vec::new(),
        };
        for id in &touched {
            if let Some(d) = self.model.get(id) {
                if let Stage::Pending { next_at_ms } = d.stage {
                    self.due.remove(&(next_at_ms, id.clone()));
                }
            }
        }
        self.model.apply(fact);
        for id in &touched {
            self.index(id);
        }
    }

    /// Puts a delivery in the due queue when it is pending and not in
    /// flight.
    fn index(&mut self, id: &str) {
        if let Some(Stage::Pending { next_at_ms }) = self.model.get(id).map(|d| d.stage) {
            if !self.in_flight.contains(id) {
                self.due.insert((next_at_ms, id.to_owned()));
            }
        }
    }
}

/// The API's view of a delivery.
fn view(d: &Delivery, in_flight: bool) -> DeliveryView {
    let (state, next_attempt_at_ms, finished_at_ms) = match d.stage {
        Stage::Pending { next_at_ms } => (DeliveryState::Pending, Some(next_at_ms), None),
        Stage::Delivered { at_ms } => (DeliveryState::Delivered, None, Some(at_ms)),
        Stage::GaveUp { at_ms } => (DeliveryState::Failed, None, Some(at_ms)),
    };
    DeliveryView {
        id: d.id.clone(),
        job: d.job,
        event: d.event.clone(),
        url: d.url.clone(),
        state,
        sending: in_flight,
        created_ms: d.created_ms,
        next_attempt_at_ms,
        finished_at_ms,
        attempts: d
            .attempts
            .iter()
            .map(|a| AttemptView {
                attempt: a.attempt,
                at_ms: a.at_ms,
                status: a.status,
                error: a.error.clone(),
                next_at_ms: a.next_at_ms,
            })
            .collect(),
    }
}

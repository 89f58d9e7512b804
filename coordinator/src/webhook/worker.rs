//! The driver: `concurrency` identical threads around one [`Core`] under a
//! mutex. Each takes the most urgent due delivery, sends it with ureq
//! outside the lock, and hands the answer back; with nothing due it sleeps
//! on a condvar until the core's next deadline or a wake-up (an enqueue,
//! shutdown). So a slow receiver holds only the thread sending to it.
//!
//! Facts the core returns are appended to the journal under the same lock
//! that applied them, so the log's order is the core's. Only `enqueue` waits
//! for durability; an attempt's facts lost in a crash mean that attempt is
//! made again (deliveries are at least once, and `Drover-Delivery` lets a
//! receiver drop the repeat).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, error, warn};

use super::engine::{Answer, Core, Deliveries, Fact, Send};
use super::sign::{sign, HEADER_DELIVERY, HEADER_EVENT, HEADER_SIGNATURE};
use crate::journal::Journal;

/// The `User-Agent` of deliveries, so a receiver's logs say who called.
const USER_AGENT: &str = concat!("Drover-Webhooks/", env!("CARGO_PKG_VERSION"));

/// What the worker threads and the handles share.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Signalled on enqueue and on shutdown.
    pub(crate) wake: Condvar,
    pub(crate) journal: Journal<Deliveries>,
    pub(crate) secret: Vec<u8>,
    pub(crate) agent: ureq::Agent,
}

/// The state under the lock.
pub(crate) struct State {
    pub(crate) core: Core,
    /// Set by shutdown, or when the journal failed (nothing could be
    /// recorded any more, so nothing more is sent).
    pub(crate) stopping: bool,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // The core is only changed through whole method calls that do not
        // panic halfway in practice; a poisoned lock still holds a usable
        // core, and refusing it would stop every delivery.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends facts the core has applied; on failure the worker stops
    /// (the journal refuses everything after its first failure).
    pub(crate) fn record(
        &self,
        state: &mut State,
        facts: Vec<Fact>,
    ) -> Result<u64, crate::journal::JournalError> {
        match self.journal.append(facts) {
            Ok(seq) => Ok(seq),
            Err(e) => {
                if !state.stopping {
                    error!(error = %e, "webhook journal failed; deliveries stop until restart");
                    state.stopping = true;
                    self.wake.notify_all();
                }
                Err(e)
            }
        }
    }
}

/// The agent every thread sends with.
pub(crate) fn agent(timeout_ms: u64) -> ureq::Agent {
    ureq::AgentBuilder::new()
        // The whole request: connect, send, and the answer's headers.
        .timeout(Duration::from_millis(timeout_ms))
        // A redirect is an answer like any other non-2xx (recorded and
        // retried): following it would re-send a signed body somewhere the
        // job did not name, and turn the POST into a GET.
        .redirects(0)
        .user_agent(USER_AGENT)
        .build()
}

/// One worker thread's loop.
pub(crate) fn run(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.stopping {
            return;
        }
        let now_ms = crate::actors::now_ms();
        if let Some(fact) = state.core.poll_prune(now_ms) {
            debug!(?fact, "pruning finished webhook deliveries");
            let _ = shared.record(&mut state, vec![fact]);
            continue;
        }
        if let Some(send) = state.core.poll_send(now_ms) {
            drop(state);
            let answer = deliver(&shared.agent, &shared.secret, &send);
            let at_ms = crate::actors::now_ms();
            state = shared.lock();
            log_answer(&send, &answer);
            let facts = state
                .core
                .on_answer(&send, at_ms, answer, rand::random::<u64>());
            crate::metrics::global().webhook_answered(
                facts
                    .iter()
                    .any(|f| matches!(f, super::engine::Fact::Delivered { .. })),
                facts
                    .iter()
                    .any(|f| matches!(f, super::engine::Fact::GaveUp { .. })),
            );
            let _ = shared.record(&mut state, facts);
            continue;
        }
        let wait_ms = state.core.next_deadline_ms().saturating_sub(now_ms).max(1);
        state = shared
            .wake
            .wait_timeout(state, Duration::from_millis(wait_ms))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// POSTs one attempt, signed now.
fn deliver(agent: &ureq::Agent, secret: &[u8], send: &Send) -> Answer {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let signature = sign(secret, t, send.body.as_bytes());
    let result = agent
        .post(&send.url)
        .set("Content-Type", "application/json")
        .set(HEADER_EVENT, &send.event)
        .set(HEADER_DELIVERY, &send.id)
        .set(HEADER_SIGNATURE, &signature)
        .send_bytes(send.body.as_bytes());
    match result {
        // The answer's body is not read: nothing in it matters, and a
        // receiver could make it arbitrarily long.
        Ok(response) => Answer::Status(response.status()),
        Err(ureq::Error::Status(code, _)) => Answer::Status(code),
        Err(ureq::Error::Transport(e)) => Answer::Error(e.to_string()),
    }
}

fn log_answer(send: &Send, answer: &Answer) {
    match answer {
        Answer::Status(code) if (200..300).contains(code) => debug!(
            delivery = %send.id, url = %send.url, attempt = send.attempt, status = code,
            "webhook delivered"
        ),
        Answer::Status(code) => warn!(
            delivery = %send.id, url = %send.url, attempt = send.attempt, status = code,
            "webhook attempt refused"
        ),
        Answer::Error(e) => warn!(
            delivery = %send.id, url = %send.url, attempt = send.attempt, error = %e,
            "webhook attempt failed"
        ),
    }
}

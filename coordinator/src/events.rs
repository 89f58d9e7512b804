//! The event stream: job and node changes, in order, for `GET /v1/events`
//! (Server-Sent Events), `drover watch` and anything else that would
//! otherwise poll.
//!
//! # Order and resumption
//! Events get ids `<incarnation>.<seq>`: `seq` counts from 1 in each run of
//! the coordinator. The last [`RING_EVENTS`] are kept in memory, so a
//! client that reconnects with `Last-Event-ID` gets every event after it.
//! When that is impossible (the coordinator restarted, or the client fell
//! further behind than the ring) it gets one `reset` event first: re-read
//! the state, then follow on.
//!
//! # Durability
//! The scheduler publishes a change only once its facts are durable (they
//! ride with the effects held for the journal), so no client ever sees a
//! change a crash takes back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Events kept for resumption.
pub const RING_EVENTS: usize = 16_384;

/// One event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiEvent {
    /// `<incarnation>.<seq>`.
    pub id: String,
    /// `job.submitted`, `job.started`, `job.progress`, `job.paused`,
    /// `job.resumed`, `job.priority`, `job.joining`, `job.done`,
    /// `job.failed`, `job.cancelled`, `job.retried`, `node.connected`,
    /// `node.disconnected`, `node.drained`, `node.undrained`,
    /// `node.quarantined`, `node.cleared`.
    pub kind: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The job, for job events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
    /// The job's project, for job events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The node, for node events (and a job's stored chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Details: the job's summary, or what changed.
    pub data: serde_json::Value,
}

/// An event before it has an id.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Kind.
    pub kind: &'static str,
    /// Job.
    pub job: Option<u64>,
    /// Project.
    pub project: Option<String>,
    /// Node.
    pub node: Option<String>,
    /// Details.
    pub data: serde_json::Value,
}

struct Ring {
    /// Seq of `events[0]`.
    first: u64,
    events: VecDeque<Arc<ApiEvent>>,
}

/// The bus: publish from the scheduler, read from any number of streams.
#[derive(Clone)]
pub struct EventBus {
    incarnation: u32,
    ring: Arc<Mutex<Ring>>,
    /// The last seq published, for waking readers.
    latest: tokio::sync::watch::Sender<u64>,
    capacity: usize,
}

/// Where a reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The last seq it has (0: none).
    pub seq: u64,
}

/// What a reader gets next.
#[derive(Debug)]
pub enum Batch {
    /// Events after its cursor, in order.
    Events(Vec<Arc<ApiEvent>>),
    /// It missed events that are gone: re-read the state; the cursor moved
    /// to the oldest kept event.
    Reset(Cursor),
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl EventBus {
    /// A bus for this run of the coordinator.
    pub fn new(incarnation: u32) -> EventBus {
        EventBus::with_capacity(incarnation, RING_EVENTS)
    }

    /// A bus keeping `capacity` events.
    pub fn with_capacity(incarnation: u32, capacity: usize) -> EventBus {
        EventBus {
            incarnation,
            ring: Arc::new(Mutex::new(Ring {
                first: 1,
                events: VecDeque::new(),
            })),
            latest: tokio::sync::watch::channel(0).0,
            capacity: capacity.max(1),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes events, in order.
    pub fn publish(&self, events: Vec<NewEvent>) {
        if events.is_empty() {
            return;
        }
        let at_ms = now_ms();
        let last = {
            let mut ring = self.ring();
            for e in events {
                let seq = ring.first + ring.events.len() as u64;
                ring.events.push_back(Arc::new(ApiEvent {
                    id: format!("{}.{seq}", self.incarnation),
                    kind: e.kind.to_string(),
                    at_ms,
                    job: e.job,
                    project: e.project,
                    node: e.node,
                    data: e.data,
                }));
                if ring.events.len() > self.capacity {
                    ring.events.pop_front();
                    ring.first += 1;
                }
            }
            ring.first + ring.events.len() as u64 - 1
        };
        self.latest.send_replace(last);
    }

    /// The cursor of a client resuming from `last_event_id` (`None`: a new
    /// client, which starts with what happens from now on). `Err` when the
    /// id is of another run or cannot be read: the client must reset.
    pub fn resume(&self, last_event_id: Option<&str>) -> Result<Cursor, Cursor> {
        let now = Cursor {
            seq: *self.latest.borrow(),
        };
        let Some(id) = last_event_id else {
            return Ok(now);
        };
        let parsed = id
            .split_once('.')
            .and_then(|(inc, seq)| Some((inc.parse::<u32>().ok()?, seq.parse::<u64>().ok()?)));
        match parsed {
            Some((inc, seq)) if inc == self.incarnation && seq <= now.seq => Ok(Cursor { seq }),
            _ => Err(Cursor { seq: 0 }),
        }
    }

    /// Events after `cursor`, at most `max`.
    pub fn read(&self, cursor: Cursor, max: usize) -> Batch {
        let ring = self.ring();
        // The client has everything up to `cursor.seq`; the next it needs
        // is `cursor.seq + 1`, which must still be kept.
        if cursor.seq + 1 < ring.first {
            return Batch::Reset(Cursor {
                seq: ring.first - 1,
            });
        }
        let from = (cursor.seq + 1 - ring.first) as usize;
        Batch::Events(ring.events.iter().skip(from).take(max).cloned().collect())
    }

    /// A receiver that changes whenever events are published.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// The id of the last event published.
    pub fn last_id(&self) -> String {
        format!("{}.{}", self.incarnation, *self.latest.borrow())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u64) -> NewEvent {
        NewEvent {
            kind: "job.progress",
            job: Some(n),
            project: None,
            node: None,
            data: serde_json::json!({ "n": n }),
        }
    }

    fn ids(b: Batch) -> Vec<String> {
        match b {
            Batch::Events(e) => e.iter().map(|e| e.id.clone()).collect(),
            Batch::Reset(c) => vec![format!("reset@{}", c.seq)],
        }
    }

    #[test]
    fn a_reader_resuming_from_any_kept_id_gets_every_later_event_once() {
        let bus = EventBus::with_capacity(3, 8);
        bus.publish((1..=5).map(ev).collect());
        let c = bus.resume(Some("3.2")).unwrap();
        assert_eq!(ids(bus.read(c, 100)), ["3.3", "3.4", "3.5"]);
        assert_eq!(ids(bus.read(c, 2)), ["3.3", "3.4"]);
        // A new client starts from now.
        let c = bus.resume(None).unwrap();
        assert!(ids(bus.read(c, 100)).is_empty());
        bus.publish(vec![ev(6)]);
        assert_eq!(ids(bus.read(c, 100)), ["3.6"]);
    }

    #[test]
    fn a_reader_that_fell_behind_the_ring_or_comes_from_another_run_resets() {
        let bus = EventBus::with_capacity(3, 4);
        bus.publish((1..=10).map(ev).collect());
        // Kept: 7..=10. Having 6, the next needed is 7: fine.
        let c = bus.resume(Some("3.6")).unwrap();
        assert_eq!(ids(bus.read(c, 100)), ["3.7", "3.8", "3.9", "3.10"]);
        // Having 5, event 6 is gone.
        let c = bus.resume(Some("3.5")).unwrap();
        assert_eq!(ids(bus.read(c, 100)), ["reset@6"]);
        assert!(bus.resume(Some("2.9")).is_err(), "another run");
        assert!(bus.resume(Some("3.11")).is_err(), "from the future");
        assert!(bus.resume(Some("garbage")).is_err());
    }

    #[tokio::test]
    async fn subscribers_wake_on_publish() {
        let bus = EventBus::new(1);
        let mut rx = bus.subscribe();
        let b2 = bus.clone();
        let t = tokio::spawn(async move {
            rx.changed().await.unwrap();
            *rx.borrow()
        });
        b2.publish(vec![ev(1), ev(2)]);
        assert_eq!(t.await.unwrap(), 2);
        assert_eq!(bus.last_id(), "1.2");
    }
}

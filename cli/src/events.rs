//! Following `GET /v1/events`, the coordinator's Server-Sent Events.
//!
//! Two halves, as elsewhere in Drover: [`SseParser`] turns lines into
//! frames and does no I/O (its tests feed it text), and [`EventStream`] is
//! the driver that reads a connection, reconnects with `Last-Event-ID`
//! after it drops, and hands out [`StreamItem`]s.
//!
//! # What a reader sees
//! [`StreamItem::Connected`] each time a connection opens (re-read any
//! state that matters then: changes before it are not in the stream),
//! every [`StreamItem::Event`] after it in order, and
//! [`StreamItem::Reset`] when the coordinator says events were missed (it
//! restarted, or this client fell too far behind). A connection that
//! drops or cannot be opened is an `Err` item, and the next call opens a
//! new one after a pause; an answer that will not change by retrying (a
//! 401, 403 or 404 problem) is an `Err` and then the end of the stream.

use std::io::{BufRead, Read};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{ApiError, Client};

/// First pause before reconnecting, unless the server's `retry:` field
/// says otherwise.
pub const RECONNECT_DELAY_MS: u64 = 1_000;
/// Bounds on a server's `retry:` field and on the pause as it grows after
/// failed attempts: never a busy loop against a sick coordinator, never so
/// long that a watcher sits on stale state.
pub const MIN_RECONNECT_DELAY_MS: u64 = 100;
/// See [`MIN_RECONNECT_DELAY_MS`].
pub const MAX_RECONNECT_DELAY_MS: u64 = 10_000;
/// Longest line the parser keeps (an event's JSON is a job summary, a few
/// hundred bytes): a stream that sends more without a newline is broken,
/// and memory must not grow with it.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One Server-Sent Events frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// Its `id:` field, if it had one.
    pub id: Option<String>,
    /// Its `event:` field (`message` when absent, per the SSE standard).
    pub event: String,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

/// Lines in, frames out; no I/O.
#[derive(Debug, Default)]
pub struct SseParser {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    /// The last `retry:` field, ms.
    pub retry_ms: Option<u64>,
}

impl SseParser {
    /// Takes one line (without its line ending); returns a frame when the
    /// line is the blank one that ends it. Comments (`:`) and frames
    /// without data are skipped, as the standard says.
    pub fn push_line(&mut self, line: &str) -> Option<SseFrame> {
        if line.is_empty() {
            let data = self.data.take();
            let id = self.id.take();
            let event = self.event.take();
            return data.map(|data| SseFrame {
                id,
                event: event.unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => self.id = Some(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry_ms = Some(ms);
                }
            }
            // Unknown fields are ignored (the standard's rule).
            _ => {}
        }
        None
    }
}

/// One event as the coordinator sends it (the `data` of a frame).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiEvent {
    /// `<incarnation>.<seq>`.
    pub id: String,
    /// `job.submitted`, `job.progress`, `job.done`, `node.drained`, ...
    pub kind: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The job, for job events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
    /// The job's project, for job events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The node, for node events (and a job's stored chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Details: the job's summary, or what changed.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl ApiEvent {
    /// Whether this event ends its job (`job.done`, `job.failed`,
    /// `job.cancelled`).
    pub fn ends_job(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "job.done" | "job.failed" | "job.cancelled"
        )
    }
}

/// What an [`EventStream`] hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A connection opened; `resumed` when it picked up after an earlier
    /// one with `Last-Event-ID` (no event in between is lost unless a
    /// [`StreamItem::Reset`] follows).
    Connected {
        /// Whether it resumed after an event already seen.
        resumed: bool,
    },
    /// A change. `raw` is the frame's data exactly as sent.
    Event {
        /// The event.
        event: ApiEvent,
        /// Its JSON as the API sent it.
        raw: String,
    },
    /// Events were missed: re-read the state, then follow on.
    Reset {
        /// The coordinator's explanation.
        detail: String,
        /// Its JSON as the API sent it.
        raw: String,
    },
}

/// Filters of a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Only this job's events.
    pub job: Option<u64>,
    /// Only these kinds; a prefix such as `job` takes every `job.*` kind.
    pub kinds: Vec<String>,
    /// Start after this event id instead of from now.
    pub last_event_id: Option<String>,
}

impl EventQuery {
    fn to_query(&self) -> String {
        let mut pairs = Vec::new();
        if let Some(j) = self.job {
            pairs.push(format!("job={j}"));
        }
        if !self.kinds.is_empty() {
            pairs.push(format!(
                "kinds={}",
                crate::client::percent(&self.kinds.join(","))
            ));
        }
        pairs.join("&")
    }
}

/// The item a frame stands for, or why it cannot be read.
pub fn item_of(frame: &SseFrame) -> anyhow::Result<StreamItem> {
    if frame.event == "reset" {
        #[derive(Deserialize)]
        struct Reset {
            #[serde(default)]
            detail: String,
        }
        let r: Reset = serde_json::from_str(&frame.data).unwrap_or(Reset {
            detail: "events were missed".into(),
        });
        return Ok(StreamItem::Reset {
            detail: r.detail,
            raw: frame.data.clone(),
        });
    }
    let event: ApiEvent = serde_json::from_str(&frame.data).map_err(|e| {
        anyhow::anyhow!(
            "event {} ({}) is not an event of this API: {e}",
            frame.id.as_deref().unwrap_or("without id"),
            frame.event
        )
    })?;
    Ok(StreamItem::Event {
        event,
        raw: frame.data.clone(),
    })
}

/// Whether an error is worth reconnecting for: the network, the
/// coordinator restarting (5xx) or too many streams (429) may pass; a
/// refusal of the key or an unknown job will not.
fn transient(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<ApiError>() {
        Some(a) => a.status == 429 || a.status >= 500,
        None => true,
    }
}

type Reader = std::io::BufReader<Box<dyn std::io::Read + Send + Sync + 'static>>;

/// The event stream as a blocking iterator (see the module doc).
pub struct EventStream {
    client: Client,
    query: String,
    /// The id of the last frame seen, sent as `Last-Event-ID` on
    /// reconnecting.
    last_id: Option<String>,
    reader: Option<Reader>,
    parser: SseParser,
    /// Failed attempts in a row since the last good connection.
    failures: u32,
    /// Pause before the next attempt, if the last one failed or dropped.
    pause_ms: Option<u64>,
    done: bool,
    line: Vec<u8>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("query", &self.query)
            .field("last_id", &self.last_id)
            .field("connected", &self.reader.is_some())
            .finish()
    }
}

impl EventStream {
    /// A stream of `client`'s coordinator; it connects on the first
    /// `next`.
    pub fn new(client: Client, query: EventQuery) -> EventStream {
        EventStream {
            client,
            query: query.to_query(),
            last_id: query.last_event_id,
            reader: None,
            parser: SseParser::default(),
            failures: 0,
            pause_ms: None,
            done: false,
            line: Vec::new(),
        }
    }

    /// The id of the last event seen (to resume from later).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    fn reconnect_delay_ms(&self) -> u64 {
        let base = self
            .parser
            .retry_ms
            .unwrap_or(RECONNECT_DELAY_MS)
            .clamp(MIN_RECONNECT_DELAY_MS, MAX_RECONNECT_DELAY_MS);
        // Doubling per failure in a row, from the first failure on.
        base.saturating_mul(1 << self.failures.saturating_sub(1).min(6))
            .min(MAX_RECONNECT_DELAY_MS)
    }

    fn connect(&mut self) -> anyhow::Result<StreamItem> {
        if let Some(ms) = self.pause_ms.take() {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let resp = self
            .client
            .open_events(&self.query, self.last_id.as_deref())?;
        self.reader = Some(std::io::BufReader::new(Box::new(resp.into_reader())));
        self.parser = SseParser {
            retry_ms: self.parser.retry_ms,
            ..SseParser::default()
        };
        self.failures = 0;
        Ok(StreamItem::Connected {
            resumed: self.last_id.is_some(),
        })
    }

    /// The next frame of the open connection; `Ok(None)` when it ended.
    fn read_frame(&mut self) -> anyhow::Result<Option<SseFrame>> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(None);
        };
        loop {
            self.line.clear();
            let n = (&mut *reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut self.line)?;
            if n == 0 {
                return Ok(None);
            }
            if self.line.last() != Some(&b'\n') {
                if self.line.len() > MAX_LINE_BYTES {
                    anyhow::bail!("an event stream line is longer than {MAX_LINE_BYTES} bytes");
                }
                // The connection ended mid-line: that frame is lost with
                // it, and the reconnect resumes before it.
                return Ok(None);
            }
            self.line.pop();
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let text = String::from_utf8_lossy(&self.line);
            if let Some(frame) = self.parser.push_line(&text) {
                if let Some(id) = &frame.id {
                    self.last_id = Some(id.clone());
                }
                return Ok(Some(frame));
            }
        }
    }

    fn dropped(&mut self, why: anyhow::Error) -> anyhow::Error {
        self.reader = None;
        self.failures = self.failures.saturating_add(1);
        self.pause_ms = Some(self.reconnect_delay_ms());
        why
    }
}

impl Iterator for EventStream {
    type Item = anyhow::Result<StreamItem>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.reader.is_none() {
            return Some(match self.connect() {
                Ok(item) => Ok(item),
                Err(e) if transient(&e) => Err(self.dropped(e)),
                Err(e) => {
                    self.done = true;
                    Err(e)
                }
            });
        }
        match self.read_frame() {
            Ok(Some(frame)) => Some(item_of(&frame)),
            Ok(None) => Some(Err(self.dropped(anyhow::anyhow!(
                "the event stream of {} ended; reconnecting",
                self.client.base()
            )))),
            Err(e) => Some(Err(self.dropped(e.context(format!(
                "reading the event stream of {}; reconnecting",
                self.client.base()
            ))))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` line by line; returns the frames as
    /// `id|event|data` strings.
    fn check(text: &str, want: &[&str]) {
        let mut p = SseParser::default();
        // `lines` ends each line at `\n` or `\r\n`, as the stream reader
        // does; a last line without one is still a line.
        let got: Vec<String> = text
            .lines()
            .filter_map(|l| p.push_line(l))
            .map(|f| format!("{}|{}|{}", f.id.unwrap_or_default(), f.event, f.data))
            .collect();
        assert_eq!(got, want, "{text:?}");
    }

    #[test]
    fn frames_are_cut_at_blank_lines_and_comments_are_skipped() {
        check(
            "retry: 2000\n: stream open\n\nid: 1.1\nevent: job.done\ndata: {}\n\n",
            &["1.1|job.done|{}"],
        );
        check(
            "id: 1.2\r\nevent: job.progress\r\ndata: {\"a\":1}\r\n\r\n",
            &["1.2|job.progress|{\"a\":1}"],
        );
        check("data: a\ndata: b\n\n", &["|message|a\nb"]);
        check("data:x\n\n", &["|message|x"]);
        check(": keepalive\n\n: keepalive\n\n", &[]);
        check("id: 1.3\nevent: job.done\n\n", &[]);
        check("event: job.done\ndata: {}\n", &[]);
        check("data: a\n\ndata: b\n\n", &["|message|a", "|message|b"]);
    }

    #[test]
    fn the_retry_field_sets_the_reconnect_pause() {
        let mut p = SseParser::default();
        assert_eq!(p.push_line("retry: 2000"), None);
        assert_eq!(p.retry_ms, Some(2000));
        p.push_line("retry: soon");
        assert_eq!(p.retry_ms, Some(2000));
    }

    #[test]
    fn frames_become_events_and_resets() {
        let frame = |event: &str, data: &str| SseFrame {
            id: Some("3.7".into()),
            event: event.into(),
            data: data.into(),
        };
        let raw = r#"{"id":"3.7","kind":"job.done","at_ms":5,"job":2,"project":"default","data":{"state":"done"}}"#;
        match item_of(&frame("job.done", raw)).unwrap() {
            StreamItem::Event { event, raw: r } => {
                assert_eq!(event.job, Some(2));
                assert!(event.ends_job());
                assert_eq!(r, raw);
            }
            other => panic!("{other:?}"),
        }
        let reset = r#"{"kind":"reset","detail":"events were missed"}"#;
        assert_eq!(
            item_of(&frame("reset", reset)).unwrap(),
            StreamItem::Reset {
                detail: "events were missed".into(),
                raw: reset.into()
            }
        );
        let err = item_of(&frame("job.done", "not json")).unwrap_err();
        assert!(err.to_string().contains("3.7"), "{err}");
    }

    #[test]
    fn filters_become_the_query() {
        let q = EventQuery {
            job: Some(4),
            kinds: vec!["job".into(), "node.drained".into()],
            last_event_id: None,
        };
        assert_eq!(q.to_query(), "job=4&kinds=job%2Cnode.drained");
        assert_eq!(EventQuery::default().to_query(), "");
    }

    #[test]
    fn refusals_end_the_stream_and_outages_do_not() {
        let api = |status| anyhow::Error::new(ApiError::from_body(status, "{}"));
        assert!(!transient(&api(401)));
        assert!(!transient(&api(403)));
        assert!(!transient(&api(404)));
        assert!(transient(&api(429)));
        assert!(transient(&api(503)));
        assert!(transient(&anyhow::anyhow!("connection refused")));
    }

    #[test]
    fn the_pause_doubles_per_failure_within_its_bounds() {
        let mut s = EventStream::new(Client::new("http://127.0.0.1:1"), EventQuery::default());
        let mut pauses = Vec::new();
        for f in 1..=6 {
            s.failures = f;
            pauses.push(s.reconnect_delay_ms());
        }
        assert_eq!(pauses, [1000, 2000, 4000, 8000, 10000, 10000]);
        s.parser.retry_ms = Some(5);
        s.failures = 1;
        assert_eq!(s.reconnect_delay_ms(), MIN_RECONNECT_DELAY_MS);
    }
}

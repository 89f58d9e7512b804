//! Following a job until it ends: a progress bar with ETA and one bar per
//! node on a terminal, a line per change otherwise (CI logs).
//!
//! The job is re-read when its event stream says something happened to it
//! (a chunk stored, a state change), not on a timer. Two timers remain: on
//! a terminal the view is re-read every [`TERMINAL_REFRESH_MS`] while a
//! chunk runs, because a chunk's progress between stored segments is not
//! an event and the bars should move; and while the stream is down the
//! view is polled every [`FALLBACK_POLL_MS`] until it is back (it
//! reconnects by itself with `Last-Event-ID`).
//!
//! The final screen shows each node's frames from the job's
//! `frames_by_node` (frames of its stored chunks), so every node keeps the
//! count it rendered.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drover_shared::api::{ChunkState, JobView};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::Client;
use crate::events::StreamItem;

/// How often a terminal display re-reads a job that has running chunks:
/// their progress between stored segments comes with no event.
pub const TERMINAL_REFRESH_MS: u64 = 1_000;
/// How often the job is polled while its event stream is down.
pub const FALLBACK_POLL_MS: u64 = 2_000;
/// At most one progress line per this many ms in CI logs (the last
/// change is always printed).
pub const LOG_LINE_INTERVAL_MS: u64 = 1_000;

/// Frames per node while a job runs: its stored chunks plus the progress
/// of running ones. Once the job has ended, its `frames_by_node` (stored
/// chunks only: an attempt that was cancelled or lost a speculative race
/// counts for nothing).
pub fn frames_by_node(job: &JobView) -> BTreeMap<String, u64> {
    if job.state.is_terminal() {
        return job.frames_by_node.clone();
    }
    let mut out = BTreeMap::new();
    for c in &job.chunks {
        if let (Some(n), ChunkState::Done | ChunkState::Assigned) = (&c.node, c.state) {
            *out.entry(n.clone()).or_insert(0) += c.frames_done;
        }
    }
    out
}

/// One progress line of the CI display.
pub fn progress_line(job: &JobView) -> String {
    let nodes = frames_by_node(job)
        .iter()
        .map(|(n, f)| format!("{n}={f}"))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "job {} {}: {}/{} frames [{nodes}]",
        job.id,
        crate::client::state_name(job.state),
        job.frames_done,
        job.frames_total
    )
}

/// What the stream's reader thread tells the display.
enum Signal {
    /// The stream is (again) open: re-read, changes before it are not in it.
    Connected,
    /// Something happened to the job, or events were missed.
    Changed,
    /// The stream broke; it is retrying.
    Broken,
}

/// Reads job `id`'s events on a thread of its own. The thread ends when
/// the stream refuses for good or the receiver is gone (at its next event
/// or keepalive).
fn follow(client: &Client, id: u64) -> mpsc::Receiver<Signal> {
    let (tx, rx) = mpsc::channel();
    let stream = client.events(Some(id), None);
    let spawned = std::thread::Builder::new()
        .name(format!("watch-{id}"))
        .spawn(move || {
            for item in stream {
                let signal = match item {
                    Ok(StreamItem::Connected { .. }) => Signal::Connected,
                    Ok(StreamItem::Event { .. } | StreamItem::Reset { .. }) => Signal::Changed,
                    Err(e) => {
                        tracing::debug!(job = id, "event stream: {e:#}");
                        Signal::Broken
                    }
                };
                if tx.send(signal).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        // Without the thread the channel is closed at once, which the
        // display takes as a stream that is down: it polls.
        tracing::warn!(job = id, "cannot follow the event stream, polling: {e}");
    }
    rx
}

/// The terminal display: a bar for the job and one per node.
struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    node_style: ProgressStyle,
    nodes: BTreeMap<String, ProgressBar>,
}

impl Bars {
    fn new(visible: bool) -> Bars {
        let multi = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(
            "{prefix:>10} [{bar:40.cyan/blue}] {pos:>5}/{len} frames  ETA {eta:>4}  {msg}",
        )
        .expect("static template")
        .progress_chars("=> ");
        let node_style = ProgressStyle::with_template("{prefix:>10} {pos:>5} frames {msg}")
            .expect("static template");
        let total = multi.add(ProgressBar::new(0).with_style(style).with_prefix("job"));
        Bars {
            multi,
            total,
            node_style,
            nodes: BTreeMap::new(),
        }
    }

    fn node(&mut self, name: &str) -> &ProgressBar {
        let (multi, style) = (&self.multi, &self.node_style);
        self.nodes.entry(name.to_string()).or_insert_with(|| {
            // A counter, not a bar: it has no length. (`finish` moves a bar
            // to its length, which for a length of 0 wiped every node's
            // count off the final screen.)
            multi.add(
                ProgressBar::no_length()
                    .with_style(style.clone())
                    .with_prefix(name.to_string()),
            )
        })
    }

    fn show(&mut self, job: &JobView) {
        self.total.set_length(job.frames_total);
        self.total.set_position(job.frames_done);
        let rate = match job.first_frame_at_ms {
            Some(t) => {
                let end = job
                    .finished_at_ms
                    .unwrap_or_else(drover_coordinator::actors::now_ms);
                job.frames_done as f64 * 1000.0 / (end.saturating_sub(t).max(1)) as f64
            }
            None => 0.0,
        };
        let paused = if job.paused { " (paused)" } else { "" };
        self.total.set_message(format!(
            "{rate:.1} frames/s  {}{paused}",
            crate::client::state_name(job.state)
        ));
        let per_node = frames_by_node(job);
        for (node, frames) in &per_node {
            let running = job
                .chunks
                .iter()
                .filter(|c| c.state == ChunkState::Assigned && c.node.as_deref() == Some(node))
                .map(|c| format!("{}-{}", c.start, c.end))
                .collect::<Vec<_>>();
            let bar = self.node(node);
            bar.set_position(*frames);
            bar.set_message(if running.is_empty() {
                String::new()
            } else {
                format!("holds frames {}", running.join(", "))
            });
        }
        if job.state.is_terminal() {
            // Nodes whose frames were all thrown away (a cancelled attempt,
            // a lost speculative race) end with what was kept: nothing.
            for (node, bar) in &self.nodes {
                if !per_node.contains_key(node) {
                    bar.set_position(0);
                    bar.set_message("");
                }
            }
            self.total.finish();
            for b in self.nodes.values() {
                b.finish();
            }
        }
    }
}

/// Follows job `id` until it reaches a terminal state; returns its last
/// view. `quiet` shows nothing (for callers that print their own report).
pub fn watch(client: &Client, id: u64, quiet: bool) -> anyhow::Result<JobView> {
    let tty = std::io::stderr().is_terminal() && !quiet;
    let log = !tty && !quiet;
    let mut bars = Bars::new(tty);
    let events = follow(client, id);
    let mut stream_up = false;
    let mut last_line: Option<(String, Instant)> = None;
    let mut pending_line: Option<String> = None;
    loop {
        let job = client.job(id)?;
        bars.show(&job);
        if log {
            let line = progress_line(&job);
            let due = match &last_line {
                None => true,
                Some((prev, at)) => {
                    *prev != line
                        && (job.state.is_terminal()
                            || at.elapsed() >= Duration::from_millis(LOG_LINE_INTERVAL_MS))
                }
            };
            if due {
                eprintln!("{line}");
                last_line = Some((line, Instant::now()));
                pending_line = None;
            } else if last_line.as_ref().is_some_and(|(prev, _)| *prev != line) {
                pending_line = Some(line);
            }
        }
        if job.state.is_terminal() {
            return Ok(job);
        }
        // Wait for a reason to read the job again.
        let running = job.chunks.iter().any(|c| c.state == ChunkState::Assigned);
        let started = Instant::now();
        loop {
            let mut wait_ms = u64::MAX;
            if !stream_up {
                wait_ms = wait_ms.min(FALLBACK_POLL_MS);
            }
            if tty && running {
                wait_ms = wait_ms.min(TERMINAL_REFRESH_MS);
            }
            if pending_line.is_some() {
                wait_ms = wait_ms.min(LOG_LINE_INTERVAL_MS);
            }
            let left = Duration::from_millis(wait_ms).saturating_sub(started.elapsed());
            match events.recv_timeout(left) {
                Ok(Signal::Connected) => {
                    stream_up = true;
                    break;
                }
                Ok(Signal::Changed) => {
                    stream_up = true;
                    break;
                }
                Ok(Signal::Broken) => stream_up = false,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The stream refused for good (the thread ended): poll.
                    stream_up = false;
                    std::thread::sleep(left.min(Duration::from_millis(FALLBACK_POLL_MS)));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_shared::api::{ChunkView, JobState};

    /// A chunk as the API sends it (fields the display does not read are
    /// left to their defaults).
    fn chunk(node: &str, start: u64, end: u64, state: ChunkState, done: u64) -> ChunkView {
        serde_json::from_value(serde_json::json!({
            "index": start, "start": start, "end": end, "state": state,
            "node": node, "frames_done": done, "attempts": 0, "last_error": null,
        }))
        .unwrap()
    }

    fn job(state: JobState, chunks: Vec<ChunkView>, by_node: &[(&str, u64)]) -> JobView {
        let v = serde_json::json!({
            "id": 7, "name": "t", "state": state, "frames_total": 16,
            "frames_done": chunks.iter().map(|c| c.frames_done).sum::<u64>(),
            "frames_by_node": by_node.iter().map(|(n, f)| (n.to_string(), *f)).collect::<BTreeMap<_, _>>(),
            "chunks": chunks, "error": null, "submitted_at_ms": 0,
            "first_frame_at_ms": null, "finished_at_ms": null,
            "output_path": null, "output_url": null,
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_running_job_counts_stored_and_running_frames_per_node() {
        let j = job(
            JobState::Running,
            vec![
                chunk("a", 1, 8, ChunkState::Done, 8),
                chunk("b", 9, 16, ChunkState::Assigned, 3),
            ],
            &[("a", 8)],
        );
        assert_eq!(progress_line(&j), "job 7 running: 11/16 frames [a=8 b=3]");
    }

    #[test]
    fn an_ended_job_keeps_each_nodes_stored_frames() {
        // A done job's view: every chunk stored, frames_by_node from them.
        let j = job(
            JobState::Done,
            vec![
                chunk("a", 1, 8, ChunkState::Done, 8),
                chunk("b", 9, 16, ChunkState::Done, 8),
            ],
            &[("a", 8), ("b", 8)],
        );
        assert_eq!(progress_line(&j), "job 7 done: 16/16 frames [a=8 b=8]");
        // A cancelled attempt's progress is not kept.
        let j = job(
            JobState::Cancelled,
            vec![
                chunk("a", 1, 8, ChunkState::Done, 8),
                chunk("b", 9, 16, ChunkState::Assigned, 5),
            ],
            &[("a", 8)],
        );
        assert_eq!(frames_by_node(&j), BTreeMap::from([("a".to_string(), 8)]));
    }

    #[test]
    fn the_final_screen_keeps_every_nodes_count() {
        let mut bars = Bars::new(false);
        let running = job(
            JobState::Running,
            vec![
                chunk("a", 1, 8, ChunkState::Done, 8),
                chunk("b", 9, 16, ChunkState::Assigned, 4),
            ],
            &[("a", 8)],
        );
        bars.show(&running);
        let done = job(
            JobState::Done,
            vec![
                chunk("a", 1, 8, ChunkState::Done, 8),
                chunk("b", 9, 16, ChunkState::Done, 8),
            ],
            &[("a", 8), ("b", 8)],
        );
        bars.show(&done);
        let shown: Vec<(String, u64, bool)> = bars
            .nodes
            .iter()
            .map(|(n, b)| (n.clone(), b.position(), b.is_finished()))
            .collect();
        assert_eq!(
            shown,
            [("a".to_string(), 8, true), ("b".to_string(), 8, true)]
        );
        assert_eq!(bars.total.position(), 16);
    }
}

//! Following a job until it ends: a progress bar with ETA and one bar per
//! node on a terminal, one line per second otherwise (CI logs).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use drover_shared::api::{ChunkState, JobView};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::Client;

/// How often the client re-reads the job. Work reaches nodes by push; this
/// only paces the display.
const POLL_INTERVAL_MS: u64 = 100;

/// Frames per node: done chunks plus the progress of running ones.
pub fn frames_by_node(job: &JobView) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in &job.chunks {
        if let (Some(n), ChunkState::Done | ChunkState::Assigned) = (&c.node, c.state) {
            *out.entry(n.clone()).or_insert(0) += c.frames_done;
        }
    }
    out
}

/// Follows job `id` until it reaches a terminal state; returns its last view.
pub fn watch(client: &Client, id: u64, quiet: bool) -> anyhow::Result<JobView> {
    let tty = std::io::stderr().is_terminal() && !quiet;
    let multi = MultiProgress::with_draw_target(if tty {
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
    let total_bar = multi.add(ProgressBar::new(0).with_style(style).with_prefix("job"));
    let mut node_bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut last_line = Instant::now() - Duration::from_secs(10);
    loop {
        let job = client.job(id)?;
        total_bar.set_length(job.frames_total);
        total_bar.set_position(job.frames_done);
        let rate = match job.first_frame_at_ms {
            Some(t) => {
                let end = job
                    .finished_at_ms
                    .unwrap_or_else(drover_coordinator::actors::now_ms);
                job.frames_done as f64 * 1000.0 / (end.saturating_sub(t).max(1)) as f64
            }
            None => 0.0,
        };
        total_bar.set_message(format!("{:.1} frames/s  {:?}", rate, job.state).to_lowercase());
        let per_node = frames_by_node(&job);
        for (node, frames) in &per_node {
            let bar = node_bars.entry(node.clone()).or_insert_with(|| {
                multi.add(
                    ProgressBar::new(0)
                        .with_style(node_style.clone())
                        .with_prefix(node.clone()),
                )
            });
            bar.set_position(*frames);
            let running = job
                .chunks
                .iter()
                .filter(|c| c.state == ChunkState::Assigned && c.node.as_deref() == Some(node))
                .map(|c| format!("{}-{}", c.start, c.end))
                .collect::<Vec<_>>();
            bar.set_message(if running.is_empty() {
                String::new()
            } else {
                format!("holds frames {}", running.join(", "))
            });
        }
        if !tty
            && !quiet
            && (last_line.elapsed() >= Duration::from_secs(1) || job.state.is_terminal())
        {
            last_line = Instant::now();
            let nodes = per_node
                .iter()
                .map(|(n, f)| format!("{n}={f}"))
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!(
                "job {id} {:?}: {}/{} frames [{nodes}]",
                job.state, job.frames_done, job.frames_total
            );
        }
        if job.state.is_terminal() {
            total_bar.finish();
            for b in node_bars.values() {
                b.finish();
            }
            return Ok(job);
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

//! The write-ahead journal (`drover_coordinator::wal`) on real sled on disk:
//! durable throughput with group commit against one fsync per fact, side by
//! side in one run; recovery time for a journal of a million frame records,
//! with the default snapshot policy and with no snapshot at all (the whole
//! log replayed); bytes on disk per million frames.
//!
//! The model is shaped like the scheduler's: jobs with a frame count and
//! their stored segments (chunk id, frame range, epoch, a 64-hex-character
//! hash), finished jobs archived. One `FramesDone` fact per frame, one fact
//! per append (as the scheduler actor appends one event's facts), appended
//! as fast as one thread can while the writer makes them durable.
//!
//! Figures are printed, never asserted; they are recorded in
//! `bench/RESULTS.md`. Recovery is timed from `Journal::open` to ready, in
//! this process, with the files in the page cache (dropping it needs root):
//! the figure is the CPU cost of replay, not the disk's read speed. Bytes on
//! disk are `du` of the journal's directory after it is closed: the log
//! after the last snapshot, the snapshot, the archive (every finished job's
//! record with its segments, kept for the retention period, printed apart)
//! and whatever sled has not reclaimed yet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use drover_bench::WorkDir;
use drover_coordinator::journal::{Journal, JournalConfig, Model, Recovered, Seq, Sync};
use serde::{Deserialize, Serialize};

/// Frames per job in every run (1,000 jobs make a million frames).
const FRAMES_PER_JOB: u64 = 1_000;
/// Jobs running at once: their frames interleave, as on a busy farm.
const JOBS_AT_ONCE: u64 = 100;
/// The longest a run may wait for its last fact to be durable.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Distinct hash strings the facts cycle through: computing a BLAKE3 per
/// fact would measure the producer, not the journal.
const HASHES: usize = 1_024;

/// Measures the journal's durable throughput and its recovery time.
#[derive(Debug, Parser)]
#[command(
    name = "journal",
    after_help = "Example:\n  cargo build --release -p drover-bench --bin journal\n  target/release/journal"
)]
struct Args {
    /// Frames written with group commit for the throughput figure.
    #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1_000..=10_000_000))]
    group_frames: u64,
    /// Frames written with one fsync per fact (slow: a few milliseconds
    /// each).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    per_fact_frames: u64,
    /// Frame records in the journals whose recovery is timed.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    recovery_frames: u64,
    /// Keep the working directory and print its path.
    #[arg(long)]
    keep: bool,
}

/// A fact shaped like the scheduler's.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Fact {
    Submitted {
        job: u64,
        frames: u64,
    },
    FramesDone {
        job: u64,
        chunk: u32,
        start: u64,
        end: u64,
        epoch: u64,
        hash: String,
    },
    Finished {
        job: u64,
        at_ms: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Segment {
    chunk: u32,
    start: u64,
    end: u64,
    epoch: u64,
    hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    frames: u64,
    frames_done: u64,
    segments: Vec<Segment>,
    finished_at_ms: Option<u64>,
}

/// Jobs by id, with their stored segments; finished jobs leave for the
/// archive.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Farm {
    jobs: BTreeMap<u64, Job>,
    #[serde(skip)]
    finished: Vec<u64>,
}

impl Model for Farm {
    type Fact = Fact;

    fn kind(fact: &Fact) -> u8 {
        match fact {
            Fact::Submitted { .. } => 1,
            Fact::FramesDone { .. } => 2,
            Fact::Finished { .. } => 3,
        }
    }

    fn apply(&mut self, fact: &Fact) {
        match fact {
            Fact::Submitted { job, frames } => {
                self.jobs.insert(
                    *job,
                    Job {
                        frames: *frames,
                        frames_done: 0,
                        segments: Vec::new(),
                        finished_at_ms: None,
                    },
                );
            }
            Fact::FramesDone {
                job,
                chunk,
                start,
                end,
                epoch,
                hash,
            } => {
                if let Some(j) = self.jobs.get_mut(job) {
                    j.frames_done += end - start;
                    j.segments.push(Segment {
                        chunk: *chunk,
                        start: *start,
                        end: *end,
                        epoch: *epoch,
                        hash: hash.clone(),
                    });
                }
            }
            Fact::Finished { job, at_ms } => {
                if let Some(j) = self.jobs.get_mut(job) {
                    j.finished_at_ms = Some(*at_ms);
                    self.finished.push(*job);
                }
            }
        }
    }

    fn take_finished(&mut self) -> Vec<(u64, Vec<u8>, u64)> {
        let mut out = Vec::new();
        for id in std::mem::take(&mut self.finished) {
            if let Some(job) = self.jobs.remove(&id) {
                let bytes = serde_json::to_vec(&job).expect("a job encodes");
                out.push((id, bytes, job.finished_at_ms.unwrap_or(0)));
            }
        }
        out
    }
}

/// The facts of `frames` frames: jobs of [`FRAMES_PER_JOB`] frames,
/// [`JOBS_AT_ONCE`] at a time, their frames interleaved; each job is
/// submitted first and finished after its last frame. Yields one fact at a
/// time, so a million facts are never all in memory.
fn workload(frames: u64, hashes: &[String]) -> impl Iterator<Item = Fact> + '_ {
    let jobs = frames.div_ceil(FRAMES_PER_JOB);
    (0..jobs.div_ceil(JOBS_AT_ONCE)).flat_map(move |wave| {
        let first = wave * JOBS_AT_ONCE;
        let ids = first..(first + JOBS_AT_ONCE).min(jobs);
        let submits = ids.clone().map(|job| Fact::Submitted {
            job,
            frames: FRAMES_PER_JOB,
        });
        let frames = (0..FRAMES_PER_JOB).flat_map(move |frame| {
            ids.clone().map(move |job| Fact::FramesDone {
                job,
                chunk: frame as u32,
                start: frame,
                end: frame + 1,
                epoch: (7 << 32) | frame,
                hash: hashes[(job * FRAMES_PER_JOB + frame) as usize % HASHES].clone(),
            })
        });
        // Finished now, so the archive keeps them (retention is a week).
        let finishes = (first..(first + JOBS_AT_ONCE).min(jobs)).map(|job| Fact::Finished {
            job,
            at_ms: now_ms(),
        });
        submits.chain(frames).chain(finishes)
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one write run measured.
struct Written {
    facts: u64,
    elapsed: Duration,
    fsyncs: u64,
}

impl Written {
    fn facts_per_s(&self) -> f64 {
        self.facts as f64 / self.elapsed.as_secs_f64()
    }
}

/// Opens a journal in `dir` with `config`'s policy, counting fsyncs.
fn open(config: JournalConfig) -> anyhow::Result<(Journal<Farm>, Recovered<Farm>, Arc<AtomicU64>)> {
    let fsyncs = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&fsyncs);
    let (journal, recovered) = Journal::<Farm>::open(
        config,
        Box::new(move |r| {
            if r.is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }),
    )
    .context("opening the journal")?;
    Ok((journal, recovered, fsyncs))
}

/// Appends the workload of `frames` frames one fact per append, as fast as
/// this thread can, and times it until the last fact is durable.
fn write(config: JournalConfig, frames: u64, hashes: &[String]) -> anyhow::Result<Written> {
    let (journal, _, fsyncs) = open(config)?;
    let started = Instant::now();
    let mut last: Seq = 0;
    for fact in workload(frames, hashes) {
        last = journal.append(vec![fact]).context("append")?;
    }
    journal
        .wait_durable(last, DURABLE_TIMEOUT)
        .context("waiting for the last fact")?;
    let elapsed = started.elapsed();
    journal.close().context("closing the journal")?;
    // Read once the writer thread is joined: every callback has run.
    let fsyncs = fsyncs.load(Ordering::Relaxed);
    Ok(Written {
        facts: last,
        elapsed,
        fsyncs,
    })
}

/// Bytes the files under `dir` take on disk (as `du` counts them).
fn du(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            du(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let work = WorkDir {
        path: std::env::temp_dir().join(format!("drover-bench-journal-{}", std::process::id())),
        keep: args.keep,
    };
    std::fs::create_dir_all(&work.path)
        .with_context(|| format!("creating {}", work.path.display()))?;
    let hashes: Vec<String> = (0..HASHES as u64)
        .map(|i| blake3::hash(&i.to_le_bytes()).to_hex().to_string())
        .collect();

    // Durable throughput, side by side.
    let group = write(
        JournalConfig::new(work.path.join("group")),
        args.group_frames,
        &hashes,
    )?;
    let per_fact = write(
        JournalConfig {
            sync: Sync::PerFact,
            ..JournalConfig::new(work.path.join("per-fact"))
        },
        args.per_fact_frames,
        &hashes,
    )?;
    println!();
    println!("durable throughput (one FramesDone fact per append, one appending thread)");
    println!(
        "  {:<10} {:>10} {:>10} {:>14} {:>10} {:>14}",
        "sync", "facts", "seconds", "facts/s", "fsyncs", "facts/fsync"
    );
    for (name, w) in [("group", &group), ("per-fact", &per_fact)] {
        println!(
            "  {:<10} {:>10} {:>10.2} {:>14.0} {:>10} {:>14.1}",
            name,
            w.facts,
            w.elapsed.as_secs_f64(),
            w.facts_per_s(),
            w.fsyncs,
            w.facts as f64 / w.fsyncs.max(1) as f64
        );
    }
    println!(
        "  group / per-fact: {:.1}x",
        group.facts_per_s() / per_fact.facts_per_s()
    );

    // Recovery: the same million frames written twice through the normal
    // path, with the default snapshot policy and with none.
    println!();
    println!(
        "recovery of {} frame records across {} jobs ({} at once)",
        args.recovery_frames,
        args.recovery_frames.div_ceil(FRAMES_PER_JOB),
        JOBS_AT_ONCE
    );
    println!(
        "  {:<22} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "policy",
        "facts",
        "write f/s",
        "snapshot",
        "replayed",
        "open ms",
        "sled MiB",
        "du MiB",
        "archive MiB"
    );
    let policies: [(&str, PathBuf, u64); 2] = [
        (
            "snapshot every 200k",
            work.path.join("recovery-default"),
            JournalConfig::new("").snapshot_every_facts,
        ),
        ("no snapshot", work.path.join("recovery-none"), u64::MAX),
    ];
    let mut per_million = Vec::new();
    for (name, dir, every) in policies {
        let config = JournalConfig {
            snapshot_every_facts: every,
            ..JournalConfig::new(&dir)
        };
        let written = write(config.clone(), args.recovery_frames, &hashes)?;
        let started = Instant::now();
        let (journal, recovered, _) = open(config)?;
        let open_ms = started.elapsed().as_secs_f64() * 1e3;
        if recovered.last_seq != written.facts {
            bail!(
                "{name}: recovered {} facts of {}",
                recovered.last_seq,
                written.facts
            );
        }
        let stats = recovered.stats;
        let mut archive_bytes = 0;
        let mut after = None;
        loop {
            let keys = journal
                .archived_keys(after, 1_000)
                .context("listing the archive")?;
            let Some(&last) = keys.last() else { break };
            for key in keys {
                let entry = journal.archived(key).context("reading the archive")?;
                archive_bytes += entry.map_or(0, |bytes| bytes.len() as u64);
            }
            after = Some(last);
        }
        journal.close().context("closing the journal")?;
        let du_bytes = du(&dir)?;
        println!(
            "  {:<22} {:>10} {:>12.0} {:>10} {:>10} {:>10.0} {:>10.1} {:>10.1} {:>12.1}",
            name,
            written.facts,
            written.facts_per_s(),
            stats.snapshot_seq,
            stats.facts_replayed,
            open_ms,
            mib(stats.bytes_on_disk),
            mib(du_bytes),
            mib(archive_bytes),
        );
        per_million.push((name, du_bytes as f64 * 1e6 / args.recovery_frames as f64));
    }
    println!();
    for (name, bytes) in per_million {
        println!(
            "bytes on disk per million frames ({name}): {:.1} MiB",
            bytes / (1024.0 * 1024.0)
        );
    }
    Ok(())
}

//! A coordinator data dir with a long history: N jobs that have all ended,
//! written straight into the scheduler's journal (`<data>/wal`) with the
//! coordinator's own facts, before any coordinator starts on it.
//!
//! Each job gets the facts a real one leaves, one fact per append as the
//! scheduler actor appends them: `Accepted` (a validated spec, shader
//! source included), `Started`, then `Output` for a done job or `Ended` for
//! a failed or cancelled one, then `Discarded`. A done job is discarded at
//! once (its segments go when its output is durable); a failed or cancelled
//! one keeps its segments until the coordinator evicts it from memory,
//! which happens once more than `finished_job_retention` (10,000) finished
//! jobs are held. So the failed and cancelled jobs among the newest 10,000
//! are written without `Discarded`: exactly what a coordinator restarted
//! after that history holds in memory, while everything else is in the
//! journal's archive (the writer archives a job when its `Discarded` is
//! folded in, as in production).
//!
//! States and projects are spread by a hash of the job id so that every
//! filter has something to do: about 80 % done, 12 % cancelled, 8 %
//! failed; projects `feature` 50 %, `commercial` 30 %, `short` 14 %,
//! `previz` 5 %, and [`RARE_PROJECT`] exactly 1 % (every hundredth job).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use drover_coordinator::sched::{CoreConfig, Fact, Owner};
use drover_shared::api::JobState;
use drover_shared::spec::JobSpec;

/// The project of one job in a hundred: a filter that matches little.
pub const RARE_PROJECT: &str = "rare";
/// The other projects and their share of the jobs in percent (the rare
/// one takes its 1 % first).
const PROJECTS: [(&str, u64); 4] = [
    ("feature", 50),
    ("commercial", 30),
    ("short", 14),
    ("previz", 5),
];
/// Time between two submissions in the history, at most: 100,000 jobs
/// span about two and a half days.
const MAX_SPACING_MS: u64 = 2_000;
/// The whole history fits in this, well inside the archive's week of
/// retention (older entries would be deleted at the next snapshot).
const HISTORY_SPAN_MS: u64 = 5 * 24 * 3_600_000;
/// The longest the writer may take to make the last fact durable.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest sled's flusher may hold the database's lock after the
/// journal is closed (it lets go shortly after the last handle drops).
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// What was written.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct History {
    /// Jobs.
    pub jobs: u64,
    /// Done jobs.
    pub done: u64,
    /// Cancelled jobs.
    pub cancelled: u64,
    /// Failed jobs.
    pub failed: u64,
    /// Jobs of [`RARE_PROJECT`].
    pub rare: u64,
    /// Failed and cancelled jobs left in the hot state (memory after a
    /// restart); the rest are archived.
    pub in_memory: u64,
    /// Facts appended.
    pub facts: u64,
    /// Time to append them and make them durable, closing included.
    pub write_s: f64,
}

/// Splitmix64: a well-mixed hash of a job id, so states and projects do
/// not line up with each other.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The project of job `id`.
pub fn project_of(id: u64) -> &'static str {
    if id % 100 == 37 {
        return RARE_PROJECT;
    }
    let mut p = mix(id) % 99;
    for (name, share) in PROJECTS {
        if p < share {
            return name;
        }
        p -= share;
    }
    PROJECTS[0].0
}

/// The final state of job `id`.
pub fn state_of(id: u64) -> JobState {
    match mix(id ^ 0x5eed) % 100 {
        0..=79 => JobState::Done,
        80..=91 => JobState::Cancelled,
        _ => JobState::Failed,
    }
}

fn template(project: &str) -> anyhow::Result<JobSpec> {
    let text = serde_json::json!({
        "name": "template",
        "frames": { "start": 1, "end": 240 },
        "fps": 24,
        "resolution": { "width": 1920, "height": 1080 },
        "render": { "kind": "shader", "shader": "rings" },
        "project": project,
    })
    .to_string();
    let mut spec = JobSpec::from_json(&text).context("the history's job spec")?;
    spec.validate().context("the history's job spec")?;
    Ok(spec)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes a history of `jobs` ended jobs into the journal under
/// `data_dir` (created; it must not hold a journal yet), closes it, and
/// waits until the database's lock is free for the coordinator.
pub fn write(data_dir: &Path, jobs: u64) -> anyhow::Result<History> {
    let started = Instant::now();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let (journal, recovered) =
        drover_coordinator::journal::scheduler::open(data_dir, |c| c, Box::new(|_| {}))
            .context("opening the history's journal")?;
    anyhow::ensure!(
        recovered.last_seq == 0,
        "{} already holds a journal",
        data_dir.display()
    );
    let mut templates = Vec::new();
    for name in std::iter::once(RARE_PROJECT).chain(PROJECTS.iter().map(|p| p.0)) {
        templates.push((name, template(name)?));
    }
    let owners = ["pipeline", "alice", "bob"].map(|name| Owner {
        key: format!("key-{name}"),
        name: name.to_string(),
    });
    let hot_from = jobs.saturating_sub(CoreConfig::default().finished_job_retention as u64);
    let spacing_ms = (HISTORY_SPAN_MS / jobs.max(1)).clamp(1, MAX_SPACING_MS);
    // The newest job was submitted an hour ago.
    let first_ms = now_ms().saturating_sub(jobs * spacing_ms + 3_600_000);
    let mut out = History {
        jobs,
        ..History::default()
    };
    let mut last = 0;
    for id in 1..=jobs {
        let project = project_of(id);
        let mut spec = templates
            .iter()
            .find(|(name, _)| *name == project)
            .map(|(_, s)| s.clone())
            .context("every project has a template")?;
        spec.name = format!("{project}-shot-{id:06}");
        spec.frames.end = 24 * (1 + id % 10);
        let at_ms = first_ms + id * spacing_ms;
        let ended_ms = at_ms + 60_000 + mix(id) % 600_000;
        let state = state_of(id);
        let mut facts = vec![
            Fact::Accepted {
                job: id,
                spec: Box::new(spec),
                at_ms,
                owner: owners[(mix(id >> 3) % 3) as usize].clone(),
            },
            Fact::Started {
                job: id,
                at_ms: at_ms + 5_000,
            },
        ];
        let discarded = match state {
            JobState::Done => {
                out.done += 1;
                facts.push(Fact::Output {
                    job: id,
                    path: format!("/srv/drover/artifacts/jobs/{id}/output.mp4"),
                    at_ms: ended_ms,
                });
                true
            }
            JobState::Cancelled | JobState::Failed => {
                let error = if state == JobState::Failed {
                    out.failed += 1;
                    Some(format!(
                        "frame {} failed on every retry: the shader timed out",
                        1 + id % 24
                    ))
                } else {
                    out.cancelled += 1;
                    None
                };
                facts.push(Fact::Ended {
                    job: id,
                    state,
                    error,
                    at_ms: ended_ms,
                });
                id <= hot_from
            }
            _ => unreachable!("state_of gives ended states only"),
        };
        if discarded {
            facts.push(Fact::Discarded { job: id });
        } else {
            out.in_memory += 1;
        }
        if project == RARE_PROJECT {
            out.rare += 1;
        }
        for fact in facts {
            last = journal
                .append(vec![fact])
                .context("appending to the history")?;
            out.facts += 1;
        }
    }
    journal
        .wait_durable(last, DURABLE_TIMEOUT)
        .context("waiting for the history to be durable")?;
    journal.close().context("closing the history's journal")?;
    wait_unlocked(&data_dir.join("wal").join("db"))?;
    out.write_s = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Waits until no one holds sled's lock on `db` (an exclusive `flock`,
/// which sled's flusher thread keeps for a moment after the journal is
/// closed), so the coordinator's open cannot find it taken.
fn wait_unlocked(db: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + UNLOCK_TIMEOUT;
    loop {
        let file = std::fs::File::open(db).with_context(|| format!("opening {}", db.display()))?;
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => anyhow::bail!("{} is still locked: {e}", db.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_in_a_hundred_is_rare_and_states_are_spread() {
        let n = 100_000;
        let rare = (1..=n).filter(|&i| project_of(i) == RARE_PROJECT).count();
        assert_eq!(rare, 1_000);
        let done = (1..=n).filter(|&i| state_of(i) == JobState::Done).count();
        assert!((78_000..82_000).contains(&done), "{done}");
        for (name, share) in PROJECTS {
            let got = (1..=n).filter(|&i| project_of(i) == name).count() as u64;
            let want = share * 990;
            assert!(got.abs_diff(want) < want / 20, "{name}: {got} vs {want}");
        }
    }
}

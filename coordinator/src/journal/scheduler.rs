//! The scheduler's journal: the write-ahead log ([`crate::journal`]) over the
//! core's facts ([`Fact`]) folded into [`Recovery`], and the upgrade of a
//! journal written by the version before it (whole job records).
//!
//! The log lives in `<data dir>/wal`. A data dir of the previous version
//! has `<data dir>/journal` (sled, one JSON record per job): on the first
//! start its records are turned into facts, appended and made durable, and
//! only then is the old directory renamed to `journal.before-wal` (kept,
//! never deleted), so a crash during the upgrade redoes it.

use std::path::Path;

use tracing::{info, warn};

use super::{Journal, JournalConfig, JournalError, Model, OnDurable, Recovered};
use crate::sched::{Fact, JobRecord, Recovery};

/// The coordinator's journal.
pub type SchedulerJournal = Journal<Recovery>;

impl Model for Recovery {
    type Fact = Fact;

    fn kind(fact: &Fact) -> u8 {
        fact.kind()
    }

    fn apply(&mut self, fact: &Fact) {
        Recovery::apply(self, fact)
    }

    fn take_finished(&mut self) -> Vec<(u64, Vec<u8>, u64)> {
        Recovery::take_finished(self)
            .into_iter()
            .filter_map(|(id, r)| {
                let at = r.finished_at_ms.unwrap_or(0);
                serde_json::to_vec(&r).ok().map(|b| (id, b, at))
            })
            .collect()
    }
}

/// Reads an archived (finished, evicted) job record.
pub fn archived(journal: &SchedulerJournal, job: u64) -> Result<Option<JobRecord>, JournalError> {
    let Some(bytes) = journal.archived(job)? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&bytes).ok())
}

/// Opens the journal under `data_dir`, upgrading a previous version's.
pub fn open(
    data_dir: &Path,
    config: impl FnOnce(JournalConfig) -> JournalConfig,
    on_durable: OnDurable,
) -> anyhow::Result<(SchedulerJournal, Recovered<Recovery>)> {
    let cfg = config(JournalConfig::new(data_dir.join("wal")));
    let (journal, mut recovered) = SchedulerJournal::open(cfg, on_durable)?;
    let old = data_dir.join("journal");
    if old.join("db").exists() || old.join("conf").exists() {
        let records = legacy::load(&old)?;
        let facts: Vec<Fact> = records.iter().flat_map(legacy::facts_of).collect();
        info!(
            jobs = records.len(),
            facts = facts.len(),
            "upgrading the previous version's journal"
        );
        let seq = journal.append(facts.clone())?;
        journal.wait_durable(seq, std::time::Duration::from_secs(60))?;
        for f in &facts {
            recovered.model.apply(f);
        }
        recovered.model.take_finished();
        let kept = data_dir.join("journal.before-wal");
        std::fs::rename(&old, &kept)?;
        warn!(kept = %kept.display(), "previous journal converted; its directory is kept");
    }
    Ok((journal, recovered))
}

/// The record format of the two versions before the write-ahead log: one
/// sled tree of whole jobs. Read only, to upgrade a data dir in place.
mod legacy {
    use std::collections::BTreeMap;
    use std::path::Path;

    use anyhow::Context as _;
    use drover_shared::api::{ChunkKind, ChunkState, JobState};
    use drover_shared::spec::JobSpec;
    use serde::Deserialize;

    use crate::sched::{DoneSegment, Fact, JobRecord};

    /// Every job record of an old journal (either old format).
    pub fn load(dir: &Path) -> anyhow::Result<Vec<JobRecord>> {
        let db = sled::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        let jobs = db.open_tree("jobs")?;
        let mut out = Vec::new();
        for item in jobs.iter() {
            let (k, v) = item?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            let job: JobRecord = match serde_json::from_slice(&v) {
                Ok(job) => job,
                Err(source) => serde_json::from_slice::<Job>(&v)
                    .map(Job::into_record)
                    .map_err(|_| source)
                    .with_context(|| {
                        format!(
                            "{}: record of job {id} is neither format; move the directory aside to start without it",
                            dir.display()
                        )
                    })?,
            };
            out.push(job);
        }
        Ok(out)
    }

    /// The facts that rebuild a record.
    pub fn facts_of(r: &JobRecord) -> Vec<Fact> {
        let job = r.id;
        let mut f = vec![Fact::Accepted {
            job,
            spec: Box::new(r.spec.clone()),
            at_ms: r.submitted_at_ms,
            owner: Default::default(),
        }];
        if let Some(at_ms) = r.first_frame_at_ms {
            f.push(Fact::Started { job, at_ms });
        }
        for (start, d) in &r.done {
            f.push(Fact::Stored {
                job,
                chunk: d.chunk,
                epoch: 0,
                start: *start,
                end: d.end,
                node: d.node.clone(),
                kind: d.kind,
                segment: d.segment.clone(),
                hash: d.hash.clone(),
            });
        }
        // Chunk ids continue after the old ones.
        if r.next_chunk > 0 {
            let last = r.next_chunk - 1;
            f.push(Fact::Assigned {
                job,
                chunk: last,
                epoch: 0,
                start: r.spec.frames.start,
                end: r.spec.frames.start,
                node: String::new(),
                kind: ChunkKind::Normal,
            });
            f.push(Fact::Released { job, chunk: last });
        }
        f.extend(r.missing.iter().map(|&frame| Fact::Missing { job, frame }));
        f.push(Fact::Counters {
            job,
            stolen: r.frames_stolen,
            wasted: r.frames_wasted,
        });
        for node in &r.blocklisted_nodes {
            f.push(Fact::Blocklisted {
                job,
                node: node.clone(),
            });
        }
        let at_ms = r.finished_at_ms.unwrap_or(r.submitted_at_ms);
        match r.state {
            JobState::Muxing => f.push(Fact::Joining { job }),
            JobState::Done => {
                f.push(Fact::Output {
                    job,
                    path: r.output_path.clone().unwrap_or_default(),
                    at_ms,
                });
                // The old version deleted the segments of every ended job.
                f.push(Fact::Discarded { job });
            }
            JobState::Failed | JobState::Cancelled => {
                f.push(Fact::Ended {
                    job,
                    state: r.state,
                    error: r.error.clone(),
                    at_ms,
                });
                f.push(Fact::Discarded { job });
            }
            _ => {}
        }
        f
    }

    #[derive(Deserialize)]
    struct Chunk {
        index: u32,
        start: u64,
        end: u64,
        state: ChunkState,
        node: Option<String>,
        segment: Option<String>,
        segment_hash: Option<String>,
    }

    /// The format before the scheduler issue: a whole job with its fixed
    /// chunks.
    #[derive(Deserialize)]
    struct Job {
        id: u64,
        spec: JobSpec,
        state: JobState,
        chunks: Vec<Chunk>,
        submitted_at_ms: u64,
        first_frame_at_ms: Option<u64>,
        finished_at_ms: Option<u64>,
        error: Option<String>,
        output_path: Option<String>,
    }

    impl Job {
        /// Done chunks become stored segments; the rest of the frames wait.
        fn into_record(self) -> JobRecord {
            let mut done = BTreeMap::new();
            for c in &self.chunks {
                if let (ChunkState::Done, Some(segment)) = (c.state, &c.segment) {
                    done.insert(
                        c.start,
                        DoneSegment {
                            end: c.end,
                            chunk: c.index,
                            node: c.node.clone().unwrap_or_default(),
                            kind: ChunkKind::Normal,
                            segment: segment.clone(),
                            hash: c.segment_hash.clone().unwrap_or_default(),
                        },
                    );
                }
            }
            let mut r = JobRecord::new(self.id, self.spec, self.submitted_at_ms);
            r.state = self.state;
            r.first_frame_at_ms = self.first_frame_at_ms;
            r.finished_at_ms = self.finished_at_ms;
            r.error = self.error;
            r.output_path = self.output_path;
            r.done = done;
            r.next_chunk = self.chunks.len() as u32;
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{Core, CoreConfig};
    use drover_shared::api::JobState;

    fn reopen(dir: &Path) -> (SchedulerJournal, Recovered<Recovery>) {
        // sled's flusher thread lets go of the file lock shortly after the
        // last handle drops; wait for that condition, not a fixed time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open(dir, |c| c, Box::new(|_| {})) {
                Ok(j) => return j,
                Err(e)
                    if std::time::Instant::now() < deadline
                        && format!("{e:#}").contains("lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("opening the journal: {e:#}"),
            }
        }
    }

    #[test]
    fn a_journal_of_the_previous_version_is_upgraded_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("journal")).unwrap();
            let jobs = db.open_tree("jobs").unwrap();
            // A record exactly as the version before the scheduler wrote
            // it: 48 frames in two fixed chunks, the first stored.
            let old = r#"{"id":3,"spec":{"name":"old","frames":{"start":1,"end":48},"fps":24,
            "resolution":{"width":64,"height":64},"render":{"kind":"shader","source":"x"},
            "output":{"container":"mp4","codec":"h264","quality":18},"requirements":{"gpu":"any"}},
            "state":"running","chunks":[
            {"index":0,"start":1,"end":24,"state":"done","node":"n1","epoch":1,"attempts":1,"failures":0,
             "frames_done":24,"progress_at_ms":5,"started":true,"not_before_ms":0,"last_error":null,
             "segment":"/a/chunk-00000-e1.mp4","segment_hash":"ab"},
            {"index":1,"start":25,"end":48,"state":"assigned","node":"n1","epoch":1,"attempts":1,"failures":0,
             "frames_done":3,"progress_at_ms":5,"started":true,"not_before_ms":0,"last_error":null,
             "segment":null,"segment_hash":null}],
            "submitted_at_ms":1,"first_frame_at_ms":2,"finished_at_ms":null,"error":null,"output_path":null}"#;
            jobs.insert(3u64.to_be_bytes(), old.as_bytes()).unwrap();
            db.flush().unwrap();
        }
        let (j, rec) = reopen(dir.path());
        let r = &rec.model.jobs[&3];
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[&1].end, 24);
        assert_eq!(r.next_chunk, 2);
        assert!(dir.path().join("journal.before-wal").exists());
        // The core restores it with frames 25-48 waiting.
        let (core, _) = Core::restore(CoreConfig::default(), rec.model.clone(), 0);
        core.check_invariants();
        assert_eq!(core.job_view(3).unwrap().frames_done, 24);
        j.close().unwrap();
        // And the upgrade is not done twice.
        let (_j, again) = reopen(dir.path());
        assert_eq!(again.model, rec.model);
        assert_eq!(again.model.jobs[&3].state, JobState::Running);
    }
}

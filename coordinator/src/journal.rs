//! The sled journal: job records, keyed by id, and the coordinator's
//! incarnation counter. Only this module writes sled.
//!
//! Write path: the scheduler actor applies an event to the core, then for
//! every `Persist` command serializes the job's record ([`JobRecord`], JSON:
//! spec, state, stored segments; not the running chunks) and inserts it
//! under the job id's big-endian bytes. A submission is flushed (fsync) before
//! the API answers, so an acknowledged job survives a crash; progress records
//! ride sled's periodic flush, and losing one only means a chunk is rendered
//! again after a restart.

use std::path::Path;

use crate::sched::JobRecord;

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// sled failed.
    #[error("journal storage: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be encoded or decoded.
    #[error("journal record for job {job}: {source}")]
    Record {
        /// Job id.
        job: u64,
        /// The serde error.
        source: serde_json::Error,
    },
}

/// The journal.
#[derive(Clone)]
pub struct Journal {
    db: sled::Db,
    jobs: sled::Tree,
}

/// Key of the incarnation counter in the default tree.
const INCARNATION_KEY: &[u8] = b"incarnation";

impl Journal {
    /// Opens (or creates) the journal in `dir`.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        let db = sled::open(dir)?;
        let jobs = db.open_tree("jobs")?;
        Ok(Journal { db, jobs })
    }

    /// Counts this start and makes the count durable before returning it:
    /// assignment epochs carry it, so no epoch repeats across restarts.
    pub fn next_incarnation(&self) -> Result<u32, JournalError> {
        let old = self
            .db
            .get(INCARNATION_KEY)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0);
        let next = old.wrapping_add(1).max(1);
        self.db.insert(INCARNATION_KEY, &next.to_be_bytes())?;
        self.db.flush()?;
        Ok(next)
    }

    /// Writes a job's record.
    pub fn put(&self, job: &JobRecord) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(job).map_err(|source| JournalError::Record {
            job: job.id,
            source,
        })?;
        self.jobs.insert(job.id.to_be_bytes(), bytes)?;
        Ok(())
    }

    /// Removes a job's record (a submission withdrawn before it was
    /// acknowledged).
    pub fn remove(&self, job: u64) -> Result<(), JournalError> {
        self.jobs.remove(job.to_be_bytes())?;
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), JournalError> {
        self.db.flush()?;
        Ok(())
    }

    /// Every job record, oldest first.
    pub fn load(&self) -> Result<Vec<JobRecord>, JournalError> {
        let mut out = Vec::new();
        for item in self.jobs.iter() {
            let (k, v) = item?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            let job: JobRecord = match serde_json::from_slice(&v) {
                Ok(job) => job,
                // A journal written by the previous version (whole jobs with
                // fixed chunks) is read and converted, so an upgrade keeps
                // every job and every stored segment; anything else stops
                // the coordinator with the record named.
                Err(source) => serde_json::from_slice::<legacy::Job>(&v)
                    .map(legacy::Job::into_record)
                    .map_err(|_| JournalError::Record { job: id, source })?,
            };
            // Check after reading back what was checked before writing.
            assert_eq!(job.id, id, "journal key and record disagree");
            out.push(job);
        }
        Ok(out)
    }
}

/// The record format of the version before the scheduler issue: a whole
/// job with its fixed chunks. Read only, to upgrade a journal in place.
mod legacy {
    use std::collections::BTreeMap;

    use drover_shared::api::{ChunkKind, ChunkState, JobState};
    use drover_shared::spec::JobSpec;
    use serde::Deserialize;

    use crate::sched::{DoneSegment, JobRecord};

    #[derive(Deserialize)]
    pub struct Chunk {
        index: u32,
        start: u64,
        end: u64,
        state: ChunkState,
        node: Option<String>,
        segment: Option<String>,
        segment_hash: Option<String>,
    }

    #[derive(Deserialize)]
    pub struct Job {
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
        pub fn into_record(self) -> JobRecord {
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
            JobRecord {
                id: self.id,
                spec: self.spec,
                state: self.state,
                submitted_at_ms: self.submitted_at_ms,
                first_frame_at_ms: self.first_frame_at_ms,
                finished_at_ms: self.finished_at_ms,
                error: self.error,
                output_path: self.output_path,
                done,
                missing: Vec::new(),
                // Chunk ids of the old format were positions; new chunks
                // start after them so no id is ever reused.
                next_chunk: self.chunks.len() as u32,
                frames_stolen: 0,
                frames_wasted: 0,
                blocklisted_nodes: Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{Core, CoreConfig};
    use drover_shared::spec::JobSpec;

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = JobSpec::from_toml(
            "name = \"j\"\nframes = { start = 0, end = 49 }\nresolution = { width = 64, height = 64 }\n[render]\nkind = \"shader\"\nshader = \"rings\"\n",
        )
        .unwrap();
        spec.validate().unwrap();
        let mut core = Core::new(CoreConfig::default());
        let (id, _) = core.submit(7, spec);
        {
            let j = Journal::open(dir.path()).unwrap();
            assert_eq!(j.next_incarnation().unwrap(), 1);
            j.put(&core.record(id).unwrap()).unwrap();
            j.flush().unwrap();
        }
        // sled's flusher thread lets go of the file lock shortly after the
        // last handle drops; wait for that condition, not a fixed time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let j = loop {
            match Journal::open(dir.path()) {
                Ok(j) => break j,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("reopening the journal: {e}"),
            }
        };
        let jobs = j.load().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0], core.record(id).unwrap());
        assert_eq!(j.next_incarnation().unwrap(), 2, "each start counts");
    }

    #[test]
    fn a_journal_of_the_previous_version_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        // A record exactly as the previous version wrote it: 48 frames in
        // two fixed chunks, the first stored.
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
        j.jobs.insert(3u64.to_be_bytes(), old.as_bytes()).unwrap();
        let jobs = j.load().unwrap();
        assert_eq!(jobs.len(), 1);
        let r = &jobs[0];
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[&1].end, 24);
        assert_eq!(r.done[&1].segment, "/a/chunk-00000-e1.mp4");
        assert_eq!(r.next_chunk, 2);
        // The core restores it with frames 25-48 waiting.
        let (core, _) = Core::restore(CoreConfig::default(), jobs);
        core.check_invariants();
        assert_eq!(core.job_view(3).unwrap().frames_done, 24);
        // Garbage is still refused, naming the record.
        j.jobs
            .insert(4u64.to_be_bytes(), b"{not json".as_slice())
            .unwrap();
        let err = j.load().unwrap_err().to_string();
        assert!(err.contains("job 4"), "{err}");
    }
}

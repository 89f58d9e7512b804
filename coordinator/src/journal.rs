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
            let job: JobRecord = serde_json::from_slice(&v)
                .map_err(|source| JournalError::Record { job: id, source })?;
            // Check after reading back what was checked before writing.
            assert_eq!(job.id, id, "journal key and record disagree");
            out.push(job);
        }
        Ok(out)
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
}

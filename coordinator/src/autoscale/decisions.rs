//! The journal of scaling decisions: `DATA/pools/decisions.jsonl`.
//!
//! Decisions are history for people (the API, `drover pools decisions`),
//! not state the scheduler rebuilds: the scheduler's journal stays about
//! jobs and nodes, and a decision lost to a crash costs one line of
//! history, not a frame. So they live in a small file of their own, one
//! JSON document per line, each appended with its outcome once carried
//! out and `fdatasync`ed before the next decision. A torn last line (a crash mid-write) is
//! skipped when read back. The file is rewritten (temporary file, fsync,
//! rename) when it holds twice what is kept, so it stays bounded.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use drover_shared::api::ScaleDecisionView;

/// Decisions kept per pool (in memory, and in the file after a rewrite):
/// a day of a busy pool's scale-ups and removals, and a bounded answer.
pub const MAX_DECISIONS_PER_POOL: usize = 500;

/// The journal.
pub struct DecisionLog {
    path: PathBuf,
    file: std::fs::File,
    by_pool: BTreeMap<String, VecDeque<ScaleDecisionView>>,
    lines: usize,
    next_seq: u64,
}

impl DecisionLog {
    /// Opens (or creates) the journal in `dir`, reading back what it holds.
    pub fn open(dir: &Path) -> std::io::Result<DecisionLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("decisions.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut by_pool: BTreeMap<String, VecDeque<ScaleDecisionView>> = BTreeMap::new();
        let mut next_seq = 1;
        let mut lines = 0;
        for line in text.lines() {
            // A torn last line is skipped; the rest was fsynced whole.
            let Ok(d) = serde_json::from_str::<ScaleDecisionView>(line) else {
                continue;
            };
            lines += 1;
            next_seq = next_seq.max(d.seq + 1);
            let q = by_pool.entry(d.pool.clone()).or_default();
            q.push_back(d);
            if q.len() > MAX_DECISIONS_PER_POOL {
                q.pop_front();
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut log = DecisionLog {
            path,
            file,
            by_pool,
            lines,
            next_seq,
        };
        if !text.is_empty() && !text.ends_with('\n') {
            // Whatever follows a torn line starts on a line of its own.
            log.rewrite()?;
        }
        Ok(log)
    }

    /// Appends a decision (its `seq` is given here) and makes it durable.
    pub fn append(&mut self, mut d: ScaleDecisionView) -> std::io::Result<ScaleDecisionView> {
        d.seq = self.next_seq;
        self.next_seq += 1;
        let mut line = serde_json::to_vec(&d).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.lines += 1;
        let q = self.by_pool.entry(d.pool.clone()).or_default();
        q.push_back(d.clone());
        if q.len() > MAX_DECISIONS_PER_POOL {
            q.pop_front();
        }
        let kept: usize = self.by_pool.values().map(|q| q.len()).sum();
        if self.lines > 2 * kept.max(MAX_DECISIONS_PER_POOL) {
            self.rewrite()?;
        }
        Ok(d)
    }

    /// A pool's decisions, newest first, at most `limit`.
    pub fn list(&self, pool: &str, limit: usize) -> Vec<ScaleDecisionView> {
        self.by_pool
            .get(pool)
            .map(|q| q.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// Writes what is kept to a new file and puts it in place.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut all: Vec<&ScaleDecisionView> = self.by_pool.values().flatten().collect();
        all.sort_by_key(|d| d.seq);
        let mut f = std::fs::File::create(&tmp)?;
        for d in &all {
            let mut line = serde_json::to_vec(d).map_err(std::io::Error::other)?;
            line.push(b'\n');
            f.write_all(&line)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.lines = all.len();
        self.file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(pool: &str, reason: &str) -> ScaleDecisionView {
        ScaleDecisionView {
            seq: 0,
            at_ms: 1,
            pool: pool.into(),
            action: "scale_up".into(),
            node: None,
            count: Some(1),
            reason: reason.into(),
            outcome: "ok".into(),
            error: None,
            output: None,
        }
    }

    #[test]
    fn decisions_survive_a_reopen_newest_first_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DecisionLog::open(dir.path()).unwrap();
        log.append(decision("a", "one")).unwrap();
        log.append(decision("b", "other pool")).unwrap();
        log.append(decision("a", "two")).unwrap();
        drop(log);
        // A crash in the middle of a line.
        let path = dir.path().join("decisions.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"seq\":4,\"at_").unwrap();
        drop(f);
        let mut log = DecisionLog::open(dir.path()).unwrap();
        let a: Vec<(u64, String)> = log
            .list("a", 10)
            .into_iter()
            .map(|d| (d.seq, d.reason))
            .collect();
        assert_eq!(a, vec![(3, "two".to_string()), (1, "one".to_string())]);
        assert_eq!(log.append(decision("a", "three")).unwrap().seq, 4);
        drop(log);
        let log = DecisionLog::open(dir.path()).unwrap();
        assert_eq!(log.list("a", 1)[0].reason, "three");
        assert_eq!(log.list("b", 10).len(), 1);
    }

    #[test]
    fn the_history_is_bounded_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DecisionLog::open(dir.path()).unwrap();
        for i in 0..3 * MAX_DECISIONS_PER_POOL {
            log.append(decision("a", &i.to_string())).unwrap();
        }
        assert_eq!(log.list("a", usize::MAX).len(), MAX_DECISIONS_PER_POOL);
        let text = std::fs::read_to_string(dir.path().join("decisions.jsonl")).unwrap();
        assert!(text.lines().count() <= 2 * MAX_DECISIONS_PER_POOL);
        let newest = log.list("a", 1);
        assert_eq!(
            newest[0].reason,
            (3 * MAX_DECISIONS_PER_POOL - 1).to_string()
        );
    }
}

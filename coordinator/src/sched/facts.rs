//! Facts: what the core journals, one small record per change, and the
//! state they fold into ([`Recovery`]), which rebuilds the core after a
//! restart.
//!
//! The core pushes a fact at the moment its state changes (a job accepted,
//! a range assigned with its epoch, a segment stored, a job ended, ...);
//! the driver appends them to the write-ahead journal and holds back every
//! effect of the same event (an assignment to a node, a `Stored` answer, a
//! `201`) until they are durable. Nothing here is a whole-job rewrite: a
//! 100,000-frame job writes its spec once and then a few dozen bytes per
//! chunk.
//!
//! `Recovery::apply` is a pure function of the facts in order, so a
//! snapshot of a `Recovery` plus the facts after it equals all the facts
//! from the start; the journal relies on that to compact its log.

use std::collections::BTreeMap;

use drover_shared::api::{ChunkKind, JobState};
use drover_shared::spec::JobSpec;
use serde::{Deserialize, Serialize};

use super::record::{JobRecord, Owner, RunningChunk};
use super::state::DoneSegment;
use super::types::JobId;

/// One change of the scheduler's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// A job was accepted, with its validated spec.
    Accepted {
        /// Job.
        job: JobId,
        /// The spec, shader source included.
        spec: Box<JobSpec>,
        /// Submission time.
        at_ms: u64,
        /// The key that submitted it.
        #[serde(default)]
        owner: Owner,
    },
    /// Frames `start..=end` went to `node` as chunk `chunk` with `epoch`.
    Assigned {
        /// Job.
        job: JobId,
        /// Chunk id (never reused within the job).
        chunk: u32,
        /// Epoch of the attempt.
        epoch: u32,
        /// First frame.
        start: u64,
        /// Last frame.
        end: u64,
        /// Node name.
        node: String,
        /// How it came to be.
        kind: ChunkKind,
    },
    /// A running chunk now ends at `end` (a shrink answer or a node that
    /// stopped early); the frames after it wait again or went to a new
    /// chunk (its own `Assigned`).
    Shrunk {
        /// Job.
        job: JobId,
        /// Chunk.
        chunk: u32,
        /// New last frame.
        end: u64,
    },
    /// A chunk's attempt is over without a stored segment (failure, lost
    /// node, cancel, preemption, the losing copy): its frames that are not
    /// stored wait again.
    Released {
        /// Job.
        job: JobId,
        /// Chunk.
        chunk: u32,
    },
    /// Frames `start..=end` are done: their segment is in the store,
    /// verified, under its final name.
    Stored {
        /// Job.
        job: JobId,
        /// Chunk.
        chunk: u32,
        /// Epoch of the attempt that rendered it.
        epoch: u32,
        /// First frame.
        start: u64,
        /// Last frame.
        end: u64,
        /// Node that rendered it.
        node: String,
        /// How its chunk came to be.
        kind: ChunkKind,
        /// Stored path.
        segment: String,
        /// BLAKE3 of the segment, hex.
        hash: String,
    },
    /// A stored segment turned out to be gone (checked at start): its frames
    /// wait again.
    SegmentLost {
        /// Job.
        job: JobId,
        /// First frame of the segment.
        start: u64,
    },
    /// A frame failed on every retry and is left out.
    Missing {
        /// Job.
        job: JobId,
        /// Frame.
        frame: u64,
    },
    /// The first frame of the job started.
    Started {
        /// Job.
        job: JobId,
        /// When.
        at_ms: u64,
    },
    /// Every frame is stored: the segments are being joined.
    Joining {
        /// Job.
        job: JobId,
    },
    /// The output was written, synced and verified: the job is done.
    Output {
        /// Job.
        job: JobId,
        /// Output path.
        path: String,
        /// When.
        at_ms: u64,
    },
    /// The job failed or was cancelled.
    Ended {
        /// Job.
        job: JobId,
        /// `failed` or `cancelled`.
        state: JobState,
        /// Why.
        error: Option<String>,
        /// When.
        at_ms: u64,
    },
    /// A failed or cancelled job runs again for the frames it is missing.
    Retried {
        /// Job.
        job: JobId,
    },
    /// The job's segments are deleted (after its end was durable): it can
    /// leave the hot state for the archive.
    Discarded {
        /// Job.
        job: JobId,
    },
    /// Frames moved by stealing, or rendered and thrown away.
    Counters {
        /// Job.
        job: JobId,
        /// Frames stolen.
        stolen: u64,
        /// Frames wasted.
        wasted: u64,
    },
    /// A node failed the job too often and gets no more of its chunks.
    Blocklisted {
        /// Job.
        job: JobId,
        /// Node name.
        node: String,
    },
    /// An admin drained (or undrained) a node.
    Drained {
        /// Node name.
        node: String,
        /// Drained or returned.
        drained: bool,
    },
    /// A node was quarantined (`Some(why)`) or cleared (`None`).
    Quarantined {
        /// Node name.
        node: String,
        /// Why, or cleared.
        reason: Option<String>,
    },
    /// A user paused a job (no new chunks start) or resumed it.
    Paused {
        /// Job.
        job: JobId,
        /// Paused or resumed.
        paused: bool,
    },
    /// An admin set a node's tags (`Some`, replacing the node's own) or
    /// gave it back its own (`None`).
    Tagged {
        /// Node name.
        node: String,
        /// The tags.
        tags: Option<Vec<String>>,
    },
    /// A user changed a job's priority.
    Priority {
        /// Job.
        job: JobId,
        /// The new priority, 0..=100.
        priority: u8,
    },
}

impl Fact {
    /// A small tag per kind, stored in each journal record's header.
    pub fn kind(&self) -> u8 {
        match self {
            Fact::Accepted { .. } => 1,
            Fact::Assigned { .. } => 2,
            Fact::Shrunk { .. } => 3,
            Fact::Released { .. } => 4,
            Fact::Stored { .. } => 5,
            Fact::SegmentLost { .. } => 6,
            Fact::Missing { .. } => 7,
            Fact::Started { .. } => 8,
            Fact::Joining { .. } => 9,
            Fact::Output { .. } => 10,
            Fact::Ended { .. } => 11,
            Fact::Retried { .. } => 12,
            Fact::Discarded { .. } => 13,
            Fact::Counters { .. } => 14,
            Fact::Blocklisted { .. } => 15,
            Fact::Drained { .. } => 16,
            Fact::Quarantined { .. } => 17,
            Fact::Paused { .. } => 18,
            Fact::Priority { .. } => 19,
            Fact::Tagged { .. } => 20,
        }
    }

    /// The job a fact is about, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Fact::Accepted { job, .. }
            | Fact::Assigned { job, .. }
            | Fact::Shrunk { job, .. }
            | Fact::Released { job, .. }
            | Fact::Stored { job, .. }
            | Fact::SegmentLost { job, .. }
            | Fact::Missing { job, .. }
            | Fact::Started { job, .. }
            | Fact::Joining { job }
            | Fact::Output { job, .. }
            | Fact::Ended { job, .. }
            | Fact::Retried { job }
            | Fact::Discarded { job }
            | Fact::Counters { job, .. }
            | Fact::Blocklisted { job, .. }
            | Fact::Paused { job, .. }
            | Fact::Priority { job, .. } => Some(*job),
            Fact::Drained { .. } | Fact::Quarantined { .. } | Fact::Tagged { .. } => None,
        }
    }
}

/// What the journal keeps of a node between restarts: an admin's decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Drained by an admin: takes no new work until undrained.
    pub drained: bool,
    /// Quarantined, and why.
    pub quarantined: Option<String>,
    /// Tags an admin set, replacing the node's own.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// The durable state, folded from facts: every job not yet archived and
/// the admin state of nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// Jobs by id.
    pub jobs: BTreeMap<JobId, JobRecord>,
    /// Nodes by name (only those with something to remember).
    pub nodes: BTreeMap<String, NodeRecord>,
    /// The next job id: above every job ever accepted, archived ones
    /// included, so an id is never given twice.
    #[serde(default)]
    pub next_job: JobId,
    /// Jobs discarded since the last [`Recovery::take_finished`].
    #[serde(skip)]
    finished: Vec<JobId>,
}

impl Recovery {
    /// Folds one fact in. Facts about a job the state does not hold (it
    /// was archived) change nothing.
    pub fn apply(&mut self, fact: &Fact) {
        if let Fact::Accepted {
            job,
            spec,
            at_ms,
            owner,
        } = fact
        {
            let mut r = JobRecord::new(*job, (**spec).clone(), *at_ms);
            r.owner = owner.clone();
            self.next_job = self.next_job.max(*job + 1);
            self.jobs.insert(*job, r);
            return;
        }
        match fact {
            Fact::Drained { node, drained } => {
                let n = self.nodes.entry(node.clone()).or_default();
                n.drained = *drained;
                if *n == NodeRecord::default() {
                    self.nodes.remove(node);
                }
                return;
            }
            Fact::Quarantined { node, reason } => {
                let n = self.nodes.entry(node.clone()).or_default();
                n.quarantined = reason.clone();
                if *n == NodeRecord::default() {
                    self.nodes.remove(node);
                }
                return;
            }
            Fact::Tagged { node, tags } => {
                let n = self.nodes.entry(node.clone()).or_default();
                n.tags = tags.clone();
                if *n == NodeRecord::default() {
                    self.nodes.remove(node);
                }
                return;
            }
            _ => {}
        }
        let Some(job) = fact.job() else { return };
        let Some(r) = self.jobs.get_mut(&job) else {
            return;
        };
        match fact {
            Fact::Accepted { .. }
            | Fact::Drained { .. }
            | Fact::Quarantined { .. }
            | Fact::Tagged { .. } => {}
            Fact::Assigned {
                chunk,
                epoch,
                start,
                end,
                node,
                kind,
                ..
            } => {
                r.next_chunk = r.next_chunk.max(chunk + 1);
                r.running.insert(
                    *chunk,
                    RunningChunk {
                        start: *start,
                        end: *end,
                        epoch: *epoch,
                        node: node.clone(),
                        kind: *kind,
                    },
                );
            }
            Fact::Shrunk { chunk, end, .. } => {
                if let Some(c) = r.running.get_mut(chunk) {
                    c.end = (*end).max(c.start).min(c.end);
                }
            }
            Fact::Released { chunk, .. } => {
                r.running.remove(chunk);
            }
            Fact::Stored {
                chunk,
                start,
                end,
                node,
                kind,
                segment,
                hash,
                ..
            } => {
                r.running.remove(chunk);
                r.next_chunk = r.next_chunk.max(chunk + 1);
                r.done.insert(
                    *start,
                    DoneSegment {
                        end: *end,
                        chunk: *chunk,
                        node: node.clone(),
                        kind: *kind,
                        segment: segment.clone(),
                        hash: hash.clone(),
                    },
                );
            }
            Fact::SegmentLost { start, .. } => {
                r.done.remove(start);
            }
            Fact::Missing { frame, .. } => {
                if let Err(at) = r.missing.binary_search(frame) {
                    r.missing.insert(at, *frame);
                }
            }
            Fact::Started { at_ms, .. } => {
                r.first_frame_at_ms.get_or_insert(*at_ms);
                if r.state == JobState::Queued {
                    r.state = JobState::Running;
                }
            }
            Fact::Joining { .. } => {
                r.state = JobState::Muxing;
                r.running.clear();
            }
            Fact::Output { path, at_ms, .. } => {
                r.state = JobState::Done;
                r.output_path = Some(path.clone());
                r.finished_at_ms = Some(*at_ms);
                r.error = None;
            }
            Fact::Ended {
                state,
                error,
                at_ms,
                ..
            } => {
                r.state = *state;
                r.finished_at_ms = Some(*at_ms);
                if error.is_some() {
                    r.error = error.clone();
                }
                r.running.clear();
            }
            Fact::Retried { .. } => r.retry(),
            Fact::Discarded { .. } => {
                r.discarded = true;
                if r.state.is_terminal() {
                    self.finished.push(job);
                }
            }
            Fact::Counters { stolen, wasted, .. } => {
                r.frames_stolen += stolen;
                r.frames_wasted += wasted;
            }
            Fact::Blocklisted { node, .. } => {
                if !r.blocklisted_nodes.contains(node) {
                    r.blocklisted_nodes.push(node.clone());
                }
            }
            Fact::Paused { paused, .. } => r.paused = *paused,
            Fact::Priority { priority, .. } => r.spec.priority = *priority,
        }
    }

    /// Jobs that ended and whose segments are gone leave this state; the
    /// journal archives them (serialized records) for their retention.
    pub fn take_finished(&mut self) -> Vec<(JobId, JobRecord)> {
        let mut out = Vec::new();
        for id in std::mem::take(&mut self.finished) {
            if let Some(r) = self.jobs.remove(&id) {
                out.push((id, r));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(frames: u64) -> JobSpec {
        let mut s = JobSpec::from_toml(&format!(
            "name = \"j\"\nframes = {{ start = 1, end = {frames} }}\nresolution = {{ width = 64, height = 64 }}\n[render]\nkind = \"shader\"\nshader = \"rings\"\n"
        ))
        .unwrap();
        s.validate().unwrap();
        s
    }

    /// One fact of every kind, in an order a real job can produce.
    pub(crate) fn every_kind() -> Vec<Fact> {
        let stored = |chunk, start, end| Fact::Stored {
            job: 1,
            chunk,
            epoch: 2,
            start,
            end,
            node: "a".into(),
            kind: ChunkKind::Normal,
            segment: format!("/s/{chunk}.mp4"),
            hash: "ab".into(),
        };
        let assigned = |chunk, start, end| Fact::Assigned {
            job: 1,
            chunk,
            epoch: 2,
            start,
            end,
            node: "a".into(),
            kind: ChunkKind::Normal,
        };
        vec![
            Fact::Accepted {
                job: 1,
                spec: Box::new(spec(40)),
                at_ms: 5,
                owner: Owner {
                    key: "k1".into(),
                    name: "pipeline".into(),
                },
            },
            assigned(0, 1, 20),
            Fact::Started { job: 1, at_ms: 6 },
            assigned(1, 21, 40),
            Fact::Shrunk {
                job: 1,
                chunk: 0,
                end: 10,
            },
            assigned(2, 11, 20),
            stored(0, 1, 10),
            Fact::Released { job: 1, chunk: 2 },
            Fact::Counters {
                job: 1,
                stolen: 10,
                wasted: 3,
            },
            Fact::Blocklisted {
                job: 1,
                node: "b".into(),
            },
            Fact::Missing { job: 1, frame: 11 },
            stored(3, 12, 20),
            Fact::SegmentLost { job: 1, start: 12 },
            stored(4, 12, 20),
            stored(1, 21, 40),
            Fact::Joining { job: 1 },
            Fact::Ended {
                job: 1,
                state: JobState::Failed,
                error: Some("joining failed".into()),
                at_ms: 9,
            },
            Fact::Retried { job: 1 },
            Fact::Joining { job: 1 },
            Fact::Output {
                job: 1,
                path: "/out.mp4".into(),
                at_ms: 12,
            },
            Fact::Drained {
                node: "a".into(),
                drained: true,
            },
            Fact::Quarantined {
                node: "b".into(),
                reason: Some("failing".into()),
            },
            Fact::Paused {
                job: 1,
                paused: true,
            },
            Fact::Priority {
                job: 1,
                priority: 90,
            },
            Fact::Tagged {
                node: "a".into(),
                tags: Some(vec!["4k".into()]),
            },
            Fact::Discarded { job: 1 },
        ]
    }

    #[test]
    fn every_kind_of_fact_replays_into_the_state_it_describes() {
        let facts = every_kind();
        // Every kind is covered.
        let mut kinds: Vec<u8> = facts.iter().map(Fact::kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds, (1..=20).collect::<Vec<u8>>());
        let mut r = Recovery::default();
        for (i, f) in facts.iter().enumerate() {
            r.apply(f);
            // Spot checks along the way.
            let j = r.jobs.get(&1);
            match i {
                1 => assert_eq!(j.unwrap().running[&0].end, 20),
                4 => assert_eq!(j.unwrap().running[&0].end, 10),
                6 => {
                    let j = j.unwrap();
                    assert!(!j.running.contains_key(&0));
                    assert_eq!(j.done[&1].end, 10);
                }
                7 => assert!(!j.unwrap().running.contains_key(&2)),
                12 => assert!(!j.unwrap().done.contains_key(&12)),
                16 => {
                    let j = j.unwrap();
                    assert_eq!(j.state, JobState::Failed);
                    assert!(j.running.is_empty());
                }
                9 => assert_eq!(j.unwrap().blocklisted_nodes, vec!["b".to_string()]),
                17 => {
                    let j = j.unwrap();
                    assert_eq!(j.state, JobState::Running, "it had started before");
                    assert!(j.missing.is_empty(), "a retry runs missing frames again");
                    assert_eq!(j.error, None);
                }
                _ => {}
            }
        }
        let j = &r.jobs[&1];
        assert_eq!(j.state, JobState::Done);
        assert_eq!(j.output_path.as_deref(), Some("/out.mp4"));
        assert_eq!(j.done.len(), 3);
        assert_eq!(j.next_chunk, 5);
        assert_eq!((j.frames_stolen, j.frames_wasted), (10, 3));
        assert!(
            j.blocklisted_nodes.is_empty(),
            "a retry gives every node another chance"
        );
        assert!(r.nodes["a"].drained);
        assert_eq!(r.nodes["a"].tags, Some(vec!["4k".to_string()]));
        assert_eq!(r.nodes["b"].quarantined.as_deref(), Some("failing"));
        assert_eq!(j.owner.name, "pipeline");
        assert_eq!(r.next_job, 2, "ids are never reused, also once archived");
        assert!(j.paused);
        assert_eq!(j.spec.priority, 90);
        // Discarded after its end: it leaves for the archive.
        let out = r.take_finished();
        assert_eq!(out.len(), 1);
        assert!(out[0].1.discarded);
        assert!(r.jobs.is_empty());
        assert_eq!(r.next_job, 2, "the next id outlives the archived job");
        // Later facts about it change nothing.
        r.apply(&Fact::Released { job: 1, chunk: 0 });
        assert!(r.jobs.is_empty());
    }

    #[test]
    fn a_snapshot_plus_the_rest_equals_every_fact_replayed() {
        let facts = every_kind();
        let mut whole = Recovery::default();
        for f in &facts {
            whole.apply(f);
        }
        for cut in 0..=facts.len() {
            let mut head = Recovery::default();
            for f in &facts[..cut] {
                head.apply(f);
            }
            // Through serde, as the journal stores it.
            let snap = serde_json::to_vec(&head).unwrap();
            let mut r: Recovery = serde_json::from_slice(&snap).unwrap();
            // What was discarded before the snapshot left with it.
            if head.finished.is_empty() {
                for f in &facts[cut..] {
                    r.apply(f);
                }
                assert_eq!(r, whole, "cut at {cut}");
            }
        }
    }

    #[test]
    fn facts_round_trip_through_json() {
        for f in every_kind() {
            let text = serde_json::to_string(&f).unwrap();
            let back: Fact = serde_json::from_str(&text).unwrap();
            assert_eq!(back, f);
        }
    }
}

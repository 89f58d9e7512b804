//! The core's invariants, asserted after every event by the tests and the
//! simulator.

use std::collections::BTreeSet;

use drover_shared::api::JobState;

use super::state::Core;

impl Core {
    /// Asserts every invariant; panics naming the first broken one.
    ///
    /// - every frame of a hot job is in exactly one place: a waiting range,
    ///   a delayed range, a live chunk (speculative copies aside), a chunk
    ///   reserved for its node's re-adoption, a stored segment, or the
    ///   missing list;
    /// - a live chunk sits in its node's held list, and a node holds only
    ///   live chunks, at most `node_slots`;
    /// - no chunk is on a node its job cannot run on;
    /// - a job is listed in a class's ready set exactly when it has waiting
    ///   frames, is under its node limit and the class can run it;
    /// - a free node is connected, unquarantined, not drained or leaving,
    ///   and has a free slot;
    /// - `unschedulable` only while nothing of the job runs.
    pub fn check_invariants(&self) {
        let mut per_owner = std::collections::HashMap::<&str, usize>::new();
        for j in self.jobs.values() {
            *per_owner.entry(j.owner.key.as_str()).or_default() += 1;
        }
        assert_eq!(
            per_owner.len(),
            self.owner_active.len(),
            "hot jobs per submitting key"
        );
        for (k, n) in &per_owner {
            assert_eq!(self.owner_active.get(*k), Some(n), "hot jobs of key {k}");
        }
        for (id, j) in &self.jobs {
            let mut spans: Vec<(u64, u64, &str)> = Vec::new();
            spans.extend(j.ready.iter().map(|(s, r)| (*s, r.end, "waiting")));
            spans.extend(j.delayed.iter().map(|(_, s, r)| (*s, r.end, "delayed")));
            spans.extend(
                j.live
                    .iter()
                    .filter(|(cid, c)| c.twin.is_none_or(|t| t > **cid))
                    .map(|(_, c)| (c.start, c.end, "live")),
            );
            spans.extend(j.done.iter().map(|(s, d)| (*s, d.end, "done")));
            spans.extend(j.orphans.values().map(|o| (o.start, o.end, "reserved")));
            spans.extend(j.missing.iter().map(|m| (*m, *m, "missing")));
            spans.sort();
            let mut next = j.spec.frames.start;
            if !j.state.is_terminal() {
                for (s, e, what) in &spans {
                    assert_eq!(
                        *s, next,
                        "job {id}: {what} range {s}-{e} does not start at frame {next}: {spans:?}"
                    );
                    assert!(e >= s, "job {id}: empty range");
                    next = e + 1;
                }
                assert_eq!(
                    next,
                    j.spec.frames.end + 1,
                    "job {id}: frames after {next} are nowhere: {spans:?}"
                );
            }
            let ready: u64 = j.ready.iter().map(|(s, r)| r.end - s + 1).sum();
            assert_eq!(ready, j.ready_frames, "job {id}: ready frame count");
            let done: u64 = j.done.iter().map(|(s, d)| d.end - s + 1).sum();
            assert_eq!(done, j.frames_done, "job {id}: done frame count");
            for (cid, c) in &j.live {
                let n = self
                    .node(c.node)
                    .unwrap_or_else(|| panic!("job {id} chunk {cid} on a missing node"));
                assert!(
                    n.held.contains(&(*id, *cid)),
                    "job {id} chunk {cid} not held by {}",
                    n.name
                );
                assert!(
                    n.connected,
                    "job {id} chunk {cid} on {}, which is not connected",
                    n.name
                );
                let caps = &n.caps;
                assert!(
                    j.needs.iter().all(|need| need.met_by(caps)),
                    "job {id} chunk {cid} placed on {} which cannot run it",
                    n.name
                );
                if let Some(t) = c.twin {
                    let other = j.live.get(&t).expect("twin is live");
                    assert_eq!(other.twin, Some(*cid), "twins point at each other");
                    assert_eq!(
                        (other.start, other.end),
                        (c.start, c.end),
                        "twins cover the same frames"
                    );
                }
                let indexed = j.finish_index.contains(&(c.expected_finish_ms, *cid));
                assert_eq!(
                    indexed,
                    c.shrink.is_none() && c.twin.is_none(),
                    "job {id} chunk {cid} finish index"
                );
            }
            assert_eq!(
                j.finish_index.len(),
                j.live
                    .values()
                    .filter(|c| c.shrink.is_none() && c.twin.is_none())
                    .count()
            );
            if j.state == JobState::Unschedulable {
                assert!(j.live.is_empty(), "job {id} unschedulable while running");
            }
            let want =
                j.ready_frames > 0 && !j.paused && !j.at_max_nodes() && !j.state.is_terminal();
            assert_eq!(j.listed, want, "job {id} listed");
            for (cl, class) in self.classes.iter().enumerate() {
                let ok = j.class_ok.get(cl).copied().flatten();
                let in_set = class
                    .ready_jobs
                    .contains(&(std::cmp::Reverse(j.eff_prio), *id));
                if want && ok == Some(true) {
                    assert!(in_set, "job {id} missing from class {cl}'s ready set");
                }
                if !want || ok == Some(false) {
                    assert!(!in_set, "job {id} wrongly in class {cl}'s ready set");
                }
            }
        }
        for (ix, p) in self.projects.iter().enumerate() {
            let listed = self
                .jobs
                .values()
                .filter(|j| j.listed && j.project as usize == ix)
                .count() as u32;
            assert_eq!(p.listed, listed, "project {ix}: listed jobs");
        }
        let with_listed = self.projects.iter().filter(|p| p.listed > 0).count() as u32;
        assert_eq!(
            self.projects_listed, with_listed,
            "projects with listed jobs"
        );
        let mut seen = BTreeSet::new();
        for (ix, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            assert!(
                n.held.len() <= self.config.node_slots,
                "{} holds too many",
                n.name
            );
            for k in &n.held {
                assert!(seen.insert(*k), "chunk {k:?} held twice");
                let c = self
                    .jobs
                    .get(&k.0)
                    .and_then(|j| j.live.get(&k.1))
                    .unwrap_or_else(|| panic!("{} holds {k:?}, which is not live", n.name));
                assert_eq!(c.node.0 as usize, ix, "{k:?} held by the wrong node");
            }
            let free = self.classes[n.class]
                .free
                .contains(&(n.held.len(), super::NodeId(ix as u32)));
            let should =
                n.usable() && n.awaiting_tail.is_none() && n.held.len() < self.config.node_slots;
            assert_eq!(free, should, "{}: free set", n.name);
        }
        for (cl, class) in self.classes.iter().enumerate() {
            let available = self
                .nodes
                .iter()
                .flatten()
                .filter(|n| n.class == cl && n.usable())
                .count() as u32;
            assert_eq!(available, class.available, "class {cl} available count");
            let idle = class.free.iter().filter(|(h, _)| *h == 0).count() as u32;
            assert_eq!(idle, class.idle, "class {cl} idle count");
        }
    }
}

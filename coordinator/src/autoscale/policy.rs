//! The scaling policy of one pool: a pure state machine with an injected
//! clock.
//!
//! Each tick the driver hands [`PoolPolicy::tick`] what the scheduler core
//! says about the pool ([`PoolInput`]: the work waiting for it and its
//! nodes) and the time; the policy answers with [`Decision`]s. It does no
//! I/O: the driver carries decisions out (a provider call, a drain sent to
//! the core) and reports back what happened ([`PoolPolicy::added`],
//! [`PoolPolicy::add_failed`], [`PoolPolicy::removed`],
//! [`PoolPolicy::remove_failed`]). The same policy runs in the coordinator
//! and in the simulator (`bench/src/sim/`).
//!
//! # The rules
//! - **Up:** when the pool's work (node-seconds of the remaining frames of
//!   every job its nodes can run) divided by its capacity (nodes joined and
//!   not draining, plus nodes asked for that have not joined yet) exceeds
//!   `target_drain_s`, ask for as many nodes as make it fit, within `max`.
//!   A pool with work and no capacity always asks. After a scale-up the
//!   policy waits `scale_up_cooldown_s` before the next one, and counts
//!   nodes asked for but not joined as capacity, so it does not ask again
//!   for the same work while nodes start.
//! - **Down:** a node idle (holding no chunk) for longer than
//!   `idle_cooldown_s` is drained, as long as the pool keeps `min` nodes;
//!   once drained and idle it is removed through the provider.
//! - **Bounds:** never below `min` (a pool below it asks for the
//!   difference) and never above `max` nodes asked for.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Longest a node the provider was asked for may take to join before the
/// policy stops counting it as starting: a node that never comes (a failed
/// pod, a spot request not granted) must not block scaling forever, and a
/// real node start (image pull, GPU probe, calibration) takes well under
/// this.
pub const DEFAULT_JOIN_TIMEOUT_MS: u64 = 5 * 60 * 1_000;

/// The tunables of one pool's policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Fewest nodes the pool keeps (also with no work).
    pub min: u32,
    /// Most nodes the pool asks for.
    pub max: u32,
    /// Scale up when the pool's work would take longer than this to drain
    /// with the nodes it has, in seconds.
    pub target_drain_s: f64,
    /// Least time between two scale-ups, ms.
    pub scale_up_cooldown_ms: u64,
    /// A node idle longer than this is drained and removed, ms.
    pub idle_cooldown_ms: u64,
    /// How long a node asked for may take to join, ms.
    pub join_timeout_ms: u64,
}

/// One of the pool's nodes as the core sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeObs {
    /// Its name.
    pub name: String,
    /// Holds at least one chunk.
    pub busy: bool,
    /// Drained (by the autoscaler, an admin or a preemption notice).
    pub drained: bool,
}

/// What the core says about one pool at one tick.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolInput {
    /// Remaining frames of the queued, running and unschedulable jobs the
    /// pool's nodes can run.
    pub backlog_frames: u64,
    /// Those frames' render time on one of the pool's nodes, seconds.
    pub work_s: f64,
    /// The pool's connected nodes.
    pub nodes: Vec<NodeObs>,
}

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Ask the provider for `by` more nodes.
    ScaleUp {
        /// Pool.
        pool: String,
        /// How many.
        by: u32,
        /// Why, in a sentence with the figures.
        reason: String,
    },
    /// Drain this node (no new work); it is removed once idle.
    Drain {
        /// Pool.
        pool: String,
        /// Node.
        node: String,
        /// Why.
        reason: String,
    },
    /// Remove this drained, idle node through the provider.
    Remove {
        /// Pool.
        pool: String,
        /// Node.
        node: String,
        /// Why.
        reason: String,
    },
}

/// One pool's policy state.
#[derive(Debug, Clone)]
pub struct PoolPolicy {
    /// The pool's name.
    pub pool: String,
    /// Its tunables.
    pub config: PolicyConfig,
    /// Nodes asked for and not removed (what the provider reports, kept up
    /// to date by the driver's reports).
    requested: u32,
    /// When each asked-for node that has not joined yet was asked for,
    /// oldest first.
    starting: Vec<u64>,
    /// Names of nodes seen joined, so a new name counts as one started.
    seen: BTreeSet<String>,
    /// When the last scale-up was decided.
    last_up_ms: Option<u64>,
    /// Since when each idle node has been idle.
    idle_since: BTreeMap<String, u64>,
    /// Nodes this policy drained, waiting to be idle to be removed.
    draining: BTreeSet<String>,
    /// Nodes whose removal was decided and not yet confirmed.
    removing: BTreeSet<String>,
    /// Nodes the provider removed that are still connected (a VM slow to
    /// shut down, a pod in its termination grace): kept until the name
    /// leaves the pool's nodes, so such a node is never drained or removed
    /// twice and never counts as capacity.
    removed: BTreeSet<String>,
}

impl PoolPolicy {
    /// A pool's policy; `requested` is what its provider already runs (a
    /// coordinator restart finds the pool's nodes still there).
    pub fn new(pool: &str, config: PolicyConfig, requested: u32) -> PoolPolicy {
        PoolPolicy {
            pool: pool.to_string(),
            config,
            requested,
            starting: Vec::new(),
            seen: BTreeSet::new(),
            last_up_ms: None,
            idle_since: BTreeMap::new(),
            draining: BTreeSet::new(),
            removing: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }

    /// Nodes asked for and not removed.
    pub fn requested(&self) -> u32 {
        self.requested
    }

    /// Nodes asked for that have not joined yet.
    pub fn starting(&self) -> u32 {
        self.starting.len() as u32
    }

    /// Nodes this policy is draining or removing.
    pub fn draining(&self) -> impl Iterator<Item = &String> {
        self.draining.iter().chain(self.removing.iter())
    }

    /// The provider's own count, when the driver reads it (a node process
    /// that exited, a replica count changed by hand): the policy adopts
    /// it, but never below the pool's joined nodes (not counting those
    /// already removed): a provider that cannot ask its cloud (`command`)
    /// starts from 0 after a coordinator restart, and the nodes still
    /// there must count against `max` and be drained when idle. `joined`
    /// are the pool's connected nodes now.
    pub fn sync_requested(&mut self, now_ms: u64, requested: u32, joined: &[NodeObs]) {
        let live = joined
            .iter()
            .filter(|n| !self.removed.contains(&n.name))
            .count() as u32;
        let requested = requested.max(live);
        self.requested = requested;
        for n in joined {
            self.seen.insert(n.name.clone());
        }
        let starting = requested.saturating_sub(live) as usize;
        while self.starting.len() > starting {
            self.starting.remove(0);
        }
        while self.starting.len() < starting {
            self.starting.push(now_ms);
        }
    }

    /// The provider added `by` nodes.
    pub fn added(&mut self, now_ms: u64, by: u32) {
        self.requested += by;
        self.starting
            .extend(std::iter::repeat_n(now_ms, by as usize));
    }

    /// The provider could not add nodes: nothing is starting for that
    /// decision, and the next scale-up waits a cooldown anyway.
    pub fn add_failed(&mut self, _now_ms: u64) {}

    /// The provider removed `node`; while it stays connected it is
    /// remembered as removed (see [`PoolPolicy::tick`]).
    pub fn removed(&mut self, node: &str) {
        if self.removing.remove(node) {
            self.requested = self.requested.saturating_sub(1);
            self.removed.insert(node.to_string());
        }
        self.idle_since.remove(node);
    }

    /// The provider could not remove `node`: it is tried again at a later
    /// tick (it stays drained).
    pub fn remove_failed(&mut self, node: &str) {
        if self.removing.remove(node) {
            self.draining.insert(node.to_string());
        }
    }

    /// One step: the pool's state now in, decisions out; every node may
    /// be removed.
    pub fn tick(&mut self, now_ms: u64, input: &PoolInput) -> Vec<Decision> {
        self.tick_with(now_ms, input, &|_, _| true)
    }

    /// One step, draining only nodes `removable(node, pool's nodes)` says
    /// the provider can remove ([`super::provider::Provider::removable`]).
    pub fn tick_with(
        &mut self,
        now_ms: u64,
        input: &PoolInput,
        removable: &dyn Fn(&str, &[&str]) -> bool,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        // A removed node is forgotten only once it has left; until then it
        // is neither seen, idle, drained, removed again nor capacity.
        self.removed
            .retain(|k| input.nodes.iter().any(|n| &n.name == k));
        let removed = &self.removed;
        let input = &PoolInput {
            backlog_frames: input.backlog_frames,
            work_s: input.work_s,
            nodes: input
                .nodes
                .iter()
                .filter(|n| !removed.contains(&n.name))
                .cloned()
                .collect(),
        };
        let c = &self.config;
        // Nodes seen for the first time are asked-for nodes that joined.
        for n in &input.nodes {
            if self.seen.insert(n.name.clone()) && !self.starting.is_empty() {
                self.starting.remove(0);
            }
        }
        let join_timeout_ms = c.join_timeout_ms;
        self.starting
            .retain(|at| now_ms.saturating_sub(*at) < join_timeout_ms);
        let present: BTreeSet<&str> = input.nodes.iter().map(|n| n.name.as_str()).collect();
        self.idle_since.retain(|k, _| present.contains(k.as_str()));
        self.seen.retain(|k| present.contains(k.as_str()));
        // A node that left while draining (it stopped by itself) is gone.
        self.draining.retain(|k| present.contains(k.as_str()));
        for n in &input.nodes {
            if n.busy {
                self.idle_since.remove(&n.name);
            } else {
                self.idle_since.entry(n.name.clone()).or_insert(now_ms);
            }
        }

        // Drained and idle: remove.
        for n in &input.nodes {
            if self.draining.contains(&n.name) && n.drained && !n.busy {
                self.draining.remove(&n.name);
                self.removing.insert(n.name.clone());
                out.push(Decision::Remove {
                    pool: self.pool.clone(),
                    node: n.name.clone(),
                    reason: "drained and idle".into(),
                });
            }
        }

        let active = input
            .nodes
            .iter()
            .filter(|n| !n.drained && !self.draining.contains(&n.name))
            .count() as u32;
        let capacity = active + self.starting();
        // Nodes that count against `min` and `max`: everything asked for
        // but what is being taken away.
        let kept = self
            .requested
            .saturating_sub((self.draining.len() + self.removing.len()) as u32);

        // Up.
        let cooled = self
            .last_up_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= c.scale_up_cooldown_ms);
        let mut up = 0;
        let mut reason = String::new();
        if kept < c.min {
            up = c.min - kept;
            reason = format!("the pool has {kept} nodes, below its minimum of {}", c.min);
        } else if input.backlog_frames > 0 && cooled {
            let target_s = c.target_drain_s.max(1.0);
            let drain_s = if capacity == 0 {
                f64::INFINITY
            } else {
                input.work_s / capacity as f64
            };
            if drain_s > target_s {
                let want = ((input.work_s / target_s).ceil() as u32).max(1);
                let room = c.max.saturating_sub(self.requested);
                up = want.saturating_sub(capacity).min(room);
                if up > 0 {
                    let eta = if capacity == 0 {
                        "the pool has no node to run them".to_string()
                    } else {
                        format!("{drain_s:.0} s to drain with {capacity} node(s)")
                    };
                    reason = format!(
                        "{} frames wait ({:.0} node-seconds): {eta}, over the {:.0} s target",
                        input.backlog_frames, input.work_s, target_s
                    );
                }
            }
        }
        if up > 0 {
            self.last_up_ms = Some(now_ms);
            out.push(Decision::ScaleUp {
                pool: self.pool.clone(),
                by: up,
                reason,
            });
            return out;
        }

        // Down: idle longest first, never below the minimum, and only
        // nodes the provider can remove.
        let names: Vec<&str> = input.nodes.iter().map(|n| n.name.as_str()).collect();
        let mut kept = kept;
        let mut idle: Vec<(&String, u64)> = self
            .idle_since
            .iter()
            .map(|(k, v)| (k, *v))
            .filter(|(k, since)| {
                now_ms.saturating_sub(*since) > c.idle_cooldown_ms
                    && !self.draining.contains(*k)
                    && !self.removing.contains(*k)
                    && removable(k, &names)
            })
            .collect();
        idle.sort_by_key(|(k, since)| (*since, (*k).clone()));
        let mut drain = Vec::new();
        for (name, since) in idle {
            if kept <= c.min {
                break;
            }
            kept -= 1;
            drain.push((name.clone(), now_ms - since));
        }
        for (name, idle_ms) in drain {
            self.draining.insert(name.clone());
            out.push(Decision::Drain {
                pool: self.pool.clone(),
                node: name,
                reason: format!(
                    "idle for {:.0} s, over the {:.0} s cooldown",
                    idle_ms as f64 / 1000.0,
                    c.idle_cooldown_ms as f64 / 1000.0
                ),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: u32, max: u32) -> PolicyConfig {
        PolicyConfig {
            min,
            max,
            target_drain_s: 60.0,
            scale_up_cooldown_ms: 10_000,
            idle_cooldown_ms: 30_000,
            join_timeout_ms: 120_000,
        }
    }

    fn node(name: &str, busy: bool, drained: bool) -> NodeObs {
        NodeObs {
            name: name.into(),
            busy,
            drained,
        }
    }

    fn input(work_s: f64, nodes: Vec<NodeObs>) -> PoolInput {
        PoolInput {
            backlog_frames: if work_s > 0.0 { 100 } else { 0 },
            work_s,
            nodes,
        }
    }

    /// One step of a script: time, input, and the decisions expected in a
    /// short notation (`up 2`, `drain n1`, `remove n1`).
    type Step = (u64, PoolInput, &'static [&'static str]);

    fn short(d: &Decision) -> String {
        match d {
            Decision::ScaleUp { by, .. } => format!("up {by}"),
            Decision::Drain { node, .. } => format!("drain {node}"),
            Decision::Remove { node, .. } => format!("remove {node}"),
        }
    }

    /// Runs a script on a fresh policy; the driver confirms every add and
    /// remove at once.
    fn check(config: PolicyConfig, requested: u32, steps: Vec<Step>) {
        let mut p = PoolPolicy::new("gpu", config, requested);
        for (i, (now, inp, want)) in steps.into_iter().enumerate() {
            let got = p.tick(now, &inp);
            let names: Vec<String> = got.iter().map(short).collect();
            assert_eq!(names, want, "step {i} at {now} ms: {got:?}");
            for d in &got {
                match d {
                    Decision::ScaleUp { by, reason, .. } => {
                        assert!(!reason.is_empty());
                        p.added(now, *by)
                    }
                    Decision::Remove { node, .. } => p.removed(node),
                    Decision::Drain { .. } => {}
                }
            }
        }
    }

    #[test]
    fn empty_pool_with_work_scales_up_to_fit_the_target_within_max() {
        // 300 node-seconds at a 60 s target want 5 nodes; max is 2.
        check(cfg(0, 2), 0, vec![(0, input(300.0, vec![]), &["up 2"])]);
        // 90 node-seconds want 2.
        check(cfg(0, 4), 0, vec![(0, input(90.0, vec![]), &["up 2"])]);
        // A little work on an empty pool still gets one node.
        check(cfg(0, 4), 0, vec![(0, input(5.0, vec![]), &["up 1"])]);
    }

    #[test]
    fn no_work_no_nodes_does_nothing() {
        check(cfg(0, 4), 0, vec![(0, input(0.0, vec![]), &[])]);
    }

    #[test]
    fn the_minimum_is_kept_without_work() {
        check(cfg(2, 4), 0, vec![(0, input(0.0, vec![]), &["up 2"])]);
    }

    #[test]
    fn starting_nodes_count_so_it_does_not_flap() {
        check(
            cfg(0, 8),
            0,
            vec![
                (0, input(120.0, vec![]), &["up 2"]),
                // Past the cooldown, the nodes still starting cover the work.
                (20_000, input(120.0, vec![]), &[]),
                // One joined: still two of capacity.
                (25_000, input(120.0, vec![node("a", true, false)]), &[]),
            ],
        );
    }

    #[test]
    fn a_second_scale_up_waits_for_the_cooldown() {
        check(
            cfg(0, 8),
            0,
            vec![
                (0, input(60.5, vec![]), &["up 2"]),
                // More work arrives at once: wait for the cooldown.
                (1_000, input(600.0, vec![]), &[]),
                (10_000, input(600.0, vec![]), &["up 6"]),
            ],
        );
    }

    #[test]
    fn nodes_that_never_join_stop_counting_after_the_join_timeout() {
        check(
            cfg(0, 4),
            0,
            vec![
                (0, input(100.0, vec![]), &["up 2"]),
                (119_000, input(100.0, vec![]), &[]),
                // Both asked-for nodes are given up on; `max` counts what
                // the provider holds, so only two more fit.
                (120_000, input(100.0, vec![]), &["up 2"]),
            ],
        );
    }

    #[test]
    fn idle_nodes_are_drained_after_the_cooldown_then_removed() {
        check(
            cfg(0, 2),
            2,
            vec![
                (
                    0,
                    input(0.0, vec![node("a", false, false), node("b", true, false)]),
                    &[],
                ),
                (
                    30_000,
                    input(0.0, vec![node("a", false, false), node("b", false, false)]),
                    &[],
                ),
                (
                    30_001,
                    input(0.0, vec![node("a", false, false), node("b", false, false)]),
                    &["drain a"],
                ),
                // The core drained it; idle, so it goes.
                (
                    31_000,
                    input(0.0, vec![node("a", false, true), node("b", false, false)]),
                    &["remove a"],
                ),
                (
                    60_001,
                    input(0.0, vec![node("b", false, false)]),
                    &["drain b"],
                ),
                (
                    61_000,
                    input(0.0, vec![node("b", false, true)]),
                    &["remove b"],
                ),
                (62_000, input(0.0, vec![]), &[]),
            ],
        );
    }

    #[test]
    fn scale_down_keeps_the_minimum() {
        check(
            cfg(1, 3),
            2,
            vec![
                (
                    0,
                    input(0.0, vec![node("a", false, false), node("b", false, false)]),
                    &[],
                ),
                (
                    40_000,
                    input(0.0, vec![node("a", false, false), node("b", false, false)]),
                    &["drain a"],
                ),
                (
                    41_000,
                    input(0.0, vec![node("a", false, true), node("b", false, false)]),
                    &["remove a"],
                ),
                (100_000, input(0.0, vec![node("b", false, false)]), &[]),
            ],
        );
    }

    #[test]
    fn a_busy_node_is_never_drained_and_work_resets_idleness() {
        check(
            cfg(0, 2),
            1,
            vec![
                (0, input(0.0, vec![node("a", false, false)]), &[]),
                (20_000, input(10.0, vec![node("a", true, false)]), &[]),
                (40_000, input(0.0, vec![node("a", false, false)]), &[]),
                (70_000, input(0.0, vec![node("a", false, false)]), &[]),
                (
                    70_001,
                    input(0.0, vec![node("a", false, false)]),
                    &["drain a"],
                ),
            ],
        );
    }

    #[test]
    fn a_draining_node_is_removed_only_once_idle() {
        check(
            cfg(0, 2),
            1,
            vec![
                (0, input(0.0, vec![node("a", false, false)]), &[]),
                (
                    40_000,
                    input(0.0, vec![node("a", false, false)]),
                    &["drain a"],
                ),
                // A chunk it held still runs (the drain lets it finish).
                (41_000, input(0.0, vec![node("a", true, true)]), &[]),
                (
                    42_000,
                    input(0.0, vec![node("a", false, true)]),
                    &["remove a"],
                ),
            ],
        );
    }

    #[test]
    fn nodes_drained_by_someone_else_are_not_removed_nor_counted() {
        // An admin drained `a`: it is not capacity, and not ours to remove.
        check(
            cfg(0, 3),
            1,
            vec![(0, input(100.0, vec![node("a", false, true)]), &["up 2"])],
        );
    }

    #[test]
    fn within_target_no_scale_up() {
        // 100 node-seconds over 2 nodes is 50 s, under the 60 s target.
        check(
            cfg(0, 4),
            2,
            vec![(
                0,
                input(100.0, vec![node("a", true, false), node("b", true, false)]),
                &[],
            )],
        );
    }

    #[test]
    fn a_failed_remove_is_tried_again() {
        let mut p = PoolPolicy::new("gpu", cfg(0, 1), 1);
        let idle = input(0.0, vec![node("a", false, false)]);
        assert!(p.tick(0, &idle).is_empty());
        assert!(matches!(
            p.tick(30_001, &idle)[..],
            [Decision::Drain { .. }]
        ));
        let drained = input(0.0, vec![node("a", false, true)]);
        assert!(matches!(
            p.tick(30_002, &drained)[..],
            [Decision::Remove { .. }]
        ));
        p.remove_failed("a");
        assert_eq!(p.requested(), 1);
        assert!(matches!(
            p.tick(30_003, &drained)[..],
            [Decision::Remove { .. }]
        ));
        p.removed("a");
        assert_eq!(p.requested(), 0);
    }

    #[test]
    fn a_removed_node_still_connected_is_never_drained_or_removed_again() {
        // `a` was removed but its VM shuts down slowly: it stays connected,
        // idle and drained, well past the cooldown.
        let a_left = input(0.0, vec![node("a", false, true), node("b", true, false)]);
        check(
            cfg(0, 3),
            2,
            vec![
                (
                    0,
                    input(0.0, vec![node("a", false, false), node("b", true, false)]),
                    &[],
                ),
                (
                    30_001,
                    input(0.0, vec![node("a", false, false), node("b", true, false)]),
                    &["drain a"],
                ),
                (31_000, a_left.clone(), &["remove a"]),
                (100_000, a_left.clone(), &[]),
                (200_000, a_left, &[]),
                // It is not capacity either: 150 node-seconds on `b` alone
                // want two more nodes (max 3, one kept).
                (
                    200_001,
                    input(150.0, vec![node("a", false, true), node("b", true, false)]),
                    &["up 2"],
                ),
            ],
        );
    }

    #[test]
    fn a_removed_nodes_name_is_usable_again_once_it_left() {
        let mut p = PoolPolicy::new("gpu", cfg(0, 2), 1);
        let idle = input(0.0, vec![node("a", false, false)]);
        p.tick(0, &idle);
        p.tick(30_001, &idle);
        let drained = input(0.0, vec![node("a", false, true)]);
        assert_eq!(
            p.tick(30_002, &drained)
                .iter()
                .map(short)
                .collect::<Vec<_>>(),
            ["remove a"]
        );
        p.removed("a");
        assert!(p.tick(90_000, &drained).is_empty());
        // It left; a new `a` (a StatefulSet ordinal again) is a new node.
        assert!(p.tick(91_000, &input(0.0, vec![])).is_empty());
        p.added(91_000, 1);
        assert!(p.tick(92_000, &idle).is_empty());
        assert_eq!(p.starting(), 0);
        assert_eq!(
            p.tick(122_001, &idle).iter().map(short).collect::<Vec<_>>(),
            ["drain a"]
        );
    }

    #[test]
    fn after_a_restart_the_joined_nodes_count_when_the_provider_says_zero() {
        // A `command` provider starts from 0 after a coordinator restart
        // while three of its nodes are still joined: they count against
        // `max` and idle ones are drained.
        let mut p = PoolPolicy::new("gpu", cfg(0, 3), 0);
        let joined = vec![
            node("a", true, false),
            node("b", true, false),
            node("c", false, false),
        ];
        p.sync_requested(0, 0, &joined);
        assert_eq!((p.requested(), p.starting()), (3, 0));
        // Much work, but the pool is at max: no scale-up.
        assert!(p.tick(0, &input(10_000.0, joined.clone())).is_empty());
        let got: Vec<String> = p
            .tick(30_001, &input(0.0, joined))
            .iter()
            .map(short)
            .collect();
        assert_eq!(got, ["drain c"]);
        // A larger count of the provider's still wins.
        p.sync_requested(30_002, 5, &[node("a", true, false)]);
        assert_eq!((p.requested(), p.starting()), (5, 4));
    }

    #[test]
    fn only_nodes_the_provider_can_remove_are_drained() {
        // A StatefulSet: only the highest ordinal goes, even though s-0
        // has been idle longer.
        let highest = |n: &str, all: &[&str]| {
            let ord = |x: &str| x.trim_start_matches("s-").parse::<u32>().unwrap();
            all.iter().all(|o| ord(o) <= ord(n))
        };
        let mut p = PoolPolicy::new("gpu", cfg(0, 3), 2);
        let both = |s1_busy| {
            input(
                0.0,
                vec![node("s-0", false, false), node("s-1", s1_busy, false)],
            )
        };
        assert!(p.tick_with(0, &both(true), &highest).is_empty());
        assert!(p.tick_with(10_000, &both(false), &highest).is_empty());
        // s-0 is past its cooldown but cannot be removed alone.
        assert!(p.tick_with(30_001, &both(false), &highest).is_empty());
        let got: Vec<String> = p
            .tick_with(40_001, &both(false), &highest)
            .iter()
            .map(short)
            .collect();
        assert_eq!(got, ["drain s-1"]);
        let gone = input(
            0.0,
            vec![node("s-0", false, false), node("s-1", false, true)],
        );
        let got: Vec<String> = p
            .tick_with(40_002, &gone, &highest)
            .iter()
            .map(short)
            .collect();
        assert_eq!(got, ["remove s-1"]);
        p.removed("s-1");
        // While s-1 terminates, s-0 is the highest left: it goes next.
        let got: Vec<String> = p
            .tick_with(40_003, &gone, &highest)
            .iter()
            .map(short)
            .collect();
        assert_eq!(got, ["drain s-0"]);
    }

    #[test]
    fn sync_adopts_the_providers_count() {
        let mut p = PoolPolicy::new("gpu", cfg(0, 4), 3);
        p.sync_requested(0, 1, &[]);
        assert_eq!((p.requested(), p.starting()), (1, 1));
        p.sync_requested(0, 1, &[node("a", false, false)]);
        assert_eq!((p.requested(), p.starting()), (1, 0));
    }
}

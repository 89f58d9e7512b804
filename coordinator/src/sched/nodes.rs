//! Nodes: admission, capability classes, liveness, speed, quarantine.

use std::cmp::Reverse;
use std::sync::Arc;

use drover_shared::caps::Capabilities;

use super::state::{Class, ClassId, ClassKey, Core, Node, SpeedKey, Timer};
use drover_shared::api::{ChunkKind, JobState};

use super::facts::{Fact, NodeRecord};
use super::record::RunningChunk;
use super::state::Range;
use super::types::{ChunkKey, Command, JobId, NodeId, RunningReport, SpooledReport};

/// Longest node name, bytes.
pub const MAX_NODE_NAME_BYTES: usize = 64;
/// Pixel-frames per second assumed for a node that sent no calibration:
/// 30 frames/s at 640x360, a slow CPU node.
const DEFAULT_PIXEL_FPS: f64 = 30.0 * 640.0 * 360.0;

/// Resolution classes: speed is learned per class, since a node's speed
/// does not scale exactly with pixels (fixed per-frame costs, caches).
pub const RESOLUTION_CLASSES: [(u64, &str); 7] = [
    (640 * 360, "360p"),
    (960 * 540, "540p"),
    (1280 * 720, "720p"),
    (1920 * 1080, "1080p"),
    (2560 * 1440, "1440p"),
    (3840 * 2160, "2160p"),
    (u64::MAX, "4320p"),
];

/// The resolution class of `pixels`.
pub fn resolution_class(pixels: u64) -> u8 {
    RESOLUTION_CLASSES
        .iter()
        .position(|(max, _)| pixels <= *max)
        .unwrap_or(RESOLUTION_CLASSES.len() - 1) as u8
}

impl Core {
    /// Decides whether a hello is admitted: node names are unique among
    /// live nodes; the persistent node id tells the same node reconnecting
    /// (its stale session is replaced) from another one (refused).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hello(
        &mut self,
        now_ms: u64,
        session: u64,
        name: String,
        node_id: String,
        caps: Capabilities,
        running: Vec<RunningReport>,
        spooled: Vec<SpooledReport>,
        cmds: &mut Vec<Command>,
    ) {
        if name.is_empty() || name.len() > MAX_NODE_NAME_BYTES {
            cmds.push(Command::Refuse {
                session,
                reason: format!(
                    "node name must be 1..={MAX_NODE_NAME_BYTES} bytes, got {}",
                    name.len()
                ),
            });
            return;
        }
        let own_tags = caps.tags.clone();
        let mut caps = caps;
        if let Some(tags) = self.admin.get(name.as_str()).and_then(|a| a.tags.clone()) {
            caps.tags = tags;
        }
        let id = match self.names.get(name.as_str()).copied() {
            Some(id) => {
                let n = self.node(id).expect("named node exists");
                if n.connected && n.node_id != node_id {
                    cmds.push(Command::Refuse {
                        session,
                        reason: format!(
                            "node name {name:?} is already used by another connected node (id {}); give this node its own --name",
                            n.node_id
                        ),
                    });
                    return;
                }
                // The same node again (or a name whose holder left): what
                // it still runs stays its own; the rest of what its previous
                // session held waits again.
                let old_session = n.session;
                let was_connected = n.connected;
                let keep: Vec<(ChunkKey, u32)> = running
                    .iter()
                    .filter(|r| r.end >= r.start)
                    .map(|r| (r.chunk, r.epoch))
                    .filter(|(k, e)| self.current(id, *k, *e).is_some())
                    .collect();
                // Unavailable first, so the released chunks cannot come
                // straight back to the session being replaced.
                self.set_available(id, false);
                self.release_node_except(now_ms, id, &keep, LOST, cmds);
                if was_connected {
                    cmds.push(Command::CloseSession {
                        session: old_session,
                    });
                }
                let class = self.class_for(&caps);
                let n = self.node_mut(id).expect("exists");
                n.class = class;
                n.caps = caps;
                n.own_tags = own_tags;
                n.node_id = node_id;
                n.session = session;
                n.calib_pixel_fps = calibration_pixel_fps(&n.caps);
                id
            }
            None => {
                let class = self.class_for(&caps);
                let name: Arc<str> = Arc::from(name);
                let node = Node {
                    name: name.clone(),
                    node_id,
                    session,
                    class,
                    connected: false,
                    last_heartbeat_ms: now_ms,
                    held: Vec::new(),
                    cpu_load_pct: 0.0,
                    memory_load_pct: 0.0,
                    frames_rendered: 0,
                    quarantined: None,
                    failing_jobs: Vec::new(),
                    speed: Default::default(),
                    calib_pixel_fps: calibration_pixel_fps(&caps),
                    caps,
                    own_tags,
                    awaiting_tail: None,
                    busy_until_ms: now_ms,
                    drained: false,
                    leaving: false,
                };
                let id = match self.free_node_slots.pop() {
                    Some(slot) => {
                        self.nodes[slot as usize] = Some(node);
                        NodeId(slot)
                    }
                    None => {
                        self.nodes.push(Some(node));
                        NodeId(self.nodes.len() as u32 - 1)
                    }
                };
                self.names.insert(name, id);
                id
            }
        };
        cmds.push(Command::Welcome { session, node: id });
        let admin = self
            .admin
            .get(&*self.node(id).expect("exists").name)
            .cloned();
        let n = self.node_mut(id).expect("exists");
        n.last_heartbeat_ms = now_ms;
        n.leaving = false;
        if let Some(a) = admin {
            n.drained = a.drained;
            if n.quarantined.is_none() {
                n.quarantined = a.quarantined;
            }
        }
        let name = n.name.clone();
        self.arm(
            now_ms + self.config.node_timeout_ms + 1,
            Timer::Liveness(id, session),
        );
        // Jobs that blocklisted this node by name (restored from the
        // journal) know it by id again.
        let ids: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.blocklist_names.iter().any(|b| **b == *name))
            .map(|(j, _)| *j)
            .collect();
        for j in ids {
            let j = self.jobs.get_mut(&j).expect("listed");
            if !j.blocklist.contains(&id) {
                j.blocklist.push(id);
            }
        }
        self.readopt(now_ms, id, &name, running, &spooled, cmds);
        self.set_available(id, true);
        self.fill_node(now_ms, id, cmds);
    }

    /// A reconnecting node reports what it still runs and what its spool
    /// holds: chunks it runs that are reserved for it (after a restart) or
    /// whose frames still wait (after a lost connection) are adopted under
    /// their id and epoch; finished segments whose frames still wait are
    /// reserved for it until it uploads them. Anything else is cancelled.
    fn readopt(
        &mut self,
        now_ms: u64,
        id: NodeId,
        name: &str,
        running: Vec<RunningReport>,
        spooled: &[SpooledReport],
        cmds: &mut Vec<Command>,
    ) {
        let slots = self.config.node_slots;
        for r in running {
            if self.current(id, r.chunk, r.epoch).is_some() {
                continue; // kept from the replaced session
            }
            let held = self.node(id).map_or(0, |n| n.held.len());
            let adopted =
                held < slots && r.end >= r.start && self.adopt_report(now_ms, id, name, &r);
            if !adopted {
                cmds.push(Command::Cancel {
                    node: id,
                    chunk: r.chunk,
                    epoch: r.epoch,
                });
            }
        }
        let mut reserved = false;
        for s in spooled {
            reserved |= self.reserve_spooled(id, name, s);
        }
        // Reserved chunks of this node that it no longer has (neither runs
        // nor spools) wait again at once.
        let keep: Vec<ChunkKey> = spooled.iter().map(|s| s.chunk).collect();
        self.release_orphans_of(now_ms, name, &keep, cmds);
        if reserved {
            self.arm(now_ms + self.config.adopt_grace_ms, Timer::Orphans);
        }
    }

    /// Adopts one running chunk a node reports, if it may: reserved for it
    /// at that epoch, or its frames all waiting in one range.
    fn adopt_report(&mut self, now_ms: u64, id: NodeId, name: &str, r: &RunningReport) -> bool {
        let (job, chunk) = r.chunk;
        let Some(j) = self.jobs.get(&job) else {
            return false;
        };
        if j.state.is_terminal() || j.state == JobState::Muxing || j.live.contains_key(&chunk) {
            return false;
        }
        let caps = &self.node(id).expect("exists").caps;
        if !j.needs.iter().all(|n| n.met_by(caps)) || j.blocklist.contains(&id) {
            return false;
        }
        let kind;
        if let Some(o) = j.orphans.get(&chunk) {
            if o.epoch != r.epoch || o.node != name || r.start != o.start || r.end > o.end {
                return false;
            }
            kind = o.kind;
            let o = self
                .jobs
                .get_mut(&job)
                .expect("exists")
                .orphans
                .remove(&chunk)
                .expect("checked");
            if r.end < o.end {
                // The node answered a shrink whose answer was lost: the
                // frames after its end wait again.
                let rest = Range {
                    end: o.end,
                    failures: 0,
                    attempts: 0,
                };
                self.return_range(job, r.end + 1, rest);
            }
        } else {
            if chunk >= j.next_chunk || !self.take_waiting(job, r.start, r.end) {
                return false;
            }
            kind = ChunkKind::Normal;
        }
        self.adopt(
            now_ms,
            id,
            r.chunk,
            r.epoch,
            r.start,
            r.end,
            kind,
            r.frames_done,
        );
        self.dirty.push(job);
        true
    }

    /// Reserves a spooled segment's frames for its node until it uploads
    /// them: a chunk reserved for it already, or frames all waiting.
    fn reserve_spooled(&mut self, id: NodeId, name: &str, s: &SpooledReport) -> bool {
        let (job, chunk) = s.chunk;
        let Some(j) = self.jobs.get(&job) else {
            return false;
        };
        if j.state.is_terminal() || j.state == JobState::Muxing || s.end < s.start {
            return false;
        }
        if self.current(id, s.chunk, s.epoch).is_some() {
            return false;
        }
        if let Some(o) = j.orphans.get(&chunk) {
            return o.epoch == s.epoch && o.node == name && o.start == s.start && s.end <= o.end;
        }
        if j.live.contains_key(&chunk) || chunk >= j.next_chunk {
            return false;
        }
        if !self.take_waiting(job, s.start, s.end) {
            return false;
        }
        let j = self.jobs.get_mut(&job).expect("exists");
        j.orphans.insert(
            chunk,
            RunningChunk {
                start: s.start,
                end: s.end,
                epoch: s.epoch,
                node: name.to_string(),
                kind: ChunkKind::Normal,
            },
        );
        self.facts.push(Fact::Assigned {
            job,
            chunk,
            epoch: s.epoch,
            start: s.start,
            end: s.end,
            node: name.to_string(),
            kind: ChunkKind::Normal,
        });
        self.dirty.push(job);
        true
    }

    /// Takes frames `start..=end` out of a job's waiting frames if they are
    /// all there in one range.
    fn take_waiting(&mut self, job: JobId, start: u64, end: u64) -> bool {
        let Some(j) = self.jobs.get_mut(&job) else {
            return false;
        };
        let Some((&s, &range)) = j.ready.range(..=start).next_back() else {
            return false;
        };
        if range.end < end {
            return false;
        }
        j.ready.remove(&s);
        if s < start {
            j.ready.insert(
                s,
                Range {
                    end: start - 1,
                    ..range
                },
            );
        }
        if end < range.end {
            j.ready.insert(end + 1, range);
        }
        j.ready_frames -= end - start + 1;
        self.relist(job);
        true
    }

    /// Releases the reserved chunks of `name` not in `keep`.
    fn release_orphans_of(
        &mut self,
        now_ms: u64,
        name: &str,
        keep: &[ChunkKey],
        cmds: &mut Vec<Command>,
    ) {
        self.release_orphans_where(now_ms, cmds, |job, chunk, o| {
            o.node == name && !keep.contains(&(job, chunk))
        });
    }

    /// The class of nodes with these capabilities, made on first sight:
    /// every hot job learns whether it can run there.
    pub(crate) fn class_for(&mut self, caps: &Capabilities) -> ClassId {
        let key = ClassKey::of(caps);
        if let Some(c) = self.class_index.get(&key) {
            return *c;
        }
        let id = self.classes.len();
        self.classes.push(Class {
            caps: caps.clone(),
            available: 0,
            free: Default::default(),
            idle: 0,
            ready_jobs: Default::default(),
        });
        self.class_index.insert(key, id);
        let ids: Vec<u64> = self.jobs.keys().copied().collect();
        for j in ids {
            let ok = self.class_ok(j, id);
            let job = self.jobs.get(&j).expect("listed");
            if ok && job.listed {
                self.classes[id]
                    .ready_jobs
                    .insert((Reverse(job.eff_prio), j));
            }
        }
        id
    }

    /// Marks a node connected or not; see [`Core::modify_node`].
    pub(crate) fn set_available(&mut self, id: NodeId, connected: bool) {
        self.modify_node(id, |n| n.connected = connected);
    }

    /// Changes a node and keeps its class's count of available nodes
    /// (connected, not quarantined) and free set true. A class whose count
    /// moves between zero and non-zero changes which jobs can run at all.
    pub(crate) fn modify_node(&mut self, id: NodeId, change: impl FnOnce(&mut Node)) {
        let Some(n) = self.node_mut(id) else { return };
        let was = n.usable();
        change(n);
        let is = n.usable();
        let class = n.class;
        self.sync_free(id);
        if was != is {
            let c = &mut self.classes[class];
            if is {
                c.available += 1;
            } else {
                c.available -= 1;
            }
            if (is && c.available == 1) || (!is && c.available == 0) {
                self.refresh_schedulable_all();
            } else {
                // With blocklists, one node more or less can decide whether
                // a job runs anywhere.
                let touched = self.jobs.values().filter(|j| !j.blocklist.is_empty());
                self.dirty.extend(touched.map(|j| j.id));
            }
        }
    }

    /// Puts the node in its class's free set exactly when it can take a
    /// chunk now.
    pub(crate) fn sync_free(&mut self, id: NodeId) {
        let slots = self.config.node_slots;
        let Some(n) = self.node(id) else { return };
        let class = n.class;
        let held = n.held.len();
        let free = n.usable() && n.awaiting_tail.is_none() && held < slots;
        let c = &mut self.classes[class];
        let was_idle = c.free.contains(&(0, id));
        // The free set is keyed by (chunks held, node), so the least loaded
        // node comes first; any older key of this node goes.
        for h in 0..slots {
            if h != held || !free {
                c.free.remove(&(h, id));
            }
        }
        if free {
            c.free.insert((held, id));
        }
        let is_idle = free && held == 0;
        match (was_idle, is_idle) {
            (false, true) => c.idle += 1,
            (true, false) => c.idle -= 1,
            _ => {}
        }
    }

    /// Returns every chunk the node holds to its job and tells the node to
    /// stop them (a no-op when its session is gone).
    pub(crate) fn release_node(&mut self, now_ms: u64, id: NodeId, cmds: &mut Vec<Command>) {
        self.release_node_except(now_ms, id, &[], LOST, cmds);
    }

    /// [`Core::release_node`], keeping the chunks (at their epochs) in
    /// `keep`.
    fn release_node_except(
        &mut self,
        now_ms: u64,
        id: NodeId,
        keep: &[(ChunkKey, u32)],
        why: &str,
        cmds: &mut Vec<Command>,
    ) {
        let Some(n) = self.node_mut(id) else { return };
        let mut held = std::mem::take(&mut n.held);
        let kept: Vec<ChunkKey> = held
            .iter()
            .filter(|k| keep.iter().any(|(c, _)| c == *k))
            .copied()
            .collect();
        held.retain(|k| !kept.contains(k));
        n.held = kept;
        let awaiting = n.awaiting_tail.take();
        if let Some((job, chunk)) = awaiting {
            // The shrink it waited on now returns its tail to the job.
            if let Some(c) = self.jobs.get_mut(&job).and_then(|j| j.live.get_mut(&chunk)) {
                if let Some(s) = c.shrink.as_mut() {
                    s.thief = None;
                }
            }
        }
        self.sync_free(id);
        let mut touched = Vec::new();
        for key in held {
            if let Some(c) = self.jobs.get(&key.0).and_then(|j| j.live.get(&key.1)) {
                cmds.push(Command::Cancel {
                    node: id,
                    chunk: key,
                    epoch: c.epoch,
                });
            }
            self.lose_chunk(now_ms, key, why, cmds);
            touched.push(key.0);
        }
        touched.sort_unstable();
        touched.dedup();
        for j in touched {
            self.offer_job(now_ms, j, cmds);
        }
    }
}

/// Why chunks of a lost node go back.
const LOST: &str = "node lost while running the chunk";

impl Core {
    /// A node stopped talking or its connection closed.
    pub(crate) fn node_lost(&mut self, now_ms: u64, id: NodeId, cmds: &mut Vec<Command>) {
        // Unavailable first, so its released chunks go to other nodes.
        self.set_available(id, false);
        self.release_node(now_ms, id, cmds);
        let session = self.node(id).map(|n| n.session).unwrap_or(0);
        self.arm(
            now_ms + self.config.forget_node_ms,
            Timer::Forget(id, session),
        );
    }

    /// Heartbeat bookkeeping; a node reaped for silence whose connection
    /// survived is alive again.
    pub(crate) fn heartbeat(
        &mut self,
        now_ms: u64,
        id: NodeId,
        cpu_load_pct: f32,
        cmds: &mut Vec<Command>,
    ) {
        let timeout = self.config.node_timeout_ms;
        let Some(n) = self.node_mut(id) else { return };
        n.last_heartbeat_ms = now_ms;
        n.cpu_load_pct = cpu_load_pct;
        if !n.connected {
            let session = n.session;
            self.arm(now_ms + timeout + 1, Timer::Liveness(id, session));
            self.set_available(id, true);
            self.fill_node(now_ms, id, cmds);
        }
    }

    /// The liveness deadline of a node fired: reap it if it stayed silent,
    /// or look again at its next possible deadline.
    pub(crate) fn liveness(
        &mut self,
        now_ms: u64,
        id: NodeId,
        session: u64,
        cmds: &mut Vec<Command>,
    ) {
        let timeout = self.config.node_timeout_ms;
        let Some(n) = self.node(id) else { return };
        if n.session != session || !n.connected {
            return;
        }
        let silent_ms = now_ms.saturating_sub(n.last_heartbeat_ms);
        if silent_ms > timeout {
            tracing::warn!(node = %n.name, silent_ms, "node silent; reaped");
            self.node_lost(now_ms, id, cmds);
        } else {
            let at = n.last_heartbeat_ms + timeout + 1;
            self.arm(at, Timer::Liveness(id, session));
        }
    }

    /// Forgets a node that stayed away: its slot and name are reused. A
    /// session still open for it (reaped for silence, never closed) is
    /// closed first, or its messages would count for the slot's next node.
    pub(crate) fn forget(&mut self, id: NodeId, session: u64, cmds: &mut Vec<Command>) {
        let Some(n) = self.node(id) else { return };
        if n.connected || n.session != session {
            return;
        }
        cmds.push(Command::CloseSession { session });
        let name = n.name.clone();
        self.names.remove(&name);
        self.nodes[id.0 as usize] = None;
        self.free_node_slots.push(id.0);
    }

    /// Pixel-frames per second of `node` at job cost 1 for `key`.
    pub(crate) fn node_pixel_fps(&self, node: &Node, key: SpeedKey) -> f64 {
        node.speed
            .get(&key)
            .copied()
            .unwrap_or(node.calib_pixel_fps)
    }

    /// Folds a finished chunk's measured speed into the node's and the job's
    /// averages: the node's speed at cost 1 and the job's cost relative to
    /// it, so one slow shader does not make every node look slow.
    pub(crate) fn learn_speed(&mut self, id: NodeId, job: u64, frames: u64, elapsed_ms: u64) {
        if frames == 0 || elapsed_ms == 0 {
            return;
        }
        let alpha = self.config.speed_ewma_alpha;
        let Some(j) = self.jobs.get(&job) else { return };
        let (key, pixels, cost) = (j.speed_key, job_pixels(&j.spec), j.cost);
        let Some(n) = self.node(id) else { return };
        let observed_fps = frames as f64 * 1000.0 / elapsed_ms as f64;
        let predicted_fps = self.node_pixel_fps(n, key) / (pixels * cost);
        // The job's cost moves by how far this node's prediction was off,
        // then the node's speed absorbs what the cost did not explain.
        let new_cost =
            (cost * (1.0 - alpha) + cost * (predicted_fps / observed_fps) * alpha).clamp(1e-3, 1e6);
        let sample = observed_fps * pixels * new_cost;
        let n = self.node_mut(id).expect("exists");
        let old = n.speed.get(&key).copied().unwrap_or(n.calib_pixel_fps);
        n.speed.insert(key, old * (1.0 - alpha) + sample * alpha);
        if let Some(j) = self.jobs.get_mut(&job) {
            j.cost = new_cost;
        }
    }

    /// Frames per second `node` is expected to render of `job`.
    pub(crate) fn expected_fps(&self, node: NodeId, job: u64) -> f64 {
        let (Some(n), Some(j)) = (self.node(node), self.jobs.get(&job)) else {
            return 1.0;
        };
        (self.node_pixel_fps(n, j.speed_key) / (job_pixels(&j.spec) * j.cost)).max(1e-3)
    }

    /// Counts a failure of `job` on `node` towards quarantine.
    pub(crate) fn note_node_failure(&mut self, id: NodeId, job: u64) {
        let after = self.config.quarantine_after_jobs;
        let Some(n) = self.node_mut(id) else { return };
        if !n.failing_jobs.contains(&job) {
            n.failing_jobs.push(job);
        }
        if n.failing_jobs.len() >= after && n.quarantined.is_none() {
            let jobs: Vec<String> = n.failing_jobs.iter().map(|j| j.to_string()).collect();
            let why = format!(
                "failed {} different jobs in a row ({}); clear with `drover nodes --clear-quarantine {}`",
                jobs.len(),
                jobs.join(", "),
                n.name
            );
            tracing::warn!(node = %n.name, "quarantined: {why}");
            let name = n.name.to_string();
            self.facts.push(Fact::Quarantined {
                node: name.clone(),
                reason: Some(why.clone()),
            });
            self.note_admin(&name, |a| a.quarantined = Some(why.clone()));
            // Quarantine stops new work only; what it holds runs on.
            self.modify_node(id, |n| n.quarantined = Some(why));
        }
    }

    /// An admin clears a node's quarantine.
    /// A node is shutting down: it takes no new work, what it has not
    /// started goes back at once, and its running chunk finishes.
    pub(crate) fn node_leaving(&mut self, now_ms: u64, id: NodeId, cmds: &mut Vec<Command>) {
        if self.node(id).is_none_or(|n| n.leaving || !n.connected) {
            return;
        }
        self.modify_node(id, |n| n.leaving = true);
        self.hand_back(now_ms, id, false, cmds);
    }

    /// Gives back what a node holds but has not started (and, with `now`,
    /// the frames of its running chunk after the one it is on).
    fn hand_back(&mut self, now_ms: u64, id: NodeId, now: bool, cmds: &mut Vec<Command>) {
        let held = self.node(id).map(|n| n.held.clone()).unwrap_or_default();
        let mut touched = Vec::new();
        for key in held {
            let Some(c) = self.jobs.get(&key.0).and_then(|j| j.live.get(&key.1)) else {
                continue;
            };
            if !c.started {
                cmds.push(Command::Cancel {
                    node: id,
                    chunk: key,
                    epoch: c.epoch,
                });
                self.take_back(now_ms, key, cmds);
                touched.push(key.0);
            } else if now && c.shrink.is_none() && c.twin.is_none() {
                let proposed = (c.start + c.frames_done).min(c.end);
                if proposed < c.end {
                    self.send_shrink(now_ms, key, id, proposed, None, None, cmds);
                }
            }
        }
        for j in touched {
            self.dirty.push(j);
            self.offer_job(now_ms, j, cmds);
        }
    }

    /// An admin drains a node (by name, connected or not; remembered
    /// across restarts).
    pub(crate) fn drain(&mut self, now_ms: u64, name: &str, now: bool, cmds: &mut Vec<Command>) {
        self.facts.push(Fact::Drained {
            node: name.to_string(),
            drained: true,
        });
        self.note_admin(name, |a| a.drained = true);
        let Some(id) = self.names.get(name).copied() else {
            return;
        };
        self.modify_node(id, |n| n.drained = true);
        // What it has not started goes back either way; with `now`, the
        // frames of its running chunk after the one it is on too.
        self.hand_back(now_ms, id, now, cmds);
    }

    /// An admin returns a drained node to work.
    pub(crate) fn undrain(&mut self, now_ms: u64, name: &str, cmds: &mut Vec<Command>) {
        self.facts.push(Fact::Drained {
            node: name.to_string(),
            drained: false,
        });
        self.note_admin(name, |a| a.drained = false);
        let Some(id) = self.names.get(name).copied() else {
            return;
        };
        self.modify_node(id, |n| n.drained = false);
        self.fill_node(now_ms, id, cmds);
    }

    /// Whether a node of that name is known (connected now, or remembered).
    pub fn knows_node(&self, name: &str) -> bool {
        self.names.contains_key(name) || self.admin.contains_key(name)
    }

    /// An admin sets a node's tags (`Some`) or gives it back its own
    /// (`None`). A connected node moves to the class of its new
    /// capabilities at once; its running chunks stay; jobs that need the
    /// tags can take it from its next free slot.
    pub(crate) fn set_tags(
        &mut self,
        now_ms: u64,
        name: &str,
        tags: Option<Vec<String>>,
        cmds: &mut Vec<Command>,
    ) {
        self.facts.push(Fact::Tagged {
            node: name.to_string(),
            tags: tags.clone(),
        });
        self.note_admin(name, |a| a.tags = tags.clone());
        let Some(id) = self.names.get(name).copied() else {
            return;
        };
        let Some(n) = self.node(id) else { return };
        let was_connected = n.connected;
        let mut caps = n.caps.clone();
        caps.tags = tags.unwrap_or_else(|| n.own_tags.clone());
        self.set_available(id, false);
        let class = self.class_for(&caps);
        let n = self.node_mut(id).expect("exists");
        n.caps = caps;
        n.class = class;
        // Chunks of jobs it can no longer run go back.
        let keep: Vec<(ChunkKey, u32)> = self.node(id).map_or_else(Vec::new, |n| {
            n.held
                .iter()
                .filter_map(|k| {
                    let j = self.jobs.get(&k.0)?;
                    let c = j.live.get(&k.1)?;
                    j.needs
                        .iter()
                        .all(|need| need.met_by(&n.caps))
                        .then_some((*k, c.epoch))
                })
                .collect()
        });
        self.release_node_except(now_ms, id, &keep, "the node's tags changed", cmds);
        if was_connected {
            self.set_available(id, true);
            self.refresh_schedulable_all();
            self.fill_node(now_ms, id, cmds);
        }
    }

    fn note_admin(&mut self, name: &str, change: impl FnOnce(&mut NodeRecord)) {
        let a = self.admin.entry(name.to_string()).or_default();
        change(a);
        if *a == NodeRecord::default() {
            self.admin.remove(name);
        }
    }

    pub(crate) fn clear_quarantine(&mut self, now_ms: u64, name: &str, cmds: &mut Vec<Command>) {
        let Some(id) = self.names.get(name).copied() else {
            return;
        };
        let n = self.node_mut(id).expect("named");
        if n.quarantined.is_none() {
            return;
        }
        self.facts.push(Fact::Quarantined {
            node: name.to_string(),
            reason: None,
        });
        self.note_admin(name, |a| a.quarantined = None);
        self.modify_node(id, |n| {
            n.quarantined = None;
            n.failing_jobs.clear();
        });
        self.fill_node(now_ms, id, cmds);
    }
}

/// Pixels of a job's frames, in pixels.
pub(crate) fn job_pixels(spec: &drover_shared::spec::JobSpec) -> f64 {
    (spec.resolution.width as f64 * spec.resolution.height as f64).max(1.0)
}

fn calibration_pixel_fps(caps: &Capabilities) -> f64 {
    match caps.calibration {
        Some(c) if c.frames_per_s.is_finite() && c.frames_per_s > 0.0 => {
            c.frames_per_s * c.width as f64 * c.height as f64
        }
        _ => DEFAULT_PIXEL_FPS,
    }
}

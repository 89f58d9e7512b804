//! The discrete-event driver: the scheduler core and simulated nodes on a
//! virtual clock.
//!
//! Everything that happens is an entry in one queue ordered by (time,
//! sequence number): a job arriving, a node joining or leaving, a message
//! reaching the core or a node, a node's render milestone or report tick.
//! Before each entry, the core gets [`Event::Timeout`] if its
//! [`Core::poll_timeout`] deadline is due first. Messages between a node and
//! the core take a few milliseconds and stay in order per node and
//! direction, as on a QUIC control stream.
//!
//! A simulated node behaves like `drover node`: it runs its assignments in
//! order, one at a time; a chunk costs [`CHUNK_SETUP_MS`] before its first
//! frame; each frame takes its cost over the node's current speed; it
//! reports progress at start and every [`TICK_MS`], heartbeats every other
//! tick; when a chunk's last frame is rendered it starts the next chunk at
//! once and, after an encode and upload delay, sends `SegmentStored` and
//! `ChunkDone`. It answers a shrink with the frame it will really stop at.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use drover_coordinator::sched::{
    Assignment, ChunkKey, ChunkReport, Command, Core, Event, Fact, JobId, NodeId,
};
use drover_shared::api::JobState;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::bound;
use super::scenario::{Leave, Scenario, TICK_MS};

pub mod pool;
use super::strategy::Strategy;

/// Time a chunk costs on a node before its first frame (pipeline, encoder
/// start).
pub const CHUNK_SETUP_MS: u64 = 50;
/// Fixed part of the delay between a chunk's last frame and its `ChunkDone`
/// (encoder flush, hashing, upload round trips).
pub const ENCODE_BASE_MS: u64 = 200;
/// Size-proportional part of that delay: pixels encoded and uploaded per
/// millisecond.
pub const ENCODE_PIXELS_PER_MS: f64 = 2_000_000.0;
/// Fastest one-way network delay, ms.
pub const MIN_LINK_MS: u64 = 2;
/// Slowest one-way network delay, ms.
pub const MAX_LINK_MS: u64 = 10;
/// Time to join a job's segments: fixed part, ms.
pub const MUX_BASE_MS: u64 = 50;
/// Time to join a job's segments: per segment, ms.
pub const MUX_PER_SEGMENT_MS: u64 = 2;
/// Seed offset of the driver's own generator (network delays), so that it
/// is not the scenario's stream.
const DRIVER_SEED_SALT: u64 = 0x5EED_D12E_7E12_0001;

/// How a run is driven.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Call `Core::check_invariants` after every event (slow; tests).
    pub check_invariants: bool,
    /// Give up when the virtual clock passes this, ms.
    pub max_sim_ms: u64,
    /// Print every message between the core and the nodes to stderr.
    pub trace: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            check_invariants: false,
            max_sim_ms: 48 * 3600 * 1000,
            trace: false,
        }
    }
}

/// One strategy's figures on one scenario: one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Strategy name.
    pub strategy: String,
    /// The seed that replays this run.
    pub seed: u64,
    /// Faults injected.
    pub faults: bool,
    /// Nodes in the fleet (late joiners included).
    pub nodes: usize,
    /// Jobs.
    pub jobs: usize,
    /// Frames over all jobs.
    pub frames: u64,
    /// Every job reached a final state before the time limit.
    pub finished: bool,
    /// From the start to the last job's end, seconds.
    pub makespan_s: f64,
    /// The lower bound on the makespan (see [`super::bound`]), seconds.
    pub lower_bound_s: f64,
    /// `makespan_s / lower_bound_s`.
    pub ratio: f64,
    /// Work of the stored frames over the fleet's capacity up to the
    /// makespan.
    pub utilization: f64,
    /// Frames moved to another node by stealing.
    pub frames_stolen: u64,
    /// Frames rendered and thrown away (lost nodes, failures, cancelled
    /// speculative copies).
    pub frames_wasted: u64,
    /// Assignments sent.
    pub chunks: u64,
    /// Chunks the nodes reported failed.
    pub chunk_failures: u64,
    /// Jobs done.
    pub jobs_done: usize,
    /// Jobs failed.
    pub jobs_failed: usize,
    /// Frames left out of done jobs (given up on).
    pub frames_missing: u64,
    /// Decisions: events and submissions the core handled.
    pub decisions: u64,
    /// Commands the core returned.
    pub commands: u64,
    /// Decisions per second of wall time spent in the core (the one
    /// figure that is not deterministic).
    pub decisions_per_s: f64,
}

/// How one job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    /// Scenario name.
    pub name: String,
    /// Final state (or the last one, if the run hit its time limit).
    pub state: JobState,
    /// Frames in the job.
    pub frames_total: u64,
    /// Frames in stored segments.
    pub frames_done: u64,
    /// Frames given up on.
    pub missing: Vec<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Stored segments as (first, last) frame, in order.
    pub segments: Vec<(u64, u64)>,
}

/// A run's figures and what became of each job.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The figures.
    pub report: Report,
    /// Every job, in scenario order.
    pub jobs: Vec<JobOutcome>,
    /// Hellos the core refused (a simulated fleet should have none).
    pub refused: u64,
}

/// Runs `strategy` on `sc`.
pub fn run(sc: &Scenario, strategy: Strategy, opts: &RunOptions) -> RunResult {
    let mut w = World::new(sc, strategy, opts.check_invariants);
    w.trace = opts.trace;
    w.start();
    let finished = w.run_until_done(opts.max_sim_ms);
    w.result(finished)
}

/// A message from the core to a node.
#[derive(Debug, Clone)]
enum NodeMsg {
    Assign(Assignment),
    Cancel(ChunkKey, u32),
    Shrink(ChunkKey, u32, u64),
}

/// Something that happens at a moment.
#[derive(Debug, Clone)]
enum SimEvent {
    Submit(usize),
    Join(usize),
    Leave(usize, Leave),
    SpeedChange(usize),
    Crash(usize),
    Tick(usize, u64),
    Wake(usize, u64),
    EncodeDone(usize, u64, ChunkKey, u32),
    /// Boxed: an event is large, and most queue entries are not events.
    ToCore(Box<Event>),
    ToNode(usize, u64, NodeMsg),
    MuxDone(JobId),
    /// The autoscaler looks at its pool (see [`pool`]).
    PoolTick,
}

/// A queue entry, ordered by time then by the order it was queued.
#[derive(Debug)]
struct Scheduled {
    at_ms: u64,
    seq: u64,
    what: SimEvent,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Queued,
    Rendering,
    Encoding,
}

/// A chunk a simulated node holds.
#[derive(Debug, Clone)]
struct Held {
    key: ChunkKey,
    epoch: u32,
    job: usize,
    start: u64,
    end: u64,
    /// The frame being rendered (or `end + 1` when all are).
    next: u64,
    /// Work done on `next`, pixel-frames.
    partial: f64,
    phase: Phase,
    /// First frame's work starts here (after the set-up).
    render_from_ms: u64,
    started_ms: u64,
    rendered_ms: u64,
    /// A pull farm's node starts it at its next poll.
    not_before_ms: u64,
}

/// What the next wake-up of a rendering node is for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Milestone {
    Rendered,
    Poisoned(u64),
}

/// A simulated node's state.
#[derive(Debug, Default)]
struct NodeRt {
    up: bool,
    session: u64,
    core_id: Option<NodeId>,
    held: Vec<Held>,
    gen: u64,
    last_ms: u64,
    planned: Option<(u64, Milestone)>,
    ticks: u64,
    /// Next free moment of its link to the core (messages stay in order).
    up_link_ms: u64,
    /// Next free moment of the core's link to it.
    down_link_ms: u64,
}

struct World<'a> {
    sc: &'a Scenario,
    strategy: Strategy,
    core: Core,
    check: bool,
    trace: bool,
    now: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    rng: StdRng,
    nodes: Vec<NodeRt>,
    by_session: HashMap<u64, usize>,
    by_core: HashMap<NodeId, usize>,
    next_session: u64,
    /// Core job id of each scenario job, once submitted.
    job_ids: Vec<Option<JobId>>,
    job_index: HashMap<JobId, usize>,
    ended: BTreeSet<JobId>,
    end_ms: u64,
    decisions: u64,
    commands: u64,
    chunks: u64,
    chunk_failures: u64,
    refused: u64,
    core_time: Duration,
    /// The autoscaler and its pool, when the fleet is one (see [`pool`]):
    /// then nodes join and leave by its decisions, not the scenario's
    /// uptimes.
    pool: Option<pool::PoolSim>,
}

impl<'a> World<'a> {
    fn new(sc: &'a Scenario, strategy: Strategy, check: bool) -> World<'a> {
        World {
            sc,
            strategy,
            core: Core::new(strategy.config()),
            check,
            trace: false,
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(sc.params.seed ^ DRIVER_SEED_SALT),
            nodes: (0..sc.nodes.len()).map(|_| NodeRt::default()).collect(),
            by_session: HashMap::new(),
            by_core: HashMap::new(),
            next_session: 1,
            job_ids: vec![None; sc.jobs.len()],
            job_index: HashMap::new(),
            ended: BTreeSet::new(),
            end_ms: 0,
            decisions: 0,
            commands: 0,
            chunks: 0,
            chunk_failures: 0,
            refused: 0,
            core_time: Duration::ZERO,
            pool: None,
        }
    }

    fn at(&mut self, at_ms: u64, what: SimEvent) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at_ms,
            seq: self.seq,
            what,
        }));
    }

    /// Queues the scenario's fixed moments.
    fn start(&mut self) {
        let sc = self.sc;
        for (i, j) in sc.jobs.iter().enumerate() {
            self.at(j.arrival_ms, SimEvent::Submit(i));
        }
        if self.pool.is_some() {
            self.at(0, SimEvent::PoolTick);
        }
        for (i, n) in sc.nodes.iter().enumerate() {
            // An autoscaled pool's nodes come and go by its decisions.
            let uptime: &[super::scenario::Uptime] =
                if self.pool.is_some() { &[] } else { &n.uptime };
            for up in uptime {
                self.at(up.from_ms, SimEvent::Join(i));
                if let Some((t, how)) = up.to {
                    self.at(t, SimEvent::Leave(i, how));
                }
            }
            for e in &n.episodes {
                self.at(e.from_ms, SimEvent::SpeedChange(i));
                self.at(e.to_ms, SimEvent::SpeedChange(i));
            }
            for &t in &n.crashes_ms {
                self.at(t, SimEvent::Crash(i));
            }
        }
    }

    /// Runs until every job has ended or the clock passes `max_ms`; true
    /// when every job ended.
    fn run_until_done(&mut self, max_ms: u64) -> bool {
        loop {
            if self.ended.len() == self.sc.jobs.len() {
                return true;
            }
            let next_event = self.queue.peek().map(|e| e.0.at_ms);
            let deadline = self.core.poll_timeout();
            let core_first = match (deadline, next_event) {
                (Some(d), Some(e)) => d <= e,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return false,
            };
            let t = if core_first { deadline } else { next_event }.expect("one is set");
            if t > max_ms {
                return false;
            }
            self.now = self.now.max(t);
            if core_first {
                self.deliver(Event::Timeout);
            } else {
                let Reverse(e) = self.queue.pop().expect("peeked");
                self.dispatch(e.what);
            }
        }
    }

    fn dispatch(&mut self, what: SimEvent) {
        match what {
            SimEvent::Submit(j) => {
                let spec = self.sc.jobs[j].spec();
                let t = Instant::now();
                let (id, cmds) = self.core.submit(self.now, spec, Default::default());
                self.core_time += t.elapsed();
                self.decisions += 1;
                self.job_ids[j] = Some(id);
                self.job_index.insert(id, j);
                if self.check {
                    self.core.check_invariants();
                }
                self.apply(cmds);
            }
            SimEvent::Join(i) => self.join(i),
            SimEvent::Leave(i, how) => self.leave(i, how),
            SimEvent::SpeedChange(i) => {
                if self.nodes[i].up {
                    self.advance(i);
                    self.replan(i);
                }
            }
            SimEvent::Crash(i) => self.crash(i),
            SimEvent::Tick(i, session) => self.tick(i, session),
            SimEvent::Wake(i, gen) => self.wake(i, gen),
            SimEvent::EncodeDone(i, session, key, epoch) => {
                self.encode_done(i, session, key, epoch)
            }
            SimEvent::ToCore(ev) => self.deliver(*ev),
            SimEvent::ToNode(i, session, msg) => {
                if self.nodes[i].up && self.nodes[i].session == session {
                    self.node_msg(i, msg);
                }
            }
            SimEvent::MuxDone(job) => self.deliver(Event::MuxDone {
                job,
                output: format!("out/{job}.mp4"),
            }),
            SimEvent::PoolTick => self.pool_tick(),
        }
    }

    /// Hands an event to the core now and carries out its commands.
    fn deliver(&mut self, ev: Event) {
        if self.trace && ev != Event::Timeout {
            eprintln!("{:>9} -> core {}", self.now, brief_event(&ev));
        }
        let t = Instant::now();
        let cmds = self.core.handle(self.now, ev);
        self.core_time += t.elapsed();
        self.decisions += 1;
        if self.check {
            self.core.check_invariants();
        }
        self.apply(cmds);
    }

    fn link_delay(&mut self) -> u64 {
        self.rng.random_range(MIN_LINK_MS..=MAX_LINK_MS)
    }

    /// A node sends an event: it reaches the core after a network delay,
    /// after everything the node sent before.
    fn send(&mut self, i: usize, ev: Event) {
        let d = self.link_delay();
        let at = (self.now + d).max(self.nodes[i].up_link_ms);
        self.nodes[i].up_link_ms = at;
        self.at(at, SimEvent::ToCore(Box::new(ev)));
    }

    /// The core sends a message to the node `id` is now.
    fn send_to_node(&mut self, id: NodeId, msg: NodeMsg) {
        let Some(&i) = self.by_core.get(&id) else {
            return;
        };
        if !self.nodes[i].up || self.nodes[i].core_id != Some(id) {
            return;
        }
        let d = self.link_delay();
        let n = &mut self.nodes[i];
        let at = (self.now + d).max(n.down_link_ms);
        n.down_link_ms = at;
        let session = n.session;
        self.at(at, SimEvent::ToNode(i, session, msg));
    }

    fn apply(&mut self, cmds: Vec<Command>) {
        // What the driver would journal: every job that ends (done,
        // failed, cancelled) says so in exactly one fact.
        for f in self.core.take_facts() {
            if let Fact::Output { job, .. } | Fact::Ended { job, .. } = f {
                if self.ended.insert(job) {
                    self.end_ms = self.now;
                }
            }
        }
        self.commands += cmds.len() as u64;
        for c in cmds {
            if self.trace {
                eprintln!("{:>9} <- core {}", self.now, brief_command(&c));
            }
            match c {
                Command::Welcome { session, node } => {
                    if let Some(&i) = self.by_session.get(&session) {
                        if self.nodes[i].session == session {
                            self.nodes[i].core_id = Some(node);
                            self.by_core.insert(node, i);
                        }
                    }
                }
                Command::Refuse { .. } => self.refused += 1,
                Command::CloseSession { .. } | Command::Discard { .. } => {}
                Command::Assign { node, assignment } => {
                    self.chunks += 1;
                    self.send_to_node(node, NodeMsg::Assign(assignment));
                }
                Command::Cancel { node, chunk, epoch } => {
                    self.send_to_node(node, NodeMsg::Cancel(chunk, epoch))
                }
                Command::Shrink {
                    node,
                    chunk,
                    epoch,
                    proposed_end,
                } => self.send_to_node(node, NodeMsg::Shrink(chunk, epoch, proposed_end)),
                Command::Mux { job, segments } => {
                    let at = self.now + MUX_BASE_MS + MUX_PER_SEGMENT_MS * segments.len() as u64;
                    self.at(at, SimEvent::MuxDone(job));
                }
            }
        }
    }

    // ---- nodes ----

    fn join(&mut self, i: usize) {
        let session = self.next_session;
        self.next_session += 1;
        let spec = &self.sc.nodes[i];
        let n = &mut self.nodes[i];
        *n = NodeRt {
            up: true,
            session,
            last_ms: self.now,
            up_link_ms: n.up_link_ms,
            down_link_ms: n.down_link_ms,
            gen: n.gen + 1,
            ..NodeRt::default()
        };
        self.by_session.insert(session, i);
        let hello = Event::Hello {
            session,
            name: spec.name.clone(),
            node_id: spec.name.clone(),
            caps: Box::new(spec.capabilities()),
            running: Vec::new(),
            spooled: Vec::new(),
        };
        self.send(i, hello);
        self.at(self.now + spec.tick_phase_ms, SimEvent::Tick(i, session));
    }

    fn leave(&mut self, i: usize, how: Leave) {
        let n = &mut self.nodes[i];
        if !n.up {
            return;
        }
        n.up = false;
        n.held.clear();
        n.gen += 1;
        n.planned = None;
        let (session, id) = (n.session, n.core_id.take());
        self.by_session.remove(&session);
        if let Some(id) = id {
            if self.by_core.get(&id) == Some(&i) {
                self.by_core.remove(&id);
            }
            if how == Leave::Disconnect {
                // The connection closed: the driver tells the core at once.
                self.deliver(Event::Disconnected { node: id, session });
            }
        }
    }

    /// Current rendering rate, pixel-frames per ms.
    fn rate(&self, i: usize, t_ms: u64) -> f64 {
        let spec = &self.sc.nodes[i];
        spec.speed_px_s / 1000.0 * spec.speed_factor_at(t_ms)
    }

    fn active(&self, i: usize) -> Option<usize> {
        self.nodes[i]
            .held
            .iter()
            .position(|h| h.phase == Phase::Rendering)
    }

    /// Renders from the last update to now at the rate that held since.
    fn advance(&mut self, i: usize) {
        let now = self.now;
        let last = self.nodes[i].last_ms;
        let rate = self.rate(i, last);
        self.nodes[i].last_ms = now;
        let Some(a) = self.active(i) else { return };
        let h = &self.nodes[i].held[a];
        let from = last.max(h.render_from_ms);
        if now <= from || h.next > h.end {
            return;
        }
        let job = &self.sc.jobs[h.job];
        let limit = match job.poison_frame.filter(|p| (h.next..=h.end).contains(p)) {
            Some(p) => job.work_before(p) + 0.5 * job.work(p, p),
            None => job.work_before(h.end + 1),
        };
        let pos = (job.work_before(h.next) + h.partial + rate * (now - from) as f64).min(limit);
        let next = job.frame_at(pos).min(h.end + 1);
        let partial = if next > h.end {
            0.0
        } else {
            pos - job.work_before(next)
        };
        let h = &mut self.nodes[i].held[a];
        h.next = next;
        h.partial = partial;
    }

    /// Starts the next queued chunk if nothing renders.
    fn try_start(&mut self, i: usize) {
        if self.active(i).is_some() {
            return;
        }
        let now = self.now;
        let Some(q) = self.nodes[i]
            .held
            .iter()
            .position(|h| h.phase == Phase::Queued)
        else {
            return;
        };
        let h = &mut self.nodes[i].held[q];
        if h.not_before_ms > now {
            return;
        }
        h.phase = Phase::Rendering;
        h.started_ms = now;
        h.render_from_ms = now + CHUNK_SETUP_MS;
        h.next = h.start;
        h.partial = 0.0;
        let report = ChunkReport {
            chunk: h.key,
            epoch: h.epoch,
            frames_done: 0,
        };
        self.nodes[i].last_ms = now;
        if let Some(node) = self.nodes[i].core_id {
            self.send(i, Event::Progress { node, report });
        }
    }

    /// Plans the node's next wake-up: the rendering chunk's end (or its
    /// poisoned frame), or the moment a queued chunk may start.
    fn replan(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].gen += 1;
        self.nodes[i].planned = None;
        let gen = self.nodes[i].gen;
        if let Some(a) = self.active(i) {
            let h = &self.nodes[i].held[a];
            let job = &self.sc.jobs[h.job];
            let (limit, milestone) = match job.poison_frame.filter(|p| (h.next..=h.end).contains(p))
            {
                Some(p) => (
                    job.work_before(p) + 0.5 * job.work(p, p),
                    Milestone::Poisoned(p),
                ),
                None => (job.work_before(h.end + 1), Milestone::Rendered),
            };
            let remaining = (limit - job.work_before(h.next) - h.partial).max(0.0);
            let from = now.max(h.render_from_ms);
            let rate = self.rate(i, now);
            if rate <= 0.0 {
                // Stalled: the end of the stall replans.
                return;
            }
            let at = from + (remaining / rate).ceil() as u64;
            self.nodes[i].planned = Some((at, milestone));
            self.at(at, SimEvent::Wake(i, gen));
        } else if let Some(h) = self.nodes[i].held.iter().find(|h| h.phase == Phase::Queued) {
            let at = h.not_before_ms.max(now);
            self.at(at, SimEvent::Wake(i, gen));
        }
    }

    fn wake(&mut self, i: usize, gen: u64) {
        if !self.nodes[i].up || self.nodes[i].gen != gen {
            return;
        }
        self.advance(i);
        if let (Some(a), Some((at, milestone))) = (self.active(i), self.nodes[i].planned) {
            if self.now >= at {
                match milestone {
                    Milestone::Rendered => {
                        let now = self.now;
                        let session = self.nodes[i].session;
                        let h = &mut self.nodes[i].held[a];
                        h.next = h.end + 1;
                        h.partial = 0.0;
                        h.phase = Phase::Encoding;
                        h.rendered_ms = now;
                        let pixels = self.sc.jobs[h.job].pixels() * (h.end - h.start + 1) as f64;
                        let delay = ENCODE_BASE_MS + (pixels / ENCODE_PIXELS_PER_MS) as u64;
                        let (key, epoch) = (h.key, h.epoch);
                        self.at(now + delay, SimEvent::EncodeDone(i, session, key, epoch));
                    }
                    Milestone::Poisoned(frame) => {
                        let h = self.nodes[i].held.remove(a);
                        self.chunk_failures += 1;
                        if let Some(node) = self.nodes[i].core_id {
                            self.send(
                                i,
                                Event::ChunkFailed {
                                    node,
                                    chunk: h.key,
                                    epoch: h.epoch,
                                    reason: format!(
                                        "frame {frame} fails to render (simulated bad frame)"
                                    ),
                                    failed_frame: Some(frame),
                                    log_tail: String::new(),
                                },
                            );
                        }
                    }
                }
            }
        }
        self.try_start(i);
        self.replan(i);
    }

    fn encode_done(&mut self, i: usize, session: u64, key: ChunkKey, epoch: u32) {
        let n = &mut self.nodes[i];
        if !n.up || n.session != session {
            return;
        }
        let Some(pos) = n
            .held
            .iter()
            .position(|h| h.key == key && h.epoch == epoch && h.phase == Phase::Encoding)
        else {
            return;
        };
        let h = n.held.remove(pos);
        let Some(node) = n.core_id else { return };
        let hash = format!("{:x}-{}-{}-{}-{}", key.0, key.1, epoch, h.start, h.end);
        self.send(
            i,
            Event::SegmentStored {
                node,
                chunk: key,
                epoch,
                start: h.start,
                end: h.end,
                segment: format!("segments/{}/{}-{}.mp4", key.0, h.start, h.end),
                hash: hash.clone(),
            },
        );
        self.send(
            i,
            Event::ChunkDone {
                node,
                chunk: key,
                epoch,
                start: h.start,
                end: h.end,
                hash,
                elapsed_ms: h.rendered_ms.saturating_sub(h.started_ms).max(1),
            },
        );
    }

    fn crash(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        let Some(a) = self.active(i) else { return };
        if self.now < self.nodes[i].held[a].render_from_ms {
            return;
        }
        self.advance(i);
        let h = self.nodes[i].held.remove(a);
        self.chunk_failures += 1;
        if let Some(node) = self.nodes[i].core_id {
            self.send(
                i,
                Event::ChunkFailed {
                    node,
                    chunk: h.key,
                    epoch: h.epoch,
                    reason: "renderer crashed (simulated)".into(),
                    failed_frame: Some(h.next.min(h.end)),
                    log_tail: String::new(),
                },
            );
        }
        self.try_start(i);
        self.replan(i);
    }

    fn tick(&mut self, i: usize, session: u64) {
        let n = &self.nodes[i];
        if !n.up || n.session != session {
            return;
        }
        self.advance(i);
        let n = &mut self.nodes[i];
        n.ticks += 1;
        let heartbeat = n.ticks.is_multiple_of(2);
        let report = |h: &Held| ChunkReport {
            chunk: h.key,
            epoch: h.epoch,
            frames_done: h.next.min(h.end + 1) - h.start,
        };
        let ev = match n.core_id {
            Some(node) if heartbeat => Some(Event::Heartbeat {
                node,
                cpu_load_pct: 100.0,
                memory_load_pct: 50.0,
                chunks: n
                    .held
                    .iter()
                    .filter(|h| h.phase != Phase::Queued)
                    .map(report)
                    .collect(),
            }),
            Some(node) => n
                .held
                .iter()
                .find(|h| h.phase == Phase::Rendering)
                .map(|h| Event::Progress {
                    node,
                    report: report(h),
                }),
            None => None,
        };
        if let Some(ev) = ev {
            self.send(i, ev);
        }
        self.at(self.now + TICK_MS, SimEvent::Tick(i, session));
    }

    fn node_msg(&mut self, i: usize, msg: NodeMsg) {
        match msg {
            NodeMsg::Assign(a) => {
                let now = self.now;
                let not_before_ms = match self.strategy.poll_interval_ms() {
                    Some(every) => {
                        let phase = self.sc.nodes[i].poll_phase_ms;
                        now + (phase + every - now % every) % every
                    }
                    None => now,
                };
                let Some(&job) = self.job_index.get(&a.chunk.0) else {
                    return;
                };
                self.advance(i);
                self.nodes[i].held.push(Held {
                    key: a.chunk,
                    epoch: a.epoch,
                    job,
                    start: a.start,
                    end: a.end,
                    next: a.start,
                    partial: 0.0,
                    phase: Phase::Queued,
                    render_from_ms: 0,
                    started_ms: 0,
                    rendered_ms: 0,
                    not_before_ms,
                });
                if self.active(i).is_none() {
                    self.try_start(i);
                    self.replan(i);
                }
            }
            NodeMsg::Cancel(key, epoch) => {
                let Some(pos) = self.nodes[i]
                    .held
                    .iter()
                    .position(|h| h.key == key && h.epoch == epoch)
                else {
                    return;
                };
                self.advance(i);
                let was = self.nodes[i].held.remove(pos);
                if was.phase == Phase::Rendering {
                    self.try_start(i);
                    self.replan(i);
                }
            }
            NodeMsg::Shrink(key, epoch, proposed_end) => {
                let Some(pos) = self.nodes[i]
                    .held
                    .iter()
                    .position(|h| h.key == key && h.epoch == epoch)
                else {
                    if let Some(node) = self.nodes[i].core_id {
                        self.send(
                            i,
                            Event::ShrinkAck {
                                node,
                                chunk: key,
                                epoch,
                                end: None,
                            },
                        );
                    }
                    return;
                };
                self.advance(i);
                let now = self.now;
                let h = &mut self.nodes[i].held[pos];
                // The node stops after the frame it is on; a frame already
                // started is finished, and an encoded chunk cannot shrink.
                let end = match h.phase {
                    Phase::Encoding => h.end,
                    Phase::Rendering if now >= h.render_from_ms => {
                        proposed_end.max(h.next).min(h.end)
                    }
                    _ => proposed_end.max(h.start).min(h.end),
                };
                let changed = end != h.end;
                h.end = end;
                let rendering = h.phase == Phase::Rendering;
                if let Some(node) = self.nodes[i].core_id {
                    self.send(
                        i,
                        Event::ShrinkAck {
                            node,
                            chunk: key,
                            epoch,
                            end: Some(end),
                        },
                    );
                }
                if changed && rendering {
                    self.replan(i);
                }
            }
        }
    }

    // ---- results ----

    fn result(&self, finished: bool) -> RunResult {
        let sc = self.sc;
        let mut jobs = Vec::new();
        let (mut stolen, mut wasted, mut useful) = (0u64, 0u64, 0.0f64);
        let (mut done, mut failed, mut missing) = (0usize, 0usize, 0u64);
        for (ix, j) in sc.jobs.iter().enumerate() {
            let record = self.job_ids[ix].and_then(|id| self.core.record(id));
            let Some(r) = record else {
                jobs.push(JobOutcome {
                    name: j.name.clone(),
                    state: JobState::Queued,
                    frames_total: j.frames,
                    frames_done: 0,
                    missing: Vec::new(),
                    error: Some("never submitted".into()),
                    segments: Vec::new(),
                });
                continue;
            };
            stolen += r.frames_stolen;
            wasted += r.frames_wasted;
            let segments: Vec<(u64, u64)> = r.done.iter().map(|(s, d)| (*s, d.end)).collect();
            useful += segments.iter().map(|(s, e)| j.work(*s, *e)).sum::<f64>();
            match r.state {
                JobState::Done => {
                    done += 1;
                    missing += r.missing.len() as u64;
                }
                JobState::Failed => failed += 1,
                _ => {}
            }
            jobs.push(JobOutcome {
                name: j.name.clone(),
                state: r.state,
                frames_total: j.frames,
                frames_done: segments.iter().map(|(s, e)| e - s + 1).sum(),
                missing: r.missing.clone(),
                error: r.error.clone(),
                segments,
            });
        }
        let makespan_ms = if finished { self.end_ms } else { self.now };
        let lower_bound_ms = bound::lower_bound_ms(sc);
        let capacity = bound::capacity(sc, makespan_ms as f64);
        let secs = self.core_time.as_secs_f64();
        let report = Report {
            strategy: self.strategy.name().to_string(),
            seed: sc.params.seed,
            faults: sc.params.faults,
            nodes: sc.nodes.len(),
            jobs: sc.jobs.len(),
            frames: sc.frames(),
            finished,
            makespan_s: round3(makespan_ms as f64 / 1000.0),
            lower_bound_s: round3(lower_bound_ms / 1000.0),
            ratio: round3(makespan_ms as f64 / lower_bound_ms),
            utilization: round3(if capacity > 0.0 {
                useful / capacity
            } else {
                0.0
            }),
            frames_stolen: stolen,
            frames_wasted: wasted,
            chunks: self.chunks,
            chunk_failures: self.chunk_failures,
            jobs_done: done,
            jobs_failed: failed,
            frames_missing: missing,
            decisions: self.decisions,
            commands: self.commands,
            decisions_per_s: if secs > 0.0 {
                (self.decisions as f64 / secs).round()
            } else {
                0.0
            },
        };
        RunResult {
            report,
            jobs,
            refused: self.refused,
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One line about an event, for `--trace`.
fn brief_event(ev: &Event) -> String {
    match ev {
        Event::Hello { session, name, .. } => format!("hello {name} session {session}"),
        Event::Progress { node, report } => format!(
            "progress node {} chunk {:?} epoch {} frames {}",
            node.0, report.chunk, report.epoch, report.frames_done
        ),
        Event::Heartbeat { node, chunks, .. } => {
            let c: Vec<String> = chunks
                .iter()
                .map(|r| format!("{:?}:{}", r.chunk, r.frames_done))
                .collect();
            format!("heartbeat node {} [{}]", node.0, c.join(" "))
        }
        other => format!("{other:?}"),
    }
}

/// One line about a command, for `--trace`.
fn brief_command(c: &Command) -> String {
    match c {
        Command::Assign {
            node,
            assignment: a,
        } => format!(
            "assign node {} chunk {:?} epoch {} frames {}-{} ({})",
            node.0,
            a.chunk,
            a.epoch,
            a.start,
            a.end,
            a.end - a.start + 1
        ),
        Command::Mux { job, segments } => format!("mux job {job} ({} segments)", segments.len()),
        other => format!("{other:?}"),
    }
}

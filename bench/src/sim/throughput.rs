//! Scheduler throughput and memory at farm scale: 10,000 nodes and
//! 1,000,000 queued frames across 100 jobs, with the default (Drover)
//! configuration.
//!
//! Memory is measured with [`super::alloc::CountingAlloc`] as net bytes
//! the core keeps: per idle node (nodes connected to an empty core), per
//! queued frame (jobs submitted with no node connected), and per node
//! connected to the loaded core (which gives each node its first chunks).
//!
//! Throughput: every node completes each chunk the moment it gets it
//! (`Progress` at start, `SegmentStored`, `ChunkDone`; shrinks answered at
//! once), until every frame is done. The virtual clock stands still, so no
//! deadline fires and only chunk traffic is measured: each call to
//! [`Core::handle`] is a decision, timed alone on this one thread.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use drover_coordinator::sched::{ChunkKey, ChunkReport, Command, Core, CoreConfig, Event, NodeId};
use drover_shared::caps::{Adapter, Calibration, Capabilities, DeviceType};
use drover_shared::spec::{
    FrameSpan, GpuRequirement, JobSpec, OutputSpec, RenderKind, RenderSpec, Requirements,
    Resolution,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::alloc;
use super::scenario::{CALIBRATION_HEIGHT, CALIBRATION_WIDTH};

/// Speed of the simulated nodes, frames per second of the throughput jobs
/// (which render at the calibration size): slow enough that Drover's 20 s
/// chunks hold about ten frames, so a million frames make about 100,000
/// chunks.
const NODE_FPS: [f64; 4] = [0.4, 0.5, 0.6, 0.8];
/// The clock the whole measurement runs at, ms.
const NOW_MS: u64 = 1_000;

/// Size of the throughput run.
#[derive(Debug, Clone, PartialEq)]
pub struct ThroughputParams {
    /// Seed (node speeds, job priorities).
    pub seed: u64,
    /// Nodes.
    pub nodes: u32,
    /// Queued frames over all jobs.
    pub frames: u64,
    /// Jobs.
    pub jobs: u32,
}

impl ThroughputParams {
    /// The figures: 10,000 nodes, 1,000,000 frames, 100 jobs.
    pub fn new(seed: u64) -> ThroughputParams {
        ThroughputParams {
            seed,
            nodes: 10_000,
            frames: 1_000_000,
            jobs: 100,
        }
    }
}

/// The throughput run's figures: one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    /// Always `throughput`.
    pub mode: &'static str,
    /// Seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: u32,
    /// Jobs.
    pub jobs: u32,
    /// Frames queued at the start.
    pub frames_queued: u64,
    /// Frames done at the end.
    pub frames_done: u64,
    /// Jobs that reached `done`.
    pub jobs_done: u64,
    /// Assignments.
    pub chunks: u64,
    /// Decisions timed: events handled after the fleet connected.
    pub decisions: u64,
    /// Commands those decisions returned.
    pub commands: u64,
    /// Seconds spent inside `Core::handle` for them.
    pub core_s: f64,
    /// Decisions per second inside the core.
    pub decisions_per_s: f64,
    /// Commands per second inside the core.
    pub commands_per_s: f64,
    /// Decisions per second of the whole loop, driver included.
    pub loop_decisions_per_s: f64,
    /// Decisions per second of CPU time this thread spent in the loop,
    /// driver included (Linux schedstat): unlike the wall-clock figures,
    /// not lowered by other load on the machine.
    pub loop_decisions_per_cpu_s: Option<f64>,
    /// Net bytes the core keeps per connected idle node (no jobs).
    pub bytes_per_node: Option<f64>,
    /// Net bytes the core keeps per queued frame (no node connected).
    pub bytes_per_queued_frame: Option<f64>,
    /// Net bytes per node connected to the loaded core, its first
    /// assignments included.
    pub bytes_per_node_loaded: Option<f64>,
}

fn caps(kind: usize, fps: f64) -> Capabilities {
    let gpu = kind < 2;
    let adapter = Adapter {
        name: if gpu {
            format!("Simulated GPU model {kind}")
        } else {
            "llvmpipe (LLVM 15.0.6, 256 bits)".into()
        },
        backend: "Vulkan".into(),
        device_type: if gpu {
            DeviceType::DiscreteGpu
        } else {
            DeviceType::Cpu
        },
        vendor: if gpu { "nvidia" } else { "mesa" }.into(),
        vram_bytes: gpu.then_some(16 << 30),
    };
    Capabilities {
        hostname: String::new(),
        os: "Linux (simulated)".into(),
        cpu_brand: "Simulated CPU".into(),
        cpu_cores: if kind == 3 { 32 } else { 16 },
        memory_bytes: 64 << 30,
        adapters: vec![adapter.clone()],
        render_adapter: Some(adapter),
        encoders: vec!["libx264".into()],
        tags: Vec::new(),
        pool: String::new(),
        calibration: Some(Calibration {
            frames_per_s: fps,
            width: CALIBRATION_WIDTH,
            height: CALIBRATION_HEIGHT,
        }),
        test_override: Some("simulated node".into()),
    }
}

fn hello(i: u32, kind: usize, fps: f64) -> Event {
    Event::Hello {
        session: i as u64 + 1,
        name: format!("node-{i:05}"),
        node_id: format!("id-{i:05}"),
        caps: Box::new(caps(kind, fps)),
        running: Vec::new(),
        spooled: Vec::new(),
    }
}

fn spec(j: u32, first: u64, frames: u64, priority: u8, gpu: bool) -> JobSpec {
    JobSpec {
        name: format!("throughput-{j:03}"),
        frames: FrameSpan {
            start: first,
            end: first + frames - 1,
        },
        fps: 24,
        resolution: Resolution {
            width: CALIBRATION_WIDTH,
            height: CALIBRATION_HEIGHT,
        },
        render: RenderSpec {
            kind: RenderKind::Shader,
            shader: Some("plasma".into()),
            path: None,
            source: None,
        },
        output: OutputSpec::default(),
        requirements: Requirements {
            gpu: if gpu {
                GpuRequirement::Required
            } else {
                GpuRequirement::Any
            },
            ..Requirements::default()
        },
        priority,
        project: "default".into(),
        max_nodes: None,
        chunk_target_s: None,
        allow_missing_frames: false,
        frame_timeout_s: None,
        webhooks: Vec::new(),
    }
}

/// Net bytes `f` leaves allocated, less the command vector it returns
/// (the driver's to drop), when the counting allocator is installed.
fn kept_bytes(f: impl FnOnce() -> Vec<Command>) -> (Vec<Command>, i64) {
    let before = alloc::net_bytes();
    let cmds = f();
    let after = alloc::net_bytes();
    let out = (cmds.capacity() * std::mem::size_of::<Command>()) as i64;
    (cmds, after - before - out)
}

/// A chunk a simulated node has been given and not yet completed.
struct Live {
    node: NodeId,
    epoch: u32,
    start: u64,
    end: u64,
}

/// The driver's side of the run.
struct Drive {
    fifo: VecDeque<ChunkKey>,
    answers: VecDeque<Event>,
    live: HashMap<ChunkKey, Live>,
    fps: Vec<f64>,
    chunks: u64,
    jobs_done: u64,
}

impl Drive {
    fn absorb(&mut self, cmds: Vec<Command>) {
        for c in cmds {
            match c {
                Command::Assign {
                    node,
                    assignment: a,
                } => {
                    self.chunks += 1;
                    self.live.insert(
                        a.chunk,
                        Live {
                            node,
                            epoch: a.epoch,
                            start: a.start,
                            end: a.end,
                        },
                    );
                    self.fifo.push_back(a.chunk);
                }
                Command::Cancel { chunk, epoch, .. }
                    if self.live.get(&chunk).is_some_and(|l| l.epoch == epoch) =>
                {
                    self.live.remove(&chunk);
                }
                Command::Shrink {
                    node,
                    chunk,
                    epoch,
                    proposed_end,
                } => {
                    // Nothing is started until it completes: the node stops
                    // where it was asked to.
                    let end = match self.live.get_mut(&chunk) {
                        Some(l) if l.epoch == epoch => {
                            l.end = proposed_end.max(l.start).min(l.end);
                            Some(l.end)
                        }
                        _ => None,
                    };
                    self.answers.push_back(Event::ShrinkAck {
                        node,
                        chunk,
                        epoch,
                        end,
                    });
                }
                Command::Mux { job, .. } => self.answers.push_back(Event::MuxDone {
                    job,
                    output: format!("out/{job}.mp4"),
                }),
                Command::Discard { .. } => self.jobs_done += 1,
                _ => {}
            }
        }
    }
}

/// Runs the throughput measurement.
pub fn run(p: &ThroughputParams) -> ThroughputReport {
    let counting = alloc::is_counting();
    let mut rng = StdRng::seed_from_u64(p.seed);
    let kinds: Vec<(usize, f64)> = (0..p.nodes)
        .map(|_| {
            let kind = rng.random_range(0..NODE_FPS.len());
            (kind, NODE_FPS[kind] * rng.random_range(0.9..1.1))
        })
        .collect();
    let per_job = p.frames / p.jobs.max(1) as u64;
    let jobs: Vec<(u8, bool)> = (0..p.jobs)
        .map(|_| (rng.random_range(30..=80), rng.random_bool(0.1)))
        .collect();

    // Memory per idle node: an empty core.
    let mut idle = Core::new(CoreConfig::default());
    let mut node_bytes = 0;
    for (i, &(kind, fps)) in kinds.iter().enumerate() {
        let (_, b) = kept_bytes(|| idle.handle(0, hello(i as u32, kind, fps)));
        node_bytes += b;
    }
    drop(idle);

    // Memory per queued frame: jobs and no node.
    let mut core = Core::new(CoreConfig::default());
    let mut frame_bytes = 0;
    let mut frames_queued = 0;
    for (j, &(priority, gpu)) in jobs.iter().enumerate() {
        let frames = if j as u32 + 1 == p.jobs {
            p.frames - per_job * (p.jobs as u64 - 1)
        } else {
            per_job
        };
        frames_queued += frames;
        let (_, b) = kept_bytes(|| {
            let cmds = core
                .submit(
                    0,
                    spec(j as u32, 1, frames, priority, gpu),
                    Default::default(),
                )
                .1;
            // The acceptance fact leaves for the journal.
            drop(core.take_facts());
            cmds
        });
        frame_bytes += b;
    }

    // The fleet connects to the loaded core and gets its first chunks.
    let mut d = Drive {
        fifo: VecDeque::new(),
        answers: VecDeque::new(),
        live: HashMap::new(),
        fps: Vec::new(),
        chunks: 0,
        jobs_done: 0,
    };
    let mut loaded_bytes = 0;
    for (i, &(kind, fps)) in kinds.iter().enumerate() {
        let (cmds, b) = kept_bytes(|| core.handle(NOW_MS, hello(i as u32, kind, fps)));
        loaded_bytes += b;
        for c in &cmds {
            if let Command::Welcome { node, .. } = c {
                let ix = node.0 as usize;
                if d.fps.len() <= ix {
                    d.fps.resize(ix + 1, 1.0);
                }
                d.fps[ix] = fps;
            }
        }
        d.absorb(cmds);
    }

    // Chunk traffic, timed.
    let (mut decisions, mut commands) = (0u64, 0u64);
    let mut core_time = Duration::ZERO;
    let mut handle = |core: &mut Core, d: &mut Drive, ev: Event| {
        let t = Instant::now();
        let cmds = core.handle(NOW_MS, ev);
        // The driver hands the facts to the journal's thread.
        let facts = core.take_facts();
        core_time += t.elapsed();
        drop(facts);
        decisions += 1;
        commands += cmds.len() as u64;
        d.absorb(cmds);
    };
    let started = Instant::now();
    let cpu_started = thread_cpu_ns();
    loop {
        if let Some(ev) = d.answers.pop_front() {
            handle(&mut core, &mut d, ev);
            continue;
        }
        let Some(key) = d.fifo.pop_front() else { break };
        let Some(l) = d.live.remove(&key) else {
            continue;
        };
        let fps = d.fps.get(l.node.0 as usize).copied().unwrap_or(1.0);
        let frames = l.end - l.start + 1;
        let report = ChunkReport {
            chunk: key,
            epoch: l.epoch,
            frames_done: 0,
        };
        handle(
            &mut core,
            &mut d,
            Event::Progress {
                node: l.node,
                report,
            },
        );
        let hash = format!("{}-{}-{}", key.0, key.1, l.epoch);
        let stored = Event::SegmentStored {
            node: l.node,
            chunk: key,
            epoch: l.epoch,
            start: l.start,
            end: l.end,
            segment: format!("s/{}/{}", key.0, key.1),
            hash: hash.clone(),
        };
        handle(&mut core, &mut d, stored);
        let done = Event::ChunkDone {
            node: l.node,
            chunk: key,
            epoch: l.epoch,
            start: l.start,
            end: l.end,
            hash,
            elapsed_ms: (frames as f64 * 1000.0 / fps).max(1.0) as u64,
        };
        handle(&mut core, &mut d, done);
    }
    let loop_s = started.elapsed().as_secs_f64();
    let loop_cpu_s = match (cpu_started, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => Some((b - a) as f64 / 1e9),
        _ => None,
    };
    let frames_done = core.job_views().iter().map(|j| j.frames_done).sum::<u64>();
    let core_s = core_time.as_secs_f64();
    let per = |bytes: i64, n: u64| {
        (counting && n > 0).then(|| (bytes as f64 / n as f64 * 10.0).round() / 10.0)
    };
    ThroughputReport {
        mode: "throughput",
        seed: p.seed,
        nodes: p.nodes,
        jobs: p.jobs,
        frames_queued,
        frames_done,
        jobs_done: d.jobs_done,
        chunks: d.chunks,
        decisions,
        commands,
        core_s: (core_s * 1000.0).round() / 1000.0,
        decisions_per_s: (decisions as f64 / core_s.max(1e-9)).round(),
        commands_per_s: (commands as f64 / core_s.max(1e-9)).round(),
        loop_decisions_per_s: (decisions as f64 / loop_s.max(1e-9)).round(),
        loop_decisions_per_cpu_s: loop_cpu_s.map(|s| (decisions as f64 / s).round()),
        bytes_per_node: per(node_bytes, p.nodes as u64),
        bytes_per_queued_frame: per(frame_bytes, frames_queued),
        bytes_per_node_loaded: per(loaded_bytes, p.nodes as u64),
    }
}

/// CPU time this thread has run, nanoseconds (Linux: the first field of
/// `/proc/thread-self/schedstat`); `None` elsewhere.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

//! The simulated world, generated from a seed: a heterogeneous fleet, jobs
//! that arrive over time, and (with faults) crashes, departures, late
//! joiners, slowdowns, a stalling node and a frame that always fails.
//!
//! Everything here is drawn up front, in a fixed order, from one seeded
//! generator, and is independent of the strategy: every strategy meets the
//! same fleet, jobs and faults. Faults are tied to wall-clock moments (a
//! node crashes at 83.2 s whatever it is rendering then), not to chunks, so
//! that a strategy cutting more chunks does not meet more faults.

use drover_shared::caps::{Adapter, Calibration, Capabilities, DeviceType};
use drover_shared::spec::{
    FrameSpan, GpuRequirement, JobSpec, OutputSpec, RenderKind, RenderSpec, Requirements,
    Resolution,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Width of the calibration render nodes report their speed at, pixels
/// (what `drover node` renders at start).
pub const CALIBRATION_WIDTH: u32 = 640;
/// Height of the calibration render, pixels.
pub const CALIBRATION_HEIGHT: u32 = 360;
/// Calibration speed of a typical CPU node (lavapipe), frames per second at
/// 640x360: the figure bench/RESULTS.md measured on a 2-core VM, rounded.
pub const CPU_CALIBRATION_FPS: f64 = 30.0;
/// Spread of true speeds within a node kind: each node is its kind's speed
/// times a factor in `1 ± SPEED_SPREAD`.
pub const SPEED_SPREAD: f64 = 0.2;
/// A node's calibration is off from its true speed by up to this fraction
/// (a short calibration render is a noisy measure).
pub const CALIBRATION_NOISE: f64 = 0.1;
/// Nodes connect within this long of the start.
pub const NODE_JOIN_SPREAD_MS: u64 = 1_000;
/// The period of a node's reports (progress every tick, heartbeat every
/// other tick).
pub const TICK_MS: u64 = 500;
/// Poll interval of the pull-based farm the `pull-2s` strategy models.
pub const PULL_POLL_MS: u64 = 2_000;

/// Mean time between render crashes on one node, with faults.
const CRASH_MTBF_MS: f64 = 600_000.0;
/// Crashes are drawn up to this many times the expected makespan (a slow
/// strategy runs longer than the estimate).
const CRASH_HORIZON_FACTOR: f64 = 40.0;
/// Nodes that leave during a faulty run: the first crashes silently (the
/// coordinator reaps it), the others close their connection; all but the
/// last come back.
const LEAVING_NODES: usize = 3;
/// CPU nodes that join late in a faulty run.
const LATE_NODES: u32 = 2;
/// Nodes slowed 3-5x for a while in a faulty run.
const SLOWED_NODES: usize = 4;

/// Knobs of a generated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioParams {
    /// Seed of everything.
    pub seed: u64,
    /// GPU nodes.
    pub gpu_nodes: u32,
    /// CPU nodes.
    pub cpu_nodes: u32,
    /// Speed of a GPU node relative to a CPU node.
    pub gpu_speedup: f64,
    /// Jobs.
    pub jobs: u32,
    /// Fewest frames in a job.
    pub min_frames: u64,
    /// Most frames in a job.
    pub max_frames: u64,
    /// Lowest mean per-frame cost of a job, relative to the calibration
    /// shader at the same size.
    pub min_cost: f64,
    /// Highest mean per-frame cost of a job.
    pub max_cost: f64,
    /// Jobs arrive within this long of the start, milliseconds.
    pub arrival_spread_ms: u64,
    /// Inject faults.
    pub faults: bool,
}

impl ScenarioParams {
    /// The default scenario: 8 GPU nodes at 10x, 24 CPU nodes, a dozen jobs
    /// of 300 to 3,000 frames arriving within the first 5 s.
    pub fn new(seed: u64) -> ScenarioParams {
        ScenarioParams {
            seed,
            gpu_nodes: 8,
            cpu_nodes: 24,
            gpu_speedup: 10.0,
            jobs: 12,
            min_frames: 300,
            max_frames: 3_000,
            min_cost: 2.0,
            max_cost: 12.0,
            arrival_spread_ms: 5_000,
            faults: false,
        }
    }
}

/// How a node leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Its connection closes: the coordinator hears at once.
    Disconnect,
    /// It goes silent: the coordinator reaps it when heartbeats stop.
    Crash,
}

/// A span of time a node is connected.
#[derive(Debug, Clone, PartialEq)]
pub struct Uptime {
    /// Connects (sends its hello), ms.
    pub from_ms: u64,
    /// Leaves, and how; never when `None`.
    pub to: Option<(u64, Leave)>,
}

/// A span of time a node runs at a fraction of its speed.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// Start, ms.
    pub from_ms: u64,
    /// End, ms.
    pub to_ms: u64,
    /// Speed multiplier: 1/3..1/5 for a slowdown, 0 for a stall (a hung
    /// renderer whose agent still heartbeats).
    pub speed_factor: f64,
}

/// A simulated node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// Name (also its persistent node id).
    pub name: String,
    /// Renders on a discrete GPU.
    pub gpu: bool,
    /// True speed: pixel-frames per second at job cost 1.
    pub speed_px_s: f64,
    /// Calibration it reports in its hello, frames per second at 640x360
    /// (its true speed plus noise).
    pub reported_fps: f64,
    /// When it is connected, in order, not overlapping.
    pub uptime: Vec<Uptime>,
    /// Slowdowns and stalls, in order, not overlapping.
    pub episodes: Vec<Episode>,
    /// Moments its render crashes (if it is rendering then), ascending.
    pub crashes_ms: Vec<u64>,
    /// Offset of its 2 s poll ticks (pull strategy), ms.
    pub poll_phase_ms: u64,
    /// Offset of its report ticks, ms.
    pub tick_phase_ms: u64,
}

impl NodeSpec {
    /// Speed multiplier at `t_ms` (episodes are half-open `[from, to)`).
    pub fn speed_factor_at(&self, t_ms: u64) -> f64 {
        self.episodes
            .iter()
            .find(|e| e.from_ms <= t_ms && t_ms < e.to_ms)
            .map_or(1.0, |e| e.speed_factor)
    }

    /// The capabilities it sends in its hello.
    pub fn capabilities(&self) -> Capabilities {
        let adapter = if self.gpu {
            Adapter {
                name: "Simulated RTX 4090".into(),
                backend: "Vulkan".into(),
                device_type: DeviceType::DiscreteGpu,
                vendor: "nvidia".into(),
                vram_bytes: Some(24 << 30),
            }
        } else {
            Adapter {
                name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
                backend: "Vulkan".into(),
                device_type: DeviceType::Cpu,
                vendor: "mesa".into(),
                vram_bytes: None,
            }
        };
        Capabilities {
            hostname: self.name.clone(),
            os: "Linux (simulated)".into(),
            cpu_brand: "Simulated CPU".into(),
            cpu_cores: 16,
            memory_bytes: 64 << 30,
            adapters: vec![adapter.clone()],
            render_adapter: Some(adapter),
            encoders: vec!["libx264".into()],
            tags: Vec::new(),
            pool: String::new(),
            calibration: Some(Calibration {
                frames_per_s: self.reported_fps,
                width: CALIBRATION_WIDTH,
                height: CALIBRATION_HEIGHT,
            }),
            test_override: Some("simulated node".into()),
        }
    }
}

/// A simulated job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSim {
    /// Name.
    pub name: String,
    /// Submitted at, ms.
    pub arrival_ms: u64,
    /// First frame number.
    pub first_frame: u64,
    /// Frames.
    pub frames: u64,
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Priority.
    pub priority: u8,
    /// Only GPU nodes may run it.
    pub gpu_required: bool,
    /// Mean per-frame cost relative to the calibration shader.
    pub base_cost: f64,
    /// Period of the cost wave along the job, frames.
    pub wave_period: f64,
    /// Phase of the cost wave, radians.
    pub wave_phase: f64,
    /// Key of the per-frame cost noise.
    pub noise_key: u64,
    /// A frame that fails on every node, every time.
    pub poison_frame: Option<u64>,
    /// The job completes without frames that failed on every retry.
    pub allow_missing_frames: bool,
    /// `prefix[i]`: work of the first `i` frames, pixel-frames at cost 1.
    prefix: Vec<f64>,
}

impl JobSim {
    /// Last frame number.
    pub fn last_frame(&self) -> u64 {
        self.first_frame + self.frames - 1
    }

    /// Pixels per frame.
    pub fn pixels(&self) -> f64 {
        self.width as f64 * self.height as f64
    }

    /// Cost of frame `f` relative to the calibration shader: a smooth wave
    /// between 0.5x and 2x the job's mean along the job, times up to ±10%
    /// noise of its own.
    pub fn frame_cost(&self, f: u64) -> f64 {
        let x = (f - self.first_frame) as f64;
        let wave =
            1.25 + 0.75 * (std::f64::consts::TAU * x / self.wave_period + self.wave_phase).sin();
        let noise = 1.0 + 0.1 * unit_noise(self.noise_key ^ f.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.base_cost * wave * noise
    }

    /// Work of frames `from..=to`, pixel-frames at cost 1.
    pub fn work(&self, from: u64, to: u64) -> f64 {
        if to < from {
            return 0.0;
        }
        self.work_before(to + 1) - self.work_before(from)
    }

    /// Work of the frames before frame `f` (from the first frame).
    pub fn work_before(&self, f: u64) -> f64 {
        self.prefix[(f - self.first_frame) as usize]
    }

    /// The frame in progress when `work` of the job, counted from its first
    /// frame, is done: the first frame `f` with `work_before(f + 1) > work`,
    /// or one past the last frame.
    pub fn frame_at(&self, work: f64) -> u64 {
        let i = self.prefix.partition_point(|p| *p <= work);
        self.first_frame + (i as u64).saturating_sub(1)
    }

    /// Work of every frame that can be rendered (the poison frame cannot).
    pub fn renderable_work(&self) -> f64 {
        let all = self.work(self.first_frame, self.last_frame());
        all - self.poison_frame.map_or(0.0, |p| self.work(p, p))
    }

    /// Work of the longest frame.
    pub fn max_frame_work(&self) -> f64 {
        (self.first_frame..=self.last_frame())
            .filter(|f| Some(*f) != self.poison_frame)
            .map(|f| self.work(f, f))
            .fold(0.0, f64::max)
    }

    /// The spec submitted to the core.
    pub fn spec(&self) -> JobSpec {
        JobSpec {
            name: self.name.clone(),
            frames: FrameSpan {
                start: self.first_frame,
                end: self.last_frame(),
            },
            fps: 24,
            resolution: Resolution {
                width: self.width,
                height: self.height,
            },
            render: RenderSpec {
                kind: RenderKind::Shader,
                shader: Some("plasma".into()),
                path: None,
                source: None,
            },
            output: OutputSpec::default(),
            requirements: Requirements {
                gpu: if self.gpu_required {
                    GpuRequirement::Required
                } else {
                    GpuRequirement::Any
                },
                ..Requirements::default()
            },
            priority: self.priority,
            project: "default".into(),
            max_nodes: None,
            chunk_target_s: None,
            allow_missing_frames: self.allow_missing_frames,
            frame_timeout_s: None,
            webhooks: Vec::new(),
        }
    }

    fn fill_prefix(&mut self) {
        let mut prefix = Vec::with_capacity(self.frames as usize + 1);
        let mut sum = 0.0;
        prefix.push(sum);
        for f in self.first_frame..=self.last_frame() {
            sum += self.frame_cost(f) * self.pixels();
            prefix.push(sum);
        }
        self.prefix = prefix;
    }
}

/// A generated world.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// What it was generated from.
    pub params: ScenarioParams,
    /// The fleet, including nodes that join late.
    pub nodes: Vec<NodeSpec>,
    /// The jobs, by arrival.
    pub jobs: Vec<JobSim>,
    /// Total renderable work over the fleet's nominal speed, ms: the scale
    /// faults are placed on.
    pub estimate_ms: f64,
}

impl Scenario {
    /// Generates the world for `params`. Draws happen in a fixed order:
    /// fleet, jobs, then faults, so turning faults on keeps the fleet and
    /// the jobs.
    pub fn generate(params: &ScenarioParams) -> Scenario {
        let mut rng = StdRng::seed_from_u64(params.seed);
        let cpu_px_s = CPU_CALIBRATION_FPS * (CALIBRATION_WIDTH * CALIBRATION_HEIGHT) as f64;
        let mut nodes = Vec::new();
        for i in 0..params.gpu_nodes + params.cpu_nodes {
            let gpu = i < params.gpu_nodes;
            let kind = if gpu { params.gpu_speedup } else { 1.0 };
            let name = if gpu {
                format!("gpu-{i:03}")
            } else {
                format!("cpu-{:03}", i - params.gpu_nodes)
            };
            nodes.push(new_node(&mut rng, name, gpu, cpu_px_s * kind, 0));
        }
        let mut jobs = Vec::new();
        // About one job in six needs a GPU (at least one of four or more),
        // none when there is no GPU node to run it.
        let gpu_only = if params.gpu_nodes == 0 {
            0
        } else {
            (params.jobs / 6).max(u32::from(params.jobs >= 4))
        };
        for i in 0..params.jobs {
            let frames = log_uniform(&mut rng, params.min_frames as f64, params.max_frames as f64)
                .round() as u64;
            let frames = frames.clamp(params.min_frames.max(1), params.max_frames.max(1));
            let (width, height) = if rng.random_bool(0.5) {
                (1280, 720)
            } else {
                (1920, 1080)
            };
            let mut job = JobSim {
                name: format!("job-{i:02}"),
                arrival_ms: rng.random_range(0..=params.arrival_spread_ms),
                first_frame: 1,
                frames,
                width,
                height,
                priority: rng.random_range(30..=80),
                gpu_required: false,
                base_cost: log_uniform(&mut rng, params.min_cost, params.max_cost),
                wave_period: frames as f64 * rng.random_range(0.5..2.0),
                wave_phase: rng.random_range(0.0..std::f64::consts::TAU),
                noise_key: rng.random(),
                poison_frame: None,
                allow_missing_frames: false,
                prefix: Vec::new(),
            };
            job.fill_prefix();
            jobs.push(job);
        }
        // A few jobs need a GPU; chosen after the jobs so that their count
        // does not shift the jobs' other draws.
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        shuffle(&mut rng, &mut order);
        for &j in order.iter().take(gpu_only as usize) {
            jobs[j].gpu_required = true;
        }
        let fleet_px_s: f64 = nodes.iter().map(|n| n.speed_px_s).sum();
        let work: f64 = jobs.iter().map(|j| j.renderable_work()).sum();
        let estimate_ms = work / fleet_px_s.max(1.0) * 1000.0;
        let mut sc = Scenario {
            params: params.clone(),
            nodes,
            jobs,
            estimate_ms,
        };
        if params.faults {
            sc.add_faults(&mut rng, cpu_px_s);
        }
        sc.jobs.sort_by_key(|j| (j.arrival_ms, j.name.clone()));
        sc
    }

    fn add_faults(&mut self, rng: &mut StdRng, cpu_px_s: f64) {
        let est = self.estimate_ms;
        let at = |rng: &mut StdRng, lo: f64, hi: f64| (est * rng.random_range(lo..hi)) as u64;
        // Render crashes: a Poisson process per node, in wall-clock time.
        let horizon = est * CRASH_HORIZON_FACTOR + 600_000.0;
        for n in &mut self.nodes {
            let mut t = 0.0;
            loop {
                let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                t += -u.ln() * CRASH_MTBF_MS;
                if t > horizon {
                    break;
                }
                n.crashes_ms.push(t as u64);
            }
        }
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        shuffle(rng, &mut order);
        let mut picks = order.into_iter();
        // Departures: a silent crash and a closed connection come back,
        // the last one does not.
        for k in 0..LEAVING_NODES {
            let Some(i) = picks.next() else { break };
            let leave_ms = at(rng, 0.15, 0.6);
            let back_ms = leave_ms + rng.random_range(20_000..60_000);
            let how = if k == 0 {
                Leave::Crash
            } else {
                Leave::Disconnect
            };
            let n = &mut self.nodes[i];
            let first = n.uptime[0].from_ms;
            n.uptime = vec![Uptime {
                from_ms: first,
                to: Some((leave_ms, how)),
            }];
            if k + 1 < LEAVING_NODES {
                n.uptime.push(Uptime {
                    from_ms: back_ms,
                    to: None,
                });
            }
        }
        // Slowdowns.
        for _ in 0..SLOWED_NODES {
            let Some(i) = picks.next() else { break };
            let from_ms = at(rng, 0.1, 0.7);
            let to_ms = from_ms + rng.random_range(20_000..60_000);
            let speed_factor = 1.0 / rng.random_range(3.0..5.0);
            self.nodes[i].episodes.push(Episode {
                from_ms,
                to_ms,
                speed_factor,
            });
        }
        // One stalling node: its renderer hangs for a minute or two while
        // its agent keeps heartbeating.
        if let Some(i) = picks.next() {
            let from_ms = at(rng, 0.2, 0.6);
            let to_ms = from_ms + rng.random_range(60_000..120_000);
            self.nodes[i].episodes.push(Episode {
                from_ms,
                to_ms,
                speed_factor: 0.0,
            });
        }
        // Late joiners.
        for k in 0..LATE_NODES {
            let join = at(rng, 0.2, 0.5);
            let name = format!("cpu-late-{k}");
            let mut n = new_node(rng, name, false, cpu_px_s, join);
            let mut t = join as f64;
            loop {
                let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                t += -u.ln() * CRASH_MTBF_MS;
                if t > horizon {
                    break;
                }
                n.crashes_ms.push(t as u64);
            }
            self.nodes.push(n);
        }
        // A frame that fails everywhere, in a job that may finish without
        // it.
        let cpu_jobs: Vec<usize> = (0..self.jobs.len())
            .filter(|j| !self.jobs[*j].gpu_required)
            .collect();
        if !cpu_jobs.is_empty() {
            let j = cpu_jobs[rng.random_range(0..cpu_jobs.len())];
            let job = &mut self.jobs[j];
            job.poison_frame = Some(rng.random_range(job.first_frame..=job.last_frame()));
            job.allow_missing_frames = true;
        }
    }

    /// Total frames.
    pub fn frames(&self) -> u64 {
        self.jobs.iter().map(|j| j.frames).sum()
    }
}

fn new_node(
    rng: &mut StdRng,
    name: String,
    gpu: bool,
    kind_px_s: f64,
    join_after_ms: u64,
) -> NodeSpec {
    let speed_px_s = kind_px_s * rng.random_range(1.0 - SPEED_SPREAD..1.0 + SPEED_SPREAD);
    let noise = rng.random_range(1.0 - CALIBRATION_NOISE..1.0 + CALIBRATION_NOISE);
    let reported_fps = speed_px_s * noise / (CALIBRATION_WIDTH * CALIBRATION_HEIGHT) as f64;
    let join = join_after_ms + rng.random_range(0..NODE_JOIN_SPREAD_MS);
    NodeSpec {
        name,
        gpu,
        speed_px_s,
        reported_fps,
        uptime: vec![Uptime {
            from_ms: join,
            to: None,
        }],
        episodes: Vec::new(),
        crashes_ms: Vec::new(),
        poll_phase_ms: rng.random_range(0..PULL_POLL_MS),
        tick_phase_ms: rng.random_range(0..TICK_MS),
    }
}

fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    if hi <= lo {
        return lo;
    }
    (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
}

/// Fisher-Yates with our generator (rand's `shuffle` is fine too, but this
/// keeps the draw order obvious).
fn shuffle<T>(rng: &mut StdRng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

/// A value in [-1, 1) from a key (splitmix64): per-frame noise that does not
/// depend on the order anything is drawn in.
fn unit_noise(key: u64) -> f64 {
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

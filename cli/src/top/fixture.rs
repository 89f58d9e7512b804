//! Synthetic fleets for `drover top`'s snapshot tests and its benchmark:
//! deterministic (the same arguments give the same fleet), with nodes and
//! jobs in every state.

use drover_shared::api::{FleetJob, FleetNode, FleetNodeState, FleetView, JobState};

const NODE_STATES: [FleetNodeState; 5] = [
    FleetNodeState::Busy,
    FleetNodeState::Idle,
    FleetNodeState::Draining,
    FleetNodeState::Lost,
    FleetNodeState::Quarantined,
];

const JOB_STATES: [JobState; 7] = [
    JobState::Running,
    JobState::Queued,
    JobState::Unschedulable,
    JobState::Muxing,
    JobState::Done,
    JobState::Failed,
    JobState::Cancelled,
];

const ADAPTERS: [(&str, &str); 3] = [
    ("NVIDIA H100 80GB HBM3", "Vulkan"),
    ("llvmpipe (LLVM 15.0.6, 256 bits)", "Vulkan"),
    ("AMD Radeon PRO W7900", "Vulkan"),
];

/// A cheap deterministic spread of `i` over `0..n`.
fn spread(i: usize, salt: usize, n: usize) -> usize {
    (i.wrapping_mul(2_654_435_761).wrapping_add(salt * 40_503) >> 7) % n.max(1)
}

/// The running job node `i` works on: jobs 1, 8, 15, ... run (see
/// [`job`]), and busy nodes spread over them.
fn running_job(i: usize, jobs: usize) -> u64 {
    let running = jobs.div_ceil(JOB_STATES.len()).max(1);
    1 + (JOB_STATES.len() * (i % running)) as u64
}

/// Node `i` of a synthetic fleet: states cycle (busy most often, then
/// every other state), working on the jobs of [`job`].
pub fn node(i: usize, jobs: usize) -> FleetNode {
    // Three of every five nodes are busy: a farm at work.
    let state = match i % 8 {
        0..=3 => FleetNodeState::Busy,
        n => NODE_STATES[(n - 3) % NODE_STATES.len()],
    };
    let busy = matches!(state, FleetNodeState::Busy | FleetNodeState::Draining);
    let (adapter, backend) = ADAPTERS[spread(i, 1, ADAPTERS.len())];
    let job = (busy && jobs > 0).then(|| running_job(i, jobs));
    let start = (i as u64 * 37) % 900 + 1;
    FleetNode {
        name: format!("gpu-{i:04}"),
        pool: ["default", "spot", "studio-b"][spread(i, 2, 3)].to_string(),
        adapter: adapter.to_string(),
        backend: backend.to_string(),
        state,
        reason: (state == FleetNodeState::Quarantined)
            .then(|| "failed 3 jobs in a row (last: frame 12 panicked)".to_string()),
        job,
        frame_start: job.map(|_| start),
        frame_end: job.map(|_| start + 47),
        frames_done: if job.is_some() {
            (i as u64 * 7) % 48
        } else {
            0
        },
        chunks: u32::from(job.is_some()),
        speed_fps: 2.0 + (spread(i, 3, 400) as f64) / 10.0,
        fps: if job.is_some() {
            1.0 + (spread(i, 4, 300) as f64) / 10.0
        } else {
            0.0
        },
        heartbeat_age_ms: if state == FleetNodeState::Lost {
            95_000 + i as u64
        } else {
            (spread(i, 5, 1_000)) as u64
        },
        cpu_load_pct: spread(i, 6, 100) as f32,
        memory_load_pct: spread(i, 7, 100) as f32,
        frames_rendered: (i as u64 * 131) % 10_000,
    }
}

/// Job `id` (from 1) of `jobs` in a synthetic fleet of `nodes`: states
/// cycle through every job state (1 runs, 2 is queued, ...), and the busy
/// nodes of [`node`] work on the running ones.
pub fn job(id: u64, nodes: usize, jobs: usize) -> FleetJob {
    let state = JOB_STATES[(id as usize - 1) % JOB_STATES.len()];
    let frames_total = 240 + (id * 97) % 2_000;
    let frames_done = match state {
        JobState::Done | JobState::Muxing => frames_total,
        JobState::Queued | JobState::Unschedulable => 0,
        _ => (frames_total * ((id * 29) % 100)) / 100,
    };
    let running = state == JobState::Running;
    let fps = if running { 12.5 * id as f64 } else { 0.0 };
    let workers: Vec<String> = if running {
        (0..nodes)
            .filter(|&i| i % 8 <= 3 && running_job(i, jobs) == id)
            .take(64)
            .map(|i| format!("gpu-{i:04}"))
            .collect()
    } else {
        Vec::new()
    };
    let reason = match state {
        JobState::Unschedulable => Some("no node has: requirements.vram_gb >= 96".to_string()),
        JobState::Failed => Some("frame 17 failed 4 times: shader panicked".to_string()),
        JobState::Queued if id.is_multiple_of(2) => Some("paused".to_string()),
        _ => None,
    };
    FleetJob {
        id,
        name: format!("shot-{:03}", id * 10),
        state,
        paused: reason.as_deref() == Some("paused"),
        priority: (50 + (id * 13) % 50) as u8,
        project: ["film", "ads", "previz"][(id % 3) as usize].to_string(),
        frames_total,
        frames_done,
        fps,
        eta_s: (running && fps > 0.0)
            .then(|| ((frames_total - frames_done) as f64 / fps).ceil() as u64),
        nodes: workers,
        reason,
        submitted_at_ms: 1_764_000_000_000 + id * 60_000,
    }
}

/// A fleet of `nodes` nodes and `jobs` jobs, as the coordinator would
/// send it at `at_ms`.
pub fn fleet(nodes: usize, jobs: usize, at_ms: u64) -> FleetView {
    FleetView {
        at_ms,
        nodes: (0..nodes).map(|i| node(i, jobs)).collect(),
        jobs: (1..=jobs as u64).map(|id| job(id, nodes, jobs)).collect(),
        jobs_total: jobs as u64,
    }
}

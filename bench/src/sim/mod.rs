//! A deterministic farm simulator: simulated nodes, jobs and faults on a
//! virtual clock, driving the coordinator's real scheduler core
//! ([`drover_coordinator::sched::Core`], not a copy) through its sans-IO
//! interface (`handle`, `submit`, `poll_timeout`).
//!
//! One seed fixes everything: the fleet, the jobs, the faults, the network
//! delays. The same seed gives the same result, byte for byte, apart from
//! the wall-clock figure `decisions_per_s`. Strategies are settings of the
//! same core ([`Strategy::config`]) run on the same scenario, so they meet
//! the same fleet, jobs and faults.
//!
//! # Layout
//! - [`scenario`]: the generated world: nodes (true speed, what they report,
//!   when they are up, slowdowns, stalls, crashes) and jobs (frames,
//!   resolution, per-frame cost along the job, priority, arrival).
//! - [`strategy`]: the strategies compared, as `CoreConfig`s.
//! - [`world`]: the discrete-event driver: an event queue on a virtual
//!   clock, simulated nodes that render, report, answer shrinks and upload,
//!   and the core woken at its own deadlines.
//!   Its `pool` module ([`world::pool`]) drives the coordinator's
//!   autoscaler on the same clock: a day-long trace, autoscaled against a
//!   fixed pool sized for the peak.
//! - [`bound`]: the lower bound on the makespan and the fleet's capacity.
//! - [`throughput`]: the scheduler throughput and memory measurement
//!   (10,000 nodes, 1,000,000 queued frames).
//! - [`alloc`]: a counting global allocator for the memory figures.

pub mod alloc;
pub mod bound;
pub mod scenario;
pub mod strategy;
pub mod throughput;
pub mod world;

pub use scenario::{Scenario, ScenarioParams};
pub use strategy::Strategy;
pub use world::{run, JobOutcome, Report, RunOptions, RunResult};

//! Drover's benchmarks, as a library so that the binaries and the tests share
//! one implementation. Figures are recorded by hand in `bench/RESULTS.md`.
//!
//! # Layout
//! - [`sim`]: the deterministic farm simulator behind the `simulate` binary
//!   (issue 7): simulated nodes, jobs and faults on a virtual clock, driving
//!   the coordinator's real scheduler core
//!   ([`drover_coordinator::sched::Core`]) under several strategies.
//! - `src/simulate.rs`: the `simulate` binary (flags, table, JSON lines).
//! - `src/farm_overhead.rs`, `src/executor_throughput.rs`: the real-farm
//!   benchmarks (their own binaries).
#![warn(missing_docs)]

pub mod sim;

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

use std::path::PathBuf;

/// A benchmark's working directory (cluster data, logs, outputs): removed
/// when dropped, unless `keep` asks to read the logs afterwards.
pub struct WorkDir {
    /// The directory.
    pub path: PathBuf,
    /// Keep it and print its path instead of removing it.
    pub keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept the working directory {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

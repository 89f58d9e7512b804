//! Drover's benchmarks, as a library so that the binaries and the tests share
//! one implementation. Figures are recorded by hand in `bench/RESULTS.md`.
//!
//! # Layout
//! - [`sim`]: the deterministic farm simulator behind the `simulate` binary
//!   (issue 7): simulated nodes, jobs and faults on a virtual clock, driving
//!   the coordinator's real scheduler core
//!   ([`drover_coordinator::sched::Core`]) under several strategies.
//! - `src/simulate.rs`: the `simulate` binary (flags, table, JSON lines).
//! - `src/farm_overhead.rs`, `src/executor_throughput.rs`, `src/chaos.rs`,
//!   `src/quic_load.rs`, `src/steal_vs_static.rs`, `src/journal.rs`: the
//!   real-farm benchmarks (their own binaries).
//! - `src/front_door.rs`: the API's benchmark (issue 9): submissions over
//!   REST and QUIC side by side, listing a 100,000-job history, event-stream
//!   fan-out.
#![warn(missing_docs)]

pub mod sim;

use std::path::PathBuf;

use anyhow::Context as _;

/// The `drover` binary a benchmark starts: `explicit` (its `--drover`
/// flag), else the one next to the benchmark's own executable (both are
/// built into the same `target/<profile>/`).
pub fn drover_binary(explicit: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let drover = match explicit {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("this executable has no directory")?
            .join("drover"),
    };
    if !drover.is_file() {
        anyhow::bail!(
            "no drover binary at {} (build it with `cargo build --release -p drover-cli`, or pass --drover PATH)",
            drover.display()
        );
    }
    Ok(drover)
}

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

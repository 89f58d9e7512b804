//! The strategies compared: each is a setting of the same core, plus (for
//! the pull farm) how the simulated nodes pick up work.

use drover_coordinator::sched::{Chunking, CoreConfig};

use super::scenario::PULL_POLL_MS;

/// A scheduling strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Drover's scheduler: chunks sized to a target time on their node,
    /// work stealing, speculative copies (the default `CoreConfig`).
    Drover,
    /// Fixed chunks of one frame (OpenCue's default).
    Static1,
    /// Fixed chunks of 10 frames (Flamenco's default).
    Static10,
    /// Fixed chunks of 50 frames (Deadline's default).
    Static50,
    /// Chunks sized to a target time, no stealing or speculation (Deadline
    /// Cloud's adaptive chunking).
    Adaptive,
    /// One frame at a time, one per node, picked up at the node's next 2 s
    /// poll (a pull-based farm).
    Pull2s,
}

impl Strategy {
    /// Every strategy, in the order they are printed.
    pub const ALL: [Strategy; 6] = [
        Strategy::Drover,
        Strategy::Static1,
        Strategy::Static10,
        Strategy::Static50,
        Strategy::Adaptive,
        Strategy::Pull2s,
    ];

    /// Its name on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Drover => "drover",
            Strategy::Static1 => "static-1",
            Strategy::Static10 => "static-10",
            Strategy::Static50 => "static-50",
            Strategy::Adaptive => "adaptive",
            Strategy::Pull2s => "pull-2s",
        }
    }

    /// The strategy named `name`.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The core's configuration for it.
    pub fn config(self) -> CoreConfig {
        let plain = |chunking| CoreConfig {
            chunking,
            steal: false,
            speculate: false,
            ..CoreConfig::default()
        };
        match self {
            Strategy::Drover => CoreConfig::default(),
            Strategy::Static1 => plain(Chunking::Fixed(1)),
            Strategy::Static10 => plain(Chunking::Fixed(10)),
            Strategy::Static50 => plain(Chunking::Fixed(50)),
            Strategy::Adaptive => plain(Chunking::Target),
            Strategy::Pull2s => CoreConfig {
                node_slots: 1,
                ..plain(Chunking::Fixed(1))
            },
        }
    }

    /// For a pull farm, how often a node asks for work: an assignment only
    /// starts at the node's next poll.
    pub fn poll_interval_ms(self) -> Option<u64> {
        (self == Strategy::Pull2s).then_some(PULL_POLL_MS)
    }
}

//! `drover top`: the farm live in a terminal.
//!
//! # Layout
//! - [`app`]: the state (fleet snapshot, events applied since, selection,
//!   sort, filter, dialogs) and the keys; no I/O, no drawing.
//! - [`ui`]: draws an [`app::App`] on any ratatui backend (the tests and
//!   the bench use the test backend).
//! - [`fixture`]: synthetic fleets for the tests and the benchmark.
//! - [`run`]: the driver: the terminal, the event stream, snapshots of
//!   `GET /v1/fleet`, keys, and actions through the REST API.

pub mod app;
pub mod fixture;
pub mod run;
pub mod ui;

#[cfg(test)]
mod tests;

use crate::commands::DEFAULT_URL;

/// `drover top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Coordinator REST URL.
    #[arg(long, env = "DROVER_URL", default_value = DEFAULT_URL)]
    pub url: String,
}

/// Runs `drover top` until the user quits.
pub fn top(args: TopArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "drover top draws on a terminal and stdout is not one; `drover nodes --json` and `drover events --json` read the same data"
        );
    }
    run::run(crate::client::Client::from_env(&args.url)?)
}

//! `drover pools`, `drover pools decisions NAME` and `drover preempt NODE`.

use drover_shared::api::{PoolView, ScaleDecisionView};

use crate::commands::{utc, ClientArgs};

/// `drover pools`.
#[derive(Debug, Clone, clap::Args)]
pub struct PoolsArgs {
    /// `decisions NAME`: a pool's scaling decisions, newest first.
    #[command(subcommand)]
    pub cmd: Option<PoolsCmd>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// What `drover pools` shows besides the table.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PoolsCmd {
    /// A pool's scaling decisions, newest first, with their reasons.
    Decisions {
        /// Pool name.
        name: String,
        /// Most decisions shown (1..=500).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        #[allow(missing_docs)]
        c: ClientArgs,
    },
}

/// `drover preempt`.
#[derive(Debug, Clone, clap::Args)]
pub struct PreemptArgs {
    /// Node name.
    pub node: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// The pools table.
pub fn pools_table(pools: &[PoolView]) -> String {
    let mut out = format!(
        "{:<16} {:<10} {:>7} {:>9} {:>8} {:>6} {:>9} {:>10}  DRAINING\n",
        "POOL", "PROVIDER", "MIN-MAX", "REQUESTED", "STARTING", "NODES", "BACKLOG", "DRAIN ETA"
    );
    for p in pools {
        let eta = match p.drain_eta_s {
            Some(s) => format!("{s:.0} s"),
            None if p.backlog_frames > 0 => "no node".into(),
            None => "-".into(),
        };
        out.push_str(&format!(
            "{:<16} {:<10} {:>7} {:>9} {:>8} {:>6} {:>9} {:>10}  {}\n",
            p.name,
            p.provider,
            format!("{}-{}", p.min, p.max),
            p.requested,
            p.starting,
            p.nodes.len(),
            p.backlog_frames,
            eta,
            p.draining.join(",")
        ));
        if let Some(e) = &p.last_error {
            out.push_str(&format!("  last provider error: {e}\n"));
        }
    }
    out
}

/// The decisions table.
pub fn decisions_table(ds: &[ScaleDecisionView]) -> String {
    let mut out = format!(
        "{:>5}  {:<19}  {:<8}  {:<16}  {:<6}  REASON\n",
        "SEQ", "AT (UTC)", "ACTION", "NODE/COUNT", "OUTCOME"
    );
    for d in ds {
        let target = match (&d.node, d.count) {
            (Some(n), _) => n.clone(),
            (None, Some(c)) => format!("+{c}"),
            (None, None) => "-".into(),
        };
        out.push_str(&format!(
            "{:>5}  {:<19}  {:<8}  {:<16}  {:<6}  {}\n",
            d.seq,
            utc(d.at_ms),
            d.action,
            target,
            d.outcome,
            d.reason
        ));
        if let Some(e) = &d.error {
            out.push_str(&format!("       error: {e}\n"));
        }
        if let Some(o) = d.output.as_deref().filter(|o| !o.is_empty()) {
            out.push_str(&format!(
                "       output: {}\n",
                o.replace('\n', "\n               ")
            ));
        }
    }
    out
}

/// `drover pools [decisions NAME]`.
pub fn pools(a: PoolsArgs) -> anyhow::Result<()> {
    match a.cmd {
        None => {
            let pools = a.c.client()?.pools()?;
            if a.c.json {
                println!("{}", serde_json::to_string_pretty(&pools)?);
            } else if pools.is_empty() {
                println!("no auto-scaling pools (start the coordinator with --pools FILE)");
            } else {
                print!("{}", pools_table(&pools));
            }
        }
        Some(PoolsCmd::Decisions { name, limit, c }) => {
            let ds = c.client()?.pool_decisions(&name, limit)?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&ds)?);
            } else {
                print!("{}", decisions_table(&ds));
            }
        }
    }
    Ok(())
}

/// `drover preempt`.
pub fn preempt(a: PreemptArgs) -> anyhow::Result<()> {
    let n = a.c.client()?.preempt(&a.node)?;
    if a.c.json {
        println!("{}", serde_json::to_string_pretty(&n)?);
    } else {
        println!(
            "node {}: preempted (drained; the frames it had not rendered wait for other nodes)",
            n.name
        );
    }
    Ok(())
}

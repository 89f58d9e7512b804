//! `drover logs JOB [--chunk N]`: the executor logs of a job's chunk
//! attempts, as their nodes shipped them to the coordinator
//! (`GET /v1/jobs/{id}/logs`, then each `GET /v1/jobs/{id}/chunks/{index}/log`).

use drover_shared::api::{ChunkLogEntry, ChunkLogList};

use crate::commands::ClientArgs;

/// `drover logs`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// Job id.
    pub job: u64,
    /// Only this chunk's log (a chunk id, as `drover chunks` shows).
    #[arg(long, value_name = "N")]
    pub chunk: Option<u32>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// The line above a chunk's log: which chunk, its frames, node and state.
pub fn header(e: &ChunkLogEntry) -> String {
    let mut h = format!(
        "=== chunk {} (attempt epoch {}) · frames {}-{} · node {} · {}",
        e.index, e.epoch, e.start, e.end, e.node, e.state
    );
    if let Some(err) = &e.error {
        h.push_str(&format!(": {err}"));
    }
    h.push_str(&format!(" · {} bytes", e.size_bytes));
    if !e.complete {
        h.push_str(", still growing");
    }
    h.push_str(" ===");
    h
}

/// `drover logs`: every chunk's log under its header, or one chunk's with
/// `--chunk`; `--json` prints the API's list (its entry, with `--chunk`).
pub fn logs(a: LogsArgs) -> anyhow::Result<()> {
    let client = a.c.client()?;
    let list: ChunkLogList = client.get_json(&format!("/v1/jobs/{}/logs", a.job))?;
    let entries: Vec<&ChunkLogEntry> = match a.chunk {
        None => list.logs.iter().collect(),
        Some(n) => {
            let Some(e) = list.logs.iter().find(|e| e.index == n) else {
                let have: Vec<String> = list.logs.iter().map(|e| e.index.to_string()).collect();
                anyhow::bail!(
                    "job {} has no log of chunk {n} (chunks with logs: {})",
                    a.job,
                    if have.is_empty() {
                        "none yet".to_string()
                    } else {
                        have.join(", ")
                    }
                );
            };
            vec![e]
        }
    };
    if a.c.json {
        let text = match a.chunk {
            Some(_) => serde_json::to_string_pretty(entries[0])?,
            None => serde_json::to_string_pretty(&list)?,
        };
        println!("{text}");
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!("job {} has no chunk logs yet", a.job);
        return Ok(());
    }
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("{}", header(e));
        let text = client.get_text(&e.url)?;
        print!("{text}");
        if !text.is_empty() && !text.ends_with('\n') {
            println!();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: &str, error: Option<&str>, complete: bool) -> ChunkLogEntry {
        ChunkLogEntry {
            index: 3,
            epoch: 1,
            start: 24,
            end: 47,
            node: "gpu-07".into(),
            state: state.into(),
            error: error.map(str::to_string),
            size_bytes: 2048,
            complete,
            url: "/v1/jobs/7/chunks/3/log".into(),
        }
    }

    #[test]
    fn headers() {
        assert_eq!(
            header(&entry("done", None, true)),
            "=== chunk 3 (attempt epoch 1) · frames 24-47 · node gpu-07 · done · 2048 bytes ==="
        );
        assert_eq!(
            header(&entry("failed", Some("frame 31 failed"), true)),
            "=== chunk 3 (attempt epoch 1) · frames 24-47 · node gpu-07 · failed: frame 31 failed · 2048 bytes ==="
        );
        assert_eq!(
            header(&entry("running", None, false)),
            "=== chunk 3 (attempt epoch 1) · frames 24-47 · node gpu-07 · running · 2048 bytes, still growing ==="
        );
    }
}

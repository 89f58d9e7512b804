//! `drover backup DEST [--artifacts]` and `drover restore ARCHIVE --data DIR`
//! (what an archive holds: `drover_coordinator::backup`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_coordinator::backup::{self as archive, Manifest};

use crate::client::{api_key_from_env, Client};
use crate::commands::ClientArgs;

/// Longest wait for the next bytes of the archive: the coordinator may
/// hash a large output before it sends it (the artifact index).
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// `drover backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// Where the archive goes: a new file, written mode 0600 (it holds the
    /// coordinator's certificate key and secrets).
    pub dest: PathBuf,
    /// Include done jobs' outputs and posters (by default only what
    /// unfinished jobs need, and the index of the rest).
    #[arg(long)]
    pub artifacts: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub c: ClientArgs,
}

/// `drover restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The archive `drover backup` wrote.
    pub archive: PathBuf,
    /// The new data dir: missing or empty. Start `drover coordinator
    /// --data DIR` on it afterwards.
    #[arg(long)]
    pub data: PathBuf,
    /// Print the manifest's summary as JSON.
    #[arg(long)]
    pub json: bool,
}

fn summary(m: &Manifest) -> String {
    let c = &m.counts;
    format!(
        "{} jobs ({} archived), {} segments{}, {} artifact files, {} members",
        c.jobs,
        c.archived_jobs,
        c.segments,
        if c.segments_missing > 0 {
            format!(
                " ({} gone before they were copied; their frames render again)",
                c.segments_missing
            )
        } else {
            String::new()
        },
        c.artifact_files,
        c.members
    ) + &unindexed(m)
}

/// The done jobs the artifact index lacks, said after the summary.
fn unindexed(m: &Manifest) -> String {
    if m.unindexed.is_empty() {
        return String::new();
    }
    let jobs: Vec<String> = m
        .unindexed
        .iter()
        .map(|u| format!("job {}: {}", u.job, u.reason))
        .collect();
    format!(
        "; {} done jobs not in the artifact index ({})",
        m.unindexed.len(),
        jobs.join("; ")
    )
}

/// Takes a backup from the coordinator at `--url` into `dest`, checks it
/// as `restore` would, and reports.
pub fn backup(a: BackupArgs) -> anyhow::Result<()> {
    if a.dest.exists() {
        bail!("{} exists; a backup goes into a new file", a.dest.display());
    }
    let started = Instant::now();
    let client = Client::from_env(&a.c.url)?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(READ_TIMEOUT)
        .build();
    let mut req = agent.get(&format!(
        "{}/v1/admin/backup?artifacts={}",
        client.base(),
        a.artifacts
    ));
    if let Some(key) = api_key_from_env()? {
        req = req.set("authorization", &format!("Bearer {key}"));
    }
    let resp = client.check(req.call())?;
    let mut partial = a.dest.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = (|| -> anyhow::Result<Manifest> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        std::io::copy(&mut resp.into_reader(), &mut f).with_context(|| {
            format!(
                "receiving the archive (the coordinator stopped it: see its log) into {}",
                partial.display()
            )
        })?;
        f.flush()?;
        f.sync_all()?;
        Ok(archive::verify(&partial)?)
    })();
    let manifest = match written {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &a.dest).with_context(|| format!("writing {}", a.dest.display()))?;
    sync_parent(&a.dest)?;
    let bytes = std::fs::metadata(&a.dest)?.len();
    let seconds = started.elapsed().as_secs_f64();
    if a.c.json {
        println!(
            "{}",
            serde_json::json!({
                "dest": a.dest,
                "bytes": bytes,
                "seconds": seconds,
                "counts": manifest.counts,
                "incarnation": manifest.incarnation,
                "artifacts": manifest.artifacts,
            })
        );
        return Ok(());
    }
    println!(
        "backup written to {} ({bytes} bytes in {seconds:.2} s): {}; checked against its manifest. \
         It holds the coordinator's keys (mode 0600): keep it as a secret",
        a.dest.display(),
        summary(&manifest)
    );
    Ok(())
}

fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", parent.display()))
}

/// Restores an archive into a new data dir.
pub fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let report = archive::restore(&a.archive, &a.data)?;
    let m = &report.manifest;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "data": a.data,
                "counts": m.counts,
                "backup_incarnation": m.incarnation,
                "incarnation": report.incarnation,
                "files": report.files,
            })
        );
        return Ok(());
    }
    println!(
        "restored {} into {}: {}; start it with `drover coordinator --data {}` (it starts past \
         incarnation {}, so no epoch of the old farm repeats)",
        a.archive.display(),
        a.data.display(),
        summary(m),
        a.data.display(),
        report.incarnation
    );
    Ok(())
}

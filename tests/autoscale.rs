//! Auto-scaling pools and preemption notices against a real farm: the
//! real `drover` binary as the coordinator (with `--pools`), the node
//! agents its `process` provider starts as real processes, real QUIC on
//! loopback, the API and the CLI as a user runs them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use drover_cli::cluster::{wait_for, Cluster};
use drover_shared::api::{ChunkState, JobState, PoolView, ScaleDecisionView};
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());
const BIN: &str = env!("CARGO_BIN_EXE_drover");
/// Longest any condition is waited for: a node's start (GPU probe and
/// calibration on lavapipe) takes seconds, many times that on a loaded CI
/// machine.
const TIMEOUT: Duration = Duration::from_secs(120);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn spec(name: &str, frames: u64) -> Value {
    json!({
        "name": name,
        "frames": { "start": 1, "end": frames },
        "fps": 24,
        "resolution": { "width": 64, "height": 64 },
        "render": { "kind": "shader", "shader": "rings" },
    })
}

/// A farm whose coordinator runs with `pools` as its pools file.
fn farm_with_pools(pools: &str) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pools.toml");
    std::fs::write(&file, pools).unwrap();
    let c = Cluster::start(
        Path::new(BIN),
        &dir.path().join("farm"),
        &["--pools", file.to_str().unwrap()],
        &[],
    )
    .unwrap();
    (dir, c)
}

/// Pids of running processes whose command line contains every one of
/// `parts` (the node agents a pool started, found by their data dir).
fn pids_with(parts: &[&str]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // A zombie has an empty command line: it has exited.
        if !text.is_empty() && parts.iter().all(|p| text.contains(p)) {
            out.push(pid);
        }
    }
    out
}

fn pool(c: &Cluster, name: &str) -> PoolView {
    c.client()
        .pools()
        .unwrap()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap()
}

fn decisions(c: &Cluster, name: &str) -> Vec<ScaleDecisionView> {
    c.client().pool_decisions(name, 100).unwrap()
}

fn wait_job_done(c: &Cluster, id: u64) -> drover_shared::api::JobView {
    wait_for(TIMEOUT, "the job to end", || {
        let j = c.client().job(id)?;
        Ok(j.state.is_terminal().then_some(j))
    })
    .unwrap()
}

#[test]
fn process_pool_grows_from_0_to_2_for_a_job_and_back_to_0() {
    let _s = serial();
    // A target of 1 s with a 0.5 s frame estimate: a 240-frame job wants
    // far more than the two nodes the pool may have.
    let (dir, mut c) = farm_with_pools(
        "[[pool]]\nname = \"render\"\nprovider = \"process\"\nmin = 0\nmax = 2\n\
         target_drain_s = 1\nscale_up_cooldown_s = 1\nidle_cooldown_s = 2\nframe_s_estimate = 0.5\n\
         [pool.process]\nargs = [\"--slowdown\", \"2\"]\n",
    );
    let pools_dir = dir.path().join("farm/coordinator/pools/render");
    let pools_dir = pools_dir.to_str().unwrap().to_string();
    let p = pool(&c, "render");
    assert_eq!(
        (p.requested, p.nodes.len(), p.provider.as_str()),
        (0, 0, "process")
    );
    assert!(c.client().nodes().unwrap().is_empty());
    assert!(pids_with(&[" node ", &pools_dir]).is_empty());

    let sub = c.client().submit_json(&spec("autoscaled", 240)).unwrap();
    // Two nodes join: they stay at least the idle cooldown after the job,
    // so this cannot miss them.
    let joined = wait_for(TIMEOUT, "two pool nodes to join", || {
        let p = pool(&c, "render");
        Ok((p.nodes.len() == 2).then_some(p))
    })
    .unwrap();
    assert_eq!(joined.current, 2);
    let mut names = joined.nodes.clone();
    names.sort();
    assert_eq!(names, vec!["render-1", "render-2"]);
    assert_eq!(
        pids_with(&[" node ", &pools_dir]).len(),
        2,
        "two agents run"
    );
    let job = wait_job_done(&c, sub.id);
    assert_eq!(job.state, JobState::Done, "{:?}", job.error);
    assert_eq!(job.frames_done, 240);

    // Back to 0: drained, removed, the processes gone.
    wait_for(TIMEOUT, "the pool to shrink to 0", || {
        let p = pool(&c, "render");
        Ok((p.requested == 0 && p.nodes.is_empty() && p.draining.is_empty()).then_some(()))
    })
    .unwrap();
    wait_for(TIMEOUT, "the node agents to exit", || {
        Ok(pids_with(&[" node ", &pools_dir]).is_empty().then_some(()))
    })
    .unwrap();
    // Every decision is journaled with its reason, newest first.
    let ds = decisions(&c, "render");
    let mut oldest_first: Vec<&ScaleDecisionView> = ds.iter().rev().collect();
    let up = oldest_first.remove(0);
    assert_eq!(
        (up.action.as_str(), up.count, up.outcome.as_str()),
        ("scale_up", Some(2), "ok")
    );
    assert!(
        up.reason.contains("frames wait") && up.reason.contains("no node"),
        "{}",
        up.reason
    );
    for action in ["drain", "remove"] {
        let mut nodes: Vec<&str> = ds
            .iter()
            .filter(|d| d.action == action)
            .map(|d| d.node.as_deref().unwrap())
            .collect();
        nodes.sort();
        assert_eq!(nodes, vec!["render-1", "render-2"], "{action}: {ds:#?}");
    }
    for d in &ds {
        assert_eq!(d.outcome, "ok", "{d:?}");
        assert!(!d.reason.is_empty());
    }
    assert!(ds.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    // The pool's own document carries the last few, as `drover top`
    // shows them.
    let p = pool(&c, "render");
    assert_eq!(p.current, 0);
    assert_eq!(p.decisions, ds[..ds.len().min(5)].to_vec());
    assert!(ds
        .iter()
        .any(|d| d.action == "drain" && d.reason.contains("idle for")));

    // The CLI shows the same, as a user reads it.
    let out = Command::new(BIN)
        .args(["pools", "decisions", "render", "--url", &c.url()])
        .env("DROVER_API_KEY", c.admin_key().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "scale_up", "+2", "drain", "remove", "render-1", "render-2", "idle for",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // The decisions survive a restart of the coordinator.
    c.restart_coordinator().unwrap();
    assert_eq!(decisions(&c, "render"), ds);
    c.stop();
}

#[test]
fn command_provider_runs_the_admins_commands_with_pool_node_and_count() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let calls: PathBuf = dir.path().join("calls.txt");
    let script = dir.path().join("cloud.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 pool=$DROVER_POOL count=$DROVER_COUNT node=$DROVER_NODE\" >> {}\necho \"cloud says ok\"\n",
            calls.display()
        ),
    )
    .unwrap();
    let pools = format!(
        "[[pool]]\nname = \"cloud\"\nprovider = \"command\"\nmin = 0\nmax = 1\n\
         target_drain_s = 1\nscale_up_cooldown_s = 1\nidle_cooldown_s = 1\nframe_s_estimate = 0.5\n\
         [pool.command]\nadd_command = \"sh {s} add\"\nremove_command = \"sh {s} remove\"\ntimeout_s = 30\n",
        s = script.display()
    );
    let (_d, mut c) = farm_with_pools(&pools);
    // A job only the pool's nodes may run: it waits for the pool.
    let mut s = spec("cloudy", 48);
    s["requirements"] = json!({ "pool": "cloud" });
    let sub = c.client().submit_json(&s).unwrap();
    wait_for(TIMEOUT, "the add command to run", || {
        let text = std::fs::read_to_string(&calls).unwrap_or_default();
        Ok(text.contains("add pool=cloud count=1").then_some(()))
    })
    .unwrap();
    // What the cloud would start: a node in the pool, named as the
    // command provider's remove command will be told.
    c.add_node_with("cloud-vm-1", &["--pool", "cloud"]).unwrap();
    let job = wait_job_done(&c, sub.id);
    assert_eq!(job.state, JobState::Done, "{:?}", job.error);
    assert_eq!(job.frames_by_node.get("cloud-vm-1"), Some(&48));
    // The removal is journaled once its command has run.
    let ds = wait_for(TIMEOUT, "the removal to be journaled", || {
        let ds = decisions(&c, "cloud");
        Ok(ds.iter().any(|d| d.action == "remove").then_some(ds))
    })
    .unwrap();
    let text = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        text,
        "add pool=cloud count=1 node=\nremove pool=cloud count=1 node=cloud-vm-1\n"
    );
    let actions: Vec<&str> = ds.iter().rev().map(|d| d.action.as_str()).collect();
    assert_eq!(actions, vec!["scale_up", "drain", "remove"], "{ds:#?}");
    for d in &ds {
        if d.action != "drain" {
            assert_eq!(d.output.as_deref(), Some("cloud says ok"), "{d:?}");
        }
    }
    wait_for(TIMEOUT, "the pool to count the removal", || {
        Ok((pool(&c, "cloud").requested == 0).then_some(()))
    })
    .unwrap();
    c.stop();
}

#[test]
fn a_bad_pools_file_stops_the_coordinator_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pools.toml");
    std::fs::write(
        &file,
        "[[pool]]\nname = \"a\"\nprovider = \"process\"\nmin = 3\nmax = 2\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["coordinator", "--data"])
        .arg(dir.path().join("data"))
        .args(["--http", "127.0.0.1:0", "--quic", "127.0.0.1:0", "--pools"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool[0].min: 3 is above max (2)"), "{err}");
    // Nothing was created: the file is checked first.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn preemption_by_api_and_by_signal_hands_frames_back_and_the_job_completes() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("farm");
    let mut c = Cluster::start(Path::new(BIN), &root, &[], &[]).unwrap();
    // Two slow spot nodes and a fast one; the job is big enough that the
    // slow ones hold long chunks when the notices come.
    c.add_node_with("spot-api", &["--slowdown", "20"]).unwrap();
    c.add_node_with("spot-signal", &["--slowdown", "20"])
        .unwrap();
    c.wait_nodes(2).unwrap();
    let sub = c.client().submit_json(&spec("spot", 600)).unwrap();
    let client = c.client();
    let client = &client;
    let running_on = |node: &str| {
        let node = node.to_string();
        move || -> anyhow::Result<Option<(u64, u64, u64)>> {
            let chunks = client.chunks(sub.id)?;
            Ok(chunks.chunks.iter().find_map(|ch| {
                (ch.node.as_deref() == Some(&node)
                    && ch.state == ChunkState::Assigned
                    && ch.frames_done > 0)
                    .then_some((ch.start, ch.end, ch.index.unwrap_or(0) as u64))
            }))
        }
    };
    let (a_start, a_end, a_index) =
        wait_for(TIMEOUT, "spot-api to render", running_on("spot-api")).unwrap();
    let (s_start, s_end, s_index) =
        wait_for(TIMEOUT, "spot-signal to render", running_on("spot-signal")).unwrap();

    // The API's notice, through the CLI as an admin sends it.
    let out = Command::new(BIN)
        .args(["preempt", "spot-api", "--url", &c.url()])
        .env("DROVER_API_KEY", c.admin_key().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("preempted"));
    // The node's own notice: SIGUSR1 to its agent (not its executor).
    let agent = pids_with(&[" node ", "--name spot-signal"]);
    assert_eq!(agent.len(), 1, "{agent:?}");
    // SAFETY: kill(2) on a process of this test's farm.
    assert_eq!(unsafe { libc::kill(agent[0], libc::SIGUSR1) }, 0);
    wait_for(TIMEOUT, "both spot nodes to be drained", || {
        let nodes = c.client().nodes()?;
        Ok(nodes
            .iter()
            .filter(|n| n.name.starts_with("spot-") && n.drained)
            .count()
            .eq(&2)
            .then_some(()))
    })
    .unwrap();
    // The frames they had not rendered wait for others: a fast node joins
    // and finishes the job.
    c.add_node("fast").unwrap();
    let job = wait_job_done(&c, sub.id);
    assert_eq!(job.state, JobState::Done, "{:?}", job.error);
    assert_eq!(job.frames_done, 600);
    let chunks = c.client().chunks(sub.id).unwrap();
    for (node, start, end, index) in [
        ("spot-api", a_start, a_end, a_index),
        ("spot-signal", s_start, s_end, s_index),
    ] {
        let cut = chunks
            .chunks
            .iter()
            .find(|ch| ch.index.map(u64::from) == Some(index) && ch.node.as_deref() == Some(node))
            .unwrap_or_else(|| panic!("{node}'s chunk {index}: {chunks:#?}"));
        assert_eq!(cut.start, start);
        assert!(
            cut.end < end,
            "{node}'s chunk {start}-{end} was not cut: {cut:?}"
        );
        // Nothing started on it after the notice: every chunk of the node
        // is the one it was on, or earlier.
        assert!(chunks
            .chunks
            .iter()
            .filter(|ch| ch.node.as_deref() == Some(node) && ch.state == ChunkState::Done)
            .all(|ch| ch.start <= start));
    }
    assert!(job.frames_by_node.get("fast").copied().unwrap_or(0) > 0);
    c.stop();
}

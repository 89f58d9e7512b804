//! `drover demo`: a coordinator and local node agents as separate processes
//! on loopback, a sample job submitted through the REST API, progress per
//! node, and a report of the whole farm's throughput.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use drover_shared::api::JobState;
use serde::Serialize;

use crate::cluster::Cluster;

/// Flags of `drover demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Frames to render.
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub frames: u64,
    /// Local node agents to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub nodes: u64,
    /// Where to write the video.
    #[arg(long, default_value = "drover-demo.mp4")]
    pub out: PathBuf,
    /// Built-in shader to render (plasma, rings, fractal).
    #[arg(long, default_value = "plasma")]
    pub shader: String,
    /// Frame width.
    #[arg(long, default_value_t = 1280)]
    pub width: u32,
    /// Frame height.
    #[arg(long, default_value_t = 720)]
    pub height: u32,
    /// Smallest chunk in frames (chunks are sized by each node's speed).
    #[arg(long, default_value_t = 24)]
    pub chunk_frames: u64,
    /// Working directory for the farm's data and logs (default: a fresh
    /// temporary directory, removed at the end).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// End with one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Start no node: an auto-scaling pool (the `process` provider, 0 to
    /// --nodes nodes) grows when the job arrives and shrinks back to 0
    /// once it is done; its scaling decisions are shown at the end.
    #[arg(long)]
    pub autoscale: bool,
}

/// How long `drover demo --autoscale` waits for its pool to grow and
/// shrink: a node's start (GPU probe, calibration) takes seconds, its
/// idle cooldown a few more.
const AUTOSCALE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The pools file of `drover demo --autoscale`: a short drain target and
/// idle cooldown, so the pool visibly grows and shrinks within a minute.
pub fn demo_pools_file(max_nodes: u64) -> String {
    format!(
        "[[pool]]\nname = \"demo\"\nprovider = \"process\"\nmin = 0\nmax = {max_nodes}\n\
         target_drain_s = 2\nscale_up_cooldown_s = 2\nidle_cooldown_s = 3\nframe_s_estimate = 0.5\n"
    )
}

/// Per-node line of the report.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// Frames it rendered.
    pub frames: u64,
    /// Adapter it rendered on.
    pub adapter: String,
    /// Adapter kind.
    pub device_type: String,
}

/// What `drover demo --json` prints.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    /// Output file.
    pub output: PathBuf,
    /// Frames in the output file, counted by decoding it.
    pub frames: u64,
    /// Submission to output written, on the coordinator's clock.
    pub wall_seconds: f64,
    /// `frames / wall_seconds`.
    pub frames_per_second: f64,
    /// Submission to the first chunk starting on a node, in milliseconds.
    pub first_frame_latency_ms: Option<u64>,
    /// Per node.
    pub nodes: Vec<NodeReport>,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let bin = std::env::current_exe().context("locating the drover binary")?;
    let (root, temporary) = match &args.workdir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("drover-demo-{}", std::process::id())),
            true,
        ),
    };
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    let chunk = args.chunk_frames.to_string();
    let pools_path = root.join("pools.toml");
    let mut coordinator_args = vec!["--chunk-frames".to_string(), chunk];
    if args.autoscale {
        std::fs::create_dir_all(&root)?;
        std::fs::write(&pools_path, demo_pools_file(args.nodes))?;
        coordinator_args.push("--pools".into());
        coordinator_args.push(pools_path.display().to_string());
    }
    let coordinator_args: Vec<&str> = coordinator_args.iter().map(|s| s.as_str()).collect();
    let mut cluster = Cluster::start(&bin, &root, &coordinator_args, &[])?;
    say(format!(
        "coordinator up: REST {} QUIC {} (data and logs in {})",
        cluster.url(),
        cluster.addrs.quic,
        root.display()
    ));
    if args.autoscale {
        say(format!(
            "pool \"demo\": process provider, 0 to {} nodes; no node runs yet",
            args.nodes
        ));
    } else {
        for i in 1..=args.nodes {
            cluster.add_node(&format!("node-{i}"))?;
        }
        cluster.wait_nodes(args.nodes as usize)?;
    }
    let client = cluster.client();
    let mut nodes = client.nodes()?;
    for n in &nodes {
        let a = n.capabilities.render_adapter.as_ref();
        say(format!(
            "{} connected: {} ({}), encoders {}",
            n.name,
            a.map(|a| a.name.as_str()).unwrap_or("?"),
            a.map(|a| format!("{:?}", a.device_type))
                .unwrap_or_default(),
            n.capabilities.encoders.join(",")
        ));
    }
    let spec = serde_json::json!({
        "name": "demo",
        "frames": { "start": 1, "end": args.frames },
        "fps": 24,
        "resolution": { "width": args.width, "height": args.height },
        "render": { "kind": "shader", "shader": args.shader },
        "output": { "container": "mp4", "codec": "h264", "quality": 18 },
    });
    let started = Instant::now();
    let sub = client.submit_json(&spec)?;
    say(format!(
        "job {} submitted: {} frames {}x{} '{}' -> {}{}",
        sub.id,
        args.frames,
        args.width,
        args.height,
        args.shader,
        cluster.url(),
        sub.status_url
    ));
    let job = crate::watch::watch(&client, sub.id, args.json)?;
    let client_wall = started.elapsed().as_secs_f64();
    if args.autoscale {
        // The pool's nodes came and go by themselves: read them now, then
        // wait for the pool to shrink back to nothing.
        nodes = client.nodes()?;
        say("job done; waiting for the pool to drain and remove its idle nodes".into());
        crate::cluster::wait_for(AUTOSCALE_TIMEOUT, "the pool to shrink to 0", || {
            let p = client.pools()?;
            Ok(p.iter()
                .all(|p| p.requested == 0 && p.nodes.is_empty())
                .then_some(()))
        })?;
        let decisions = client.pool_decisions("demo", 50)?;
        let mut oldest_first = decisions.clone();
        oldest_first.reverse();
        say(format!(
            "the pool's decisions (drover pools decisions demo):\n{}",
            crate::pools::decisions_table(&oldest_first)
        ));
    }
    if job.state != JobState::Done {
        bail!(
            "demo job ended {:?}: {}\ncoordinator log:\n{}",
            job.state,
            job.error.as_deref().unwrap_or("no reason"),
            cluster.log("coordinator")
        );
    }
    client.download(sub.id, &args.out)?;
    let decoded = drover_node::encode::decode_rgba_frames(&args.out, &[])
        .with_context(|| format!("reading back {}", args.out.display()))?;
    let wall_ms = job.finished_at_ms.unwrap_or(job.submitted_at_ms) - job.submitted_at_ms;
    let wall_seconds = (wall_ms as f64 / 1000.0).max(client_wall.min(0.001));
    let report = DemoReport {
        output: std::fs::canonicalize(&args.out).unwrap_or(args.out.clone()),
        frames: decoded.frame_count,
        wall_seconds,
        frames_per_second: decoded.frame_count as f64 / wall_seconds,
        first_frame_latency_ms: job.first_frame_at_ms.map(|t| t - job.submitted_at_ms),
        nodes: nodes
            .iter()
            .map(|n| NodeReport {
                name: n.name.clone(),
                frames: job.frames_by_node.get(&n.name).copied().unwrap_or(0),
                adapter: n
                    .capabilities
                    .render_adapter
                    .as_ref()
                    .map(|a| a.name.clone())
                    .unwrap_or_default(),
                device_type: n
                    .capabilities
                    .render_adapter
                    .as_ref()
                    .map(|a| format!("{:?}", a.device_type))
                    .unwrap_or_default(),
            })
            .collect(),
    };
    cluster.stop();
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("output: {}", report.output.display());
        println!(
            "frames: {} ({}x{}, H.264, {} fps)",
            report.frames, decoded.width, decoded.height, decoded.fps
        );
        println!("wall time: {:.2} s", report.wall_seconds);
        println!("farm throughput: {:.1} frames/s", report.frames_per_second);
        if let Some(l) = report.first_frame_latency_ms {
            println!("submission to first chunk started: {l} ms");
        }
        for n in &report.nodes {
            println!(
                "  {}: {} frames on {} ({})",
                n.name, n.frames, n.adapter, n.device_type
            );
        }
    }
    Ok(())
}

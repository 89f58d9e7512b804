//! `drover top` with a large synthetic fleet (1,000 nodes and 200 jobs by
//! default): what a frame costs to draw, what taking a snapshot costs, and
//! the CPU the whole screen uses per second of running at its real rates.
//!
//! The fleet is `drover_cli::top::fixture`'s, the same the snapshot tests
//! use; each simulated snapshot changes every node's heartbeat age, rate
//! and loads (as the coordinator's do), so the terminal backend has cells
//! to rewrite and nothing is measured on an unchanged screen.
//!
//! 1. **Frame time**: `ui::draw` into ratatui's test backend and into the
//!    crossterm backend writing escape sequences to a sink (what a real
//!    terminal gets, without a terminal's speed in the figure), at 80x24
//!    and 160x48; p50 and p99 over `--frames` frames, a snapshot applied
//!    before every frame.
//! 2. **Snapshot and event cost**: `App::apply_snapshot` (re-sort,
//!    re-filter, re-index), `App::apply` of one event (the rows change; the
//!    order is redone once before the next frame), and the two together
//!    with that re-sort, p50 and p99.
//! 3. **CPU per second**: `--seconds` of wall time at the real rates (a
//!    redraw at most 4 times a second, a snapshot every 1.5 s, `--events`
//!    events a second), sleeping between, as `drover top` does; user plus
//!    system CPU time from `getrusage` over wall time.
//!
//! Figures are printed, never asserted; they are recorded in
//! `bench/RESULTS.md` under `## drover top`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use clap::Parser;
use drover_cli::events::ApiEvent;
use drover_cli::top::app::App;
use drover_cli::top::{fixture, ui};
use drover_shared::api::FleetView;
use ratatui::backend::{Backend, CrosstermBackend, TestBackend};
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};

/// `drover top` with a synthetic fleet.
#[derive(Parser, Debug)]
struct Args {
    /// Nodes in the fleet.
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    /// Jobs in the fleet.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Frames drawn per backend and size for the frame-time percentiles.
    #[arg(long, default_value_t = 2_000)]
    frames: usize,
    /// Wall seconds of the real-rate run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events per second in the real-rate run.
    #[arg(long, default_value_t = 50)]
    events: u64,
}

/// 2025-11-24 14:00:00 UTC.
const AT_MS: u64 = 1_763_992_800_000;

/// The fleet of the `tick`th snapshot: the same nodes and jobs, their
/// changing figures moved.
fn snapshot(base: &FleetView, tick: u64) -> FleetView {
    let mut f = base.clone();
    f.at_ms = AT_MS + tick * 1_500;
    for (i, n) in f.nodes.iter_mut().enumerate() {
        let k = (i as u64).wrapping_mul(31).wrapping_add(tick * 17);
        n.heartbeat_age_ms = k % 1_000;
        n.cpu_load_pct = (k % 100) as f32;
        n.memory_load_pct = ((k / 7) % 100) as f32;
        if n.fps > 0.0 {
            n.fps = 1.0 + (k % 300) as f64 / 10.0;
            n.frames_done = (n.frames_done + tick) % 48;
        }
    }
    for j in f.jobs.iter_mut() {
        if j.fps > 0.0 {
            j.frames_done = (j.frames_done + tick * 3).min(j.frames_total);
            j.eta_s = Some(((j.frames_total - j.frames_done) as f64 / j.fps).ceil() as u64);
        }
    }
    f
}

fn event(i: u64, nodes: usize) -> ApiEvent {
    let node = format!("gpu-{:04}", (i as usize * 7) % nodes.max(1));
    let kind = ["node.drained", "node.undrained", "node.connected"][(i % 3) as usize];
    ApiEvent {
        id: format!("1.{i}"),
        kind: kind.into(),
        at_ms: AT_MS + i * 20,
        job: None,
        project: None,
        node: Some(node),
        data: serde_json::json!({}),
    }
}

fn percentiles(mut d: Vec<Duration>) -> (f64, f64, f64) {
    d.sort_unstable();
    let at = |q: f64| d[((d.len() as f64 * q) as usize).min(d.len() - 1)].as_secs_f64() * 1e3;
    (
        at(0.5),
        at(0.99),
        d.iter().sum::<Duration>().as_secs_f64() * 1e3 / d.len() as f64,
    )
}

fn cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Frame times on `terminal` over `frames` frames, a new snapshot before
/// each (its cost not counted).
fn frames<B: Backend>(
    terminal: &mut Terminal<B>,
    base: &FleetView,
    frames: usize,
) -> Vec<Duration> {
    let mut app = App::new("http://10.0.0.5:8270");
    let mut out = Vec::with_capacity(frames);
    for tick in 0..frames as u64 {
        app.apply_snapshot(snapshot(base, tick));
        let t = Instant::now();
        terminal
            .draw(|f| ui::draw(f, &app))
            .expect("a test or sink backend does not fail");
        out.push(t.elapsed());
    }
    out
}

fn sink_terminal(w: u16, h: u16) -> Terminal<CrosstermBackend<std::io::Sink>> {
    Terminal::with_options(
        CrosstermBackend::new(std::io::sink()),
        TerminalOptions {
            viewport: Viewport::Fixed(Rect::new(0, 0, w, h)),
        },
    )
    .expect("a sink backend opens")
}

/// Bytes the crossterm backend writes per frame at `w`x`h`.
fn bytes_per_frame(base: &FleetView, w: u16, h: u16, n: usize) -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    struct Count(Arc<AtomicU64>);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.fetch_add(b.len() as u64, Ordering::Relaxed);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let written = Arc::new(AtomicU64::new(0));
    let mut t = Terminal::with_options(
        CrosstermBackend::new(Count(Arc::clone(&written))),
        TerminalOptions {
            viewport: Viewport::Fixed(Rect::new(0, 0, w, h)),
        },
    )
    .expect("a counting backend opens");
    let mut app = App::new("http://10.0.0.5:8270");
    // The first frame paints everything; the figure is the steady state.
    app.apply_snapshot(snapshot(base, 0));
    let _ = t.draw(|f| ui::draw(f, &app));
    let first = written.load(Ordering::Relaxed);
    for tick in 1..=n as u64 {
        app.apply_snapshot(snapshot(base, tick));
        let _ = t.draw(|f| ui::draw(f, &app));
    }
    (written.load(Ordering::Relaxed) - first) as f64 / n as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = fixture::fleet(args.nodes, args.jobs, AT_MS);
    println!(
        "drover top: {} nodes, {} jobs; {} frames per case",
        args.nodes, args.jobs, args.frames
    );

    println!("\nframe time (ms)            p50      p99     mean");
    for (w, h) in [(80u16, 24u16), (160, 48)] {
        let mut t = Terminal::new(TestBackend::new(w, h))?;
        let (p50, p99, mean) = percentiles(frames(&mut t, &base, args.frames));
        println!("test backend {w:>3}x{h:<3}     {p50:>7.3}  {p99:>7.3}  {mean:>7.3}");
        let mut t = sink_terminal(w, h);
        let (p50, p99, mean) = percentiles(frames(&mut t, &base, args.frames));
        println!("crossterm->sink {w:>3}x{h:<3}  {p50:>7.3}  {p99:>7.3}  {mean:>7.3}");
        println!(
            "  bytes written per frame (steady state): {:.0}",
            bytes_per_frame(&base, w, h, 200)
        );
    }

    let mut app = App::new("http://10.0.0.5:8270");
    let snaps: Vec<FleetView> = (0..200).map(|t| snapshot(&base, t)).collect();
    let mut times = Vec::new();
    for s in &snaps {
        let s = s.clone();
        let t = Instant::now();
        app.apply_snapshot(s);
        times.push(t.elapsed());
    }
    let (p50, p99, _) = percentiles(times);
    println!("\napply_snapshot (ms)        {p50:>7.3}  {p99:>7.3}");
    let mut times = Vec::new();
    for i in 0..2_000 {
        let e = event(i, args.nodes);
        let t = Instant::now();
        app.apply(&e);
        times.push(t.elapsed());
    }
    let (p50, p99, _) = percentiles(times);
    println!(
        "apply one event (us)       {:>7.2}  {:>7.2}",
        p50 * 1e3,
        p99 * 1e3
    );
    // The worst case: a frame after every event, so every event pays for
    // the re-sort it made stale.
    let mut times = Vec::new();
    for i in 0..2_000 {
        let e = event(i, args.nodes);
        let t = Instant::now();
        app.apply(&e);
        app.refresh();
        times.push(t.elapsed());
    }
    let (p50, p99, _) = percentiles(times);
    println!("apply + refresh (ms)       {p50:>7.3}  {p99:>7.3}");

    // The real rates: as `drover top` runs, sleeping between.
    let mut t = sink_terminal(80, 24);
    let mut app = App::new("http://10.0.0.5:8270");
    let (start_wall, start_cpu) = (Instant::now(), cpu_s());
    let end = start_wall + Duration::from_secs(args.seconds);
    let frame_every = Duration::from_millis(250);
    let snap_every = Duration::from_millis(1_500);
    let event_every = Duration::from_micros(1_000_000 / args.events.max(1));
    let (mut next_frame, mut next_snap, mut next_event) = (start_wall, start_wall, start_wall);
    let (mut drawn, mut snapped, mut evented) = (0u64, 0u64, 0u64);
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_snap {
            app.apply_snapshot(snapshot(&base, snapped));
            snapped += 1;
            next_snap += snap_every;
        }
        while Instant::now() >= next_event {
            app.apply(&event(evented, args.nodes));
            evented += 1;
            next_event += event_every;
        }
        if Instant::now() >= next_frame && app.dirty {
            app.refresh();
            t.draw(|f| ui::draw(f, &app))?;
            app.dirty = false;
            drawn += 1;
            next_frame = Instant::now() + frame_every;
        }
        let wake = next_frame.min(next_snap).min(next_event);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
    let wall = start_wall.elapsed().as_secs_f64();
    let cpu = cpu_s() - start_cpu;
    println!(
        "\nreal rates for {wall:.1} s at 80x24 ({drawn} frames, {snapped} snapshots, {evented} events):"
    );
    println!(
        "  CPU {:.1} ms per second = {:.2}% of one core",
        cpu / wall * 1e3,
        cpu / wall * 100.0
    );
    std::io::stdout().flush()?;
    Ok(())
}

//! The simulator's promises: a seed replays a run exactly, the core's
//! invariants hold after every event under every strategy with faults,
//! every frame of every job is accounted for, and Drover's scheduler is
//! sane against the bound and against fixed 50-frame chunks.
//!
//! Sizes are small so that this runs in a few seconds in release builds
//! (`cargo test --release --workspace`); the figures for bench/RESULTS.md
//! come from the `simulate` binary at full size.

use std::process::Command;

use drover_bench::sim::{run, RunOptions, RunResult, Scenario, ScenarioParams, Strategy};
use drover_shared::api::JobState;

/// A small fleet: 2 GPU nodes, 6 CPU nodes, 4 jobs of 100 to 400 frames.
fn small(seed: u64, faults: bool) -> Scenario {
    Scenario::generate(&ScenarioParams {
        gpu_nodes: 2,
        cpu_nodes: 6,
        jobs: 4,
        min_frames: 100,
        max_frames: 400,
        faults,
        ..ScenarioParams::new(seed)
    })
}

fn checked() -> RunOptions {
    RunOptions {
        check_invariants: true,
        ..RunOptions::default()
    }
}

/// Every job ended; a done job's segments and missing frames tile its
/// frames exactly; a failed job says why.
fn assert_accounted(sc: &Scenario, r: &RunResult) {
    let who = format!("{} seed {}", r.report.strategy, sc.params.seed);
    assert!(r.report.finished, "{who}: did not finish");
    assert_eq!(r.refused, 0, "{who}: nodes refused");
    assert_eq!(r.jobs.len(), sc.jobs.len());
    for (job, out) in sc.jobs.iter().zip(&r.jobs) {
        match out.state {
            JobState::Done => {
                let mut next = job.first_frame;
                let mut missing = out.missing.iter().peekable();
                for &(s, e) in &out.segments {
                    while missing.peek().is_some_and(|m| **m == next) {
                        missing.next();
                        next += 1;
                    }
                    assert_eq!(
                        s, next,
                        "{who}: {} has a hole or overlap at frame {next}",
                        job.name
                    );
                    next = e + 1;
                }
                for m in missing {
                    assert_eq!(*m, next, "{who}: {} missing frame out of place", job.name);
                    next += 1;
                }
                assert_eq!(
                    next,
                    job.last_frame() + 1,
                    "{who}: {} ends at {next}",
                    job.name
                );
                assert_eq!(out.frames_done + out.missing.len() as u64, job.frames);
                // Only the frame that always fails may be missing.
                let allowed: Vec<u64> = job.poison_frame.into_iter().collect();
                assert_eq!(out.missing, allowed, "{who}: {} missing frames", job.name);
            }
            JobState::Failed => {
                let why = out.error.as_deref().unwrap_or("");
                assert!(
                    !why.is_empty(),
                    "{who}: {} failed without a reason",
                    job.name
                );
            }
            other => panic!("{who}: {} ended {other:?}", job.name),
        }
    }
}

#[test]
fn same_seed_same_result() {
    for strategy in [Strategy::Drover, Strategy::Static10, Strategy::Pull2s] {
        let a = run(&small(11, true), strategy, &RunOptions::default());
        let b = run(&small(11, true), strategy, &RunOptions::default());
        let (mut ra, mut rb) = (a.report.clone(), b.report.clone());
        ra.decisions_per_s = 0.0;
        rb.decisions_per_s = 0.0;
        assert_eq!(ra, rb, "{}", strategy.name());
        assert_eq!(a.jobs, b.jobs, "{}", strategy.name());
    }
    // A different seed is a different world.
    assert_ne!(small(11, true), small(12, true));
}

#[test]
fn invariants_hold_after_every_event_with_faults() {
    for seed in 1..=20 {
        let sc = small(seed, true);
        // The faulty scenario really has its faults.
        assert!(sc.nodes.iter().any(|n| !n.crashes_ms.is_empty()));
        assert!(sc
            .nodes
            .iter()
            .any(|n| n.uptime.len() > 1 || n.uptime[0].to.is_some()));
        assert!(sc
            .nodes
            .iter()
            .any(|n| n.episodes.iter().any(|e| e.speed_factor == 0.0)));
        assert_eq!(
            sc.jobs.iter().filter(|j| j.poison_frame.is_some()).count(),
            1
        );
        for strategy in Strategy::ALL {
            let r = run(&sc, strategy, &checked());
            assert_accounted(&sc, &r);
            assert!(
                r.report.chunk_failures > 0,
                "{}: no failure happened",
                strategy.name()
            );
        }
    }
}

#[test]
fn every_frame_accounted_without_faults() {
    let sc = small(5, false);
    for strategy in Strategy::ALL {
        let r = run(&sc, strategy, &checked());
        assert_accounted(&sc, &r);
        assert_eq!(r.report.jobs_done, sc.jobs.len(), "{}", strategy.name());
        assert_eq!(r.report.chunk_failures, 0);
        assert!(r.report.utilization > 0.0 && r.report.utilization <= 1.0);
        assert!(
            r.report.makespan_s >= r.report.lower_bound_s,
            "{}: beat the bound",
            strategy.name()
        );
    }
}

#[test]
fn drover_beats_static_50_and_nears_the_bound() {
    for seed in [1, 2] {
        let sc = small(seed, false);
        let drover = run(&sc, Strategy::Drover, &RunOptions::default()).report;
        let static50 = run(&sc, Strategy::Static50, &RunOptions::default()).report;
        assert!(
            drover.makespan_s < static50.makespan_s,
            "seed {seed}: drover {} s, static-50 {} s",
            drover.makespan_s,
            static50.makespan_s
        );
        assert!(
            drover.ratio <= 1.5,
            "seed {seed}: drover at {} of the bound",
            drover.ratio
        );
        assert!(drover.frames_stolen > 0, "seed {seed}: drover never stole");
    }
}

/// The binary prints its seed and the same JSON lines for the same seed
/// (all but the wall-clock `decisions_per_s`).
#[test]
fn binary_replays_a_seed() {
    let bin = env!("CARGO_BIN_EXE_simulate");
    let args = [
        "--seed",
        "7",
        "--faults",
        "--json",
        "--gpu-nodes",
        "2",
        "--cpu-nodes",
        "6",
        "--jobs",
        "4",
        "--min-frames",
        "100",
        "--max-frames",
        "400",
    ];
    let once = || {
        let out = Command::new(bin)
            .args(args)
            .output()
            .expect("simulate runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8(out.stderr).expect("utf-8");
        assert!(stderr.contains("seed 7"), "seed not printed: {stderr}");
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        lines
            .into_iter()
            .map(|mut v| {
                for key in [
                    "strategy",
                    "makespan_s",
                    "lower_bound_s",
                    "utilization",
                    "frames_stolen",
                    "frames_wasted",
                    "decisions_per_s",
                ] {
                    assert!(v.get(key).is_some(), "{key} missing from {v}");
                }
                assert_eq!(v["seed"], 7);
                v.as_object_mut().expect("object").remove("decisions_per_s");
                v
            })
            .collect::<Vec<_>>()
    };
    let a = once();
    let names: Vec<&str> = a
        .iter()
        .map(|v| v["strategy"].as_str().expect("name"))
        .collect();
    assert_eq!(names, Strategy::ALL.map(|s| s.name()));
    assert_eq!(a, once());
}

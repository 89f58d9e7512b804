//! The front-door benchmark at a small size, against the real binary: it
//! must finish with no error, every submission answered 201 over both
//! transports, the whole history listed newest first with none missing,
//! and every event delivered to every subscriber. The figures themselves
//! come from full-size runs (bench/RESULTS.md).
//!
//! It needs `target/<profile>/drover`, which `cargo test --release
//! --workspace` (scripts/test.sh) builds; `cargo test -p drover-bench`
//! alone does not, so build `-p drover-cli` first then.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `drover` in the profile directory this test was built into.
fn drover() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/front_door-<hash> -> target/<profile>/drover
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test sits in target/<profile>/deps")
        .join("drover");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p drover-cli` in this profile",
        bin.display()
    );
    bin
}

#[test]
fn a_small_run_submits_lists_and_fans_out_without_an_error() {
    let (clients, per_client, rounds) = (20u64, 2u64, 2u64);
    let (history, subscribers, events) = (2_000u64, 20u64, 10u64);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_front-door"))
        .args(["--clients", &clients.to_string()])
        .args(["--per-client", &per_client.to_string()])
        .args(["--rounds", &rounds.to_string()])
        .args(["--history", &history.to_string()])
        .args(["--list-requests", "5"])
        .args(["--subscribers", &subscribers.to_string()])
        .args(["--events", &events.to_string()])
        .args(["--event-rate", "100"])
        .arg("--json")
        .arg("--drover")
        .arg(drover())
        .output()
        .expect("running front-door");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "front-door failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in:\n{stdout}"));
    let s: Value = serde_json::from_str(json).expect("the JSON line parses");
    let why = || format!("output:\n{stdout}");
    assert_eq!(s["errors"], 0, "{}", why());

    // Submissions: every one a 201, both transports, both orders.
    let rounds_done = s["rounds"].as_array().expect("rounds");
    assert_eq!(rounds_done.len() as u64, rounds);
    assert_eq!(rounds_done[0]["first"], "REST");
    assert_eq!(rounds_done[1]["first"], "QUIC");
    for r in rounds_done {
        for via in ["rest", "quic"] {
            let p = &r[via];
            assert_eq!(p["connected"], clients, "{via}: {}", why());
            assert_eq!(p["ok"], clients * per_client, "{via}: {}", why());
            assert_eq!(p["errors"], 0, "{via}: {}", why());
            assert_eq!(p["latency"]["count"], clients * per_client);
            let p50 = p["latency"]["p50_ms"].as_f64().unwrap();
            let p99 = p["latency"]["p99_ms"].as_f64().unwrap();
            assert!(p50 > 0.0 && p50 <= p99, "{via}: p50 {p50}, p99 {p99}");
            assert!(p["per_s"].as_f64().unwrap() > 0.0);
        }
        assert!(r["quic_over_rest_per_s"].as_f64().unwrap() > 0.0);
    }

    // The history: complete and newest first (the bench checks every
    // page and counts what is wrong as errors).
    let l = &s["listing"];
    assert_eq!(l["errors"], 0, "{}", why());
    assert_eq!(l["history"]["jobs"], history);
    assert_eq!(l["walk_jobs"], history);
    assert_eq!(l["walk_requests"], history.div_ceil(500));
    let rare = l["history"]["rare"].as_u64().unwrap();
    assert_eq!(rare, history / 100);
    assert_eq!(l["rare"]["matches_all"], rare);
    assert!(l["history"]["in_memory"].as_u64().unwrap() > 0);
    for f in l["figures"].as_array().expect("figures") {
        assert_eq!(f["errors"], 0, "{f}");
        assert_eq!(f["latency"]["count"], 5, "{f}");
        assert!(f["jobs"].as_u64().unwrap() > 0, "{f}");
    }

    // Fan-out: every event to every subscriber, none twice.
    let f = &s["fanout"];
    assert_eq!(f["open"], subscribers, "{}", why());
    assert_eq!(f["published"], events);
    assert_eq!(f["expected"], subscribers * events);
    assert_eq!(f["delivered"], subscribers * events, "{}", why());
    assert_eq!(f["missing"], 0);
    assert_eq!(f["errors"], 0, "{}", why());
    let p99 = f["latency"]["p99_ms"].as_f64().unwrap();
    assert!(
        (0.0..10_000.0).contains(&p99),
        "delivery p99 {p99} ms: {}",
        why()
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
}

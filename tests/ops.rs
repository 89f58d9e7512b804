//! Operations end to end, against the real `drover` binary: `/metrics`
//! parsed with a maintained Prometheus text parser before, during and after
//! a job (every named series present, the counters moving, the scrape token
//! enforced), the Grafana dashboard's queries checked against a live
//! scrape, JSON logs from the coordinator and a node, and `/readyz` naming
//! the artifact store while it cannot be written, then recovering.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use drover_cli::cluster::{wait_for, Cluster};
use drover_coordinator::metrics::SERIES;
use drover_shared::api::JobState;
use prometheus_parse::{Scrape, Value};
use serde_json::{json, Value as Json};

const BIN: &str = env!("CARGO_BIN_EXE_drover");
/// The scrape token the farm is started with.
const TOKEN: &str = "scrape-0123456789abcdef";
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// One farm at a time: two tests rendering side by side on two cores only
/// slow each other down.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A farm under a fresh directory, `--log-format json` everywhere (the
/// environment reaches the coordinator, the nodes and their executors).
fn farm(dir: &Path, coordinator_args: &[&str]) -> Cluster {
    let xdg = dir.join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    let xdg = xdg.display().to_string();
    Cluster::start(
        Path::new(BIN),
        &dir.join("farm"),
        coordinator_args,
        &[
            ("DROVER_LOG_FORMAT", "json"),
            ("XDG_RUNTIME_DIR", xdg.as_str()),
        ],
    )
    .expect("farm starts")
}

/// `GET base+path` with an optional bearer token: status and body.
fn get(base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = ureq::get(&format!("{base}{path}")).timeout(Duration::from_secs(30));
    if let Some(t) = token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// One scrape, parsed.
struct Metrics {
    scrape: Scrape,
    text: String,
}

impl Metrics {
    fn read(base: &str) -> Metrics {
        let (status, text) = get(base, "/metrics", Some(TOKEN));
        assert_eq!(status, 200, "{text}");
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("/metrics is Prometheus text");
        Metrics { scrape, text }
    }

    /// The names of every series in the scrape (a histogram's `_bucket`,
    /// `_sum` and `_count` under its base name too).
    fn names(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for s in &self.scrape.samples {
            out.insert(s.metric.clone());
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = s.metric.strip_suffix(suffix) {
                    out.insert(base.to_string());
                }
            }
        }
        out
    }

    /// The value of series `name` with `labels` (a subset of its labels);
    /// panics naming it when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found =
            self.scrape.samples.iter().find(|s| {
                s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            });
        match found.map(|s| &s.value) {
            Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
            other => panic!("{name} {labels:?}: {other:?} in\n{}", self.text),
        }
    }
}

fn spec(name: &str, frames: u64) -> Json {
    json!({
        "name": name,
        "frames": { "start": 1, "end": frames },
        "fps": 24,
        "resolution": { "width": 64, "height": 64 },
        "render": { "kind": "shader", "shader": "rings" },
        // Chunks short enough that several finish (and are timed) in a
        // small job.
        "chunk_target_s": 1.0,
    })
}

#[test]
fn metrics_need_the_scrape_token_and_move_as_a_job_runs_and_logs_are_json() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("scrape-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_arg = token_file.display().to_string();
    let mut farm = farm(dir.path(), &["--metrics-token-file", &token_arg]);
    let base = farm.url();

    // The token: none is 401, a wrong one 403, an API key is no token.
    let (status, body) = get(&base, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Bearer"), "{body}");
    assert_eq!(get(&base, "/metrics", Some("scrape-wrong")).0, 403);
    let admin = farm.admin_key().unwrap();
    assert_eq!(get(&base, "/metrics", Some(&admin)).0, 403);

    // A slowed node, so the job is still running when scraped mid-way.
    farm.add_node_with("n1", &["--slowdown", "20"]).unwrap();
    farm.wait_nodes(1).unwrap();

    let before = Metrics::read(&base);
    let names = before.names();
    for series in SERIES {
        assert!(
            names.contains(*series),
            "{series} missing before the job:\n{}",
            before.text
        );
    }
    assert_eq!(
        before.value("drover_nodes", &[("pool", ""), ("state", "idle")]),
        1.0
    );
    assert_eq!(before.value("drover_frames_done_total", &[]), 0.0);
    assert_eq!(before.value("drover_queue_frames", &[]), 0.0);

    let frames = 24;
    let id = farm
        .client()
        .submit_json(&spec("metrics", frames))
        .expect("submitted")
        .id;

    // During: the job is counted as running or queued, the queue holds
    // frames and estimated seconds, the node is busy.
    let during = wait_for(JOB_TIMEOUT, "a scrape while the job runs", || {
        let m = Metrics::read(&base);
        let busy = m.value("drover_nodes", &[("pool", ""), ("state", "busy")]);
        Ok((busy == 1.0 && m.value("drover_queue_frames", &[]) > 0.0).then_some(m))
    })
    .unwrap();
    assert!(during.value("drover_queue_seconds", &[]) > 0.0);
    assert_eq!(
        during.value("drover_jobs", &[("state", "running")])
            + during.value("drover_jobs", &[("state", "queued")]),
        1.0,
        "{}",
        during.text
    );

    let job = farm
        .client()
        .wait_ended(id, Duration::from_millis(200), JOB_TIMEOUT)
        .unwrap();
    assert_eq!(job.state, JobState::Done, "{job:?}");

    // After: every counter that a job moves has moved, by the right amount
    // where it is exact.
    let after = wait_for(JOB_TIMEOUT, "the node to be idle again", || {
        let m = Metrics::read(&base);
        Ok((m.value("drover_nodes", &[("pool", ""), ("state", "idle")]) == 1.0).then_some(m))
    })
    .unwrap();
    assert_eq!(after.value("drover_frames_done_total", &[]), frames as f64);
    assert_eq!(after.value("drover_jobs", &[("state", "done")]), 1.0);
    assert_eq!(
        after.value("drover_jobs_finished_total", &[("state", "done")]),
        1.0
    );
    assert_eq!(after.value("drover_queue_frames", &[]), 0.0);
    assert_eq!(after.value("drover_queue_seconds", &[]), 0.0);
    assert!(after.value("drover_chunk_duration_seconds_count", &[]) >= 1.0);
    assert!(after.value("drover_chunk_duration_seconds_sum", &[]) > 0.0);
    assert!(
        after.value("drover_journal_commit_seconds_count", &[("journal", "wal")])
            > before.value("drover_journal_commit_seconds_count", &[("journal", "wal")])
    );
    assert!(
        after.value("drover_scheduler_decision_seconds_count", &[])
            > before.value("drover_scheduler_decision_seconds_count", &[])
    );
    assert!(
        after.value("drover_uploaded_bytes_total", &[])
            > before.value("drover_uploaded_bytes_total", &[])
    );
    let output = std::fs::metadata(job.output_path.as_deref().expect("output")).unwrap();
    // The segments together hold at least what the joined output does
    // (less the container overhead the join rewrites).
    assert!(after.value("drover_uploaded_bytes_total", &[]) as u64 >= output.len() / 2);

    // The dashboard queries only series a live coordinator serves.
    check_dashboard(&after.names());

    farm.stop();
    check_json_logs(&farm.log_files("coordinator"), id, "coordinator");
    check_json_logs(&farm.log_files("n1"), id, "n1");
}

/// Every metric name the Grafana dashboard's queries use is served.
fn check_dashboard(served: &BTreeSet<String>) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/drover-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard exists");
    let doc: Json = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&doc, &mut exprs);
    assert!(exprs.len() >= SERIES.len(), "a panel per series: {exprs:?}");
    let mut queried = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            queried.insert(name);
        }
    }
    for name in &queried {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            served.contains(name.as_str()) || served.contains(base),
            "the dashboard queries {name}, which /metrics does not serve"
        );
    }
    for series in SERIES {
        assert!(
            queried.iter().any(|q| q == series
                || q.strip_prefix(series)
                    .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))),
            "no panel shows {series}"
        );
    }
    // The datasource is a variable, so the dashboard imports anywhere.
    assert!(
        text.contains("${datasource}"),
        "panels use the datasource variable"
    );
}

fn collect_exprs(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_exprs(v, out);
                }
            }
        }
        Json::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `drover_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("drover_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        out.push(expr[start..end].to_string());
        i = end;
    }
    out
}

/// Every line of `files` is a JSON object; a line about a chunk carries its
/// `job`, `chunk` and `node` (as its own fields or its spans'); job `id`
/// is mentioned by some of them.
fn check_json_logs(files: &[PathBuf], id: u64, who: &str) {
    let mut about_chunks = 0;
    let mut about_job = 0;
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Json = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{who}: a log line is not JSON ({e}): {line}"));
            let fields = fields_of(&v);
            if fields.get("job").and_then(Json::as_u64) == Some(id) {
                about_job += 1;
            }
            if fields.contains_key("chunk") {
                about_chunks += 1;
                for key in ["job", "chunk", "node"] {
                    assert!(
                        fields.contains_key(key),
                        "{who}: a line about a chunk lacks `{key}`: {line}"
                    );
                }
            }
        }
    }
    assert!(about_job > 0, "{who}: no line names job {id}");
    assert!(about_chunks > 0, "{who}: no line about a chunk");
}

/// A JSON log line's fields: its own, then those of its spans.
fn fields_of(v: &Json) -> HashMap<String, Json> {
    let mut out: HashMap<String, Json> = HashMap::new();
    if let Some(spans) = v.get("spans").and_then(Json::as_array) {
        for s in spans {
            if let Some(m) = s.as_object() {
                out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }
    if let Some(m) = v.as_object() {
        out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(m) = v.get("fields").and_then(Json::as_object) {
        out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

#[test]
fn readyz_names_the_artifact_store_while_it_cannot_be_written() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let farm = farm(dir.path(), &["--metrics-public"]);
    let base = farm.url();
    assert_eq!(get(&base, "/healthz", None).0, 200);
    let ready = wait_for(Duration::from_secs(30), "/readyz to be 200", || {
        let (status, body) = get(&base, "/readyz", None);
        Ok((status == 200).then_some(body))
    })
    .unwrap();
    let ready: Json = serde_json::from_str(&ready).unwrap();
    for check in ["scheduler", "journal", "quic_endpoint", "artifact_store"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }
    // --metrics-public: no token needed.
    assert_eq!(get(&base, "/metrics", None).0, 200);

    // Root ignores permission bits, so the store is made unwritable by
    // putting a regular file where its directory was.
    let store = farm.root().join("coordinator").join("artifacts");
    let aside = farm.root().join("coordinator").join("artifacts.aside");
    std::fs::rename(&store, &aside).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    // A readiness result is reused for half a second: poll for the change.
    let unready = wait_for(Duration::from_secs(10), "/readyz to be 503", || {
        let (status, body) = get(&base, "/readyz", None);
        Ok((status == 503).then_some(body))
    });
    // Put back before asserting, so a failure leaves a sane farm behind.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&aside, &store).unwrap();
    let body = unready.unwrap();
    let problem: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["field"], "artifact_store", "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.starts_with("artifact_store: "), "{detail}");
    assert!(detail.contains("is not writable"), "{detail}");
    assert_eq!(problem["checks"]["journal"], "ok", "{problem}");
    assert_eq!(problem["checks"]["quic_endpoint"], "ok", "{problem}");

    wait_for(
        Duration::from_secs(10),
        "/readyz to be 200 again once the store is back",
        || Ok((get(&base, "/readyz", None).0 == 200).then_some(())),
    )
    .unwrap();
}

#[test]
fn metrics_are_closed_without_configuration_and_an_empty_token_file_is_refused() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let farm = farm(dir.path(), &[]);
    let (status, body) = get(&farm.url(), "/metrics", None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--metrics-token-file"), "{body}");
    drop(farm);

    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["coordinator", "--data"])
        .arg(dir.path().join("refused"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--metrics-token-file",
        ])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--metrics-token-file") && stderr.contains("is empty"),
        "{stderr}"
    );
}

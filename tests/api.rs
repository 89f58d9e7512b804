//! The REST API from outside, against the real `drover` binary: every
//! route in the OpenAPI document closed without a key, read-only for a
//! viewer, invisible across projects; every URL the API hands out
//! resolves; signed links; the error format; the event stream resumed
//! without a gap.

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use drover_cli::cluster::{wait_for, Cluster};
use drover_shared::api::{JobState, KeyCreated, Problem};
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());
const BIN: &str = env!("CARGO_BIN_EXE_drover");
const JOB_TIMEOUT: Duration = Duration::from_secs(240);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One answer: status, headers we look at, body as JSON (or text).
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    allow: Option<String>,
    retry_after: Option<String>,
    body: Value,
    bytes: Vec<u8>,
}

fn call(base: &str, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Answer {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let mut req = agent.request(method, &format!("{base}{path}"));
    if let Some(k) = key {
        req = req.set("authorization", &format!("Bearer {k}"));
    }
    let r = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let content_type = resp.header("content-type").unwrap_or_default().to_string();
    let allow = resp.header("allow").map(str::to_string);
    let retry_after = resp.header("retry-after").map(str::to_string);
    let mut bytes = Vec::new();
    // An event stream never ends: its status and type are the answer.
    if !content_type.starts_with("text/event-stream") {
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
    }
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(
            content_type,
            "application/problem+json",
            "{method} {path}: {status} without a problem document: {}",
            String::from_utf8_lossy(&bytes)
        );
        let p: Problem = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(p.status, status);
        assert!(!p.detail.is_empty());
    }
    Answer {
        status,
        content_type,
        allow,
        retry_after,
        body,
        bytes,
    }
}

fn spec(name: &str, frames: u64, project: Option<&str>) -> Value {
    let mut s = json!({
        "name": name,
        "frames": { "start": 1, "end": frames },
        "fps": 24,
        "resolution": { "width": 64, "height": 64 },
        "render": { "kind": "shader", "shader": "rings" },
    });
    if let Some(p) = project {
        s["project"] = json!(p);
    }
    s
}

fn create_key(
    base: &str,
    admin: &str,
    name: &str,
    role: &str,
    project: Option<&str>,
    rate: Option<u32>,
) -> KeyCreated {
    let mut body = json!({ "name": name, "role": role });
    if let Some(p) = project {
        body["project"] = json!(p);
    }
    if let Some(r) = rate {
        body["rate_per_s"] = json!(r);
    }
    let a = call(base, "POST", "/v1/keys", Some(admin), Some(&body));
    assert_eq!(a.status, 201, "{:?}", a.body);
    serde_json::from_value(a.body).unwrap()
}

fn wait_state(base: &str, key: &str, id: u64, want: JobState) {
    wait_for(JOB_TIMEOUT, "the job's state", || {
        let a = call(base, "GET", &format!("/v1/jobs/{id}"), Some(key), None);
        let state: JobState = serde_json::from_value(a.body["state"].clone())?;
        Ok((state == want).then_some(()))
    })
    .unwrap();
}

/// Every string in a JSON document that is a URL path of this API.
fn urls_in(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) if s.starts_with("/v1/") => {
            out.insert(s.clone());
        }
        Value::Array(a) => a.iter().for_each(|x| urls_in(x, out)),
        Value::Object(o) => o.values().for_each(|x| urls_in(x, out)),
        _ => {}
    }
}

fn fill(template: &str, params: &HashMap<&str, String>) -> String {
    let mut out = template.to_string();
    for (k, v) in params {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    assert!(!out.contains('{'), "unfilled parameter in {template}");
    out
}

/// A body for each mutation, so that a 403 is about the role, not a body.
fn body_for(method: &str, template: &str) -> Option<Value> {
    match (method, template) {
        ("POST", "/v1/jobs") => Some(spec("probe", 4, None)),
        ("PATCH", "/v1/jobs/{id}") => Some(json!({ "priority": 60 })),
        ("POST", "/v1/keys") => Some(json!({ "name": "probe", "role": "viewer" })),
        ("POST", "/v1/join-tokens") => Some(json!({ "note": "probe" })),
        ("PUT", "/v1/nodes/{name}/tags") => Some(json!({ "tags": ["probe"] })),
        _ => None,
    }
}

#[test]
fn every_route_is_closed_without_a_key_read_only_for_viewers_and_invisible_across_projects() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // One auto-scaled pool, so the pool routes have something to name. Its
    // commands fail (`false`): the pool never gets a node, and its failed
    // attempts are decisions the routes list.
    let pools = dir.path().join("pools.toml");
    std::fs::write(
        &pools,
        "[[pool]]\nname = \"spot\"\nprovider = \"command\"\nmin = 0\nmax = 1\n\
         [pool.command]\nadd_command = \"false\"\nremove_command = \"false\"\n",
    )
    .unwrap();
    let pools_arg = pools.to_str().unwrap();
    let mut c = Cluster::start(Path::new(BIN), dir.path(), &["--pools", pools_arg], &[]).unwrap();
    c.add_node("node-1").unwrap();
    c.wait_nodes(1).unwrap();
    let base = c.url();
    let admin = c.admin_key().unwrap();
    let sub_a = create_key(&base, &admin, "pipe-a", "submitter", Some("alpha"), None);
    let sub_b = create_key(&base, &admin, "pipe-b", "submitter", Some("beta"), None);
    let viewer = create_key(&base, &admin, "wall", "viewer", None, None);
    let throwaway = create_key(&base, &admin, "old", "viewer", None, None);

    // A done job of project alpha, submitted by alpha's key (the spec names
    // no project: the key's is used).
    let a = call(
        &base,
        "POST",
        "/v1/jobs",
        Some(&sub_a.secret),
        Some(&spec("alpha job", 8, None)),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let job = a.body["id"].as_u64().unwrap();
    wait_state(&base, &admin, job, JobState::Done);
    let v = call(&base, "GET", &format!("/v1/jobs/{job}"), Some(&admin), None).body;
    assert_eq!(v["project"], "alpha");
    assert_eq!(v["submitter"], "pipe-a");
    // A spec naming another project than its key's is refused.
    let a = call(
        &base,
        "POST",
        "/v1/jobs",
        Some(&sub_b.secret),
        Some(&spec("x", 4, Some("alpha"))),
    );
    assert_eq!(a.status, 403);
    assert_eq!(a.body["field"], "project");

    // The document, fetched without a key.
    let doc = call(&base, "GET", "/v1/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut routes = Vec::new();
    for (path, item) in doc.body["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            let public = op["security"] == json!([{}]);
            routes.push((m.to_uppercase(), path.clone(), public));
        }
    }
    assert!(routes.len() >= 25, "{routes:?}");
    let links = call(
        &base,
        "GET",
        &format!("/v1/jobs/{job}/artifacts"),
        Some(&admin),
        None,
    );
    assert_eq!(links.status, 200, "{:?}", links.body);
    let mut params: HashMap<&str, String> = HashMap::new();
    params.insert("id", job.to_string());
    params.insert("job", job.to_string());
    params.insert("name", "node-1".into());
    // The job's first chunk, whose executor log the node sent.
    params.insert("index", "0".into());

    for (method, template, public) in &routes {
        let mut p = params.clone();
        if template.starts_with("/v1/keys/") {
            p.insert("id", throwaway.key.id.clone());
        }
        if template.starts_with("/v1/downloads/") {
            p.insert("name", "output.mp4".into());
        }
        if template.starts_with("/v1/pools/") {
            p.insert("name", "spot".into());
        }
        let path = fill(template, &p);
        let body = body_for(method, template);
        // Without a key: 401 everywhere but the public routes.
        let a = call(&base, method, &path, None, body.as_ref());
        if *public {
            assert_ne!(a.status, 401, "{method} {path} is public");
        } else {
            assert_eq!(a.status, 401, "{method} {path} without a key");
        }
        // A route that exists answers something other than 404/405 to the
        // admin (a download without its signature is a 400).
        if *method == "GET" {
            let a = call(&base, method, &path, Some(&admin), None);
            assert!(
                ![404, 405].contains(&a.status),
                "{method} {path} is documented but answers {}",
                a.status
            );
        }
        // A viewer may not change anything.
        if *method != "GET" && !*public {
            let a = call(&base, method, &path, Some(&viewer.secret), body.as_ref());
            assert_eq!(a.status, 403, "{method} {path} as a viewer: {:?}", a.body);
        }
        // Another project's key does not see alpha's job, its artifacts or
        // its events.
        if template.contains("/v1/jobs/{id}") {
            let a = call(&base, method, &path, Some(&sub_b.secret), body.as_ref());
            assert_eq!(
                a.status, 404,
                "{method} {path} across projects: {:?}",
                a.body
            );
        }
    }
    let a = call(
        &base,
        "GET",
        &format!("/v1/events?job={job}"),
        Some(&sub_b.secret),
        None,
    );
    assert_eq!(a.status, 404);
    let a = call(&base, "GET", "/v1/jobs", Some(&sub_b.secret), None);
    assert!(
        a.body["jobs"].as_array().unwrap().is_empty(),
        "{:?}",
        a.body
    );
    let a = call(
        &base,
        "GET",
        "/v1/jobs?project=alpha",
        Some(&sub_b.secret),
        None,
    );
    assert_eq!(a.status, 403);

    // Every URL in every answer resolves.
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = [
        "/v1/jobs",
        "/v1/nodes",
        "/v1/keys",
        &format!("/v1/jobs/{job}"),
        &format!("/v1/jobs/{job}/artifacts"),
        &format!("/v1/jobs/{job}/chunks"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    while let Some(url) = todo.pop() {
        if !seen.insert(url.clone()) || seen.len() > 200 {
            continue;
        }
        let a = call(&base, "GET", &url, Some(&admin), None);
        assert!(
            a.status < 300,
            "GET {url} handed out by the API answers {}: {:?}",
            a.status,
            a.body
        );
        let mut found = BTreeSet::new();
        urls_in(&a.body, &mut found);
        todo.extend(found.into_iter().filter(|u| !seen.contains(u)));
    }
    assert!(
        seen.iter().any(|u| u.starts_with("/v1/downloads/")),
        "{seen:?}"
    );

    // Signed links: the exact bytes; altered or expired ones refused.
    let arts = links.body["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 2);
    let out = arts.iter().find(|a| a["name"] == "output.mp4").unwrap();
    let url = out["download_url"].as_str().unwrap();
    let a = call(&base, "GET", url, None, None);
    assert_eq!(a.status, 200);
    let got = dir.path().join("got.mp4");
    std::fs::write(&got, &a.bytes).unwrap();
    assert_eq!(
        drover_coordinator::artifact::sha256_file(&got).unwrap(),
        out["sha256"].as_str().unwrap()
    );
    assert_eq!(a.bytes.len() as u64, out["bytes"].as_u64().unwrap());
    let poster = arts.iter().find(|a| a["name"] == "poster.png").unwrap();
    let a = call(
        &base,
        "GET",
        poster["download_url"].as_str().unwrap(),
        None,
        None,
    );
    assert_eq!(&a.bytes[..8], b"\x89PNG\r\n\x1a\n");
    let tampered = url.replace(&format!("/{job}/"), &format!("/{}/", job + 1));
    assert_eq!(call(&base, "GET", &tampered, None, None).status, 403);
    let tampered = url.replace("sig=", "sig=00");
    assert_eq!(call(&base, "GET", &tampered, None, None).status, 403);
    let signer =
        drover_coordinator::api::links::Links::load_or_create(&dir.path().join("coordinator"))
            .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = signer.sign_until(job, "output.mp4", now - 5);
    let a = call(&base, "GET", &expired, None, None);
    assert_eq!(a.status, 410, "{:?}", a.body);
    assert_eq!(a.body["field"], "expires");

    // Tags an admin sets replace the node's own, and can be given back.
    let a = call(
        &base,
        "PUT",
        "/v1/nodes/node-1/tags",
        Some(&admin),
        Some(&json!({ "tags": ["4k", "fast"] })),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["capabilities"]["tags"], json!(["4k", "fast"]));
    let a = call(
        &base,
        "PUT",
        "/v1/nodes/node-1/tags",
        Some(&admin),
        Some(&json!({ "tags": ["no space"] })),
    );
    assert_eq!((a.status, a.body["field"].as_str()), (422, Some("tags[0]")));
    let a = call(
        &base,
        "PUT",
        "/v1/nodes/node-1/tags",
        Some(&admin),
        Some(&json!({ "tags": null })),
    );
    assert_eq!(a.body["capabilities"]["tags"], json!([]));

    // The error format: 404, 405 with Allow, 415, 422, 413, 429 with
    // Retry-After, and a revoked key.
    let a = call(&base, "GET", "/v1/nope", Some(&admin), None);
    assert_eq!(a.status, 404);
    let a = call(&base, "DELETE", "/v1/nodes", Some(&admin), None);
    assert_eq!(a.status, 405);
    assert_eq!(a.allow.as_deref(), Some("GET"));
    let a = ureq::post(&format!("{base}/v1/jobs"))
        .set("authorization", &format!("Bearer {admin}"))
        .set("content-type", "text/plain")
        .send_string("name = 1");
    match a {
        Err(ureq::Error::Status(415, r)) => {
            assert_eq!(r.header("content-type"), Some("application/problem+json"))
        }
        other => panic!("text/plain spec: {other:?}"),
    }
    let a = call(
        &base,
        "PATCH",
        &format!("/v1/jobs/{job}"),
        Some(&admin),
        Some(&json!({ "priority": 101 })),
    );
    assert_eq!(a.status, 422);
    assert_eq!(a.body["field"], "priority");
    let a = call(
        &base,
        "POST",
        "/v1/keys",
        Some(&admin),
        Some(&json!({ "name": "x".repeat(100_000), "role": "viewer" })),
    );
    assert_eq!(a.status, 413);
    let slow = create_key(&base, &admin, "slow", "viewer", None, Some(1));
    let statuses: Vec<Answer> = (0..4)
        .map(|_| call(&base, "GET", "/v1/nodes", Some(&slow.secret), None))
        .collect();
    let limited = statuses
        .iter()
        .find(|a| a.status == 429)
        .expect("the 1/s key is limited");
    assert!(limited
        .retry_after
        .as_deref()
        .is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    assert_eq!(limited.body["field"], "rate_per_s");
    let a = call(
        &base,
        "DELETE",
        &format!("/v1/keys/{}", throwaway.key.id),
        Some(&admin),
        None,
    );
    assert_eq!(a.status, 200);
    let a = call(&base, "GET", "/v1/nodes", Some(&throwaway.secret), None);
    assert_eq!(a.status, 401);
    assert!(a.body["detail"].as_str().unwrap().contains("revoked"));
    assert!(a.content_type.contains("problem"));
    c.stop();
}

/// Reads SSE events (id, kind) from a stream until `stop` says so.
fn read_events(
    reader: &mut impl BufRead,
    mut stop: impl FnMut(&str, &str) -> bool,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let (mut id, mut kind) = (String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            return out;
        }
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("id: ") {
            id = v.to_string();
        } else if let Some(v) = l.strip_prefix("event: ") {
            kind = v.to_string();
        } else if l.is_empty() && !kind.is_empty() {
            out.push((id.clone(), kind.clone()));
            let done = stop(&id, &kind);
            kind.clear();
            if done {
                return out;
            }
        }
    }
}

fn open_stream(
    base: &str,
    key: &str,
    last: Option<&str>,
) -> std::io::BufReader<Box<dyn std::io::Read + Send + Sync>> {
    let mut req =
        ureq::get(&format!("{base}/v1/events")).set("authorization", &format!("Bearer {key}"));
    if let Some(l) = last {
        req = req.set("last-event-id", l);
    }
    let r = req.call().unwrap();
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    std::io::BufReader::new(r.into_reader())
}

#[test]
fn a_client_that_disconnects_and_resumes_with_last_event_id_misses_no_event() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Path::new(BIN), dir.path(), &["--chunk-frames", "4"], &[]).unwrap();
    let base = c.url();
    let admin = c.admin_key().unwrap();
    let mut first = open_stream(&base, &admin, None);
    c.add_node("node-1").unwrap();
    c.wait_nodes(1).unwrap();
    let a = call(
        &base,
        "POST",
        "/v1/jobs",
        Some(&admin),
        Some(&spec("events", 48, None)),
    );
    let job = a.body["id"].as_u64().unwrap();
    // Read a few events, then drop the connection mid-job.
    let mut got = read_events(&mut first, |_, kind| kind == "job.started");
    drop(first);
    // More happens while nobody listens.
    wait_state(&base, &admin, job, JobState::Done);
    let last = got.last().unwrap().0.clone();
    let mut again = open_stream(&base, &admin, Some(&last));
    got.extend(read_events(&mut again, |_, kind| kind == "job.done"));
    let kinds: Vec<&str> = got.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds[0], "node.connected", "{kinds:?}");
    assert!(
        kinds.contains(&"job.submitted") && kinds.contains(&"job.progress"),
        "{kinds:?}"
    );
    assert_eq!(*kinds.last().unwrap(), "job.done");
    // No gap and no repeat: the ids of one run count up by one.
    let seqs: Vec<u64> = got
        .iter()
        .map(|(id, _)| id.split_once('.').unwrap().1.parse().unwrap())
        .collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{got:?}");
    }
    // Stored chunks: one progress event each, frames adding up.
    let v = call(
        &base,
        "GET",
        &format!("/v1/jobs/{job}/chunks"),
        Some(&admin),
        None,
    )
    .body;
    let chunks = v["chunks"].as_array().unwrap().len();
    assert_eq!(
        kinds.iter().filter(|k| **k == "job.progress").count(),
        chunks,
        "{kinds:?}"
    );
    // A browser's EventSource sends no header: a signed link opens the
    // stream as the key that asked for it, until it expires.
    let link = call(
        &base,
        "GET",
        &format!("/v1/events/link?job={job}"),
        Some(&admin),
        None,
    );
    assert_eq!(link.status, 200, "{:?}", link.body);
    let url = link.body["url"].as_str().unwrap().to_string();
    let r = ureq::get(&format!("{base}{url}")).call().unwrap();
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    drop(r);
    let a = call(
        &base,
        "GET",
        &url.replace(&format!("job={job}"), "job=999"),
        None,
        None,
    );
    assert_eq!(a.status, 403, "another job's stream with this link");
    // After a restart an old id cannot be resumed exactly: a reset comes
    // first.
    c.restart_coordinator().unwrap();
    let mut after = open_stream(&base, &admin, Some(&last));
    let first_after = read_events(&mut after, |_, _| true);
    assert_eq!(first_after[0].1, "reset");
    c.stop();
}

/// What a receiver got: the signature header, the body, and the status it
/// answered.
type Received = std::sync::Arc<Mutex<Vec<(String, Vec<u8>, u16)>>>;

/// A webhook receiver on loopback: answers 500 to the first `fail`
/// requests, then 200; keeps every request's signature header and body.
struct Receiver {
    url: String,
    got: Received,
}

fn receiver(fail: usize) -> Receiver {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got: Received = Default::default();
    let log = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            let (head_end, len) = loop {
                let n = s.read(&mut tmp).unwrap_or(0);
                if n == 0 {
                    break (0, 0);
                }
                buf.extend_from_slice(&tmp[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (i + 4, len);
                }
            };
            if head_end == 0 {
                continue;
            }
            while buf.len() < head_end + len {
                let n = s.read(&mut tmp).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let sig = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("drover-signature")
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            let body = buf[head_end..head_end + len.min(buf.len() - head_end)].to_vec();
            let mut g = log.lock().unwrap();
            let status = if g.len() < fail { 500 } else { 200 };
            g.push((sig, body, status));
            drop(g);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    Receiver { url, got }
}

#[test]
fn a_webhook_refused_twice_is_delivered_signed_after_a_coordinator_restart() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // A 4 s base: the third try comes 2 to 8 s after the second (jitter),
    // so the restart lands between them.
    let mut c = Cluster::start(
        Path::new(BIN),
        dir.path(),
        &["--webhook-retry-base-ms", "4000"],
        &[],
    )
    .unwrap();
    c.add_node("node-1").unwrap();
    c.wait_nodes(1).unwrap();
    let base = c.url();
    let admin = c.admin_key().unwrap();
    let rx = receiver(2);
    let mut s = spec("hooked", 8, None);
    s["webhooks"] = json!([rx.url]);
    let a = call(&base, "POST", "/v1/jobs", Some(&admin), Some(&s));
    assert_eq!(a.status, 201, "{:?}", a.body);
    let job = a.body["id"].as_u64().unwrap();
    wait_state(&base, &admin, job, JobState::Done);
    // Two refusals, recorded, then the coordinator dies before the third
    // try (deliveries are at least once: one killed between sending and
    // recording an attempt sends it again).
    wait_for(
        Duration::from_secs(60),
        "two refused deliveries recorded",
        || {
            let a = call(
                &base,
                "GET",
                &format!("/v1/jobs/{job}/webhooks"),
                Some(&admin),
                None,
            );
            Ok((a.body[0]["attempts"].as_array().map_or(0, |a| a.len()) >= 2).then_some(()))
        },
    )
    .unwrap();
    assert_eq!(rx.got.lock().unwrap().len(), 2);
    c.kill_coordinator().unwrap();
    c.start_coordinator().unwrap();
    wait_for(Duration::from_secs(120), "the delivery", || {
        Ok((rx.got.lock().unwrap().len() >= 3).then_some(()))
    })
    .unwrap();
    let got = rx.got.lock().unwrap().clone();
    let secret =
        drover_coordinator::webhook::load_or_create_secret(&dir.path().join("coordinator"))
            .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (sig, body, _) in &got {
        drover_coordinator::webhook::verify(&secret, sig, body, now, 300)
            .unwrap_or_else(|e| panic!("signature {sig}: {e}"));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], "job.done");
        assert_eq!(v["job"]["id"], job);
    }
    assert_eq!(got[0].1, got[2].1, "every attempt sends the same body");
    assert_eq!(got.iter().map(|g| g.2).collect::<Vec<_>>(), [500, 500, 200]);
    // The API shows each attempt.
    let d = wait_for(Duration::from_secs(30), "the delivery recorded", || {
        let a = call(
            &base,
            "GET",
            &format!("/v1/jobs/{job}/webhooks"),
            Some(&admin),
            None,
        );
        Ok((a.body[0]["state"] == "delivered").then_some(a.body))
    })
    .unwrap();
    let attempts = d[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{d:?}");
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[2]["status"], 200);
    assert_eq!(got.len(), 3, "delivered once: no repeat after success");
    c.stop();
}

/// Runs `drover node` with `args` until it exits (bounded); returns its
/// exit status and output.
fn node_until_exit(args: &[&str], dir: &Path) -> (std::process::ExitStatus, String) {
    let log = dir.join(format!("node-{}.log", rand_suffix()));
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("node")
        .args(args)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(120), "the refused node to exit", || {
        Ok(child.try_wait()?)
    });
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
    };
    (status, std::fs::read_to_string(&log).unwrap())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn nodes_join_only_with_a_token_and_a_revoked_node_is_cut_off_and_its_chunk_requeued() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Path::new(BIN), dir.path(), &["--chunk-frames", "8"], &[]).unwrap();
    let base = c.url();
    let admin = c.admin_key().unwrap();
    let quic = c.addrs.quic.to_string();
    let fp = c.addrs.cert_sha256.clone();

    // No token: refused at the handshake, both sides say why.
    let d1 = dir.path().join("rogue");
    let (status, out) = node_until_exit(
        &[
            "--coordinator",
            &quic,
            "--cert-sha256",
            &fp,
            "--data",
            d1.to_str().unwrap(),
            "--name",
            "rogue",
        ],
        dir.path(),
    );
    assert!(!status.success());
    assert!(
        out.contains("not admitted") && out.contains("--join"),
        "{out}"
    );
    assert!(
        c.log("coordinator").contains("not admitted"),
        "the coordinator logs the refusal"
    );

    // A revoked token: refused, naming the revocation.
    let a = call(
        &base,
        "POST",
        "/v1/join-tokens",
        Some(&admin),
        Some(&json!({ "note": "old" })),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let old = a.body["secret"].as_str().unwrap().to_string();
    let old_id = a.body["token"]["id"].as_str().unwrap().to_string();
    assert!(old.starts_with("drj1_") && old.contains(&fp));
    assert_eq!(
        call(
            &base,
            "DELETE",
            &format!("/v1/join-tokens/{old_id}"),
            Some(&admin),
            None
        )
        .status,
        200
    );
    let d2 = dir.path().join("late");
    let (status, out) = node_until_exit(
        &[
            "--join",
            &old,
            "--data",
            d2.to_str().unwrap(),
            "--name",
            "late",
        ],
        dir.path(),
    );
    assert!(!status.success());
    assert!(out.contains("revoked"), "{out}");

    // Two real nodes join with the farm's token (it is the only flag they
    // need besides the test's own); a job runs on both.
    c.add_node_with("n1", &["--slowdown", "20"]).unwrap();
    c.add_node("n2").unwrap();
    c.wait_nodes(2).unwrap();
    let ids = call(&base, "GET", "/v1/identities", Some(&admin), None).body;
    assert_eq!(ids.as_array().unwrap().len(), 2, "{ids:?}");
    let a = call(
        &base,
        "POST",
        "/v1/jobs",
        Some(&admin),
        Some(&spec("revoke", 96, None)),
    );
    let job = a.body["id"].as_u64().unwrap();
    // n1 (slow) holds a chunk.
    wait_for(Duration::from_secs(60), "n1 to hold a chunk", || {
        let n = call(&base, "GET", "/v1/nodes/n1", Some(&admin), None).body;
        Ok((!n["chunks"].as_array().unwrap().is_empty()).then_some(()))
    })
    .unwrap();
    let a = call(&base, "DELETE", "/v1/identities/n1", Some(&admin), None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(a.body["revoked_ms"].is_u64());
    // Cut off at once: not connected, holding nothing; its frames run
    // elsewhere and the job completes.
    wait_for(Duration::from_secs(30), "n1 to be cut off", || {
        let n = call(&base, "GET", "/v1/nodes/n1", Some(&admin), None).body;
        Ok(
            (n["connected"] == false && n["chunks"].as_array().is_none_or(|c| c.is_empty()))
                .then_some(()),
        )
    })
    .unwrap();
    wait_state(&base, &admin, job, JobState::Done);
    let v = call(&base, "GET", &format!("/v1/jobs/{job}"), Some(&admin), None).body;
    assert_eq!(v["frames_done"], 96);
    // The revoked node stops, saying why, and stays out.
    wait_for(Duration::from_secs(60), "n1 to stop", || {
        Ok(c.log("n1").contains("revoked").then_some(()))
    })
    .unwrap();
    c.stop();
}

#[test]
fn quic_submission_has_the_same_auth_validation_and_errors_as_rest() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Path::new(BIN), dir.path(), &[], &[]).unwrap();
    let base = c.url();
    let admin = c.admin_key().unwrap();
    let viewer = create_key(&base, &admin, "eyes", "viewer", None, None);
    let trust = drover_node::tls::Trust::Fingerprint(c.addrs.cert_sha256.clone());
    let quic = c.addrs.quic;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use drover_cli::quic_client::QuicClient;
        let mut q = QuicClient::connect(quic, &trust, &admin).await.unwrap();
        // A job submitted over QUIC is the same job over REST.
        let sub = q.submit_json(&spec("over quic", 4, None)).await.unwrap();
        let v = call(&base, "GET", &sub.status_url, Some(&admin), None).body;
        assert_eq!(v["name"], "over quic");
        assert_eq!(v["submitter"], "admin");
        // Reads and acts through the same operations.
        let a = q
            .call("GET", &format!("/v1/jobs/{}", sub.id), "", vec![])
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        let a = q
            .call(
                "PATCH",
                &format!("/v1/jobs/{}", sub.id),
                "application/json",
                br#"{"priority": 70}"#.to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        // The same errors, field and all, as REST.
        let mut bad = spec("bad", 4, None);
        bad["fps"] = json!(1000);
        let over_quic = q
            .call(
                "POST",
                "/v1/jobs",
                "application/json",
                serde_json::to_vec(&bad).unwrap(),
            )
            .await
            .unwrap();
        let over_rest = call(&base, "POST", "/v1/jobs", Some(&admin), Some(&bad));
        assert_eq!(over_quic.status, 422);
        assert_eq!(over_quic.status, over_rest.status);
        let pq: Value = serde_json::from_slice(&over_quic.body).unwrap();
        assert_eq!(pq, over_rest.body);
        let a = q
            .call("POST", "/v1/jobs", "text/plain", b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(a.status, 415);
        q.close();
        // No key, a viewer's key: 401 and 403.
        let mut anon = QuicClient::connect(quic, &trust, "").await.unwrap();
        let a = anon.call("GET", "/v1/jobs", "", vec![]).await.unwrap();
        assert_eq!(a.status, 401);
        let mut eyes = QuicClient::connect(quic, &trust, &viewer.secret)
            .await
            .unwrap();
        let a = eyes.call("GET", "/v1/jobs", "", vec![]).await.unwrap();
        assert_eq!(a.status, 200);
        let err = eyes
            .submit_json(&spec("x", 4, None))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("403"), "{err}");
    });
    c.stop();
}

/// The generator's venv (scripts/setup.sh makes it).
fn openapi_generator() -> std::path::PathBuf {
    let venv = std::env::var("DROVER_OPENAPI_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/openapi-venv"));
    let bin = venv.join("bin/openapi-python-client");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup.sh (it installs the OpenAPI client generator)",
        bin.display()
    );
    bin
}

#[test]
fn a_python_client_generated_from_the_openapi_document_works() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Path::new(BIN), dir.path(), &[], &[]).unwrap();
    let base = c.url();
    let admin = c.admin_key().unwrap();
    let doc = call(&base, "GET", "/v1/openapi.json", None, None);
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, &doc.bytes).unwrap();
    let pkg = dir.path().join("gen").join("drover_client");
    let out = std::process::Command::new(openapi_generator())
        .args(["generate", "--meta", "none", "--path"])
        .arg(&doc_path)
        .arg("--output-path")
        .arg(&pkg)
        .output()
        .unwrap();
    assert!(
        out.status.success() && pkg.join("client.py").exists(),
        "generation failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let python = openapi_generator().with_file_name("python");
    let out = std::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/openapi/client_check.py"))
        .arg(&base)
        .arg(&admin)
        .env("PYTHONPATH", dir.path().join("gen"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("python client ok"),
        "{text}"
    );
    c.stop();
}

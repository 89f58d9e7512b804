//! A fake Kubernetes API server on loopback for the `kubernetes` provider's
//! tests: it answers with the real API's shapes (`autoscaling/v1` `Scale`,
//! `apps/v1` `Deployment`, `v1` `Pod`, `v1` `Status` for failures), applies
//! merge patches the way the real one does (a `resourceVersion` in the patch
//! must be the current one, or `409 Conflict`), and records every request.
//! Shared by coordinator/tests/kube_provider.rs and tests/deploy.rs (which
//! includes this file by path), so each uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

pub const NS: &str = "farm";
pub const MERGE: &str = "application/merge-patch+json";
/// The Deployment's selector; its pods carry these labels and more.
pub const POOL_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "drover-node"),
    ("drover.dev/pool", "gpu"),
];

/// One request as the fake server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The query's parameters, in order (kube-rs writes `?&name=value`:
    /// the empty pair is dropped here, as the API server ignores it).
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// The body parsed as JSON; `Null` when there was none.
    pub body: Value,
}

/// A workload the fake knows: its replica count and resource version.
#[derive(Debug, Clone)]
pub struct Workload {
    pub replicas: i64,
    pub resource_version: u64,
    /// Of the replicas, how many pods are not ready (Pending, starting):
    /// the Deployment's status shows them as not ready and unavailable.
    pub not_ready: i64,
}

/// A refusal to give: every request with this method and path is answered
/// with this status and reason.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub method: &'static str,
    pub path: String,
    pub code: u16,
    pub reason: &'static str,
}

/// Labels or annotations of an object.
pub type Labels = BTreeMap<String, String>;

#[derive(Default)]
pub struct Fake {
    /// `deployments/NAME` or `statefulsets/NAME`.
    pub workloads: BTreeMap<String, Workload>,
    /// Pod name to its labels and annotations.
    pub pods: BTreeMap<String, (Labels, Labels)>,
    pub refusals: Vec<Refusal>,
    /// Someone else changes the replica count right after each `GET` of a
    /// scale (the next patch carrying the old version conflicts).
    pub racing_writer: bool,
    pub seen: Vec<Seen>,
}

pub fn status(code: u16, reason: &str, message: String, kind: &str, name: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap()).json(json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": { "name": name, "group": if kind == "pods" { "" } else { "apps" }, "kind": kind },
        "code": code,
    }))
}

pub fn scale_json(resource: &str, name: &str, w: &Workload) -> Value {
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": format!("0b6a3f9e-{resource}-{name}"),
            "resourceVersion": w.resource_version.to_string(),
            "creationTimestamp": "2026-11-24T12:00:00Z",
        },
        "spec": { "replicas": w.replicas },
        "status": {
            "replicas": w.replicas,
            "selector": "app.kubernetes.io/name=drover-node,drover.dev/pool=gpu",
        },
    })
}

pub fn labels_json(labels: &BTreeMap<String, String>) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

pub fn pool_labels() -> BTreeMap<String, String> {
    POOL_LABELS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A Deployment's status as the API server writes it: a count of zero is
/// left out (`omitempty`).
pub fn deployment_status(w: &Workload) -> Value {
    let mut status = json!({ "observedGeneration": 3, "replicas": w.replicas });
    let ready = w.replicas - w.not_ready;
    if ready > 0 {
        status["readyReplicas"] = json!(ready);
        status["availableReplicas"] = json!(ready);
    }
    if w.not_ready > 0 {
        status["unavailableReplicas"] = json!(w.not_ready);
    }
    status
}

pub fn deployment_json(name: &str, w: &Workload) -> Value {
    let labels = labels_json(&pool_labels());
    json!({
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": "5c1d2e3f-0000-4000-8000-000000000001",
            "resourceVersion": w.resource_version.to_string(),
            "generation": 3,
            "creationTimestamp": "2026-11-24T12:00:00Z",
            "labels": labels,
        },
        "spec": {
            "replicas": w.replicas,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "containers": [{ "name": "node", "image": "drover-node:0.1.0", "args": ["node"] }] },
            },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": "25%", "maxSurge": "25%" } },
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
        },
        "status": deployment_status(w),
    })
}

pub fn pod_json(
    name: &str,
    labels: &BTreeMap<String, String>,
    notes: &BTreeMap<String, String>,
) -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": format!("7e0f-{name}"),
            "resourceVersion": "99",
            "labels": labels_json(labels),
            "annotations": labels_json(notes),
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "drover-node-gpu-5d4f7c9b8",
                "uid": "9a8b7c6d-0000-4000-8000-000000000002", "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": { "containers": [{ "name": "node", "image": "drover-node:0.1.0" }] },
        "status": { "phase": "Running" },
    })
}

/// The fake API server's one handler: records the request, then answers.
pub async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    fake: web::Data<Mutex<Fake>>,
) -> HttpResponse {
    let mut fake = fake.lock().unwrap();
    let method = req.method().as_str().to_string();
    let path = req.path().to_string();
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
    };
    fake.seen.push(Seen {
        method: method.clone(),
        path: path.clone(),
        query: req
            .query_string()
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        content_type: req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: parsed.clone(),
    });
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let Some(r) = fake
        .refusals
        .iter()
        .find(|r| r.method == method && r.path == path)
    {
        let (kind, name) = match parts.as_slice() {
            [_, _, "namespaces", _, kind, name, ..]
            | [_, _, _, "namespaces", _, kind, name, ..] => (*kind, *name),
            _ => ("", ""),
        };
        let resource = if path.ends_with("/scale") {
            format!("{kind}/scale")
        } else {
            kind.to_string()
        };
        let message = match r.code {
            403 => format!(
                "{kind}.apps \"{name}\" is forbidden: User \"system:serviceaccount:{NS}:drover-coordinator\" cannot {} resource \"{resource}\" in API group \"apps\" in the namespace \"{NS}\"",
                method.to_lowercase()
            ),
            404 => format!("{kind}.apps \"{name}\" not found"),
            _ => format!("{} {name}", r.reason),
        };
        return status(r.code, r.reason, message, kind, name);
    }
    match (method.as_str(), parts.as_slice()) {
        // apps/v1 workloads and their scale subresource.
        (m, ["apis", "apps", "v1", "namespaces", ns, resource, name, rest @ ..]) if *ns == NS => {
            let key = format!("{resource}/{name}");
            let Some(mut w) = fake.workloads.get(&key).cloned() else {
                return status(
                    404,
                    "NotFound",
                    format!("{resource}.apps \"{name}\" not found"),
                    resource,
                    name,
                );
            };
            match (m, rest) {
                ("GET", []) if *resource == "deployments" => {
                    HttpResponse::Ok().json(deployment_json(name, &w))
                }
                ("GET", ["scale"]) => {
                    let answer = scale_json(resource, name, &w);
                    if fake.racing_writer {
                        let other = fake.workloads.get_mut(&key).unwrap();
                        other.replicas += 1;
                        other.resource_version += 1;
                    }
                    HttpResponse::Ok().json(answer)
                }
                ("PATCH", ["scale"]) => {
                    if req
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        != Some(MERGE)
                    {
                        return status(
                            415,
                            "UnsupportedMediaType",
                            "only merge patches here".into(),
                            resource,
                            name,
                        );
                    }
                    if let Some(v) = parsed["metadata"]["resourceVersion"].as_str() {
                        if v != w.resource_version.to_string() {
                            return status(
                                409,
                                "Conflict",
                                format!("Operation cannot be fulfilled on {resource}.apps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
                                resource,
                                name,
                            );
                        }
                    }
                    if let Some(r) = parsed["spec"]["replicas"].as_i64() {
                        w.replicas = r;
                    }
                    w.resource_version += 1;
                    fake.workloads.insert(key, w.clone());
                    HttpResponse::Ok().json(scale_json(resource, name, &w))
                }
                _ => HttpResponse::MethodNotAllowed().finish(),
            }
        }
        // core/v1 pods: merge patches of annotations.
        ("PATCH", ["api", "v1", "namespaces", ns, "pods", name]) if *ns == NS => {
            let Some((labels, mut notes)) = fake.pods.get(*name).cloned() else {
                return status(
                    404,
                    "NotFound",
                    format!("pods \"{name}\" not found"),
                    "pods",
                    name,
                );
            };
            for (k, v) in parsed["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
            {
                notes.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
            fake.pods
                .insert(name.to_string(), (labels.clone(), notes.clone()));
            HttpResponse::Ok().json(pod_json(name, &labels, &notes))
        }
        _ => status(
            404,
            "NotFound",
            format!("the server could not find the requested resource {path}"),
            "",
            "",
        ),
    }
}

/// A fake API server on loopback, stopped when dropped.
pub struct FakeApi {
    pub url: String,
    pub state: Arc<Mutex<Fake>>,
    pub handle: ServerHandle,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApi {
    pub fn start(fake: Fake) -> FakeApi {
        let state = Arc::new(Mutex::new(fake));
        let data = web::Data::from(state.clone());
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .default_service(web::to(handle))
                })
                .workers(1)
                .bind(("127.0.0.1", 0))
                .unwrap();
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).unwrap();
                server.await.unwrap();
            })
        });
        let (addr, handle) = rx.recv().unwrap();
        FakeApi {
            url: format!("http://{addr}"),
            state,
            handle,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state.lock().unwrap().seen)
    }

    pub fn replicas(&self, key: &str) -> i64 {
        self.state.lock().unwrap().workloads[key].replicas
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let stop = self.handle.stop(false);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! The `kubernetes` provider against a fake API server on loopback
//! (support/fake_kube.rs) that speaks the real API's shapes. Each case
//! checks the exact method, path, content type and body of every request the
//! provider made, and what the farm's admin reads when the API server
//! refuses.

mod support;

use std::collections::BTreeMap;

use drover_coordinator::autoscale::kube::{KubernetesProvider, RBAC_RULES};
use drover_coordinator::autoscale::provider::{
    KubernetesConfig, Provider, ProviderError, WorkloadKind,
};
use serde_json::{json, Value};
use support::fake_kube::{pool_labels, Fake, FakeApi, Refusal, Seen, Workload, MERGE, NS};

fn provider(api: &FakeApi, kind: WorkloadKind, name: &str) -> KubernetesProvider {
    KubernetesProvider::new(
        "gpu",
        KubernetesConfig {
            namespace: NS.into(),
            kind,
            name: name.into(),
            api_url: Some(api.url.clone()),
        },
    )
    .unwrap()
}

/// A farm with a Deployment `render` at `replicas` (version 7), its pods
/// `render-5d4f7c9b8-aaaaa` and `-bbbbb`, a pod of something else, and a
/// StatefulSet `shots` at `replicas` (version 40).
fn farm(replicas: i64) -> Fake {
    let mut fake = Fake::default();
    fake.workloads.insert(
        "deployments/render".into(),
        Workload {
            replicas,
            resource_version: 7,
            not_ready: 0,
        },
    );
    fake.workloads.insert(
        "statefulsets/shots".into(),
        Workload {
            replicas,
            resource_version: 40,
            not_ready: 0,
        },
    );
    for pod in ["render-5d4f7c9b8-aaaaa", "render-5d4f7c9b8-bbbbb"] {
        let mut labels = pool_labels();
        labels.insert("pod-template-hash".into(), "5d4f7c9b8".into());
        fake.pods.insert(pod.into(), (labels, BTreeMap::new()));
    }
    let mut other = BTreeMap::new();
    other.insert("app.kubernetes.io/name".into(), "database".into());
    fake.pods
        .insert("postgres-0".into(), (other, BTreeMap::new()));
    let mut cache = BTreeMap::new();
    cache.insert("app.kubernetes.io/name".into(), "render-cache".into());
    fake.pods
        .insert("render-cache-0".into(), (cache, BTreeMap::new()));
    fake
}

fn get(path: &str) -> Seen {
    Seen {
        method: "GET".into(),
        path: path.into(),
        query: vec![],
        content_type: None,
        body: Value::Null,
    }
}

fn merge_patch(path: &str, body: Value) -> Seen {
    Seen {
        method: "PATCH".into(),
        path: path.into(),
        query: vec![("fieldManager".into(), "drover-autoscaler".into())],
        content_type: Some(MERGE.into()),
        body,
    }
}

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/farm/deployments/render";
const DEPLOYMENT_SCALE: &str = "/apis/apps/v1/namespaces/farm/deployments/render/scale";
const STATEFUL_SCALE: &str = "/apis/apps/v1/namespaces/farm/statefulsets/shots/scale";

fn replicas_patch(version: &str, replicas: i64) -> Value {
    json!({ "metadata": { "resourceVersion": version }, "spec": { "replicas": replicas } })
}

#[test]
fn requested_reads_the_replica_count_from_the_scale_subresource() {
    let api = FakeApi::start(farm(3));
    let mut p = provider(&api, WorkloadKind::Deployment, "render");
    assert_eq!(p.kind(), "kubernetes");
    assert_eq!(p.requested().unwrap(), 3);
    assert_eq!(api.seen(), vec![get(DEPLOYMENT_SCALE)]);
    let mut s = provider(&api, WorkloadKind::StatefulSet, "shots");
    assert_eq!(s.requested().unwrap(), 3);
    assert_eq!(api.seen(), vec![get(STATEFUL_SCALE)]);
}

#[test]
fn add_raises_the_replica_count_by_a_merge_patch_at_the_version_read() {
    let api = FakeApi::start(farm(2));
    let mut p = provider(&api, WorkloadKind::Deployment, "render");
    p.add(3).unwrap();
    assert_eq!(
        api.seen(),
        vec![
            get(DEPLOYMENT_SCALE),
            merge_patch(DEPLOYMENT_SCALE, replicas_patch("7", 5)),
        ]
    );
    assert_eq!(api.replicas("deployments/render"), 5);
    assert_eq!(p.requested().unwrap(), 5);
    api.seen();
    // Nothing to add: no request at all.
    p.add(0).unwrap();
    assert_eq!(api.seen(), vec![]);

    let mut s = provider(&api, WorkloadKind::StatefulSet, "shots");
    s.add(1).unwrap();
    assert_eq!(
        api.seen(),
        vec![
            get(STATEFUL_SCALE),
            merge_patch(STATEFUL_SCALE, replicas_patch("40", 3)),
        ]
    );
    assert_eq!(api.replicas("statefulsets/shots"), 3);
}

#[test]
fn removing_a_deployment_node_marks_its_pod_cheapest_then_lowers_the_count() {
    let api = FakeApi::start(farm(2));
    let mut p = provider(&api, WorkloadKind::Deployment, "render");
    p.remove("render-5d4f7c9b8-bbbbb").unwrap();
    assert_eq!(
        api.seen(),
        vec![
            get(DEPLOYMENT),
            get(DEPLOYMENT_SCALE),
            merge_patch(
                "/api/v1/namespaces/farm/pods/render-5d4f7c9b8-bbbbb",
                json!({ "metadata": { "annotations": {
                    "controller.kubernetes.io/pod-deletion-cost": "-2147483648"
                } } })
            ),
            merge_patch(DEPLOYMENT_SCALE, replicas_patch("7", 1)),
        ]
    );
    assert_eq!(api.replicas("deployments/render"), 1);
    let state = api.state.lock().unwrap();
    assert_eq!(
        state.pods["render-5d4f7c9b8-bbbbb"].1["controller.kubernetes.io/pod-deletion-cost"],
        "-2147483648"
    );
    assert!(state.pods["render-5d4f7c9b8-aaaaa"].1.is_empty());
}

#[test]
fn a_deployment_with_a_pod_not_ready_refuses_a_removal_until_it_is_ready() {
    // One of the two pods is Pending: the ReplicaSet controller would
    // delete it before the drained node's pod, whatever its cost.
    let mut fake = farm(2);
    fake.workloads
        .get_mut("deployments/render")
        .unwrap()
        .not_ready = 1;
    let api = FakeApi::start(fake);
    let mut p = provider(&api, WorkloadKind::Deployment, "render");
    let err = p.remove("render-5d4f7c9b8-bbbbb").unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ProviderError::Api { .. })
            && text.contains("GET deployments/render in namespace farm (pool gpu)")
            && text.contains("deployment render has 2 pods, 1 ready and 1 unavailable")
            && text.contains("replica count is unchanged"),
        "{text}"
    );
    // Nothing written: no pod marked, no count lowered.
    assert_eq!(api.seen(), vec![get(DEPLOYMENT)]);
    assert_eq!(api.replicas("deployments/render"), 2);
    assert!(api.state.lock().unwrap().pods["render-5d4f7c9b8-bbbbb"]
        .1
        .is_empty());

    // The pod became ready: the same removal goes through.
    api.state
        .lock()
        .unwrap()
        .workloads
        .get_mut("deployments/render")
        .unwrap()
        .not_ready = 0;
    p.remove("render-5d4f7c9b8-bbbbb").unwrap();
    assert_eq!(api.replicas("deployments/render"), 1);
}

#[test]
fn a_pod_that_is_not_the_deployments_is_refused_and_the_count_kept() {
    let api = FakeApi::start(farm(2));
    let mut p = provider(&api, WorkloadKind::Deployment, "render");
    // Not named like the Deployment's pods: refused before any request, so
    // no other workload's pod is ever marked.
    let err = p.remove("postgres-0").unwrap_err();
    assert!(
        matches!(&err, ProviderError::UnknownNode { pool, node } if pool == "gpu" && node == "postgres-0"),
        "{err}"
    );
    assert_eq!(api.seen(), vec![]);
    // Named like them, but its labels are another workload's: refused
    // before the count is touched.
    let err = p.remove("render-cache-0").unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ProviderError::Api { .. })
            && text.contains("PATCH pods/render-cache-0 in namespace farm (pool gpu)")
            && text.contains("pod render-cache-0 does not belong to deployment render: its label app.kubernetes.io/name is Some(\"render-cache\"), the selector wants \"drover-node\"")
            && text.contains("replica count is unchanged"),
        "{text}"
    );
    let seen = api.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen
        .iter()
        .all(|s| !s.path.ends_with("/scale") || s.method == "GET"));
    assert_eq!(api.replicas("deployments/render"), 2);

    // A pod that does not exist: not one of the pool's nodes.
    let err = p.remove("render-5d4f7c9b8-zzzzz").unwrap_err();
    assert!(
        matches!(&err, ProviderError::UnknownNode { pool, node } if pool == "gpu" && node == "render-5d4f7c9b8-zzzzz"),
        "{err}"
    );
    assert_eq!(api.replicas("deployments/render"), 2);
}

#[test]
fn a_stateful_set_removes_only_its_highest_ordinal() {
    let api = FakeApi::start(farm(3));
    let mut s = provider(&api, WorkloadKind::StatefulSet, "shots");
    let err = s.remove("shots-1").unwrap_err().to_string();
    assert!(
        err.contains("remove node shots-1 from statefulsets/shots in namespace farm (pool gpu)")
            && err.contains(
                "a StatefulSet removes only its highest ordinal, which is shots-2 at 3 replicas"
            ),
        "{err}"
    );
    assert_eq!(api.seen(), vec![get(STATEFUL_SCALE)]);
    assert_eq!(api.replicas("statefulsets/shots"), 3);
    // Not a pod of this StatefulSet at all: refused before any request.
    let err = s.remove("render-5d4f7c9b8-aaaaa").unwrap_err();
    assert!(matches!(err, ProviderError::UnknownNode { .. }), "{err}");
    assert_eq!(api.seen(), vec![]);

    s.remove("shots-2").unwrap();
    assert_eq!(
        api.seen(),
        vec![
            get(STATEFUL_SCALE),
            merge_patch(STATEFUL_SCALE, replicas_patch("40", 2)),
        ]
    );
    assert_eq!(api.replicas("statefulsets/shots"), 2);
}

/// What the admin reads when the API server refuses: the request with the
/// object named, the status, the reason and the server's message.
fn check_refusal(fake: Fake, kind: WorkloadKind, name: &str, call: &str, expect: &[&str]) {
    let api = FakeApi::start(fake);
    let mut p = provider(&api, kind, name);
    let before = api.state.lock().unwrap().workloads.clone();
    let err = match call {
        "add" => p.add(1).unwrap_err(),
        "requested" => p.requested().unwrap_err(),
        node => p.remove(node).unwrap_err(),
    };
    assert!(matches!(err, ProviderError::Api { .. }), "{err:?}");
    let text = err.to_string();
    for e in expect {
        assert!(text.contains(e), "{text:?} lacks {e:?}");
    }
    // A refused call changed no replica count (the racing writer's own
    // change aside).
    let after = api.state.lock().unwrap().workloads.clone();
    if !api.state.lock().unwrap().racing_writer {
        for (k, w) in before {
            assert_eq!(after[&k].replicas, w.replicas, "{k}");
        }
    }
}

#[test]
fn refusals_of_the_api_server_come_back_naming_the_object() {
    // 404: the pool names a workload that is not there.
    check_refusal(
        farm(1),
        WorkloadKind::Deployment,
        "missing",
        "requested",
        &[
            "GET deployments/missing/scale in namespace farm (pool gpu)",
            "404 NotFound: deployments.apps \"missing\" not found",
            "check the pool's kubernetes.namespace and kubernetes.name",
        ],
    );
    // 403: the ServiceAccount may read the scale but not change it.
    let mut f = farm(1);
    f.refusals.push(Refusal {
        method: "PATCH",
        path: DEPLOYMENT_SCALE.into(),
        code: 403,
        reason: "Forbidden",
    });
    check_refusal(
        f,
        WorkloadKind::Deployment,
        "render",
        "add",
        &[
            "PATCH deployments/render/scale in namespace farm (pool gpu)",
            "403 Forbidden: deployments.apps \"render\" is forbidden: User \"system:serviceaccount:farm:drover-coordinator\" cannot patch resource \"deployments/scale\"",
            "ServiceAccount lacks this right",
        ],
    );
    // 403 on reading the Deployment before a removal.
    let mut f = farm(2);
    f.refusals.push(Refusal {
        method: "GET",
        path: DEPLOYMENT.into(),
        code: 403,
        reason: "Forbidden",
    });
    check_refusal(
        f,
        WorkloadKind::Deployment,
        "render",
        "render-5d4f7c9b8-aaaaa",
        &[
            "GET deployments/render in namespace farm (pool gpu)",
            "403 Forbidden",
        ],
    );
    // 409: someone scaled the StatefulSet between our read and our write.
    let mut f = farm(2);
    f.racing_writer = true;
    check_refusal(
        f,
        WorkloadKind::StatefulSet,
        "shots",
        "add",
        &[
            "PATCH statefulsets/shots/scale in namespace farm (pool gpu)",
            "409 Conflict: Operation cannot be fulfilled on statefulsets.apps \"shots\": the object has been modified",
            "decides again on its next pass",
        ],
    );
    let mut f = farm(2);
    f.racing_writer = true;
    check_refusal(
        f,
        WorkloadKind::Deployment,
        "render",
        "render-5d4f7c9b8-aaaaa",
        &["PATCH deployments/render/scale", "409 Conflict"],
    );
}

#[test]
fn an_unreachable_api_server_is_an_error_naming_the_request() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut p = KubernetesProvider::new(
        "gpu",
        KubernetesConfig {
            namespace: NS.into(),
            kind: WorkloadKind::Deployment,
            name: "render".into(),
            api_url: Some(format!("http://127.0.0.1:{port}")),
        },
    )
    .unwrap();
    let err = p.requested().unwrap_err().to_string();
    assert!(
        err.starts_with("GET deployments/render/scale in namespace farm (pool gpu): "),
        "{err}"
    );
}

#[test]
fn a_bad_provider_config_is_refused_naming_the_field() {
    let check = |namespace: &str, name: &str, api_url: Option<&str>, expect: &str| {
        let err = KubernetesProvider::new(
            "gpu",
            KubernetesConfig {
                namespace: namespace.into(),
                kind: WorkloadKind::Deployment,
                name: name.into(),
                api_url: api_url.map(str::to_string),
            },
        )
        .err()
        .expect("refused");
        let text = err.to_string();
        assert!(
            matches!(err, ProviderError::Config { .. }) && text.contains(expect),
            "{text:?} lacks {expect:?}"
        );
    };
    check(
        "Farm",
        "render",
        Some("http://127.0.0.1:1"),
        "pool gpu: provider config: kubernetes.namespace \"Farm\" is not a DNS-1123 label",
    );
    check(
        "farm",
        "",
        Some("http://127.0.0.1:1"),
        "kubernetes.name is empty",
    );
    check(
        "farm",
        &"r".repeat(70),
        Some("http://127.0.0.1:1"),
        "kubernetes.name is 70 bytes; the limit is 63",
    );
    check(
        "farm",
        "render",
        Some("not a url"),
        "kubernetes.api_url \"not a url\" is not a URL",
    );
    check(
        "farm",
        "render",
        Some("/just/a/path"),
        "needs a scheme and a host",
    );
}

#[test]
fn the_rights_listed_are_the_requests_made() {
    // Every request the cases above make maps to one of RBAC_RULES; this
    // replays one of each kind and checks the mapping both ways.
    let api = FakeApi::start(farm(2));
    let mut d = provider(&api, WorkloadKind::Deployment, "render");
    let mut s = provider(&api, WorkloadKind::StatefulSet, "shots");
    d.requested().unwrap();
    d.add(1).unwrap();
    d.remove("render-5d4f7c9b8-aaaaa").unwrap();
    s.requested().unwrap();
    s.add(1).unwrap();
    s.remove("shots-2").unwrap();
    let mut used: Vec<(String, String, String)> = api
        .seen()
        .iter()
        .map(|r| {
            let parts: Vec<&str> = r.path.split('/').collect();
            let (group, resource) = match parts.as_slice() {
                ["", "apis", group, _, "namespaces", _, res, _, sub] => {
                    (*group, format!("{res}/{sub}"))
                }
                ["", "apis", group, _, "namespaces", _, res, _] => (*group, res.to_string()),
                ["", "api", _, "namespaces", _, res, _] => ("", res.to_string()),
                other => panic!("unexpected path {other:?}"),
            };
            (group.to_string(), resource, r.method.to_lowercase())
        })
        .collect();
    used.sort();
    used.dedup();
    let mut granted: Vec<(String, String, String)> = RBAC_RULES
        .iter()
        .flat_map(|r| {
            r.verbs.iter().map(|v| {
                (
                    r.api_group.to_string(),
                    r.resource.to_string(),
                    v.to_string(),
                )
            })
        })
        .collect();
    granted.sort();
    assert_eq!(used, granted);
}

//! The `kubernetes` provider: a pool whose nodes are the pods of one
//! Deployment or StatefulSet, grown and shrunk through the workload's
//! `scale` subresource with kube-rs.
//!
//! # Requests
//! Every call reads the workload's `autoscaling/v1` `Scale` first and
//! writes the new replica count with a JSON merge patch that carries the
//! `resourceVersion` it read, so a change made meanwhile by someone else (an
//! admin's `kubectl scale`, another coordinator) is refused by the API
//! server with `409 Conflict` instead of being overwritten; the autoscaler
//! decides again from fresh state on its next pass.
//!
//! - [`Provider::requested`]: `GET .../{deployments|statefulsets}/{name}/scale`.
//! - [`Provider::add`]: that `GET`, then `PATCH .../scale` with
//!   `spec.replicas` raised by the count.
//! - [`Provider::remove`] of a Deployment's node (named `{name}-...`, as its
//!   pods are; any other name is refused first): `GET .../deployments/{name}`
//!   (its selector), the `GET` of the scale, a merge patch of the node's pod
//!   (`PATCH /api/v1/namespaces/{ns}/pods/{node}`: a node in Kubernetes is
//!   named after its pod) setting [`POD_DELETION_COST_ANNOTATION`] to the
//!   lowest cost, so the ReplicaSet controller removes exactly that pod when
//!   the count drops; the pod's labels must match the Deployment's selector,
//!   or nothing is scaled; then the `PATCH` of the scale, one lower. While
//!   the Deployment's status shows a pod not ready (`status.replicas >
//!   status.readyReplicas`, or `status.unavailableReplicas > 0`) the removal
//!   is refused before any write: the controller deletes such pods before it
//!   honours the deletion cost.
//! - [`Provider::remove`] of a StatefulSet's node: a StatefulSet always
//!   removes its highest ordinal, so only the pod `{name}-{replicas - 1}` can
//!   be removed; any other is refused with the one that could be, and nothing
//!   is changed. [`Provider::removable`] tells the policy so, and it drains
//!   only the highest ordinal among the pool's connected pods.
//!
//! The rights these requests need are [`RBAC_RULES`]; the Role in
//! `deploy/kubernetes/` grants exactly those, and the deploy tests compare
//! the two.

use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::{Client, Config};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::provider::{KubernetesConfig, Provider, ProviderError, WorkloadKind};

/// The annotation the ReplicaSet controller reads to choose which pods go
/// first when a Deployment scales down (lower cost first).
pub const POD_DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The cost set on a drained node's pod: the lowest the annotation takes
/// (an int32), so that pod goes before every other, whatever costs others
/// gave their pods.
pub const DRAINED_POD_DELETION_COST: i32 = i32::MIN;

/// The field manager named in every write, so `kubectl get -o yaml
/// --show-managed-fields` tells who set the replica count.
pub const FIELD_MANAGER: &str = "drover-autoscaler";

/// Longest wait for one answer of the API server. The autoscaler's thread
/// waits on each call; an API server that stops answering must not stop
/// the pool's decisions for longer than this (kube's default has no read
/// limit, made for watches).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait to connect to the API server, for the same reason.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest namespace or workload name Kubernetes accepts (a DNS-1123
/// label is at most 63 bytes; a workload name may be a 253-byte subdomain,
/// but its pods' names must fit in a label with a suffix, so 63 is the
/// useful bound for both).
pub const MAX_KUBERNETES_NAME_BYTES: usize = 63;

/// One rule of the Role the provider's ServiceAccount needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RbacRule {
    /// The API group (`""` is the core group).
    pub api_group: &'static str,
    /// The resource, with its subresource after a `/`.
    pub resource: &'static str,
    /// The verbs, sorted.
    pub verbs: &'static [&'static str],
}

/// Exactly the rights the requests above need, and nothing more: the
/// provider never lists, watches, creates or deletes anything.
pub const RBAC_RULES: &[RbacRule] = &[
    RbacRule {
        api_group: "apps",
        resource: "deployments",
        verbs: &["get"],
    },
    RbacRule {
        api_group: "apps",
        resource: "deployments/scale",
        verbs: &["get", "patch"],
    },
    RbacRule {
        api_group: "apps",
        resource: "statefulsets/scale",
        verbs: &["get", "patch"],
    },
    RbacRule {
        api_group: "",
        resource: "pods",
        verbs: &["patch"],
    },
];

/// A pool's nodes as the replicas of a Deployment or StatefulSet.
///
/// The calls block: each runs its requests on the provider's own
/// single-threaded tokio runtime, so it can be called from any thread that
/// is not running async code (the autoscaler's driver thread).
pub struct KubernetesProvider {
    pool: String,
    config: KubernetesConfig,
    client: Client,
    // Declared after the client so the client, whose connection tasks
    // live on this runtime, is dropped first.
    runtime: tokio::runtime::Runtime,
}

/// The replica count read from a `Scale`, with the version it was read at.
struct ReadScale {
    replicas: u32,
    resource_version: String,
}

impl KubernetesProvider {
    /// A provider for `pool`, talking to the API server `config.api_url`
    /// names (without credentials: for `kubectl proxy` or a test server),
    /// or, when it is absent, the in-cluster service account (or the
    /// kubeconfig outside a cluster). Nothing is requested yet.
    pub fn new(pool: &str, config: KubernetesConfig) -> Result<KubernetesProvider, ProviderError> {
        let bad = |message: String| ProviderError::Config {
            pool: pool.to_string(),
            message,
        };
        check_name("kubernetes.namespace", &config.namespace).map_err(bad)?;
        check_name("kubernetes.name", &config.name).map_err(bad)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ProviderError::Io {
                action: format!("starting the Kubernetes client's runtime for pool {pool}"),
                source,
            })?;
        let mut kube_config = match &config.api_url {
            Some(url) => {
                let uri = url.parse().map_err(|e| {
                    bad(format!("kubernetes.api_url {url:?} is not a URL: {e}"))
                })?;
                let c = Config::new(uri);
                if c.cluster_url.scheme().is_none() || c.cluster_url.host().is_none() {
                    return Err(bad(format!(
                        "kubernetes.api_url {url:?} needs a scheme and a host, e.g. http://127.0.0.1:8001"
                    )));
                }
                c
            }
            None => runtime.block_on(Config::infer()).map_err(|e| {
                bad(format!(
                    "no kubernetes.api_url, and neither an in-cluster service account nor a kubeconfig was found: {e}"
                ))
            })?,
        };
        kube_config.read_timeout = Some(REQUEST_TIMEOUT);
        kube_config.connect_timeout = Some(CONNECT_TIMEOUT);
        // The client spawns its connection tasks on the runtime current
        // when it is built.
        let client = {
            let _entered = runtime.enter();
            Client::try_from(kube_config)
                .map_err(|e| bad(format!("building the Kubernetes client: {e}")))?
        };
        Ok(KubernetesProvider {
            pool: pool.to_string(),
            config,
            client,
            runtime,
        })
    }

    /// `deployments` or `statefulsets`, as in the API's paths.
    fn resource(&self) -> &'static str {
        match self.config.kind {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
        }
    }

    /// How a request is named in errors: method, path below the namespace,
    /// and the namespace.
    fn operation(&self, method: &str, path: &str) -> String {
        format!(
            "{method} {path} in namespace {} (pool {})",
            self.config.namespace, self.pool
        )
    }

    fn scale_path(&self) -> String {
        format!("{}/{}/scale", self.resource(), self.config.name)
    }

    fn read_scale(&self) -> Result<ReadScale, ProviderError> {
        let op = || self.operation("GET", &self.scale_path());
        let ns = &self.config.namespace;
        let name = &self.config.name;
        let client = self.client.clone();
        let scale = self
            .runtime
            .block_on(async {
                match self.config.kind {
                    WorkloadKind::Deployment => {
                        Api::<Deployment>::namespaced(client, ns)
                            .get_scale(name)
                            .await
                    }
                    WorkloadKind::StatefulSet => {
                        Api::<StatefulSet>::namespaced(client, ns)
                            .get_scale(name)
                            .await
                    }
                }
            })
            .map_err(|e| api_error(op(), e))?;
        scale_of(&scale).map_err(|message| ProviderError::Api {
            operation: op(),
            message,
        })
    }

    fn write_replicas(&self, read: &ReadScale, replicas: u32) -> Result<(), ProviderError> {
        let op = || self.operation("PATCH", &self.scale_path());
        let patch = json!({
            "metadata": { "resourceVersion": read.resource_version },
            "spec": { "replicas": replicas },
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let ns = &self.config.namespace;
        let name = &self.config.name;
        let client = self.client.clone();
        let patch = Patch::Merge(&patch);
        self.runtime
            .block_on(async {
                match self.config.kind {
                    WorkloadKind::Deployment => {
                        Api::<Deployment>::namespaced(client, ns)
                            .patch_scale(name, &params, &patch)
                            .await
                    }
                    WorkloadKind::StatefulSet => {
                        Api::<StatefulSet>::namespaced(client, ns)
                            .patch_scale(name, &params, &patch)
                            .await
                    }
                }
            })
            .map_err(|e| api_error(op(), e))?;
        Ok(())
    }

    /// Lowers the Deployment's count by one, the pod of `node` first.
    fn remove_from_deployment(&self, node: &str) -> Result<(), ProviderError> {
        let ns = &self.config.namespace;
        let name = &self.config.name;
        // A Deployment's pods are named `{name}-{template hash}-{suffix}`:
        // any other name is refused before a request, so no other
        // workload's pod is ever marked.
        if !node
            .strip_prefix(name.as_str())
            .is_some_and(|rest| rest.starts_with('-'))
        {
            return Err(ProviderError::UnknownNode {
                pool: self.pool.clone(),
                node: node.to_string(),
            });
        }
        let deployment_op = || self.operation("GET", &format!("deployments/{name}"));
        let deployment = self
            .runtime
            .block_on(Api::<Deployment>::namespaced(self.client.clone(), ns).get(name))
            .map_err(|e| api_error(deployment_op(), e))?;
        // The ReplicaSet controller deletes unscheduled, Pending and
        // not-Ready pods before it looks at pod-deletion-cost: lowering the
        // count while any pod is not ready could delete that pod instead of
        // the drained node's (which would stay, drained, with one node
        // fewer). Refused; the driver tries again after a backoff.
        let status = deployment.status.clone().unwrap_or_default();
        let (pods, ready, unavailable) = (
            status.replicas.unwrap_or(0),
            status.ready_replicas.unwrap_or(0),
            status.unavailable_replicas.unwrap_or(0),
        );
        if pods > ready || unavailable > 0 {
            return Err(ProviderError::Api {
                operation: deployment_op(),
                message: format!(
                    "deployment {name} has {pods} pods, {ready} ready and {unavailable} unavailable; the ReplicaSet controller would delete a pod that is not ready before node {node}'s, so the replica count is unchanged until every pod is ready"
                ),
            });
        }
        let selector = deployment
            .spec
            .map(|s| s.selector.match_labels.unwrap_or_default())
            .unwrap_or_default();
        if selector.is_empty() {
            // A selector made only of expressions is legal, but then a
            // pod's labels cannot be checked here; refusing is safer than
            // lowering the count for a pod that may belong elsewhere.
            return Err(ProviderError::Api {
                operation: deployment_op(),
                message: format!(
                    "deployment {name} has no spec.selector.matchLabels; the provider checks a pod belongs to it by those labels"
                ),
            });
        }
        let read = self.read_scale()?;
        if read.replicas == 0 {
            return Err(ProviderError::Api {
                operation: self.operation("PATCH", &self.scale_path()),
                message: format!(
                    "deployment {name} already has 0 replicas; node {node} is not one of them"
                ),
            });
        }
        let pod_op = || self.operation("PATCH", &format!("pods/{node}"));
        let mark = json!({
            "metadata": {
                "annotations": {
                    POD_DELETION_COST_ANNOTATION: DRAINED_POD_DELETION_COST.to_string(),
                }
            }
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let pod = self
            .runtime
            .block_on(Api::<Pod>::namespaced(self.client.clone(), ns).patch(
                node,
                &params,
                &Patch::Merge(&mark),
            ))
            .map_err(|e| match &e {
                ::kube::Error::Api(status) if status.code == 404 => ProviderError::UnknownNode {
                    pool: self.pool.clone(),
                    node: node.to_string(),
                },
                _ => api_error(pod_op(), e),
            })?;
        let labels = pod.metadata.labels.unwrap_or_default();
        if let Some((key, want)) = selector.iter().find(|(k, v)| labels.get(*k) != Some(*v)) {
            // A pod named like ours but selected by another workload (a
            // Deployment `render-cache` beside `render`). The annotation stays
            // on it: taking it back off could race that pod's owner, and it
            // only orders that workload's own scale-downs.
            return Err(ProviderError::Api {
                operation: pod_op(),
                message: format!(
                    "pod {node} does not belong to deployment {name}: its label {key} is {:?}, the selector wants {want:?}; the replica count is unchanged",
                    labels.get(key)
                ),
            });
        }
        self.write_replicas(&read, read.replicas - 1)
    }

    /// Lowers the StatefulSet's count by one if `node` is its highest
    /// ordinal.
    fn remove_from_stateful_set(&self, node: &str) -> Result<(), ProviderError> {
        let name = &self.config.name;
        let ours = node
            .strip_prefix(name.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|ordinal| {
                !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit())
            });
        if !ours {
            return Err(ProviderError::UnknownNode {
                pool: self.pool.clone(),
                node: node.to_string(),
            });
        }
        let read = self.read_scale()?;
        let highest = read.replicas.checked_sub(1).map(|o| format!("{name}-{o}"));
        if highest.as_deref() != Some(node) {
            return Err(ProviderError::Api {
                operation: format!("remove node {node} from statefulsets/{name} in namespace {} (pool {})", self.config.namespace, self.pool),
                message: match highest {
                    Some(h) => format!(
                        "a StatefulSet removes only its highest ordinal, which is {h} at {} replicas; {node} cannot be removed alone, and the replica count is unchanged",
                        read.replicas
                    ),
                    None => format!("statefulset {name} already has 0 replicas"),
                },
            });
        }
        self.write_replicas(&read, read.replicas - 1)
    }
}

impl Provider for KubernetesProvider {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn add(&mut self, count: u32) -> Result<(), ProviderError> {
        if count == 0 {
            return Ok(());
        }
        let read = self.read_scale()?;
        let replicas = read
            .replicas
            .checked_add(count)
            .filter(|&r| i32::try_from(r).is_ok())
            .ok_or_else(|| ProviderError::Api {
                operation: self.operation("PATCH", &self.scale_path()),
                message: format!(
                    "{} replicas and {count} more exceed the largest replica count, {}",
                    read.replicas,
                    i32::MAX
                ),
            })?;
        self.write_replicas(&read, replicas)
    }

    fn remove(&mut self, node: &str) -> Result<(), ProviderError> {
        match self.config.kind {
            WorkloadKind::Deployment => self.remove_from_deployment(node),
            WorkloadKind::StatefulSet => self.remove_from_stateful_set(node),
        }
    }

    fn requested(&mut self) -> Result<u32, ProviderError> {
        self.read_scale().map(|r| r.replicas)
    }

    /// A Deployment removes any of its pods (the deletion cost picks it);
    /// a StatefulSet only its highest ordinal, here the highest among the
    /// pool's connected pods of it.
    fn removable(&self, node: &str, nodes: &[&str]) -> bool {
        match self.config.kind {
            WorkloadKind::Deployment => true,
            WorkloadKind::StatefulSet => {
                let name = &self.config.name;
                let highest = nodes.iter().filter_map(|n| ordinal(name, n)).max();
                ordinal(name, node).is_some_and(|o| Some(o) == highest)
            }
        }
    }
}

/// The ordinal of a StatefulSet `name`'s pod `{name}-{ordinal}`, or `None`
/// for any other name.
fn ordinal(name: &str, pod: &str) -> Option<u64> {
    let digits = pod.strip_prefix(name)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The replica count and version of a `Scale`, or why it has none.
fn scale_of(scale: &Scale) -> Result<ReadScale, String> {
    let replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let replicas =
        u32::try_from(replicas).map_err(|_| format!("the scale has spec.replicas {replicas}"))?;
    let resource_version = scale
        .metadata
        .resource_version
        .clone()
        .filter(|v| !v.is_empty())
        .ok_or("the scale has no metadata.resourceVersion")?;
    Ok(ReadScale {
        replicas,
        resource_version,
    })
}

/// A kube error as the provider reports it: the request, then the API
/// server's status and message with what it most likely means here.
fn api_error(operation: String, error: ::kube::Error) -> ProviderError {
    let message = match &error {
        ::kube::Error::Api(status) => {
            let hint = match status.code {
                403 => "; the coordinator's ServiceAccount lacks this right (deploy/kubernetes/base/rbac.yaml grants the provider's)",
                404 => "; check the pool's kubernetes.namespace and kubernetes.name",
                409 => "; the object changed since it was read, and the autoscaler decides again on its next pass",
                _ => "",
            };
            format!(
                "{} {}: {}{hint}",
                status.code,
                if status.reason.is_empty() {
                    "(no reason)"
                } else {
                    &status.reason
                },
                status.message
            )
        }
        other => other.to_string(),
    };
    ProviderError::Api { operation, message }
}

/// Refuses a namespace or workload name Kubernetes would refuse (a DNS-1123
/// label), naming the field.
fn check_name(field: &str, value: &str) -> Result<(), String> {
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if value.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if value.len() > MAX_KUBERNETES_NAME_BYTES {
        return Err(format!(
            "{field} is {} bytes; the limit is {MAX_KUBERNETES_NAME_BYTES}",
            value.len()
        ));
    }
    if !value.bytes().all(ok_char) || value.starts_with('-') || value.ends_with('-') {
        return Err(format!(
            "{field} {value:?} is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_kubernetes_would_refuse_are_refused_with_the_field_named() {
        let check = |v: &str| check_name("kubernetes.name", v);
        assert_eq!(check("render-gpu"), Ok(()));
        assert!(check("").unwrap_err().contains("kubernetes.name is empty"));
        assert!(check("Render").unwrap_err().contains("DNS-1123"));
        assert!(check("-x").unwrap_err().contains("DNS-1123"));
        assert!(check(&"a".repeat(64))
            .unwrap_err()
            .contains("64 bytes; the limit is 63"));
    }

    #[test]
    fn a_stateful_set_can_remove_only_its_highest_connected_ordinal() {
        let ordinals = |n: &str| ordinal("shots", n);
        assert_eq!(ordinals("shots-10"), Some(10));
        assert_eq!(ordinals("shots-"), None);
        assert_eq!(ordinals("shots-cache-0"), None);
        assert_eq!(ordinals("render-1"), None);
        let p = KubernetesProvider::new(
            "gpu",
            KubernetesConfig {
                namespace: "farm".into(),
                kind: WorkloadKind::StatefulSet,
                name: "shots".into(),
                api_url: Some("http://127.0.0.1:1".into()),
            },
        )
        .unwrap();
        // Numeric order, not text order: shots-10 is above shots-9.
        let nodes = ["shots-0", "shots-9", "shots-10", "other-99"];
        assert!(p.removable("shots-10", &nodes));
        assert!(!p.removable("shots-9", &nodes));
        assert!(!p.removable("shots-0", &nodes));
        assert!(!p.removable("other-99", &nodes));
        let d = KubernetesProvider::new(
            "gpu",
            KubernetesConfig {
                namespace: "farm".into(),
                kind: WorkloadKind::Deployment,
                name: "render".into(),
                api_url: Some("http://127.0.0.1:1".into()),
            },
        )
        .unwrap();
        assert!(d.removable("render-5d4f7c9b8-aaaaa", &["render-5d4f7c9b8-aaaaa"]));
    }

    #[test]
    fn the_rbac_rules_are_sorted_and_minimal() {
        for rule in RBAC_RULES {
            let mut sorted = rule.verbs.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, rule.verbs, "{rule:?}");
            assert!(
                rule.verbs.iter().all(|v| ["get", "patch"].contains(v)),
                "{rule:?}"
            );
        }
    }
}

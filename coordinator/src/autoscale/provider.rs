//! The autoscaler's providers: what actually adds and removes a pool's nodes.
//!
//! A [`Provider`] is a blocking interface: the autoscaler's driver calls it
//! from its own thread, never from the actix thread, because starting a
//! process, running an admin's cloud command or talking to the Kubernetes
//! API may each take seconds.

use serde::Deserialize;

/// Adds and removes the nodes of one pool.
///
/// Every call is blocking and is made off the actix thread.
pub trait Provider: Send + 'static {
    /// `process`, `kubernetes` or `command`.
    fn kind(&self) -> &'static str;
    /// Asks for `count` more nodes in the pool.
    fn add(&mut self, count: u32) -> Result<(), ProviderError>;
    /// Removes this node (named as it joins the farm), which the autoscaler has drained and which is idle.
    fn remove(&mut self, node: &str) -> Result<(), ProviderError>;
    /// How many nodes the provider has asked for and not removed (Kubernetes: the replica count).
    fn requested(&mut self) -> Result<u32, ProviderError>;
}

/// Why a provider could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The pool's provider configuration is wrong (a missing field, a
    /// value out of range, a kind this build does not know).
    #[error("pool {pool}: provider config: {message}")]
    Config {
        /// The pool.
        pool: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// Starting, stopping or waiting for a local process failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done, e.g. `spawning drover node for pool gpu`.
        action: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An admin-given command ran and failed (non-zero exit or timeout).
    #[error("command `{command}` failed: {message}; output: {output}")]
    Command {
        /// The command line as configured.
        command: String,
        /// The exit status or `timed out after N s`.
        message: String,
        /// The command's captured output (stdout then stderr), truncated.
        output: String,
    },
    /// The provider's remote API (Kubernetes) refused or failed a request.
    #[error("{operation}: {message}")]
    Api {
        /// The request, e.g. `PATCH deployments/render/scale`.
        operation: String,
        /// The answer's status and message.
        message: String,
    },
    /// The node to remove is not one this provider started.
    #[error("pool {pool}: node {node} is not one of this provider's nodes")]
    UnknownNode {
        /// The pool.
        pool: String,
        /// The node named.
        node: String,
    },
}

/// Which kind of Kubernetes workload holds a pool's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WorkloadKind {
    /// An `apps/v1` Deployment (scaled through `deployments/{name}/scale`).
    Deployment,
    /// An `apps/v1` StatefulSet (scaled through `statefulsets/{name}/scale`).
    StatefulSet,
}

/// The `kubernetes` provider's part of a pool's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The namespace of the workload.
    pub namespace: String,
    /// Deployment or StatefulSet.
    pub kind: WorkloadKind,
    /// The workload's name.
    pub name: String,
    /// The API server's URL; absent means in-cluster configuration (or
    /// the kubeconfig when run outside a cluster).
    #[serde(default)]
    pub api_url: Option<String>,
}

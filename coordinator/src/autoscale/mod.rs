//! Auto-scaling node pools.
//!
//! # Layout
//! - [`policy`]: the sans-IO policy of one pool (decisions from the
//!   pool's work and nodes, with an injected clock).
//! - [`provider`]: the [`provider::Provider`] trait and the providers that
//!   add and remove a pool's nodes.
//! - [`config`]: the pools file (`--pools PATH`).
//! - [`decisions`]: the journal of decisions (`DATA/pools/decisions.jsonl`).
//! - [`driver`]: one thread per pool that runs the policy and its
//!   provider; [`Pools`] is what the API reads.
//! - [`kube`]: the `kubernetes` provider (a Deployment's or StatefulSet's
//!   replica count, through the Kubernetes API).
pub mod config;
pub mod decisions;
pub mod driver;
pub mod kube;
pub mod policy;
pub mod provider;

pub use driver::{Pools, PoolsContext};

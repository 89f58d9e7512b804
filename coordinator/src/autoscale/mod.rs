//! Auto-scaling node pools.
//!
//! # Layout
//! - [`provider`]: the [`provider::Provider`] trait and the providers that
//!   add and remove a pool's nodes.
pub mod provider;

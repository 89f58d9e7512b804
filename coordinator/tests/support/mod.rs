//! Helpers shared by the coordinator's integration tests.
pub mod fake_kube;

//! Defaults every Drover binary agrees on, so that the commands work on one
//! machine with no flags.

/// Default REST address of the coordinator (loopback only: exposing it is a
/// deliberate choice of the operator).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8270";
/// Default QUIC address of the coordinator.
pub const DEFAULT_QUIC_ADDR: &str = "127.0.0.1:8271";
/// Server name in the coordinator's certificate; nodes pin the certificate
/// itself, this is only what TLS needs to name.
pub const CERT_SERVER_NAME: &str = "drover-coordinator";
/// File in the coordinator's data dir holding its certificate (DER).
pub const CERT_FILE: &str = "coordinator-cert.der";
/// File in the coordinator's data dir holding its private key (DER).
pub const KEY_FILE: &str = "coordinator-key.der";
/// File in the coordinator's data dir where it writes the addresses it
/// really bound (useful with port 0) once it is ready.
pub const ADDRS_FILE: &str = "coordinator-addrs.json";
/// How often a node sends a heartbeat, in milliseconds.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// A node silent for this long is declared dead and its chunks go back to the
/// queue: five missed heartbeats.
pub const NODE_TIMEOUT_MS: u64 = 5 * HEARTBEAT_INTERVAL_MS;

//! Operations end to end: `/metrics`, `/readyz`, JSON logs and the Grafana
//! dashboard, against a real coordinator and node.

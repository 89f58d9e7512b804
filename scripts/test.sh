#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite: formatting, and
# every test of every crate, end-to-end tests included (real processes, QUIC on
# loopback, sled, FFmpeg, wgpu on lavapipe when there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo fmt --all -- --check
# One profile (release) for tests, demo and benchmarks: one build serves all.
cargo test --release --locked --workspace

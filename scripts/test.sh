#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite: formatting, and
# every test of every crate, end-to-end tests included (real processes, QUIC on
# loopback, sled, FFmpeg, wgpu on lavapipe when there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo fmt --all -- --check
# Lints on every target, warnings as errors; the check build it needs is
# separate from the release build below.
cargo clippy --locked --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# One profile (release) for tests, demo and benchmarks: one build serves all.
cargo test --release --locked --workspace 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"

#!/usr/bin/env bash
# Installs what is missing, builds, and runs `drover demo` (extra arguments
# are passed to it, e.g. `--frames 480 --nodes 3 --json`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Mesa wants a runtime dir; give it a private one when the session has none.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo build --release --locked -p drover-cli
exec target/release/drover demo "$@"

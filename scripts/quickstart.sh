#!/usr/bin/env bash
# The main job: installs what the build needs, builds ugc-pipe, and runs
# pipelines/quickstart.yaml end to end on the built-in synthetic dataset (no downloads).
# A second call executes nothing: every stage comes from cache/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked
./target/release/ugc-pipe run pipelines/quickstart.yaml "$@"
./target/release/ugc-pipe show pipelines/quickstart.yaml

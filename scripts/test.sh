#!/usr/bin/env bash
# Runs the whole test suite: installs what the build needs (scripts/setup.sh), then
# `cargo test` over the workspace. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --workspace --locked "$@"

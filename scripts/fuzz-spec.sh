#!/usr/bin/env bash
# Long run of the pipeline-loader fuzzer (crates/engine/tests/it/spec_fuzz.rs) in release:
#   scripts/fuzz-spec.sh 1000000          # a million inputs
#   UGC_FUZZ_SEED=7 scripts/fuzz-spec.sh 100000
# It stops with a non-zero exit on any panic or any input over one second; the failing
# inputs are saved under target/fuzz-failures/. The engine needs no libtorch, so no setup.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:?usage: scripts/fuzz-spec.sh N (number of inputs)}"
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
    echo "scripts/fuzz-spec.sh: N must be a positive whole number, got '$n'" >&2
    exit 2
fi
UGC_FUZZ_ITERS="$n" exec cargo test --release --locked -p ugc-engine --test it spec_fuzz -- --nocapture

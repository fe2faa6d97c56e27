#!/usr/bin/env bash
# Long run of the crash-loop test (tests/it/pipelines.rs, crash_loop_...) in release:
#   scripts/crash-loop.sh 100             # 100 trials
#   UGC_CRASH_SEED=7 scripts/crash-loop.sh 300
# Each trial runs tests/fixtures/crash-loop.yaml on a fresh cache, kills the head or a
# stage process with kill -9 at random times (up to 4 times, each resume again), lets the
# last run finish, then checks that verify finds the cache intact, that every committed
# output is bit-identical to an uninterrupted run's, and that no process of a run outlived
# its head. It stops at the first failing trial with a non-zero exit and keeps that
# trial's project (the path is printed). The whole output also goes to
# target/crash-loop.log; the last line is the summary (trials, kills of head / worker,
# resumes, checkpoint resumes).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:?usage: scripts/crash-loop.sh N (number of trials)}"
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
    echo "scripts/crash-loop.sh: N must be a positive whole number, got '$n'" >&2
    exit 2
fi
./scripts/setup.sh
log=target/crash-loop.log
mkdir -p target
status=0
UGC_CRASH_TRIALS="$n" cargo test --release --locked -p ugc-pipe --test it pipelines::crash_loop \
    -- --nocapture 2>&1 | tee "$log" || status=$?
echo
if [ "$status" -ne 0 ]; then
    echo "crash-loop: FAILED (exit $status); see $log" >&2
    grep -E "^crash trial .* failed" "$log" >&2 || true
    exit "$status"
fi
grep -E "^crash-loop summary:" "$log"

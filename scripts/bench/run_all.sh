#!/usr/bin/env bash
# Runs every benchmark of docs/benchmarks.md (issue #7) and writes JSON lines to
# target/bench/results.jsonl (one line per measurement, each preceded by a `machine` line
# with the load average at that moment). Rust and PyTorch runs of the same item alternate
# (ROUNDS times) so that load from other processes hits both sides alike.
#
#   scripts/bench/run_all.sh [THREADS] [ROUNDS] [DEVICE]      # defaults: 1 2 cpu
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
THREADS="${1:-1}"
ROUNDS="${2:-2}"
DEVICE="${3:-cpu}"
PY="$ROOT/.venv/bin/python"
OUT="$ROOT/target/bench"
RES="$OUT/results.jsonl"
mkdir -p "$OUT"
cargo bench --bench latency --bench train_step --bench store_hash --no-run 2> "$OUT/build.log"
cargo build --release --bins 2>> "$OUT/build.log"
cargo build --release -p ugc-data --example loader_bench 2>> "$OUT/build.log"
bench_bin() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
LAT=$(bench_bin latency); STEP=$(bench_bin train_step); HASH=$(bench_bin store_hash)
machine() {
  "$PY" -c 'import json,os,platform,sys; print(json.dumps({"bench":"machine","note":sys.argv[1],"loadavg":os.getloadavg(),"nproc":os.cpu_count(),"cpu":[l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]}))' "$1" | tee -a "$RES"
}
run() { machine "$1"; shift; "$@" | tee -a "$RES"; }

for r in $(seq 1 "$ROUNDS"); do
  # Item 1: training steps (Rust first writes the sub-net sequence the PyTorch side replays).
  run "item1 gantask round $r" "$STEP" --step gantask --threads "$THREADS" --device "$DEVICE"
  for step in supernet distill; do
    run "item1 $step round $r" "$STEP" --step "$step" --threads "$THREADS" --device "$DEVICE"
    # PyTorch twin with torch.optim.Adam's defaults, then with fused=True (what ugc-pipe runs).
    for adam in torch fused; do
      run "item1 $step round $r" "$PY" scripts/bench/train_step.py --step "$step" --threads "$THREADS" \
        --device "$DEVICE" --adam "$adam" --subnets target/bench/train_step/subnets.json
    done
  done
  # Item 2: latency at 256x256.
  run "item2 round $r" "$LAT" --threads "$THREADS" --device "$DEVICE"
  run "item2 round $r" "$PY" scripts/bench/latency.py --threads "$THREADS" --device "$DEVICE"
done
# Item 3: store hashing and no-op re-runs.
run "item3 hash" "$HASH" --mib 1024 --repeats 5
run "item3 noop" scripts/bench/engine_overhead.sh
# Item 4: loader throughput (1 and 2 decode threads), 256x256 JPEG pairs; and the loader the
# training-step bench uses (64x64 PNG pairs, batch 4, 1 decode thread), alone.
run "item4 loader" target/release/examples/loader_bench 200 4 1 2
run "item4 loader 64" "$STEP" --step loader --threads "$THREADS" --device "$DEVICE"

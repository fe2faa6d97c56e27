#!/usr/bin/env bash
# Item 1 follow-up: what the two proposed supernet-step changes would save, measured on both
# sides (alternating, ROUNDS times): freezing D during the generator backward, and the
# `where`-based LeakyReLU of ugc-nn (switched on in the PyTorch twin to show its cost there).
#
#   scripts/bench/ablation.sh [THREADS] [ROUNDS]          # defaults: 1 2
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
THREADS="${1:-1}"
ROUNDS="${2:-2}"
PY="$ROOT/.venv/bin/python"
RES="$ROOT/target/bench/ablation.jsonl"
cargo bench --bench train_step --no-run 2> /dev/null
STEP=$(ls -t target/release/deps/train_step-* | grep -v '\.d$' | head -1)
SUBS=target/bench/train_step/subnets.json
for r in $(seq 1 "$ROUNDS"); do
  "$PY" -c 'import json,os; print(json.dumps({"bench":"machine","loadavg":os.getloadavg()}))' | tee -a "$RES"
  "$STEP" --step supernet --threads "$THREADS" | tee -a "$RES"
  "$STEP" --step supernet --threads "$THREADS" --freeze-d true | tee -a "$RES"
  "$PY" scripts/bench/train_step.py --step supernet --threads "$THREADS" --subnets "$SUBS" | tee -a "$RES"
  "$PY" scripts/bench/train_step.py --step supernet --threads "$THREADS" --subnets "$SUBS" --freeze-d | tee -a "$RES"
  "$PY" scripts/bench/train_step.py --step supernet --threads "$THREADS" --subnets "$SUBS" --lrelu where | tee -a "$RES"
  "$PY" scripts/bench/train_step.py --step supernet --threads "$THREADS" --subnets "$SUBS" --lrelu where --freeze-d | tee -a "$RES"
  "$PY" scripts/bench/train_step.py --step supernet --threads "$THREADS" --subnets "$SUBS" --lrelu relu | tee -a "$RES"
done

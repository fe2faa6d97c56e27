#!/usr/bin/env bash
# Item 1 follow-up: what freezing D during the generators' backward passes saves, on both
# sides (alternating, ROUNDS times), for the supernet and the distillation step. Both steps
# freeze D by default (as GanTask / DistillTask do); `--freeze-d false` turns it off.
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
  for step in supernet distill; do
    for freeze in true false; do
      "$PY" -c 'import json,os; print(json.dumps({"bench":"machine","loadavg":os.getloadavg()}))' | tee -a "$RES"
      "$STEP" --step "$step" --threads "$THREADS" --freeze-d "$freeze" | tee -a "$RES"
      "$PY" scripts/bench/train_step.py --step "$step" --threads "$THREADS" --subnets "$SUBS" \
        --freeze-d "$freeze" | tee -a "$RES"
    done
  done
done

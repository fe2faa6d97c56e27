#!/usr/bin/env bash
# Issue 13 item 6: data-parallel scaling of the supernet training step, ugc-pipe's ranks
# (c10d through ugc_train::Dist and the gradient reducer) side by side with PyTorch
# DistributedDataParallel under torchrun, in one run, on the CPU (Gloo) or one GPU.
#
#   scripts/bench/ddp.sh [--device cpu|cuda] [--per-rank-batch 4] [--size 64] [--ngf 16]
#                        [--threads 1] [--repeats 5] [--steps-per-repeat 3] [--worlds "1 2"]
#                        [--sync-bn true|false]
#
# --sync-bn (ugc-pipe's side): the discriminator's batch norm with global-batch statistics
# (the product's data-parallel stages, exact against one rank) or each rank's own (what
# PyTorch DDP does on the CPU, where its SyncBatchNorm is refused).
#
# For each world size W it runs both sides twice: weak scaling (each rank keeps
# --per-rank-batch rows, the global batch grows with W) and strong scaling (the global
# batch is the largest world's, W * ... split over W ranks). Efficiency = images/s with W
# ranks / (W x images/s with 1 rank at the same per-rank batch (weak) or global batch
# (strong)). Prints one JSON line per measurement and a markdown table at the end.
# With --device cuda, a world larger than the GPUs is skipped (and said so): ugc-pipe's
# CUDA ranks use NCCL, which refuses two ranks on one GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

DEVICE=cpu PER_RANK=4 SIZE=64 NGF=16 THREADS=1 REPEATS=5 PER_REPEAT=3 WORLDS="1 2" SYNC_BN=true
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2 ;; --per-rank-batch) PER_RANK=$2 ;; --size) SIZE=$2 ;;
    --ngf) NGF=$2 ;; --threads) THREADS=$2 ;; --repeats) REPEATS=$2 ;;
    --steps-per-repeat) PER_REPEAT=$2 ;; --worlds) WORLDS=$2 ;; --sync-bn) SYNC_BN=$2 ;;
    *) echo "ddp.sh: unknown flag $1" >&2; exit 2 ;;
  esac
  shift 2
done

cargo build --release --bench train_step --quiet
BIN=$(ls -t target/release/deps/train_step-* | grep -v '\.d$' | head -1)
OUT=target/bench/ddp
mkdir -p "$OUT"
PY=.venv/bin/python
TORCHRUN=.venv/bin/torchrun
MAXW=$(for w in $WORLDS; do echo "$w"; done | sort -n | tail -1)
export OMP_NUM_THREADS=$THREADS

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

common() { # global batch
  echo --step supernet --threads "$THREADS" --batch "$1" --size "$SIZE" --ngf "$NGF" \
    --warmup 2 --repeats "$REPEATS" --steps-per-repeat "$PER_REPEAT" --device "$DEVICE"
}

ours() { # world, global batch
  local w=$1 b=$2 port; port=$(free_port)
  if [ "$w" = 1 ]; then
    "$BIN" $(common "$b") --out "$OUT"
    return
  fi
  local pids=()
  for ((r = 0; r < w; r++)); do
    RANK=$r WORLD_SIZE=$w LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$BIN" $(common "$b") --sync-bn "$SYNC_BN" --out "$OUT" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

theirs() { # world, global batch
  local w=$1 b=$2
  if [ "$w" = 1 ]; then
    "$PY" scripts/bench/train_step.py $(common "$b") --adam fused --subnets "$OUT/subnets.json"
  else
    "$TORCHRUN" --nproc-per-node "$w" --master-addr 127.0.0.1 --master-port "$(free_port)" \
      scripts/bench/train_step.py $(common "$b") --adam fused --subnets "$OUT/subnets.json" 2>/dev/null
  fi
}

RESULTS=$OUT/results.jsonl
: > "$RESULTS"
for w in $WORLDS; do
  if [ "$DEVICE" = cuda ] && [ "$w" -gt 1 ]; then
    n=$(nvidia-smi -L 2>/dev/null | wc -l)
    if [ "$n" -lt "$w" ]; then
      echo "ddp.sh: $w ranks need $w GPUs for NCCL (this machine has $n): skipped" >&2
      continue
    fi
  fi
  for mode in weak strong; do
    if [ "$mode" = weak ]; then b=$((PER_RANK * w)); else b=$((PER_RANK * MAXW)); fi
    # Ours first: it writes the sub-net sequence the PyTorch side replays.
    ours "$w" "$b" | sed "s/^{/{\"mode\":\"$mode\",/" | tee -a "$RESULTS"
    theirs "$w" "$b" | sed "s/^{/{\"mode\":\"$mode\",/" | tee -a "$RESULTS"
  done
done

"$PY" - "$RESULTS" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def get(impl, mode, w):
    return next((r for r in rows if r["impl"] == impl and r["mode"] == mode and r.get("world", 1) == w), None)
print("\n| scaling | ranks | global batch | ugc-pipe images/s | efficiency | PyTorch DDP images/s | efficiency |")
print("|---|---|---|---|---|---|---|")
for mode in ("weak", "strong"):
    for w in sorted({r.get("world", 1) for r in rows if r["mode"] == mode}):
        cells, batch = [], None
        for impl in ("ugc-pipe", "pytorch"):
            r, one = get(impl, mode, w), get(impl, mode, 1)
            batch = batch or (r and r["batch"])
            # Efficiency: W ranks against W x one rank at the same per-rank (weak) or global
            # (strong) batch.
            eff = r["images_per_s"] / (w * one["images_per_s"]) if r and one else None
            cells += [f"{r['images_per_s']:.1f}" if r else "–", f"{100 * eff:.0f}%" if eff else "–"]
        print(f"| {mode} | {w} | {batch} | " + " | ".join(cells) + " |")
PYEOF

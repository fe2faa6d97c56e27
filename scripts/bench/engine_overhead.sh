#!/usr/bin/env bash
# Issue #7 item 3: no-op re-run time of a pipeline holding >= 1 GB of checkpoints.
#
#   scripts/bench/engine_overhead.sh [WORKDIR] [FILES] [MIB_PER_FILE] [RUNS]
#
# Generates a pipeline of FILES `command` stages, each writing one MIB_PER_FILE MiB file of
# random bytes (default 4 x 256 MiB = 1 GiB) in a chain, runs it once (cold), then times
# `ugc-pipe run` re-runs that find everything cached (median of RUNS via hyperfine when
# installed, else a timing loop). Uses the release binary target/release/ugc-pipe.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="$ROOT/target/release/ugc-pipe"
WORK="${1:-$ROOT/target/bench/engine_overhead}"
FILES="${2:-4}"
MIB="${3:-256}"
RUNS="${4:-5}"
[ -x "$BIN" ] || { echo "missing $BIN: run cargo build --release --bins" >&2; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK"
P="$WORK/pipeline.yaml"
{
  echo "stages:"
  prev=""
  for i in $(seq 1 "$FILES"); do
    echo "  ckpt$i:"
    echo "    kind: command"
    [ -n "$prev" ] && echo "    deps: [$prev]"
    echo "    params:"
    echo "      cmd: \"head -c $((MIB * 1048576)) /dev/urandom > \$\${UGC_OUT}/ckpt$i.bin\""
    echo "      outputs: [ckpt$i.bin]"
    prev="ckpt$i"
  done
} > "$P"
export UGC_PIPE_CACHE="$WORK/cache"
start=$(date +%s.%N)
"$BIN" run "$P" > "$WORK/cold.log" 2>&1
end=$(date +%s.%N)
bytes=$(du -sb "$WORK/cache" | cut -f1)
echo "{\"bench\":\"engine_cold_run\",\"stages\":$FILES,\"cache_bytes\":$bytes,\"secs\":$(echo "$end - $start" | bc)}"
if command -v hyperfine > /dev/null; then
  hyperfine --warmup 1 --runs "$RUNS" --export-json "$WORK/noop.json" -N "$BIN run $P" > "$WORK/hyperfine.txt" 2>&1
  "$ROOT/.venv/bin/python" - "$WORK/noop.json" "$bytes" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(json.dumps({"bench": "engine_noop_rerun", "tool": "hyperfine", "cache_bytes": int(sys.argv[2]),
                  "median_s": r["median"], "min_s": r["min"], "max_s": r["max"], "runs": len(r["times"])}))
PY
else
  ts=()
  for _ in $(seq 1 "$RUNS"); do
    s=$(date +%s.%N); "$BIN" run "$P" > /dev/null 2>&1; e=$(date +%s.%N)
    ts+=("$(echo "$e - $s" | bc)")
  done
  printf '%s\n' "${ts[@]}" | sort -n | awk -v b="$bytes" '{a[NR]=$1} END {print "{\"bench\":\"engine_noop_rerun\",\"tool\":\"loop\",\"cache_bytes\":" b ",\"median_s\":" a[int((NR+1)/2)] ",\"min_s\":" a[1] ",\"max_s\":" a[NR] ",\"runs\":" NR "}"}'
fi

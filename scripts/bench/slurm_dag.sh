#!/usr/bin/env bash
# Issue 14 item 10: ugc-pipe's Slurm executor against Snakemake's Slurm executor plugin,
# on the one-node test cluster (scripts/slurm-up.sh), in one run.
#
#   scripts/bench/slurm_dag.sh [ROUNDS] [WORKDIR]        # defaults: 1, target/bench/slurm
#
# The DAG (scripts/bench/slurm/gen.py): a source stage, 2 chains of 9 stages, a sink that
# joins them: 20 stages, depth 11, never more than 2 runnable at once, which is what the
# node's 2 CPUs run side by side (each job asks for 1 CPU), so no stage waits for a CPU and
# its submit-to-done time is the tools' overhead plus its own 1 s. Each stage sleeps 1 s,
# writes a file and records its own start and end; the same shell command in both tools.
#
# Each round runs, one after the other, each with a fresh cache / work folder:
#   ugc-pipe-20    ugc-pipe run P --executor slurm, default executor settings
#   snakemake-20   snakemake --executor slurm at the defaults: the plugin's next status
#                  check comes 40 s (init_seconds_before_status_checks) after one that saw
#                  a job finish, 10 s later than the last after one that saw none (at
#                  most 180 s); status by squeue
#   snakemake-20-fast  the same with both intervals at the shortest the CLI takes, 1 s
#                  (a quiet check still adds 10 s: 1, 11, 21 s, ...)
#   ugc-pipe-20-fast   ugc-pipe with its shortest poll after a change at 1 s, as
#                  Snakemake's fast run (default poll_min 2 s; poll_max stays 30 s)
#   ugc-pipe-62    ugc-pipe with 6 chains of 10 (62 stages, 4 always pending): the
#                  polling load at three times as many jobs in the queue
# Every Slurm client call of each tool (and of its jobs) goes through PATH wrappers that
# log it (scripts/bench/slurm/wrappers.sh); `sdiag -r` before each run and `sdiag` after
# it give the controller's own RPC counts (cluster-wide: other users' jobs count too).
#
# Snakemake: installed from PyPI into a scratch virtualenv, WORKDIR/snakevenv (not the
# project's .venv). Its plugin's default status command is `sacct`, which needs
# accounting storage (slurmdbd); this cluster has none (AccountingStorageType=none,
# jobcomp/filetxt only), so the plugin runs with its own option --slurm-status-command
# squeue, which it accepts because MinJobAge (300 s) exceeds 3 x its first check
# interval; --slurm-no-account because there is no account database to ask.
#
# Output: WORKDIR/results.jsonl (one line per run, appended) and a markdown table on
# stdout. Needs root (sdiag -r), the cluster up, and release binaries (cargo build
# --release --bins; UGC_BENCH_BINDIR names another folder holding both).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/scripts/bench/slurm"
ROUNDS="${1:-1}"
WORK="$(mkdir -p "${2:-$ROOT/target/bench/slurm}" && cd "${2:-$ROOT/target/bench/slurm}" && pwd)"
BINDIR="${UGC_BENCH_BINDIR:-$ROOT/target/release}"
SLEEP_S=1
SMK_VERSION="${UGC_BENCH_SNAKEMAKE:-9.27.1}"
PLUGIN_VERSION="${UGC_BENCH_SNAKEMAKE_SLURM:-2.8.0}"
say() { echo "slurm_dag: $*" >&2; }
die() { say "error: $*"; exit 1; }
case "$ROUNDS" in '' | *[!0-9]* | 0) die "ROUNDS=$ROUNDS is not a positive whole number" ;; esac
[ -x "$BINDIR/ugc-pipe" ] && [ -x "$BINDIR/ugc-pipe-worker" ] ||
  die "missing $BINDIR/ugc-pipe or ugc-pipe-worker: run cargo build --release --bins"
# A snapshot of both binaries: a cargo build during the benchmark must not swap the
# worker under the jobs (the head finds the worker next to itself).
mkdir -p "$WORK/bin"
cp "$BINDIR/ugc-pipe" "$BINDIR/ugc-pipe-worker" "$WORK/bin/"
BIN="$WORK/bin/ugc-pipe"
[ "$(id -u)" = 0 ] || die "must run as root (sdiag -r resets the controller's counters)"
"$ROOT/scripts/slurm-up.sh"
PY=python3
command -v "$PY" >/dev/null || die "python3 is not on PATH"

# Snakemake and its plugin, pinned, in a scratch virtualenv.
VENV="$WORK/snakevenv"
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; \
    sys.exit(m.version('snakemake') != '$SMK_VERSION' or \
    m.version('snakemake-executor-plugin-slurm') != '$PLUGIN_VERSION')" 2>/dev/null; then
  say "installing snakemake $SMK_VERSION and snakemake-executor-plugin-slurm $PLUGIN_VERSION into $VENV"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q "snakemake==$SMK_VERSION" "snakemake-executor-plugin-slurm==$PLUGIN_VERSION"
fi

CALLS="$WORK/calls.log"
WRAP="$WORK/wrappers"
"$HERE/wrappers.sh" "$WRAP" "$CALLS"
export PATH="$WRAP:$PATH"

# The machine, once per invocation.
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) CPUs)"
  echo "slurm: $(sinfo -V)"
  echo "node: $(sinfo -h -N -o '%N cpus=%c mem=%mM gres=%G')"
  echo "snakemake: $("$VENV/bin/snakemake" --version)"
  echo "plugin: snakemake-executor-plugin-slurm $("$VENV/bin/python" -c \
    "import importlib.metadata as m; print(m.version('snakemake-executor-plugin-slurm'))")"
  echo "ugc-pipe: binaries built $(date -u -r "$BINDIR/ugc-pipe" +%FT%TZ), tree at $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates/engine src || echo ' (working tree differs in crates/engine or src)')"
  echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$WORK/machine.txt" >&2

now() { date +%s.%N; }

# One measured run: $1 = run folder, $2 tool, $3 label, $4 stages, then the command.
measure() {
  local dir=$1 tool=$2 label=$3 stages=$4
  shift 4
  local start end rc=0
  sdiag -r >/dev/null
  : >"$CALLS"
  say "$label: $* (load $(cut -d' ' -f1 /proc/loadavg))"
  start=$(now)
  (cd "$dir" && "$@" 2>&1) | "$PY" "$HERE/stamp.py" -q "$dir/events.log" || rc=$?
  end=$(now)
  sdiag >"$dir/sdiag.txt"
  cp "$CALLS" "$dir/calls.log"
  [ "$rc" = 0 ] || die "$label failed (exit $rc); its output: $dir/events.log"
  printf '{"tool": "%s", "label": "%s", "stages": %s, "start": %s, "end": %s, "load1": %s}\n' \
    "$tool" "$label" "$stages" "$start" "$end" "$(cut -d' ' -f1 /proc/loadavg)" >"$dir/meta.json"
}

# A fresh run folder with the DAG of WIDTH x LENGTH written into it.
fresh() {
  local dir=$1
  rm -rf "$dir"
  mkdir -p "$dir"
  "$PY" "$HERE/gen.py" "$dir" "$2" "$3" "$SLEEP_S"
}

runs=()
for r in $(seq 1 "$ROUNDS"); do
  d="$WORK/r$r/ugc-pipe-20"
  n=$(fresh "$d" 2 9)
  measure "$d" ugc-pipe ugc-pipe-20 "$n" \
    "$BIN" run pipeline.yaml --executor slurm --cache-dir "$d/cache" --json
  runs+=("$d")

  for mode in default fast; do
    d="$WORK/r$r/snakemake-20-$mode"
    n=$(fresh "$d" 2 9)
    args=(--executor slurm --jobs 100 --slurm-status-command squeue --slurm-no-account)
    label=snakemake-20
    if [ "$mode" = fast ]; then
      args+=(--slurm-init-seconds-before-status-checks 1 --seconds-between-status-checks 1)
      label=snakemake-20-fast
    fi
    measure "$d" snakemake "$label" "$n" "$VENV/bin/snakemake" "${args[@]}"
    runs+=("$d")
  done

  d="$WORK/r$r/ugc-pipe-20-fast"
  n=$(fresh "$d" 2 9)
  measure "$d" ugc-pipe ugc-pipe-20-fast "$n" "$BIN" run pipeline.yaml --executor slurm \
    --cache-dir "$d/cache" --json --executor-set poll_min=1
  runs+=("$d")

  d="$WORK/r$r/ugc-pipe-62"
  n=$(fresh "$d" 6 10)
  measure "$d" ugc-pipe ugc-pipe-62 "$n" \
    "$BIN" run pipeline.yaml --executor slurm --cache-dir "$d/cache" --json
  runs+=("$d")
done

"$PY" "$HERE/analyze.py" "$WORK/results.jsonl" "${runs[@]}"

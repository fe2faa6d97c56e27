#!/usr/bin/env bash
# wrappers.sh DIR LOG: writes into DIR one wrapper per Slurm client command (sbatch, squeue,
# sacct, scancel, srun, scontrol, sinfo, sacctmgr, sstat). Each appends one line to LOG,
#   <epoch s> <command> <job id if called inside a job, else -> <arguments>
# and then execs the real command, so a tool with DIR first on PATH behaves as without it
# while every call it makes to the controller is counted. Jobs inherit PATH and LOG
# (sbatch exports the submitting environment), so calls made inside jobs (Snakemake's
# `srun`) are counted too, marked with their job id.
set -euo pipefail
[ $# = 2 ] || { echo "usage: wrappers.sh DIR LOG" >&2; exit 2; }
DIR=$1 LOG=$2
mkdir -p "$DIR"
for c in sbatch squeue sacct scancel srun scontrol sinfo sacctmgr sstat; do
  real=$(PATH=/usr/local/bin:/usr/bin:/bin command -v "$c") || { echo "wrappers.sh: no $c on PATH" >&2; exit 1; }
  cat >"$DIR/$c" <<W
#!/bin/bash
printf '%s %s %s %s\n' "\$EPOCHREALTIME" $c "\${SLURM_JOB_ID:--}" "\$*" >>"$LOG"
exec $real "\$@"
W
  chmod +x "$DIR/$c"
done

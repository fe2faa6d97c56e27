#!/usr/bin/env bash
# slurm-down.sh: stops what scripts/slurm-up.sh started, by the pids it recorded (never by
# process name: other Slurm or munge daemons on the machine are left alone). Idempotent.
#   --keep-munge  leave munged running
#   --purge       also remove the state folder, the generated configs and fake GPU nodes
#   --quiet       say nothing when there is nothing to stop
set -uo pipefail

ROOT=${UGC_SLURM_ROOT:-/tmp/ugc-slurm}
keep_munge=0 purge=0 quiet=0
for a in "$@"; do
  case "$a" in
    --keep-munge) keep_munge=1 ;;
    --purge) purge=1 ;;
    --quiet) quiet=1 ;;
    *) echo "usage: $0 [--keep-munge] [--purge] [--quiet]" >&2; exit 2 ;;
  esac
done
say() { [ "$quiet" = 1 ] || echo "slurm-down: $*" >&2; }

alive() {  # pid alive and not a zombie
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
# The recorded pid, only if it is alive and runs the expected program.
recorded() {
  [ -s "$1" ] || return 1
  local pid
  pid=$(cat "$1")
  alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}
stop() {  # pidfile comm
  local pid
  pid=$(recorded "$1" "$2") || { rm -f "$1"; return 0; }
  say "stopping $2 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && { say "$2 alive after 10 s: SIGKILL"; kill -KILL "$pid"; }
  rm -f "$1"
}

# Jobs first, while the controller runs, so no slurmstepd outlives its slurmd.
if recorded "$ROOT/run/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs $jobs"
    # shellcheck disable=SC2086 # a list of job ids
    timeout 10 scancel $jobs 2>/dev/null
    for _ in $(seq 100); do [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
stop "$ROOT/run/slurmd.pid" slurmd
stop "$ROOT/run/slurmctld.pid" slurmctld
if [ "$keep_munge" = 0 ] && [ -s "$ROOT/run/munged.pid" ]; then
  # only the munged slurm-up.sh started (its pid file is a copy of munged's own)
  if [ "$(cat "$ROOT/run/munged.pid")" = "$(cat /run/munge/munged.pid 2>/dev/null)" ]; then
    stop "$ROOT/run/munged.pid" munged
  fi
  rm -f "$ROOT/run/munged.pid"
fi

if [ "$purge" = 1 ]; then
  say "purging $ROOT, the generated configs, the fake GPU device nodes"
  rm -rf "$ROOT"
  for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/slurm/cgroup.conf; do
    grep -q 'scripts/slurm-up.sh' "$f" 2>/dev/null && rm -f "$f"
  done
  rm -f /dev/ugc-fake-gpu[0-9]*
fi
exit 0

#!/usr/bin/env bash
# slurm-up.sh: a one-node Slurm cluster on this machine for the Slurm executor's tests
# (crates/engine/tests/it/slurm.rs), without systemd. Idempotent and fast: when the
# daemons this script started are alive and the node is idle it returns at once (a few
# ms); a cold bring-up takes about 4 s once the packages are installed. Pair:
# scripts/slurm-down.sh. Needs root (it writes /etc/slurm and makes device nodes).
#
# What it sets up, and why:
#   - Debian's slurmctld, slurmd, slurm-client and munge, installed when missing.
#   - fake GPUs: gres `gpu` backed by character devices made with mknod (major 195, the
#     NVIDIA driver's), so --gres=gpu:N, CUDA_VISIBLE_DEVICES and cgroup device denial
#     behave as on a GPU node. A count-only gres leaves the node INVAL; /dev/null's
#     numbers would deny /dev/null itself to jobs under ConstrainDevices.
#   - SchedulerParameters=batch_sched_delay=0: about 0.9 s from submit to start, not 2-3 s.
#   - DefMemPerCPU: without it a job without --mem takes the node's whole memory.
#   - JobCompType=jobcomp/filetxt: no accounting database, yet `sacct -c` finds ended jobs.
#   - cgroup v1 plugins (memory limits, device denial, no orphans) where the host has the
#     controllers; otherwise proctrack/linuxproc + task/none.
#
# Environment (all optional):
#   UGC_SLURM_ROOT        state, logs, pid files                         [/tmp/ugc-slurm]
#   UGC_SLURM_GPUS        fake GPUs on the node (0 = none)               [2]
#   UGC_SLURM_CGROUP      auto | yes | no                                [auto]
#   UGC_SLURM_MINJOBAGE   s an ended job stays visible to squeue -t all  [300]
#   UGC_SLURM_KILLWAIT    s between SIGTERM and SIGKILL (cancel, time)   [5]
set -euo pipefail

ROOT=${UGC_SLURM_ROOT:-/tmp/ugc-slurm}
NGPU=${UGC_SLURM_GPUS:-2}
CGROUP=${UGC_SLURM_CGROUP:-auto}
MINJOBAGE=${UGC_SLURM_MINJOBAGE:-300}
KILLWAIT=${UGC_SLURM_KILLWAIT:-5}
CONF=/etc/slurm               # the clients' compiled-in default: no SLURM_CONF to export
HERE=$(cd "$(dirname "$0")" && pwd)
START=$SECONDS
say() { echo "slurm-up: $*" >&2; }
die() { say "error: $*"; exit 1; }

# A pid file naming a live process (a zombie is dead: PID 1 here may reap late).
live() {
  [ -s "$1" ] || return 1
  local pid state
  pid=$(cat "$1")
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

[ "$(id -u)" = 0 ] || die "must run as root (writes $CONF, makes device nodes)"
case "$NGPU" in '' | *[!0-9]*) die "UGC_SLURM_GPUS=$NGPU is not a whole number" ;; esac
NODE=$(hostname -s)
node_state() { timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }

# Up and serving: idle, or running jobs (mixed, allocated, completing); a node that is
# down, drained or invalid is brought up again (which also clears its queue).
if live "$ROOT/run/slurmctld.pid" && live "$ROOT/run/slurmd.pid"; then
  state=$(node_state)
  case "$state" in
    idle | mixed | allocated | completing)
      say "already up (node $NODE $state)"
      exit 0
      ;;
  esac
  say "node $NODE is ${state:-unreachable}: bringing the cluster up again"
fi

missing=()
for p in slurmctld slurmd slurm-client munge; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Leftovers of an earlier bring-up (only the daemons whose pids we recorded).
"$HERE/slurm-down.sh" --quiet
mkdir -p "$ROOT/run" "$ROOT/log" "$ROOT/ctld" "$ROOT/d" "$CONF"
rm -rf "${ROOT:?}/ctld/"* "${ROOT:?}/d/"*   # a fresh controller: job ids restart, no old jobs

# munge: the key once, the daemon only if none runs (one that is not ours is reused).
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  head -c 1024 /dev/urandom >/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! live /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged
  cp /run/munge/munged.pid "$ROOT/run/munged.pid"   # ours: slurm-down.sh may stop it
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null 2>&1 || die "munge does not work (see /var/log/munge)"

# The node as slurmd measures it; 90% of its memory so a slightly lower reading later
# does not drain the node.
hw=$(slurmd -C | head -n1)
field() { tr ' ' '\n' <<<"$hw" | sed -n "s/^$1=//p"; }
CPUS=$(field CPUs)
MEM=$(($(field RealMemory) * 9 / 10))

echo "# written by scripts/slurm-up.sh" >"$CONF/gres.conf"
GRES=""
if [ "$NGPU" -gt 0 ]; then
  for i in $(seq 0 $((NGPU - 1))); do
    dev=/dev/ugc-fake-gpu$i
    [ "$(stat -c %t:%T "$dev" 2>/dev/null)" = "c3:$(printf %x "$i")" ] || {
      rm -f "$dev"
      mknod "$dev" c 195 "$i"
    }
  done
  printf 'AutoDetect=off\nNodeName=%s Name=gpu File=/dev/ugc-fake-gpu[0-%d]\n' \
    "$NODE" $((NGPU - 1)) >>"$CONF/gres.conf"
  GRES="Gres=gpu:$NGPU"
fi

if [ "$CGROUP" = auto ]; then
  CGROUP=no   # cgroup v2-only hosts need systemd/dbus for Slurm 22.05's cgroup/v2
  n=0
  for c in memory devices cpuset freezer; do
    grep -q "^cgroup /sys/fs/cgroup/$c cgroup" /proc/mounts && n=$((n + 1))
  done
  [ "$n" = 4 ] && CGROUP=yes
fi

write_conf() {
  local proctrack=proctrack/linuxproc task=task/none
  rm -f "$CONF/cgroup.conf"
  if [ "$1" = yes ]; then
    proctrack=proctrack/cgroup
    task=task/cgroup,task/affinity
    printf '%s\n' "# written by scripts/slurm-up.sh" CgroupPlugin=cgroup/v1 \
      CgroupMountpoint=/sys/fs/cgroup ConstrainCores=yes ConstrainDevices=yes \
      ConstrainRAMSpace=yes >"$CONF/cgroup.conf"
  fi
  cat >"$CONF/slurm.conf" <<CONF
# written by scripts/slurm-up.sh: the one-node test cluster of ugc-pipe
ClusterName=ugc
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
StateSaveLocation=$ROOT/ctld
SlurmdSpoolDir=$ROOT/d
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
ProctrackType=$proctrack
TaskPlugin=$task
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((MEM / CPUS))
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=5
JobCompType=jobcomp/filetxt
JobCompLoc=$ROOT/log/jobcomp.txt
MinJobAge=$MINJOBAGE
KillWait=$KILLWAIT
SlurmdTimeout=30
ReturnToService=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM $GRES State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

# Both daemons, then the node idle within 30 s; a daemon that dies (bad config) fails fast.
start() {
  /usr/sbin/slurmctld || return 1
  /usr/sbin/slurmd || return 1
  local deadline=$((SECONDS + 30)) st=""
  while [ $SECONDS -lt $deadline ]; do
    for d in slurmctld slurmd; do
      live "$ROOT/run/$d.pid" || { sleep 0.3; live "$ROOT/run/$d.pid"; } || {
        say "$d died:"; grep -E 'fatal|error' "$ROOT/log/$d.log" | tail -n3 >&2; return 1; }
    done
    st=$(node_state)
    [ "$st" = idle ] && return 0
    sleep 0.2
  done
  say "node is '$st' after 30 s"
  return 1
}

# One job through the whole path, a GPU job when there are GPUs; polls scontrol every
# 0.1 s (sbatch --wait polls every 2-10 s).
smoke() {
  local out=$ROOT/log/smoke.out jid st="" deadline=$((SECONDS + 60)) gres=()
  [ "$NGPU" -gt 0 ] && gres=(--gres=gpu:1)
  rm -f "$out"
  jid=$(sbatch --parsable "${gres[@]}" -o "$out" --wrap 'echo ok ${CUDA_VISIBLE_DEVICES:-}') || return 1
  while [ $SECONDS -lt $deadline ]; do
    st=$(scontrol show job -o "$jid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case "$st" in
      COMPLETED) grep -q '^ok' "$out" && return 0; return 1 ;;
      PENDING | CONFIGURING | RUNNING | COMPLETING | "") sleep 0.1 ;;
      *) say "smoke job $jid ended $st"; return 1 ;;
    esac
  done
  scancel "$jid"
  say "smoke job $jid not done in 60 s (state $st)"
  return 1
}

write_conf "$CGROUP"
if ! { start && smoke; }; then
  [ "$CGROUP" = yes ] && [ "${UGC_SLURM_CGROUP:-auto}" = auto ] || die "Slurm did not come up; logs in $ROOT/log"
  say "cgroup plugins failed here; retrying with proctrack/linuxproc + task/none"
  "$HERE/slurm-down.sh" --quiet --keep-munge
  rm -rf "${ROOT:?}/ctld/"* "${ROOT:?}/d/"*
  CGROUP=no
  write_conf no
  { start && smoke; } || die "Slurm did not come up; logs in $ROOT/log"
fi
say "up in $((SECONDS - START)) s: $(sinfo -h -N -o '%N %T cpus=%c mem=%mM gres=%G') cgroup=$CGROUP"

#!/usr/bin/env bash
# slurm-two-nodes.sh up|down: a two-node Slurm cluster on this one machine, for the test of
# a data-parallel stage whose ranks `srun` places on two nodes (tests/it/slurm.rs,
# `a_data_parallel_stage_spans_two_nodes`). Needs root. Pair of scripts/slurm-up.sh, whose
# one-node cluster (and munge) it leaves alone and uses: it calls it first.
#
# How one machine holds two nodes: Debian's slurmd is built without multiple-slurmd, so
# each node is a slurmd in its own network namespace (its own address and port 6818),
# `ugc-n1` 10.77.0.11 and `ugc-n2` 10.77.0.12 on a bridge whose host side, 10.77.0.1,
# runs this cluster's controller (port 6827, beside the one-node cluster's 6817). Mounts
# are shared (nsenter --net only), so the cache, the binaries and munge's socket are the
# same files on both nodes, as on a cluster with a shared filesystem. Each node has 1 CPU,
# so two ranks must span both. The node names go into /etc/hosts: the job script's
# MASTER_ADDR is the first node's name. The machine's own name resolves to loopback in
# every namespace, which is what this tests too: a rank must advertise the address it
# reaches the master from, not its hostname's (crates/torch-ext/cpp/dist.cpp).
# No cgroups (proctrack/linuxproc, task/none): two slurmd would share one hierarchy.
#
# Prints the cluster's config file (for SLURM_CONF) on stdout when it is up.
# Environment: UGC_SLURM2_ROOT (state, logs)  [/tmp/ugc-slurm-2n]
set -euo pipefail

ROOT=${UGC_SLURM2_ROOT:-/tmp/ugc-slurm-2n}
CONF=$ROOT/etc/slurm.conf
HERE=$(cd "$(dirname "$0")" && pwd)
NODES=(ugc-n1 ugc-n2)
ADDRS=(10.77.0.11 10.77.0.12)
BRIDGE=ugc-br0
say() { echo "slurm-two-nodes: $*" >&2; }
die() { say "error: $*"; exit 1; }
live() {
  [ -s "$1" ] || return 1
  local state
  state=$(awk '{print $3}' "/proc/$(cat "$1")/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

down() {
  for f in "$ROOT"/run/*.pid; do
    [ -e "$f" ] || continue
    live "$f" && kill "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$ROOT"/run/*.pid; do
    [ -e "$f" ] || continue
    for _ in $(seq 50); do live "$f" || break; sleep 0.1; done
    rm -f "$f"
  done
  for n in "${NODES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
}

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, /etc/hosts)"
case "${1:-}" in
  down) down; say "down"; exit 0 ;;
  up) ;;
  *) die "usage: $0 up|down" ;;
esac

states() { SLURM_CONF=$CONF timeout 5 sinfo -h -N -o %T 2>/dev/null | sort -u | tr '\n' ' '; }
if live "$ROOT/run/slurmctld.pid" && live "$ROOT/run/slurmd-ugc-n1.pid" \
  && live "$ROOT/run/slurmd-ugc-n2.pid"; then
  case "$(states)" in
    "idle " | "mixed " | "allocated " | "idle mixed " | "allocated idle " | "allocated mixed ")
      say "already up"
      echo "$CONF"
      exit 0
      ;;
  esac
fi

"$HERE/slurm-up.sh" >/dev/null   # packages and munge
down

# The network: a bridge, and one namespace per node with a veth into it.
ip link add "$BRIDGE" type bridge
ip addr add 10.77.0.1/24 dev "$BRIDGE"
ip link set "$BRIDGE" up
for i in 0 1; do
  n=${NODES[$i]}
  ip netns add "$n"
  ip link add "v-$n" type veth peer name eth0 netns "$n"
  ip link set "v-$n" master "$BRIDGE" up
  ip -n "$n" addr add "${ADDRS[$i]}/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
  grep -qE "^${ADDRS[$i]}[[:space:]]+$n\$" /etc/hosts || echo "${ADDRS[$i]} $n" >>/etc/hosts
done

mkdir -p "$ROOT/etc" "$ROOT/run" "$ROOT/log" "$ROOT/ctld" "$ROOT/d/ugc-n1" "$ROOT/d/ugc-n2"
rm -rf "${ROOT:?}/ctld/"*
cat >"$CONF" <<EOF
# written by scripts/slurm-two-nodes.sh: two nodes in network namespaces of one machine
ClusterName=ugc2n
SlurmctldHost=$(hostname -s)(10.77.0.1)
SlurmctldPort=6827
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
StateSaveLocation=$ROOT/ctld
SlurmdSpoolDir=$ROOT/d/%n
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd-%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2000
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$ROOT/log/jobcomp.txt
MinJobAge=300
KillWait=5
SlurmdTimeout=30
ReturnToService=2
NodeName=ugc-n1 NodeAddr=${ADDRS[0]} CPUs=1 RealMemory=4000 State=UNKNOWN
NodeName=ugc-n2 NodeAddr=${ADDRS[1]} CPUs=1 RealMemory=4000 State=UNKNOWN
PartitionName=two Nodes=ugc-n1,ugc-n2 Default=YES MaxTime=INFINITE State=UP
EOF

/usr/sbin/slurmctld -f "$CONF" -i
for n in "${NODES[@]}"; do
  nsenter --net="/var/run/netns/$n" /usr/sbin/slurmd -f "$CONF" -N "$n"
done
for _ in $(seq 100); do
  [ "$(states)" = "idle " ] && break
  sleep 0.1
done
[ "$(states)" = "idle " ] || die "nodes not idle: $(states); logs in $ROOT/log"
say "up: ugc-n1, ugc-n2 (1 CPU each); SLURM_CONF=$CONF"
echo "$CONF"

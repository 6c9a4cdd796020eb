#!/usr/bin/env bash
# tests/multinode/teardown.sh -- stop the multi-node Slurm of tests/multinode/setup.sh.
#
# Cancels its jobs, stops its slurmds and slurmctld by pid file (never by name), removes
# the namespaces, veths and bridges and the /etc/hosts block, and sweeps the MPICH
# shared-memory segments its killed engines left (tests/sweep_mpi_shm.sh). munged is left to
# tests/slurm/teardown.sh (shared). Idempotent.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "[mpihub-multinode teardown] $*"; }
. "$HERE/nodes.sh"
. "$HERE/../slurm/daemons.sh"

[ "$(id -u)" = 0 ] || { log "not root: nothing of ours can be running"; exit 0; }
[ -d "$MN_RUN" ] || exit 0
exec 9>"$MN_RUN/lock"
flock -w 120 9 || log "setup.sh has held $MN_RUN/lock for 120 s: going ahead anyway"
RUN=$MN_RUN
export SLURM_CONF=$MN_CONF

if ours slurmctld; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | xargs)
  if [ -n "$jobs" ]; then
    log "cancelling jobs $jobs"
    timeout 10 scancel $jobs 2>/dev/null
    for _ in $(seq 75); do [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
for node in "${NODES[@]}"; do
  if pid=$(slurmd_pid "$node"); then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do slurmd_pid "$node" >/dev/null || break; sleep 0.2; done
    pid=$(slurmd_pid "$node") && { log "slurmd of $node ($pid) still alive: SIGKILL"; kill -KILL "$pid"; }
    log "slurmd of $node stopped"
  fi
  rm -f "$MN_RUN/slurmd-$node.pid"
done
stop_ours slurmctld

for ns in "$LOGIN" "${NODES[@]}"; do
  [ -e "/run/netns/$ns" ] && ip netns del "$ns"   # its veth ends go with it, and their peers
done
for bridge in "$ETH" "$FAB"; do
  ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
done
if grep -qF "$HOSTS_BEGIN" /etc/hosts; then
  tmp=$(mktemp)
  awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' /etc/hosts > "$tmp" \
    && cat "$tmp" > /etc/hosts   # in place: /etc/hosts may be a bind mount
  rm -f "$tmp"
fi
rm -f "$MN_RUN/hosts.before"
SWEPT=$(bash "$(dirname "${BASH_SOURCE[0]}")/../sweep_mpi_shm.sh")  # what its killed engines left
[ -z "$SWEPT" ] || log "$SWEPT"
log "done"
exit 0

#!/usr/bin/env bash
# tests/slurm/teardown.sh -- stop the one-node Slurm that tests/slurm/setup.sh started.
#
# Cancels the jobs still in this cluster, then stops only the daemons whose PIDs are in
# /run/mpihub-slurm/*.pid (SIGTERM, SIGKILL after ~20 s), each only while /proc/PID/comm still
# names that daemon, and last sweeps the MPICH shared-memory segments that killed engines
# left (tests/sweep_mpi_shm.sh). Never kills by name. Packages, config, state and logs stay for the next
# setup. Idempotent: with nothing running it does nothing and exits 0.
set -uo pipefail

log() { echo "[mpihub-slurm teardown] $*"; }
. "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"  # RUN, pid_of, ours, stop_ours

if [ "$(id -u)" != 0 ]; then
  log "not root: nothing of ours can be running (setup.sh needs root); nothing to do"
  exit 0
fi

[ -d "$RUN" ] || exit 0                 # setup.sh never ran: nothing to stop
exec 9>"$RUN/lock"                      # not while a setup.sh is starting daemons
flock -w 120 9 || log "setup.sh has held $RUN/lock for 120 s: going ahead anyway"


# cancel while slurmctld and slurmd still run, so that slurmstepd kills the jobs' processes
if ours slurmctld; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | xargs)
  if [ -n "$jobs" ]; then
    log "cancelling jobs $jobs"
    timeout 10 scancel $jobs 2>/dev/null
    for i in $(seq 75); do
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

stop_ours slurmd
stop_ours slurmctld
stop_ours munged
SWEPT=$(bash "$(dirname "${BASH_SOURCE[0]}")/../sweep_mpi_shm.sh")  # what its killed engines left
[ -z "$SWEPT" ] || log "$SWEPT"
exit 0

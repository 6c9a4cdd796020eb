#!/usr/bin/env bash
# tests/slurm/teardown.sh -- stop the one-node Slurm that tests/slurm/setup.sh started.
#
# Cancels the jobs still in this cluster, then stops only the daemons whose PIDs are in
# /run/mpihub-slurm/*.pid (SIGTERM, SIGKILL after ~20 s), each only while /proc/PID/comm still
# names that daemon. Never kills by name. Packages, config, state and logs stay for the next
# setup. Idempotent: with nothing running it does nothing and exits 0.
set -uo pipefail

RUN=/run/mpihub-slurm
log() { echo "[mpihub-slurm teardown] $*"; }

if [ "$(id -u)" != 0 ]; then
  log "not root: nothing of ours can be running (setup.sh needs root); nothing to do"
  exit 0
fi

[ -d "$RUN" ] || exit 0                 # setup.sh never ran: nothing to stop
exec 9>"$RUN/lock"                      # not while a setup.sh is starting daemons
flock -w 120 9 || log "setup.sh has held $RUN/lock for 120 s: going ahead anyway"

pid_of() { [ -f "$RUN/$1.pid" ] && tr -dc '0-9' < "$RUN/$1.pid" || true; }
ours() {  # the pid in our pid file is alive, not a zombie, and still named $1
  local pid stat
  pid=$(pid_of "$1")
  [ -n "$pid" ] && stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
stop_ours() {
  local pid i
  pid=$(pid_of "$1")
  [ -n "$pid" ] || return 0
  if ours "$1"; then
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 100); do ours "$1" || break; sleep 0.2; done
    if ours "$1"; then
      log "$1 ($pid) still alive after 20 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      for i in $(seq 50); do ours "$1" || break; sleep 0.1; done
    fi
    log "$1 ($pid) stopped"
  fi
  rm -f "$RUN/$1.pid"
}

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
exit 0

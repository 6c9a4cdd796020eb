#!/usr/bin/env bash
# tests/slurm/setup.sh -- a real one-node Slurm (Debian 12 packages) for mpihub's test suite.
#
# Idempotent; run as root on a machine without systemd. It installs the missing packages,
# writes /etc/slurm/{slurm,cgroup}.conf plus a PBS TaskProlog/Epilog, starts munged,
# slurmctld and slurmd directly (restarting only the daemons it started itself when the
# config changed), waits for the node and runs a smoke srun and a smoke sbatch --wait.
# Its last line is "slurm ready". Stop it again with tests/slurm/teardown.sh.
#
#   MPIHUB_SLURM_CPUS=8        CPUs declared for the node (more than real = oversubscribed)
#   MPIHUB_SLURM_TIMEOUT=120   seconds for the daemons, the node and the smoke jobs
#   MPIHUB_SLURM_PROCTRACK=    cgroup | linuxproc (default: cgroup when cgroup v1 is usable)
#
# Exit status: 0 ready, 1 failed (daemon log tails are printed), 3 not root.
set -euo pipefail

CPUS=${MPIHUB_SLURM_CPUS:-8}
TIMEOUT=${MPIHUB_SLURM_TIMEOUT:-120}

STATE=/var/spool/mpihub-slurm      # ctld/ (StateSaveLocation), d/ (SlurmdSpoolDir), pbs/
LOGS=/var/log/mpihub-slurm
ETC=/etc/slurm
MARK="# managed by mpihub tests/slurm/setup.sh"
PACKAGES=(slurmctld slurmd slurm-client munge slurm-wlm-torque libpmix-dev)
SMOKE=mpihub-slurm-smoke           # job name of the smoke jobs

T0=${EPOCHREALTIME//[.,]/}
log() {
  local us=$(( ${EPOCHREALTIME//[.,]/} - T0 ))
  printf '[mpihub-slurm %3d.%ds] %s\n' $((us / 1000000)) $((us / 100000 % 10)) "$*"
}
die() {
  log "ERROR: $*"
  local f
  for f in "$LOGS/slurmctld.log" "$LOGS/slurmd.log" /var/log/munge/munged.log; do
    [ -s "$f" ] && { echo "----- tail $f"; tail -n 25 "$f"; }
  done
  exit 1
}

if [ "$(id -u)" != 0 ]; then
  echo "tests/slurm/setup.sh: must run as root (it installs packages and starts Slurm daemons)" >&2
  exit 3
fi
SWEPT=$(bash "$(dirname "${BASH_SOURCE[0]}")/../sweep_mpi_shm.sh")  # stale MPI shared memory of killed jobs
[ -z "$SWEPT" ] || log "$SWEPT"
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "MPIHUB_SLURM_CPUS must be a positive integer, not '$CPUS'"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "MPIHUB_SLURM_TIMEOUT must be a positive integer, not '$TIMEOUT'"
DEADLINE=$((SECONDS + TIMEOUT))
. "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"  # RUN, pid_of, ours, stop_ours
mkdir -p "$RUN"
# one setup or teardown at a time (test sessions may run this concurrently); fd 9 must not
# leak into the daemons, or they would hold the lock forever: they start with 9>&-
exec 9>"$RUN/lock"
flock -w "$TIMEOUT" 9 || die "another setup/teardown held $RUN/lock for ${TIMEOUT}s"
left() { local n=$((DEADLINE - SECONDS)); echo $((n > 1 ? n : 1)); }

# ------------------------------------------------------------------ waiting
wait_until() {  # wait_until SECONDS WHAT CMD...
  local end=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out waiting for $what"
    sleep 0.1
  done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ------------------------------------------------------------------ 1. packages
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  aptlog=$(mktemp)
  # policy-rc.d stops apt from starting the services; they are started below
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$aptlog" 2>&1; then
    tail -n 30 "$aptlog"; rm -f "$aptlog"; die "apt-get failed"
  fi
  rm -f "$aptlog"
fi
mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/pbs" "$LOGS" "$ETC"
chmod 1777 "$STATE/pbs"            # the TaskProlog runs as the job's user

# ------------------------------------------------------------------ 2. node and proctrack
NODE=$(hostname -s)
read -r -a HW <<<"$(slurmd -C | sed -n 1p)"     # NodeName=vm CPUs=2 Boards=1 ... RealMemory=N
hw() { local kv; for kv in "${HW[@]}"; do [ "${kv%%=*}" != "$1" ] || echo "${kv#*=}"; done; }
if [ "$CPUS" = "$(hw CPUs)" ]; then
  NODE_HW="CPUs=$CPUS Boards=$(hw Boards) SocketsPerBoard=$(hw SocketsPerBoard) CoresPerSocket=$(hw CoresPerSocket) ThreadsPerCore=$(hw ThreadsPerCore)"
  OVERRIDES=
else  # declare CPUs that are not there: slurmd must trust the config, and bind nothing
  NODE_HW="CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1"
  OVERRIDES=SlurmdParameters=config_overrides
fi
cgroup_v1_usable() {
  local probe=/sys/fs/cgroup/freezer/mpihub-slurm-probe.$$
  mkdir "$probe" 2>/dev/null && rmdir "$probe"
}
PROCTRACK=${MPIHUB_SLURM_PROCTRACK:-}
if [ -z "$PROCTRACK" ]; then
  if cgroup_v1_usable; then PROCTRACK=cgroup; else PROCTRACK=linuxproc; fi
fi

# ------------------------------------------------------------------ 3. config files
CHANGED=0
install_if_changed() {  # install_if_changed PATH MODE < content; backs up a file not written by us
  local tmp; tmp=$(mktemp); cat > "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return; fi
  if [ -f "$1" ] && ! grep -qF "$MARK" "$1"; then
    cp -a "$1" "$1.before-mpihub.$(date +%s)"; log "backed up foreign $1"
  fi
  install -m "$2" "$tmp" "$1"; rm -f "$tmp"; CHANGED=1
}

install_if_changed "$ETC/slurm.conf" 0644 <<EOF
$MARK; edit the script, not this file
ClusterName=mpihub
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/$PROCTRACK
TaskPlugin=task/none
$OVERRIDES
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
EnforcePartLimits=ALL
KillWait=5
MinJobAge=300
ReturnToService=2
MailProg=/bin/true
MpiDefault=none
TaskProlog=$ETC/mpihub-pbs-prolog.sh
Epilog=$ETC/mpihub-pbs-epilog.sh
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$NODE NodeAddr=127.0.0.1 $NODE_HW RealMemory=$(hw RealMemory) State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=batch Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF

install_if_changed "$ETC/cgroup.conf" 0644 <<EOF
$MARK
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF

# TaskProlog: runs as the job's user before the batch script and before each srun task. Only
# for a job whose batch script has #PBS lines it prints "export NAME=value" lines (taken
# literally by slurmstepd, so no quoting) that give it a PBS/Torque-like environment.
prolog() {
  printf '#!/bin/bash\n%s\nspool=%s\npbs=%s\n' "$MARK" "$STATE/d" "$STATE/pbs"
  cat <<'EOF'
script=$(printf '%s/job%05d/slurm_script' "$spool" "$SLURM_JOB_ID")
[ -r "$script" ] && grep -q '^#PBS' "$script" || exit 0
nodefile=$pbs/nodefile.$SLURM_JOB_ID
if [ ! -s "$nodefile" ]; then   # one line per task slot, like PBS; written once per job
  hosts=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
  tmp=$(mktemp "$nodefile.XXXXXX"); i=0
  for spec in ${SLURM_TASKS_PER_NODE//,/ }; do          # e.g. "2(x3),1"
    n=${spec%%(*}; repeat=1
    [[ $spec == *'(x'* ]] && { repeat=${spec#*(x}; repeat=${repeat%)}; }
    for ((r = 0; r < repeat; r++, i++)); do
      for ((k = 0; k < n; k++)); do echo "${hosts[$i]}"; done
    done
  done > "$tmp"
  chmod 0644 "$tmp"; mv -f "$tmp" "$nodefile"
fi
echo "export PBS_NODEFILE=$nodefile"
echo "export PBS_JOBID=$SLURM_JOB_ID.$(hostname -s)"
echo "export PBS_JOBNAME=$SLURM_JOB_NAME"
echo "export PBS_O_WORKDIR=$SLURM_SUBMIT_DIR"
echo "export PBS_QUEUE=$SLURM_JOB_PARTITION"
echo "export PBS_ENVIRONMENT=PBS_BATCH"
echo "export PBS_NP=$(wc -l < "$nodefile")"
echo "export PBS_NUM_NODES=$SLURM_JOB_NUM_NODES"
echo "export PBS_NUM_PPN=${SLURM_TASKS_PER_NODE%%[(,]*}"
EOF
}
install_if_changed "$ETC/mpihub-pbs-prolog.sh" 0755 < <(prolog)   # no pipe: CHANGED must stick

install_if_changed "$ETC/mpihub-pbs-epilog.sh" 0755 <<EOF
#!/bin/bash
$MARK; runs as root when a job ends
rm -f "$STATE/pbs/nodefile.\$SLURM_JOB_ID" "$STATE/pbs/nodefile.\$SLURM_JOB_ID".*
EOF

if [ $CHANGED = 1 ]; then
  log "config written: node $NODE, $CPUS CPUs, proctrack/$PROCTRACK, partitions debug batch"
  for d in slurmd slurmctld; do
    if ours $d; then log "restarting $d for the new config"; stop_ours $d; fi
  done
else
  log "config unchanged"
fi

# ------------------------------------------------------------------ 4. daemons
start_munged || die "munged did not start"
if ours slurmctld; then
  log "slurmctld running (pid $(pid_of slurmctld))"
else
  port_open 6817 && die "port 6817 is taken by a slurmctld this script did not start"
  slurmctld 9>&- || die "slurmctld did not start"
  wait_until "$(left)" "slurmctld to answer" bash -c 'scontrol ping | grep -q UP'
  log "slurmctld started (pid $(pid_of slurmctld))"
fi
if ours slurmd; then
  log "slurmd running (pid $(pid_of slurmd))"
else
  port_open 6818 && die "port 6818 is taken by a slurmd this script did not start"
  slurmd -N "$NODE" 9>&- || die "slurmd did not start"
  wait_until 30 "slurmd pid file" ours slurmd
  log "slurmd started (pid $(pid_of slurmd))"
fi

# ------------------------------------------------------------------ 5. ready?
# idle, or mixed when jobs of a test run are already there; down/drained is resumed
node_usable() {
  local s; s=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | sort -u)
  case "$s" in
    idle|mixed) return 0 ;;
    down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  return 1
}
node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | sort -u | xargs; }
until node_usable; do
  [ $SECONDS -lt $DEADLINE ] || die "node $NODE not idle after ${TIMEOUT}s: $(node_state); $(scontrol show node "$NODE" 2>&1 | grep -o 'Reason=.*')"
  sleep 0.2
done
log "node $NODE $(node_state)"

smoke_failed() { scancel --name="$SMOKE" 2>/dev/null || true; die "$1"; }
timeout "$(left)" srun -p batch -n 1 -t 1 -J "$SMOKE" true || smoke_failed "smoke 'srun -n 1 true' failed"
timeout "$(left)" sbatch --wait -Q -J "$SMOKE" -t 1 -o /dev/null -e /dev/null --wrap true \
  || smoke_failed "smoke 'sbatch --wait' job failed"
log "smoke srun + sbatch --wait ok"
echo "slurm ready"

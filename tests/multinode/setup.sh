#!/usr/bin/env bash
# tests/multinode/setup.sh -- a multi-node Slurm on one machine, for mpihub's tests.
#
# A login node and three compute nodes, each a Linux network and UTS namespace (the
# compute nodes a mount namespace too, with a private /tmp), joined by a bridge mh-eth
# (management Ethernet, 10.77.0.0/24, the machine itself at 10.77.0.1 runs slurmctld),
# and a second bridge mh-fab (the fast fabric, 10.78.0.0/24) that joins only the compute
# nodes. One slurmd per compute node, inside its namespaces. A second Slurm cluster beside
# the one-node one of tests/slurm/setup.sh (its own config, ports, state, pid files); munged
# is shared. Names and addresses: tests/multinode/nodes.sh. Run a command on the login node
# with tests/multinode/on-login.sh, on a compute node with tests/multinode/on-node.sh.
#
# Idempotent; root only. Last line "multinode ready". Exit 0 ready, 1 failed (log tails
# printed), 3 not root. Stop it with tests/multinode/teardown.sh.
#
#   MPIHUB_MULTINODE_CPUS=4       CPUs declared for each compute node
#   MPIHUB_MULTINODE_TIMEOUT=120  seconds for the daemons, the nodes and the smoke jobs
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CPUS=${MPIHUB_MULTINODE_CPUS:-4}
TIMEOUT=${MPIHUB_MULTINODE_TIMEOUT:-120}
MARK="# managed by mpihub tests/multinode/setup.sh"
PACKAGES=(slurmctld slurmd slurm-client munge iproute2 util-linux)

T0=${EPOCHREALTIME//[.,]/}
log() {
  local us=$(( ${EPOCHREALTIME//[.,]/} - T0 ))
  printf '[mpihub-multinode %3d.%ds] %s\n' $((us / 1000000)) $((us / 100000 % 10)) "$*"
}
. "$HERE/nodes.sh"
die() {
  log "ERROR: $*"
  local f
  for f in "$MN_LOGS"/*.log; do
    [ -s "$f" ] && { echo "----- tail $f"; tail -n 20 "$f"; }
  done
  exit 1
}

if [ "$(id -u)" != 0 ]; then
  echo "tests/multinode/setup.sh: must run as root (network namespaces, Slurm daemons)" >&2
  exit 3
fi
SWEPT=$(bash "$(dirname "${BASH_SOURCE[0]}")/../sweep_mpi_shm.sh")  # stale MPI shared memory of killed jobs
[ -z "$SWEPT" ] || log "$SWEPT"
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "MPIHUB_MULTINODE_CPUS must be a positive integer, not '$CPUS'"
DEADLINE=$((SECONDS + TIMEOUT))
. "$HERE/../slurm/daemons.sh"   # ours, stop_ours, start_munged (munged's pid file in the one-node $RUN)
mkdir -p "$MN_RUN"
exec 9>"$MN_RUN/lock"
flock -w "$TIMEOUT" 9 || die "another setup/teardown held $MN_RUN/lock for ${TIMEOUT}s"

wait_until() {  # wait_until SECONDS WHAT CMD...
  local end=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out waiting for $what"
    sleep 0.1
  done
}
left() { local n=$((DEADLINE - SECONDS)); echo $((n > 1 ? n : 1)); }

# ------------------------------------------------------------------ 1. packages
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  aptlog=$(mktemp)
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$aptlog" 2>&1; then
    tail -n 30 "$aptlog"; rm -f "$aptlog"; die "apt-get failed"
  fi
  rm -f "$aptlog"
fi

# ------------------------------------------------------------------ 2. networks
link_up() { ip link show "$1" >/dev/null 2>&1; }
for bridge in "$ETH" "$FAB"; do
  link_up "$bridge" || ip link add "$bridge" type bridge
  ip link set "$bridge" up
done
ip addr show dev "$ETH" | grep -q "inet $HEAD_IP/" || ip addr add "$HEAD_IP/24" dev "$ETH"

attach() {  # attach NAMESPACE BRIDGE IFNAME_INSIDE IP
  local ns=$1 bridge=$2 inside=$3 ip=$4 outside="${1#mh-}-${3}"
  ip netns exec "$ns" ip link show "$inside" >/dev/null 2>&1 && return 0
  ip link add "$outside" type veth peer name "$inside" netns "$ns"
  ip link set "$outside" master "$bridge" up
  ip netns exec "$ns" ip addr add "$ip/24" dev "$inside"
  ip netns exec "$ns" ip link set "$inside" up
}
for ns in "$LOGIN" "${NODES[@]}"; do
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  ip netns exec "$ns" ip link set lo up
done
attach "$LOGIN" "$ETH" eth0 "$LOGIN_IP"
for node in "${NODES[@]}"; do
  attach "$node" "$ETH" eth0 "$(eth_ip "$node")"
  attach "$node" "$FAB" fab0 "$(fab_ip "$node")"
done
log "namespaces $LOGIN ${NODES[*]} on $ETH (10.77.0.0/24) and $FAB (10.78.0.0/24, compute nodes only)"

# /etc/hosts (shared by every namespace): the head and login names on the management
# network, the compute nodes' names on the fabric
hosts_block() {
  echo "$HOSTS_BEGIN"
  echo "$HEAD_IP mh-head"
  echo "$LOGIN_IP $LOGIN"
  for node in "${NODES[@]}"; do echo "$(fab_ip "$node") $node"; echo "$(eth_ip "$node") $node-eth"; done
  echo "$HOSTS_END"
}
if ! grep -qF "$HOSTS_BEGIN" /etc/hosts; then
  cp -a /etc/hosts "$MN_RUN/hosts.before"
  hosts_block >> /etc/hosts
fi

# ------------------------------------------------------------------ 3. config
mkdir -p "$MN_ETC" "$MN_STATE/ctld" "$MN_LOGS"
for node in "${NODES[@]}"; do mkdir -p "$MN_STATE/$node"; done
conf=$(mktemp)
cat > "$conf" <<EOF
$MARK; edit the script, not this file
ClusterName=mpihubmulti
SlurmctldHost=$(hostname -s)($HEAD_IP)
SlurmctldPort=$MN_PORT_CTLD
SlurmdPort=$MN_PORT_D
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$MN_STATE/ctld
SlurmdSpoolDir=$MN_STATE/%n
SlurmctldPidFile=$MN_RUN/slurmctld.pid
SlurmdPidFile=$MN_RUN/slurmd-%n.pid
SlurmctldLogFile=$MN_LOGS/slurmctld.log
SlurmdLogFile=$MN_LOGS/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
KillWait=5
MinJobAge=300
ReturnToService=2
MailProg=/bin/true
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
$(for node in "${NODES[@]}"; do
  echo "NodeName=$node NodeAddr=$(eth_ip "$node") CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN"
done)
PartitionName=multi Nodes=mh-node[1-3] Default=YES MaxTime=INFINITE State=UP
EOF
CHANGED=0
if ! cmp -s "$conf" "$MN_CONF"; then install -m 0644 "$conf" "$MN_CONF"; CHANGED=1; fi
printf '%s\nCgroupPlugin=autodetect\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n' "$MARK" > "$conf"
if ! cmp -s "$conf" "$MN_ETC/cgroup.conf"; then install -m 0644 "$conf" "$MN_ETC/cgroup.conf"; CHANGED=1; fi
rm -f "$conf"
export SLURM_CONF=$MN_CONF

# ------------------------------------------------------------------ 4. daemons
start_munged || die "munged did not start"
RUN=$MN_RUN   # from here on ours/stop_ours look at this cluster's pid files
if [ $CHANGED = 1 ]; then
  log "config written: ${NODES[*]}, $CPUS CPUs each, ports $MN_PORT_CTLD/$MN_PORT_D"
  for node in "${NODES[@]}"; do
    pid=$(slurmd_pid "$node") && { kill -TERM "$pid"; wait_until 20 "slurmd of $node to stop" bash -c "! kill -0 $pid"; }
    rm -f "$MN_RUN/slurmd-$node.pid"
  done
  ours slurmctld && stop_ours slurmctld
fi
if ours slurmctld; then
  log "slurmctld running (pid $(pid_of slurmctld))"
else
  slurmctld -f "$MN_CONF" 9>&- || die "slurmctld did not start"
  wait_until "$(left)" "slurmctld to answer" bash -c 'scontrol ping | grep -q UP'
  log "slurmctld started (pid $(pid_of slurmctld))"
fi
for node in "${NODES[@]}"; do
  if slurmd_pid "$node" >/dev/null; then continue; fi
  # its own host name and a private /tmp; slurmd forks into the background and its jobs
  # inherit all three namespaces. (nsenter, not ip netns exec, which would mount a /sys
  # without the cgroup file system that slurmd needs.)
  nsenter --net="/run/netns/$node" unshare --uts --mount --propagation private \
    sh -c "hostname $node && mount -t tmpfs -o mode=1777 tmpfs /tmp && exec slurmd -f $MN_CONF -N $node" 9>&- \
    || die "slurmd of $node did not start"
  wait_until 30 "slurmd pid file of $node" slurmd_pid "$node"
  log "slurmd of $node started (pid $(slurmd_pid "$node"))"
done

# ------------------------------------------------------------------ 5. ready?
nodes_idle() {
  local states; states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)
  [ "$(echo "$states" | grep -cE ' (idle|mixed|allocated)$')" = ${#NODES[@]} ] && return 0
  echo "$states" | awk '$2 ~ /^(down|drain|fail)/ {print $1}' | while read -r n; do
    scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
  done
  return 1
}
wait_until "$(left)" "the nodes to be idle ($(sinfo -h -N -o '%N %T' 2>/dev/null | xargs))" nodes_idle
log "nodes idle: $(sinfo -h -N -o '%N' | xargs)"

smoke=$(timeout "$(left)" "$HERE/on-login.sh" srun -N ${#NODES[@]} -t 1 -J mpihub-multinode-smoke hostname | sort | xargs) \
  || die "smoke 'srun -N ${#NODES[@]} hostname' from $LOGIN failed"
[ "$smoke" = "${NODES[*]}" ] || die "smoke srun printed '$smoke', expected '${NODES[*]}'"
log "smoke srun -N ${#NODES[@]} from $LOGIN: $smoke"
echo "multinode ready"

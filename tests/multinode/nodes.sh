# tests/multinode/nodes.sh -- sourced by setup.sh, teardown.sh, on-login.sh and on-node.sh:
# the names, addresses and paths of the multi-node Slurm on one machine.
#
#   head      the machine itself (root namespace): slurmctld, 10.77.0.1 on bridge mh-eth
#   mh-login  a login node: network + UTS namespace, 10.77.0.10 (management network only)
#   mh-node1..3  compute nodes: network + UTS + mount namespaces (a private /tmp each),
#             10.77.0.11-13 on mh-eth and 10.78.0.11-13 on mh-fab, the "fast fabric"
#             that joins only the compute nodes; one slurmd each
#
# The node names resolve (an /etc/hosts block) to their fabric addresses, as on clusters
# whose host names name the InfiniBand interface: the login node cannot reach those.

ETH=mh-eth
FAB=mh-fab
HEAD_IP=10.77.0.1
LOGIN=mh-login
LOGIN_IP=10.77.0.10
NODES=(mh-node1 mh-node2 mh-node3)
eth_ip() { echo "10.77.0.$((10 + ${1#mh-node}))"; }   # eth_ip mh-node2 -> 10.77.0.12
fab_ip() { echo "10.78.0.$((10 + ${1#mh-node}))"; }

MN_ETC=/etc/mpihub-multinode
MN_CONF=$MN_ETC/slurm.conf
MN_STATE=/var/spool/mpihub-multinode
MN_LOGS=/var/log/mpihub-multinode
MN_RUN=/run/mpihub-multinode             # slurmctld.pid, slurmd-<node>.pid, lock
MN_PORT_CTLD=6827                        # the one-node Slurm has 6817 and 6818
MN_PORT_D=6828
HOSTS_BEGIN="# >>> mpihub multinode (tests/multinode/setup.sh)"
HOSTS_END="# <<< mpihub multinode"

# slurmd_pid NODE: the pid of that node's slurmd, from its pid file, while it still runs
slurmd_pid() {
  local pid
  pid=$(tr -dc '0-9' 2>/dev/null < "$MN_RUN/slurmd-$1.pid") || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmd ] && echo "$pid"
}

#!/usr/bin/env bash
# tests/multinode/link.sh NODE up|down -- plug a compute node of the multi-node Slurm
# (mh-node1..3) out of both its networks (management and fabric) or back in, as a cable
# pulled or a switch port lost: the node's processes go on, unreachable. Root, from any
# namespace (the node's namespace is found under /run/netns).
set -euo pipefail
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/nodes.sh"
[ $# -eq 2 ] && [[ " ${NODES[*]} " == *" $1 "* ]] && [[ $2 == up || $2 == down ]] \
  || { echo "usage: $0 {${NODES[*]}} up|down" >&2; exit 2; }
for dev in eth0 fab0; do
  ip netns exec "$1" ip link set "$dev" "$2"
done

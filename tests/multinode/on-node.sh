#!/usr/bin/env bash
# tests/multinode/on-node.sh NODE CMD... -- run CMD on a compute node of the multi-node
# Slurm (mh-node1..3): inside the network, UTS and mount namespaces of its slurmd, so it
# sees that node's host name, addresses and private /tmp.
set -euo pipefail
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/nodes.sh"
[ $# -gt 1 ] || { echo "usage: $0 NODE CMD..." >&2; exit 2; }
node=$1; shift
pid=$(slurmd_pid "$node") || { echo "$0: no slurmd running for $node (run tests/multinode/setup.sh)" >&2; exit 1; }
export SLURM_CONF=$MN_CONF
exec nsenter -t "$pid" -n -u -m "$@"

#!/usr/bin/env bash
# tests/multinode/on-login.sh CMD... -- run CMD on the login node of the multi-node Slurm
# (its network namespace, host name mh-login), with SLURM_CONF naming that cluster.
set -euo pipefail
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/nodes.sh"
[ $# -gt 0 ] || { echo "usage: $0 CMD..." >&2; exit 2; }
export SLURM_CONF=$MN_CONF
exec ip netns exec "$LOGIN" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$LOGIN" "$@"

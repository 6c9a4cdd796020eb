#!/usr/bin/env bash
# tests/sweep_mpi_shm.sh -- remove MPICH shared-memory segments that no process maps.
#
# The suite SIGKILLs MPI engines on purpose (node loss, chaos, restarts); MPICH then leaves
# its /dev/shm/mpich_shm_* segments behind, and /dev/shm is shared by every network
# namespace of the test clusters. A later MPI job that attaches a stale segment fails in
# MPI_Init ("UCX ERROR failed to unpack address, invalid bandwidth 0.00"). The Slurm
# set-ups run this first and their teardowns last; a segment that a live process maps is
# left alone.
set -uo pipefail
shopt -s nullglob
swept=0
for segment in /dev/shm/mpich_shm_*; do
    if ! fuser -s "$segment" 2>/dev/null && ! grep -qsF "$segment" /proc/[0-9]*/maps; then
        rm -f -- "$segment" && swept=$((swept + 1))
    fi
done
[ "$swept" -eq 0 ] || echo "swept $swept stale MPICH shared-memory segments from /dev/shm"

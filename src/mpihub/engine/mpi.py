"""MPI on engines: the engines' communicator and which world an engine belongs to.

Engines started as one ``mpiexec`` job form one MPI world. Each learns its rank and a
world id (rank 0 makes it and broadcasts it), so the controller can give the world a
block of consecutive engine ids in rank order.
"""
from __future__ import annotations

import uuid

from .. import engine as engine_module


class MPIUnavailable(RuntimeError):
    """mpi4py cannot be imported or initialised."""


def init_world() -> dict:
    """Initialise MPI; set ``mpihub.engine.comm/rank/size``; describe the world."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIUnavailable(f"`mpihub engine --mpi` needs mpi4py: pip install 'mpihub[mpi]' ({exc})") from None
    comm = MPI.COMM_WORLD
    world = comm.bcast(uuid.uuid4().hex if comm.rank == 0 else None, root=0)
    engine_module.comm, engine_module.rank, engine_module.size = comm, comm.rank, comm.size
    return {"mpi_rank": comm.rank, "mpi_size": comm.size, "mpi_world": world}


def namespace_names() -> dict:
    """The names MPI engines put in the user namespace: ``comm``, ``rank``, ``size``."""
    return {"comm": engine_module.comm, "rank": engine_module.rank, "size": engine_module.size}

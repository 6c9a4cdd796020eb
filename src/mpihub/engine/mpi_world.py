"""MPI on engines: the engines' communicator, which world an engine belongs to, and the
arrival gate that keeps a collective function from hanging forever.

Engines started as one ``mpiexec`` job form one MPI world. Each learns its rank and a
world id (rank 0 makes it and broadcasts it), so the controller can give the world a
block of consecutive engine ids in rank order. mpihub's own collectives run on a private
duplicate of ``COMM_WORLD``, so they never match messages of the user's code on ``comm``.
"""
from __future__ import annotations

import faulthandler
import sys
import time
import uuid
import zlib

from .. import config
from .. import engine as engine_module

#: Seconds a rank waits past its own timeout for the coordinator's verdict, so a verdict
#: sent just before the timeout still arrives.
GATE_GRACE = 2.0

_internal = None
_unfinished_sends: list = []


class MPIUnavailable(RuntimeError):
    """mpi4py cannot be imported or initialised."""


class CollectiveTimeout(RuntimeError):
    """Not every rank started a collective function within its timeout."""


def init_world(timeout: float | None = None) -> dict:
    """Initialise MPI; set ``mpihub.engine.comm/rank/size``; describe the world.

    MPI_Init holds the GIL and waits for every rank, so a rank that never starts would
    hold this one (and its batch job) forever: a watchdog outside Python
    (:func:`faulthandler.dump_traceback_later`) ends the process after ``timeout``
    seconds (``MPIHUB_MPI_INIT_TIMEOUT``), and the launcher then ends the others.
    """
    global _internal
    try:
        import mpi4py

        # No MPI_Finalize at exit: it waits for every rank (under srun it does), and an
        # engine may leave at once (os._exit on the controller's shutdown, a kill), so a
        # rank that ends normally would wait forever and hold its batch job.
        mpi4py.rc.finalize = False
        mpi4py.rc.initialize = False
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIUnavailable(f"`mpihub engine --mpi` needs mpi4py: pip install 'mpihub[mpi]' ({exc})") from None
    limit = config.MPI_INIT_TIMEOUT if timeout is None else timeout
    faulthandler.dump_traceback_later(limit, exit=True, file=sys.stderr)
    try:
        if not MPI.Is_initialized():
            MPI.Init_thread(MPI.THREAD_MULTIPLE)
        comm = MPI.COMM_WORLD
        world = comm.bcast(uuid.uuid4().hex if comm.rank == 0 else None, root=0)
        _internal = comm.Dup()
    finally:
        faulthandler.cancel_dump_traceback_later()
    engine_module.comm, engine_module.rank, engine_module.size = comm, comm.rank, comm.size
    return {"mpi_rank": comm.rank, "mpi_size": comm.size, "mpi_world": world}


def internal_comm():
    """mpihub's private duplicate of ``COMM_WORLD`` (for collectives and the gate)."""
    if _internal is None:
        raise MPIUnavailable("this engine was not started with MPI (mpihub engine --mpi)")
    return _internal


def namespace_names() -> dict:
    """The names MPI engines put in the user namespace: ``comm``, ``rank``, ``size``."""
    return {"comm": engine_module.comm, "rank": engine_module.rank, "size": engine_module.size}


def _gate_tag(call_id: str) -> int:
    """A tag of this call alone (MPI guarantees tags up to 32767), so a late rank's
    arrival can never be mistaken for one of a later call."""
    return 100 + zlib.crc32(call_id.encode()) % 32000


def _receive_until(comm, source: int | None, tag: int, deadline: float):
    """The next message from ``source`` (None: any) with ``tag``, or None at ``deadline``.

    MPI offers nothing a poll could wake on, so this probes with a short, growing sleep;
    it runs once per collective call, never on the data path.
    """
    from mpi4py import MPI

    status = MPI.Status()
    source = MPI.ANY_SOURCE if source is None else source
    pause = 0.0002
    while True:
        if comm.Iprobe(source=source, tag=tag, status=status):
            return status.Get_source(), comm.recv(source=status.Get_source(), tag=tag)
        if time.time() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.005)


def _describe(ranks: list[int], engine_of: dict[int, int]) -> str:
    named = [f"rank {r} (engine {engine_of[r]})" if r in engine_of else f"rank {r}" for r in ranks]
    return ", ".join(named)


def arrival_gate(name: str, timeout: float, call_id: str, engine_of: dict[int, int]) -> None:
    """Return once every rank of the world has started this call; raise
    :class:`CollectiveTimeout` naming the ranks that did not arrive within ``timeout``.

    Rank 0 coordinates: every other rank reports its arrival time to it and waits for
    its verdict. Rank 0 says go only while no rank can have given up yet, so either every
    rank runs the function or none does.
    """
    comm = internal_comm()
    if comm.size == 1:
        return
    global _unfinished_sends
    _unfinished_sends = [request for request in _unfinished_sends if not request.Test()]
    tag = _gate_tag(call_id)
    arrived_at = time.time()
    if comm.rank != 0:
        _unfinished_sends.append(comm.isend(arrived_at, dest=0, tag=tag))
        answer = _receive_until(comm, 0, tag, arrived_at + timeout + GATE_GRACE)
        if answer is None:
            raise CollectiveTimeout(f"{name}: {_describe([0], engine_of)}, which coordinates the start, "
                                    f"did not arrive within {timeout:g} s")
        if answer[1] != "go":
            raise CollectiveTimeout(answer[1])
        return
    arrivals = {0: arrived_at}
    while len(arrivals) < comm.size:
        answer = _receive_until(comm, None, tag, min(arrivals.values()) + timeout)
        if answer is None:
            break
        arrivals[answer[0]] = answer[1]
    missing = [r for r in range(comm.size) if r not in arrivals]
    if missing:
        verdict = (f"{name}: {_describe(missing, engine_of)} never arrived within {timeout:g} s "
                   "(busy with earlier work, or stuck in an earlier collective?)")
    elif time.time() > min(arrivals.values()) + timeout:
        verdict = f"{name}: {_describe([0], engine_of)} arrived after the other ranks had waited {timeout:g} s"
    else:
        verdict = "go"
    _unfinished_sends.extend(comm.isend(verdict, dest=r, tag=tag) for r in range(1, comm.size))
    if verdict != "go":
        raise CollectiveTimeout(verdict)

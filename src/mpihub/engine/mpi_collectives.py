"""MPI collectives behind DirectView scatter, gather, bcast/push, reduce and allreduce.

A view sends one message to all its targets; only the root (the lowest-ranked target)
receives data frames with it, as ``frames``. The targets then move the data among
themselves with MPI, on mpihub's private communicator restricted to the targets and
ranked in target order, so part i lands on target i exactly as with ZMQ.

Numpy arrays travel as raw bytes (any dtype, large-count calls past 2 GiB); anything
else travels pickled. Every rank takes the same branch, decided from data all ranks
share, so no rank waits in a collective the others skipped.
"""
from __future__ import annotations

import math
import pickle
import time
from typing import Any

import numpy as np

from .. import config, partition
from ..protocol import serialize
from . import mpi_world, ops
from .buffers import BufferPool

#: Reductions whose result does not depend on the order MPI combines in (integer
#: arithmetic wraps the same in any order); floating point goes through the ordered chain.
_ORDER_FREE_KINDS = "iu"
_UFUNCS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}
_CHAIN_TAG = 11

_buffers = BufferPool(config.MPI_POOL_BYTES)
_subcomms: dict[tuple[int, ...], Any] = {}


class CollectiveError(RuntimeError):
    """A collective could not run because another rank could not take part."""


def _comm(ranks: list[int]):
    """The private communicator over ``ranks`` (world ranks, in target order)."""
    world = mpi_world.internal_comm()
    key = tuple(ranks)
    if key == tuple(range(world.size)):
        return world
    comm = _subcomms.get(key)
    if comm is None:
        if world.rank not in key or len(set(key)) != len(key):
            raise ValueError(f"ranks {list(key)} must be distinct and include this engine's rank {world.rank}")
        group = world.Get_group().Incl(list(key))
        comm = _subcomms[key] = world.Create_group(group, tag=_CHAIN_TAG)
        group.Free()
    return comm


def _bytes(array: np.ndarray) -> np.ndarray:
    """A contiguous array's memory as a flat uint8 view (no copy)."""
    return array.reshape(-1).view(np.uint8)


def _byte_buffer(array: np.ndarray):
    from mpi4py import MPI

    return [_bytes(array), MPI.BYTE]


def _wait(request) -> None:
    """Wait for an MPI request without spinning a core.

    While the root still receives the data from the client, the other ranks would busy-poll
    inside a blocking collective and take the CPU the root and the client need. MPI has
    nothing a poll could wake on, so this tests with a short, growing sleep (at most
    1 ms, once per call, next to transfers of a megabyte or more).
    """
    pause = 0.00005
    while not request.Test():
        time.sleep(pause)
        pause = min(pause * 2, 0.001)


def _check_root(comm, root: int, frames) -> None:
    """The root tells every rank whether its data arrived; if not, all raise together."""
    problem = None
    if comm.rank == root:
        if isinstance(frames, BaseException):
            problem = f"{type(frames).__name__}: {frames}"
        elif not frames:
            problem = "no data came with the request"
    failed = np.array([problem is not None], np.int8)
    _wait(comm.Ibcast(failed, root=root))
    if failed[0]:
        raise CollectiveError(f"the root of this collective could not take part: {comm.bcast(problem, root=root)}")


def _store(key: str | None, value: Any) -> None:
    if key is None:
        ops.namespace().update(value)
    else:
        ops.namespace()[key] = value


# -- scatter ---------------------------------------------------------------------------

def scatter(spec: dict, frames=None) -> None:
    """Root splits the array (or object) it received and each target stores its part."""
    comm, root = _comm(spec["ranks"]), spec["root"]
    if spec["kind"] == "array":
        part = _scatter_array(comm, root, spec, frames)
    else:
        _check_root(comm, root, frames)
        parts = None
        if comm.rank == root:
            parts = partition.split(serialize.deserialize(frames[0], frames[1:]), comm.size, spec["dist"])
        part = comm.scatter(parts, root=root)
    if spec["flatten"] and len(part) == 1:
        part = part[0]
    _store(spec["key"], part)


def _scatter_array(comm, root: int, spec: dict, frames) -> np.ndarray:
    from mpi4py import MPI

    dtype, shape, counts = np.dtype(spec["dtype"]), tuple(spec["shape"]), spec["counts"]
    row = dtype.itemsize * math.prod(shape[1:])
    part = _buffers.empty((counts[comm.rank], *shape[1:]), dtype)  # ready while the root still receives
    _check_root(comm, root, frames)
    send = None
    if comm.rank == root:
        whole = np.frombuffer(serialize.writable(frames[0]), dtype=dtype).reshape(shape)
        if spec["dist"] == "r" and comm.size > 1:
            whole = np.concatenate(partition.split(whole, comm.size, "r"), out=np.empty_like(whole))
        sizes = [c * row for c in counts]
        offsets = [0, *np.cumsum(sizes[:-1]).tolist()]
        send = [_bytes(whole), (sizes, offsets), MPI.BYTE]
    comm.Scatterv(send, _byte_buffer(part), root=root)
    return part


# -- gather ----------------------------------------------------------------------------

def _describe_local(key: str) -> tuple[Any, Any]:
    """This rank's value of ``key`` and what the other ranks need to know about it."""
    try:
        value = ops.namespace()[key]
    except KeyError:
        return None, "missing"
    if isinstance(value, np.ndarray) and value.ndim >= 1 and not value.dtype.hasobject and value.dtype.itemsize:
        return value, (value.dtype, value.shape)
    return value, "object"


def _same_arrays(infos: list) -> bool:
    first = infos[0]
    return all(isinstance(i, tuple) and i[0] == first[0] and i[1][1:] == first[1][1:] for i in infos)


def _check_present(comm, key: str, infos: list) -> bool:
    """False (after raising NameError on the ranks that lack ``key``) if any rank lacks it."""
    if "missing" not in infos:
        return True
    if infos[comm.rank] == "missing":
        raise NameError(f"name {key!r} is not defined on this engine")
    return False


def gather(spec: dict, frames=None) -> Any:
    """Every target's ``key`` joined on the root, which returns it; others return None."""
    comm, root, key = _comm(spec["ranks"]), spec["root"], spec["key"]
    value, info = _describe_local(key)
    infos = comm.allgather(info)
    if not _check_present(comm, key, infos):
        return None
    if not _same_arrays(infos):
        parts = comm.gather(value, root=root)
        return partition.join(parts, spec["dist"]) if comm.rank == root else None
    from mpi4py import MPI

    dtype, tail = infos[0][0], infos[0][1][1:]
    rows = [i[1][0] for i in infos]
    row = dtype.itemsize * math.prod(tail)
    whole = receive = None
    if comm.rank == root:
        whole = _buffers.empty((sum(rows), *tail), dtype)
        sizes = [r * row for r in rows]
        receive = [_bytes(whole), (sizes, [0, *np.cumsum(sizes[:-1]).tolist()]), MPI.BYTE]
    comm.Gatherv(_byte_buffer(np.ascontiguousarray(value)), receive, root=root)
    if comm.rank != root:
        return None
    if spec["dist"] == "r":
        bounds = np.cumsum([0, *rows]).tolist()
        return partition.join([whole[a:b] for a, b in zip(bounds, bounds[1:])], "r")
    return whole


# -- bcast -----------------------------------------------------------------------------

def bcast(spec: dict, frames=None) -> None:
    """Root broadcasts the pickled object it received (``key``; a dict to merge into the
    namespace when ``key`` is None); each target stores it."""
    from mpi4py import MPI

    comm, root = _comm(spec["ranks"]), spec["root"]
    _check_root(comm, root, frames)
    if comm.rank == root:
        buffers = [serialize.writable(f) for f in frames]
        comm.bcast([b.nbytes for b in buffers], root=root)
    else:
        buffers = [_buffers.empty((size,), np.uint8) for size in comm.bcast(None, root=root)]
    for buffer in buffers:
        comm.Bcast([buffer, MPI.BYTE], root=root)
    _store(spec["key"], pickle.loads(buffers[0], buffers=buffers[1:]))


# -- reduce and allreduce -----------------------------------------------------------------

class _ChainFailed:
    """Passed down the chain instead of a value when a rank's combine step raised."""

    def __init__(self, message: str):
        self.message = message


def _chain_objects(comm, value: Any, combine) -> Any:
    """Left fold in rank order, one pickled value passed along; the last rank ends with it."""
    acc = value
    if comm.rank > 0:
        acc = comm.recv(source=comm.rank - 1, tag=_CHAIN_TAG)
        if not isinstance(acc, _ChainFailed):
            try:
                acc = combine(acc, value)
            except Exception as exc:  # noqa: BLE001 - the next ranks must hear of it, then we raise
                acc = _ChainFailed(f"the reduce op raised on rank {comm.rank}: {type(exc).__name__}: {exc}")
    if comm.rank < comm.size - 1:
        comm.send(acc, dest=comm.rank + 1, tag=_CHAIN_TAG)
    return acc


def _chain_arrays(comm, value: np.ndarray, ufunc) -> np.ndarray | None:
    """Left fold in rank order for same-shape arrays, pipelined in chunks: rank r adds its
    part to the running fold of ranks < r and passes each chunk on as soon as it is done.
    Only the last rank returns the result. The order is fixed, so floating-point results
    match a fold on the client bit for bit, run after run."""
    from mpi4py import MPI

    mine = np.ascontiguousarray(value).reshape(-1)
    step = max(1, config.MPI_CHUNK_BYTES // mine.dtype.itemsize)
    slices = [slice(a, a + step) for a in range(0, mine.size, step)]
    rank, last = comm.rank, comm.size - 1
    if rank == 0:
        if last > 0:
            MPI.Request.Waitall([comm.Isend(_byte_buffer(mine[s]), dest=1, tag=_CHAIN_TAG) for s in slices])
        return mine.reshape(value.shape) if last == 0 else None
    acc = _buffers.empty(mine.shape, mine.dtype)
    sends = []
    for s in slices:
        comm.Recv(_byte_buffer(acc[s]), source=rank - 1, tag=_CHAIN_TAG)
        ufunc(acc[s], mine[s], out=acc[s])
        if rank < last:
            sends.append(comm.Isend(_byte_buffer(acc[s]), dest=rank + 1, tag=_CHAIN_TAG))
    MPI.Request.Waitall(sends)
    return acc.reshape(value.shape) if rank == last else None


def _mpi_op(op: str):
    from mpi4py import MPI

    return {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX}[op]


def _reduce(comm, key: str, op, everywhere: bool) -> tuple[bool, Any]:
    """(ok, result): the result on the last rank (on every rank if ``everywhere``)."""
    value, info = _describe_local(key)
    infos = comm.allgather(info)
    if not _check_present(comm, key, infos):
        return False, None
    last = comm.size - 1
    arrays = isinstance(op, str) and op in _UFUNCS and _same_arrays(infos) and len(set(i[1] for i in infos)) == 1
    if not arrays:
        result = _chain_objects(comm, value, ops.reducer(op))
        if everywhere:
            result = comm.bcast(result, root=last)
        if isinstance(result, _ChainFailed):
            raise CollectiveError(result.message)
        return True, result
    from mpi4py import MPI

    mine = np.ascontiguousarray(value)
    if mine.dtype.kind in _ORDER_FREE_KINDS and mine.dtype.isnative:
        result = np.empty_like(mine) if everywhere or comm.rank == last else None
        if everywhere:
            comm.Allreduce(mine, result, op=_mpi_op(op))
        else:
            comm.Reduce(mine, result, op=_mpi_op(op), root=last)
        return True, result
    result = _chain_arrays(comm, mine, _UFUNCS[op])
    if everywhere:
        if result is None:
            result = np.empty_like(mine)
        comm.Bcast([_bytes(result), MPI.BYTE], root=last)
    return True, result


def reduce(spec: dict, frames=None) -> Any:
    """Combine every target's ``key`` in target order; the last target returns the result."""
    comm = _comm(spec["ranks"])
    ok, result = _reduce(comm, spec["key"], spec["op"], everywhere=False)
    return result if ok and comm.rank == comm.size - 1 else None


def allreduce(spec: dict, frames=None) -> None:
    """Combine every target's ``key`` in target order and store the result as ``dest`` on each."""
    ok, result = _reduce(_comm(spec["ranks"]), spec["key"], spec["op"], everywhere=True)
    if ok:
        _store(spec["dest"], result)

"""The client side of MPI collectives: when a DirectView call takes MPI, and what it sends.

An MPI call is one message to every target. Only the root (the target with the lowest
MPI rank) gets the data, as raw frames: an array's bytes, or a pickle and its buffers.
The engine side is :mod:`mpihub.engine.mpi_collectives`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import config, partition
from ..protocol import serialize

VIA = ("auto", "zmq", "mpi")


@dataclass
class Plan:
    """Targets of an MPI call: engine ids and their world ranks, in target order."""

    engines: list[int]
    ranks: list[int]

    @property
    def root(self) -> int:
        """Index (in target order) of the target that gets the data: the lowest rank."""
        return self.ranks.index(min(self.ranks))

    def spec(self, **fields) -> dict:
        return {"ranks": self.ranks, "root": self.root, **fields}


def _one_world(client, engines: list[int]) -> list[int] | None:
    """The targets' world ranks if they are distinct engines of one MPI world, else None."""
    infos = [client.core.engines.get(e) or {} for e in engines]
    worlds = {info.get("mpi_world") for info in infos}
    if len(worlds) != 1 or None in worlds or len(set(engines)) != len(engines):
        return None
    return [info["mpi_rank"] for info in infos]


def in_one_world(client, engines: list[int]) -> bool:
    return _one_world(client, engines) is not None


def plan(client, via: str, engines: list[int], nbytes: int | None = None) -> Plan | None:
    """The MPI plan for a call, or None for the ZMQ path.

    ``via="auto"`` takes MPI for two or more targets of one world, and, where the client
    holds the data, only for numpy buffers of at least ``config.MPI_THRESHOLD`` bytes
    (``nbytes``; None when the data is already on the engines).
    """
    if via not in VIA:
        raise ValueError(f"via must be 'auto', 'zmq' or 'mpi', not {via!r}")
    if via == "zmq":
        return None
    ranks = _one_world(client, engines)
    if via == "mpi":
        if ranks is None:
            raise ValueError(f"via='mpi' needs distinct targets that are all in one MPI world; engines {engines} "
                             "are not (start them as one job with engines='mpi', or use via='zmq')")
        return Plan(engines, ranks)
    if ranks is None or len(engines) < 2 or (nbytes is not None and nbytes < config.MPI_THRESHOLD):
        return None
    return Plan(engines, ranks)


def whole_world(client, engines: list[int], what: str) -> list[int]:
    """World ranks of ``engines`` if they are every rank of one MPI world; ValueError if not."""
    ranks = _one_world(client, engines)
    if ranks is None:
        raise ValueError(f"{what} is an MPI collective function: it must run on every rank of one MPI world, "
                         f"and engines {engines} are not one world")
    size = client.core.engines[engines[0]].get("mpi_size")
    if sorted(ranks) != list(range(size)):
        missing = sorted(set(range(size)) - set(ranks))
        raise ValueError(f"{what} is an MPI collective function: the view must cover all {size} ranks of the "
                         f"world, and ranks {missing} are not in it (every rank must call a collective)")
    return ranks


def is_array(value: Any) -> bool:
    """A numpy array that travels as raw bytes (not object dtype, not 0-d)."""
    return (isinstance(value, np.ndarray) and value.ndim >= 1 and not value.dtype.hasobject
            and value.dtype.itemsize > 0)


def buffer_bytes(frames: list) -> int:
    """Bytes of the out-of-band buffers (numpy data) among pickled ``frames``."""
    return sum(memoryview(b).nbytes for b in frames[1:])


def raw_bytes(array: np.ndarray) -> memoryview:
    """An array's memory as one flat byte frame; a copy only if it is not C-contiguous."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def scatter_payload(seq: Any, parts: int, dist: str) -> tuple[dict, list]:
    """Spec fields and root frames for scattering ``seq`` in ``parts`` parts."""
    if is_array(seq):
        counts = [len(p) for p in partition.split(range(len(seq)), parts, dist)]
        return {"kind": "array", "dtype": seq.dtype, "shape": seq.shape, "counts": counts}, [raw_bytes(seq)]
    return {"kind": "pickle"}, pickled(seq)


def pickled(value: Any) -> list:
    """``value`` as frames: its pickle, then its out-of-band buffers."""
    content, buffers = serialize.serialize(value)
    return [content, *buffers]

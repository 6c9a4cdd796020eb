"""Receive buffers for MPI collectives, reused once nothing refers to them.

Fresh memory is slow to fill: every page faults in (and numpy's large arrays ask for
huge pages, which can make the kernel stop to compact memory first). Collectives in a
loop receive arrays of the same sizes over and over, so the engine keeps the anonymous
memory maps it received into and hands one out again once no array, view or pending
send refers to it any more.
"""
from __future__ import annotations

import math
import mmap
import sys

import numpy as np

#: Below this, numpy's own allocator is as good.
SMALL_BYTES = 4 << 20
#: References to a pooled map that nothing else holds: the pool's list and getrefcount's argument.
_IDLE_REFS = 2


class BufferPool:
    """Memory maps to receive into, at most ``limit`` bytes of them kept for reuse."""

    def __init__(self, limit: int):
        self.limit = limit
        self._maps: list[mmap.mmap] = []

    def empty(self, shape: tuple, dtype) -> np.ndarray:
        """An uninitialised array; large ones live in a (reused) memory map."""
        dtype = np.dtype(dtype)
        count = math.prod(shape)
        nbytes = dtype.itemsize * count
        if nbytes < SMALL_BYTES:
            return np.empty(shape, dtype)
        memory = self._idle_map(nbytes)
        if memory is None:
            memory = mmap.mmap(-1, nbytes)
            if nbytes <= self.limit:
                self._maps.append(memory)
                self._trim()
        return np.frombuffer(memory, dtype, count=count).reshape(shape)

    def _idle_map(self, nbytes: int) -> mmap.mmap | None:
        """The smallest idle map that holds ``nbytes`` without wasting more than half."""
        best = None
        for index in range(len(self._maps)):
            size = len(self._maps[index])
            if nbytes <= size <= 2 * nbytes and sys.getrefcount(self._maps[index]) <= _IDLE_REFS:
                if best is None or size < len(self._maps[best]):
                    best = index
        return None if best is None else self._maps[best]

    def _trim(self) -> None:
        """Forget the oldest maps while the pool holds more than ``limit`` bytes (a map
        still in use is freed as usual once its arrays go)."""
        while sum(len(m) for m in self._maps) > self.limit:
            self._maps.pop(0)

    @property
    def nbytes(self) -> int:
        return sum(len(m) for m in self._maps)

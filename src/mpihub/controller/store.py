"""Payload store with a memory bound.

The Hub keeps each task's request and result frames (references to received ZMQ
messages, never copies) so that ``get_result`` from another client and ``resubmit``
work. Past ``limit`` bytes the oldest payloads are released, settled ones (a result
its client has, a request of a finished task) before the rest; their records stay.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable


class PayloadStore:
    def __init__(self, limit: int):
        self.limit = limit
        self.nbytes = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._settled: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()  # released first

    def put(self, key: Hashable, payload: Any, nbytes: int, settled: bool = False) -> list[Hashable]:
        """Keep ``payload`` (``settled``: and :meth:`settle` it); returns the keys
        released to stay within the limit."""
        if key in self:
            self.drop(key)
        self.nbytes += nbytes
        if self.nbytes <= self.limit:
            (self._settled if settled else self._items)[key] = (payload, nbytes)
            return []
        self._items[key] = (payload, nbytes)
        released = []
        while self.nbytes > self.limit and len(self) > 1:
            old_key, (_, old_bytes) = (self._settled or self._items).popitem(last=False)
            self.nbytes -= old_bytes
            released.append(old_key)
        if settled:
            self.settle(key)
        return released

    def settle(self, key: Hashable) -> None:
        """Mark a payload as the first to release when space runs out."""
        item = self._items.pop(key, None)
        if item is not None:
            self._settled[key] = item

    def get(self, key: Hashable) -> Any | None:
        item = self._items.get(key) or self._settled.get(key)
        return None if item is None else item[0]

    def drop(self, key: Hashable) -> None:
        item = self._items.pop(key, None) or self._settled.pop(key, None)
        if item is not None:
            self.nbytes -= item[1]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items or key in self._settled

    def __len__(self) -> int:
        return len(self._items) + len(self._settled)

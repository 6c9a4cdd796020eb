"""Payload store with a memory bound.

The Hub keeps each task's request and result frames (references to received ZMQ
messages, never copies) so that ``get_result`` from another client and ``resubmit``
work. Past ``limit`` bytes the oldest payloads are released; their records stay.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable


class PayloadStore:
    def __init__(self, limit: int):
        self.limit = limit
        self.nbytes = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def put(self, key: Hashable, payload: Any, nbytes: int) -> list[Hashable]:
        """Keep ``payload``; returns the keys released to stay within the limit."""
        self.drop(key)
        self._items[key] = (payload, nbytes)
        self.nbytes += nbytes
        released = []
        while self.nbytes > self.limit and len(self._items) > 1:
            old_key, (_, old_bytes) = self._items.popitem(last=False)
            self.nbytes -= old_bytes
            released.append(old_key)
        return released

    def get(self, key: Hashable) -> Any | None:
        item = self._items.get(key)
        return None if item is None else item[0]

    def drop(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.nbytes -= item[1]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

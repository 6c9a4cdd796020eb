"""Load-balancing scheduler as a pure state machine: events in, assignments out.

Engines sit in buckets by load; the least-loaded engine is chosen, ties going to the
one that waited longest (least recently used). An engine takes at most ``hwm`` tasks
at once, so a slow task does not collect a queue behind it. Every operation is O(1) for
unrestricted tasks; a task restricted to some targets scans the buckets.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Iterable


class LeastLoadScheduler:
    """Assigns task ids to engine ids. Holds no payloads and no sockets."""

    def __init__(self, hwm: int = 1):
        if hwm < 1:
            raise ValueError("hwm must be at least 1")
        self.hwm = hwm
        self.load: dict[int, int] = {}
        self._buckets: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(hwm)]
        self.pending: deque[tuple[str, frozenset[int] | None]] = deque()
        self.assigned: dict[str, int] = {}

    # -- events ---------------------------------------------------------------------

    def add_engine(self, engine_id: int) -> list[tuple[str, int]]:
        self.load[engine_id] = 0
        self._buckets[0][engine_id] = None
        return self._drain()

    def remove_engine(self, engine_id: int) -> tuple[list[str], list[str]]:
        """Forget an engine. Returns (tasks it held, queued tasks no engine can take)."""
        load = self.load.pop(engine_id, None)
        if load is None:
            return [], []
        if load < self.hwm:
            del self._buckets[load][engine_id]
        lost = [task for task, engine in self.assigned.items() if engine == engine_id]
        for task in lost:
            del self.assigned[task]
        stranded = [task for task, targets in self.pending if targets is not None and not targets & self.load.keys()]
        if stranded:
            drop = set(stranded)
            self.pending = deque(item for item in self.pending if item[0] not in drop)
        return lost, stranded

    def submit(self, task_id: str, targets: Iterable[int] | None = None) -> list[tuple[str, int]]:
        """Queue a task; returns the assignments that can be made now.

        Raises ``LookupError`` when ``targets`` names no registered engine.
        """
        allowed = None if targets is None else frozenset(targets)
        if allowed is not None and not allowed & self.load.keys():
            raise LookupError(f"none of the engines {sorted(allowed)} is registered")
        self.pending.append((task_id, allowed))
        return self._drain()

    def finished(self, task_id: str) -> list[tuple[str, int]]:
        engine_id = self.assigned.pop(task_id, None)
        if engine_id is None:
            return []
        load = self.load[engine_id]
        if load < self.hwm:
            del self._buckets[load][engine_id]
        self.load[engine_id] = load - 1
        self._buckets[load - 1][engine_id] = None
        return self._drain()

    def abort(self, task_ids: Iterable[str]) -> list[str]:
        """Drop queued tasks; returns those removed (assigned ones run anyway)."""
        drop = set(task_ids)
        removed = [task for task, _ in self.pending if task in drop]
        if removed:
            self.pending = deque(item for item in self.pending if item[0] not in drop)
        return removed

    # -- internals ------------------------------------------------------------------

    def _choose(self, allowed: frozenset[int] | None) -> int | None:
        for bucket in self._buckets:
            if allowed is None:
                if bucket:
                    return next(iter(bucket))
            else:
                for engine_id in bucket:
                    if engine_id in allowed:
                        return engine_id
        return None

    def _assign(self, task_id: str, engine_id: int) -> None:
        load = self.load[engine_id]
        del self._buckets[load][engine_id]
        self.load[engine_id] = load + 1
        if load + 1 < self.hwm:
            self._buckets[load + 1][engine_id] = None
        self.assigned[task_id] = engine_id

    def _drain(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        skipped: list[tuple[str, frozenset[int] | None]] = []
        while self.pending:
            task_id, allowed = self.pending[0]
            engine_id = self._choose(allowed)
            if engine_id is None:
                if allowed is None or not any(self._buckets):
                    break
                skipped.append(self.pending.popleft())
                continue
            self.pending.popleft()
            self._assign(task_id, engine_id)
            out.append((task_id, engine_id))
        self.pending.extendleft(reversed(skipped))
        return out

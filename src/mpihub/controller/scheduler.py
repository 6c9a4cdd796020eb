"""Load-balancing schedulers as pure state machines: events in, assignments out.

Every scheduler keeps the same books: the load of each engine, the tasks waiting and
the tasks assigned. An engine takes at most ``hwm`` tasks at once, so a slow task does
not collect a queue behind it. They differ only in which engine with room gets the
next task:

- ``leastload``: the least-loaded engine, ties to the one that waited longest. Engines
  sit in buckets by load, so a choice is O(1) for an unrestricted task.
- ``lru``: the engine that was given a task longest ago (round robin over those with room).
- ``random``: any engine with room, uniformly (O(1): engines with room sit in a pool).
- ``weighted``: a random engine with room, weighted by how much room it has (a pool per
  load: O(hwm)).

No policy looks at every engine to place an unrestricted task, so throughput holds at
thousands of engines.

A task may be restricted to some engines (a view's targets); it then skips ahead of
tasks that cannot run yet, without reordering them.
"""
from __future__ import annotations

import random
from collections import OrderedDict, deque
from typing import Iterable


class Scheduler:
    """Assigns task ids to engine ids. Holds no payloads and no sockets."""

    def __init__(self, hwm: int = 1):
        if not isinstance(hwm, int) or hwm < 1:
            raise ValueError(f"hwm must be a positive int, not {hwm!r}")
        self.hwm = hwm
        self.load: dict[int, int] = {}
        self.pending: deque[tuple[str, frozenset[int] | None]] = deque()
        self.assigned: dict[str, int] = {}
        self.paused: set[int] = set()  # engines that count as registered but take nothing yet

    # -- events ---------------------------------------------------------------------

    def add_engine(self, engine_id: int, running: Iterable[str] = (), paused: bool = False) -> list[tuple[str, int]]:
        """A new engine, or one of a restarted controller with ``running`` tasks
        assigned already, which count towards its load. A ``paused`` engine takes no
        task until :meth:`resume` (tasks restricted to it wait meanwhile)."""
        running = list(running)
        self.load[engine_id] = len(running)
        self.assigned.update((task, engine_id) for task in running)
        if paused:
            self.paused.add(engine_id)
            return []
        self._room_changed(engine_id, None, len(running))
        return self._drain()

    def resume(self, engine_id: int) -> list[tuple[str, int]]:
        """A paused engine may take tasks now."""
        if engine_id not in self.paused:
            return []
        self.paused.discard(engine_id)
        self._room_changed(engine_id, None, self.load[engine_id])
        return self._drain()

    def remove_engine(self, engine_id: int) -> tuple[list[str], list[str]]:
        """Forget an engine. Returns (tasks it held, queued tasks no engine can take)."""
        load = self.load.pop(engine_id, None)
        if load is None:
            return [], []
        if engine_id in self.paused:
            self.paused.discard(engine_id)
        else:
            self._room_changed(engine_id, load, None)
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
        self.load[engine_id] = load - 1
        if engine_id not in self.paused:
            self._room_changed(engine_id, load, load - 1)
        return self._drain()

    def take(self, task_id: str, engine_id: int) -> bool:
        """Count a task on an engine out of turn, whatever its room (the engine has it
        already), taking it out of the queue if it waits there; False when the engine is
        not registered or the task is assigned already."""
        if engine_id not in self.load or task_id in self.assigned:
            return False
        self.pending = deque(item for item in self.pending if item[0] != task_id)
        load = self.load[engine_id]
        self.load[engine_id] = load + 1
        if engine_id not in self.paused:
            self._room_changed(engine_id, load, load + 1)
        self.assigned[task_id] = engine_id
        return True

    def abort(self, task_ids: Iterable[str]) -> list[str]:
        """Drop queued tasks; returns those removed (assigned ones run anyway)."""
        drop = set(task_ids)
        removed = [task for task, _ in self.pending if task in drop]
        if removed:
            self.pending = deque(item for item in self.pending if item[0] not in drop)
        return removed

    # -- what a policy decides ---------------------------------------------------------

    def _choose(self, allowed: frozenset[int] | None) -> int | None:
        """An engine with room (in ``allowed``, if given), or None."""
        raise NotImplementedError

    def _room_changed(self, engine_id: int, old: int | None, new: int | None) -> None:
        """An engine's load went from ``old`` to ``new`` (None: not registered)."""

    def _has_room(self) -> bool:
        """Whether any engine that is not paused has room."""
        raise NotImplementedError

    # -- internals ------------------------------------------------------------------

    def _assign(self, task_id: str, engine_id: int) -> None:
        load = self.load[engine_id]
        self.load[engine_id] = load + 1
        self._room_changed(engine_id, load, load + 1)
        self.assigned[task_id] = engine_id

    def _drain(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        skipped: list[tuple[str, frozenset[int] | None]] = []
        while self.pending:
            task_id, allowed = self.pending[0]
            engine_id = self._choose(allowed)
            if engine_id is None:
                if allowed is None or not self._has_room():
                    break
                skipped.append(self.pending.popleft())
                continue
            self.pending.popleft()
            self._assign(task_id, engine_id)
            out.append((task_id, engine_id))
        self.pending.extendleft(reversed(skipped))
        return out


class LeastLoadScheduler(Scheduler):
    """The least-loaded engine; ties to the one that waited longest."""

    def __init__(self, hwm: int = 1):
        super().__init__(hwm)
        self._buckets: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(hwm)]

    def _room_changed(self, engine_id: int, old: int | None, new: int | None) -> None:
        if old is not None and old < self.hwm:
            del self._buckets[old][engine_id]
        if new is not None and new < self.hwm:
            self._buckets[new][engine_id] = None

    def _has_room(self) -> bool:
        return any(self._buckets)

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


class LRUScheduler(Scheduler):
    """The engine with room that was given a task longest ago, whatever its load."""

    def __init__(self, hwm: int = 1):
        super().__init__(hwm)
        self._by_last_use: OrderedDict[int, None] = OrderedDict()

    def _room_changed(self, engine_id: int, old: int | None, new: int | None) -> None:
        if new is None or new >= self.hwm:
            self._by_last_use.pop(engine_id, None)
        elif old is not None and new > old:
            self._by_last_use.move_to_end(engine_id)
        elif engine_id not in self._by_last_use:
            self._by_last_use[engine_id] = None

    def _has_room(self) -> bool:
        return bool(self._by_last_use)

    def _choose(self, allowed: frozenset[int] | None) -> int | None:
        for engine_id in self._by_last_use:
            if allowed is None or engine_id in allowed:
                return engine_id
        return None


class _Pool:
    """Engines in a list, and each one's place in it: add, remove and a uniform pick,
    each O(1)."""

    __slots__ = ("engines", "places")

    def __init__(self):
        self.engines: list[int] = []
        self.places: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.engines)

    def __contains__(self, engine_id: int) -> bool:
        return engine_id in self.places

    def add(self, engine_id: int) -> None:
        if engine_id not in self.places:
            self.places[engine_id] = len(self.engines)
            self.engines.append(engine_id)

    def discard(self, engine_id: int) -> None:
        place = self.places.pop(engine_id, None)
        if place is None:
            return
        last = self.engines.pop()
        if place < len(self.engines):
            self.engines[place] = last
            self.places[last] = place

    def pick(self, rng: random.Random) -> int:
        return self.engines[rng.randrange(len(self.engines))]


class RandomScheduler(Scheduler):
    """Any engine with room, uniformly at random (``seed`` makes runs repeatable)."""

    def __init__(self, hwm: int = 1, seed: int | None = None):
        super().__init__(hwm)
        self.random = random.Random(seed)
        self._room = _Pool()

    def _room_changed(self, engine_id: int, old: int | None, new: int | None) -> None:
        if new is not None and new < self.hwm:
            self._room.add(engine_id)
        else:
            self._room.discard(engine_id)

    def _has_room(self) -> bool:
        return bool(self._room)

    def _choose(self, allowed: frozenset[int] | None) -> int | None:
        if allowed is None:
            return self._room.pick(self.random) if self._room else None
        candidates = [e for e in sorted(allowed) if e in self._room]
        return self.random.choice(candidates) if candidates else None


class WeightedScheduler(Scheduler):
    """A random engine with room, with odds proportional to the room it has."""

    def __init__(self, hwm: int = 1, seed: int | None = None):
        super().__init__(hwm)
        self.random = random.Random(seed)
        self._by_load: dict[int, _Pool] = {}  # loads below hwm that some engine has

    def _room_changed(self, engine_id: int, old: int | None, new: int | None) -> None:
        if old is not None and old < self.hwm:
            pool = self._by_load[old]
            pool.discard(engine_id)
            if not pool:
                del self._by_load[old]
        if new is not None and new < self.hwm:
            self._by_load.setdefault(new, _Pool()).add(engine_id)

    def _has_room(self) -> bool:
        return bool(self._by_load)

    def _choose(self, allowed: frozenset[int] | None) -> int | None:
        if allowed is None:
            if not self._by_load:
                return None
            loads = sorted(self._by_load)
            load = self.random.choices(loads, weights=[(self.hwm - n) * len(self._by_load[n]) for n in loads])[0]
            return self._by_load[load].pick(self.random)
        candidates = [e for e in sorted(allowed) if e in self._by_load.get(self.load.get(e, self.hwm), ())]
        if not candidates:
            return None
        return self.random.choices(candidates, weights=[self.hwm - self.load[e] for e in candidates])[0]


SCHEDULERS: dict[str, type[Scheduler]] = {
    "leastload": LeastLoadScheduler,
    "lru": LRUScheduler,
    "random": RandomScheduler,
    "weighted": WeightedScheduler,
}

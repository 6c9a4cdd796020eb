"""The Hub as a pure state machine: engines and task records.

The socket shell feeds it events (an engine registered, a task was submitted, a reply
came back, an engine died) and carries out what it returns. It never touches sockets or
payload bytes; payloads live in two :class:`~.store.PayloadStore` (requests, replies).
"""
from __future__ import annotations

import fnmatch
import operator
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .store import PayloadStore

TASK_FIELDS = (
    "msg_id", "queue", "engine_id", "client", "submitted", "started", "completed", "received",
    "status", "stdout", "stderr", "ename", "resubmitted",
)


@dataclass
class EngineRecord:
    id: int
    uuid: bytes
    info: dict
    registered: float
    queue: set[str] = field(default_factory=set)  # direct tasks sent, not yet replied
    tasks: set[str] = field(default_factory=set)  # load-balanced tasks assigned, not yet replied
    completed: int = 0
    retired: bool = False  # near its batch job's end: no more load-balanced tasks

    def describe(self) -> dict:
        return {"id": self.id, "uuid": self.uuid.hex(), "registered": self.registered, **self.info}


class TaskRecord:
    """What the Hub knows of one task; its payloads are in the stores under its msg_id.
    Kept lean: a busy Hub holds hundreds of thousands of these."""

    __slots__ = tuple(f for f in TASK_FIELDS if f != "client") + ("client_ident", "watchers", "targets")

    def __init__(self, msg_id: str, queue: str, client_ident: bytes, submitted: float, engine_id: int | None):
        self.msg_id = msg_id
        self.queue = queue
        self.client_ident = client_ident
        self.submitted = submitted
        self.engine_id = engine_id
        self.started = self.completed = self.received = None
        self.status = "pending"
        self.stdout = self.stderr = ""
        self.ename = None
        self.resubmitted = None
        self.watchers: tuple[bytes, ...] = ()  # other clients waiting for the reply
        self.targets = None

    @property
    def client(self) -> str:
        return self.client_ident.hex()

    def as_dict(self, keys: Iterable[str] | None = None) -> dict:
        return {key: getattr(self, key) for key in (keys or TASK_FIELDS)}


class Hub:
    """``store_limit`` bounds payload bytes kept; ``record_limit`` the finished task
    records kept (the oldest are forgotten first)."""

    def __init__(self, store_limit: int, record_limit: int = 1_000_000):
        self.record_limit = record_limit
        self._finished: OrderedDict[str, None] = OrderedDict()
        self.engines: dict[int, EngineRecord] = {}
        self.by_uuid: dict[bytes, int] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self.requests = PayloadStore(store_limit // 2)
        self.replies = PayloadStore(store_limit - store_limit // 2)
        self.unassigned = 0
        self._next_id = 0
        self._worlds: dict[str, int] = {}  # MPI world id -> first engine id of its block

    # -- engines --------------------------------------------------------------------

    def register_engine(self, uuid: bytes, requested_id: int | None, info: dict, now: float) -> EngineRecord:
        """Admit an engine; ids count up and are never reused. Re-registering a live
        uuid returns its existing record. The ranks of one MPI world get a block of
        consecutive ids in rank order, whatever order they register in."""
        if uuid in self.by_uuid:
            return self.engines[self.by_uuid[uuid]]
        world, rank, size = info.get("mpi_world"), info.get("mpi_rank"), info.get("mpi_size")
        if isinstance(world, str) and isinstance(rank, int) and isinstance(size, int) and 0 <= rank < size:
            if world not in self._worlds:
                self._worlds[world] = self._next_id
                self._next_id += size
            requested_id = self._worlds[world] + rank
            taken = requested_id in self.engines
        else:
            taken = requested_id is None or requested_id < self._next_id or requested_id in self.engines
        engine_id = self._next_id if taken else requested_id
        self._next_id = max(self._next_id, engine_id + 1)
        record = EngineRecord(engine_id, uuid, info, now)
        self.engines[engine_id] = record
        self.by_uuid[uuid] = engine_id
        return record

    def mirror_engine(self, engine_id: int, uuid: bytes, info: dict, now: float) -> EngineRecord:
        """Admit an engine under the id another Hub gave it (a split controller's paths
        keep the table of the engines they route to)."""
        if uuid in self.by_uuid:
            return self.engines[self.by_uuid[uuid]]
        if engine_id in self.engines:
            raise ValueError(f"engine {engine_id} is here already, under another uuid")
        record = EngineRecord(engine_id, uuid, info, now)
        self.engines[engine_id] = record
        self.by_uuid[uuid] = engine_id
        return record

    def remove_engine(self, engine_id: int) -> tuple[EngineRecord | None, list[TaskRecord]]:
        """Drop a dead or departed engine; returns it and its unfinished tasks."""
        record = self.engines.pop(engine_id, None)
        if record is None:
            return None, []
        del self.by_uuid[record.uuid]
        lost = [self.tasks[t] for t in (*record.queue, *record.tasks) if t in self.tasks]
        return record, lost

    def engine_table(self) -> dict[int, dict]:
        return {eid: rec.describe() for eid, rec in sorted(self.engines.items())}

    # -- tasks ----------------------------------------------------------------------

    def submit(self, msg_id: str, queue: str, client_ident: bytes, engine_id: int | None,
               now: float, request: Any, nbytes: int) -> TaskRecord:
        record = TaskRecord(msg_id, queue, client_ident, now, engine_id)
        self.tasks[msg_id] = record
        self.requests.put(msg_id, _compact(request), nbytes)
        if engine_id is None:
            self.unassigned += 1
        else:
            self.engines[engine_id].queue.add(msg_id)
        return record

    def assign(self, msg_id: str, engine_id: int) -> None:
        """A queued load-balanced task went to an engine."""
        record = self.tasks[msg_id]
        record.engine_id = engine_id
        self.unassigned -= 1
        self.engines[engine_id].tasks.add(msg_id)

    def requeue(self, msg_id: str) -> None:
        """A load-balanced task that failed goes back to waiting for an engine (a retry)."""
        record = self.tasks[msg_id]
        engine = self.engines.get(record.engine_id) if record.engine_id is not None else None
        if engine is not None:
            engine.tasks.discard(msg_id)
        record.engine_id = None
        self.unassigned += 1

    def finish(self, msg_id: str, engine_id: int | None, header: dict, reply: Any, nbytes: int,
               now: float) -> TaskRecord | None:
        """A reply arrived (or was made up for a failure) at ``now``; returns the record if known."""
        record = self.tasks.get(msg_id)
        if record is None or record.completed is not None:
            return None
        engine = self.engines.get(engine_id) if engine_id is not None else None
        if engine is not None:
            engine.queue.discard(msg_id)
            engine.tasks.discard(msg_id)
            engine.completed += 1
        elif record.engine_id is None and record.status == "pending":
            self.unassigned -= 1
        record.started = header.get("started")
        record.completed = header.get("completed") or now
        record.received = now
        record.status = header.get("st", "ok")
        record.stdout = header.get("out", "")
        record.stderr = header.get("err", "")
        record.ename = header.get("ename")
        self.replies.put(msg_id, _compact(reply), nbytes)
        self._finished[msg_id] = None
        while len(self._finished) > self.record_limit:
            self._forget(self._finished.popitem(last=False)[0])
        return record

    def _forget(self, msg_id: str) -> None:
        self.tasks.pop(msg_id, None)
        self._finished.pop(msg_id, None)
        self.requests.drop(msg_id)
        self.replies.drop(msg_id)

    def reply_frames(self, msg_id: str) -> list | None:
        return _frames(self.replies.get(msg_id))

    def request_frames(self, msg_id: str) -> list | None:
        return _frames(self.requests.get(msg_id))

    # -- queries --------------------------------------------------------------------

    def queue_status(self, targets: Iterable[int] | None = None, verbose: bool = False) -> dict:
        chosen = self.engines if targets is None else {t: self.engines[t] for t in targets if t in self.engines}
        status: dict[Any, Any] = {}
        for engine_id, rec in sorted(chosen.items()):
            if verbose:
                status[engine_id] = {"queue": sorted(rec.queue), "completed": rec.completed, "tasks": sorted(rec.tasks)}
            else:
                status[engine_id] = {"queue": len(rec.queue), "completed": rec.completed, "tasks": len(rec.tasks)}
        status["unassigned"] = self.unassigned
        return status

    def query(self, query: dict, keys: Iterable[str] | None = None) -> list[dict]:
        """Task records matching a Mongo-style query (``$lt``, ``$in``, ``$glob``, ...)."""
        keys = list(keys) if keys else None
        if keys is not None:
            unknown = set(keys) - set(TASK_FIELDS)
            if unknown:
                raise KeyError(f"unknown record keys {sorted(unknown)}; known: {list(TASK_FIELDS)}")
            if "msg_id" not in keys:
                keys.insert(0, "msg_id")
        tests = [_compile_test(key, spec) for key, spec in query.items()]
        return [rec.as_dict(keys) for rec in self.tasks.values() if all(test(rec) for test in tests)]

    def purge(self, msg_ids: Iterable[str] | None, engine_ids: Iterable[int] | None) -> list[str]:
        """Forget completed tasks: the given ids, those of given engines, or all."""
        if msg_ids is None and engine_ids is None:
            chosen = [m for m, rec in self.tasks.items() if rec.completed is not None]
        else:
            engines = set(engine_ids or ())
            chosen = [m for m in (msg_ids or ()) if m in self.tasks]
            chosen += [m for m, rec in self.tasks.items() if rec.engine_id in engines]
            chosen = [m for m in dict.fromkeys(chosen) if self.tasks[m].completed is not None]
        for msg_id in chosen:
            self._forget(msg_id)
        return chosen


def _compact(frames: Any) -> Any:
    """A one-frame message is kept as its frame alone (no list per task)."""
    return frames[0] if isinstance(frames, list) and len(frames) == 1 else frames


def _frames(stored: Any) -> list | None:
    return None if stored is None else stored if isinstance(stored, list) else [stored]


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$lt": operator.lt, "$gt": operator.gt, "$lte": operator.le, "$gte": operator.ge,
    "$eq": operator.eq, "$ne": operator.ne,
    "$in": lambda value, options: value in options,
    "$nin": lambda value, options: value not in options,
    "$exists": lambda value, wanted: (value is not None) == bool(wanted),
    "$glob": lambda value, pattern: isinstance(value, str) and fnmatch.fnmatch(value, pattern),
}


def _compile_test(key: str, spec: Any) -> Callable[[TaskRecord], bool]:
    if key not in TASK_FIELDS:
        raise KeyError(f"unknown record key {key!r}; known: {list(TASK_FIELDS)}")
    if not isinstance(spec, dict):
        return lambda rec: getattr(rec, key) == spec
    checks = []
    for op, operand in spec.items():
        if op not in _OPERATORS:
            raise ValueError(f"unknown query operator {op!r}; known: {sorted(_OPERATORS)}")
        checks.append((_OPERATORS[op], operand))

    def test(rec: TaskRecord) -> bool:
        value = getattr(rec, key)
        if value is None and spec.keys() - {"$exists", "$eq", "$ne", "$in", "$nin"}:
            return False
        return all(check(value, operand) for check, operand in checks)

    return test

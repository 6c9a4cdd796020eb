"""The Hub as a pure state machine: engines and task records.

The socket shell feeds it events (an engine registered, a task was submitted, a reply
came back, an engine died) and carries out what it returns. It never touches sockets or
payload bytes; payloads live in two :class:`~.store.PayloadStore` (requests, replies).
With a durable :class:`~.taskdb.TaskDB` (``db``), it also tells the store every event
(enqueued, never waited for); it never reads the store: what reaches past its memory is
read by :mod:`.lookup`.
"""
from __future__ import annotations

import fnmatch
import logging
import operator
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..protocol.schema import Key
from .records import TASK_FIELDS, EngineRecord, TaskRecord
from .store import PayloadStore

if TYPE_CHECKING:
    from .taskdb import TaskDB

log = logging.getLogger("mpihub.controller")

#: Ids of results dropped unfetched that the Hub remembers, so get_result can say why.
EVICTED_IDS = 100_000
#: Departed engines whose id the Hub keeps for them, should they register again.
DEPARTED = 100_000
#: Outcomes of finished tasks that left memory, kept (with a durable store) so that a
#: dependency on one never waits for the store's writer: far more tasks than finish
#: within one of its commit windows.
RECENT_OUTCOMES = 100_000


class Hub:
    """``store_limit`` bounds payload bytes kept in memory; ``record_limit`` the finished
    task records (the oldest fetched ones are forgotten first). Without a ``db``, a result
    dropped before anyone fetched it is logged, and ``get_result`` says it was evicted."""

    def __init__(self, store_limit: int, record_limit: int = 1_000_000, db: "TaskDB | None" = None):
        self.record_limit = record_limit
        self.db = db
        self._finished: OrderedDict[str, None] = OrderedDict()  # fetched: forgotten first
        self._unfetched: OrderedDict[str, None] = OrderedDict()
        self.dropped_unfetched = 0
        self.evicted_ids: OrderedDict[str, None] = OrderedDict()  # the last EVICTED_IDS of them
        self.engines: dict[int, EngineRecord] = {}
        self.by_uuid: dict[bytes, int] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self.requests = PayloadStore(store_limit // 2)
        self.replies = PayloadStore(store_limit - store_limit // 2)
        self.unassigned = 0
        self._next_id = 0
        self._worlds: dict[str, int] = {}  # MPI world id -> first engine id of its block
        self.departed: OrderedDict[int, bytes] = OrderedDict()  # id -> uuid of engines that left
        self.recent_outcomes: OrderedDict[str, tuple[str, int | None]] = OrderedDict()

    # -- engines --------------------------------------------------------------------

    def register_engine(self, uuid: bytes, requested_id: int | None, info: dict,
                        now: float) -> tuple[EngineRecord, str]:
        """Admit an engine; returns its record and how it came: "new", "again" (a
        repeated registration of a live uuid: the same record) or "rejoined" (an engine
        the Hub lost or restored, under its old id). Other ids count up and are never
        reused. The ranks of one MPI world get a block of consecutive ids in rank
        order, whatever order they register in."""
        if uuid in self.by_uuid:
            record = self.engines[self.by_uuid[uuid]]
            if not record.rejoining:
                return record, "again"
            record.rejoining = False
            record.info = info
            return record, "rejoined"
        if requested_id is not None and self.departed.get(requested_id) == uuid and requested_id not in self.engines:
            del self.departed[requested_id]
            return self._add_engine(requested_id, uuid, info, now), "rejoined"
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
        return self._add_engine(engine_id, uuid, info, now), "new"

    def restore_engine(self, engine_id: int, uuid: bytes, info: dict, registered: float) -> EngineRecord:
        """Put back an engine of the controller before a restart, as rejoining: it is
        expected to register again (or be declared dead)."""
        record = self._add_engine(engine_id, uuid, info, registered)
        record.rejoining = True
        self._next_id = max(self._next_id, engine_id + 1)
        return record

    def restore_next_id(self, next_id: int) -> None:
        """Ids a restored Hub gives new engines start past every id given before."""
        self._next_id = max(self._next_id, next_id)

    def _add_engine(self, engine_id: int, uuid: bytes, info: dict, now: float) -> EngineRecord:
        record = EngineRecord(engine_id, uuid, info, now)
        self.engines[engine_id] = record
        self.by_uuid[uuid] = engine_id
        if self.db:
            self.db.engine_joined(record, self._next_id)
        return record

    def mirror_engine(self, engine_id: int, uuid: bytes, info: dict, now: float) -> EngineRecord:
        """Admit an engine under the id another Hub gave it (a split controller's paths
        keep the table of the engines they route to)."""
        if uuid in self.by_uuid:
            return self.engines[self.by_uuid[uuid]]
        if engine_id in self.engines:
            raise ValueError(f"engine {engine_id} is here already, under another uuid")
        return self._add_engine(engine_id, uuid, info, now)

    def remove_engine(self, engine_id: int) -> tuple[EngineRecord | None, list[TaskRecord]]:
        """Drop a dead or departed engine; returns it and its unfinished tasks."""
        record = self.engines.pop(engine_id, None)
        if record is None:
            return None, []
        del self.by_uuid[record.uuid]
        self.departed[engine_id] = record.uuid
        if len(self.departed) > DEPARTED:
            self.departed.popitem(last=False)
        if self.db:
            self.db.engine_left(engine_id)
        lost = [self.tasks[t] for t in (*record.queue, *record.tasks) if t in self.tasks]
        return record, lost

    def engine_table(self) -> dict[int, dict]:
        return {eid: rec.describe() for eid, rec in sorted(self.engines.items())}

    # -- tasks ----------------------------------------------------------------------

    def submit(self, msg_id: str, queue: str, client_ident: bytes, engine_id: int | None,
               now: float, request: Any, nbytes: int, shares: str | None = None) -> TaskRecord:
        """A task arrived; ``shares`` names the task whose request frames it shares (one
        direct request to several engines), which the durable store keeps once."""
        record = TaskRecord(msg_id, queue, client_ident, now, engine_id)
        self.tasks[msg_id] = record
        self.requests.put(msg_id, _compact(request), nbytes)
        if self.db:
            self.db.submitted(record, None if shares else request, nbytes, shares)
        if engine_id is None:
            self.unassigned += 1
        else:
            self.engines[engine_id].queue.add(msg_id)
        return record

    def restore_task(self, msg_id: str, queue: str, client_ident: bytes, submitted: float, engine_id: int | None,
                     request: Any, nbytes: int) -> TaskRecord:
        """Put back a task the controller before a restart had not finished (the durable
        store has it already): queued on its engine if that one is back in the table,
        else waiting for one."""
        record = TaskRecord(msg_id, queue, client_ident, submitted, None)
        self.tasks[msg_id] = record
        if request is not None:
            self.requests.put(msg_id, _compact(request), nbytes)
        engine = self.engines.get(engine_id) if engine_id is not None else None
        if engine is None:
            self.unassigned += 1
        else:
            record.engine_id = engine_id
            (engine.queue if queue == "direct" else engine.tasks).add(msg_id)
        return record

    def assign(self, msg_id: str, engine_id: int) -> None:
        """A queued load-balanced task went to an engine."""
        record = self.tasks[msg_id]
        record.engine_id = engine_id
        self.unassigned -= 1
        self.engines[engine_id].tasks.add(msg_id)
        if self.db:
            self.db.assigned(msg_id, engine_id)

    def requeue(self, msg_id: str) -> None:
        """A load-balanced task that failed goes back to waiting for an engine (a retry)."""
        record = self.tasks[msg_id]
        engine = self.engines.get(record.engine_id) if record.engine_id is not None else None
        if engine is not None:
            engine.tasks.discard(msg_id)
        record.engine_id = None
        self.unassigned += 1

    def finish(self, msg_id: str, engine_id: int | None, header: dict, reply: Any, nbytes: int,
               now: float, fetched: bool = False) -> TaskRecord | None:
        """A reply arrived (or was made up for a failure) at ``now`` and was passed on to a
        connected client (``fetched``) or not; returns the record if known."""
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
        record.started = header.get(Key.STARTED)
        record.completed = header.get(Key.COMPLETED) or now
        record.received = now
        record.status = header.get(Key.STATUS, "ok")
        record.stdout = header.get(Key.STDOUT, "")
        record.stderr = header.get(Key.STDERR, "")
        record.ename = header.get(Key.ENAME)
        record.fetched = fetched
        if self.db:
            self.db.finished(record, reply, nbytes, fetched)
        self.requests.settle(msg_id)
        for released in self.replies.put(msg_id, _compact(reply), nbytes, settled=fetched):
            self._evicted(released)
        (self._finished if fetched else self._unfetched)[msg_id] = None
        while len(self._finished) + len(self._unfetched) > self.record_limit:
            source = self._finished or self._unfetched
            oldest = source.popitem(last=False)[0]
            if source is self._unfetched:
                self._evicted(oldest)
            if self.db:
                gone = self.tasks[oldest]
                self.recent_outcomes[oldest] = (gone.status, gone.engine_id)
                if len(self.recent_outcomes) > RECENT_OUTCOMES:
                    self.recent_outcomes.popitem(last=False)
            self._forget(oldest)
        return record

    def fetched(self, msg_id: str) -> None:
        """A client took a stored result (``get_result``)."""
        record = self.tasks.get(msg_id)
        if record is None and self.db:
            self.db.fetched(msg_id)
        elif record is not None and not record.fetched:
            record.fetched = True
            self.replies.settle(msg_id)
            if msg_id in self._unfetched:
                del self._unfetched[msg_id]
                self._finished[msg_id] = None
            if self.db:
                self.db.fetched(msg_id)

    def mark_resubmitted(self, msg_id: str, new_id: str) -> None:
        if msg_id in self.tasks:
            self.tasks[msg_id].resubmitted = new_id
        if self.db:
            self.db.resubmitted(msg_id, new_id)

    def _evicted(self, msg_id: str) -> None:
        """A result left memory for the size limits: said aloud if nobody had it and no
        durable store keeps it."""
        record = self.tasks.get(msg_id)
        if record is None or record.fetched or self.db:
            return
        record.evicted = True
        self.evicted_ids[msg_id] = None
        if len(self.evicted_ids) > EVICTED_IDS:
            self.evicted_ids.popitem(last=False)
        self.dropped_unfetched += 1
        if self.dropped_unfetched <= 10 or self.dropped_unfetched % 1000 == 0:
            log.warning("dropped the result of task %s before anyone fetched it (%d so far), to stay within "
                        "MPIHUB_STORE_BYTES / MPIHUB_MAX_RECORDS; run with --db sqlite to keep every result",
                        msg_id, self.dropped_unfetched)

    def _forget(self, msg_id: str) -> None:
        self.tasks.pop(msg_id, None)
        self._finished.pop(msg_id, None)
        self._unfetched.pop(msg_id, None)
        self.requests.drop(msg_id)
        self.replies.drop(msg_id)

    def outcome(self, msg_id: str) -> tuple[str, int | None] | None:
        """What a dependency on a task finds in memory: ``("pending", None)``,
        ``(status, engine_id)`` once it finished, None if memory does not know it."""
        record = self.tasks.get(msg_id)
        if record is not None:
            return ("pending", None) if record.completed is None else (record.status, record.engine_id)
        return self.recent_outcomes.get(msg_id)

    def request_frames(self, msg_id: str) -> list | None:
        """A live task's request, from memory (what retries and refusals resend)."""
        return _frames(self.requests.get(msg_id))

    def stored_reply(self, msg_id: str) -> tuple[str, list | None]:
        """``(state, frames)`` of a task's reply in memory. State: "stored", "pending",
        "unknown", "purged" or "evicted" (dropped for the size limits before anyone
        fetched it); with a durable store, :mod:`.lookup` asks it for all but the first two."""
        record = self.tasks.get(msg_id)
        if record is not None and record.completed is None:
            return "pending", None
        frames = _frames(self.replies.get(msg_id))
        if frames is not None:
            return "stored", frames
        if record is None:
            return ("evicted" if msg_id in self.evicted_ids else "unknown"), None
        return ("evicted" if record.evicted else "purged"), None

    def stored_request(self, msg_id: str) -> tuple[str, list | None]:
        """``(state, frames)`` of a task's request in memory, as :meth:`stored_reply`
        (no "pending")."""
        frames = _frames(self.requests.get(msg_id))
        if frames is not None:
            return "stored", frames
        return ("purged" if msg_id in self.tasks else "unknown"), None

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
        """Task records in memory matching a Mongo-style query (``$lt``, ``$in``,
        ``$glob``, ...)."""
        keys = record_keys(keys)
        tests = compile_query(query)
        return [rec.as_dict(keys) for rec in self.tasks.values() if all(test(rec) for test in tests)]

    def purge(self, msg_ids: Iterable[str] | None, engine_ids: Iterable[int] | None,
              stored: Iterable[str] = ()) -> list[str]:
        """Forget completed tasks: the given ids, those of given engines, or all; with
        those a durable store found (``stored``), which it forgets too. Returns them."""
        if msg_ids is None and engine_ids is None:
            chosen = [m for m, rec in self.tasks.items() if rec.completed is not None]
        else:
            engines = set(engine_ids or ())
            chosen = [m for m in (msg_ids or ()) if m in self.tasks]
            chosen += [m for m, rec in self.tasks.items() if rec.engine_id in engines]
            chosen = [m for m in dict.fromkeys(chosen) if self.tasks[m].completed is not None]
        chosen = list(dict.fromkeys([*chosen, *stored]))
        if self.db:
            self.db.purged(chosen)
        for msg_id in chosen:
            self._forget(msg_id)
            self.recent_outcomes.pop(msg_id, None)
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


def record_keys(keys: Iterable[str] | None) -> list[str] | None:
    """The record fields a query asks for (``msg_id`` always among them); KeyError for
    unknown ones. None: every field."""
    keys = list(keys) if keys else None
    if keys is not None:
        unknown = set(keys) - set(TASK_FIELDS)
        if unknown:
            raise KeyError(f"unknown record keys {sorted(unknown)}; known: {list(TASK_FIELDS)}")
        if "msg_id" not in keys:
            keys.insert(0, "msg_id")
    return keys


def compile_query(query: dict) -> list[Callable[[TaskRecord], bool]]:
    """One test per field of a Mongo-style query (KeyError, ValueError for a bad one)."""
    return [_compile_test(key, spec) for key, spec in query.items()]


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

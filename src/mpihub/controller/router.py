"""The request paths: client ROUTER in, engine ROUTER out, and the replies back.

A :class:`Router` forwards requests as the very frames that arrived (zero-copy
references) and replies likewise; its :class:`~.hub.Hub` learns of each task from the
header alone, after the forward, so it never delays a round trip. It runs the direct
path (DirectView: one message fanned out to the named engines), the task path
(LoadBalancedView, through :class:`~.taskpath.TaskPath`), or both. The single-process
controller is a Router that also registers engines; a split controller runs each path
as a Router of its own and answers the Hub's queries with the ``answer_*`` methods.
"""
from __future__ import annotations

import heapq
import logging
import time
from collections import OrderedDict

from .. import config
from ..protocol import wire
from ..protocol.curve import Curve
from . import merge
from .base import Service
from .dashboard import DashboardStats
from .hub import Hub
from .scheduler import SCHEDULERS
from .taskdb import TaskDB
from .taskpath import TaskPath

log = logging.getLogger("mpihub.controller")

#: Ids aborted before their request arrived (an abort may overtake it on another
#: connection); a request that comes later with one of them is aborted at once.
TOMBSTONES = 10_000


class Router(Service):
    def __init__(self, key: str, paths: tuple[str, ...] = ("direct", "task"), scheduler: str = "leastload",
                 hwm: int | None = None, curve: Curve | None = None, db: TaskDB | None = None):
        super().__init__(key, curve)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; available: {sorted(SCHEDULERS)}")
        self.paths = paths
        self.hub = Hub(config.STORE_BYTES, config.MAX_RECORDS, db)
        self.scheduler_name = scheduler
        self.tasks: TaskPath | None = None
        if "task" in paths:
            chosen = SCHEDULERS[scheduler](config.SCHEDULER_HWM if hwm is None else hwm)
            self.tasks = TaskPath(self.hub, chosen, self.signer, self._send_to_engine, self._fail)
        self.stats: DashboardStats | None = None  # counts for the dashboard, when it is on
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._retirements: list[tuple[float, int]] = []  # a heap of (retire_at, engine id)
        self._drop_engine = wire.DropLog(log, "the engine socket")

    def close(self) -> None:
        super().close()
        if self.hub.db:
            self.hub.db.close()

    def _next_wakeup(self) -> float | None:
        times = [self.tasks.next_deadline() if self.tasks else None,
                 self._retirements[0][0] if self._retirements else None]
        return min((t for t in times if t is not None), default=None)

    def _wake(self) -> None:
        if self.tasks:
            self.tasks.expire()
        now = time.time()
        while self._retirements and self._retirements[0][0] <= now:
            self._retire(heapq.heappop(self._retirements)[1])

    # -- sending --------------------------------------------------------------------

    def _send_to_engine(self, engine_id: int, frames: list) -> None:
        wire.send(self.engine_sock, [self.hub.engines[engine_id].uuid, *frames])

    def _deliver(self, msg_id: str, frames: list) -> bool:
        """Send a reply to its client and watchers; whether one of them is connected."""
        record = self.hub.tasks.get(msg_id)
        if record is None:
            return False
        wire.send(self.client_sock, [record.client_ident, *frames])
        for watcher in record.watchers:
            wire.send(self.client_sock, [watcher, *frames])
        return record.client_ident in self.clients or any(w in self.clients for w in record.watchers)

    def _fail(self, msg_id: str, engine_id: int | None, status: str, ename: str, evalue: str) -> None:
        """Make up a reply for a task that will never run, and deliver it."""
        now = time.time()
        header = {"t": "reply", "id": msg_id, "eng": engine_id, "st": status, "ename": ename,
                  "evalue": evalue, "tb": "", "started": None, "completed": now}
        frames = wire.pack(self.signer, header)
        if self.tasks:
            self.tasks.forget(msg_id)
        fetched = self._deliver(msg_id, frames)
        self.hub.finish(msg_id, engine_id, header, frames, 0, now, fetched)
        if self.stats:
            self.stats.task_finished(now, header, engine_id)
        if self.tasks:
            self.tasks.finished(msg_id)

    # -- client socket --------------------------------------------------------------

    def _client_message(self, ident: bytes, msg: wire.Message) -> None:
        if msg.type in ("apply", "execute"):
            self._submit(ident, msg)
        else:
            super()._client_message(ident, msg)

    def _submit(self, ident: bytes, msg: wire.Message) -> None:
        path = "task" if msg.header.get("lb") else "direct"
        if path not in self.paths:
            raise ValueError(f"this controller process runs the {' and '.join(self.paths)} path, not the {path} path")
        if self._tombstones and self._aborted_early(ident, msg, path):
            return
        if self.tasks is not None and path == "task":
            self.tasks.submit(ident, msg)
        else:
            self._submit_direct(ident, msg)

    def _aborted_early(self, ident: bytes, msg: wire.Message, path: str) -> bool:
        """Abort at once a request whose ids were aborted before it came."""
        ids = [msg.header["id"]] if path == "task" else msg.header["ids"]
        if not any(m in self._tombstones for m in ids):
            return False
        now = time.time()
        for msg_id in ids:
            if isinstance(msg_id, str) and msg_id not in self.hub.tasks:
                self._tombstones.pop(msg_id, None)
                self.hub.submit(msg_id, path, ident, None, now, msg.frames, 0)
                self._fail(msg_id, None, "aborted", "TaskAborted", "task aborted before it started")
        return True

    def _submit_direct(self, ident: bytes, msg: wire.Message) -> None:
        targets, ids = msg.header["tg"], msg.header["ids"]
        if not (isinstance(targets, list) and isinstance(ids, list) and len(targets) == len(ids) and targets):
            raise ValueError("tg and ids must be equal-length non-empty lists")
        if not all(isinstance(t, int) for t in targets) or not all(isinstance(i, str) for i in ids):
            raise TypeError("tg must hold ints and ids strings")
        now = time.time()
        nbytes = sum(len(f) for f in msg.frames)
        data_for = msg.header.get("bt")
        if data_for is not None and data_for not in targets:
            raise ValueError(f"bt {data_for!r} is not one of the targets")
        envelope_only = msg.frames[:1]
        first = None
        for engine_id, msg_id in zip(targets, ids):
            if msg_id in self.hub.tasks:
                self._drop_client(f"duplicate msg_id {msg_id!r}")
                continue
            engine = self.hub.engines.get(engine_id)
            self.hub.submit(msg_id, "direct", ident, engine_id if engine else None, now, msg.frames, nbytes, first)
            nbytes, first = 0, first or msg_id  # one payload shared by every target
            if engine is None:
                self._fail(msg_id, engine_id, "error", "EngineError", f"engine {engine_id} is not registered")
            elif not engine.rejoining:  # a rejoining engine is sent its queue when it is back
                frames = msg.frames if data_for is None or engine_id == data_for else envelope_only
                wire.send(self.engine_sock, [engine.uuid, *frames])

    # -- engine socket --------------------------------------------------------------

    def _on_engine(self, frames: list) -> None:
        self._routed(frames, self._drop_engine, self._from_engine)

    def _from_engine(self, uuid: bytes, msg: wire.Message) -> None:
        engine_id = self.hub.by_uuid.get(uuid)
        if msg.type == "reply" and engine_id is not None:
            self._on_reply(engine_id, msg)
        elif msg.type == "stream" and engine_id is not None:
            self._on_stream(engine_id, msg)
        else:
            self._on_engine_other(uuid, engine_id, msg)

    def _on_engine_other(self, uuid: bytes, engine_id: int | None, msg: wire.Message) -> None:
        self._drop_engine(f"unexpected {msg.type!r} from {'unknown engine' if engine_id is None else engine_id}")

    def _on_stream(self, engine_id: int, msg: wire.Message) -> None:
        """Output of a running task that asked for it as it comes: on to its client."""
        record = self.hub.tasks.get(msg.header["id"])
        if record is None or record.completed is not None or record.engine_id != engine_id:
            return self._drop_engine(f"output of a task not running on engine {engine_id}")
        self._deliver(record.msg_id, msg.frames)

    def _on_reply(self, engine_id: int, msg: wire.Message) -> None:
        msg_id = msg.header["id"]
        record = self.hub.tasks.get(msg_id)
        if record is None or record.completed is not None:
            return self._drop_engine(f"reply to unknown or finished task {msg_id!r}")
        if record.engine_id != engine_id:
            return self._drop_engine(f"reply from engine {engine_id} to task {msg_id!r}, which is engine "
                                     f"{record.engine_id}'s now")
        if record.queue == "task" and self.tasks.reply(msg_id, engine_id, msg.header):
            return  # passed on or retried: the client hears only of the last attempt
        fetched = self._deliver(msg_id, msg.frames)
        now = time.time()
        self.hub.finish(msg_id, engine_id, msg.header, msg.frames, sum(len(f) for f in msg.frames), now, fetched)
        if self.stats:
            self.stats.task_finished(now, msg.header, engine_id)
        if self.tasks:
            self.tasks.finished(msg_id)

    # -- engines coming and going -----------------------------------------------------

    def _engine_added(self, engine_id: int) -> None:
        """An engine in ``self.hub.engines`` may now take work (until it retires, when
        its batch job has a known end)."""
        record = self.hub.engines[engine_id]
        retire_at = record.info.get("retire_at")
        if isinstance(retire_at, (int, float)):
            heapq.heappush(self._retirements, (float(retire_at), engine_id))
        if self.tasks:
            self.tasks.add_engine(engine_id, record.tasks, paused=record.rejoining)

    def _readopt(self, engine_id: int, header: dict) -> dict[str, list[str]]:
        """An engine is back under its id, after a controller restart or a network cut.
        Settle each unfinished task assigned to it by what it reports (``held``,
        ``answered``, ``kept``): one it holds will be answered; one whose reply was lost
        with the old connection is asked of it again when it kept the reply, and else is
        retried or fails; one it never received is sent again. Returns what to tell it:
        the held tasks to ``skip`` (no longer its own: failed or retried meanwhile) and
        the kept replies to send again (``replay``). A load-balanced task it has that the
        store had as still queued is taken back as its own first, so none runs twice."""
        held, answered, kept = (wire.task_ids(header.get(k)) for k in ("held", "answered", "kept"))
        record = self.hub.engines[engine_id]
        claimed = self._take_back(engine_id, (held | answered) - record.tasks)
        mine = record.queue | record.tasks
        replay = []
        for msg_id in sorted(mine - held, key=lambda m: self.hub.tasks[m].submitted):
            task = self.hub.tasks[msg_id]
            if msg_id in kept:
                replay.append(msg_id)
                continue
            if msg_id in answered:
                lost = {"st": "error", "ename": "ReplyLost"}
                if task.queue == "task" and self.tasks and self.tasks.reply(msg_id, engine_id, lost):
                    continue
                self._fail(msg_id, engine_id, "error", "EngineError", f"engine {engine_id} ran task {msg_id}, "
                           "but its reply was lost with its connection to the controller")
                continue
            frames = self.hub.request_frames(msg_id)
            if frames is None:
                self._fail(msg_id, engine_id, "error", "EngineError",
                           f"task {msg_id} never reached engine {engine_id}, and its request was too large to keep")
            else:
                self._send_to_engine(engine_id, frames)
        skip = sorted(held - mine)
        log.info("engine %d is back: %d of its tasks queued there, %d sent again, %d replies asked again, %d replies "
                 "lost, %d no longer its own, %d taken back from the queue", engine_id, len(mine & held),
                 len(mine - held - answered - kept), len(replay), len((mine - held - kept) & answered), len(skip),
                 len(claimed))
        return {"skip": skip, "replay": replay}

    def _take_back(self, engine_id: int, ids: set[str]) -> list[str]:
        """Make the load-balanced tasks among ``ids`` that still wait to be sent this
        engine's; returns them."""
        taken = []
        for msg_id in sorted(ids):
            task = self.hub.tasks.get(msg_id)
            if (self.tasks and task is not None and task.queue == "task" and task.engine_id is None
                    and self.tasks.claim(msg_id, engine_id)):
                taken.append(msg_id)
        return taken

    def _restore_tasks(self) -> int:
        """Take back the unfinished tasks from the durable store, after the engines
        (as rejoining ones); returns how many."""
        restored = []
        for task in self.hub.db.pending_tasks():
            client = bytes.fromhex(task.client) if task.client else b""
            record = self.hub.restore_task(task.msg_id, task.queue, client, task.submitted, task.engine_id,
                                           task.request, task.nbytes)
            restored.append((record, task))
        for engine_id, engine in self.hub.engines.items():
            self._engine_added(engine_id)
        for record, task in restored:
            if record.queue == "task" and task.request is not None and self.tasks:
                self.tasks.restore(record.msg_id, wire.unpack(self.signer, task.request))
            elif record.engine_id is None:
                why = (f"engine {task.engine_id} was not in its table" if record.queue == "direct"
                       else "its request was too large to keep")
                self._fail(record.msg_id, task.engine_id, "error", "EngineError",
                           f"task {record.msg_id} was lost in the controller restart: {why}")
        return len(restored)

    def _retire(self, engine_id: int) -> None:
        """Near its job's end an engine takes no more load-balanced tasks; those that
        only it may run fail with EngineRetired. Direct requests still reach it."""
        record = self.hub.engines.get(engine_id)
        if record is None or record.retired:
            return
        record.retired = True
        log.info("engine %d retires (its batch job ends at %s): no more load-balanced tasks", engine_id,
                 time.strftime("%H:%M:%S", time.localtime(record.info.get("job_end") or time.time())))
        for msg_id in self.tasks.remove_engine(engine_id) if self.tasks else []:
            self._fail(msg_id, None, "error", "EngineRetired",
                       f"engine {engine_id} retired before its batch job's end; no other engine may run task {msg_id}")

    def _forget_engine(self, engine_id: int, why: str) -> None:
        """Forget an engine that died or left: retry or fail every task it had."""
        record, lost = self.hub.remove_engine(engine_id)
        if record is None:
            return
        stranded = self.tasks.remove_engine(engine_id) if self.tasks else []
        log.warning("engine %d %s; failing %d unfinished tasks", engine_id, why, len(lost) + len(stranded))
        for rec in lost:
            if record.retired:  # its job's walltime: not the task's fault, no retry used up
                if rec.queue == "task" and self.tasks.requeue(rec.msg_id, engine_id):
                    continue
                self._fail(rec.msg_id, engine_id, "error", "EngineRetired",
                           f"engine {engine_id} {why} at the end of its batch job, before task {rec.msg_id} "
                           "finished")
                continue
            if rec.queue == "task" and self.tasks.retry(rec.msg_id, engine_id, why):
                continue
            self._fail(rec.msg_id, engine_id, "error", "EngineError",
                       f"engine {engine_id} {why} before task {rec.msg_id} finished")
        for msg_id in stranded:
            self._fail(msg_id, None, "error", "EngineError", f"engine {engine_id} {why}; no other engine may run this task")

    # -- answers to Hub queries ---------------------------------------------------------

    def answer_queue_status(self, targets: list | None, verbose: bool) -> dict:
        return self.hub.queue_status(targets, verbose)

    def answer_db_query(self, query: dict, keys: list | None) -> list:
        return self.hub.query(query, keys)

    def answer_purge(self, ids: list | None, targets: list | None) -> list:
        return self.hub.purge(ids, targets)

    def answer_result(self, ident: bytes, ids: list) -> dict:
        """Send stored replies to ``ident`` now, register it for pending ones, report the
        rest by state (see :meth:`.Hub.stored_reply`)."""
        if not isinstance(ids, list) or not all(isinstance(m, str) for m in ids):
            raise TypeError(f"ids must be a list of task ids, not {ids!r}")
        outcome: dict[str, list] = {state: [] for state in merge.RESULT_STATES}
        for msg_id in ids:
            state, frames = self.hub.stored_reply(msg_id)
            if state == "pending":
                record = self.hub.tasks.get(msg_id)
                if record is not None and ident != record.client_ident and ident not in record.watchers:
                    record.watchers += (ident,)
            elif state == "stored" and "bulk" in wire.unpack(self.signer, frames).header:
                state = "direct"
            elif state == "stored":
                wire.send(self.client_sock, [ident, *frames])
                self.hub.fetched(msg_id)
                continue
            outcome[state].append(msg_id)
        return outcome

    def answer_abort(self, ids: list) -> tuple[list[str], dict[int, list[str]]]:
        """Abort the queued tasks among ``ids``; returns them, and the unfinished ones
        already sent to engines by engine id (theirs to skip or interrupt). Ids not seen
        yet are remembered, so a request that comes after its abort is aborted too."""
        if not all(isinstance(m, str) for m in ids):
            raise TypeError(f"ids must be task ids, not {ids!r}")
        removed = self.tasks.abort(ids) if self.tasks else []
        for msg_id in removed:
            self._fail(msg_id, None, "aborted", "TaskAborted", "task aborted before it started")
        by_engine: dict[int, list[str]] = {}
        for msg_id in ids:
            record = self.hub.tasks.get(msg_id)
            if record is None and isinstance(msg_id, str):
                self._tombstones[msg_id] = None
                if len(self._tombstones) > TOMBSTONES:
                    self._tombstones.popitem(last=False)
            elif record is not None and record.completed is None and record.engine_id in self.hub.engines:
                by_engine.setdefault(record.engine_id, []).append(msg_id)
        return removed, by_engine

    def answer_requests(self, renames: dict[str, str]) -> dict[str, list]:
        """The stored requests of the tasks to rerun under new ids (``{old: new}``);
        KeyError/ValueError naming the ones this process has and cannot rerun. Unknown
        ids are left out. Nothing changes until :meth:`resubmit` and
        :meth:`mark_resubmitted`."""
        stored = {m: self.hub.stored_request(m) for m in renames}
        missing = [f"{m} ({state})" for m, (state, _) in stored.items() if state not in ("stored", "unknown")]
        if missing:
            raise KeyError(f"no stored request for {', '.join(missing)}")
        found = {m: frames for m, (state, frames) in stored.items() if state == "stored"}
        headers = {m: wire.unpack(self.signer, frames).header for m, frames in found.items()}
        direct = [m for m, header in headers.items() if "bulk" in header]
        if direct:
            raise ValueError(f"the data of {direct} went straight to the engine and is not stored; submit them anew")
        collective = [m for m, header in headers.items() if "rk" in header]
        if collective:
            raise ValueError(f"{collective} ran on a whole MPI world together; one engine cannot run it again alone")
        return found

    def mark_resubmitted(self, renames: dict[str, str]) -> None:
        """Note in each old task's record the id it runs again under (those known here)."""
        for old, new in renames.items():
            self.hub.mark_resubmitted(old, new)

    def resubmit(self, ident: bytes, runs: list[tuple[str, list]]) -> None:
        """Run stored requests again as new load-balanced tasks: ``(new_id, frames)``.
        All or none: every run is checked before the first is queued."""
        if self.tasks is None:
            raise ValueError("only the task path runs tasks again")
        new_ids = [new for new, _ in runs]
        if not all(isinstance(new, str) for new in new_ids) or len(set(new_ids)) != len(new_ids):
            raise ValueError(f"new ids must be distinct strings, not {new_ids!r}")
        taken = [new for new in new_ids if new in self.hub.tasks]
        if taken:
            raise ValueError(f"ids already in use: {taken}")
        requests = []
        for new, frames in runs:
            stored = wire.unpack(self.signer, frames)
            request = {k: v for k, v in stored.header.items() if k not in ("tg", "ids", "only", "v", "nb", "rb")}
            request.update(id=new, lb=True)
            requests.append(wire.unpack(self.signer, wire.pack(self.signer, request, stored.content, stored.buffers)))
            self.tasks.check(requests[-1])
        for request in requests:
            self.tasks.submit(ident, request)

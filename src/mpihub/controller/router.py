"""The request paths: requests from clients out to engines, and the replies back.

A :class:`Router` forwards requests as the very frames that arrived (zero-copy
references) and replies likewise; its :class:`~.hub.Hub` learns of each task from the
header alone, after the forward, so it never delays a round trip. It runs the direct
path (DirectView: one message fanned out to the named engines), the task path
(LoadBalancedView, through :class:`~.taskpath.TaskPath`), or both. The one-process
controller has one Router for both paths; a split controller runs each path as a
process of its own with a Router for that path. What becomes of an engine's tasks when
it rejoins, retires or is lost is planned by :mod:`.recovery` and carried out here.
"""
from __future__ import annotations

import heapq
import logging
import time
from collections import OrderedDict
from typing import Callable

from .. import config
from ..protocol import wire
from ..protocol.schema import Key, Msg
from . import recovery
from .clients import ClientPort
from .dashboard import DashboardStats
from .engine_port import EnginePort
from .hub import Hub
from .lookup import TaskLookup
from .loop import Loop
from .scheduler import SCHEDULERS
from .taskpath import TaskPath

log = logging.getLogger("mpihub.controller")

#: Ids aborted before their request arrived (an abort may overtake it on another
#: connection); a request that comes later with one of them is aborted at once.
TOMBSTONES = 10_000


class Router:
    def __init__(self, loop: Loop, hub: Hub, clients: ClientPort, engine_port: EnginePort,
                 paths: tuple[str, ...] = ("direct", "task"), scheduler: str = "leastload", hwm: int | None = None,
                 clock: Callable[[], float] = time.time):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; available: {sorted(SCHEDULERS)}")
        self.signer = loop.signer
        self.hub = hub
        self.clients = clients
        self.engine_port = engine_port
        self.paths = paths
        self.clock = clock
        self.lookup = TaskLookup(hub)
        self.scheduler_name = scheduler
        self.tasks: TaskPath | None = None
        if "task" in paths:
            chosen = SCHEDULERS[scheduler](config.SCHEDULER_HWM if hwm is None else hwm)
            self.tasks = TaskPath(hub, chosen, self.signer, self.send_to_engine, self.fail, clock, self.lookup.outcome)
        self.stats: DashboardStats | None = None  # counts for the dashboard, when it is on
        self.tombstones: OrderedDict[str, None] = OrderedDict()
        self._retirements: list[tuple[float, int]] = []  # a heap of (retire_at, engine id)
        self.drop = engine_port.drop

    # -- timers ---------------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        times = [self.tasks.next_deadline() if self.tasks else None,
                 self._retirements[0][0] if self._retirements else None]
        return min((t for t in times if t is not None), default=None)

    def wake(self) -> None:
        if self.tasks:
            self.tasks.expire()
        now = self.clock()
        while self._retirements and self._retirements[0][0] <= now:
            self.retire(heapq.heappop(self._retirements)[1])

    # -- sending --------------------------------------------------------------------

    def send_to_engine(self, engine_id: int, frames: list) -> None:
        self.engine_port.send(self.hub.engines[engine_id].uuid, frames)

    def _deliver(self, msg_id: str, frames: list) -> bool:
        """Send a reply to its client and watchers; whether one of them is connected."""
        record = self.hub.tasks.get(msg_id)
        if record is None:
            return False
        deliver, reachable = self.clients.deliver, self.clients.reachable
        deliver(record.client_ident, frames)
        for watcher in record.watchers:
            deliver(watcher, frames)
        return reachable(record.client_ident) or any(reachable(w) for w in record.watchers)

    def fail(self, msg_id: str, engine_id: int | None, status: str, ename: str, evalue: str) -> None:
        """Make up a reply for a task that will never run, and deliver it."""
        now = self.clock()
        header = {Key.TYPE: Msg.REPLY, Key.ID: msg_id, Key.ENGINE_ID: engine_id, Key.STATUS: status, Key.ENAME: ename,
                  Key.EVALUE: evalue, Key.TRACEBACK: "", Key.STARTED: None, Key.COMPLETED: now}
        frames = wire.pack(self.signer, header)
        if self.tasks:
            self.tasks.forget(msg_id)
        fetched = self._deliver(msg_id, frames)
        self.hub.finish(msg_id, engine_id, header, frames, 0, now, fetched)
        if self.stats:
            self.stats.task_finished(now, header, engine_id)
        if self.tasks:
            self.tasks.finished(msg_id)

    def _carry_out(self, actions: list) -> None:
        """Do what a :mod:`.recovery` plan says."""
        for action in actions:
            if isinstance(action, recovery.Resend):
                self.send_to_engine(action.engine_id, self.hub.request_frames(action.msg_id))
            else:
                self.fail(action.msg_id, action.engine_id, "error", action.ename, action.why)

    # -- requests from clients ------------------------------------------------------

    def submit(self, ident: bytes, msg: wire.Message) -> None:
        path = "task" if msg.header.get(Key.LOAD_BALANCED) else "direct"
        if path not in self.paths:
            raise ValueError(f"this controller process runs the {' and '.join(self.paths)} path, not the {path} path")
        if self.tombstones and self._aborted_early(ident, msg, path):
            return
        if self.tasks is not None and path == "task":
            self.tasks.submit(ident, msg)
        else:
            self._submit_direct(ident, msg)

    def _aborted_early(self, ident: bytes, msg: wire.Message, path: str) -> bool:
        """Abort at once a request whose ids were aborted before it came."""
        ids = [msg.header[Key.ID]] if path == "task" else wire.request_ids(msg.header)
        if not any(m in self.tombstones for m in ids):
            return False
        now = self.clock()
        for msg_id in ids:
            if isinstance(msg_id, str) and msg_id not in self.hub.tasks:
                self.tombstones.pop(msg_id, None)
                self.hub.submit(msg_id, path, ident, None, now, msg.frames, 0)
                self.fail(msg_id, None, "aborted", "TaskAborted", "task aborted before it started")
        return True

    def _submit_direct(self, ident: bytes, msg: wire.Message) -> None:
        targets, ids = wire.request_targets(msg.header), wire.request_ids(msg.header)
        if not (isinstance(targets, list) and isinstance(ids, list) and len(targets) == len(ids) and targets):
            raise ValueError("tg and ids must be equal-length non-empty lists")
        if not all(isinstance(t, int) for t in targets) or not all(isinstance(i, str) for i in ids):
            raise TypeError("tg must hold ints and ids strings")
        now = self.clock()
        nbytes = sum(len(f) for f in msg.frames)
        data_for = msg.header.get(Key.BUFFERS_FOR)
        if data_for is not None and data_for not in targets:
            raise ValueError(f"bt {data_for!r} is not one of the targets")
        with_data: list[bytes] = []
        envelope_only: list[bytes] = []  # the targets other than bt's
        first = None
        for engine_id, msg_id in zip(targets, ids):
            if msg_id in self.hub.tasks:
                self.clients.drop(f"duplicate msg_id {msg_id!r}")
                continue
            engine = self.hub.engines.get(engine_id)
            self.hub.submit(msg_id, "direct", ident, engine_id if engine else None, now, msg.frames, nbytes, first)
            nbytes, first = 0, first or msg_id  # one payload shared by every target
            if engine is None:
                self.fail(msg_id, engine_id, "error", "EngineError", f"engine {engine_id} is not registered")
            elif not engine.rejoining:  # a rejoining engine is sent its queue when it is back
                (with_data if data_for is None or engine_id == data_for else envelope_only).append(engine.uuid)
        self.engine_port.send_many(with_data, msg.frames)
        if envelope_only:
            self.engine_port.send_many(envelope_only, msg.frames[:1])

    def abort(self, ids: list) -> tuple[list[str], dict[int, list[str]]]:
        """Abort the queued tasks among ``ids``; returns them, and the unfinished ones
        already sent to engines by engine id (theirs to skip or interrupt). Ids not seen
        yet are remembered, so a request that comes after its abort is aborted too."""
        if not all(isinstance(m, str) for m in ids):
            raise TypeError(f"ids must be task ids, not {ids!r}")
        removed = self.tasks.abort(ids) if self.tasks else []
        for msg_id in removed:
            self.fail(msg_id, None, "aborted", "TaskAborted", "task aborted before it started")
        by_engine: dict[int, list[str]] = {}
        for msg_id in ids:
            record = self.hub.tasks.get(msg_id)
            if record is None:
                self.tombstones[msg_id] = None
                if len(self.tombstones) > TOMBSTONES:
                    self.tombstones.popitem(last=False)
            elif record.completed is None and record.engine_id in self.hub.engines:
                by_engine.setdefault(record.engine_id, []).append(msg_id)
        return removed, by_engine

    # -- messages from engines ------------------------------------------------------

    def from_engine(self, engine_id: int | None, msg: wire.Message) -> bool:
        """Handle a reply or a task's live output; False for any other message."""
        if engine_id is None:
            return False
        if msg.type == Msg.REPLY:
            self._on_reply(engine_id, msg)
        elif msg.type == Msg.STREAM:
            self._on_stream(engine_id, msg)
        else:
            return False
        return True

    def _on_stream(self, engine_id: int, msg: wire.Message) -> None:
        """Output of a running task that asked for it as it comes: on to its client."""
        record = self.hub.tasks.get(msg.header[Key.ID])
        if record is None or record.completed is not None or record.engine_id != engine_id:
            return self.drop(f"output of a task not running on engine {engine_id}")
        self._deliver(record.msg_id, msg.frames)

    def _on_reply(self, engine_id: int, msg: wire.Message) -> None:
        msg_id = msg.header[Key.ID]
        record = self.hub.tasks.get(msg_id)
        if record is None or record.completed is not None:
            return self.drop(f"reply to unknown or finished task {msg_id!r}")
        if record.engine_id != engine_id:
            return self.drop(f"reply from engine {engine_id} to task {msg_id!r}, which is engine "
                             f"{record.engine_id}'s now")
        if record.queue == "task" and self.tasks.reply(msg_id, engine_id, msg.header):
            return  # passed on or retried: the client hears only of the last attempt
        fetched = self._deliver(msg_id, msg.frames)
        now = self.clock()
        self.hub.finish(msg_id, engine_id, msg.header, msg.frames, sum(len(f) for f in msg.frames), now, fetched)
        if self.stats:
            self.stats.task_finished(now, msg.header, engine_id)
        if self.tasks:
            self.tasks.finished(msg_id)

    # -- engines coming and going -----------------------------------------------------

    def engine_added(self, engine_id: int) -> None:
        """An engine in the Hub's table may now take work (until it retires, when its
        batch job has a known end)."""
        record = self.hub.engines[engine_id]
        retire_at = record.info.get("retire_at")
        if isinstance(retire_at, (int, float)):
            heapq.heappush(self._retirements, (float(retire_at), engine_id))
        if self.tasks:
            self.tasks.add_engine(engine_id, record.tasks, paused=record.rejoining)

    def engine_rejoined(self, engine_id: int, report: dict) -> dict[str, list[str]]:
        """An engine is back under its id: settle its tasks (see :func:`.recovery.rejoin`);
        returns what to tell it."""
        plan = recovery.rejoin(self.hub, self.tasks, engine_id, report)
        self._carry_out(plan.actions)
        log.info("engine %d is back: %s", engine_id, plan.summary())
        return plan.answer()

    def retire(self, engine_id: int) -> None:
        record = self.hub.engines.get(engine_id)
        if record is None or record.retired:
            return
        log.info("engine %d retires (its batch job ends at %s): no more load-balanced tasks", engine_id,
                 time.strftime("%H:%M:%S", time.localtime(record.info.get("job_end") or self.clock())))
        self._carry_out(recovery.retire(self.hub, self.tasks, engine_id))

    def engine_lost(self, engine_id: int, why: str) -> None:
        """Forget an engine that died or left: retry or fail every task it had."""
        if engine_id not in self.hub.engines:
            return
        loss = recovery.lose(self.hub, self.tasks, engine_id, why)
        log.warning("engine %d %s; failing %d unfinished tasks", engine_id, why, loss.unfinished)
        self._carry_out(loss.failures)

"""The one-process controller: the Hub, the direct path and the task path in one loop.

Built from its parts: a :class:`~.loop.Loop`, the client port, a
:class:`~.registry.Registry` (engines, heartbeats, notices), one
:class:`~.router.Router` holding both request paths, and :mod:`.queries`, each answered
by that Router at once. This is the default layout (see :mod:`.split_hub` for the split
one, and docs/architecture.md for the benchmark that chose). With ``restore``, it takes
back the state a controller of the same cluster left in its durable store: its keys,
ports, engines (until they register again or fall silent) and unfinished tasks.
"""
from __future__ import annotations

import logging
import os
import time

import zmq

from .. import config
from ..protocol import wire
from ..protocol.schema import Key, Msg
from . import queries
from .clients import ClientPort
from .connfiles import ConnectionFiles, Where, public_host
from .dashboard import DashboardServer, DashboardStats, engine_states, snapshot
from .engine_port import EnginePort
from .hub import Hub
from .loop import Loop, RouterLayout
from .registry import Registry
from .restore import SavedController, identity, take_back_tasks
from .router import Router
from .scheduler import SCHEDULERS
from .taskdb import open_db

log = logging.getLogger("mpihub.controller")


class Controller(RouterLayout):
    def __init__(self, ip: str | None = None, cluster_id: str | None = None, profile_dir=None,
                 scheduler: str = "leastload", key: str | None = None, owner_pid: int | None = None,
                 hwm: int | None = None, curve: bool = False, db: str = "memory", restore: bool = False,
                 dashboard: int | None = None):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; available: {sorted(SCHEDULERS)}")
        self.saved, key, ip, self.cluster_keys = identity(restore, db, profile_dir, cluster_id, "", key, ip, curve)
        self.loop = Loop(key, self.cluster_keys.for_role("server") if self.cluster_keys else None)
        self.where = Where(ip, cluster_id or "", profile_dir, owner_pid)
        self.hub = Hub(config.STORE_BYTES, config.MAX_RECORDS, open_db(db, key, profile_dir, cluster_id))
        self.scheduler_name = scheduler
        self.hwm = hwm
        self.files = ConnectionFiles(self.where, key, self.cluster_keys)
        self.dashboard = DashboardServer(ip, dashboard) if dashboard is not None else None
        self._next_snapshot = 0.0

    def assemble(self, sockets: dict[str, zmq.Socket]) -> None:
        """Build the parts around the ``client`` and ``engine`` sockets."""
        self.clients = ClientPort(self.loop, sockets["client"], self._connect_fields, self.from_client)
        engine_port = EnginePort(sockets["engine"], wire.DropLog(log, "the engine socket"))
        self.router = Router(self.loop, self.hub, self.clients, engine_port, ("direct", "task"),
                             self.scheduler_name, self.hwm)
        self.registry = Registry(self.loop, self.hub, self.clients, engine_port, self.where, self)
        self.loop.on(sockets["client"], self.clients.on_frames)
        self.loop.on(sockets["engine"], self.on_engine)
        self.loop.add_timer(self.router)
        if self.dashboard:
            self.router.stats = DashboardStats()
            self.loop.add_timer(self)

    def start(self) -> None:
        fixed = self.saved.ports if self.saved else {}
        sockets, ports = self.loop.bind_routers(self.where.ip, ("client", "engine"), fixed)
        self.assemble(sockets)
        ports["heartbeat"] = self.registry.start_heartbeat(fixed.get("heartbeat"))
        if self.saved:
            engines = self.registry.reload()
            log.info("restored from %s: %d engines expected back, %d unfinished tasks", self.hub.db.path, engines,
                     take_back_tasks(self.router))
        if self.hub.db:
            SavedController(self.loop.key, self.where.ip, ports, self.cluster_keys).save(self.hub.db)
        url = None
        if self.dashboard:
            self.dashboard.start()
            self.wake()
            url = self.dashboard.url(public_host(self.where.ip))
            log.info("dashboard at %s", url)
        self.files.write_engine_and_client(ports, url)
        log.info("controller %s listening on %s (one process; scheduler %s, hwm %d%s; tasks stored %s; pid %d)",
                 self.where.cluster_id or "(default)", self.where.ip, self.scheduler_name,
                 self.router.tasks.scheduler.hwm, ", CURVE encryption" if self.loop.curve else "",
                 self.hub.db.path if self.hub.db else "in memory", os.getpid())

    def shut_down(self) -> None:
        self.registry.stop()
        self.files.remove()

    # -- messages -----------------------------------------------------------------------

    def _connect_fields(self) -> dict:
        return {Key.ENGINES: list(self.hub.engine_table().values()), Key.SCHEDULER: self.scheduler_name}

    def other_client_message(self, ident: bytes, msg: wire.Message) -> bool:
        if msg.type != Msg.QUERY:
            return False
        self.clients.send(ident, queries.answer_here(self.router, self, ident, msg.header))
        return True

    def other_engine_message(self, uuid: bytes, engine_id: int | None, msg: wire.Message) -> bool:
        return self.registry.from_engine(uuid, engine_id, msg)

    # -- engines coming and going (the registry's events) -------------------------------------

    def engine_joined(self, engine_id: int) -> None:
        self.registry.announce(engine_id)
        self.router.engine_added(engine_id)

    def engine_released(self, engine_id: int, why: str) -> None:
        self.router.engine_lost(engine_id, why)

    def engine_rejoined(self, engine_id: int, report: dict) -> dict:
        return self.router.engine_rejoined(engine_id, report)

    def register_fields(self) -> dict:
        return {}

    # -- the dashboard (a timer of the loop) -----------------------------------------------------

    def next_wakeup(self) -> float:
        return self._next_snapshot

    def wake(self) -> None:
        """Hand the dashboard a fresh snapshot (once a second)."""
        now = time.time()
        self._next_snapshot = now + 1.0
        self.dashboard.snapshot = snapshot(now, self.where.cluster_id, engine_states(self.hub.engines, now),
                                           self.hub.queue_status(), self.router.stats.part(now))


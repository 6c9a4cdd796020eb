"""The single-process controller: the Hub, the direct path and the task path in one loop.

One thread polls the client ROUTER, the engine ROUTER and an inproc pair from the
heartbeat monitor; engines register on the socket their requests come from, and every
query is answered from the one Hub. This is the default layout (see
:mod:`.hubserver` for the split one, and docs/architecture.md for the benchmark that chose).
"""
from __future__ import annotations

import logging
import os
import secrets
import time

from ..protocol.curve import ClusterKeys
from . import restore as restore_state
from .dashboard import DashboardServer, DashboardStats
from .dashboard import snapshot as dashboard_snapshot
from .registrar import Registrar
from .restore import RestoreError, SavedController
from .router import Router
from .taskdb import db_path, open_db

log = logging.getLogger("mpihub.controller")


class Controller(Registrar, Router):
    """With ``restore``, take back the state a controller of the same cluster left in
    its durable store: its keys, ports, engines (until they register again or fall
    silent) and unfinished tasks (see :mod:`.restore`)."""

    def __init__(self, ip: str = "127.0.0.1", cluster_id: str | None = None, profile_dir=None,
                 scheduler: str = "leastload", key: str | None = None, owner_pid: int | None = None,
                 hwm: int | None = None, curve: bool = False, db: str = "memory", restore: bool = False,
                 dashboard: int | None = None):
        self.saved: SavedController | None = None
        if restore:
            if db != "sqlite":
                raise RestoreError("--restore takes back what the task store kept: it needs --db sqlite")
            self.saved = restore_state.load(db_path(profile_dir, cluster_id))
            key, ip, self.cluster_keys = self.saved.key, self.saved.ip, self.saved.curve
        else:
            self.cluster_keys = ClusterKeys.new() if curve else None
            key = key or secrets.token_hex(32)
        super().__init__(key, ("direct", "task"), scheduler, hwm,
                         self.cluster_keys.for_role("server") if self.cluster_keys else None,
                         open_db(db, key, profile_dir, cluster_id))
        self.ip = ip
        self.cluster_id = cluster_id or ""
        self.profile_dir = profile_dir
        self.owner_pid = owner_pid
        self.scheduler = self.tasks.scheduler
        self.dashboard = DashboardServer(self.ip, dashboard) if dashboard is not None else None
        self._next_snapshot = 0.0
        if self.dashboard:
            self.stats = DashboardStats()

    def start(self) -> None:
        fixed = self.saved.ports if self.saved else {}
        ports = self._bind_routers(self.ip, ("client", "engine"), fixed)
        self._handle(self.client_sock, self._on_client)
        self._handle(self.engine_sock, self._on_engine)
        ports["heartbeat"] = self._start_heartbeat(fixed.get("heartbeat"))
        if self.saved:
            self._restore()
        if self.hub.db:
            SavedController(self.key, self.ip, ports, self.cluster_keys).save(self.hub.db)
        if self.dashboard:
            self.dashboard.start()
            self._publish()
            log.info("dashboard at %s", self._dashboard_url())
        self._write_connection_files(ports)
        log.info("controller %s listening on %s (one process; scheduler %s, hwm %d%s; tasks stored %s; pid %d)",
                 self.cluster_id or "(default)", self.ip, self.scheduler_name, self.scheduler.hwm,
                 ", CURVE encryption" if self.curve else "", self.hub.db.path if self.hub.db else "in memory",
                 os.getpid())

    def _restore(self) -> None:
        """The engines of the controller before, each expected to register again, and
        its unfinished tasks."""
        engines = self.hub.db.engines()
        for engine in engines:
            self.hub.restore_engine(engine.id, engine.uuid, engine.info, engine.registered)
            self.monitor.expect(engine.uuid)
        self.hub.restore_next_id(int(self.hub.db.meta("next_engine_id") or 0))
        tasks = self._restore_tasks()
        log.info("restored from %s: %d engines expected back, %d unfinished tasks", self.hub.db.path, len(engines),
                 tasks)

    def close(self) -> None:
        self._stop_registration()
        if self.dashboard:
            self.dashboard.stop()
        super().close()
        log.info("controller stopped")

    # -- the dashboard ------------------------------------------------------------------

    def _next_wakeup(self) -> float | None:
        deadline = super()._next_wakeup()
        if not self.dashboard:
            return deadline
        return self._next_snapshot if deadline is None else min(deadline, self._next_snapshot)

    def _wake(self) -> None:
        super()._wake()
        if self.dashboard and time.time() >= self._next_snapshot:
            self._publish()

    def _publish(self) -> None:
        """Hand the dashboard a fresh snapshot (once a second)."""
        now = time.time()
        self._next_snapshot = now + 1.0
        engines = [{**rec.describe(), "state": "rejoining" if rec.rejoining else "retired" if rec.retired
                    else "running"} for _, rec in sorted(self.hub.engines.items())]
        self.dashboard.snapshot = dashboard_snapshot(now, self.cluster_id, engines, self.hub.queue_status(),
                                                     self.stats.part(now))

    def _connect_fields(self) -> dict:
        return {"engines": list(self.hub.engine_table().values()), "scheduler": self.scheduler_name}

    def _client_message(self, ident: bytes, msg) -> None:
        if msg.type == "query":
            self._query(ident, msg)
        else:
            super()._client_message(ident, msg)

    def _on_engine_other(self, uuid: bytes, engine_id: int | None, msg) -> None:
        if msg.type == "register":
            self._register(uuid, msg.header)
        elif msg.type == "unregister" and engine_id is not None:
            self._engine_gone(engine_id, "unregistered")
        else:
            super()._on_engine_other(uuid, engine_id, msg)

    def _engine_joined(self, engine_id: int) -> None:
        self._announce(engine_id)
        self._engine_added(engine_id)

    def _engine_released(self, engine_id: int, why: str) -> None:
        self._forget_engine(engine_id, why)

    # -- queries ----------------------------------------------------------------------

    def _op_queue_status(self, ident: bytes, header: dict) -> dict:
        return self.answer_queue_status(header.get("targets"), bool(header.get("verbose")))

    def _op_db_query(self, ident: bytes, header: dict) -> list:
        return self.answer_db_query(header["query"], header.get("keys"))

    def _op_purge(self, ident: bytes, header: dict) -> list:
        return self.answer_purge(header.get("ids"), header.get("targets"))

    def _op_result(self, ident: bytes, header: dict) -> dict:
        return self.answer_result(ident, header["ids"])

    def _op_abort(self, ident: bytes, header: dict) -> list:
        removed, by_engine = self.answer_abort(list(header["ids"]))
        self._interrupt(by_engine, bool(header.get("interrupt")))
        return removed

    def _op_resubmit(self, ident: bytes, header: dict) -> list:
        """Run stored requests again as new load-balanced tasks with the given ids."""
        renames = resubmit_renames(header)
        found = self.answer_requests(renames)
        missing = [m for m in renames if m not in found]
        if missing:
            raise KeyError(f"no stored request for {missing}")
        self.resubmit(ident, [(renames[old], found[old]) for old in renames])
        self.mark_resubmitted(renames)
        return list(renames.values())


def resubmit_renames(header: dict) -> dict[str, str]:
    """``{old_id: new_id}`` from a resubmit query (ValueError for a malformed one)."""
    old_ids, new_ids = header["ids"], header["new_ids"]
    if not isinstance(old_ids, list) or not isinstance(new_ids, list) or len(old_ids) != len(new_ids):
        raise ValueError("ids and new_ids must be lists of one length")
    if not all(isinstance(m, str) for m in (*old_ids, *new_ids)):
        raise TypeError("ids and new_ids must hold task ids (strings)")
    renames = dict(zip(old_ids, new_ids))
    if len(renames) != len(old_ids) or len(set(new_ids)) != len(new_ids):
        raise ValueError("ids and new_ids must not repeat")
    return renames

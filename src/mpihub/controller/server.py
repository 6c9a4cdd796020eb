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

from ..protocol.curve import ClusterKeys
from .registrar import Registrar
from .router import Router
from .taskdb import open_db

log = logging.getLogger("mpihub.controller")


class Controller(Registrar, Router):
    def __init__(self, ip: str = "127.0.0.1", cluster_id: str | None = None, profile_dir=None,
                 scheduler: str = "leastload", key: str | None = None, owner_pid: int | None = None,
                 hwm: int | None = None, curve: bool = False, db: str = "memory"):
        self.cluster_keys = ClusterKeys.new() if curve else None
        key = key or secrets.token_hex(32)
        super().__init__(key, ("direct", "task"), scheduler, hwm, self.cluster_keys.for_role("server") if curve else None,
                         open_db(db, key, profile_dir, cluster_id))
        self.ip = ip
        self.cluster_id = cluster_id or ""
        self.profile_dir = profile_dir
        self.owner_pid = owner_pid
        self.scheduler = self.tasks.scheduler

    def start(self) -> None:
        ports = self._bind_routers(self.ip, ("client", "engine"))
        self._handle(self.client_sock, self._on_client)
        self._handle(self.engine_sock, self._on_engine)
        ports["heartbeat"] = self._start_heartbeat()
        self._write_connection_files(ports)
        log.info("controller %s listening on %s (one process; scheduler %s, hwm %d%s; tasks stored %s; pid %d)",
                 self.cluster_id or "(default)", self.ip, self.scheduler_name, self.scheduler.hwm,
                 ", CURVE encryption" if self.curve else "", self.hub.db.path if self.hub.db else "in memory",
                 os.getpid())

    def close(self) -> None:
        self._stop_registration()
        super().close()
        log.info("controller stopped")

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
        return list(renames.values())


def resubmit_renames(header: dict) -> dict[str, str]:
    """``{old_id: new_id}`` from a resubmit query (ValueError for a malformed one)."""
    old_ids, new_ids = header["ids"], header["new_ids"]
    if not isinstance(old_ids, list) or not isinstance(new_ids, list) or len(old_ids) != len(new_ids):
        raise ValueError("ids and new_ids must be lists of one length")
    renames = dict(zip(old_ids, new_ids))
    if len(renames) != len(old_ids) or len(set(new_ids)) != len(new_ids):
        raise ValueError("ids and new_ids must not repeat")
    return renames

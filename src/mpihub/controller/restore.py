"""A controller restarted with ``--restore``: what it takes back, in one place.

A controller with a durable store (``--db sqlite``) writes there what engines and
clients need to find it again: its signing key, its CURVE keys, the address and ports
it listens on. Restarted with ``--restore``, it binds the very same ports with the
same keys, so engines and clients, whose ZMQ sockets keep reconnecting, reach it
again without reading a new connection file; engines then register again under
their ids, and unfinished tasks are taken back (see docs/reliability.md). Every
layout starts through :func:`identity`, and takes engines and tasks back with
:func:`reload_engines` and :func:`take_back_tasks`.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..protocol import wire
from ..protocol.curve import ClusterKeys
from .taskdb import TaskDB, db_path

if TYPE_CHECKING:
    from .hub import Hub
    from .router import Router

#: The meta row that holds the state below.
STATE = "controller"


class RestoreError(RuntimeError):
    """There is nothing to restore, or it cannot be restored."""


@dataclass
class SavedController:
    key: str
    ip: str
    ports: dict[str, int]
    curve: ClusterKeys | None = None

    def save(self, db: TaskDB) -> None:
        db.set_meta(STATE, json.dumps({"key": self.key, "ip": self.ip, "ports": self.ports,
                                       "curve": self.curve.as_info() if self.curve else None}))


def load(path: Path) -> SavedController:
    """The state a controller left in the store at ``path`` (RestoreError if none)."""
    if not path.exists():
        raise RestoreError(f"nothing to restore: there is no task store at {path} (the controller to restore "
                           "must have run with --db sqlite, under the same profile and cluster id)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE name = ?", (STATE,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise RestoreError(f"cannot read the task store {path}: {exc}") from exc
    finally:
        db.close()
    if row is None:
        raise RestoreError(f"nothing to restore: the task store {path} holds no controller state")
    state = json.loads(row[0])
    curve = ClusterKeys.from_info(state["curve"]) if state.get("curve") else None
    return SavedController(state["key"], state["ip"], {k: int(v) for k, v in state["ports"].items()}, curve)


def identity(restore: bool, db: str, profile_dir, cluster_id: str | None, part: str = "", key: str | None = None,
             ip: str | None = None, curve: bool = False) -> tuple[SavedController | None, str, str, ClusterKeys | None]:
    """``(saved, key, ip, cluster_keys)`` of a controller process starting: those it had
    before when it restores (RestoreError if it cannot), else new ones. A restore binds
    the address it had unless given another (a restore on another node), and the same
    ports either way; ``ip`` defaults to 127.0.0.1."""
    if restore:
        if db != "sqlite":
            raise RestoreError("--restore takes back what the task store kept: it needs --db sqlite")
        saved = load(db_path(profile_dir, cluster_id, part))
        return saved, saved.key, ip or saved.ip, saved.curve
    return None, key or secrets.token_hex(32), ip or "127.0.0.1", ClusterKeys.new() if curve else None


def reload_engines(hub: "Hub", expect: Callable[[bytes], None] | None = None) -> int:
    """Put back the engines of the store in ``hub``'s table as rejoining ones, each
    ``expect``-ed back (by the heartbeat monitor, where there is one); returns how many."""
    engines = hub.db.engines()
    for engine in engines:
        hub.restore_engine(engine.id, engine.uuid, engine.info, engine.registered)
        if expect is not None:
            expect(engine.uuid)
    hub.restore_next_id(int(hub.db.meta("next_engine_id") or 0))
    return len(engines)


def take_back_tasks(router: "Router") -> int:
    """Take back the unfinished tasks of the store, once the engines are back in the
    table (as rejoining ones); returns how many. A task whose engine is not in the
    table, or whose request was too large to keep, fails saying so."""
    hub, restored = router.hub, []
    for task in hub.db.pending_tasks():
        client = bytes.fromhex(task.client) if task.client else b""
        record = hub.restore_task(task.msg_id, task.queue, client, task.submitted, task.engine_id, task.request,
                                  task.nbytes)
        restored.append((record, task))
    for engine_id in hub.engines:
        router.engine_added(engine_id)
    for record, task in restored:
        if record.queue == "task" and task.request is not None and router.tasks:
            router.tasks.restore(record.msg_id, wire.unpack(router.signer, task.request))
        elif record.engine_id is None:
            why = (f"engine {task.engine_id} was not in its table" if record.queue == "direct"
                   else "its request was too large to keep")
            router.fail(record.msg_id, task.engine_id, "error", "EngineError",
                        f"task {record.msg_id} was lost in the controller restart: {why}")
    return len(restored)

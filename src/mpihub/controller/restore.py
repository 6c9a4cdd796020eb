"""What a controller keeps in its task store to be restarted with ``--restore``.

A controller with a durable store (``--db sqlite``) writes there what engines and
clients need to find it again: its HMAC key, its CURVE keys, the address and ports
it listens on. Restarted with ``--restore``, it binds the very same ports with the
same keys, so engines and clients, whose ZMQ sockets keep reconnecting, reach it
again without reading a new connection file; engines then register again under
their ids (see docs/reliability.md).
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..protocol.curve import ClusterKeys
from .taskdb import TaskDB

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

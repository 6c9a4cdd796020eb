"""Following a controller that moved: restored with ``--restore`` on another node.

A restored controller keeps its key and ports but, on another host, listens at other
addresses; it rewrites the connection file on the shared file system. An engine whose
controller has gone silent looks at that file (at most once a second, and only while
silent): when it names other engine or heartbeat addresses under the same key, the
engine points its sockets there and registers again under its id.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..protocol import connection, reach

log = logging.getLogger("mpihub.engine.follow")

#: Seconds between two looks at the connection file while the controller is silent.
LOOK_EVERY = 1.0


@dataclass(frozen=True)
class Move:
    """Where the controller is now: its connection info and the engine and heartbeat
    URLs to use (the first engine address that accepts, and the heartbeat on its host)."""

    info: dict
    engine_url: str
    heartbeat_url: str


def addresses(info: dict) -> tuple[list[str], list[str]]:
    """Every engine URL that ``info`` lists (its primary one first) and every heartbeat URL."""
    candidates = info.get("candidates", {})
    engines = candidates.get("engine") or [info["engine"]]
    if info["engine"] in engines:
        engines = [info["engine"]] + [u for u in engines if u != info["engine"]]
    return engines, candidates.get("heartbeat") or [info["heartbeat"]]


def heartbeat_beside(engine_url: str, info: dict) -> str:
    """The heartbeat URL on the host of ``engine_url``."""
    host = engine_url.rsplit(":", 1)[0]
    return next((h for h in addresses(info)[1] if h.rsplit(":", 1)[0] == host), info["heartbeat"])


def choose(info: dict, probe_timeout: float = reach.PROBE_TIMEOUT) -> Move:
    """The engine URL that answers first and the heartbeat URL on its host."""
    url = reach.reachable_first(addresses(info)[0], probe_timeout)[0]
    return Move(info, url, heartbeat_beside(url, info))


class ControllerFile:
    """The connection file an engine was started from, watched for a moved controller."""

    def __init__(self, path: str | os.PathLike, info: dict):
        self.path = Path(path)
        self.key = info["key"]
        self.current = addresses(info)
        self._seen = self._stamp()
        self._next_look = 0.0

    def _stamp(self) -> tuple | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def moved(self) -> Move | None:
        """A :class:`Move` when the file now names other addresses under the same key;
        None otherwise (unchanged, gone, half-written elsewhere, another cluster's key)."""
        now = time.monotonic()
        if now < self._next_look:
            return None
        self._next_look = now + LOOK_EVERY
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return None
        self._seen = stamp
        try:
            info = connection.check(json.loads(self.path.read_text()), str(self.path))
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s while looking for the controller: %s", self.path, exc)
            return None
        if info["key"] != self.key or addresses(info) == self.current:
            return None
        move = choose(info)
        self.current = addresses(info)
        log.warning("the controller moved: %s names %s now", self.path, move.engine_url)
        return move

"""The live dashboard (``mpihub controller --dashboard PORT``): a page and its JSON.

The controller's loop keeps the counts (:class:`DashboardStats`: tasks finished per
second, the last failures) and, once a second, hands a snapshot of them and of its
engine table to the web server. The server (tornado, in a thread of its own, bound on
the controller's address) only ever reads the latest snapshot, so a page being read
never slows a task. A random token, written to the 0600 client connection file, is
needed for both the page and the JSON, as the data names every task's failure.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import tornado.httpserver
import tornado.netutil
import tornado.web

from ..protocol.schema import Key

if TYPE_CHECKING:
    from .records import EngineRecord

log = logging.getLogger("mpihub.controller.dashboard")

#: Seconds of throughput history shown, one count per second.
HISTORY = 300
#: Failures kept for the page, newest first.
FAILURES = 50

PAGE = Path(__file__).with_name("dashboard.html")


class DashboardStats:
    """Counts the controller keeps for the dashboard (pure; the loop thread only)."""

    def __init__(self, now: float | None = None):
        self._second = int(now if now is not None else time.time())
        self._counts: deque[tuple[int, int]] = deque(maxlen=HISTORY)  # (second, tasks finished in it)
        self._current = 0
        self.finished = 0
        self.failed = 0
        self.failures: deque[dict] = deque(maxlen=FAILURES)

    def task_finished(self, now: float, header: dict, engine_id: int | None) -> None:
        second = int(now)
        if second != self._second:
            self._roll(second)
        self._current += 1
        self.finished += 1
        if header.get(Key.STATUS) not in (None, "ok"):
            self.failed += 1
            self.failures.appendleft({"msg_id": header.get(Key.ID), "engine_id": engine_id, "time": now,
                                      "status": header.get(Key.STATUS), "ename": header.get(Key.ENAME),
                                      "evalue": str(header.get(Key.EVALUE, ""))[:300]})

    def _roll(self, second: int) -> None:
        self._counts.append((self._second, self._current))
        for empty in range(max(self._second + 1, second - HISTORY), second):
            self._counts.append((empty, 0))
        self._second, self._current = second, 0

    def throughput(self, now: float) -> list[list[int]]:
        """``[[second, tasks finished in it], ...]`` up to ``now``'s second (so far)."""
        if int(now) != self._second:
            self._roll(int(now))
        return [list(pair) for pair in self._counts][-(HISTORY - 1):] + [[self._second, self._current]]

    def part(self, now: float) -> dict:
        """The counts, as plain JSON (a split controller's paths each send theirs)."""
        return {"finished": self.finished, "failed": self.failed, "throughput": self.throughput(now),
                "failures": list(self.failures)}


def merge_parts(parts: list[dict]) -> dict:
    """One :meth:`DashboardStats.part` from several (per second summed, failures newest first)."""
    per_second: dict[int, int] = {}
    for part in parts:
        for second, count in part["throughput"]:
            per_second[second] = per_second.get(second, 0) + count
    failures = sorted((f for part in parts for f in part["failures"]), key=lambda f: -f["time"])
    return {"finished": sum(p["finished"] for p in parts), "failed": sum(p["failed"] for p in parts),
            "throughput": [[s, per_second[s]] for s in sorted(per_second)][-HISTORY:], "failures": failures[:FAILURES]}


def engine_states(engines: dict[int, EngineRecord], now: float, joining: Iterable[int] = ()) -> list[dict]:
    """The engine table as the page shows it, each engine with its ``state``: joining (a
    split controller's paths have not all seen it), rejoining (expected back after a
    restart), retired (past its batch job's retirement time) or running. One function
    for both layouts, so that they cannot drift apart."""
    joining = set(joining)
    rows = []
    for engine_id, record in sorted(engines.items()):
        retire_at = record.info.get("retire_at")
        retired = record.retired or (isinstance(retire_at, (int, float)) and retire_at <= now)
        state = ("joining" if engine_id in joining else "rejoining" if record.rejoining
                 else "retired" if retired else "running")
        rows.append({**record.describe(), "state": state})
    return rows


def snapshot(now: float, cluster_id: str, engines: list[dict], status: dict, part: dict) -> dict:
    """Everything the page shows, as plain JSON: ``engines`` (the engine table, each
    with its ``state``), ``status`` (queue_status) and the counts."""
    rows = []
    for engine in engines:
        counts = status.get(engine["id"], {})
        rows.append({"id": engine["id"], "host": engine.get("hostname"), "pid": engine.get("pid"),
                     "mpi_rank": engine.get("mpi_rank"), "mpi_size": engine.get("mpi_size"),
                     "state": engine["state"], "queued": counts.get("queue", 0),
                     "running": counts.get("tasks", 0), "done": counts.get("completed", 0)})
    return {"cluster_id": cluster_id, "time": now, "engines": rows, "unassigned": status.get("unassigned", 0), **part}


class _Authorized(tornado.web.RequestHandler):
    def initialize(self, server: "DashboardServer"):
        self.server = server

    def prepare(self) -> None:
        if not hmac.compare_digest(self.get_argument("token", ""), self.server.token):
            raise tornado.web.HTTPError(403, "a valid token is needed: see the dashboard URL in the client file")


class _Page(_Authorized):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(self.server.page)


class _Status(_Authorized):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(self.server.snapshot))


class DashboardServer(threading.Thread):
    """The web server: ``/`` the page, ``/api/status`` the JSON (both ``?token=``)."""

    def __init__(self, ip: str, port: int):
        super().__init__(name="mpihub-dashboard", daemon=True)
        self.ip = "" if ip in ("0.0.0.0", "*") else ip
        self.token = secrets.token_urlsafe(24)
        self.page = PAGE.read_text()
        self.snapshot: dict = snapshot(time.time(), "", [], {}, merge_parts([]))  # every key, counts at 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._port = port
        self.port = 0
        self._failed: BaseException | None = None

    def start(self) -> None:
        """Start serving; returns once the port is bound (OSError if it cannot be)."""
        super().start()
        self._ready.wait(10)
        if self._failed is not None:
            raise self._failed

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}/?token={self.token}"

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        app = tornado.web.Application([(r"/", _Page, {"server": self}), (r"/api/status", _Status, {"server": self})])
        server = tornado.httpserver.HTTPServer(app)
        try:
            sockets = tornado.netutil.bind_sockets(self._port, self.ip or None)
        except OSError as exc:
            self._failed = exc
            self._ready.set()
            return
        server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopped.wait()
        server.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self.join(timeout=5)

"""One path of a split controller: the direct path or the task scheduler, in its own process.

It binds its own client and engine ROUTERs (on this machine's address, so it may run on
another host than the Hub), joins the Hub over TCP with the ``mpihub-hub`` connection
file, and then routes requests exactly as the single-process controller does. An
engine says hello on this path's socket after registering with the Hub; the path then
routes to it and tells the Hub, which announces the engine once every path has seen
it. The Hub's questions (queue status, records, results, aborts, resubmits) are
answered from this path's own records. The path pings the Hub and exits when the Hub
is gone: its process (``owner_pid``) ended, or it has not answered for
``MPIHUB_ENGINE_CONTROLLER_TIMEOUT`` seconds.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from pathlib import Path

import zmq

from .. import config
from ..process import pid_alive
from ..protocol import connection, wire
from ..protocol.curve import Curve
from . import merge
from . import restore as restore_state
from .dashboard import DashboardStats
from .restore import SavedController
from .router import Router
from .taskdb import db_path, open_db

log = logging.getLogger("mpihub.controller")


class PathServer(Router):
    def __init__(self, hub_info: dict, path: str, ip: str = "127.0.0.1", scheduler: str = "leastload",
                 hwm: int | None = None, owner_pid: int | None = None, profile_dir=None, restore: bool = False):
        if path not in ("direct", "task"):
            raise ValueError(f"a path is 'direct' or 'task', not {path!r}")
        kind, cluster_id = hub_info.get("db", "memory"), hub_info.get("cluster_id")
        #: with ``restore``, the ports the path had before a restart (its engines and clients dial them)
        self.saved = restore_state.load(db_path(profile_dir, cluster_id, path)) if restore else None
        super().__init__(hub_info["key"], (path,), scheduler, hwm, Curve.from_info(hub_info),
                         open_db(kind, hub_info["key"], profile_dir, cluster_id, path))
        self.hub_info = hub_info
        if hub_info.get("dashboard"):
            self.stats = DashboardStats()
        self.path = path
        self.ip = ip
        self.owner_pid = owner_pid
        self._next_ping = 0.0
        self._last_pong = time.monotonic()
        self._drop_hub = wire.DropLog(log, "the Hub link")

    def start(self, timeout: float = 30.0) -> None:
        ports = self._bind_routers(self.ip, ("client", "engine"), self.saved.ports if self.saved else None)
        self._handle(self.client_sock, self._on_client)
        self._handle(self.engine_sock, self._on_engine)
        if self.saved:
            for engine in self.hub.db.engines():
                self.hub.restore_engine(engine.id, engine.uuid, engine.info, engine.registered)
            log.info("%s path restored: %d engines expected back, %d unfinished tasks", self.path,
                     len(self.hub.engines), self._restore_tasks())
        if self.hub.db:
            SavedController(self.key, self.ip, ports).save(self.hub.db)
        _, candidates = connection.channel_urls(self.ip, ports)
        self.hub_sock = self._join(candidates, timeout)
        self._handle(self.hub_sock, self._on_hub)
        what = f"scheduler {self.scheduler_name}, hwm {self.tasks.scheduler.hwm}" if self.tasks else "direct requests"
        log.info("%s path listening on %s (%s, pid %d)", self.path, self.ip, what, os.getpid())

    def _join(self, candidates: dict[str, list[str]], timeout: float) -> zmq.Socket:
        """Say who we are at each of the Hub's addresses in turn; the first to accept wins."""
        urls = self.hub_info.get("candidates", {}).get("hub") or [self.hub_info["hub"]]
        wait = max(timeout, 0.5) / len(urls)
        join = {"t": "join", "path": self.path, "client": candidates["client"], "engine": candidates["engine"],
                "scheduler": self.scheduler_name if self.tasks else None, "pid": os.getpid(),
                "host": socket.gethostname()}
        for url in urls:
            sock = self.context.socket(zmq.DEALER)
            sock.hwm = 0
            if self.curve:
                self.curve.client(sock)
            sock.routing_id = f"path-{self.path}-{secrets.token_hex(6)}".encode()
            sock.linger = 0
            sock.connect(url)
            sock.send_multipart(wire.pack(self.signer, dict(join)))
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0 and sock.poll(left * 1000):
                try:
                    reply = wire.unpack(self.signer, sock.recv_multipart())
                except wire.ProtocolError:
                    continue
                if reply.type == "join_reply":
                    if not reply.header.get("ok"):
                        sock.close()
                        raise RuntimeError(f"the Hub at {url} refused this {self.path} path: {reply.header.get('error')}")
                    return sock
            sock.close()
        raise TimeoutError(f"no answer from a Hub at {', '.join(urls)} within {timeout:g} s")

    # -- timers -----------------------------------------------------------------------

    def _next_wakeup(self) -> float | None:
        deadline = super()._next_wakeup()
        return self._next_ping if deadline is None else min(deadline, self._next_ping)

    def _wake(self) -> None:
        super()._wake()
        now = time.time()
        if now < self._next_ping:
            return
        self._next_ping = now + config.HEARTBEAT_PERIOD
        wire.send(self.hub_sock, wire.pack(self.signer, {"t": "ping"}))
        if self.owner_pid is not None and not pid_alive(self.owner_pid):
            log.warning("the Hub's process %d is gone; the %s path stops", self.owner_pid, self.path)
            self._stopping = True
        elif time.monotonic() - self._last_pong > config.ENGINE_CONTROLLER_TIMEOUT:
            log.warning("the Hub has not answered for %g s; the %s path stops",
                        config.ENGINE_CONTROLLER_TIMEOUT, self.path)
            self._stopping = True

    # -- engines ------------------------------------------------------------------------

    def _on_engine_other(self, uuid: bytes, engine_id: int | None, msg: wire.Message) -> None:
        if msg.type != "hello":
            return super()._on_engine_other(uuid, engine_id, msg)
        claimed = msg.header["id"]
        if not isinstance(claimed, int):
            raise TypeError(f"hello names engine {claimed!r}, not an id")
        record = self.hub.engines.get(engine_id) if engine_id is not None else None
        if record is None:  # new here, or back after a network cut: what it holds is no longer its own
            settle = {"skip": sorted(wire.task_ids(msg.header.get("held")))}
            retire_at = msg.header.get("retire_at")
            info = {"retire_at": retire_at} if isinstance(retire_at, (int, float)) else {}
            record = self.hub.mirror_engine(claimed, uuid, info, time.time())
        elif record.rejoining:  # back after this path was restored
            record.rejoining = False
            settle = self._readopt(engine_id, msg.header)
        else:
            settle, record = {}, None  # a repeated hello
        reply = wire.pack(self.signer, {"t": "hello_reply", **settle})
        wire.send(self.engine_sock, [uuid, *reply])  # before any task
        if record is not None:
            self._engine_added(claimed)
        wire.send(self.hub_sock, wire.pack(self.signer, {"t": "engine_ready", "id": claimed}))

    # -- the Hub --------------------------------------------------------------------------

    def _on_hub(self, frames: list) -> None:
        self._routed([b"", *frames], self._drop_hub, self._from_hub)  # a DEALER: no identity frame

    def _from_hub(self, _: bytes, msg: wire.Message) -> None:
        kind = msg.type
        if kind == "pong":
            self._last_pong = time.monotonic()
        elif kind == "ask":
            self._answer(msg)
        elif kind == "engine_gone":
            self._forget_engine(msg.header["id"], str(msg.header.get("why", "is gone")))
        elif kind == "stop":
            log.info("the Hub stops the %s path", self.path)
            self._stopping = True
        else:
            self._drop_hub(f"unknown message type {kind!r}")

    def _answer(self, msg: wire.Message) -> None:
        header = msg.header
        answer: dict = {"t": "answer", "qid": header.get("qid"), "ok": True}
        buffers: list = []
        try:
            answer["result"], buffers = self._answer_op(header["op"], header, msg.buffers)
        except (KeyError, TypeError, ValueError) as exc:
            answer.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug here must answer, not leave the client waiting
            log.exception("question %r failed", header.get("op"))
            answer.update(ok=False, error=f"internal error in the {self.path} path: {type(exc).__name__}: {exc}")
        wire.send(self.hub_sock, wire.pack(self.signer, answer, b"", buffers))

    def _answer_op(self, op: str, header: dict, buffers: list) -> tuple[object, list]:
        if op == "queue_status":
            return self.answer_queue_status(header.get("targets"), bool(header.get("verbose"))), []
        if op == "stats":  # for the dashboard
            if self.stats is None:
                raise ValueError("this controller serves no dashboard")
            return {"status": self.hub.queue_status(), "stats": self.stats.part(time.time())}, []
        if op == "db_query":
            return self.answer_db_query(header["query"], header.get("keys")), []
        if op == "purge":
            return self.answer_purge(header.get("ids"), header.get("targets")), []
        if op == "result":
            return self.answer_result(header["who"], header["ids"]), []
        if op == "abort":
            removed, running = self.answer_abort(list(header["ids"]))
            return {"removed": removed, "running": running}, []
        if op == "requests":
            found = self.answer_requests(header["renames"])
            return [[old, len(frames)] for old, frames in found.items()], [f for fs in found.values() for f in fs]
        if op == "resubmit":
            self.resubmit(header["who"], list(merge.frames_by_id(header["runs"], buffers).items()))
            return None, []
        if op == "resubmitted":
            renames = header["renames"]
            if not isinstance(renames, dict) or not all(isinstance(v, str) for v in renames.values()):
                raise TypeError(f"renames must map task ids to task ids, not {renames!r}")
            self.mark_resubmitted(renames)
            return None, []
        raise ValueError(f"unknown question {op!r}")


def main(url_file: str | None, cluster_id: str | None, profile_dir: str | None, path: str, ip: str,
         scheduler: str, hwm: int | None, owner_pid: int | None, timeout: float, restore: bool = False) -> int:
    """Entry point of ``mpihub scheduler``: join the Hub named by the hub connection file."""
    file = url_file or connection.connection_file("hub", cluster_id, profile_dir)
    for handler in logging.getLogger().handlers:  # its lines share the controller's log: say whose they are
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(name)s [{path} path] %(levelname)s: %(message)s"))
    server = None
    try:
        server = PathServer(connection.read(file, timeout=timeout), path, ip, scheduler, hwm, owner_pid,
                            Path(file).parent.parent, restore)
        server.start(timeout)
    except (FileNotFoundError, TimeoutError, RuntimeError, ValueError) as exc:
        print(f"mpihub scheduler: {exc}", file=sys.stderr)
        if server is not None:
            server.close()
        return 1
    server.serve_forever()
    return 0

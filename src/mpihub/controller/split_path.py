"""One path of a split controller: the direct path or the task scheduler, in its own process.

It binds its own client and engine ROUTERs (on this machine's address, so it may run on
another host than the Hub), joins the Hub over TCP with the ``mpihub-hub`` connection
file, and then routes requests with a :class:`~.router.Router` for its one path, exactly
as the one-process controller does. An engine says hello on this path's socket after
registering with the Hub; the path then routes to it and tells the Hub, which announces
the engine once every path has seen it. The Hub's questions are answered from this
path's own records (:data:`.queries.ANSWERS`). The path pings the Hub and exits when the
Hub is gone: its process (``owner_pid``) ended, or it has not answered for
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
from ..protocol.schema import Key, Msg
from . import queries
from .clients import ClientPort
from .dashboard import DashboardStats
from .engine_port import EnginePort
from .hub import Hub
from .loop import Loop, RouterLayout
from .restore import SavedController, load, reload_engines, take_back_tasks
from .router import Router
from .taskdb import db_path, open_db

log = logging.getLogger("mpihub.controller")


class SplitPath(RouterLayout):
    def __init__(self, hub_info: dict, path: str, ip: str = "127.0.0.1", scheduler: str = "leastload",
                 hwm: int | None = None, owner_pid: int | None = None, profile_dir=None, restore: bool = False):
        if path not in ("direct", "task"):
            raise ValueError(f"a path is 'direct' or 'task', not {path!r}")
        kind, cluster_id = hub_info.get("db", "memory"), hub_info.get("cluster_id")
        #: with ``restore``, the ports the path had before a restart (its engines and clients dial them)
        self.saved = load(db_path(profile_dir, cluster_id, path)) if restore else None
        self.loop = Loop(hub_info["key"], Curve.from_info(hub_info))
        self.hub = Hub(config.STORE_BYTES, config.MAX_RECORDS,
                       open_db(kind, hub_info["key"], profile_dir, cluster_id, path))
        self.hub_info = hub_info
        self.path = path
        self.name = f"the {path} path"
        self.ip = ip
        self.scheduler_name = scheduler
        self.hwm = hwm
        self.owner_pid = owner_pid
        self.hub_sock: zmq.Socket | None = None
        self._next_ping = 0.0
        self._last_pong = time.monotonic()
        self._drop_hub = wire.DropLog(log, "the Hub link")

    def assemble(self, sockets: dict[str, zmq.Socket]) -> None:
        """Build the parts around the ``client`` and ``engine`` sockets."""
        self.clients = ClientPort(self.loop, sockets["client"], lambda: {}, self.from_client)
        engine_port = EnginePort(sockets["engine"], wire.DropLog(log, "the engine socket"))
        self.router = Router(self.loop, self.hub, self.clients, engine_port, (self.path,), self.scheduler_name,
                             self.hwm)
        if self.hub_info.get("dashboard"):
            self.router.stats = DashboardStats()
        self.loop.on(sockets["client"], self.clients.on_frames)
        self.loop.on(sockets["engine"], self.on_engine)
        self.loop.add_timer(self.router)
        self.loop.add_timer(self)

    def start(self, timeout: float = 30.0) -> None:
        sockets, ports = self.loop.bind_routers(self.ip, ("client", "engine"), self.saved.ports if self.saved else None)
        self.assemble(sockets)
        if self.saved:
            engines = reload_engines(self.hub)
            log.info("%s path restored: %d engines expected back, %d unfinished tasks", self.path, engines,
                     take_back_tasks(self.router))
        if self.hub.db:
            SavedController(self.loop.key, self.ip, ports).save(self.hub.db)
        _, candidates = connection.channel_urls(self.ip, ports)
        self.hub_sock = self._join(candidates, timeout)
        self.loop.on(self.hub_sock, self.on_hub)
        tasks = self.router.tasks
        what = f"scheduler {self.scheduler_name}, hwm {tasks.scheduler.hwm}" if tasks else "direct requests"
        log.info("%s path listening on %s (%s, pid %d)", self.path, self.ip, what, os.getpid())

    def _join(self, candidates: dict[str, list[str]], timeout: float) -> zmq.Socket:
        """Say who we are at each of the Hub's addresses in turn; the first to accept wins."""
        urls = self.hub_info.get("candidates", {}).get("hub") or [self.hub_info["hub"]]
        wait = max(timeout, 0.5) / len(urls)
        join = {Key.TYPE: Msg.JOIN, Key.PATH: self.path, Key.CLIENT_URLS: candidates["client"],
                Key.ENGINE: candidates["engine"],
                Key.SCHEDULER: self.scheduler_name if self.path == "task" else None, Key.PID: os.getpid(),
                Key.HOST: socket.gethostname()}
        for url in urls:
            sock = self.loop.context.socket(zmq.DEALER)
            sock.hwm = 0
            if self.loop.curve:
                self.loop.curve.client(sock)
            sock.routing_id = f"path-{self.path}-{secrets.token_hex(6)}".encode()
            sock.linger = 0
            sock.connect(url)
            sock.send_multipart(wire.pack(self.loop.signer, dict(join)))
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0 and sock.poll(left * 1000):
                try:
                    reply = wire.unpack(self.loop.signer, sock.recv_multipart())
                except wire.ProtocolError:
                    continue
                if reply.type == Msg.JOIN_REPLY:
                    if not reply.header.get(Key.OK):
                        sock.close()
                        raise RuntimeError(f"the Hub at {url} refused this {self.path} path: "
                                           f"{reply.header.get(Key.ERROR)}")
                    return sock
            sock.close()
        raise TimeoutError(f"no answer from a Hub at {', '.join(urls)} within {timeout:g} s")

    # -- pinging the Hub (a timer of the loop) --------------------------------------------

    def next_wakeup(self) -> float:
        return self._next_ping

    def wake(self) -> None:
        self._next_ping = time.time() + config.HEARTBEAT_PERIOD
        wire.send(self.hub_sock, wire.pack(self.loop.signer, {Key.TYPE: Msg.PING}))
        if self.owner_pid is not None and not pid_alive(self.owner_pid):
            log.warning("the Hub's process %d is gone; the %s path stops", self.owner_pid, self.path)
            self.loop.stopping = True
        elif time.monotonic() - self._last_pong > config.ENGINE_CONTROLLER_TIMEOUT:
            log.warning("the Hub has not answered for %g s; the %s path stops",
                        config.ENGINE_CONTROLLER_TIMEOUT, self.path)
            self.loop.stopping = True

    # -- clients and engines ---------------------------------------------------------------

    def other_engine_message(self, uuid: bytes, engine_id: int | None, msg: wire.Message) -> bool:
        if msg.type != Msg.HELLO:
            return False
        self._hello(uuid, engine_id, msg.header)
        return True

    def _hello(self, uuid: bytes, engine_id: int | None, header: dict) -> None:
        """An engine that registered with the Hub greets this path: route to it from now
        on (after a restore, settle the tasks it had first) and tell the Hub."""
        claimed = header[Key.ID]
        if not isinstance(claimed, int):
            raise TypeError(f"hello names engine {claimed!r}, not an id")
        record = self.hub.engines.get(engine_id) if engine_id is not None else None
        if record is None:  # new here, or back after a network cut: what it holds is no longer its own
            settle = {Key.SKIP: sorted(wire.task_ids(header.get(Key.HELD)))}
            retire_at = header.get(Key.RETIRE_AT)
            info = {Key.RETIRE_AT: retire_at} if isinstance(retire_at, (int, float)) else {}
            record = self.hub.mirror_engine(claimed, uuid, info, time.time())
        elif record.rejoining:  # back after this path was restored
            record.rejoining = False
            settle = self.router.engine_rejoined(engine_id, header)
        else:
            settle, record = {}, None  # a repeated hello
        self.router.engine_port.send(uuid, wire.pack(self.loop.signer, {Key.TYPE: Msg.HELLO_REPLY, **settle}))
        if record is not None:
            self.router.engine_added(claimed)
        wire.send(self.hub_sock, wire.pack(self.loop.signer, {Key.TYPE: Msg.ENGINE_READY, Key.ID: claimed}))

    # -- the Hub --------------------------------------------------------------------------

    def on_hub(self, frames: list) -> None:
        self.loop.routed([b"", *frames], self._drop_hub, self._from_hub)  # a DEALER: no identity frame

    def _from_hub(self, _: bytes, msg: wire.Message) -> None:
        kind = msg.type
        if kind == Msg.PONG:
            self._last_pong = time.monotonic()
        elif kind == Msg.ASK:
            self._answer(msg)
        elif kind == Msg.ENGINE_GONE:
            self.router.engine_lost(msg.header[Key.ID], str(msg.header.get(Key.WHY, "is gone")))
        elif kind == Msg.STOP:
            log.info("the Hub stops the %s path", self.path)
            self.loop.stopping = True
        else:
            self._drop_hub(f"unknown message type {kind!r}")

    def _answer(self, msg: wire.Message) -> None:
        header = msg.header
        answer: dict = {Key.TYPE: Msg.ANSWER, Key.QUESTION_ID: header.get(Key.QUESTION_ID), Key.OK: True}
        buffers: list = []
        try:
            answer[Key.RESULT], buffers = queries.answer(self.router, header[Key.OP], header, msg.buffers)
        except Exception as exc:  # noqa: BLE001 - a bug here must answer, not leave the client waiting
            answer.update({Key.OK: False, Key.ERROR: queries.refusal(header.get(Key.OP), exc, f"the {self.path} path")})
        wire.send(self.hub_sock, wire.pack(self.loop.signer, answer, b"", buffers))


def main(url_file: str | None, cluster_id: str | None, profile_dir: str | None, path: str, ip: str,
         scheduler: str, hwm: int | None, owner_pid: int | None, timeout: float, restore: bool = False) -> int:
    """Entry point of ``mpihub scheduler``: join the Hub named by the hub connection file."""
    file = url_file or connection.connection_file("hub", cluster_id, profile_dir)
    for handler in logging.getLogger().handlers:  # its lines share the controller's log: say whose they are
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(name)s [{path} path] %(levelname)s: %(message)s"))
    server = None
    try:
        server = SplitPath(connection.read(file, timeout=timeout), path, ip, scheduler, hwm, owner_pid,
                           Path(file).parent.parent, restore)
        server.start(timeout)
    except (FileNotFoundError, TimeoutError, RuntimeError, ValueError) as exc:
        print(f"mpihub scheduler: {exc}", file=sys.stderr)
        if server is not None:
            server.close()
        return 1
    server.serve_forever()
    return 0

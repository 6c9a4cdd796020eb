"""The Hub of a split controller: registration, heartbeats and queries, off every round trip.

``mpihub controller --split`` runs this process and starts two path processes beside it
(:mod:`.split_path`): the direct path and the task scheduler, each with its own client
and engine sockets. Clients and engines reach the Hub first; its ``connect_reply`` and
``register_reply`` carry the paths' addresses, and requests then go straight to the
path that routes them, so the Hub sees no task at all. It keeps the engine table (a
:class:`~.registry.Registry`, as in the one-process controller) and answers each query
with the conversation :mod:`.queries` defines for it, sending each of its questions to
the paths and merging their answers.

A task scheduler may also run on another machine (``--remote-scheduler``, then
``mpihub scheduler`` there): paths join over TCP using the ``mpihub-hub`` connection
file, and the client and engine files are written only once every path has joined.
An engine is announced to clients once every path has seen it, so a client never
targets an engine a path cannot reach; a path that stops answering is reported to
clients, whose results waiting on it fail instead of hanging.
"""
from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import zmq

from .. import config
from ..protocol import connection, wire
from ..protocol.schema import Key, Msg
from . import merge, queries
from .clients import ClientPort
from .connfiles import ConnectionFiles, Where, public_host
from .dashboard import DashboardServer, engine_states, merge_parts, snapshot
from .engine_port import EnginePort
from .hub import Hub
from .loop import Layout, Loop
from .registry import Registry
from .restore import SavedController, identity
from .scheduler import SCHEDULERS
from .taskdb import DB_KINDS, open_db

log = logging.getLogger("mpihub.controller")

PATHS = ("direct", "task")
#: Seconds the Hub waits for the paths it started to join, and for an answer to a question.
JOIN_TIMEOUT = 60.0
ASK_TIMEOUT = 30.0


@dataclass
class PathLink:
    """A path process that joined: where clients and engines reach it."""

    kind: str
    ident: bytes
    client_urls: list[str]
    engine_urls: list[str]
    scheduler: str | None
    pid: int | None = None
    last_seen: float = field(default_factory=time.monotonic)


@dataclass
class Question:
    """A conversation (:mod:`.queries`) waiting for the paths' answers to its Ask;
    ``then(ok, result_or_error)`` receives its end."""

    op: str
    conversation: Any
    then: Callable[[bool, Any], None]
    waiting: set[str] = field(default_factory=set)
    deadline: float = 0.0
    answers: list[queries.Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class SplitHub(Layout):
    def __init__(self, ip: str | None = None, cluster_id: str | None = None, profile_dir=None,
                 scheduler: str = "leastload", key: str | None = None, owner_pid: int | None = None,
                 hwm: int | None = None, remote_scheduler: bool = False, curve: bool = False,
                 db: str = "memory", restore: bool = False, dashboard: int | None = None):
        if db not in DB_KINDS:
            raise ValueError(f"--db is one of {', '.join(DB_KINDS)}, not {db!r}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; available: {sorted(SCHEDULERS)}")
        self.db_kind = db
        self.saved, key, ip, self.cluster_keys = identity(restore, db, profile_dir, cluster_id, "hub", key, ip, curve)
        self.loop = Loop(key, self.cluster_keys.for_role("server") if self.cluster_keys else None)
        self.where = Where(ip, cluster_id or "", profile_dir, owner_pid)
        self.scheduler_name = scheduler
        self.hwm = hwm
        # the engine table only (kept in the store for a restore): task records live in the paths
        self.hub = Hub(0, 0, open_db(db, key, profile_dir, cluster_id, "hub"))
        self.files = ConnectionFiles(self.where, key, self.cluster_keys)
        self.expected = PATHS
        self.remote_scheduler = remote_scheduler
        self.links: dict[str, PathLink] = {}
        self.children: list[subprocess.Popen] = []
        self.exit_code = 0
        self.joining: dict[int, set[str]] = {}  # engine id -> paths that have not seen it yet
        self.questions: dict[int, Question] = {}
        self._qids = itertools.count()
        self.ports: dict[str, int] = {}
        self.ready = False
        self._started = time.monotonic()
        self._next_check = 0.0
        self._early: list[tuple[Callable, list]] = []  # client and engine messages before every path joined
        self.dashboard = DashboardServer(ip, dashboard) if dashboard is not None else None
        self._next_snapshot = 0.0

    # -- start and stop -----------------------------------------------------------------

    def assemble(self, sockets: dict[str, zmq.Socket]) -> None:
        """Build the parts around the ``client``, ``engine`` and ``path`` sockets."""
        self.path_sock = sockets["path"]
        self.clients = ClientPort(self.loop, sockets["client"], self._connect_fields, self._from_client)
        self._drop_path = wire.DropLog(log, "the path socket")
        self._drop_engine = wire.DropLog(log, "the engine socket")
        self.engine_port = EnginePort(sockets["engine"], self._drop_engine)
        self.registry = Registry(self.loop, self.hub, self.clients, self.engine_port, self.where, self)
        self.loop.on(sockets["client"], self._until_ready(self.clients.on_frames))
        self.loop.on(sockets["engine"], self._until_ready(self.on_engine))
        self.loop.on(self.path_sock, self.on_path)
        self.loop.add_timer(self)

    def start(self) -> None:
        fixed = self.saved.ports if self.saved else {}
        sockets, self.ports = self.loop.bind_routers(self.where.ip, ("client", "engine", "path"), fixed)
        self.assemble(sockets)
        self.ports["heartbeat"] = self.registry.start_heartbeat(fixed.get("heartbeat"))
        if self.saved:
            log.info("restored from %s: %d engines expected back", self.hub.db.path, self.registry.reload())
        if self.hub.db:
            SavedController(self.loop.key, self.where.ip, self.ports, self.cluster_keys).save(self.hub.db)
        if self.dashboard:
            self.dashboard.start()
            log.info("dashboard at %s", self._dashboard_url())
        self.hub_file = self._write_hub_file()
        for kind in ("direct", ) if self.remote_scheduler else PATHS:
            self.children.append(self._spawn(kind))
        log.info("controller %s: Hub listening on %s (split; pid %d), waiting for %s",
                 self.where.cluster_id or "(default)", self.where.ip, os.getpid(),
                 " and ".join(f"the {k} path" for k in PATHS))
        if self.remote_scheduler:
            log.info("start the task scheduler on its host with: mpihub scheduler --url-file %s%s", self.hub_file,
                     " --restore" if self.saved else "")

    def _dashboard_url(self) -> str | None:
        return self.dashboard.url(public_host(self.where.ip)) if self.dashboard else None

    def _write_hub_file(self) -> Path:
        """Where paths join the Hub, and (once they have) where each path listens."""
        primary, candidates = connection.channel_urls(self.where.ip, {"hub": self.ports["path"]})
        paths = {kind: {"client": link.client_urls, "engine": link.engine_urls} for kind, link in self.links.items()}
        return self.files.write("hub", {"hub": primary["hub"], "candidates": candidates, "paths": paths,
                                        "db": self.db_kind, "dashboard": self.dashboard is not None})

    def _spawn(self, kind: str) -> subprocess.Popen:
        """Start a path process on this machine; its output goes where ours goes."""
        args = [sys.executable, "-m", "mpihub", "--log-level", logging.getLevelName(log.getEffectiveLevel()),
                "scheduler", "--path", kind, "--url-file", str(self.hub_file), "--ip", self.where.ip,
                "--owner-pid", str(os.getpid()), "--scheduler", self.scheduler_name]
        if self.hwm is not None:
            args += ["--hwm", str(self.hwm)]
        if self.saved:
            args.append("--restore")
        return subprocess.Popen(args, stdin=subprocess.DEVNULL)

    def _until_ready(self, handle: Callable[[list], None]) -> Callable[[list], None]:
        """Hold what clients and engines send until every path has joined (a restored
        Hub's ports are reachable at once), then handle it in order."""
        def held(frames: list) -> None:
            if self.ready:
                handle(frames)
            else:
                self._early.append((handle, frames))
        return held

    def shut_down(self) -> None:
        self.registry.stop()
        self.files.remove()
        if not self.loop.context.closed:
            for link in self.links.values():
                self._send_path(link, {Key.TYPE: Msg.STOP})
        deadline = time.monotonic() + 5
        for child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("path process %d did not stop; killing it", child.pid)
                child.kill()
                child.wait(5)

    # -- timers (this Hub is a timer of its loop) ---------------------------------------------

    def next_wakeup(self) -> float:
        return time.time() + max(0.0, self._next_check - time.monotonic())

    def wake(self) -> None:
        now = time.monotonic()
        self._next_check = now + config.HEARTBEAT_PERIOD
        for child in self.children:
            if child.poll() is not None:
                for link in [link for link in self.links.values() if link.pid == child.pid]:
                    self._path_lost(link, f"its process exited with code {child.returncode}")
                if not self.ready:
                    log.error("a path process exited with code %s before the controller was ready", child.returncode)
                    self.exit_code, self.loop.stopping = 1, True
        for link in list(self.links.values()):
            if now - link.last_seen > config.HEARTBEAT_TIMEOUT:
                self._path_lost(link, f"silent for {config.HEARTBEAT_TIMEOUT:g} s")
        for qid, question in list(self.questions.items()):
            if now > question.deadline:
                question.errors.append(f"no answer from the {' and '.join(sorted(question.waiting))} path "
                                       f"within {ASK_TIMEOUT:g} s")
                question.waiting.clear()
                self._settle(qid)
        if not self.ready and not self.remote_scheduler and now - self._started > JOIN_TIMEOUT:
            log.error("the paths did not join within %g s", JOIN_TIMEOUT)
            self.exit_code, self.loop.stopping = 1, True
        if self.dashboard and self.ready and self.links and now >= self._next_snapshot:
            self._next_snapshot = now + 1.0
            self._converse("stats", queries.stats(self, b"", {}), self._publish)

    def _publish(self, ok: bool, parts: Any) -> None:
        """The paths' counts and queues, with the engine table: the dashboard's snapshot."""
        if not ok:
            return
        now = time.time()
        status = merge.queue_status([part["status"] for part in parts])
        engines = engine_states(self.hub.engines, now, self.joining)
        self.dashboard.snapshot = snapshot(now, self.where.cluster_id, engines, status,
                                           merge_parts([part["stats"] for part in parts]))

    # -- paths --------------------------------------------------------------------------

    def _send_path(self, link: PathLink, header: dict, buffers=()) -> None:
        wire.send(self.path_sock, [link.ident, *wire.pack(self.loop.signer, header, b"", buffers)])

    def on_path(self, frames: list) -> None:
        self.loop.routed(frames, self._drop_path, self._from_path)

    def _from_path(self, ident: bytes, msg: wire.Message) -> None:
        link = next((li for li in self.links.values() if li.ident == ident), None)
        if msg.type == Msg.JOIN:
            self._join(ident, msg.header)
        elif link is None:
            self._drop_path(f"{msg.type!r} from a path that has not joined")
        elif msg.type == Msg.PING:
            link.last_seen = time.monotonic()
            self._send_path(link, {Key.TYPE: Msg.PONG})
        elif msg.type == Msg.ENGINE_READY:
            self._engine_ready(link.kind, msg.header[Key.ID])
        elif msg.type == Msg.ANSWER:
            self._answered(link, msg)
        else:
            self._drop_path(f"unknown message type {msg.type!r}")

    def _join(self, ident: bytes, header: dict) -> None:
        kind = header[Key.PATH]
        refusal = None
        if kind not in self.expected:
            refusal = f"this controller takes no {kind!r} path (it expects {' and '.join(self.expected)})"
        elif kind in self.links:
            refusal = f"a {kind} path has joined already"
        elif self.ready:
            refusal = "the controller is running; paths join only while it starts"
        reply = {Key.TYPE: Msg.JOIN_REPLY, Key.OK: refusal is None, Key.ERROR: refusal}
        wire.send(self.path_sock, [ident, *wire.pack(self.loop.signer, reply)])
        if refusal:
            log.warning("refused a %r path from %s: %s", kind, header.get(Key.HOST), refusal)
            return
        link = PathLink(kind, ident, list(header[Key.CLIENT_URLS]), list(header[Key.ENGINE]), header.get(Key.SCHEDULER),
                        header.get(Key.PID))
        self.links[kind] = link
        log.info("%s path joined from %s (pid %s)", kind, header.get(Key.HOST), header.get(Key.PID))
        if all(k in self.links for k in self.expected):
            self.ready = True
            self._write_hub_file()
            self.files.write_engine_and_client(self.ports, self._dashboard_url())
            log.info("controller %s ready", self.where.cluster_id or "(default)")
            early, self._early = self._early, []
            for handle, frames in early:
                handle(frames)

    def _path_lost(self, link: PathLink, why: str) -> None:
        if self.links.get(link.kind) is not link:
            return
        del self.links[link.kind]
        log.error("the %s path is lost (%s); its unfinished tasks are lost with it", link.kind, why)
        self.clients.notify({Key.TYPE: Msg.NOTIFY, Key.EVENT: "path_lost", Key.PATH: link.kind, Key.WHY: why})
        for qid, question in list(self.questions.items()):
            if link.kind in question.waiting:
                question.waiting.discard(link.kind)
                question.errors.append(f"the {link.kind} path is lost ({why})")
                self._settle(qid)
        for engine_id in list(self.joining):
            self._engine_ready(link.kind, engine_id)

    # -- engines ------------------------------------------------------------------------

    def on_engine(self, frames: list) -> None:
        self.engine_port.on_frames(frames, self._on_engine_message)

    def _on_engine_message(self, frames: list) -> bool:
        return self.loop.routed(frames, self._drop_engine, self._from_engine)

    def _from_engine(self, uuid: bytes, msg: wire.Message) -> None:
        if not self.registry.from_engine(uuid, self.hub.by_uuid.get(uuid), msg):
            self._drop_engine(f"unexpected {msg.type!r}")

    def engine_rejoined(self, engine_id: int, report: dict) -> dict:
        """Tasks come from the paths, each of which settles them with the engine's hello."""
        return {}

    def register_fields(self) -> dict:
        return {Key.PATHS: {kind: link.engine_urls for kind, link in self.links.items()}}

    def engine_joined(self, engine_id: int) -> None:
        self.joining[engine_id] = set(self.links)
        if not self.links:
            self._engine_ready("", engine_id)

    def _engine_ready(self, kind: str, engine_id: int) -> None:
        """A path has seen the engine's hello; once all have, clients hear of it."""
        waiting = self.joining.get(engine_id)
        if waiting is None:
            if engine_id not in self.hub.engines and kind in self.links:  # it died while joining
                self._send_path(self.links[kind], {Key.TYPE: Msg.ENGINE_GONE, Key.ID: engine_id, Key.WHY: "is gone"})
            return
        waiting.discard(kind)
        if not waiting:
            del self.joining[engine_id]
            self.registry.announce(engine_id)

    def engine_released(self, engine_id: int, why: str) -> None:
        self.hub.remove_engine(engine_id)
        self.joining.pop(engine_id, None)
        for link in self.links.values():
            self._send_path(link, {Key.TYPE: Msg.ENGINE_GONE, Key.ID: engine_id, Key.WHY: why})

    # -- clients and their queries --------------------------------------------------------

    def _connect_fields(self) -> dict:
        task = self.links.get("task")
        return {Key.ENGINES: [rec.describe() for eid, rec in sorted(self.hub.engines.items())
                            if eid not in self.joining],
                Key.SCHEDULER: task.scheduler if task else None,
                Key.PATHS: {kind: link.client_urls for kind, link in self.links.items()}}

    def _from_client(self, ident: bytes, msg: wire.Message) -> None:
        if msg.type != Msg.QUERY:
            return self.clients.drop(f"unexpected message type {msg.type!r}")
        header = msg.header

        def reply(ok: bool, found: Any) -> None:
            self.clients.send(ident, {Key.TYPE: Msg.QUERY_REPLY, Key.REQUEST_ID: header.get(Key.REQUEST_ID), Key.OK: ok,
                                      **({Key.RESULT: found} if ok else {Key.ERROR: found})})

        try:
            conversation = queries.start(self, ident, header)
        except Exception as exc:  # noqa: BLE001 - a bug here must answer, not leave the client waiting
            return reply(False, queries.refusal(header.get(Key.OP), exc))
        self._converse(header.get(Key.OP), conversation, reply)

    def _converse(self, op: Any, conversation: Any, then: Callable[[bool, Any], None],
                  answers: list[queries.Answer] | None = None) -> None:
        """Move a conversation on: send its next Ask to the paths, or hand its end to ``then``."""
        try:
            ask, found = queries.advance(conversation, answers)
            if ask is not None:
                missing = [k for k in ask.kinds or () if k not in self.links]
                if missing:
                    raise ValueError(f"the controller's {' and '.join(missing)} path is not running")
        except Exception as exc:  # noqa: BLE001 - a bug here must answer, not leave the client waiting
            return then(False, queries.refusal(op, exc))
        if ask is None:
            return then(True, found)
        kinds = ask.kinds or tuple(self.links)
        qid = next(self._qids)
        self.questions[qid] = Question(op, conversation, then, set(kinds), time.monotonic() + ASK_TIMEOUT)
        for kind in kinds:
            self._send_path(self.links[kind], {Key.TYPE: Msg.ASK, Key.QUESTION_ID: qid, Key.OP: ask.op, **ask.args},
                            ask.buffers)

    def _answered(self, link: PathLink, msg: wire.Message) -> None:
        question = self.questions.get(msg.header[Key.QUESTION_ID])
        if question is None or link.kind not in question.waiting:
            return  # late, after a timeout
        question.waiting.discard(link.kind)
        if not msg.header.get(Key.OK):
            question.errors.append(str(msg.header.get(Key.ERROR)))
        elif Key.RESULT not in msg.header:
            question.errors.append(f"the {link.kind} path answered without a result")
        else:
            question.answers.append(queries.Answer(msg.header[Key.RESULT], msg.buffers))
        self._settle(msg.header[Key.QUESTION_ID])

    def _settle(self, qid: int) -> None:
        """Once every path asked has answered (or failed to), move the conversation on."""
        question = self.questions[qid]
        if question.waiting:
            return
        del self.questions[qid]
        if question.errors:
            question.then(False, "; ".join(question.errors))
        else:
            self._converse(question.op, question.conversation, question.then, question.answers)

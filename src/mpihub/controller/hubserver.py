"""The Hub of a split controller: registration, heartbeats and queries, off every round trip.

``mpihub controller --split`` runs this process and starts two path processes beside it
(:mod:`.pathserver`): the direct path and the task scheduler, each with its own client
and engine sockets. Clients and engines reach the Hub first; its ``connect_reply`` and
``register_reply`` carry the paths' addresses, and requests then go straight to the
path that routes them, so the Hub sees no task at all. It keeps the engine table and
answers queries by asking every path and merging their answers (:mod:`.merge`).

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
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import config
from ..protocol import connection, wire
from ..protocol.curve import ClusterKeys
from . import merge
from . import restore as restore_state
from .base import MALFORMED
from .dashboard import DashboardServer, merge_parts
from .dashboard import snapshot as dashboard_snapshot
from .hub import Hub
from .registrar import LATER, Registrar
from .restore import RestoreError, SavedController
from .taskdb import DB_KINDS, db_path, open_db
from .server import resubmit_renames

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
    """A client's query that waits for the paths' answers."""

    ident: bytes
    rid: object
    op: str
    waiting: set[str]
    then: Callable[[list[wire.Message]], object]
    deadline: float
    answers: list[wire.Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class HubServer(Registrar):
    def __init__(self, ip: str = "127.0.0.1", cluster_id: str | None = None, profile_dir=None,
                 scheduler: str = "leastload", key: str | None = None, owner_pid: int | None = None,
                 hwm: int | None = None, remote_scheduler: bool = False, curve: bool = False,
                 db: str = "memory", restore: bool = False, dashboard: int | None = None):
        if db not in DB_KINDS:
            raise ValueError(f"--db is one of {', '.join(DB_KINDS)}, not {db!r}")
        self.db_kind = db
        self.saved: SavedController | None = None
        if restore:
            if db != "sqlite":
                raise RestoreError("--restore takes back what the task store kept: it needs --db sqlite")
            self.saved = restore_state.load(db_path(profile_dir, cluster_id, "hub"))
            key, ip, self.cluster_keys = self.saved.key, self.saved.ip, self.saved.curve
        else:
            self.cluster_keys = ClusterKeys.new() if curve else None
            key = key or secrets.token_hex(32)
        super().__init__(key, self.cluster_keys.for_role("server") if self.cluster_keys else None)
        self.ip = ip
        self.cluster_id = cluster_id or ""
        self.profile_dir = profile_dir
        self.owner_pid = owner_pid
        self.scheduler_name = scheduler
        self.hwm = hwm
        # the engine table only (kept in the store for a restore): task records live in the paths
        self.hub = Hub(0, 0, open_db(db, key, profile_dir, cluster_id, "hub"))
        self.expected = PATHS
        self.remote_scheduler = remote_scheduler
        self.links: dict[str, PathLink] = {}
        self.children: list[subprocess.Popen] = []
        self.exit_code = 0
        self._joining: dict[int, set[str]] = {}  # engine id -> paths that have not seen it yet
        self._questions: dict[int, Question] = {}
        self._qids = itertools.count()
        self._ports: dict[str, int] = {}
        self._ready = False
        self._started = time.monotonic()
        self._next_check = 0.0
        self._drop_path = wire.DropLog(log, "the path socket")
        self._drop_engine = wire.DropLog(log, "the engine socket")
        self._early: list[tuple[Callable, list]] = []  # client and engine messages before every path joined
        self.dashboard = DashboardServer(ip, dashboard) if dashboard is not None else None
        self._next_snapshot = 0.0

    # -- start and stop -----------------------------------------------------------------

    def start(self) -> None:
        fixed = self.saved.ports if self.saved else {}
        self._ports = self._bind_routers(self.ip, ("client", "engine", "path"), fixed)
        self._handle(self.client_sock, self._until_ready(self._on_client))
        self._handle(self.engine_sock, self._until_ready(self._on_engine))
        self._handle(self.path_sock, self._on_path)
        self._ports["heartbeat"] = self._start_heartbeat(fixed.get("heartbeat"))
        if self.saved:
            for engine in self.hub.db.engines():
                self.hub.restore_engine(engine.id, engine.uuid, engine.info, engine.registered)
                self.monitor.expect(engine.uuid)
            self.hub.restore_next_id(int(self.hub.db.meta("next_engine_id") or 0))
            log.info("restored from %s: %d engines expected back", self.hub.db.path, len(self.hub.engines))
        if self.hub.db:
            SavedController(self.key, self.ip, self._ports, self.cluster_keys).save(self.hub.db)
        if self.dashboard:
            self.dashboard.start()
            log.info("dashboard at %s", self._dashboard_url())
        self.hub_file = self._write_hub_file()
        for kind in ("direct",) if self.remote_scheduler else PATHS:
            self.children.append(self._spawn(kind))
        log.info("controller %s: Hub listening on %s (split; pid %d), waiting for %s", self.cluster_id or "(default)",
                 self.ip, os.getpid(), " and ".join(f"the {k} path" for k in PATHS))
        if self.remote_scheduler:
            log.info("start the task scheduler on its host with: mpihub scheduler --url-file %s%s", self.hub_file,
                     " --restore" if self.saved else "")

    def _write_hub_file(self) -> Path:
        """Where paths join the Hub, and (once they have) where each path listens."""
        primary, candidates = connection.channel_urls(self.ip, {"hub": self._ports["path"]})
        paths = {kind: {"client": link.client_urls, "engine": link.engine_urls} for kind, link in self.links.items()}
        return self._write_file("hub", {"hub": primary["hub"], "candidates": candidates, "paths": paths,
                                        "db": self.db_kind, "dashboard": self.dashboard is not None})

    def _spawn(self, kind: str) -> subprocess.Popen:
        """Start a path process on this machine; its output goes where ours goes."""
        args = [sys.executable, "-m", "mpihub", "--log-level", logging.getLevelName(log.getEffectiveLevel()),
                "scheduler", "--path", kind, "--url-file", str(self.hub_file), "--ip", self.ip,
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
            if self._ready:
                handle(frames)
            else:
                self._early.append((handle, frames))
        return held

    def close(self) -> None:
        self._stop_registration()
        if not self.context.closed:
            for link in self.links.values():
                wire.send(self.path_sock, [link.ident, *wire.pack(self.signer, {"t": "stop"})])
        deadline = time.monotonic() + 5
        for child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("path process %d did not stop; killing it", child.pid)
                child.kill()
                child.wait(5)
        if self.dashboard:
            self.dashboard.stop()
        super().close()
        if self.hub.db:
            self.hub.db.close()
        log.info("controller stopped")

    # -- timers -----------------------------------------------------------------------

    def _next_wakeup(self) -> float | None:
        return time.time() + max(0.0, self._next_check - time.monotonic())

    def _wake(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + config.HEARTBEAT_PERIOD
        for child in self.children:
            if child.poll() is not None:
                lost = [link for link in self.links.values() if link.pid == child.pid]
                for link in lost:
                    self._path_lost(link, f"its process exited with code {child.returncode}")
                if not self._ready:
                    log.error("a path process exited with code %s before the controller was ready", child.returncode)
                    self.exit_code, self._stopping = 1, True
        for link in list(self.links.values()):
            if now - link.last_seen > config.HEARTBEAT_TIMEOUT:
                self._path_lost(link, f"silent for {config.HEARTBEAT_TIMEOUT:g} s")
        for qid, question in list(self._questions.items()):
            if now > question.deadline:
                question.errors.append(f"no answer from the {' and '.join(sorted(question.waiting))} path "
                                       f"within {ASK_TIMEOUT:g} s")
                question.waiting.clear()
                self._settle(qid)
        if not self._ready and not self.remote_scheduler and now - self._started > JOIN_TIMEOUT:
            log.error("the paths did not join within %g s", JOIN_TIMEOUT)
            self.exit_code, self._stopping = 1, True
        if self.dashboard and self._ready and self.links and now >= self._next_snapshot:
            self._next_snapshot = now + 1.0
            self._ask(None, {}, "stats", {}, self._publish)

    # -- the dashboard ------------------------------------------------------------------

    def _publish(self, answers: list[wire.Message]) -> None:
        """The paths' counts and queues, with the engine table: the dashboard's snapshot."""
        now = time.time()
        engines = [{**rec.describe(), "state": "joining" if eid in self._joining else
                    "rejoining" if rec.rejoining else "running"} for eid, rec in sorted(self.hub.engines.items())]
        status = merge.queue_status([a.header["result"]["status"] for a in answers])
        part = merge_parts([a.header["result"]["stats"] for a in answers])
        self.dashboard.snapshot = dashboard_snapshot(now, self.cluster_id, engines, status, part)

    # -- paths --------------------------------------------------------------------------

    def _send_path(self, link: PathLink, header: dict, buffers=()) -> None:
        wire.send(self.path_sock, [link.ident, *wire.pack(self.signer, header, b"", buffers)])

    def _on_path(self, frames: list) -> None:
        self._routed(frames, self._drop_path, self._from_path)

    def _from_path(self, ident: bytes, msg: wire.Message) -> None:
        link = next((li for li in self.links.values() if li.ident == ident), None)
        if msg.type == "join":
            self._join(ident, msg.header)
        elif link is None:
            self._drop_path(f"{msg.type!r} from a path that has not joined")
        elif msg.type == "ping":
            link.last_seen = time.monotonic()
            self._send_path(link, {"t": "pong"})
        elif msg.type == "engine_ready":
            self._engine_ready(link.kind, msg.header["id"])
        elif msg.type == "answer":
            self._answered(link, msg)
        else:
            self._drop_path(f"unknown message type {msg.type!r}")

    def _join(self, ident: bytes, header: dict) -> None:
        kind = header["path"]
        refusal = None
        if kind not in self.expected:
            refusal = f"this controller takes no {kind!r} path (it expects {' and '.join(self.expected)})"
        elif kind in self.links:
            refusal = f"a {kind} path has joined already"
        elif self._ready:
            refusal = "the controller is running; paths join only while it starts"
        reply = {"t": "join_reply", "ok": refusal is None, "error": refusal}
        wire.send(self.path_sock, [ident, *wire.pack(self.signer, reply)])
        if refusal:
            log.warning("refused a %r path from %s: %s", kind, header.get("host"), refusal)
            return
        link = PathLink(kind, ident, list(header["client"]), list(header["engine"]), header.get("scheduler"),
                        header.get("pid"))
        self.links[kind] = link
        log.info("%s path joined from %s (pid %s)", kind, header.get("host"), header.get("pid"))
        if all(k in self.links for k in self.expected):
            self._ready = True
            self._write_hub_file()
            self._write_connection_files(self._ports)
            log.info("controller %s ready", self.cluster_id or "(default)")
            early, self._early = self._early, []
            for handle, frames in early:
                handle(frames)

    def _path_lost(self, link: PathLink, why: str) -> None:
        if self.links.get(link.kind) is not link:
            return
        del self.links[link.kind]
        log.error("the %s path is lost (%s); its unfinished tasks are lost with it", link.kind, why)
        self._notify({"t": "notify", "ev": "path_lost", "path": link.kind, "why": why})
        for qid, question in list(self._questions.items()):
            if link.kind in question.waiting:
                question.waiting.discard(link.kind)
                question.errors.append(f"the {link.kind} path is lost ({why})")
                self._settle(qid)
        for engine_id in list(self._joining):
            self._engine_ready(link.kind, engine_id)

    # -- engines ------------------------------------------------------------------------

    def _on_engine(self, frames: list) -> None:
        self._routed(frames, self._drop_engine, self._from_engine)

    def _from_engine(self, uuid: bytes, msg: wire.Message) -> None:
        engine_id = self.hub.by_uuid.get(uuid)
        if msg.type == "register":
            self._register(uuid, msg.header)
        elif msg.type == "unregister" and engine_id is not None:
            self._engine_gone(engine_id, "unregistered")
        else:
            self._drop_engine(f"unexpected {msg.type!r}")

    def _readopt(self, engine_id: int, header: dict) -> dict[str, list[str]]:
        """Tasks come from the paths, each of which settles them with the engine's hello."""
        return {}

    def _register_fields(self) -> dict:
        return {"paths": {kind: link.engine_urls for kind, link in self.links.items()}}

    def _engine_joined(self, engine_id: int) -> None:
        self._joining[engine_id] = set(self.links)
        if not self.links:
            self._engine_ready("", engine_id)

    def _engine_ready(self, kind: str, engine_id: int) -> None:
        """A path has seen the engine's hello; once all have, clients hear of it."""
        waiting = self._joining.get(engine_id)
        if waiting is None:
            if engine_id not in self.hub.engines and kind in self.links:  # it died while joining
                self._send_path(self.links[kind], {"t": "engine_gone", "id": engine_id, "why": "is gone"})
            return
        waiting.discard(kind)
        if not waiting:
            del self._joining[engine_id]
            self._announce(engine_id)

    def _engine_released(self, engine_id: int, why: str) -> None:
        self.hub.remove_engine(engine_id)
        self._joining.pop(engine_id, None)
        for link in self.links.values():
            self._send_path(link, {"t": "engine_gone", "id": engine_id, "why": why})

    # -- clients and their queries --------------------------------------------------------

    def _connect_fields(self) -> dict:
        task = self.links.get("task")
        return {"engines": [rec.describe() for eid, rec in sorted(self.hub.engines.items())
                            if eid not in self._joining],
                "scheduler": task.scheduler if task else None,
                "paths": {kind: link.client_urls for kind, link in self.links.items()}}

    def _client_message(self, ident: bytes, msg: wire.Message) -> None:
        if msg.type == "query":
            self._query(ident, msg)
        else:
            super()._client_message(ident, msg)

    def _ask(self, ident: bytes | None, header: dict, op: str, args: dict, then: Callable,
             kinds: tuple[str, ...] | None = None, buffers=()) -> object:
        """Put ``op`` to the given paths (default: every live one); ``then(answers)``
        makes the reply, or asks again."""
        missing = [k for k in kinds or () if k not in self.links]
        if missing:
            raise ValueError(f"the controller's {' and '.join(missing)} path is not running")
        kinds = kinds or tuple(self.links)
        qid = next(self._qids)
        self._questions[qid] = Question(ident, header.get("rid"), op, set(kinds), then,
                                        time.monotonic() + ASK_TIMEOUT)
        for kind in kinds:
            self._send_path(self.links[kind], {"t": "ask", "qid": qid, "op": op, **args}, buffers)
        return LATER

    def _answered(self, link: PathLink, msg: wire.Message) -> None:
        question = self._questions.get(msg.header["qid"])
        if question is None or link.kind not in question.waiting:
            return  # late, after a timeout
        question.waiting.discard(link.kind)
        if msg.header.get("ok"):
            question.answers.append(msg)
        else:
            question.errors.append(str(msg.header.get("error")))
        self._settle(msg.header["qid"])

    def _settle(self, qid: int) -> None:
        """Reply to a question once every path has answered (or failed to)."""
        question = self._questions[qid]
        if question.waiting:
            return
        del self._questions[qid]
        reply = {"t": "query_reply", "rid": question.rid, "ok": True}
        if question.errors:
            reply.update(ok=False, error="; ".join(question.errors))
        else:
            try:
                result = question.then(question.answers)
            except (*MALFORMED, IndexError) as exc:  # a path's answer that does not fit
                reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a bug here must answer, not leave the client waiting
                log.exception("merging the answers to %r failed", question.op)
                reply.update(ok=False, error=f"internal error in the controller: {type(exc).__name__}: {exc}")
            else:
                if result is LATER:
                    return
                reply["result"] = result
        if question.ident is not None:  # None: the Hub's own question (the dashboard's)
            self._send_client(question.ident, reply)

    def _op_queue_status(self, ident: bytes, header: dict) -> object:
        return self._ask(ident, header, "queue_status",
                         {"targets": header.get("targets"), "verbose": bool(header.get("verbose"))},
                         lambda answers: merge.queue_status([a.header["result"] for a in answers]))

    def _op_db_query(self, ident: bytes, header: dict) -> object:
        return self._ask(ident, header, "db_query", {"query": header["query"], "keys": header.get("keys")},
                         lambda answers: merge.records([a.header["result"] for a in answers]))

    def _op_purge(self, ident: bytes, header: dict) -> object:
        return self._ask(ident, header, "purge", {"ids": header.get("ids"), "targets": header.get("targets")},
                         lambda answers: merge.joined([a.header["result"] for a in answers]))

    def _op_result(self, ident: bytes, header: dict) -> object:
        ids = list(header["ids"])
        return self._ask(ident, header, "result", {"ids": ids, "who": ident},
                         lambda answers: merge.result_outcome([a.header["result"] for a in answers], ids))

    def _op_abort(self, ident: bytes, header: dict) -> object:
        interrupt = bool(header.get("interrupt"))

        def then(answers: list[wire.Message]) -> list:
            self._interrupt(merge.by_engine([a.header["result"]["running"] for a in answers]), interrupt)
            return merge.joined([a.header["result"]["removed"] for a in answers])

        return self._ask(ident, header, "abort", {"ids": list(header["ids"])}, then)

    def _op_resubmit(self, ident: bytes, header: dict) -> object:
        """Fetch the stored requests from the paths that have them, then hand them to
        the task path as new tasks."""
        renames = resubmit_renames(header)

        def run(answers: list[wire.Message]) -> object:
            found: dict[str, list] = {}
            for answer in answers:
                found.update(merge.frames_by_id(answer.header["result"], answer.buffers))
            missing = [m for m in renames if m not in found]
            if missing:
                raise KeyError(f"no stored request for {missing}")
            runs = [[renames[old], len(found[old])] for old in renames]
            frames = [frame for old in renames for frame in found[old]]
            return self._ask(ident, header, "resubmit", {"runs": runs, "who": ident}, mark, kinds=("task",),
                             buffers=frames)

        def mark(_: list[wire.Message]) -> object:
            return self._ask(ident, header, "resubmitted", {"renames": renames}, lambda _: list(renames.values()))

        return self._ask(ident, header, "requests", {"renames": renames}, run)

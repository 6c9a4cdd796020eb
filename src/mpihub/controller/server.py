"""The controller's socket shell: binds, routes, and feeds the Hub and scheduler.

One thread polls three sockets: the client ROUTER, the engine ROUTER and an inproc pair
from the heartbeat monitor. Requests are forwarded as the very frames that arrived
(zero-copy references), replies likewise; the Hub learns of each task from the header
alone, after the forward, so it never delays a round trip.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import time
from pathlib import Path

import zmq

from .. import config, process
from ..protocol import connection, wire
from .heartbeat import HeartMonitor
from .hub import Hub
from .scheduler import SCHEDULERS
from .taskpath import TaskPath

log = logging.getLogger("mpihub.controller")


class Controller:
    def __init__(self, ip: str = "127.0.0.1", cluster_id: str | None = None, profile_dir=None,
                 scheduler: str = "leastload", key: str | None = None, owner_pid: int | None = None,
                 hwm: int | None = None):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; available: {sorted(SCHEDULERS)}")
        self.ip = ip
        self.cluster_id = cluster_id or ""
        self.profile_dir = profile_dir
        self.key = key or secrets.token_hex(32)
        self.signer = wire.Signer(self.key)
        self.hub = Hub(config.STORE_BYTES, config.MAX_RECORDS)
        self.scheduler = SCHEDULERS[scheduler](config.SCHEDULER_HWM if hwm is None else hwm)
        self.scheduler_name = scheduler
        self.tasks = TaskPath(self.hub, self.scheduler, self.signer, self._send_to_engine, self._fail)
        self.owner_pid = owner_pid
        self._reply_to: dict[bytes, bytes] = {}  # a client's sending identity -> its receiving one
        self._files: list[Path] = []
        self._drop_client = wire.DropLog(log, "the client socket")
        self._drop_engine = wire.DropLog(log, "the engine socket")
        self._stopping = False
        self.context = zmq.Context()

    # -- start and stop -------------------------------------------------------------

    def start(self) -> None:
        ctx = self.context
        self.client_sock = ctx.socket(zmq.ROUTER)
        self.engine_sock = ctx.socket(zmq.ROUTER)
        self.heart_sock = ctx.socket(zmq.ROUTER)
        bind_ip = "*" if self.ip in ("0.0.0.0", "*") else self.ip
        ports = {}
        for name, sock in (("client", self.client_sock), ("engine", self.engine_sock), ("heartbeat", self.heart_sock)):
            sock.linger = 0
            sock.router_handover = True
            ports[name] = sock.bind_to_random_port(f"tcp://{bind_ip}")
        self.pipe = ctx.socket(zmq.PAIR)
        pipe_url = f"inproc://heart-{id(self)}"
        self.pipe.bind(pipe_url)
        self.monitor = HeartMonitor(ctx, self.heart_sock, self.signer, pipe_url,
                                    config.HEARTBEAT_PERIOD, config.HEARTBEAT_TIMEOUT, self.owner_pid)
        self.monitor.start()
        self._write_connection_files(ports)
        log.info("controller %s listening on %s (scheduler %s, hwm %d, pid %d)",
                 self.cluster_id or "(default)", self.ip, self.scheduler_name, self.scheduler.hwm, os.getpid())

    def _write_connection_files(self, ports: dict[str, int]) -> None:
        primary, candidates = connection.channel_urls(self.ip, ports)
        common = {
            "version": connection.FILE_FORMAT_VERSION,
            "cluster_id": self.cluster_id,
            "signature_scheme": wire.SIGNATURE_SCHEME,
            "key": self.key,
            "location": socket.gethostname(),
            "controller_pid": os.getpid(),
        }
        files = {
            "client": {**common, "client": primary["client"], "candidates": {"client": candidates["client"]}},
            "engine": {
                **common,
                "engine": primary["engine"],
                "heartbeat": primary["heartbeat"],
                "candidates": {k: candidates[k] for k in ("engine", "heartbeat")},
                "heartbeat_period": config.HEARTBEAT_PERIOD,
                # engines listen for direct data links on loopback only when everything is local
                "engine_bind_ip": "127.0.0.1" if self.ip.startswith("127.") else "*",
            },
        }
        for role, info in files.items():
            path = connection.connection_file(role, self.cluster_id, self.profile_dir)
            connection.write_atomic(path, info)
            self._files.append(path)

    def serve_forever(self) -> None:
        """Run until a shutdown request, SIGTERM or SIGINT; always cleans up."""
        def on_signal(signum, frame):
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        poller = zmq.Poller()
        for sock in (self.client_sock, self.engine_sock, self.pipe):
            poller.register(sock, zmq.POLLIN)
        wakeup = process.signal_wakeup()
        poller.register(wakeup, zmq.POLLIN)
        handlers = {self.client_sock: self._on_client, self.engine_sock: self._on_engine, self.pipe: self._on_pipe}
        try:
            while not self._stopping:
                deadline = self.tasks.next_deadline()
                wait = None if deadline is None else max(0, int((deadline - time.time()) * 1000) + 1)
                ready = poller.poll(wait)
                if deadline is not None:
                    self.tasks.expire()
                for sock, _ in ready:
                    if sock is wakeup:
                        process.drain(wakeup)  # the signal handler runs right after this
                        continue
                    handle = handlers[sock]
                    for _ in range(256):  # then let the other sockets have a turn
                        if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                            break
                        handle(wire.recv(sock))
        finally:
            self.close()

    def close(self) -> None:
        for uuid in [rec.uuid for rec in self.hub.engines.values()]:
            self._shutdown_engine(uuid)
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files.clear()
        if not self.context.closed:
            self.pipe.send_multipart([b"stop"])
            self.monitor.join(timeout=2)
            self.heart_sock.close(linger=500)
            for sock in (self.client_sock, self.engine_sock, self.pipe):
                sock.close(linger=200)
            self.context.term()
        log.info("controller stopped")

    # -- helpers --------------------------------------------------------------------

    def _send_client(self, ident: bytes, header: dict, content: bytes = b"") -> None:
        wire.send(self.client_sock, [ident, *wire.pack(self.signer, header, content)])

    def _notify(self, header: dict) -> None:
        frames = wire.pack(self.signer, header)
        for ident in self.hub.clients:
            wire.send(self.client_sock, [ident, *frames])

    def _control(self, uuid: bytes, header: dict) -> None:
        """Send a control message to an engine's heartbeat thread (bypasses its queue)."""
        self.pipe.send_multipart([uuid, *wire.pack(self.signer, header)])

    def _shutdown_engine(self, uuid: bytes) -> None:
        """Stop an engine now (heartbeat channel) and for certain (its task queue, which
        reaches even an engine whose heartbeat thread has not connected yet)."""
        self._control(uuid, {"t": "control", "op": "shutdown"})
        wire.send(self.engine_sock, [uuid, *wire.pack(self.signer, {"t": "shutdown"})])

    def _fail(self, msg_id: str, engine_id: int | None, status: str, ename: str, evalue: str) -> None:
        """Make up a reply for a task that will never run, and deliver it."""
        now = time.time()
        header = {"t": "reply", "id": msg_id, "eng": engine_id, "st": status, "ename": ename,
                  "evalue": evalue, "tb": "", "started": None, "completed": now}
        frames = wire.pack(self.signer, header)
        self.tasks.forget(msg_id)
        self._deliver(msg_id, frames)
        self.hub.finish(msg_id, None, header, frames, 0, now)
        self.tasks.finished(msg_id)

    def _send_to_engine(self, engine_id: int, frames: list) -> None:
        wire.send(self.engine_sock, [self.hub.engines[engine_id].uuid, *frames])

    def _deliver(self, msg_id: str, frames: list) -> None:
        record = self.hub.tasks.get(msg_id)
        if record is None:
            return
        wire.send(self.client_sock, [record.client_ident, *frames])
        for watcher in record.watchers:
            wire.send(self.client_sock, [watcher, *frames])

    # -- client socket --------------------------------------------------------------

    def _on_client(self, frames: list) -> None:
        ident = frames[0]
        ident = self._reply_to.get(ident, ident)
        try:
            msg = wire.unpack(self.signer, frames[1:])
        except wire.ProtocolError as exc:
            return self._drop_client(exc)
        kind = msg.type
        try:
            if kind in ("apply", "execute"):
                if msg.header.get("lb"):
                    self.tasks.submit(ident, msg)
                else:
                    self._submit_direct(ident, msg)
            elif kind == "query":
                self._query(ident, msg)
            elif kind == "connect":
                send_as = msg.header.get("send_as")
                if isinstance(send_as, str):
                    self._reply_to[send_as.encode()] = ident
                self.hub.clients.add(ident)
                engines = list(self.hub.engine_table().values())
                self._send_client(ident, {"t": "connect_reply", "rid": msg.header.get("rid"), "engines": engines,
                                          "scheduler": self.scheduler_name})
            elif kind == "close":
                self.hub.clients.discard(ident)
                for sender in [s for s, r in self._reply_to.items() if r == ident]:
                    del self._reply_to[sender]
            else:
                self._drop_client(f"unknown message type {kind!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._drop_client(f"malformed {kind!r} request: {exc!r}")

    def _submit_direct(self, ident: bytes, msg: wire.Message) -> None:
        targets, ids = msg.header["tg"], msg.header["ids"]
        if not (isinstance(targets, list) and isinstance(ids, list) and len(targets) == len(ids) and targets):
            raise ValueError("tg and ids must be equal-length non-empty lists")
        if not all(isinstance(t, int) for t in targets) or not all(isinstance(i, str) for i in ids):
            raise TypeError("tg must hold ints and ids strings")
        now = time.time()
        nbytes = sum(len(f) for f in msg.frames)
        data_for = msg.header.get("bt")
        if data_for is not None and data_for not in targets:
            raise ValueError(f"bt {data_for!r} is not one of the targets")
        envelope_only = msg.frames[:1]
        for engine_id, msg_id in zip(targets, ids):
            if msg_id in self.hub.tasks:
                self._drop_client(f"duplicate msg_id {msg_id!r}")
                continue
            engine = self.hub.engines.get(engine_id)
            self.hub.submit(msg_id, "direct", ident, engine_id if engine else None, now, msg.frames, nbytes)
            nbytes = 0  # one payload shared by every target
            if engine is None:
                self._fail(msg_id, engine_id, "error", "EngineError", f"engine {engine_id} is not registered")
            else:
                frames = msg.frames if data_for is None or engine_id == data_for else envelope_only
                wire.send(self.engine_sock, [engine.uuid, *frames])

    # -- hub queries ----------------------------------------------------------------

    def _query(self, ident: bytes, msg: wire.Message) -> None:
        header = msg.header
        op = header.get("op")
        handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
        reply = {"t": "query_reply", "rid": header.get("rid"), "ok": True}
        if handler is None:
            reply.update(ok=False, error=f"unknown query {op!r}")
        else:
            try:
                reply["result"] = handler(ident, header)
            except (KeyError, TypeError, ValueError) as exc:
                reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a bug here must answer, not leave the client waiting
                log.exception("query %r failed", op)
                reply.update(ok=False, error=f"internal error in the controller: {type(exc).__name__}: {exc}")
        self._send_client(ident, reply)
        if op == "shutdown" and header.get("hub"):
            self._stopping = True

    def _op_queue_status(self, ident: bytes, header: dict) -> dict:
        return self.hub.queue_status(header.get("targets"), bool(header.get("verbose")))

    def _op_db_query(self, ident: bytes, header: dict) -> list:
        return self.hub.query(header["query"], header.get("keys"))

    def _op_purge(self, ident: bytes, header: dict) -> list:
        return self.hub.purge(header.get("ids"), header.get("targets"))

    def _op_result(self, ident: bytes, header: dict) -> dict:
        """Send stored replies now, register for pending ones, report the rest."""
        outcome: dict[str, list] = {"pending": [], "unknown": [], "purged": [], "direct": []}
        for msg_id in header["ids"]:
            record = self.hub.tasks.get(msg_id)
            if record is None:
                outcome["unknown"].append(msg_id)
            elif record.completed is None:
                if ident != record.client_ident and ident not in record.watchers:
                    record.watchers += (ident,)
                outcome["pending"].append(msg_id)
            else:
                frames = self.hub.reply_frames(msg_id)
                if frames is None:
                    outcome["purged"].append(msg_id)
                elif "bulk" in wire.unpack(self.signer, frames).header:
                    outcome["direct"].append(msg_id)
                else:
                    wire.send(self.client_sock, [ident, *frames])
        return outcome

    def _op_abort(self, ident: bytes, header: dict) -> list:
        ids = list(header["ids"])
        removed = self.tasks.abort(ids)
        for msg_id in removed:
            self._fail(msg_id, None, "aborted", "TaskAborted", "task aborted before it started")
        by_engine: dict[int, list[str]] = {}
        for msg_id in ids:
            record = self.hub.tasks.get(msg_id)
            if record is not None and record.completed is None and record.engine_id in self.hub.engines:
                by_engine.setdefault(record.engine_id, []).append(msg_id)
        interrupt = bool(header.get("interrupt"))
        for engine_id, engine_ids in by_engine.items():
            self._control(self.hub.engines[engine_id].uuid,
                          {"t": "control", "op": "abort", "ids": engine_ids, "interrupt": interrupt})
        return removed

    def _op_signal(self, ident: bytes, header: dict) -> list:
        """Send a signal to engines' processes (SIGINT interrupts the task running there)."""
        sig, targets = header["sig"], header.get("targets")
        if not isinstance(sig, int) or isinstance(sig, bool):
            raise TypeError(f"sig must be a signal number, not {sig!r}")
        chosen = list(self.hub.engines) if targets is None else [t for t in targets if t in self.hub.engines]
        for engine_id in chosen:
            self._control(self.hub.engines[engine_id].uuid, {"t": "control", "op": "signal", "sig": sig})
        return chosen

    def _op_shutdown(self, ident: bytes, header: dict) -> list:
        targets = header.get("targets")
        chosen = list(self.hub.engines) if targets is None else [t for t in targets if t in self.hub.engines]
        for engine_id in chosen:
            self._shutdown_engine(self.hub.engines[engine_id].uuid)
            self._engine_gone(engine_id, "was shut down")
        return chosen

    def _op_resubmit(self, ident: bytes, header: dict) -> dict:
        """Run stored requests again as new load-balanced tasks with the given ids."""
        old_ids, new_ids = header["ids"], header["new_ids"]
        if len(old_ids) != len(new_ids):
            raise ValueError("ids and new_ids differ in length")
        missing = [m for m in old_ids if self.hub.request_frames(m) is None]
        if missing:
            raise KeyError(f"no stored request for {missing}")
        stored_requests = [wire.unpack(self.signer, self.hub.request_frames(m)) for m in old_ids]
        direct = [m for m, stored in zip(old_ids, stored_requests) if "bulk" in stored.header]
        if direct:
            raise ValueError(f"the data of {direct} went straight to the engine and is not stored; submit them anew")
        collective = [m for m, stored in zip(old_ids, stored_requests) if "rk" in stored.header]
        if collective:
            raise ValueError(f"{collective} ran on a whole MPI world together; one engine cannot run it again alone")
        for old, new, stored in zip(old_ids, new_ids, stored_requests):
            request = {k: v for k, v in stored.header.items() if k not in ("tg", "ids", "only", "v", "nb", "rb")}
            request.update(id=new, lb=True)
            frames = wire.pack(self.signer, request, stored.content, stored.buffers)
            self.hub.tasks[old].resubmitted = new
            self.tasks.submit(ident, wire.unpack(self.signer, frames))
        return new_ids

    # -- engine socket --------------------------------------------------------------

    def _on_engine(self, frames: list) -> None:
        uuid = frames[0]
        try:
            msg = wire.unpack(self.signer, frames[1:])
        except wire.ProtocolError as exc:
            return self._drop_engine(exc)
        kind = msg.type
        engine_id = self.hub.by_uuid.get(uuid)
        try:
            if kind == "reply" and engine_id is not None:
                self._on_reply(engine_id, msg)
            elif kind == "register":
                self._register(uuid, msg.header)
            elif kind == "unregister" and engine_id is not None:
                self._engine_gone(engine_id, "unregistered")
            else:
                self._drop_engine(f"unexpected {kind!r} from {'unknown engine' if engine_id is None else engine_id}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._drop_engine(f"malformed {kind!r}: {exc!r}")

    def _on_reply(self, engine_id: int, msg: wire.Message) -> None:
        msg_id = msg.header["id"]
        record = self.hub.tasks.get(msg_id)
        if record is None or record.completed is not None:
            return self._drop_engine(f"reply to unknown or finished task {msg_id!r}")
        if record.queue == "task" and self.tasks.reply(msg_id, engine_id, msg.header):
            return  # passed on or retried: the client hears only of the last attempt
        self._deliver(msg_id, msg.frames)
        self.hub.finish(msg_id, engine_id, msg.header, msg.frames, sum(len(f) for f in msg.frames), time.time())
        self.tasks.finished(msg_id)

    def _register(self, uuid: bytes, header: dict) -> None:
        info = header.get("info") or {}
        if not isinstance(info, dict):
            raise TypeError("info must be a map")
        requested = header.get("want_id")
        record = self.hub.register_engine(uuid, requested if isinstance(requested, int) else None, info, time.time())
        self.monitor.watch(uuid)
        reply = {"t": "register_reply", "id": record.id, "hb_period": config.HEARTBEAT_PERIOD,
                 "controller_timeout": config.ENGINE_CONTROLLER_TIMEOUT}
        wire.send(self.engine_sock, [uuid, *wire.pack(self.signer, reply)])
        log.info("engine %d registered (%s, pid %s)", record.id, info.get("hostname"), info.get("pid"))
        self._notify({"t": "notify", "ev": "registered", "engine": record.describe()})
        self.tasks.add_engine(record.id)

    def _engine_gone(self, engine_id: int, why: str) -> None:
        record, lost = self.hub.remove_engine(engine_id)
        if record is None:
            return
        self.monitor.forget(record.uuid)
        stranded = self.tasks.remove_engine(engine_id)
        log.warning("engine %d %s; failing %d unfinished tasks", engine_id, why, len(lost) + len(stranded))
        self._notify({"t": "notify", "ev": "unregistered", "id": engine_id})  # current when failures arrive
        for rec in lost:
            if rec.queue == "task" and self.tasks.retry(rec.msg_id, engine_id, why):
                continue
            self._fail(rec.msg_id, engine_id, "error", "EngineError",
                       f"engine {engine_id} {why} before task {rec.msg_id} finished")
        for msg_id in stranded:
            self._fail(msg_id, None, "error", "EngineError", f"engine {engine_id} {why}; no other engine may run this task")

    def _on_pipe(self, frames: list) -> None:
        event = frames[0]
        if event == b"owner-gone":
            log.warning("owner process %s is gone; shutting down", self.owner_pid)
            self._stopping = True
            return
        engine_id = self.hub.by_uuid.get(frames[1])
        if event == b"dead" and engine_id is not None:
            self._engine_gone(engine_id, "stopped sending heartbeats (died)")

"""Engine registration, heartbeats, notices to clients and connection files.

The part of a controller that the Hub owns in either layout: the single-process
controller mixes it into its :class:`~.router.Router`; a split controller's Hub process
runs it beside the query fan-out. It expects ``self.hub`` (a :class:`~.hub.Hub` for the
engine table), ``self.client_sock`` and ``self.engine_sock`` (bound ROUTERs), and calls
:meth:`_engine_joined` and :meth:`_engine_released` for what the layout does next, and
``_readopt(engine_id, header)`` when an engine comes back under its id (it settles the
engine's tasks and returns what to tell it: tasks to skip, replies to send again).
"""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import zmq

from .. import config
from ..protocol import connection, wire
from ..protocol.curve import ClusterKeys
from .base import Service
from .dashboard import DashboardServer
from .heartbeat import HeartMonitor

log = logging.getLogger("mpihub.controller")

#: What a query handler returns when it answers later (a split Hub asking its paths).
LATER = object()


class Registrar(Service):
    ip: str
    cluster_id: str
    profile_dir: object
    owner_pid: int | None
    cluster_keys: ClusterKeys | None = None  # every CURVE key pair, when the cluster encrypts
    dashboard: DashboardServer | None = None  # the web page, when asked for (--dashboard)

    def _start_heartbeat(self, port: int | None = None) -> int:
        """Bind the heartbeat ROUTER (on ``port``, else any) and start its thread;
        returns the port."""
        port = self._bind_routers(self.ip, ("heart",), {"heart": port} if port else None)["heart"]
        self.pipe = self.context.socket(zmq.PAIR)
        pipe_url = f"inproc://heart-{id(self)}"
        self.pipe.bind(pipe_url)
        self._handle(self.pipe, self._on_pipe)
        self.monitor = HeartMonitor(self.context, self.heart_sock, self.signer, pipe_url,
                                    config.HEARTBEAT_PERIOD, config.HEARTBEAT_TIMEOUT, self.owner_pid)
        self.monitor.start()
        self._files: list[Path] = []
        return port

    def _common_file_fields(self) -> dict:
        return {
            "version": connection.FILE_FORMAT_VERSION,
            "cluster_id": self.cluster_id,
            "signature_scheme": wire.SIGNATURE_SCHEME,
            "key": self.key,
            "location": socket.gethostname(),
            "controller_pid": os.getpid(),
        }

    def _write_file(self, role: str, info: dict) -> Path:
        path = connection.connection_file(role, self.cluster_id, self.profile_dir)
        if self.cluster_keys:
            info = {**info, "curve": self.cluster_keys.for_role("server" if role == "hub" else role).as_info()}
        connection.write_atomic(path, {**self._common_file_fields(), **info})
        if path not in self._files:
            self._files.append(path)
        return path

    def _write_connection_files(self, ports: dict[str, int]) -> None:
        """The engine and client files: every candidate address of each channel. The
        client file comes last, so whoever waits for it finds the engine file too."""
        primary, candidates = connection.channel_urls(self.ip, ports)
        self._write_file("engine", {
            "engine": primary["engine"],
            "heartbeat": primary["heartbeat"],
            "candidates": {k: candidates[k] for k in ("engine", "heartbeat")},
            "heartbeat_period": config.HEARTBEAT_PERIOD,
            # engines listen for direct data links on loopback only when everything is local
            "engine_bind_ip": "127.0.0.1" if self.ip.startswith("127.") else "*",
        })
        self._write_file("client", {"client": primary["client"], "candidates": {"client": candidates["client"]},
                                    **self._client_file_fields()})

    def _client_file_fields(self) -> dict:
        """What the client file holds besides the addresses: the dashboard's URL."""
        return {"dashboard": self._dashboard_url()} if self.dashboard else {}

    def _dashboard_url(self) -> str:
        host = socket.gethostname() if self.ip in ("0.0.0.0", "*") else self.ip
        return self.dashboard.url(host)

    def _stop_registration(self) -> None:
        """Stop every engine, remove the connection files, end the heartbeat thread."""
        for record in list(self.hub.engines.values()):
            self._shutdown_engine(record.uuid)
            self.hub.remove_engine(record.id)  # a later --restore expects none of them back
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files.clear()
        if not self.context.closed:
            self.pipe.send_multipart([b"stop"])
            self.monitor.join(timeout=2)
            self.heart_sock.close(linger=500)

    # -- engines ----------------------------------------------------------------------

    def _notify(self, header: dict) -> None:
        frames = wire.pack(self.signer, header)
        for ident in self.clients:
            wire.send(self.client_sock, [ident, *frames])

    def _control(self, uuid: bytes, header: dict) -> None:
        """Send a control message to an engine's heartbeat thread (bypasses its queue)."""
        self.pipe.send_multipart([uuid, *wire.pack(self.signer, header)])

    def _shutdown_engine(self, uuid: bytes) -> None:
        """Stop an engine now (heartbeat channel) and for certain (its task queue, which
        reaches even an engine whose heartbeat thread has not connected yet)."""
        self._control(uuid, {"t": "control", "op": "shutdown"})
        wire.send(self.engine_sock, [uuid, *wire.pack(self.signer, {"t": "shutdown"})])

    def _register(self, uuid: bytes, header: dict) -> None:
        """Admit an engine, or take one back under its id (it says which tasks it holds
        and answered lately, so that none is lost or run twice)."""
        info = header.get("info") or {}
        if not isinstance(info, dict):
            raise TypeError("info must be a map")
        requested = header.get("want_id")
        record, how = self.hub.register_engine(uuid, requested if isinstance(requested, int) else None, info,
                                               time.time())
        self.monitor.watch(uuid)
        settle = (self._readopt(record.id, header) if how == "rejoined" else {} if how == "again"
                  else {"skip": sorted(wire.task_ids(header.get("held")))})
        reply = {"t": "register_reply", "id": record.id, "hb_period": config.HEARTBEAT_PERIOD,
                 "controller_timeout": config.ENGINE_CONTROLLER_TIMEOUT, **settle, **self._register_fields()}
        wire.send(self.engine_sock, [uuid, *wire.pack(self.signer, reply)])
        if how == "again":
            return
        log.info("engine %d %s (%s, pid %s)", record.id, "is back" if how == "rejoined" else "registered",
                 info.get("hostname"), info.get("pid"))
        self._engine_joined(record.id)

    def _register_fields(self) -> dict:
        """What a registering engine is told besides its id and heartbeat settings."""
        return {}

    def _announce(self, engine_id: int) -> None:
        self._notify({"t": "notify", "ev": "registered", "engine": self.hub.engines[engine_id].describe()})

    def _engine_joined(self, engine_id: int) -> None:
        """A new engine is in the table; announce it and put it to work."""
        raise NotImplementedError

    def _engine_released(self, engine_id: int, why: str) -> None:
        """An engine left the table: fail or retry what it had."""
        raise NotImplementedError

    def _engine_gone(self, engine_id: int, why: str) -> None:
        record = self.hub.engines.get(engine_id)
        if record is None:
            return
        self.monitor.forget(record.uuid)
        self._notify({"t": "notify", "ev": "unregistered", "id": engine_id})  # current when failures arrive
        self._engine_released(engine_id, why)

    def _on_pipe(self, frames: list) -> None:
        event = frames[0]
        if event == b"owner-gone":
            log.warning("owner process %s is gone; shutting down", self.owner_pid)
            self._stopping = True
            return
        engine_id = self.hub.by_uuid.get(frames[1])
        if event == b"dead" and engine_id is not None:
            rejoining = self.hub.engines[engine_id].rejoining
            self._engine_gone(engine_id, "did not come back after the controller restarted" if rejoining
                              else "stopped sending heartbeats (died)")

    # -- queries both layouts answer here --------------------------------------------------

    def _op_signal(self, ident: bytes, header: dict) -> list:
        """Send a signal to engines' processes (SIGINT interrupts the task running there)."""
        sig = header["sig"]
        if not isinstance(sig, int) or isinstance(sig, bool):
            raise TypeError(f"sig must be a signal number, not {sig!r}")
        chosen = self._chosen(header.get("targets"))
        for engine_id in chosen:
            self._control(self.hub.engines[engine_id].uuid, {"t": "control", "op": "signal", "sig": sig})
        return chosen

    def _chosen(self, targets) -> list[int]:
        """The registered engines among ``targets`` (None: all), each once."""
        if targets is None:
            return list(self.hub.engines)
        if not isinstance(targets, list) or not all(isinstance(t, int) for t in targets):
            raise TypeError(f"targets must be a list of engine ids, not {targets!r}")
        return [t for t in dict.fromkeys(targets) if t in self.hub.engines]

    def _op_shutdown(self, ident: bytes, header: dict) -> list:
        chosen = self._chosen(header.get("targets"))
        for engine_id in chosen:
            self._shutdown_engine(self.hub.engines[engine_id].uuid)
            self._engine_gone(engine_id, "was shut down")
        return chosen

    def _interrupt(self, by_engine: dict[int, list[str]], interrupt: bool) -> None:
        """Tell engines to skip these queued tasks, and with ``interrupt`` to stop them running."""
        for engine_id, ids in by_engine.items():
            record = self.hub.engines.get(engine_id)
            if record is not None:
                self._control(record.uuid, {"t": "control", "op": "abort", "ids": ids, "interrupt": interrupt})

    def _query(self, ident: bytes, msg: wire.Message) -> None:
        """Run ``_op_<op>`` for a query and answer it, unless the op answers later itself."""
        header = msg.header
        op = header.get("op")
        handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
        reply = {"t": "query_reply", "rid": header.get("rid"), "ok": True}
        if handler is None:
            reply.update(ok=False, error=f"unknown query {op!r}")
        else:
            try:
                result = handler(ident, header)
                if result is LATER:
                    return
                reply["result"] = result
            except (KeyError, TypeError, ValueError) as exc:
                reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a bug here must answer, not leave the client waiting
                log.exception("query %r failed", op)
                reply.update(ok=False, error=f"internal error in the controller: {type(exc).__name__}: {exc}")
        self._send_client(ident, reply)
        if op == "shutdown" and header.get("hub") and reply["ok"]:
            self._stopping = True


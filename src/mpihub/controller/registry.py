"""Engines coming and going: registration, heartbeats, and the notices clients get.

The part of a controller that owns the engine table in either layout: the one-process
controller and a split controller's Hub each have one. It admits an engine (or takes one
back under its id), watches its heartbeats on a thread of their own
(:class:`~.heartbeat.HeartMonitor`), tells every client when engines come and go, and
reaches an engine's heartbeat thread with control messages (signal, abort, shutdown)
that bypass its task queue. What happens to an engine's work is the layout's business:
it learns of each event through :class:`EngineEvents`.
"""
from __future__ import annotations

import logging
import time
from typing import Protocol

import zmq

from .. import config, process
from ..protocol import wire
from ..protocol.schema import CONTROL_ABORT, CONTROL_SHUTDOWN, EVENT_REGISTERED, EVENT_UNREGISTERED, Key, Msg
from . import restore
from .clients import ClientPort
from .connfiles import Where
from .engine_port import EnginePort
from .heartbeat import HeartMonitor
from .hub import Hub
from .loop import Loop

log = logging.getLogger("mpihub.controller")

#: File descriptors the controller uses per engine (its task and heartbeat connections),
#: and those it keeps for everything else (clients, files, the database).
FDS_PER_ENGINE = 2
FDS_RESERVED = 256


class EngineEvents(Protocol):
    """What a layout does when engines come and go."""

    def engine_joined(self, engine_id: int) -> None:
        """A new engine is in the table: announce it and put it to work."""

    def engine_released(self, engine_id: int, why: str) -> None:
        """An engine left the table (clients were told): fail or retry what it had."""

    def engine_rejoined(self, engine_id: int, report: dict) -> dict:
        """An engine is back under its id and reports what it holds and answered: settle
        its tasks; returns what to tell it (``skip``, ``replay``)."""

    def register_fields(self) -> dict:
        """What a registering engine is told besides its id and heartbeat settings."""


class Registry:
    def __init__(self, loop: Loop, hub: Hub, clients: ClientPort, engine_port: EnginePort, where: Where,
                 events: EngineEvents):
        self.loop = loop
        self.hub = hub
        self.clients = clients
        self.engine_port = engine_port
        self.where = where
        self.events = events
        self.pipe: zmq.Socket | None = None  # to the heartbeat thread: control messages out, deaths in
        self.monitor: HeartMonitor | None = None
        self.heart_sock: zmq.Socket | None = None
        self.fd_limit = process.raise_fd_limit()

    def start_heartbeat(self, port: int | None = None) -> int:
        """Bind the heartbeat ROUTER (on ``port``, else any) and start its thread;
        returns the port."""
        sockets, ports = self.loop.bind_routers(self.where.ip, ("heart",), {"heart": port} if port else None)
        self.heart_sock = sockets["heart"]
        self.pipe = self.loop.context.socket(zmq.PAIR)
        pipe_url = f"inproc://heart-{id(self)}"
        self.pipe.bind(pipe_url)
        self.loop.on(self.pipe, self.on_pipe)
        self.monitor = HeartMonitor(self.loop.context, self.heart_sock, self.loop.signer, pipe_url,
                                    self.where.owner_pid)
        self.monitor.start()
        return ports["heart"]

    def stop(self) -> None:
        """Stop every engine and end the heartbeat thread."""
        for record in list(self.hub.engines.values()):
            self.shutdown_engine(record.uuid)
            self.hub.remove_engine(record.id)  # a later --restore expects none of them back
        if not self.loop.context.closed and self.monitor is not None:
            self.pipe.send_multipart([b"stop"])
            self.monitor.join(timeout=2)
            self.heart_sock.close(linger=500)

    def reload(self) -> int:
        """Put back the engines of the controller before a restart, each expected to
        register again (or be declared dead); returns how many."""
        return restore.reload_engines(self.hub, self.monitor.expect)

    # -- engine messages ----------------------------------------------------------------

    def from_engine(self, uuid: bytes, engine_id: int | None, msg: wire.Message) -> bool:
        """Handle a registration or a farewell; False for any other message."""
        if msg.type == Msg.REGISTER:
            self.register(uuid, msg.header)
        elif msg.type == Msg.UNREGISTER and engine_id is not None:
            self.engine_gone(engine_id, "unregistered")
        else:
            return False
        return True

    def register(self, uuid: bytes, header: dict) -> None:
        """Admit an engine, or take one back under its id (it says which tasks it holds
        and answered lately, so that none is lost or run twice)."""
        info = header.get(Key.INFO) or {}
        if not isinstance(info, dict):
            raise TypeError("info must be a map")
        requested = header.get(Key.WANT_ID)
        if uuid not in self.hub.by_uuid and (refused := self._over_fd_limit()):
            self.engine_port.send(uuid, wire.pack(self.loop.signer, {Key.TYPE: Msg.REGISTER_REPLY, Key.ERROR: refused}))
            return
        record, how = self.hub.register_engine(uuid, requested if isinstance(requested, int) else None, info,
                                               time.time())
        period = self.monitor.watch(uuid)
        settle = (self.events.engine_rejoined(record.id, header) if how == "rejoined" else {} if how == "again"
                  else {Key.SKIP: sorted(wire.task_ids(header.get(Key.HELD)))})
        reply = {Key.TYPE: Msg.REGISTER_REPLY, Key.ID: record.id, Key.HEARTBEAT_PERIOD: period,
                 Key.CONTROLLER_TIMEOUT: config.ENGINE_CONTROLLER_TIMEOUT, **settle, **self.events.register_fields()}
        self.engine_port.send(uuid, wire.pack(self.loop.signer, reply))
        if how == "again":
            return
        log.info("engine %d %s (%s, pid %s)", record.id, "is back" if how == "rejoined" else "registered",
                 info.get("hostname"), info.get("pid"))
        self.events.engine_joined(record.id)

    def _over_fd_limit(self) -> str | None:
        """Why one more engine would take the controller past its file-descriptor limit."""
        needed = FDS_PER_ENGINE * (len(self.hub.engines) + 1) + FDS_RESERVED
        if needed <= self.fd_limit:
            return None
        why = process.fd_limit_message(needed, f"the controller, with {len(self.hub.engines) + 1} engines,",
                                       self.fd_limit, process.fd_hard_limit())
        log.error("engine refused: %s", why)
        return why

    def announce(self, engine_id: int) -> None:
        self.clients.notify({Key.TYPE: Msg.NOTIFY, Key.EVENT: EVENT_REGISTERED,
                             Key.ENGINE: self.hub.engines[engine_id].describe()})

    def engine_gone(self, engine_id: int, why: str) -> None:
        record = self.hub.engines.get(engine_id)
        if record is None:
            return
        self.monitor.forget(record.uuid)
        self.engine_port.forget(record.uuid)
        # before the failures of its tasks, so that clients' ids are current when they see them
        self.clients.notify({Key.TYPE: Msg.NOTIFY, Key.EVENT: EVENT_UNREGISTERED, Key.ID: engine_id})
        self.events.engine_released(engine_id, why)

    def on_pipe(self, frames: list) -> None:
        """What the heartbeat thread reports: an engine fell silent, the owner is gone."""
        event = frames[0]
        if event == b"owner-gone":
            log.warning("owner process %s is gone; shutting down", self.where.owner_pid)
            self.loop.stopping = True
            return
        engine_id = self.hub.by_uuid.get(frames[1])
        if event == b"dead" and engine_id is not None:
            rejoining = self.hub.engines[engine_id].rejoining
            self.engine_gone(engine_id, "did not come back after the controller restarted" if rejoining
                             else "stopped sending heartbeats (died)")

    # -- reaching engines ---------------------------------------------------------------

    def control(self, uuid: bytes, header: dict) -> None:
        """Send a control message to an engine's heartbeat thread (bypasses its queue)."""
        self.pipe.send_multipart([uuid, *wire.pack(self.loop.signer, header)])

    def shutdown_engine(self, uuid: bytes) -> None:
        """Stop an engine now (heartbeat channel) and for certain (its task queue, which
        reaches even an engine whose heartbeat thread has not connected yet)."""
        self.control(uuid, {Key.TYPE: Msg.CONTROL, Key.OP: CONTROL_SHUTDOWN})
        self.engine_port.send(uuid, wire.pack(self.loop.signer, {Key.TYPE: Msg.SHUTDOWN}))

    def interrupt(self, by_engine: dict[int, list[str]], interrupt: bool) -> None:
        """Tell engines to skip these queued tasks, and with ``interrupt`` to stop them running."""
        for engine_id, ids in by_engine.items():
            record = self.hub.engines.get(engine_id)
            if record is not None:
                self.control(record.uuid, {Key.TYPE: Msg.CONTROL, Key.OP: CONTROL_ABORT, Key.IDS: ids,
                                           Key.INTERRUPT: interrupt})

    def chosen(self, targets) -> list[int]:
        """The registered engines among ``targets`` (None: all), each once."""
        if targets is None:
            return list(self.hub.engines)
        if not isinstance(targets, list) or not all(isinstance(t, int) for t in targets):
            raise TypeError(f"targets must be a list of engine ids, not {targets!r}")
        return [t for t in dict.fromkeys(targets) if t in self.hub.engines]

"""The engine ROUTER of a controller process, and the routes of engines behind relays.

An engine speaks to the controller on a connection of its own, or through the relay of
its node (:mod:`mpihub.protocol.relay`). The port learns which from the messages that
come: an engine's route is the way its last signed message came (routing is unsigned,
so a message that does not verify changes no route). Everything the controller
sends an engine goes through :meth:`EnginePort.send`, and a request to many engines
through :meth:`EnginePort.send_many`, which sends it once to each relay for all of its
engines there; what comes in is handed on engine by engine as ``[uuid, *frames]``,
however it came.
"""
from __future__ import annotations

from typing import Callable, Iterable

import zmq

from ..protocol import relay, wire


class EnginePort:
    def __init__(self, sock: zmq.Socket, drop: wire.DropLog):
        self.sock = sock
        self.drop = drop
        self.relay_of: dict[bytes, bytes] = {}  # engine uuid -> identity of the relay it came through

    def send(self, uuid: bytes, frames: list) -> None:
        relay_ident = self.relay_of.get(uuid)
        if relay_ident is None:
            wire.send(self.sock, [uuid, *frames])
        else:
            wire.send(self.sock, [relay_ident, *relay.pack_down([uuid], frames)])

    def send_many(self, uuids: Iterable[bytes], frames: list) -> None:
        """The same ``frames`` to each engine of ``uuids``: once per relay."""
        behind: dict[bytes, list[bytes]] = {}
        relay_of = self.relay_of
        for uuid in uuids:
            relay_ident = relay_of.get(uuid)
            if relay_ident is None:
                wire.send(self.sock, [uuid, *frames])
            else:
                behind.setdefault(relay_ident, []).append(uuid)
        for relay_ident, engines in behind.items():
            wire.send(self.sock, [relay_ident, *relay.pack_down(engines, frames)])

    def on_frames(self, frames: list, handle: Callable[[list], bool]) -> None:
        """Pass each engine's message in ``frames`` (as received) to ``handle([uuid, *frames])``,
        which says whether it was signed. The route is set before, as the answer may go
        at once, and put back when the message was not signed."""
        if len(frames) < 3 or len(frames[1]):  # a relayed message begins with relay.RELAYED
            if not self.relay_of:
                handle(frames)
            else:
                self._handle_by(frames[0], None, frames, handle)  # it speaks for itself now
            return
        relay_ident = frames[0]
        try:
            messages = list(relay.unpack_up(frames[1:]))
        except wire.ProtocolError as exc:
            return self.drop(exc)
        for uuid, message in messages:
            self._handle_by(uuid, relay_ident, [uuid, *message], handle)

    def _handle_by(self, uuid: bytes, relay_ident: bytes | None, frames: list,
                   handle: Callable[[list], bool]) -> None:
        """``handle(frames)`` with ``uuid`` routed through ``relay_ident`` (None: direct),
        the route as it was if they were not signed."""
        before = self.relay_of.get(uuid)
        self._route(uuid, relay_ident)
        if not handle(frames):
            self._route(uuid, before)

    def _route(self, uuid: bytes, relay_ident: bytes | None) -> None:
        if relay_ident is None:
            self.relay_of.pop(uuid, None)
        else:
            self.relay_of[uuid] = relay_ident

    def forget(self, uuid: bytes) -> None:
        """An engine left: no route to keep for it."""
        self.relay_of.pop(uuid, None)

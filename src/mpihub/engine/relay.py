"""A relay: the task traffic of one node's engines on one connection to the controller.

With a thousand engines on one controller, every request to all of them is a thousand
messages out and a thousand back, each its own send and receive in the controller's
loop and its own TCP write in its I/O thread. A relay on each node cuts that to one
message each way per node and turn: the controller sends a request for every engine of
the node once (:meth:`~mpihub.controller.engine_port.EnginePort.send_many`), the relay
hands it to each engine, and it gathers the replies that come in one turn into one
message up. Framing: :mod:`mpihub.protocol.relay`. A relay holds no key and reads no
header; the engines' messages pass it signed as they were. Engines keep their heartbeat
connections to the controller, so a dead engine is still found by its silence.

``mpihub engine --many N --relay`` puts a relay in a light-engine host (its engines
reach it in process), ``--fork N --relay`` in the keeper of N forked engines
(:mod:`.keeper_relay`; they reach it over a Unix socket). A relay takes any engine whose
task socket connects to its ``local_url``.
"""
from __future__ import annotations

import logging
import uuid as uuidlib

import zmq

from ..protocol import relay, wire
from ..protocol.curve import Curve

log = logging.getLogger("mpihub.engine.relay")

#: Most replies, and bytes, one message up carries (past either it goes as it is and the
#: next one starts): bounds on its size and on the wait of the first reply in it.
MAX_GATHERED = 4096
MAX_GATHERED_BYTES = 64 << 20


class Relay:
    """Relays between engines connected to ``local_url`` and the controller's engine
    port at ``controller_url``. It does no waiting of its own: its owner wakes it when
    :attr:`up` or :attr:`down` is readable, and after sending on the engines' sockets,
    and calls :meth:`pump`.

    An owner whose engines run in its own thread (a light-engine host) knows without
    asking a socket what waits: with ``deliveries`` set to a list, :meth:`carry_down`
    appends the uuid of each engine it hands a message, and :meth:`carry_up` takes
    ``count`` messages that the owner's engines sent. Asking a ZMQ socket whether a
    message waits is a system call; at a thousand engines a turn, the calls cost more
    than the messages."""

    def __init__(self, context: zmq.Context, controller_url: str, local_url: str, curve: Curve | None = None):
        self.up = context.socket(zmq.DEALER)
        self.up.routing_id = b"relay-" + uuidlib.uuid4().hex.encode()
        self.up.linger = 0
        self.up.hwm = 0
        if curve:
            curve.client(self.up)
        self.up.connect(controller_url)
        self.down = context.socket(zmq.ROUTER)
        self.down.linger = 0
        self.down.hwm = 0
        self.down.router_handover = True  # an engine that reconnects keeps its uuid
        self.down.bind(local_url)
        self.local_url = local_url
        self.drop = wire.DropLog(log, "the relay")
        self.gathered = self.delivered = 0  # messages carried up and down
        self.deliveries: list[bytes] | None = None

    def pump(self) -> bool:
        """Carry everything waiting, both ways; whether anything was."""
        moved = False
        while wire.readable(self.down):
            self.carry_up(MAX_GATHERED)
            moved = True
        return self.carry_down() or moved

    def carry_up(self, count: int) -> int:
        """Send up, in one message, at most ``count`` of the engines' messages that wait
        (and at most MAX_GATHERED_BYTES of them); returns how many went."""
        messages, nbytes = [], 0
        while len(messages) < count and nbytes < MAX_GATHERED_BYTES:
            try:
                frames = wire.recv(self.down, zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) > 1:  # an engine's message is never empty
                messages.append((frames[0], frames[1:]))
                nbytes += sum(len(f) for f in frames)
        if messages:
            wire.send(self.up, relay.pack_up(messages))
            self.gathered += len(messages)
        return len(messages)

    def carry_down(self) -> bool:
        """Hand each engine what came for it; whether anything came."""
        moved = False
        while wire.readable(self.up):
            frames = wire.recv(self.up)
            moved = True
            try:
                uuids, message = relay.unpack_down(frames)
            except wire.ProtocolError as exc:
                self.drop(exc)
                continue
            for uuid in uuids:
                wire.send(self.down, [uuid, *message])
            self.delivered += len(uuids)
            if self.deliveries is not None:
                self.deliveries.extend(uuids)
        return moved

    def close(self) -> None:
        self.up.close()
        self.down.close()

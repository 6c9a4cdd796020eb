"""The client ROUTER of a controller process: who is connected, and where replies go.

A client has two sockets: it sends on one and receives on the other, and its
``connect`` (sent on the receiving socket) names the sending one, so every reply and
notice is addressed to the receiving identity. ``connect`` and ``close`` are handled
here; everything else goes to the layout's handler with the identity to answer. A
socket a client both sends and receives on (a thread's own, for its blocking calls)
never says connect: it is known from the requests it sends.

What goes to clients waits in an outbox until the loop's turn ends (:meth:`flush`):
then each client gets what is its own in order, as one ``batch`` when there are several,
so that the replies of a thousand engines reach it as a few messages.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable

import zmq

from ..protocol import wire
from ..protocol.schema import Key, Msg
from .loop import Loop

log = logging.getLogger("mpihub.controller")

#: Sockets that send requests and take their replies in place (one per client thread
#: that made blocking calls) the port remembers, the latest.
IN_PLACE_SOCKETS = 10_000


class ClientPort:
    def __init__(self, loop: Loop, sock: zmq.Socket, connect_fields: Callable[[], dict],
                 handle: Callable[[bytes, wire.Message], None]):
        self.loop = loop
        self.sock = sock
        self.clients: set[bytes] = set()  # receiving identities of connected clients
        self._answered_in_place: OrderedDict[bytes, None] = OrderedDict()  # sockets that send and receive
        self._reply_to: dict[bytes, bytes] = {}  # a client's sending identity -> its receiving one
        self._connect_fields = connect_fields  # what a connecting client is told besides its request id
        self._handle = handle
        self.drop = wire.DropLog(log, "the client socket")
        self._outbox: dict[bytes, list[list]] = {}
        loop.after_turn(self.flush)

    def on_frames(self, frames: list) -> None:
        self.loop.routed(frames, self.drop, self._from_client)

    def _from_client(self, ident: bytes, msg: wire.Message) -> None:
        """Connect and close here, the rest to the handler, addressed to the sender's
        receiving identity: the one its connect named, else (a message that came before
        the connect, after a restart or a reconnect) the one the message names."""
        came_on = ident
        reply_to = self._reply_to.get(ident)
        if reply_to is None:
            named = msg.header.get(Key.REPLY_TO)
            reply_to = named.encode() if isinstance(named, str) else ident
        ident = reply_to
        if msg.type == Msg.CONNECT:
            send_as = msg.header.get(Key.SEND_AS)
            if isinstance(send_as, str):
                self._reply_to[send_as.encode()] = ident
            self.clients.add(ident)
            self.send(ident, {Key.TYPE: Msg.CONNECT_REPLY, Key.REQUEST_ID: msg.header.get(Key.REQUEST_ID),
                              **self._connect_fields()})
        elif msg.type == Msg.CLOSE:
            self.clients.discard(ident)
            for sender in [s for s, r in self._reply_to.items() if r == ident]:
                del self._reply_to[sender]
        else:
            dropped = self.drop.count
            self._handle(ident, msg)
            if came_on == ident and msg.type in (Msg.APPLY, Msg.EXECUTE) and self.drop.count == dropped:
                self._answered_in_place[ident] = None  # a request taken: its socket waits for the reply
                if len(self._answered_in_place) > IN_PLACE_SOCKETS:
                    self._answered_in_place.popitem(last=False)

    def reachable(self, ident: bytes) -> bool:
        """Whether a message sent to ``ident`` reaches a client that is connected."""
        return ident in self.clients or ident in self._answered_in_place

    def send(self, ident: bytes, header: dict, content: bytes = b"") -> None:
        self.deliver(ident, wire.pack(self.loop.signer, header, content))

    def deliver(self, ident: bytes, frames: list) -> None:
        """Send a message (its frames, signed) to a client, at the end of this turn."""
        queued = self._outbox.get(ident)
        if queued is None:
            self._outbox[ident] = [frames]
        else:
            queued.append(frames)

    def notify(self, header: dict) -> None:
        """One message to every connected client."""
        frames = wire.pack(self.loop.signer, header)
        for ident in self.clients:
            self.deliver(ident, frames)

    def flush(self) -> None:
        """Send what the outbox holds: to each client its messages in order, one batch."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, {}
        for ident, messages in outbox.items():
            frames = messages[0] if len(messages) == 1 else wire.batch(self.loop.signer, messages)
            wire.send(self.sock, [ident, *frames])

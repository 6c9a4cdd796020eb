"""Picking up after the connection to the controller broke and came back.

ZMQ reconnects a client's sockets by itself, after a network cut or once a controller
restarted with ``--restore`` listens on its old ports again; but replies sent while
the connection was down are gone, and a restarted controller does not know the
client. So when a receiving socket completes a new handshake, the client says hello
on it again, takes the engine table from the answer, and asks for the result of
every task it still waits for (on the sending socket, after every request sent
before): stored ones come at once, running ones when they finish. A task the
controller has never heard of was lost with the old connection, and fails, saying so.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import zmq

from ..protocol import wire
from ..protocol.schema import Key, Msg

if TYPE_CHECKING:
    from .core import ClientCore

log = logging.getLogger("mpihub.client")

#: Why a result the client waited for cannot come after a reconnect, by the state the
#: controller reports for it.
LOST = {
    "unknown": "the controller has no record of it: the request was lost with the broken connection "
               "(or the controller restarted without its task store)",
    "purged": "it was purged from the controller's store while the connection was down",
    "evicted": "its result was evicted from the controller's store before the connection came back",
    "unstored": "its result was too large for the controller's store, and was sent while the connection was down",
    "direct": "its reply was sent while the connection was down, and its data went straight from the engine",
}
#: Queries asked again after a reconnect (asking twice changes nothing); others fail.
REPEATABLE = {"queue_status", "db_query", "result"}


class Reconnector:
    """Runs on whichever thread receives for the client (it owns the sockets then)."""

    def __init__(self, core: "ClientCore"):
        self.core = core
        self._hellos: dict[str, str] = {}  # connect rid -> the front it went to
        self._queries: dict[str, list[str]] = {}  # result query rid -> the ids asked for
        self.reconnects = 0
        self.up = threading.Event()  # the Hub's receiving socket is connected and greeted
        self.up.set()
        self.stopping = False  # this client asked the controller to shut down

    def disconnected(self, front: str) -> None:
        where = "" if front == "hub" else f"'s {front} path"
        if self.stopping:
            log.info("the controller%s closed the connection after the shutdown asked of it", where)
        else:
            log.warning("lost the connection to the controller%s; reconnecting", where)
        if front == "hub":
            self.up.clear()

    def reconnected(self, sock: zmq.Socket, front: str) -> None:
        """A receiving socket has a new connection: say hello on it again."""
        self.reconnects += 1
        rid = self.core.new_id()
        self._hellos[rid] = front
        sock.send_multipart(wire.pack(self.core.signer, {Key.TYPE: Msg.CONNECT, Key.REQUEST_ID: rid,
                                                         Key.SEND_AS: self.core.sending_identity}))

    def on_connect_reply(self, msg: wire.Message) -> None:
        front = self._hellos.pop(msg.header.get(Key.REQUEST_ID), None)
        if front is None:
            return
        if front == "hub":
            self.core.replace_engines(msg.header.get(Key.ENGINES) or [])
            self._retry_queries()
            self.up.set()
        waiting = list(self.core.pending)
        log.warning("connected to the controller%s again; asking for the %d results still awaited",
                    "" if front == "hub" else f"'s {front} path", len(waiting))
        if waiting:
            rid = self.core.new_id()
            self._queries[rid] = waiting
            self.core.send({Key.TYPE: Msg.QUERY, Key.OP: "result", Key.REQUEST_ID: rid, Key.IDS: waiting,
                            Key.REPLY_TO: self.core.receiving_identity})

    def _retry_queries(self) -> None:
        """Queries waiting when the connection broke: their answers may be lost. Ask
        again those that change nothing; the others fail (they may have been done)."""
        for rid, slot in list(self.core.queries.items()):
            op = slot.request.get(Key.OP)
            if op in REPEATABLE:
                self.core.send(slot.request)
            elif self.core.queries.pop(rid, None) is not None:
                slot.lost = True
                slot.header = {Key.OK: False, Key.ERROR: f"the connection to the controller broke while "
                               f"it handled {op!r}, which may or may not have been done: check before asking again"}
                slot.event.set()

    def on_query_reply(self, msg: wire.Message) -> bool:
        """Handle the answer to a result query made here; False if it was not one."""
        asked = self._queries.pop(msg.header.get(Key.REQUEST_ID), None)
        if asked is None:
            return False
        if not msg.header.get(Key.OK):
            log.warning("the controller refused the results awaited after a reconnect: %s", msg.header.get(Key.ERROR))
            return True
        outcome = msg.header.get(Key.RESULT) or {}
        for state, why in LOST.items():
            for msg_id in outcome.get(state, ()):
                slot = self.core.pending.get(msg_id)
                if slot is None or state == "unknown" and slot[0]._local is not None:
                    continue  # answered meanwhile, or sent on a thread's own socket, which may not be back yet
                self.core.fail_pending(msg_id, "ControllerError", f"task {msg_id} is lost: {why}")
        return True

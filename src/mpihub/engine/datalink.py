"""The engine's direct data link: large buffers to and from clients in one hop.

Requests and replies always travel through the controller, which keeps them in order
per engine. Their large buffers can skip that second hop: the client sends them to the
engine's own ROUTER socket under a token named in the request, and the engine sends
large results straight back the same way. A client that cannot reach an engine (or
has not linked to it yet) simply gets everything through the controller.
"""
from __future__ import annotations

import logging
import time

import zmq

from .. import config
from ..protocol import connection, ports, wire
from ..protocol.curve import Curve
from ..protocol.schema import Key, Msg

log = logging.getLogger("mpihub.engine.datalink")


class BulkMissing(RuntimeError):
    """The buffers a request announced never arrived."""


class DataLink:
    def __init__(self, context: zmq.Context, signer: wire.Signer, bind_ip: str, curve: Curve | None = None):
        self.signer = signer
        self.sock = context.socket(zmq.ROUTER)
        if curve:
            curve.server(self.sock)
        self.sock.linger = 0
        self.sock.router_mandatory = True  # sending to a client that is not linked fails at once
        self.sock.router_handover = True  # a client that relinks takes its identity over
        bind_to = "*" if bind_ip in ("*", "0.0.0.0") else bind_ip
        data_ports = ports.PortSet.from_env(ports.DATA_PORTS_ENV, "--data-ports")  # a firewall's open ports
        port = (data_ports.bind(self.sock, bind_to, "data link") if data_ports
                else self.sock.bind_to_random_port(f"tcp://{bind_to}"))
        self.urls = connection.channel_urls(bind_ip, {"data": port})[1]["data"]
        self._stash: dict[str, tuple[float, list]] = {}
        self._drop = wire.DropLog(log, "the data link")

    def receive_pending(self) -> None:
        """Take in whatever arrived: bulk buffers are stashed, hellos answered."""
        while wire.readable(self.sock):
            frames = self.sock.recv_multipart(copy=False)
            ident = frames[0].bytes
            try:
                msg = wire.unpack(self.signer, frames[1:])
            except wire.ProtocolError as exc:
                self._drop(exc)
                continue
            kind = msg.type
            if kind == Msg.BULK and isinstance(msg.header.get(Key.TOKEN), str):
                self._stash[msg.header[Key.TOKEN]] = (time.monotonic(), msg.buffers)
            elif kind == Msg.HELLO:
                try:
                    self._send(ident, {Key.TYPE: Msg.HELLO_REPLY, Key.REQUEST_ID: msg.header.get(Key.REQUEST_ID)})
                except zmq.ZMQError as exc:  # the client left already
                    log.info("could not answer a data-link hello: %s", exc)
            else:
                self._drop(f"unknown type {kind!r}")
        self._expire()

    def take(self, token: str, timeout: float) -> list:
        """The buffers stashed under ``token``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while token not in self._stash:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BulkMissing(f"the data for this request did not arrive within {timeout:g} s")
            if self.sock.poll(left * 1000):
                self.receive_pending()
        return self._stash.pop(token)[1]

    def discard(self, token: str) -> None:
        self._stash.pop(token, None)

    def try_send(self, ident: bytes, token: str, buffers: list) -> zmq.MessageTracker | None:
        """Send result buffers straight to a linked client; None if it is not linked
        (or its queue is full), and the caller relays them through the controller."""
        try:
            return self._send(ident, {Key.TYPE: Msg.BULK, Key.TOKEN: token}, buffers, track=True)
        except zmq.ZMQError as exc:
            log.debug("direct link to %r unavailable (%s); relaying", ident, exc)
            return None

    def _send(self, ident: bytes, header: dict, buffers: list = (), track: bool = False):
        frames = [ident, *wire.pack(self.signer, header, b"", buffers)]
        if track:
            return self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False, track=True)
        self.sock.send_multipart(frames, zmq.NOBLOCK)
        return None

    def _expire(self) -> None:
        """Forget stashed data nobody claimed in time (its request was lost or aborted)."""
        if not self._stash:
            return
        cutoff = time.monotonic() - config.BULK_TIMEOUT
        for token in [t for t, (arrived, _) in self._stash.items() if arrived < cutoff]:
            del self._stash[token]

    def close(self) -> None:
        self.sock.close(linger=0)

"""What every controller process shares: its key, its ZMQ context, and one poll loop.

A controller process (the whole controller, or in a split controller its Hub or one of
its paths) registers a handler per socket; the loop reads each ready socket in turns of
at most 256 messages, wakes for the earliest timer a subclass asks for, and stops on a
shutdown request, SIGTERM or SIGINT, always through :meth:`close`.
"""
from __future__ import annotations

import logging
import signal
import time
from typing import Callable

import zmq

from .. import process
from ..protocol import wire
from ..protocol.curve import Curve

log = logging.getLogger("mpihub.controller")

#: What a handler raises for a well-signed message with missing or mistyped fields.
MALFORMED = (KeyError, TypeError, ValueError, AttributeError)


class Service:
    def __init__(self, key: str, curve: Curve | None = None):
        self.key = key
        self.curve = curve  # CURVE keys when the cluster encrypts (``--curve``)
        self.signer = wire.Signer(key)
        self.context = zmq.Context()
        self._handlers: dict[zmq.Socket, Callable[[list], None]] = {}
        self._stopping = False
        self.clients: set[bytes] = set()  # receiving identities of connected clients
        self._reply_to: dict[bytes, bytes] = {}  # a client's sending identity -> its receiving one
        self._drop_client = wire.DropLog(log, "the client socket")

    client_sock: zmq.Socket  # every controller process has a client ROUTER

    def _send_client(self, ident: bytes, header: dict, content: bytes = b"") -> None:
        wire.send(self.client_sock, [ident, *wire.pack(self.signer, header, content)])

    def _routed(self, frames: list, drop: wire.DropLog, handle: Callable[[bytes, wire.Message], None]) -> None:
        """Verify a ROUTER message ``[ident, envelope, *buffers]`` and pass it to
        ``handle(ident, msg)``; what does not verify, or what ``handle`` finds malformed,
        is logged and dropped by ``drop``: a message never ends the loop."""
        try:
            msg = wire.unpack(self.signer, frames[1:])
        except wire.ProtocolError as exc:
            return drop(exc)
        try:
            handle(frames[0], msg)
        except MALFORMED as exc:
            drop(f"malformed {msg.type!r}: {exc!r}")

    def _on_client(self, frames: list) -> None:
        self._routed(frames, self._drop_client, self._from_client)

    def _from_client(self, ident: bytes, msg: wire.Message) -> None:
        """Connect and close here, the rest to :meth:`_client_message`, addressed to the
        sender's receiving identity: the one its connect named, else (a query that came
        before the connect, after a restart or a reconnect) the one the message names."""
        reply_to = self._reply_to.get(ident)
        if reply_to is None:
            named = msg.header.get("rt")
            reply_to = named.encode() if isinstance(named, str) else ident
        ident = reply_to
        if msg.type == "connect":
            send_as = msg.header.get("send_as")
            if isinstance(send_as, str):
                self._reply_to[send_as.encode()] = ident
            self.clients.add(ident)
            self._send_client(ident, {"t": "connect_reply", "rid": msg.header.get("rid"), **self._connect_fields()})
        elif msg.type == "close":
            self.clients.discard(ident)
            for sender in [s for s, r in self._reply_to.items() if r == ident]:
                del self._reply_to[sender]
        else:
            self._client_message(ident, msg)

    def _connect_fields(self) -> dict:
        """What a connecting client is told besides its request id."""
        return {}

    def _client_message(self, ident: bytes, msg: wire.Message) -> None:
        self._drop_client(f"unexpected message type {msg.type!r}")

    def _bind_routers(self, ip: str, names: tuple[str, ...], fixed: dict[str, int] | None = None) -> dict[str, int]:
        """Bind a ROUTER per name on ``ip`` as ``self.<name>_sock``: on the port ``fixed``
        names for it (a restored controller's), else a random one."""
        bind_ip = "*" if ip in ("0.0.0.0", "*") else ip
        ports = {}
        for name in names:
            sock = self.context.socket(zmq.ROUTER)
            sock.linger = 0
            sock.hwm = 0  # a ROUTER drops what passes a peer's high-water mark: queue it instead
            sock.router_handover = True
            if self.curve:
                self.curve.server(sock)
            setattr(self, f"{name}_sock", sock)
            port = (fixed or {}).get(name)
            if port is None:
                ports[name] = sock.bind_to_random_port(f"tcp://{bind_ip}")
                continue
            try:
                sock.bind(f"tcp://{bind_ip}:{port}")
            except zmq.ZMQError as exc:
                raise RuntimeError(f"cannot bind the {name} port {port} again ({exc}): is the controller "
                                   "that used it still running?") from exc
            ports[name] = port
        return ports

    def _handle(self, sock: zmq.Socket, handler: Callable[[list], None]) -> None:
        """Call ``handler(frames)`` for every message that arrives on ``sock``."""
        self._handlers[sock] = handler

    def _next_wakeup(self) -> float | None:
        """The time.time() at which :meth:`_wake` should run next (None: no timer)."""
        return None

    def _wake(self) -> None:
        """Runs after every poll that had a timer; subclasses do their timed work here."""

    def serve_forever(self) -> None:
        """Run until a shutdown request, SIGTERM or SIGINT; always cleans up."""
        def on_signal(signum, frame):
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        poller = zmq.Poller()
        for sock in self._handlers:
            poller.register(sock, zmq.POLLIN)
        wakeup = process.signal_wakeup()
        poller.register(wakeup, zmq.POLLIN)
        try:
            while not self._stopping:
                deadline = self._next_wakeup()
                wait = None if deadline is None else max(0, int((deadline - time.time()) * 1000) + 1)
                ready = poller.poll(wait)
                if deadline is not None:
                    self._wake()
                for sock, _ in ready:
                    if sock is wakeup:
                        process.drain(wakeup)  # the signal handler runs right after this
                        continue
                    handle = self._handlers[sock]
                    for _ in range(256):  # then let the other sockets have a turn
                        if self._stopping or not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                            break
                        handle(wire.recv(sock))
        finally:
            self.close()

    def close(self) -> None:
        """Release every socket and the context; subclasses stop what they own first
        (threads using a socket must have ended)."""
        if self.curve:
            self.curve.stop()
        if not self.context.closed:
            self.context.destroy(linger=200)

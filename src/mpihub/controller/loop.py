"""One controller process's event loop: its key, its ZMQ context, its sockets and timers.

Every controller process (the whole controller, or a split controller's Hub or one of
its paths) is a :class:`Loop` and the parts it is built from. The loop reads each ready
socket in turns of at most 256 messages and hands every message to that socket's
handler; after each turn it runs what parts asked to run then (a client port sends what
it gathered); it wakes a part whose timer is due; it stops on a shutdown request,
SIGTERM or SIGINT, always through the layout's ``close``. Parts never poll or sleep
themselves.
"""
from __future__ import annotations

import logging
import signal
import time
from typing import TYPE_CHECKING, Callable, Protocol

import zmq

from .. import process
from ..protocol import ports as port_sets
from ..protocol import wire
from ..protocol.curve import Curve
from ..protocol.schema import Msg

if TYPE_CHECKING:
    from .clients import ClientPort
    from .dashboard import DashboardServer
    from .hub import Hub
    from .router import Router

log = logging.getLogger("mpihub.controller")

#: What a handler raises for a well-signed message with missing or mistyped fields.
MALFORMED = (KeyError, TypeError, ValueError, AttributeError)
#: Messages read from one socket before the others get a turn.
TURN = 256


class Timer(Protocol):
    """A part with timed work: when it is due next (``time.time()``; None: nothing
    timed), and the work, run once that time has come."""

    def next_wakeup(self) -> float | None: ...

    def wake(self) -> None: ...


class Loop:
    def __init__(self, key: str, curve: Curve | None = None):
        self.key = key
        self.curve = curve  # CURVE keys when the cluster encrypts (``--curve``)
        self.signer = wire.Signer(key)
        self.context = zmq.Context()
        self.stopping = False
        self._handlers: dict[zmq.Socket, Callable[[list], None]] = {}
        self._timers: list[Timer] = []
        self._after_turn: list[Callable[[], None]] = []
        #: the ports a firewall lets through (``--ports``); None: any free port
        self.port_set = port_sets.PortSet.from_env(port_sets.CONTROLLER_PORTS_ENV, "--ports")

    def bind_routers(self, ip: str, names: tuple[str, ...],
                     fixed: dict[str, int] | None = None) -> tuple[dict[str, zmq.Socket], dict[str, int]]:
        """A ROUTER per name, bound on ``ip``: on the port ``fixed`` names for it (a
        restored controller's), else the first free one of ``--ports``, else a random
        one. Returns the sockets and the ports."""
        bind_ip = "*" if ip in ("0.0.0.0", "*") else ip
        sockets, ports = {}, {}
        for name in names:
            sock = sockets[name] = self.context.socket(zmq.ROUTER)
            sock.linger = 0
            sock.hwm = 0  # a ROUTER drops what passes a peer's high-water mark: queue it instead
            sock.router_handover = True
            if self.curve:
                self.curve.server(sock)
            port = (fixed or {}).get(name)
            if port is None and self.port_set:
                ports[name] = self.port_set.bind(sock, bind_ip, name)
                continue
            if port is None:
                ports[name] = sock.bind_to_random_port(f"tcp://{bind_ip}")
                continue
            try:
                sock.bind(f"tcp://{bind_ip}:{port}")
            except zmq.ZMQError as exc:
                raise RuntimeError(f"cannot bind the {name} port {port} again ({exc}): is the controller "
                                   "that used it still running?") from exc
            ports[name] = port
        return sockets, ports

    def on(self, sock: zmq.Socket, handler: Callable[[list], None]) -> None:
        """Call ``handler(frames)`` for every message that arrives on ``sock``."""
        self._handlers[sock] = handler

    def add_timer(self, timer: Timer) -> None:
        self._timers.append(timer)

    def after_turn(self, work: Callable[[], None]) -> None:
        """Run ``work()`` after every turn of the loop (and once more when it closes)."""
        self._after_turn.append(work)

    def end_turn(self) -> None:
        for work in self._after_turn:
            work()

    def routed(self, frames: list, drop: wire.DropLog, handle: Callable[[bytes, wire.Message], None]) -> bool:
        """Verify a ROUTER message ``[ident, envelope, *buffers]`` and pass it to
        ``handle(ident, msg)``; what does not verify, or what ``handle`` finds malformed,
        is logged and dropped by ``drop``: a message never ends the loop. Returns
        whether it was signed with the cluster's key."""
        try:
            msg = wire.unpack(self.signer, frames[1:])
        except wire.ProtocolError as exc:
            drop(exc)
            return False
        try:
            handle(frames[0], msg)
        except MALFORMED as exc:
            drop(f"malformed {msg.type!r}: {exc!r}")
        return True

    def _next_wakeup(self) -> float | None:
        times = [t for t in (timer.next_wakeup() for timer in self._timers) if t is not None]
        return min(times) if times else None

    def _wake_due(self) -> None:
        for timer in self._timers:
            due = timer.next_wakeup()
            if due is not None and due <= time.time():
                timer.wake()

    def serve_forever(self, close: Callable[[], None]) -> None:
        """Run until a shutdown request, SIGTERM or SIGINT; then ``close()``, always."""
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
            while not self.stopping:
                deadline = self._next_wakeup()
                wait = None if deadline is None else max(0, int((deadline - time.time()) * 1000) + 1)
                ready = poller.poll(wait)
                if deadline is not None:
                    self._wake_due()
                for sock, _ in ready:
                    if sock is wakeup:
                        process.drain(wakeup)  # the signal handler runs right after this
                        continue
                    handle = self._handlers[sock]
                    for _ in range(TURN):  # then let the other sockets have a turn
                        if self.stopping:
                            break
                        try:  # not wire.readable(): a system call per message, where a queue is long
                            frames = wire.recv(sock, zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        handle(frames)
                self.end_turn()
        finally:
            close()

    def close(self) -> None:
        """Release every socket and the context (threads using a socket must have ended)."""
        if self.curve:
            self.curve.stop()
        if not self.context.closed:
            self.context.destroy(linger=200)


class Layout:
    """What a controller process built around a :class:`Loop` shares: it runs the loop
    until told to stop, then closes what it assembled."""

    name = "controller"  # for the log
    loop: Loop
    hub: "Hub"
    dashboard: "DashboardServer | None" = None

    def serve_forever(self) -> None:
        self.loop.serve_forever(self.close)

    def stop(self) -> None:
        """End the loop (after the message being handled)."""
        self.loop.stopping = True

    def shut_down(self) -> None:
        """What the layout stops first, while its sockets are still open."""

    def close(self) -> None:
        self.shut_down()
        self.loop.end_turn()
        if self.dashboard:
            self.dashboard.stop()
        self.loop.close()
        if self.hub.db:
            self.hub.db.close()
        log.info("%s stopped", self.name)


class RouterLayout(Layout):
    """A layout whose requests go through its own :class:`~.router.Router` (the
    one-process controller, a split path): requests from clients go to the router, and
    so do replies and output from engines; each layout says what it does with the rest."""

    router: "Router"
    clients: "ClientPort"

    def from_client(self, ident: bytes, msg: wire.Message) -> None:
        if msg.type in (Msg.APPLY, Msg.EXECUTE):
            self.router.submit(ident, msg)
        elif not self.other_client_message(ident, msg):
            self.clients.drop(f"unexpected message type {msg.type!r}")

    def other_client_message(self, ident: bytes, msg: wire.Message) -> bool:
        """Handle a client message that is not a request; False: it is not for this layout."""
        return False

    def on_engine(self, frames: list) -> None:
        self.router.engine_port.on_frames(frames, self._on_engine_message)

    def _on_engine_message(self, frames: list) -> bool:
        return self.loop.routed(frames, self.router.drop, self._from_engine)

    def _from_engine(self, uuid: bytes, msg: wire.Message) -> None:
        engine_id = self.hub.by_uuid.get(uuid)
        if not (self.router.from_engine(engine_id, msg) or self.other_engine_message(uuid, engine_id, msg)):
            self.router.drop(f"unexpected {msg.type!r} from {'unknown engine' if engine_id is None else engine_id}")

    def other_engine_message(self, uuid: bytes, engine_id: int | None, msg: wire.Message) -> bool:
        """Handle an engine message that is not a reply or output; False: not for this layout."""
        return False

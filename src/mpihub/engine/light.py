"""Light engines: many engines in one process, to test and measure a controller at scale.

A cluster of 4,096 engines does not fit one machine as 4,096 processes, yet what must
be proved at that size is the controller's side: registration storms, heartbeats,
one request fanned out to every engine and the replies gathered, the engine table.
A :class:`LightHost` runs ``n`` engines in one process and one thread. Each has its own
uuid and its own task and heartbeat sockets; it registers (retrying with backoff while
the controller is busy), beats at the period the controller asks for, greets a split
controller's paths, and answers requests with a real :class:`~.runner.Runner` over the
real protocol, so the controller cannot tell it from a full engine. What they share is
the thread: one request runs at a time in the process, and a long task stalls its
neighbours' heartbeats, so light engines are for short tasks. They have no MPI, no
direct data links and take no signals; ``mpihub engine --many N`` starts a host.

The host waits with epoll on each socket's notification descriptor rather than with a
zmq poll, whose cost grows with the number of sockets: with 500 engines a poll over
1,000 sockets on every wake-up would cost more than the requests. Those descriptors
are edge-triggered, so every socket that was woken or sent on is read until it is empty.
Behind the relay (``--relay``) the host asks no task socket at all: the relay is in
this thread, so the host counts what it hands each engine and what they send it, and
reads exactly that (asking a ZMQ socket whether a message waits is a system call).
"""
from __future__ import annotations

import heapq
import logging
import os
import selectors
import signal
import socket
import time
import uuid as uuidlib

import zmq

from .. import config, process
from ..protocol import connection, wire
from ..protocol.curve import Curve
from ..protocol.schema import CONTROL_ABORT, CONTROL_SHUTDOWN, Key, Msg
from . import registration
from .heartbeat import silent_controller
from .relay import Relay
from .runner import ABORTED, Runner, task_id_for

log = logging.getLogger("mpihub.engine.light")

#: Sockets (so file descriptors) of one light engine: task, heartbeat, and one per path
#: of a split controller.
SOCKETS_PER_ENGINE = 4
#: With a relay, the replies go up after every so many engines have run: the controller
#: handles the first while the host runs the rest.
RELAY_EVERY = 64


class LightEngine:
    """One engine of a host: its sockets, its registration and its namespace."""

    __slots__ = ("index", "uuid", "task", "heart", "paths", "id", "runner", "period", "controller_timeout",
                 "last_answer", "retry_at", "pauses", "aborted", "closed", "owed")

    def __init__(self, index: int):
        self.index = index
        self.uuid = uuidlib.uuid4().hex.encode()
        self.paths: list[zmq.Socket] = []
        self.id: int | None = None
        self.runner: Runner | None = None
        self.period = config.HEARTBEAT_PERIOD
        self.controller_timeout = config.ENGINE_CONTROLLER_TIMEOUT
        self.last_answer = time.monotonic()
        self.retry_at: float | None = None  # when to ask again, while a registration is unanswered
        self.pauses = registration.pauses()
        self.aborted: set[str] = set()
        self.closed = False
        self.owed = 0  # behind the relay: messages it handed this engine, not yet read


class LightHost:
    """``n`` light engines of the controller described by ``info``, in this thread."""

    def __init__(self, info: dict, n: int, register_timeout: float = 60.0, relay: bool = False):
        if n < 1:
            raise ValueError(f"a light-engine host runs at least one engine, not {n}")
        self.info = connection.check(info)
        self.signer = wire.Signer(info["key"])
        self.curve = Curve.from_info(info)
        self.register_timeout = register_timeout
        process.raise_fd_limit(SOCKETS_PER_ENGINE * n + 64, f"{n} light engines")
        self.context = zmq.Context()
        self.context.max_sockets = SOCKETS_PER_ENGINE * n + 64
        self.engines = [LightEngine(i) for i in range(n)]
        self.relay: Relay | None = None  # with ``relay``: the task sockets' way to the controller
        self.by_uuid: dict[bytes, LightEngine] = {}
        self.unsent_up = 0  # behind the relay: messages the engines sent it, not yet carried up
        if relay:
            self.relay = Relay(self.context, info["engine"], f"inproc://relay-{os.getpid()}", self.curve)
            self.relay.deliveries = []
            self.by_uuid = {engine.uuid: engine for engine in self.engines}
        self.owner: dict[zmq.Socket, LightEngine] = {}
        self.selector = selectors.EpollSelector()
        self.sent_on: list[zmq.Socket] = []  # sockets sent on outside a read: to read next
        self.beats: list[tuple[float, int]] = []  # a heap of (next ping, engine index)
        self.waiting: set[int] = set()  # engines whose registration is unanswered
        self.details = {"hostname": socket.gethostname(), "pid": os.getpid(), "light": True, "relay": relay}
        self.ping = wire.pack(self.signer, {Key.TYPE: Msg.PING})
        self.drop = wire.DropLog(log, "a light engine's socket")
        self.live = n

    # -- sockets ------------------------------------------------------------------------

    def _dealer(self, engine: LightEngine, url: str, relayed: bool = False) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.routing_id = engine.uuid
        sock.linger = 0
        sock.hwm = 0
        if self.curve and not relayed:  # the relay is in this process; it encrypts what leaves it
            self.curve.client(sock)
        sock.connect(url)
        self.owner[sock] = engine
        self.selector.register(sock.getsockopt(zmq.FD), selectors.EVENT_READ, sock)
        return sock

    def _close(self, engine: LightEngine, why: str) -> None:
        if engine.closed:
            return
        engine.closed = True
        self.live -= 1
        for sock in (engine.task, engine.heart, *engine.paths):
            self.selector.unregister(sock.getsockopt(zmq.FD))
            del self.owner[sock]
            sock.close()
        log.debug("light engine %s stops: %s", engine.id, why)

    # -- registration -------------------------------------------------------------------

    def _register(self, engine: LightEngine, now: float) -> None:
        """Ask for an id (again, under the old one, when the controller forgot it)."""
        header = {Key.TYPE: Msg.REGISTER, Key.WANT_ID: engine.id, Key.INFO: self.details}
        if engine.id is not None:
            header.update({Key.HELD: [], Key.ANSWERED: [], Key.KEPT: []})
        self._send_task(engine, wire.pack(self.signer, header))
        engine.retry_at = now + next(engine.pauses)
        self.waiting.add(engine.index)

    def _registered(self, engine: LightEngine, header: dict, now: float) -> None:
        if engine.retry_at is None:
            return  # the answer to a retry, after the first answer
        if (why := registration.refusal(header)) is not None:
            raise RuntimeError(f"the controller refused light engine {engine.index}: {why}")
        first = engine.id is None
        engine.id, engine.retry_at = header[Key.ID], None
        self.waiting.discard(engine.index)
        engine.pauses = registration.pauses()
        engine.period = float(header.get(Key.HEARTBEAT_PERIOD, engine.period))
        engine.controller_timeout = float(header.get(Key.CONTROLLER_TIMEOUT, engine.controller_timeout))
        engine.last_answer = now
        if engine.runner is None:
            engine.runner = Runner(engine.id)
        engine.runner.engine_id = engine.id
        if first:  # a split controller's paths, each at its first address
            engine.paths = [self._dealer(engine, urls[0]) for urls in (header.get(Key.PATHS) or {}).values()]
        for sock in engine.paths:
            wire.send(sock, wire.pack(self.signer, {Key.TYPE: Msg.HELLO, Key.ID: engine.id}))
            self.sent_on.append(sock)
        if first:  # the first beats spread over a period
            heapq.heappush(self.beats, (now + engine.period * (engine.index % 97) / 97, engine.index))

    # -- the loop -----------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Register every engine at once (a storm), then serve until all have stopped."""
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        wakeup = process.signal_wakeup()
        self.selector.register(wakeup, selectors.EVENT_READ, wakeup)
        relay = self.relay
        if relay:
            for sock in (relay.up, relay.down):
                self.selector.register(sock.getsockopt(zmq.FD), selectors.EVENT_READ, relay)
        start = time.monotonic()
        for engine in self.engines:
            engine.task = (self._dealer(engine, relay.local_url, relayed=True) if relay
                           else self._dealer(engine, self.info["engine"]))
            engine.heart = self._dealer(engine, self.info["heartbeat"])
            self._register(engine, start)
        try:
            while self.live and not stopping:
                now = time.monotonic()
                due = self._timers(now, start)
                ready = [key.data for key, _ in self.selector.select(max(0.0, due - time.monotonic()))]
                ready += self.sent_on
                self.sent_on = []
                for sock in ready:
                    if sock is wakeup:
                        process.drain(wakeup)
                    elif sock is relay:
                        relay.pump()
                    else:
                        self._read(sock)
                if relay:
                    self._serve_relayed()
            if stopping:
                self._unregister_all()
                while relay and relay.pump():  # the goodbyes
                    pass
        finally:
            if relay:
                relay.close()
            self.context.destroy(linger=0)
            if self.curve:
                self.curve.stop()

    def _serve_relayed(self) -> None:
        """Carry the engines' messages up, hand them what came down, and run it, until
        nothing moves: the host counts what passes, so no socket is asked what waits."""
        relay = self.relay
        while True:
            self._carry_up()
            moved = relay.carry_down()
            handed, relay.deliveries = relay.deliveries, []
            if not (moved or handed or self.unsent_up):
                return
            for count, uuid in enumerate(handed, 1):
                engine = self.by_uuid.get(uuid)
                if engine is not None:
                    engine.owed += 1
                    self._take_owed(engine)
                if count % RELAY_EVERY == 0:  # the replies so far go up while the rest run
                    self._carry_up()

    def _carry_up(self) -> None:
        """What the engines sent the relay, up to the controller. Fewer there than
        counted means a :meth:`Relay.pump` carried them already."""
        if self.unsent_up:
            carried = self.relay.carry_up(self.unsent_up)
            self.unsent_up = self.unsent_up - carried if carried else 0

    def _take_owed(self, engine: LightEngine) -> None:
        """Handle the messages the relay handed ``engine`` (one left unread waits for its socket's wake-up)."""
        while engine.owed and not engine.closed:
            try:
                frames = wire.recv(engine.task, zmq.NOBLOCK)
            except zmq.Again:
                return
            engine.owed -= 1
            try:
                msg = wire.unpack(self.signer, frames)
            except wire.ProtocolError as exc:
                self.drop(exc)
                continue
            if not self._handle(engine, engine.task, msg):
                return

    def _send_task(self, engine: LightEngine, frames: list) -> None:
        """Send on ``engine``'s task socket outside a read of it: behind the relay, one
        more message for the relay to carry up; else a socket to read next (a send can
        take its wake-up)."""
        wire.send(engine.task, frames)
        if self.relay:
            self.unsent_up += 1
        else:
            self.sent_on.append(engine.task)

    def _read(self, sock: zmq.Socket) -> None:
        """Handle every message waiting on ``sock``."""
        engine = self.owner.get(sock)
        if engine is None or engine.closed:
            return
        if self.relay and sock is engine.task and engine.owed:
            return self._take_owed(engine)
        for msg in wire.pending(sock, self.signer, self.drop):  # (owed nothing: a wake-up to clear)
            if not self._handle(engine, sock, msg):
                return

    def _unregister_all(self) -> None:
        """SIGTERM: every engine says goodbye while the controller still runs."""
        bye = wire.pack(self.signer, {Key.TYPE: Msg.UNREGISTER})
        for engine in self.engines:
            if not engine.closed and engine.id is not None:
                engine.task.linger = 1000
                wire.send(engine.task, bye)
        for engine in self.engines:
            if not engine.closed:
                engine.task.close()

    def _timers(self, now: float, start: float) -> float:
        """Retry registrations, send the pings that are due, give up on a silent
        controller; returns when next to look."""
        waiting = [self.engines[i] for i in self.waiting]
        if now - start > self.register_timeout and (never := sum(e.id is None for e in waiting)):
            raise TimeoutError(f"{never} of {len(self.engines)} light engines got no answer from the "
                               f"controller at {self.info['engine']} within {self.register_timeout:.0f} s")
        due = now + 1.0
        for engine in waiting:
            if engine.closed:
                self.waiting.discard(engine.index)
                continue
            if engine.retry_at <= now:
                self._register(engine, now)
            due = min(due, engine.retry_at)
        while self.beats and self.beats[0][0] <= now:
            _, index = heapq.heappop(self.beats)
            engine = self.engines[index]
            if engine.closed:
                continue
            if now - engine.last_answer > silent_controller(engine.period, engine.controller_timeout):
                self._close(engine, "the controller is silent")
                continue
            wire.send(engine.heart, self.ping)
            self.sent_on.append(engine.heart)
            heapq.heappush(self.beats, (now + engine.period, index))
        return min(due, self.beats[0][0]) if self.beats else due

    def _handle(self, engine: LightEngine, sock: zmq.Socket, msg: wire.Message) -> bool:
        """One message for ``engine``; False once it has stopped."""
        kind, header = msg.type, msg.header
        now = time.monotonic()
        if sock is engine.heart:
            engine.last_answer = now
            if kind == Msg.PONG:
                period = header.get(Key.HEARTBEAT_PERIOD)
                if isinstance(period, (int, float)) and period > 0:
                    engine.period = float(period)
                if header.get(Key.UNKNOWN) and engine.retry_at is None:
                    self._register(engine, now)
            elif kind == Msg.CONTROL and header.get(Key.OP) == CONTROL_SHUTDOWN:
                self._close(engine, "shutdown requested by the controller")
                return False
            elif kind == Msg.CONTROL and header.get(Key.OP) == CONTROL_ABORT:
                engine.aborted.update(i for i in header.get(Key.IDS, ()) if isinstance(i, str))
            return True
        if kind == Msg.SHUTDOWN:
            self._close(engine, "shutdown requested by the controller")
            return False
        if kind == Msg.REGISTER_REPLY:
            self._registered(engine, header, now)
        elif kind in (Msg.APPLY, Msg.EXECUTE) and engine.runner is not None:
            self._run(engine, sock, msg)
        elif kind != Msg.HELLO_REPLY:
            self.drop(f"unexpected {kind!r} for light engine {engine.id}")
        return True

    def _run(self, engine: LightEngine, sock: zmq.Socket, msg: wire.Message) -> None:
        msg_id = task_id_for(msg.header, engine.id)
        if msg_id is None:
            return self.drop(f"malformed request: no task id for engine {engine.id} in it")
        reply = {Key.TYPE: Msg.REPLY, Key.ID: msg_id, Key.ENGINE_ID: engine.id}
        if msg_id in engine.aborted:
            engine.aborted.discard(msg_id)
            reply.update(ABORTED)
            frames, copy = wire.pack(self.signer, reply), True
        else:
            fields, data, buffers = engine.runner.run(msg.header, msg.content, msg.buffers, msg_id)
            reply.update(fields)
            frames, copy = wire.pack(self.signer, reply, data, buffers), not buffers
        wire.send(sock, frames, copy=copy)  # in a read of ``sock``, which looks at it again
        if self.relay and sock is engine.task:
            self.unsent_up += 1


def main(info: dict, n: int, timeout: float, relay: bool = False) -> None:
    """``mpihub engine --many N [--relay]``: run ``n`` light engines until they are stopped."""
    LightHost(info, n, register_timeout=timeout, relay=relay).serve_forever()

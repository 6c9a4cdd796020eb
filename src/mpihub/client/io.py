"""The client's sockets: a sending socket for user threads, and an IO thread that owns
everything that receives.

User threads send requests directly on the sending DEALER (under a lock), with no
hand-off. The IO thread owns the receiving DEALER (the controller routes every reply
and notice there, having been told at connection time which sending identity belongs
to it; a split controller's Hub and paths have one each) and one data-link DEALER per
engine: large buffers go to and come from engines
over those in one hop, matched to their request or reply by a token. Incoming messages
are verified and handed to a callback on the IO thread; results are unpickled later,
by whoever asks for them.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from typing import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from .. import config
from ..protocol import wire
from ..protocol.curve import Curve
from ..protocol.schema import Key, Msg

BULK_LATE = f"the result data did not arrive over the direct link within {config.BULK_TIMEOUT:g} s"

log = logging.getLogger("mpihub.client")


class Sender:
    """The sending socket; safe to use from any thread."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, frames: list, zero_copy: bool = False, track: bool = False) -> zmq.MessageTracker | None:
        with self._lock:
            if track:
                return self.sock.send_multipart(frames, copy=False, track=True)
            if zero_copy:
                self.sock.send_multipart(frames, copy=False)
            else:
                wire.send(self.sock, frames)
            return None

    def close(self) -> None:
        with self._lock:
            self.sock.close(linger=1000)


class LocalSender(Sender):
    """A thread's own socket for its blocking calls: it sends there and reads the reply.
    It lives as long as its thread does (the thread-local holds the only strong ref)."""

    def __init__(self, sock: zmq.Socket):
        super().__init__(sock)
        self.thread = threading.get_ident()

    def __del__(self):
        if not self.sock.closed:
            self.sock.close(linger=0)


class DeferredTracker:
    """Tracks a send the IO thread makes later: done once it is made and complete."""

    def __init__(self):
        self.made = threading.Event()
        self.tracker: zmq.MessageTracker | None = None

    @property
    def done(self) -> bool:
        return self.made.is_set() and (self.tracker is None or self.tracker.done)

    def wait(self, timeout: float = -1) -> None:
        start = time.monotonic()
        if not self.made.wait(None if timeout < 0 else timeout):
            raise zmq.NotDone()
        if self.tracker is not None:
            self.tracker.wait(-1 if timeout < 0 else max(0.0, timeout - (time.monotonic() - start)))


class Link:
    """The state of one engine's data link: every candidate address is dialled at once
    (``trying``), and the first that answers is kept (``sock``), so an address that is
    unreachable from here (a fabric only the compute nodes see) costs no wait."""

    __slots__ = ("engine_id", "sock", "state", "ready", "deadline", "urls", "trying")

    def __init__(self, engine_id: int, urls: list[str]):
        self.engine_id = engine_id
        self.urls = list(urls)
        self.sock: zmq.Socket | None = None
        self.trying: list[zmq.Socket] = []
        self.state = "pending"
        self.ready = threading.Event()
        self.deadline = 0.0


class IOThread(threading.Thread):
    def __init__(self, context: zmq.Context, sock: zmq.Socket, signer: wire.Signer, data_identity: bytes,
                 on_message: Callable[[wire.Message], None], curve: Curve | None = None):
        super().__init__(name="mpihub-client-io", daemon=True)
        self.context = context
        self.curve = curve
        self.receivers = [sock]  # one per controller process that replies (more for a split one)
        self.signer = signer
        self.data_identity = data_identity
        self.on_message = on_message
        self.links: dict[int, Link] = {}
        self._by_socket: dict[zmq.Socket, Link] = {}
        self._pending: set[Link] = set()  # links waiting for their hello answer
        self._commands: deque = deque()
        self._bulk: dict[str, list] = {}  # buffers that came before their reply
        self._bulk_waiters: dict[str, threading.Event] = {}  # blocking callers waiting for buffers
        self._bulk_lock = threading.Lock()
        self._parked: dict[str, tuple[wire.Message, float]] = {}  # replies waiting for their buffers
        self._wake_lock = threading.Lock()
        wake_url = f"inproc://mpihub-client-wake-{id(self)}"
        self._wake_in = context.socket(zmq.PAIR)
        self._wake_in.bind(wake_url)
        self._wake_out = context.socket(zmq.PAIR)
        self._wake_out.connect(wake_url)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._wake_in, zmq.POLLIN)
        self._monitors: dict[zmq.Socket, tuple] = {}  # monitor -> (receiving socket, front, listener)
        self._running = True
        self.drop = wire.DropLog(log, "the client's sockets")
        self._owner = threading.Lock()  # held by whichever thread is using the sockets
        self._turn = threading.Condition()  # hands the sockets between the IO thread and a borrower
        self._borrowed = False
        self._owner_thread: int | None = None

    def add_receiver(self, sock: zmq.Socket) -> None:
        """Also receive replies on ``sock`` (before the thread starts)."""
        self.receivers.append(sock)
        self._poller.register(sock, zmq.POLLIN)

    def watch(self, sock: zmq.Socket, front: str, listener) -> None:
        """Tell ``listener`` (its ``disconnected(front)`` and ``reconnected(sock, front)``)
        when ``sock``, a receiving socket already connected, loses its connection and when
        it has a new one (before the thread starts)."""
        url = f"inproc://mpihub-client-monitor-{secrets.token_hex(8)}"  # unique, unlike pyzmq's fd-named one
        sock.monitor(url, zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        monitor = self.context.socket(zmq.PAIR)
        monitor.linger = 0
        monitor.connect(url)
        self._monitors[monitor] = (sock, front, listener)
        self._poller.register(monitor, zmq.POLLIN)

    def close_sockets(self) -> None:
        """Close everything, for a client that failed to connect (the thread never ran)."""
        self._stop_monitors()
        for sock in (*self.receivers, self._wake_in, self._wake_out):
            sock.close(linger=0)

    def _stop_monitors(self) -> None:
        """Stop each socket's monitor before closing its reading end: libzmq would block
        its I/O thread, the whole context's, on an event nobody reads."""
        for monitor, (sock, _, _) in self._monitors.items():
            sock.disable_monitor()
            monitor.close(linger=0)

    # -- called from user threads -------------------------------------------------------

    def _command(self, *command) -> None:
        self._commands.append(command)
        self._wake()

    def _wake(self) -> None:
        """Nudge whichever thread polls; a full queue means it is awake already."""
        with self._wake_lock:
            try:
                self._wake_out.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass

    def link(self, engine_id: int, urls: list[str]) -> None:
        """Start linking to an engine's data socket (once)."""
        if engine_id not in self.links and urls:
            self.links[engine_id] = Link(engine_id, urls)
            self._command("link", engine_id)

    def unlink(self, engine_id: int) -> None:
        if engine_id in self.links:
            self._command("unlink", engine_id)

    def linked(self, engine_id: int, wait: bool = False) -> bool:
        """True if large buffers can go straight to this engine (waits for a pending link)."""
        link = self.links.get(engine_id)
        if link is None:
            return False
        if wait:
            link.ready.wait(config.LINK_TIMEOUT + 1)
        return link.state == "up"

    def send_bulk(self, engine_id: int, token: str, buffers: list) -> DeferredTracker:
        tracker = DeferredTracker()
        frames = wire.pack(self.signer, {Key.TYPE: Msg.BULK, Key.TOKEN: token}, b"", buffers)
        self._command("bulk", engine_id, frames, tracker)
        return tracker

    def stop(self) -> None:
        self._command("stop")
        self.join(timeout=5)
        self._wake_out.close(linger=0)

    # -- the thread -----------------------------------------------------------------------

    def wait_for(self, event: threading.Event, timeout: float | None = None) -> bool:
        """Wait for ``event``, receiving on this thread meanwhile when it can.

        A blocked caller borrows the sockets from the IO thread (which steps aside until
        it is done) and handles replies itself, so the reply it waits for needs no
        hand-off between threads. Only one thread borrows at a time; others just wait.
        """
        if event.is_set():
            return True
        if self._owner_thread == threading.get_ident():
            raise RuntimeError("a result cannot be waited for inside a done-callback or await hook, which "
                               "run on the thread that receives results; wait in your own code instead")
        if not self._running:
            return event.wait(timeout)
        with self._turn:
            if self._borrowed:
                borrowed = False
            else:
                self._borrowed = borrowed = True
        if not borrowed:
            return event.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._wake()  # the IO thread leaves its poll and steps aside
            with self._owner:
                self._owner_thread = threading.get_ident()
                try:
                    while not event.is_set() and self._running:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            break
                        self._poll_once(left)
                finally:
                    self._owner_thread = None
        finally:
            with self._turn:
                self._borrowed = False
                self._turn.notify_all()
        if event.is_set():
            return True
        return event.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def run(self) -> None:
        try:
            self._loop()
        except Exception:  # noqa: BLE001 - say why results stopped arriving
            log.exception("the client's IO thread failed; results will no longer arrive")
            self._running = False
            raise
        finally:
            with self._owner:
                for link in self.links.values():
                    for sock in (link.sock, *link.trying):
                        if sock is not None:
                            sock.close(linger=0)
                self._wake_in.close(linger=0)
                self._stop_monitors()
                for sock in self.receivers:
                    sock.close(linger=0)

    def _loop(self) -> None:
        while self._running:
            with self._turn:
                while self._borrowed:
                    self._turn.wait()
            with self._owner:
                self._owner_thread = threading.get_ident()
                self._poll_once(None)
                self._owner_thread = None

    def _poll_once(self, limit: float | None) -> None:
        """Wait (at most ``limit`` seconds) for socket events and handle them all."""
        deadlines = [link.deadline for link in self._pending]
        deadlines += [deadline for _, deadline in self._parked.values()]
        if limit is not None:
            deadlines.append(time.monotonic() + limit)
        timeout = max(0.0, min(deadlines) - time.monotonic()) * 1000 if deadlines else None
        events = dict(self._poller.poll(timeout))
        for sock in self.receivers:
            if sock in events:
                self._receive_replies(sock)
        for sock in [s for s in events if s in self._by_socket]:
            self._receive_data(self._by_socket[sock], sock)
        for monitor in [s for s in events if s in self._monitors]:
            self._connection_events(monitor)
        if self._wake_in in events:
            self._run_commands()
        if self._pending or self._parked:
            self._expire_links()
            self._expire_parked()

    def _run_commands(self) -> None:
        while wire.readable(self._wake_in):
            self._wake_in.recv()
        while self._commands:
            command = self._commands.popleft()
            kind = command[0]
            if kind == "link":
                self._connect(self.links[command[1]])
            elif kind == "unlink":
                self._close(self.links.pop(command[1], None))
            elif kind == Msg.BULK:
                _, engine_id, frames, tracker = command
                link = self.links.get(engine_id)
                if link is not None and link.state == "up":
                    tracker.tracker = link.sock.send_multipart(frames, copy=False, track=True)
                else:
                    log.warning("data link to engine %s went away; its request will fail", engine_id)
                tracker.made.set()
            elif kind == Msg.STOP:
                self._running = False

    def _connect(self, link: Link) -> None:
        """Dial every candidate address at once and say hello on each; the first answer
        brings the link up (:meth:`_receive_data`), none within LINK_TIMEOUT takes it down."""
        if not link.urls:
            self._down(link)
            return
        for url in link.urls:
            sock = self.context.socket(zmq.DEALER)
            sock.routing_id = self.data_identity
            sock.linger = 0
            if self.curve:
                self.curve.client(sock)
            sock.connect(url)
            sock.send_multipart(wire.pack(self.signer, {Key.TYPE: Msg.HELLO, Key.REQUEST_ID: str(link.engine_id)}))
            link.trying.append(sock)
            self._by_socket[sock] = link
            self._poller.register(sock, zmq.POLLIN)
        link.urls = []
        link.deadline = time.monotonic() + config.LINK_TIMEOUT
        self._pending.add(link)

    def _drop_socket(self, sock: zmq.Socket) -> None:
        self._poller.unregister(sock)
        del self._by_socket[sock]
        sock.close(linger=0)

    def _close(self, link: Link | None) -> None:
        if link is None:
            return
        self._pending.discard(link)
        for sock in link.trying:
            self._drop_socket(sock)
        link.trying = []
        if link.sock is not None:
            self._drop_socket(link.sock)
            link.sock = None

    def _down(self, link: Link) -> None:
        """No candidate answered: large buffers to this engine relay through the controller."""
        self._close(link)
        link.state = "down"
        link.ready.set()

    def _expire_links(self) -> None:
        now = time.monotonic()
        for link in list(self._pending):
            if link.deadline <= now:
                log.info("no data link to engine %s: none of its addresses answered within %.1f s; its large "
                         "buffers go through the controller", link.engine_id, config.LINK_TIMEOUT)
                self._down(link)

    def complete_bulk(self, reply: wire.Message, token: str) -> wire.Message:
        """The reply with its direct-link buffers, for a reply read by a blocking caller."""
        with self._bulk_lock:
            buffers = self._bulk.pop(token, None)
            if buffers is None:
                waiter = self._bulk_waiters[token] = threading.Event()
        if buffers is None:
            self.wait_for(waiter, config.BULK_TIMEOUT)
            with self._bulk_lock:
                self._bulk_waiters.pop(token, None)
                buffers = self._bulk.pop(token, None)
        if buffers is None:
            header = {Key.TYPE: Msg.REPLY, Key.ID: reply.header.get(Key.ID),
                      Key.ENGINE_ID: reply.header.get(Key.ENGINE_ID), Key.STATUS: "error", Key.ENAME: "BulkMissing",
                      Key.TRACEBACK: "",
                      Key.EVALUE: BULK_LATE}
            return wire.Message(header, b"", [], [])
        return wire.Message(reply.header, reply.content, buffers, reply.frames)

    def _expire_parked(self) -> None:
        """A reply whose direct-link data never came becomes an error, not a hang."""
        now = time.monotonic()
        for token, (reply, deadline) in list(self._parked.items()):
            if deadline <= now:
                del self._parked[token]
                header = {Key.TYPE: Msg.REPLY, Key.ID: reply.header.get(Key.ID),
                          Key.ENGINE_ID: reply.header.get(Key.ENGINE_ID), Key.STATUS: "error", Key.ENAME: "BulkMissing",
                          Key.TRACEBACK: "",
                          Key.EVALUE: BULK_LATE}
                self._deliver(wire.Message(header, b"", [], []))

    def _connection_events(self, monitor: zmq.Socket) -> None:
        sock, front, listener = self._monitors[monitor]
        while monitor.poll(0):
            event = parse_monitor_message(monitor.recv_multipart())["event"]
            if event == zmq.EVENT_DISCONNECTED:
                listener.disconnected(front)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                try:
                    listener.reconnected(sock, front)
                except Exception:  # noqa: BLE001 - the IO thread must survive
                    log.exception("could not resume after a reconnect")

    def _receive_data(self, link: Link, sock: zmq.Socket) -> None:
        for msg in wire.pending(sock, self.signer, self.drop):
            if msg.type == Msg.HELLO_REPLY:
                if sock not in link.trying:
                    continue
                link.trying.remove(sock)
                for other in link.trying:  # slower routes to the same engine
                    self._drop_socket(other)
                link.trying = []
                link.sock = sock
                link.state = "up"
                link.ready.set()
                self._pending.discard(link)
            elif msg.type == Msg.BULK and isinstance(msg.header.get(Key.TOKEN), str):
                token = msg.header[Key.TOKEN]
                parked = self._parked.pop(token, None)
                if parked is None:
                    with self._bulk_lock:
                        self._bulk[token] = msg.buffers
                        waiter = self._bulk_waiters.pop(token, None)
                    if waiter is not None:
                        waiter.set()
                else:
                    reply = parked[0]
                    self._deliver(wire.Message(reply.header, reply.content, msg.buffers, reply.frames))

    def _receive_replies(self, sock: zmq.Socket) -> None:
        for msg in wire.pending(sock, self.signer, self.drop):
            if msg.type == Msg.REPLY:
                token = msg.header.get(Key.BULK_TOKEN)
                if token is not None:
                    with self._bulk_lock:
                        buffers = self._bulk.pop(token, None)
                    if buffers is None:
                        self._parked[token] = (msg, time.monotonic() + config.BULK_TIMEOUT)
                        continue
                    msg = wire.Message(msg.header, msg.content, buffers, msg.frames)
                elif self._bulk:
                    with self._bulk_lock:
                        self._bulk.pop(msg.header.get(Key.ID), None)  # a failure replaced a bulk reply
            self._deliver(msg)

    def _deliver(self, msg: wire.Message) -> None:
        try:
            self.on_message(msg)
        except Exception:  # noqa: BLE001 - the IO thread must survive a bad message
            log.exception("error handling %r", msg)

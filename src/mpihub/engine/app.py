"""The engine process: register with the controller, then run requests in order.

The task socket is a DEALER with the engine's uuid as routing id, connected into the
controller's engine ROUTER; requests arrive in FIFO order and replies go back the same
way. With a split controller the registration reply names its paths (direct, task):
the engine says hello to each on a DEALER of its own, takes requests from all of them,
and answers each on the socket it came from. Large buffers of a request or reply may take the engine's direct data link
(:mod:`.datalink`) instead, while the request and reply themselves keep their order
through the controller.

When the controller no longer knows the engine (a network cut made it declare the
engine dead, or it was restarted with ``--restore``), the engine registers again under
its id and uuid, between two tasks: it first takes every request already queued for
it, and reports their ids and those it answered lately (saying which replies it kept,
:mod:`.replies`), so that the controller sends again what never arrived, asks for the
replies it is missing, and tells it what to skip. An engine started from a connection
file follows a controller restored on another node (:mod:`.follow`): its sockets are
pointed at the new addresses and it registers again the same way. An engine forked by
a keeper with a relay (``mpihub engine --fork N --relay``) connects its task socket to
that relay (:mod:`.relay`) instead, and its heartbeat to the controller as any engine.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
import uuid as uuidlib

import zmq

from .. import config, process
from ..protocol import connection, reach, wire
from ..protocol.curve import Curve
from ..protocol.schema import Key, Msg
from . import follow, light, mpi_world, registration
from .datalink import BulkMissing, DataLink
from .heartbeat import Heart
from .replies import SentReplies
from .runner import ABORTED, EngineStop, Runner, task_id_for

log = logging.getLogger("mpihub.engine")

#: Ids of replies an engine reports at least when it registers again (see :mod:`.replies`).
ANSWERED = 1000


class Engine:
    def __init__(self, info: dict, want_id: int | None = None, mpi_world: dict | None = None,
                 register_timeout: float = 30.0, info_path: str | os.PathLike | None = None,
                 relay_url: str | None = None):
        self.info = connection.check(info)
        #: Where the task socket connects when a relay of this node carries it (None: the controller).
        self.relay_url = relay_url
        #: The connection file watched for a controller that moved (None: not watched).
        self.info_path = info_path
        self.signer = wire.Signer(info["key"])
        self.curve = Curve.from_info(info)
        self.uuid = uuidlib.uuid4().hex.encode()
        self.want_id = want_id
        self.mpi_world = mpi_world or {"mpi_rank": None}
        self.register_timeout = register_timeout
        self.aborted: set[str] = set()
        self.context = zmq.Context()
        self.id: int | None = None
        self._pending_send: zmq.MessageTracker | None = None
        self._interrupt_target: str | None = None  # the task a requested SIGINT is for
        self._running_collective = False
        self._drop = wire.DropLog(log, "the task socket")
        self.replies = SentReplies(ANSWERED, config.REPLAY_BYTES)
        self.heart: Heart | None = None  # started by serve_forever
        self._skip: set[str] = set()  # held when it registered again, and no longer its own
        self._rejoined_at = 0.0
        self.engine_url = ""
        self.path_urls: dict[zmq.Socket, str] = {}
        self._paths_moved = False
        end = config.job_end()
        #: the batch job's end, and when to stop taking load-balanced tasks before it
        self.retirement = {} if end is None else {Key.JOB_END: end, Key.RETIRE_AT: end - config.RETIRE_MARGIN}

    def register(self) -> dict:
        """Register at the first of the controller's addresses that answers (the
        connection file lists every candidate); the heartbeat goes to the same host."""
        self.data = DataLink(self.context, self.signer, self.info.get("engine_bind_ip", "127.0.0.1"), self.curve)
        urls = follow.addresses(self.info)[0]
        self.details = {"hostname": socket.gethostname(), "pid": os.getpid(), "data": self.data.urls,
                        **self.mpi_world, **self.retirement}
        probed = reach.probe(urls, min(reach.PROBE_TIMEOUT, self.register_timeout / 4))
        if probed.none_routable:
            raise TimeoutError(reach.no_route_error("The controller", urls))
        urls = probed.order
        if self.relay_url:  # one way to the controller, whichever address the relay took
            urls = urls[:1]
        wait = self.register_timeout / len(urls)
        for url in urls:
            self.sock = self._dealer(self.relay_url) if self.relay_url else self._dealer(url)
            if self._ask_to_register(wait):
                break
            log.info("no answer from the controller at %s within %.0f s", url, wait)
            self.sock.close()
        else:
            through = f" through the relay at {self.relay_url}" if self.relay_url else ""
            raise TimeoutError(f"no answer from the controller at {', '.join(urls)}{through} "
                               f"within {self.register_timeout:.0f} s")
        self.heart_url = follow.heartbeat_beside(url, self.info)
        reply = wire.unpack(self.signer, self.sock.recv_multipart())
        if reply.type != Msg.REGISTER_REPLY:
            raise RuntimeError(f"unexpected {reply.type!r} while registering")
        if (why := registration.refusal(reply.header)) is not None:
            raise RuntimeError(f"the controller refused this engine: {why}")
        self.id = reply.header[Key.ID]
        self.engine_url = url
        log.info("registered as engine %d at %s%s", self.id, url,
                 " through this node's relay" if self.relay_url else "")
        return reply.header

    def _ask_to_register(self, wait: float) -> bool:
        """Ask on ``self.sock``, and ask again after growing pauses while the controller
        is busy (see :mod:`.registration`); whether it answered within ``wait``."""
        deadline = time.monotonic() + wait
        for pause in registration.pauses():
            self.sock.send_multipart(wire.pack(self.signer, {Key.TYPE: Msg.REGISTER, Key.WANT_ID: self.want_id,
                                                             Key.INFO: self.details}))
            left = deadline - time.monotonic()
            if self.sock.poll(max(0.0, min(pause, left)) * 1000):
                return True
            if left <= pause:
                return False

    def _dealer(self, url: str) -> zmq.Socket:
        """A socket to the controller at ``url`` under this engine's uuid."""
        sock = self.context.socket(zmq.DEALER)
        sock.routing_id = self.uuid
        sock.linger = 0
        sock.hwm = 0  # replies queue while the controller is away, rather than block the engine
        if self.curve and url != self.relay_url:  # the relay's own socket is private to this node's user
            self.curve.client(sock)
        sock.connect(url)
        return sock

    def join_paths(self, paths: dict[str, list[str]]) -> list[zmq.Socket]:
        """A socket per path of a split controller, each greeted at the first of its
        addresses that answers."""
        socks = []
        for kind, urls in paths.items():
            wait = max(self.register_timeout, 1.0) / max(len(urls), 1)
            for url in urls:
                sock = self._dealer(url)
                sock.send_multipart(wire.pack(self.signer, {Key.TYPE: Msg.HELLO, Key.ID: self.id, **self.retirement}))
                if sock.poll(wait * 1000):
                    answer = wire.unpack(self.signer, sock.recv_multipart())
                    if answer.type == Msg.HELLO_REPLY:
                        socks.append(sock)
                        self.path_urls[sock] = url
                        break
                sock.close()
            else:
                raise TimeoutError(f"no answer from the controller's {kind} path at {', '.join(urls)}")
        return socks

    def serve_forever(self) -> None:
        def on_sigterm(signum, frame):
            raise EngineStop()

        signal.signal(signal.SIGTERM, on_sigterm)
        registration = self.register()
        runner = self.runner = Runner(self.id)
        runner.aborted = self.aborted  # filled by the heartbeat thread
        signal.signal(signal.SIGINT, self._on_sigint)
        rejoin = self.context.socket(zmq.PAIR)
        rejoin_url = f"inproc://mpihub-rejoin-{id(self)}"
        rejoin.bind(rejoin_url)
        self.controller_timeout = registration.get(Key.CONTROLLER_TIMEOUT, config.ENGINE_CONTROLLER_TIMEOUT)
        self.heart_period = registration[Key.HEARTBEAT_PERIOD]
        watched = None if self.info_path is None else follow.ControllerFile(self.info_path, self.info)
        heart = self.heart = Heart(self.context, self.heart_url, self.uuid, self.signer, self.curve,
                                   self.heart_period, self.controller_timeout, self.aborted, self._signal, rejoin_url,
                                   watched)
        heart.start()
        self.paths: list[zmq.Socket] = []
        if self.mpi_world.get("mpi_world"):
            runner.namespace.update(mpi_world.namespace_names())
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.data.sock, zmq.POLLIN)
        poller.register(rejoin, zmq.POLLIN)
        wakeup = process.signal_wakeup()
        poller.register(wakeup, zmq.POLLIN)
        try:
            self.paths = self.join_paths(registration.get(Key.PATHS) or {})
            for sock in self.paths:
                poller.register(sock, zmq.POLLIN)
            requests = [*self.paths, self.sock]
            running = True
            while running:
                events = dict(poller.poll())
                if wakeup in events:
                    process.drain(wakeup)
                if self.data.sock in events:
                    self.data.receive_pending()
                backlog = []
                if rejoin in events:
                    while rejoin.poll(0):
                        rejoin.recv()
                    moved = heart.take_move()
                    if moved is not None:
                        self._follow(moved)
                    # act only if the last pong still says so, and not on stale ones just after a rejoin
                    if moved is not None or (not heart.controller_knows
                                             and time.monotonic() - self._rejoined_at > 2 * self.heart_period):
                        backlog = self._rejoin(requests)
                running = self._handle_requests(runner, backlog)
                for sock in requests:
                    if running and sock in events:
                        running = self._handle_requests(runner, ((sock, msg) for msg in
                                                                   wire.pending(sock, self.signer, self._drop)))
        except EngineStop:
            log.info("engine %s stopping on SIGTERM", self.id)
            self.sock.linger = 500
            self.sock.send_multipart(wire.pack(self.signer, {Key.TYPE: Msg.UNREGISTER}))  # the controller still runs
        finally:
            for sock in (*self.paths, self.sock, rejoin):
                sock.close()
            self.data.close()
            heart.stop()
            if self.curve:
                self.curve.stop()
            self.context.term()

    def _follow(self, move: follow.Move) -> None:
        """Point the task socket at the controller's new address (the same socket, so the
        requests queued on it and the replies kept for it stay valid); the paths of a
        split controller follow when it answers the registration."""
        self.sock.disconnect(self.engine_url)
        self.sock.connect(move.engine_url)
        self.engine_url = move.engine_url
        self.info = move.info
        self._paths_moved = True

    def _repoint_paths(self, paths: dict[str, list[str]]) -> None:
        """After a move: each path socket to the first reachable address of its path."""
        for sock, urls in zip(self.paths, paths.values()):
            url = reach.reachable_first(urls)[0]
            sock.disconnect(self.path_urls[sock])
            sock.connect(url)
            self.path_urls[sock] = url
        self._paths_moved = False

    def _rejoin(self, requests: list[zmq.Socket]) -> list[tuple[zmq.Socket, wire.Message]]:
        """Register again under this id and uuid, then greet each path again; returns
        the requests that were queued meanwhile, to run next (minus those to skip)."""
        backlog = [(sock, msg) for sock in requests for msg in wire.pending(sock, self.signer, self._drop)]
        answered = self.replies.answered()

        def report(sock: zmq.Socket) -> dict:
            """What the controller settles this engine's tasks on that path by."""
            return {Key.HELD: [i for s, msg in backlog if s is sock and (i := self._task_id(msg.header)) is not None],
                    Key.ANSWERED: answered, Key.KEPT: self.replies.replayable(sock)}

        log.warning("engine %s: the controller no longer knows it (a network cut, or a restart); registering "
                    "again with %d requests queued", self.id, len(backlog))
        reply = self._ask(self.sock, {Key.TYPE: Msg.REGISTER, Key.WANT_ID: self.id, Key.INFO: self.details,
                                      **report(self.sock)}, Msg.REGISTER_REPLY, backlog)
        if reply is None:
            return backlog  # the heart asks again while the controller says it does not know us
        if reply.header[Key.ID] != self.id:
            log.warning("engine %s registered again as engine %s", self.id, reply.header[Key.ID])
            self.id = self.runner.engine_id = reply.header[Key.ID]
        self._settle(self.sock, reply.header)
        if self._paths_moved:
            self._repoint_paths(reply.header.get(Key.PATHS) or {})
        for sock in self.paths:
            hello = self._ask(sock, {Key.TYPE: Msg.HELLO, Key.ID: self.id, **report(sock), **self.retirement},
                              Msg.HELLO_REPLY, backlog)
            if hello is not None:
                self._settle(sock, hello.header)
        self._rejoined_at = time.monotonic()
        log.info("engine %s is registered again", self.id)
        return backlog

    def _settle(self, sock: zmq.Socket, answer: dict) -> None:
        """Take the controller's answer to a registration again: queued tasks to skip,
        and kept replies it is missing, which go out again now."""
        self._skip.update(wire.task_ids(answer.get(Key.SKIP)))
        sent = 0
        for msg_id in wire.task_ids(answer.get(Key.REPLAY)):
            frames = self.replies.frames(msg_id, sock)
            if frames is None:
                self._drop(f"the controller asked again for reply {msg_id!r}, which this engine did not keep")
            else:
                wire.send(sock, frames)
                sent += 1
        if sent:
            log.info("engine %s sent %d replies again, lost with the old connection", self.id, sent)

    def _ask(self, sock: zmq.Socket, header: dict, answer: str,
             backlog: list[tuple[zmq.Socket, wire.Message]]) -> wire.Message | None:
        """Send ``header`` on ``sock`` and wait for the ``answer``; requests that come
        first join the backlog. None if it does not come within the controller timeout."""
        sock.send_multipart(wire.pack(self.signer, header))
        deadline = time.monotonic() + self.controller_timeout
        while (left := deadline - time.monotonic()) > 0 and sock.poll(left * 1000):
            for msg in wire.pending(sock, self.signer, self._drop):
                if msg.type == answer:
                    return msg
                backlog.append((sock, msg))
        log.warning("engine %s: no %s from the controller within %.0f s", self.id, answer, self.controller_timeout)
        return None

    def _signal(self, sig: int, task_ids: list | None) -> None:
        """Raise ``sig`` in this process (heartbeat thread); with ``task_ids``, only while
        one of them runs, and a SIGINT then interrupts that task alone."""
        running = self.runner.running
        if task_ids is not None and (running not in task_ids or self._running_collective):
            return  # an interrupt of one rank would leave the others waiting in MPI
        try:
            sig = signal.Signals(sig)
        except ValueError:
            log.warning("ignored a request for unknown signal %r", sig)
            return
        log.info("engine %s: %s requested%s", self.id, sig.name, f" for task {running}" if running else "")
        self._interrupt_target = running
        os.kill(os.getpid(), sig)

    def _on_sigint(self, signum, frame) -> None:
        """An interrupt fails the running task (KeyboardInterrupt) and leaves the engine
        running; with no task running (or another task by now) it is ignored."""
        running = self.runner.running
        if running is not None and self._interrupt_target in (None, running):
            self._interrupt_target = None
            raise KeyboardInterrupt(f"interrupted while running task {running}")
        log.info("engine %s: SIGINT with no task of its target running; ignored", self.id)

    def _handle_requests(self, runner: Runner, requests) -> bool:
        """Run every request of ``requests`` (``(socket, message)`` pairs) in order;
        False once told to shut down."""
        for sock, msg in requests:
            if msg.type == Msg.SHUTDOWN:
                log.info("engine %s stopping: shutdown requested by the controller", self.id)
                return False
            if msg.type in (Msg.REGISTER_REPLY, Msg.HELLO_REPLY):
                continue  # the answer to a registration that had timed out
            if msg.type not in (Msg.APPLY, Msg.EXECUTE):
                self._drop(f"unknown type {msg.type!r}")
                continue
            msg_id = self._task_id(msg.header)
            if msg_id is None:
                self._drop(f"malformed request: no task id for engine {self.id} in it")
                continue
            if msg_id in self._skip:
                self._skip.discard(msg_id)
                log.info("engine %s skips task %s: the controller gave it to another engine meanwhile", self.id, msg_id)
                continue
            self._run(runner, msg_id, msg, sock)
        return True

    def _task_id(self, header: dict) -> str | None:
        return task_id_for(header, self.id)

    def _run(self, runner: Runner, msg_id: str, msg: wire.Message, sock: zmq.Socket) -> None:
        header = msg.header
        if self._pending_send is not None:  # our last result's buffers may still be in flight
            self._pending_send.wait()
            self._pending_send = None
        reply = {Key.TYPE: Msg.REPLY, Key.ID: msg_id, Key.ENGINE_ID: self.id}
        now = time.monotonic()
        self.replies.answering(msg_id, now, self.heart.alive_at if self.heart else now)  # every way out answers it
        token = header.get(Key.BULK_TOKEN)
        if msg_id in self.aborted and Key.RANKS in header:
            self.aborted.discard(msg_id)  # one rank skipping a collective would hang the others
        if msg_id in self.aborted:
            self.aborted.discard(msg_id)
            if isinstance(token, str):
                self.data.discard(token)
            reply.update(ABORTED)
            self._reply(sock, msg_id, wire.pack(self.signer, reply))
            return
        buffers = msg.buffers
        if isinstance(token, str) and header.get(Key.BUFFERS_FOR, self.id) == self.id:
            try:
                buffers = self.data.take(token, config.BULK_TIMEOUT)
            except BulkMissing as exc:
                if Key.BUFFERS_FOR not in header:
                    reply.update({Key.STATUS: "error", Key.ENAME: "BulkMissing", Key.EVALUE: str(exc),
                                  Key.TRACEBACK: "", Key.STARTED: None, Key.COMPLETED: None, Key.STDOUT: "",
                                  Key.STDERR: ""})
                    self._reply(sock, msg_id, wire.pack(self.signer, reply))
                    return
                buffers = exc  # a collective still runs, so that the other ranks learn of it
        self._running_collective = Key.RANKS in header
        sink = None
        if header.get(Key.STREAM_OUTPUT):  # its output as it comes, on the socket the request came from
            def sink(name: str, text: str) -> None:
                wire.send(sock, wire.pack(self.signer, {Key.TYPE: Msg.STREAM, Key.ID: msg_id, Key.ENGINE_ID: self.id,
                                                        Key.STREAM_NAME: name, Key.STREAM_TEXT: text}))
        fields, data, out_buffers = runner.run(header, msg.content, buffers, msg_id, sink)
        reply.update(fields)
        client = header.get(Key.RESULT_BACK)
        if (out_buffers and isinstance(client, bytes)
                and sum(memoryview(b).nbytes for b in out_buffers) >= config.BULK_THRESHOLD):
            tracker = self.data.try_send(client, msg_id, out_buffers)
            if tracker is not None:
                reply[Key.BULK_TOKEN] = msg_id
                self._pending_send = tracker
                self._reply(sock, msg_id, wire.pack(self.signer, reply, data))
                return
        self._reply(sock, msg_id, wire.pack(self.signer, reply, data, out_buffers))

    def _reply(self, sock: zmq.Socket, msg_id: str, frames: list) -> None:
        """Send a reply, keeping it for a registration again; buffers go zero-copy and
        tracked, so that the next task waits until they are out before changing them."""
        self.replies.sent(msg_id, sock, frames)
        if len(frames) > 1:
            self._pending_send = sock.send_multipart(frames, copy=False, track=True)
        else:
            wire.send(sock, frames)


def load_info(url_file: str | None, cluster_id: str | None, profile_dir: str | None,
              timeout: float) -> tuple[dict, str | None]:
    """The engine connection info, from $MPIHUB_CONNECTION_INFO (unless a file is named)
    or from the file, waited for up to ``timeout`` s; and that file (None: the variable)."""
    raw = os.environ.get("MPIHUB_CONNECTION_INFO")
    if raw and not url_file:
        return connection.check(json.loads(raw), "$MPIHUB_CONNECTION_INFO"), None
    path = url_file or connection.connection_file("engine", cluster_id, profile_dir)
    return connection.read(path, timeout=timeout), str(path)


def main(url_file: str | None, cluster_id: str | None, profile_dir: str | None, want_id: int | None,
         timeout: float, use_mpi: bool = False, many: int | None = None, relay: bool = False,
         relay_url: str | None = None) -> int:
    """Entry point of ``mpihub engine``; connection info from a file or $MPIHUB_CONNECTION_INFO.
    With ``many``, that many light engines in this process (:mod:`.light`), through a
    relay with ``relay``; with ``relay_url``, the task socket goes through the relay
    there (a keeper's, :mod:`.forks`), and the engine does not follow a controller that
    moves (its relay would not)."""
    info, path = load_info(url_file, cluster_id, profile_dir, timeout)
    try:
        if many is not None:
            light.main(info, many, timeout, relay)
            return 0
        world = mpi_world.init_world() if use_mpi else None
        watched = None if relay_url else path
        Engine(info, want_id=want_id, mpi_world=world, register_timeout=timeout, info_path=watched,
               relay_url=relay_url).serve_forever()
    except (TimeoutError, RuntimeError, wire.ProtocolError) as exc:
        print(f"mpihub engine: {exc}", file=sys.stderr)
        return 1
    return 0

"""The client's core: its connection to a controller, and the table of what it waits for.

A :class:`ClientCore` owns the sockets to each controller process it sends to (the
``fronts``: the whole controller, or a split controller's Hub, direct path and task
path), the receiving thread (:class:`~.io.IOThread`), the engine table that
registration notices keep current, and the pending table that maps each task id to the
:class:`~.asyncresult.AsyncResult` slot its reply fills. The views, AsyncResult, the
reconnect logic and the cluster use its public methods; the :class:`~.client.Client`
keeps the user API on top of it.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
import weakref
from typing import Any, Iterable

import zmq

from .. import config, errors
from ..protocol import reach, wire
from ..protocol.curve import Curve
from ..protocol.schema import EVENT_PATH_LOST, EVENT_REGISTERED, EVENT_UNREGISTERED, Key, Msg
from .asyncresult import AsyncResult
from .io import IOThread, LocalSender, Sender
from .reconnect import Reconnector

log = logging.getLogger("mpihub.client")


class Front:
    """A controller process this client sends requests to: the whole controller, or one
    of a split controller's Hub, direct path and task path."""

    __slots__ = ("name", "url", "sender", "lost", "error")

    def __init__(self, name: str, url: str, sender: Sender):
        self.name = name
        self.url = url
        self.sender = sender
        self.lost = ""  # why it is gone, once it is
        self.error: type[errors.MpihubError] = errors.ControllerError  # what a request to it raises then


class QuerySlot:
    """Where the answer to one query lands."""

    __slots__ = ("event", "header", "request", "lost")

    def __init__(self, request: dict):
        self.event = threading.Event()
        self.header: dict | None = None
        self.lost = False  # the connection broke while it was asked: it may or may not have been done
        self.request = request  # sent again after a reconnect, if asking twice is harmless


class ClientCore:
    """Connect to the controller described by ``info`` (a checked connection-info dict)."""

    def __init__(self, info: dict, timeout: float, context: zmq.Context | None = None):
        self.info = info
        self.signer = wire.Signer(info["key"])
        self.curve = Curve.from_info(info)
        self.context = context or zmq.Context.instance()
        self.session = uuid.uuid4().hex[:12]
        self.receiving_identity = f"client-{self.session}-r"  # replies and notices come to it
        self.sending_identity = f"client-{self.session}-s"
        self.data_identity = f"client-{self.session}-d".encode()
        self._counter = itertools.count()
        #: The engine table: id -> the description the controller sent (changes under ``engines_changed``).
        self.engines: dict[int, dict] = {}
        self.engines_changed = threading.Condition()
        #: Task id -> (its AsyncResult, its index there), until its reply comes.
        self.pending: dict[str, tuple[AsyncResult, int]] = {}
        self.queries: dict[str, QuerySlot] = {}
        self.also_deliver: dict[str, list[tuple[AsyncResult, int]]] = {}  # get_result of own pending tasks
        self.results: weakref.WeakValueDictionary[str, AsyncResult] = weakref.WeakValueDictionary()
        self.closed = False
        self.gone: tuple[str, type[errors.MpihubError]] | None = None  # why engines are gone, when known
        urls = info.get("candidates", {}).get("client") or [info["client"]]
        if info["client"] in urls:
            urls = [info["client"]] + [u for u in urls if u != info["client"]]
        receiving, hub, reply, after_reply = self._connect("the controller", urls, timeout)
        self.fronts: dict[str, Front] = {"hub": hub, "direct": hub, "task": hub}
        self._thread_local = threading.local()
        self._local_senders: weakref.WeakSet[LocalSender] = weakref.WeakSet()  # gone with their threads
        self.reconnector = Reconnector(self)
        self.io = IOThread(self.context, receiving, self.signer, self.data_identity, self.on_message, self.curve)
        self.io.watch(receiving, "hub", self.reconnector)
        try:
            for kind, path_urls in (reply.get(Key.PATHS) or {}).items():
                path_receiving, self.fronts[kind], _, path_after_reply = self._connect(
                    f"the controller's {kind} path", path_urls, timeout, kind)
                after_reply.extend(path_after_reply)
                self.io.add_receiver(path_receiving)
                self.io.watch(path_receiving, kind, self.reconnector)
        except errors.TimeoutError:
            self.io.close_sockets()
            for front in dict.fromkeys(self.fronts.values()):
                front.sender.close()
            raise
        for engine in reply[Key.ENGINES]:
            self.engines[engine["id"]] = engine
            self.link(engine)
        for msg in after_reply:
            self.on_message(msg)
        self.io.start()

    # -- connection -------------------------------------------------------------------

    def _connect(self, what: str, urls: list[str], timeout: float,
                 name: str = "hub") -> tuple[zmq.Socket, Front, dict, list[wire.Message]]:
        """Say hello on each candidate address in turn; the first that answers wins.

        The hello goes out on the receiving socket and names the sending socket's
        identity, so the controller routes replies to requests sent on the latter here.
        Returns the receiving socket, the front to send to, the controller's answer, and
        what came after the answer in the same batch (an engine registered meanwhile:
        it must not be lost).
        """
        probed = reach.probe(urls, min(reach.PROBE_TIMEOUT, timeout / 4))
        if probed.none_routable:
            raise errors.TimeoutError(reach.no_route_error(what.capitalize(), urls))
        urls = probed.order
        wait = max(timeout, 0.5) / len(urls)
        for url in urls:
            sock = self._dealer(self.receiving_identity, 0, url)
            rid = self.new_id()
            sock.send_multipart(wire.pack(self.signer, {Key.TYPE: Msg.CONNECT, Key.REQUEST_ID: rid,
                                                        Key.SEND_AS: self.sending_identity}))
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0 and sock.poll(left * 1000):
                messages = list(wire.pending(sock, self.signer, wire.DropLog(log, f"the connect to {url}")))
                for i, msg in enumerate(messages):
                    if msg.type == Msg.CONNECT_REPLY and msg.header.get(Key.REQUEST_ID) == rid:
                        sending = self._dealer(self.sending_identity, 1000, url)
                        return sock, Front(name, url, Sender(sending)), msg.header, messages[i + 1:]
            sock.close()
        raise errors.TimeoutError(
            f"no answer from {what} at {', '.join(urls)} within {timeout:g} s. Is it running, "
            "and is this the connection file it wrote (a stale file or another key is refused)?")

    def _dealer(self, routing_id: str, linger: int, url: str) -> zmq.Socket:
        """A socket to the controller at ``url`` (encrypted when the cluster is)."""
        sock = self.context.socket(zmq.DEALER)
        sock.routing_id = routing_id.encode()
        sock.linger = linger
        sock.hwm = 0  # submitting many tasks never blocks; the controller queues them all
        if self.curve:
            self.curve.client(sock)
        sock.connect(url)
        return sock

    def new_id(self) -> str:
        """A new task or request id, unique to this client."""
        return f"{self.session}-{next(self._counter)}"

    def id_block(self, targets: list[int]) -> tuple[dict, list[str]]:
        """Task ids for a request to ``targets``, and the header fields that name the
        targets and ids: for several, as runs of engine ids and a base the engines number
        their ids from, so that a request to thousands of engines stays small."""
        if len(targets) == 1:
            ids = [self.new_id()]
            return {Key.TARGETS: targets, Key.IDS: ids}, ids
        base, runs = self.new_id(), wire.target_runs(targets)
        named = {Key.TARGET_RUNS: runs} if len(runs) < len(targets) else {Key.TARGETS: targets}
        return {**named, Key.ID_BASE: base}, wire.numbered_ids(base, len(targets))

    def close(self) -> None:
        """Say goodbye to every front and stop the receiving thread."""
        if self.closed:
            return
        fronts = list(dict.fromkeys(self.fronts.values()))
        try:
            for front in fronts:
                self.send({Key.TYPE: Msg.CLOSE}, sender=front.sender)
        finally:
            self.closed = True
            for front in fronts:
                front.sender.close()
            for local in list(self._local_senders):
                local.close()
            self.io.stop()

    # -- what comes in ------------------------------------------------------------------

    def on_message(self, msg: wire.Message) -> None:
        """Runs on the receiving thread for every verified message from the controller."""
        kind = msg.header[Key.TYPE]
        if kind == Msg.REPLY:
            msg_id = msg.header.get(Key.ID)
            slot = self.pending.pop(msg_id, None)
            if slot is not None:
                slot[0]._deliver(slot[1], msg)
            if self.also_deliver:
                for ar, index in self.also_deliver.pop(msg_id, ()):
                    ar._deliver(index, msg)
        elif kind == Msg.STREAM:
            ar = self.results.get(msg.header.get(Key.ID))
            if ar is not None:
                ar._output(ar.msg_ids.index(msg.header[Key.ID]), msg.header.get(Key.ENGINE_ID),
                           str(msg.header.get(Key.STREAM_NAME)), str(msg.header.get(Key.STREAM_TEXT)))
        elif kind == Msg.CONNECT_REPLY:
            self.reconnector.on_connect_reply(msg)
        elif kind == Msg.QUERY_REPLY and not self.reconnector.on_query_reply(msg):
            query = self.queries.pop(msg.header.get(Key.REQUEST_ID), None)
            if query is not None:
                query.header = msg.header
                query.event.set()
        elif kind == Msg.NOTIFY and msg.header[Key.EVENT] == EVENT_PATH_LOST:
            self._path_lost(msg.header.get(Key.PATH), msg.header.get(Key.WHY, ""))
        elif kind == Msg.NOTIFY:
            with self.engines_changed:
                if msg.header[Key.EVENT] == EVENT_REGISTERED:
                    engine = msg.header[Key.ENGINE]
                    self.engines[engine["id"]] = engine
                    self.link(engine)
                elif msg.header[Key.EVENT] == EVENT_UNREGISTERED:
                    self.engines.pop(msg.header[Key.ID], None)
                    self.io.unlink(msg.header[Key.ID])
                self.engines_changed.notify_all()

    def link(self, engine: dict) -> None:
        """Open a direct data link to a new engine, up to ``config.MAX_DATA_LINKS``."""
        if len(self.io.links) < config.MAX_DATA_LINKS:
            self.io.link(engine["id"], engine.get("data") or [])

    def replace_engines(self, engines: list[dict]) -> None:
        """The engine table as the controller says it is now (after a reconnect)."""
        table = {engine["id"]: engine for engine in engines}
        with self.engines_changed:
            for engine_id in self.engines.keys() - table.keys():
                self.io.unlink(engine_id)
            for engine_id in table.keys() - self.engines.keys():
                self.link(table[engine_id])
            self.engines = table
            self.engines_changed.notify_all()

    def mpi_rank(self, engine_id: int | None) -> int | None:
        engine = self.engines.get(engine_id)
        return engine.get("mpi_rank") if engine else None

    # -- failing what waits ---------------------------------------------------------------

    def _path_lost(self, path: str, why: str) -> None:
        """A split controller lost a path: what waited on it fails, and it takes no more."""
        front = self.fronts.get(path)
        if front is not None and not front.lost:
            self.lose([front], f"the controller's {path} path is gone ({why})", "ControllerError")

    def lose(self, fronts: list[Front] | None, why: str, ename: str, refuse: bool = True) -> None:
        """Fail every result still waiting on ``fronts`` (None: on any) with ``ename``;
        with ``refuse``, refuse new requests to them too (they will never answer), else
        only name ``why`` when a call finds no engines. Any thread may call it."""
        chosen = set(self.fronts.values()) if fronts is None else set(fronts)
        self.gone = (why, getattr(errors, ename))
        for front in chosen if refuse else ():
            if not front.lost:
                front.lost, front.error = why, getattr(errors, ename)
        for msg_id, (ar, _) in list(self.pending.items()):
            if ar._front in chosen:
                self.fail_pending(msg_id, ename, f"{why}; task {msg_id} is lost with it")

    def fail_pending(self, msg_id: str, ename: str, why: str) -> None:
        """Give a result still awaited a made-up error reply (any thread)."""
        slot = self.pending.pop(msg_id, None)
        if slot is not None:
            header = {Key.TYPE: Msg.REPLY, Key.ID: msg_id, Key.STATUS: "error", Key.ENAME: ename, Key.TRACEBACK: "",
                      Key.EVALUE: why}
            slot[0]._deliver(slot[1], wire.Message(header, b"", [], []))

    def ids(self) -> list[int]:
        """Ids of the registered engines, sorted."""
        with self.engines_changed:
            return sorted(self.engines)

    def resolve_targets(self, targets) -> list[int]:
        """Engine ids from what a view or call names: None or "all", an id, a slice of the
        registered ids, or ids."""
        if targets is None or targets == "all":
            ids = self.ids()
            if not ids:
                raise self.no_engines("no engines are registered; start some, or wait with rc.wait_for_engines(n)")
            return ids
        if isinstance(targets, int):
            return [targets]
        if isinstance(targets, slice):
            targets = self.ids()[targets]
        targets = list(targets)
        if not all(isinstance(t, int) for t in targets):
            raise TypeError(f"targets must be engine ids (ints), not {targets!r}")
        return targets

    def no_engines(self, message: str) -> errors.MpihubError:
        """The error for a call that needs engines: why they are gone, when it is known
        (their batch job ended, a path of the controller was lost)."""
        if self.gone is not None:
            why, error = self.gone
            return error(f"{message}: {why}")
        return errors.NoEnginesRegistered(message)

    # -- sending ----------------------------------------------------------------------

    def send(self, header: dict, content: bytes = b"", buffers: list = (), track: bool = False,
             sender: Sender | None = None):
        """Sign and send one message (to the Hub's front unless ``sender`` says otherwise)."""
        if self.closed:
            raise RuntimeError("this Client is closed")
        frames = wire.pack(self.signer, header, content, buffers)
        return (sender or self.fronts["hub"].sender).send(frames, zero_copy=bool(buffers), track=track)

    def submit(self, header: dict, content: bytes, buffers: list, ar: AsyncResult, offset: int = 0,
               track: bool = False, sync: bool = False) -> None:
        """Register reply slots for ``ar`` and send (the send's tracker, if any, goes to ``ar``).

        A ``sync`` request (its caller blocks on the result) goes out on the calling
        thread's own socket, so its reply comes back there and is read by the thread that
        waits for it, with no other thread involved. Two sockets reach the controller
        over two connections, which keep no order between them: so once this thread has
        sent on the shared socket, its blocking calls use that socket too, until one has
        come back (by then the controller has taken everything sent before).
        """
        pending, results = self.pending, self.results
        ids = (header[Key.ID],) if Key.ID in header else wire.request_ids(header)
        for index, msg_id in enumerate(ids):
            pending[msg_id] = (ar, offset + index)
            results[msg_id] = ar
        front = self.fronts["task" if header.get(Key.LOAD_BALANCED) else "direct"]
        if front.lost:
            for msg_id in ids:
                pending.pop(msg_id, None)
            raise front.error(f"this request cannot be sent: {front.lost}")
        ar._front = front
        sender = front.sender
        shared = getattr(self._thread_local, "shared", None)
        if shared is None:
            shared = self._thread_local.shared = set()
        if not sync:
            shared.add(front)
        elif front not in shared:
            sender = ar._local = self._local_sender(front)
        if self.io.links:
            header[Key.RESULT_BACK] = self.data_identity  # engines may send large results straight back
            targets = header.get(Key.TARGETS)
            data_for = header.get(Key.BUFFERS_FOR, targets[0] if targets and len(targets) == 1 else None)
            if (buffers and data_for is not None
                    and sum(memoryview(b).nbytes for b in buffers) >= config.BULK_THRESHOLD
                    and self.io.linked(data_for, wait=True)):
                header[Key.BULK_TOKEN] = ids[0]
                self.send(header, content, sender=sender)
                ar._outgoing.append(self.io.send_bulk(data_for, ids[0], buffers))
                return
        ar._outgoing.append(self.send(header, content, buffers, track, sender))

    def expect(self, ar: AsyncResult) -> None:
        """Wait for the replies of ``ar``'s ids, which the controller will send unasked
        (tasks it creates for this client, such as resubmitted ones)."""
        for index, msg_id in enumerate(ar.msg_ids):
            self.pending[msg_id] = (ar, index)
            self.results[msg_id] = ar

    def adopt(self, ar: AsyncResult) -> list[str]:
        """Fill ``ar`` (a ``get_result``) from what this client has: replies it received,
        replies it still awaits for its own tasks (shared). Returns the ids to ask the
        controller for, now awaited for ``ar``."""
        missing = []
        for index, msg_id in enumerate(ar.msg_ids):
            own = self.results.get(msg_id)
            reply = own._replies[own.msg_ids.index(msg_id)] if own is not None else None
            if reply is not None:
                ar._deliver(index, reply[0])
            elif msg_id in self.pending:
                self.also_deliver.setdefault(msg_id, []).append((ar, index))
            else:
                self.pending[msg_id] = (ar, index)
                missing.append(msg_id)
        return missing

    def forget(self, ids: Iterable[str]) -> None:
        """Stop waiting for these replies (their request was refused)."""
        for msg_id in ids:
            self.pending.pop(msg_id, None)

    def drop_results(self, ids: Iterable[str]) -> None:
        """Forget finished results here (``purge_results``)."""
        for msg_id in ids:
            self.results.pop(msg_id, None)

    def query(self, op: str, fields: dict | None = None, timeout: float = 30) -> Any:
        """Ask the Hub ``op`` with ``fields`` (header keys: :class:`~mpihub.protocol.schema.Key`);
        its result, or an error saying why it refused or did not answer."""
        hub = self.fronts["hub"]
        if hub.lost:
            raise hub.error(f"the controller cannot answer {op!r}: {hub.lost}")
        if not self.reconnector.up.wait(timeout):  # its answer would go to a socket not yet back
            raise errors.TimeoutError(f"the connection to the controller did not come back within {timeout} s; "
                                      f"{op!r} was not sent")
        rid = self.new_id()
        request = {Key.TYPE: Msg.QUERY, Key.OP: op, Key.REQUEST_ID: rid, Key.REPLY_TO: self.receiving_identity,
                   **(fields or {})}
        slot = self.queries[rid] = QuerySlot(request)
        self.send(request)
        if not self.io.wait_for(slot.event, timeout):
            self.queries.pop(rid, None)
            raise errors.TimeoutError(f"the controller did not answer {op!r} within {timeout} s")
        if slot.lost:
            raise errors.ControllerError(slot.header[Key.ERROR])
        if not slot.header[Key.OK]:
            raise ValueError(f"the controller refused {op!r}: {slot.header.get(Key.ERROR)}")
        return slot.header.get(Key.RESULT)

    # -- waiting --------------------------------------------------------------------------

    def wait_for(self, ar: AsyncResult, timeout: float | None) -> bool:
        """Wait for ``ar``'s replies: a blocking call's on the caller's own socket, read by
        the caller; any other's through whichever thread receives."""
        local = ar._local
        if local is not None and local.thread == threading.get_ident() and not ar._event.is_set():
            return self._wait_local(local, ar._event, timeout)
        return self.io.wait_for(ar._event, timeout)

    def blocking_call_done(self, ar: AsyncResult) -> None:
        """A blocking call came back: its front has taken all this thread sent there."""
        shared = getattr(self._thread_local, "shared", None)
        if shared:
            shared.discard(ar._front)

    def _local_sender(self, front: Front) -> LocalSender:
        """This thread's own socket to ``front`` for blocking calls (made on first use)."""
        senders = getattr(self._thread_local, "senders", None)
        if senders is None:
            senders = self._thread_local.senders = {}
        local = senders.get(front)
        if local is None:
            sock = self._dealer(f"client-{self.session}-t{next(self._counter)}", 1000, front.url)
            local = senders[front] = LocalSender(sock)
            with self.engines_changed:
                self._local_senders.add(local)
        return local

    def _wait_local(self, local: LocalSender, event: threading.Event, timeout: float | None) -> bool:
        """Read this thread's socket until ``event`` is set: replies to blocking calls.

        The event may also be set by the IO thread (a failure made up for a lost path), so
        the wait looks at it at least once a second."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sock = local.sock
        while not event.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if not sock.poll(1000 if left is None else min(left, 1.0) * 1000):
                continue
            for msg in wire.pending(sock, self.signer, self.io.drop):
                token = msg.header.get(Key.BULK_TOKEN)
                if token is not None:
                    msg = self.io.complete_bulk(msg, token)
                self.on_message(msg)
        return True

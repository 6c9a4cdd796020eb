"""The Client: a connection to one controller, its engines and its Hub.

Engine ids stay current passively: the controller pushes registration and
unregistration notices, which the IO thread applies to ``ids``.
"""
from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any, Iterable

import zmq

from .. import config, errors
from ..protocol import wire
from ..protocol.curve import Curve
from .asyncresult import AsyncResult
from .connectioninfo import connection_info_from
from .io import IOThread, LocalSender, Sender
from .reconnect import Reconnector

if TYPE_CHECKING:
    from .view import DirectView, LoadBalancedView


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


class _QuerySlot:
    __slots__ = ("event", "header", "request")

    def __init__(self, request: dict):
        self.event = threading.Event()
        self.header: dict | None = None
        self.request = request  # sent again after a reconnect, if asking twice is harmless


#: Why the controller has no result to send, by the state its answer names.
_RESULT_GONE = {
    "unknown": "unknown to the controller",
    "purged": "purged from the controller's store",
    "direct": "its data went straight to the client that submitted it",
    "evicted": "evicted from the controller's store for its size limit before anyone fetched it "
               "(MPIHUB_STORE_BYTES, MPIHUB_MAX_RECORDS; with --db sqlite, MPIHUB_DB_BYTES)",
    "unstored": "larger than the store keeps per result (MPIHUB_DB_PAYLOAD_BYTES)",
}


class Client:
    """Connect to a running controller.

    ``connection_info`` is a path to ``mpihub-client[-<cluster_id>].json`` or its
    contents as a dict; by default the file of ``cluster_id`` in ``profile_dir`` is used,
    waited for up to ``timeout`` seconds.
    """

    def __init__(self, connection_info: str | os.PathLike | dict | None = None, *, url_file=None,
                 profile_dir=None, cluster_id: str | None = None, timeout: float = 10,
                 context: zmq.Context | None = None):
        self._info = connection_info_from(connection_info, url_file, profile_dir, cluster_id, timeout)
        self._signer = wire.Signer(self._info["key"])
        self._curve = Curve.from_info(self._info)
        self.cluster_id = self._info.get("cluster_id") or None
        self._context = context or zmq.Context.instance()
        self._session = uuid.uuid4().hex[:12]
        self._receiving_identity = f"client-{self._session}-r"  # replies and notices come to it
        self._counter = itertools.count()
        self._engines: dict[int, dict] = {}
        self._engines_changed = threading.Condition()
        self._pending: dict[str, tuple[AsyncResult, int]] = {}
        self._queries: dict[str, _QuerySlot] = {}
        self._also_deliver: dict[str, list[tuple[AsyncResult, int]]] = {}  # get_result of own pending tasks
        self._results: weakref.WeakValueDictionary[str, AsyncResult] = weakref.WeakValueDictionary()
        self._closed = False
        self._gone: tuple[str, type[errors.MpihubError]] | None = None  # why engines are gone, when known
        urls = self._info.get("candidates", {}).get("client") or [self._info["client"]]
        if self._info["client"] in urls:
            urls = [self._info["client"]] + [u for u in urls if u != self._info["client"]]
        receiving, hub, reply = self._connect("the controller", urls, timeout)
        self._sender = hub.sender
        self._fronts: dict[str, Front] = {"hub": hub, "direct": hub, "task": hub}
        self._thread_local = threading.local()
        self._local_senders: weakref.WeakSet[LocalSender] = weakref.WeakSet()  # gone with their threads
        self._data_identity = f"client-{self._session}-d".encode()
        self._reconnector = Reconnector(self, f"client-{self._session}-s")
        self._io = IOThread(self._context, receiving, self._signer, self._data_identity, self._on_message,
                            self._curve)
        self._io.watch(receiving, "hub", self._reconnector)
        try:
            for kind, path_urls in (reply.get("paths") or {}).items():
                path_receiving, self._fronts[kind], _ = self._connect(f"the controller's {kind} path", path_urls,
                                                                      timeout, kind)
                self._io.add_receiver(path_receiving)
                self._io.watch(path_receiving, kind, self._reconnector)
        except errors.TimeoutError:
            self._io.close_sockets()
            for front in dict.fromkeys(self._fronts.values()):
                front.sender.close()
            raise
        for engine in reply["engines"]:
            self._engines[engine["id"]] = engine
            self._link(engine)
        self._io.start()
        if "IPython" in sys.modules:
            from .magics import activate_if_in_ipython

            activate_if_in_ipython(self)

    # -- connection -------------------------------------------------------------------

    def _connect(self, what: str, urls: list[str], timeout: float, name: str = "hub") -> tuple[zmq.Socket, "Front", dict]:
        """Say hello on each candidate address in turn; the first that answers wins.

        The hello goes out on the receiving socket and names the sending socket's
        identity, so the controller routes replies to requests sent on the latter here.
        Returns the receiving socket, the front to send to, and the controller's answer.
        """
        wait = max(timeout, 0.5) / len(urls)
        for url in urls:
            sock = self._dealer(self._receiving_identity, 0, url)
            rid = self._new_id()
            send_as = f"client-{self._session}-s"
            sock.send_multipart(wire.pack(self._signer, {"t": "connect", "rid": rid, "send_as": send_as}))
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0 and sock.poll(left * 1000):
                try:
                    msg = wire.unpack(self._signer, sock.recv_multipart())
                except wire.ProtocolError:
                    continue
                if msg.type == "connect_reply" and msg.header.get("rid") == rid:
                    sending = self._dealer(send_as, 1000, url)
                    return sock, Front(name, url, Sender(sending)), msg.header
            sock.close()
        raise errors.TimeoutError(
            f"no answer from {what} at {', '.join(urls)} within {timeout:g} s. Is it running, "
            "and is this the connection file it wrote (a stale file or another key is refused)?")

    def _dealer(self, routing_id: str, linger: int, url: str) -> zmq.Socket:
        """A socket to the controller at ``url`` (encrypted when the cluster is)."""
        sock = self._context.socket(zmq.DEALER)
        sock.routing_id = routing_id.encode()
        sock.linger = linger
        sock.hwm = 0  # submitting many tasks never blocks; the controller queues them all
        if self._curve:
            self._curve.client(sock)
        sock.connect(url)
        return sock

    def _new_id(self) -> str:
        return f"{self._session}-{next(self._counter)}"

    def _on_message(self, msg: wire.Message) -> None:
        """Runs on the receiving thread for every verified message from the controller."""
        kind = msg.header["t"]
        if kind == "reply":
            msg_id = msg.header.get("id")
            slot = self._pending.pop(msg_id, None)
            if slot is not None:
                slot[0]._deliver(slot[1], msg)
            if self._also_deliver:
                for ar, index in self._also_deliver.pop(msg_id, ()):
                    ar._deliver(index, msg)
        elif kind == "stream":
            ar = self._results.get(msg.header.get("id"))
            if ar is not None:
                ar._output(ar.msg_ids.index(msg.header["id"]), msg.header.get("eng"), str(msg.header.get("name")),
                           str(msg.header.get("text")))
        elif kind == "connect_reply":
            self._reconnector.on_connect_reply(msg)
        elif kind == "query_reply" and not self._reconnector.on_query_reply(msg):
            query = self._queries.pop(msg.header.get("rid"), None)
            if query is not None:
                query.header = msg.header
                query.event.set()
        elif kind == "notify" and msg.header["ev"] == "path_lost":
            self._path_lost(msg.header.get("path"), msg.header.get("why", ""))
        elif kind == "notify":
            with self._engines_changed:
                if msg.header["ev"] == "registered":
                    engine = msg.header["engine"]
                    self._engines[engine["id"]] = engine
                    self._link(engine)
                elif msg.header["ev"] == "unregistered":
                    self._engines.pop(msg.header["id"], None)
                    self._io.unlink(msg.header["id"])
                self._engines_changed.notify_all()

    def _link(self, engine: dict) -> None:
        """Open a direct data link to a new engine, up to ``config.MAX_DATA_LINKS``."""
        if len(self._io.links) < config.MAX_DATA_LINKS:
            self._io.link(engine["id"], engine.get("data") or [])

    def _send(self, header: dict, content: bytes = b"", buffers: list = (), track: bool = False,
              sender: Sender | None = None):
        if self._closed:
            raise RuntimeError("this Client is closed")
        frames = wire.pack(self._signer, header, content, buffers)
        return (sender or self._sender).send(frames, zero_copy=bool(buffers), track=track)

    def _path_lost(self, path: str, why: str) -> None:
        """A split controller lost a path: what waited on it fails, and it takes no more."""
        front = self._fronts.get(path)
        if front is not None and not front.lost:
            self._lose([front], f"the controller's {path} path is gone ({why})", "ControllerError")

    def _lose(self, fronts: list["Front"] | None, why: str, ename: str, refuse: bool = True) -> None:
        """Fail every result still waiting on ``fronts`` (None: on any) with ``ename``;
        with ``refuse``, refuse new requests to them too (they will never answer), else
        only name ``why`` when a call finds no engines. Any thread may call it."""
        chosen = set(self._fronts.values()) if fronts is None else set(fronts)
        self._gone = (why, getattr(errors, ename))
        for front in chosen if refuse else ():
            if not front.lost:
                front.lost, front.error = why, getattr(errors, ename)
        for msg_id, (ar, _) in list(self._pending.items()):
            if ar._front in chosen:
                self._fail_pending(msg_id, ename, f"{why}; task {msg_id} is lost with it")

    def _fail_pending(self, msg_id: str, ename: str, why: str) -> None:
        """Give a result still awaited a made-up error reply (any thread)."""
        slot = self._pending.pop(msg_id, None)
        if slot is not None:
            header = {"t": "reply", "id": msg_id, "st": "error", "ename": ename, "tb": "", "evalue": why}
            slot[0]._deliver(slot[1], wire.Message(header, b"", [], []))

    def _blocking_call_done(self, ar: AsyncResult) -> None:
        """A blocking call came back: its front has taken all this thread sent there."""
        shared = getattr(self._thread_local, "shared", None)
        if shared:
            shared.discard(ar._front)

    def _local_sender(self, front: "Front") -> "LocalSender":
        """This thread's own socket to ``front`` for blocking calls (made on first use)."""
        senders = getattr(self._thread_local, "senders", None)
        if senders is None:
            senders = self._thread_local.senders = {}
        local = senders.get(front)
        if local is None:
            sock = self._dealer(f"client-{self._session}-t{next(self._counter)}", 1000, front.url)
            local = senders[front] = LocalSender(sock)
            with self._engines_changed:
                self._local_senders.add(local)
        return local

    def _wait_local(self, local: "LocalSender", event: threading.Event, timeout: float | None) -> bool:
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
            for msg in wire.pending(sock, self._signer, self._io._drop):
                token = msg.header.get("bulk")
                if token is not None:
                    msg = self._io.complete_bulk(msg, token)
                self._on_message(msg)
        return True

    def _submit(self, header: dict, content: bytes, buffers: list, ar: AsyncResult, offset: int = 0,
                track: bool = False, sync: bool = False):
        """Register reply slots for ``ar`` and send; returns the send's tracker, if any.

        A ``sync`` request (its caller blocks on the result) goes out on the calling
        thread's own socket, so its reply comes back there and is read by the thread that
        waits for it, with no other thread involved. Two sockets reach the controller
        over two connections, which keep no order between them: so once this thread has
        sent on the shared socket, its blocking calls use that socket too, until one has
        come back (by then the controller has taken everything sent before).
        """
        pending, results = self._pending, self._results
        ids = header["ids"] if "ids" in header else (header["id"],)
        for index, msg_id in enumerate(ids):
            pending[msg_id] = (ar, offset + index)
            results[msg_id] = ar
        front = self._fronts["task" if header.get("lb") else "direct"]
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
        if self._io.links:
            header["rb"] = self._data_identity  # engines may send large results straight back
            targets = header.get("tg")
            data_for = header.get("bt", targets[0] if targets and len(targets) == 1 else None)
            if (buffers and data_for is not None
                    and sum(memoryview(b).nbytes for b in buffers) >= config.BULK_THRESHOLD
                    and self._io.linked(data_for, wait=True)):
                header["bulk"] = ids[0]
                self._send(header, content, sender=sender)
                return self._io.send_bulk(data_for, ids[0], buffers)
        return self._send(header, content, buffers, track, sender)

    def _query(self, op: str, timeout: float = 30, **args) -> Any:
        hub = self._fronts["hub"]
        if hub.lost:
            raise hub.error(f"the controller cannot answer {op!r}: {hub.lost}")
        if not self._reconnector.up.wait(timeout):  # its answer would go to a socket not yet back
            raise errors.TimeoutError(f"the connection to the controller did not come back within {timeout} s; "
                                      f"{op!r} was not sent")
        rid = self._new_id()
        request = {"t": "query", "op": op, "rid": rid, "rt": self._receiving_identity, **args}
        slot = self._queries[rid] = _QuerySlot(request)
        self._send(request)
        if not self._io.wait_for(slot.event, timeout):
            self._queries.pop(rid, None)
            raise errors.TimeoutError(f"the controller did not answer {op!r} within {timeout} s")
        if slot.header.get("lost"):
            raise errors.ControllerError(slot.header["error"])
        if not slot.header["ok"]:
            raise ValueError(f"the controller refused {op!r}: {slot.header.get('error')}")
        return slot.header.get("result")

    def _mpi_rank(self, engine_id: int | None) -> int | None:
        engine = self._engines.get(engine_id)
        return engine.get("mpi_rank") if engine else None

    # -- engines ----------------------------------------------------------------------

    @property
    def ids(self) -> list[int]:
        """Ids of the registered engines, sorted (kept current by the controller)."""
        with self._engines_changed:
            return sorted(self._engines)

    def __len__(self) -> int:
        return len(self._engines)

    def wait_for_engines(self, n: int | None = None, timeout: float = -1, interactive: bool | None = None) -> None:
        """Block until ``n`` engines are registered (a progress bar when in a terminal)."""
        target = n if n is not None else max(len(self._engines), 1)
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        show = sys.stderr.isatty() if interactive is None else interactive
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=target, unit="engine", desc="waiting for engines", file=sys.stderr)
        try:
            with self._engines_changed:
                while len(self._engines) < target:
                    if bar is not None:
                        bar.update(len(self._engines) - bar.n)
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise errors.TimeoutError(f"{len(self._engines)} of {target} engines registered "
                                                  f"after {timeout} s")
                    self._engines_changed.wait(left if left is None else min(left, 1.0))
                if bar is not None:
                    bar.update(len(self._engines) - bar.n)
        finally:
            if bar is not None:
                bar.close()

    def _no_engines(self, message: str) -> errors.MpihubError:
        """The error for a call that needs engines: why they are gone, when it is known
        (their batch job ended, a path of the controller was lost)."""
        if self._gone is not None:
            why, error = self._gone
            return error(f"{message}: {why}")
        return errors.NoEnginesRegistered(message)

    def _check_targets(self, targets) -> list[int]:
        if targets is None or targets == "all":
            ids = self.ids
            if not ids:
                raise self._no_engines("no engines are registered; start some, or wait with rc.wait_for_engines(n)")
            return ids
        if isinstance(targets, int):
            return [targets]
        if isinstance(targets, slice):
            targets = self.ids[targets]
        targets = list(targets)
        if not all(isinstance(t, int) for t in targets):
            raise TypeError(f"targets must be engine ids (ints), not {targets!r}")
        return targets

    def __getitem__(self, key) -> "DirectView":
        from .view import DirectView

        if isinstance(key, int):
            if key not in self._engines:
                raise IndexError(f"no engine with id {key}; registered: {self.ids}")
            return DirectView(self, key)
        if isinstance(key, slice):
            ids = self.ids[key]
            if not ids:
                raise self._no_engines(f"no engines in {key} of {self.ids}")
            return DirectView(self, ids)
        if isinstance(key, (list, tuple)):
            missing = [t for t in key if t not in self._engines]
            if missing:
                raise IndexError(f"no engines with ids {missing}; registered: {self.ids}")
            return DirectView(self, list(key))
        raise TypeError(f"index engines with an int, slice or list, not {type(key).__name__}")

    def activate(self, targets="all", suffix: str = ""):
        """Give IPython ``%px``, ``%%px``, ``%autopx`` and ``%pxresult`` (each with
        ``suffix``) on a DirectView of ``targets`` (see :mod:`.magics`)."""
        from .magics import activate

        return activate(self.direct_view(targets), suffix)

    def direct_view(self, targets="all") -> "DirectView":
        from .view import DirectView

        return DirectView(self, targets)

    def load_balanced_view(self, targets=None) -> "LoadBalancedView":
        from .view import LoadBalancedView

        return LoadBalancedView(self, targets)

    # -- results and the Hub ------------------------------------------------------------

    def _outstanding(self) -> list[AsyncResult]:
        return list({id(ar): ar for ar, _ in list(self._pending.values())}.values())

    def _as_results(self, jobs) -> list[AsyncResult]:
        if jobs is None:
            return self._outstanding()
        if isinstance(jobs, (AsyncResult, str)):
            jobs = [jobs]
        out = []
        for job in jobs:
            if isinstance(job, AsyncResult):
                out.append(job)
            elif isinstance(job, str):
                out.append(self._results[job] if job in self._results else self.get_result(job))
            else:
                raise TypeError(f"jobs are AsyncResults or msg_ids, not {type(job).__name__}")
        return out

    @staticmethod
    def _msg_ids(jobs) -> list[str]:
        if isinstance(jobs, (AsyncResult, str)):
            jobs = [jobs]
        ids: list[str] = []
        for job in jobs:
            ids.extend(job.msg_ids if isinstance(job, AsyncResult) else [job])
        return ids

    def wait(self, jobs=None, timeout: float = -1) -> bool:
        """Wait for the given results (default: all of this client's); False on timeout."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        for ar in self._as_results(jobs):
            left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            if not ar.wait(left):
                return False
        return True

    def get_result(self, indices_or_msg_ids, block: bool | None = None) -> AsyncResult:
        """An AsyncResult for tasks by msg_id, including other clients' tasks."""
        ids = [indices_or_msg_ids] if isinstance(indices_or_msg_ids, str) else list(indices_or_msg_ids)
        known = [self._results.get(m) for m in ids]
        if len(ids) == 1 and known[0] is not None and known[0].msg_ids == ids:
            return known[0]
        ar = AsyncResult(self, ids, fname="get_result", single=isinstance(indices_or_msg_ids, str))
        missing = []
        for index, msg_id in enumerate(ids):
            local = self._results.get(msg_id)
            reply = local._replies[local.msg_ids.index(msg_id)] if local is not None else None
            if reply is not None:
                ar._deliver(index, reply[0])
            elif msg_id in self._pending:  # still running for this client: share its reply
                self._also_deliver.setdefault(msg_id, []).append((ar, index))
            else:
                self._pending[msg_id] = (ar, index)
                missing.append(msg_id)
        if missing:
            outcome = self._query("result", ids=missing)
            gone = {m: why for state, why in _RESULT_GONE.items() for m in outcome.get(state, ())}
            if gone:
                for msg_id in missing:
                    self._pending.pop(msg_id, None)
                raise KeyError("no result for " + ", ".join(f"{m!r} ({why})" for m, why in gone.items()))
        if block:
            return ar.get()
        return ar

    def queue_status(self, targets=None, verbose: bool = False) -> dict:
        """``{engine_id: {"queue", "completed", "tasks"}, "unassigned": n}``."""
        if targets is not None:
            targets = self._check_targets(targets)
        status = self._query("queue_status", targets=targets, verbose=verbose)
        return {int(k) if not isinstance(k, int) and k != "unassigned" else k: v for k, v in status.items()}

    def send_signal(self, sig: int, targets=None) -> list[int]:
        """Send ``sig`` to engine processes; ``signal.SIGINT`` interrupts the task running
        there (it fails with KeyboardInterrupt) and the engine goes on. Returns the ids
        of the engines signalled."""
        try:
            number = int(signal.Signals(sig))
        except ValueError:
            raise ValueError(f"{sig!r} is not a signal") from None
        return self._query("signal", sig=number, targets=None if targets is None else self._check_targets(targets))

    def abort(self, jobs=None, targets=None, block: bool = True, interrupt: bool = False) -> None:
        """Drop queued tasks (of this client, or the given jobs) before they start; with
        ``interrupt=True`` also interrupt those already running (KeyboardInterrupt)."""
        if jobs is None:
            ids = list(self._pending)
        else:
            ids = self._msg_ids(jobs)
        if targets is not None:
            wanted = set(self._check_targets(targets))
            status = self.queue_status(list(wanted), verbose=True)
            ids += [m for eid in wanted if eid in status for m in status[eid]["queue"] + status[eid]["tasks"]]
        self._query("abort", ids=ids, interrupt=bool(interrupt))

    def resubmit(self, jobs) -> AsyncResult:
        """Run the given tasks again, load-balanced, as new tasks."""
        old = self._msg_ids(jobs)
        new = [self._new_id() for _ in old]
        ar = AsyncResult(self, new, fname="resubmit", single=isinstance(jobs, str) or len(old) == 1)
        for index, msg_id in enumerate(new):
            self._pending[msg_id] = (ar, index)
        try:
            self._query("resubmit", ids=old, new_ids=new)
        except Exception:
            for msg_id in new:
                self._pending.pop(msg_id, None)
            raise
        self._results.update((m, ar) for m in new)
        return ar

    def purge_results(self, jobs=None, targets=None) -> None:
        """Forget finished results here and in the Hub (``jobs="all"`` for every one)."""
        if jobs == "all":
            ids = None
            for msg_id in [m for m, ar in list(self._results.items()) if ar.ready()]:
                self._results.pop(msg_id, None)
        elif jobs is None and targets is None:
            raise ValueError("name jobs, targets, or pass jobs='all'")
        else:
            ids = self._msg_ids(jobs) if jobs is not None else []
            for msg_id in ids:
                self._results.pop(msg_id, None)
        engine_ids = self._check_targets(targets) if targets is not None else None
        self._query("purge", ids=ids, targets=engine_ids)

    def db_query(self, query: dict, keys: Iterable[str] | None = None) -> list[dict]:
        """Task records from the Hub matching a Mongo-style query, e.g.
        ``{"engine_id": 0, "completed": {"$ne": None}}``."""
        return self._query("db_query", query=query, keys=list(keys) if keys else None)

    def shutdown(self, targets="all", hub: bool = False, block: bool = True) -> None:
        """Stop engines (``targets``), and with ``hub=True`` the controller too."""
        engine_ids = None if targets == "all" else self._check_targets(targets)
        self._reconnector.stopping = hub
        stopped = self._query("shutdown", targets=engine_ids, hub=hub)
        if block:
            deadline = time.monotonic() + 10
            with self._engines_changed:
                while any(t in self._engines for t in stopped) and time.monotonic() < deadline:
                    self._engines_changed.wait(0.5)

    def close(self) -> None:
        if self._closed:
            return
        fronts = list(dict.fromkeys(self._fronts.values()))
        try:
            for front in fronts:
                self._send({"t": "close"}, sender=front.sender)
        finally:
            self._closed = True
            for front in fronts:
                front.sender.close()
            for local in list(self._local_senders):
                local.close()
            self._io.stop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mpihub.Client cluster={self.cluster_id or 'default'} engines={self.ids}>"

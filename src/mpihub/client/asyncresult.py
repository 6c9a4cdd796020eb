"""AsyncResult and AsyncMapResult: handles on work in flight.

A result holds one reply slot per msg_id; the IO thread fills a slot with the raw
reply and counts down, and only the last reply sets the result's event. Replies are
unpickled on first ``get()``, in the caller's thread, never on the IO thread.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from datetime import datetime
from typing import Any, Callable, Iterator

import zmq

from .. import errors, partition
from ..protocol import serialize, wire
from ..protocol.schema import Key

_MISSING = object()


class Metadata(dict):
    """Per-task metadata; also readable as attributes (``md.engine_id``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _when(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp)


_CONTROLLER_ERRORS = {"EngineError": errors.EngineError, "ImpossibleDependency": errors.ImpossibleDependency,
                      "DependencyTimeout": errors.DependencyTimeout, "ControllerError": errors.ControllerError,
                      "BatchError": errors.BatchError, "EngineRetired": errors.EngineRetired}


def reply_error(header: dict) -> Exception | None:
    """The exception a reply carries, or None for a success."""
    status = header.get(Key.STATUS)
    if status == "ok":
        return None
    ename, evalue = header.get(Key.ENAME, "Error"), header.get(Key.EVALUE, "")
    if status == "aborted":
        return errors.TaskAborted(evalue)
    if not header.get(Key.TRACEBACK) and ename in _CONTROLLER_ERRORS:  # made up by the controller
        return _CONTROLLER_ERRORS[ename](evalue)
    info = {"engine_id": header.get(Key.ENGINE_ID), "msg_id": header.get(Key.ID)}
    return errors.RemoteError(ename, evalue, header.get(Key.TRACEBACK, ""), info)


class AsyncResult:
    """Results of one call, on one engine or many (``msg_ids`` in target order)."""

    def __init__(self, client, msg_ids: list[str], fname: str = "", single: bool = False,
                 postprocess: Callable[[list], Any] | None = None):
        self._client = client
        self.msg_ids = list(msg_ids)
        self._fname = fname
        self._single = single
        self._outgoing: list = []  # trackers of the sends, for track=True
        self._postprocess = postprocess
        self._replies: list = [None] * len(self.msg_ids)
        self._remaining = len(self.msg_ids)
        self._event = threading.Event()
        self._callbacks: list[Callable[[AsyncResult], None]] = []
        self._output_callbacks: list[Callable[[int, Any, str, str], None]] = []
        self._result: Any = _MISSING
        self._local = None  # the caller's own socket, for a blocking call
        self._front = None  # the controller process the request went to
        self._submitted = time.time()
        if not self.msg_ids:
            self._event.set()

    # -- filled in by the thread that receives the replies -------------------------------

    def _deliver(self, index: int, msg: wire.Message) -> None:
        if self._replies[index] is not None:
            return
        self._replies[index] = (msg, time.time())
        self._remaining -= 1
        if self._remaining == 0:
            self._event.set()
            for callback in self._callbacks:
                callback(self)

    # -- waiting ----------------------------------------------------------------------

    def ready(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = -1) -> bool:
        """Wait for every reply; True if all came within ``timeout`` seconds (-1/None: forever)."""
        limit = None if timeout is None or timeout < 0 else timeout
        return self._client.core.wait_for(self, limit)

    def get(self, timeout: float | None = -1) -> Any:
        """The result; raises the remote error, or TimeoutError (retrievable later)."""
        if not self.wait(timeout):
            raise errors.TimeoutError(f"{self._fname or 'result'} not ready after {timeout} s "
                                      f"({self.progress}/{len(self.msg_ids)} done)")
        if self._result is _MISSING:
            self._result = self._collect()
        if isinstance(self._result, Exception):
            raise self._result
        return self._result

    def _value(self, index: int) -> Any:
        msg = self._replies[index][0]
        error = reply_error(msg.header)
        if error is not None:
            return error
        return serialize.deserialize(msg.content, msg.buffers) if msg.content else None

    def _collect(self) -> Any:
        values = [self._value(i) for i in range(len(self.msg_ids))]
        failures = [v for v in values if isinstance(v, Exception)]
        if failures:
            if self._single or len(values) == 1:
                return failures[0]
            return errors.CompositeError(f"one or more exceptions calling {self._fname or 'the function'}:",
                                         failures)
        if self._postprocess is not None:
            return self._postprocess(values)
        return values[0] if self._single else values

    @property
    def r(self) -> Any:
        return self.get()

    result = r

    def successful(self) -> bool:
        if not self.ready():
            raise AssertionError(f"{self._fname or 'result'} is not ready")
        return all(reply_error(msg.header) is None for msg, _ in self._replies)

    def abort(self, interrupt: bool = False) -> None:
        """Drop these tasks where they have not started; ``interrupt=True`` also
        interrupts them where they run."""
        self._client.abort(self.msg_ids, interrupt=interrupt)

    def _output(self, index: int, engine_id: Any, name: str, text: str) -> None:
        """Lines a running task printed (``execute(stream=True)``), on the receiving thread."""
        if self._replies[index] is None:
            for callback in self._output_callbacks:
                callback(index, engine_id, name, text)

    def add_output_callback(self, callback: Callable[[int, Any, str, str], None]) -> None:
        """Call ``callback(index, engine_id, "stdout" | "stderr", text)`` for the lines
        each task prints while it runs, when it was sent with ``stream=True`` (on the
        thread that receives them; the final ``stdout`` still holds all of it)."""
        self._output_callbacks.append(callback)

    def add_done_callback(self, callback: Callable[["AsyncResult"], None]) -> None:
        """Call ``callback(self)`` once every reply is in (on the thread that received it)."""
        self._callbacks.append(callback)
        if self.ready() and callback in self._callbacks:
            self._callbacks.remove(callback)
            callback(self)

    def __await__(self):
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(_):
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

        self.add_done_callback(done)
        yield from future.__await__()
        return self.get(0)

    # -- sending ----------------------------------------------------------------------

    @property
    def sent(self) -> bool:
        """True once every tracked buffer has left, so it may be changed in place."""
        return all(tracker is None or tracker.done for tracker in self._outgoing)

    def wait_for_send(self, timeout: float | None = -1) -> bool:
        """Wait until tracked buffers have been sent; False on timeout."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        for tracker in self._outgoing:
            if tracker is None:
                continue
            remaining = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                tracker.wait(remaining)
            except zmq.NotDone:
                return False
        return True

    # -- metadata and timing ------------------------------------------------------------

    def _metadata_of(self, index: int) -> Metadata:
        reply = self._replies[index]
        md = Metadata(msg_id=self.msg_ids[index], submitted=_when(self._submitted), engine_id=None,
                      started=None, completed=None, received=None, stdout="", stderr="",
                      status="pending", mpi_rank=None, error=None)
        if reply is not None:
            msg, received = reply
            header = msg.header
            engine_id = header.get(Key.ENGINE_ID)
            md.update(engine_id=engine_id, started=_when(header.get(Key.STARTED)),
                      completed=_when(header.get(Key.COMPLETED)), received=_when(received),
                      stdout=header.get(Key.STDOUT, ""), stderr=header.get(Key.STDERR, ""),
                      status=header.get(Key.STATUS), error=reply_error(header),
                      mpi_rank=self._client.core.mpi_rank(engine_id))
        return md

    @property
    def metadata(self) -> Any:
        mds = [self._metadata_of(i) for i in range(len(self.msg_ids))]
        return mds[0] if self._single else mds

    def _per_task(self, key: str) -> Any:
        values = [self._metadata_of(i)[key] for i in range(len(self.msg_ids))]
        return values[0] if self._single else values

    @property
    def stdout(self) -> Any:
        return self._per_task("stdout")

    @property
    def stderr(self) -> Any:
        return self._per_task("stderr")

    @property
    def engine_id(self) -> Any:
        return self._per_task("engine_id")

    @property
    def progress(self) -> int:
        return len(self.msg_ids) - self._remaining

    @property
    def elapsed(self) -> float:
        """Seconds since submission (until the last reply, once all are in)."""
        end = self._last_received() if self.ready() else time.time()
        return end - self._submitted

    def _last_received(self) -> float:
        return max((r[1] for r in self._replies if r is not None), default=self._submitted)

    @property
    def wall_time(self) -> float:
        """Seconds from submission to the last reply."""
        self.wait()
        return self._last_received() - self._submitted

    @property
    def serial_time(self) -> float:
        """Sum of the engines' compute times (completed - started)."""
        total = 0.0
        for reply in self._replies:
            if reply is not None:
                header = reply[0].header
                if header.get(Key.STARTED) and header.get(Key.COMPLETED):
                    total += header[Key.COMPLETED] - header[Key.STARTED]
        return total

    def wait_interactive(self, interval: float = 0.1, timeout: float | None = -1, file=None) -> None:
        """Wait with a tqdm progress bar."""
        from tqdm.auto import tqdm

        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with tqdm(total=len(self), unit="tasks", desc=self._fname or "tasks", file=file or sys.stderr) as bar:
            while not self.ready():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._event.wait(interval)
                bar.update(self._done_items() - bar.n)
            bar.update(self._done_items() - bar.n)

    def _done_items(self) -> int:
        return self.progress

    def __len__(self) -> int:
        return len(self.msg_ids)

    def __iter__(self) -> Iterator[Any]:
        result = self.get()
        yield from ([result] if self._single else result)

    def __repr__(self) -> str:
        state = "finished" if self.ready() else "pending"
        return f"<{type(self).__name__}({self._fname}): {state}>"


class AsyncMapResult(AsyncResult):
    """Results of a map: one message per chunk, flattened back into one sequence.

    Iterating yields items as their chunk arrives, in order or (``ordered=False``) in
    completion order.
    """

    def __init__(self, client, msg_ids: list[str], chunk_sizes: list[int], fname: str = "",
                 ordered: bool = True, dist: str = "b"):
        super().__init__(client, msg_ids, fname)
        self._dist = dist
        self._chunk_sizes = chunk_sizes
        self._ordered = ordered
        self._arrival_order: list[int] = []
        self._chunk_cache: dict[int, list] = {}
        self._arrived = threading.Condition()  # iteration waits on it chunk by chunk

    def _deliver(self, index: int, msg: wire.Message) -> None:
        if self._replies[index] is None:
            self._arrival_order.append(index)
        super()._deliver(index, msg)
        with self._arrived:
            self._arrived.notify_all()

    def _collect(self) -> Any:
        chunks = [self._chunk(i) for i in range(len(self.msg_ids))]
        failures = [c for c in chunks if isinstance(c, Exception)]
        if failures:
            if len(failures) == 1:
                return failures[0]
            return errors.CompositeError(f"{len(failures)} chunks of {self._fname or 'map'} failed:", failures)
        if self._dist == "r":
            return partition.join(chunks, "r")
        return [item for chunk in chunks for item in chunk]

    def _chunk(self, index: int) -> Any:
        if index not in self._chunk_cache:
            self._chunk_cache[index] = self._value(index)
        return self._chunk_cache[index]

    def _done_items(self) -> int:
        return sum(self._chunk_sizes[i] for i in list(self._arrival_order))

    @property
    def progress(self) -> int:
        """Items (not chunks) whose results are in."""
        return self._done_items()

    def __len__(self) -> int:
        return sum(self._chunk_sizes)

    def __iter__(self) -> Iterator[Any]:
        if self.ready():
            if self._ordered:
                yield from self.get()
                return
        position = 0
        total = len(self.msg_ids)
        while position < total:
            with self._arrived:
                if self._ordered:
                    self._arrived.wait_for(lambda: self._replies[position] is not None)
                    index = position
                else:
                    self._arrived.wait_for(lambda: len(self._arrival_order) > position)
                    index = self._arrival_order[position]
            chunk = self._chunk(index)
            if isinstance(chunk, Exception):
                raise chunk
            yield from chunk
            position += 1

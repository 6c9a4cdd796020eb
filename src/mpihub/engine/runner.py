"""Runs apply and execute requests in the engine's namespace and builds the replies.

Pure Python, no sockets: the shell hands in a parsed request and sends what comes back.
Output printed during a task is captured per task and returned with its reply.
"""
from __future__ import annotations

import ast
import builtins
import io
import sys
import time
import traceback
import types
from functools import lru_cache
from typing import Any, Callable

from ..collective_function import COLLECTIVE_ATTRIBUTE
from ..protocol import serialize, wire
from ..protocol.schema import Key, Msg
from . import mpi_world, ops
from .function_cache import FunctionCache

_NOT_COLLECTIVE = object()
#: Seconds between two pieces of a streamed task's output (lines wait at most this long).
STREAM_INTERVAL = 0.05


class EngineStop(BaseException):
    """Raised by the engine's signal handler to stop it, even inside user code."""


class _Capture(io.StringIO):
    """A per-task stdout/stderr that still looks like a terminal-less text stream.
    With a ``sink`` (a request asked for its output as it comes), each completed line
    also goes to ``sink(name, text)``, at most every ``STREAM_INTERVAL`` seconds."""

    def __init__(self, name: str = "stdout", sink: Callable[[str, str], None] | None = None):
        super().__init__()
        self.name = name
        self.sink = sink
        self._sent = 0  # characters handed to the sink so far
        self._last = 0.0

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.sink is not None and "\n" in text and time.monotonic() - self._last >= STREAM_INTERVAL:
            self._stream()
        return written

    def _stream(self) -> None:
        value = self.getvalue()
        end = value.rfind("\n", self._sent) + 1
        if end > self._sent:
            self.sink(self.name, value[self._sent:end])
            self._sent = end
            self._last = time.monotonic()


def _resolve(value: Any, namespace: dict) -> Any:
    if isinstance(value, serialize.Reference):
        try:
            return namespace[value.name]
        except KeyError:
            raise NameError(f"Reference({value.name!r}): name is not defined on this engine") from None
    return value


def bind_interactive(f: Any, namespace: dict, memo: dict | None = None) -> Any:
    """Give a function defined in ``__main__`` the engine namespace as its globals.

    Globals that cloudpickle shipped with it and that the namespace lacks are added (the
    namespace's own values win), rebinding helper functions from ``__main__`` the same way.
    """
    if not (isinstance(f, types.FunctionType) and f.__module__ == "__main__"):
        return f
    if f.__globals__ is namespace:
        return f
    memo = {} if memo is None else memo
    if id(f) in memo:
        return memo[id(f)]
    bound = types.FunctionType(f.__code__, namespace, f.__name__, f.__defaults__, f.__closure__)
    memo[id(f)] = bound
    bound.__kwdefaults__ = f.__kwdefaults__
    bound.__qualname__ = f.__qualname__
    bound.__dict__.update(f.__dict__)
    bound.__module__ = "__main__"
    for name in f.__code__.co_names:
        if name not in namespace and name in f.__globals__:
            namespace[name] = bind_interactive(f.__globals__[name], namespace, memo)
    return bound


@lru_cache(maxsize=256)
def _compile(code: str, silent: bool) -> tuple[types.CodeType, types.CodeType | None]:
    tree = ast.parse(code, "<mpihub-execute>")
    last = None
    if not silent and tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), "<mpihub-execute>", "eval")
    return compile(tree, "<mpihub-execute>", "exec"), last


def _describe_import_error(exc: ImportError) -> ImportError:
    module = getattr(exc, "name", None) or "?"
    return ImportError(
        f"module {module!r} cannot be imported on this engine, so the function (or an argument) "
        f"that refers to it cannot be loaded. Install it where the engines run, or ship it by "
        f"value: `cloudpickle.register_pickle_by_value({module})` on the client, or decorate the "
        f"function with @mpihub.interactive. ({exc})"
    )


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the first frame outside this engine's own modules."""
    tb = exc.__traceback__
    engine_dir = __file__.rsplit("/", 1)[0]
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(engine_dir):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def task_id_for(header: dict, engine_id: int | None) -> str | None:
    """This engine's task id in a request (one to several engines names one each)."""
    try:
        if Key.ID in header:
            msg_id = header[Key.ID]
        elif Key.ID_BASE in header:
            msg_id = f"{header[Key.ID_BASE]}/{wire.target_index(header, engine_id)}"
        else:
            msg_id = header[Key.IDS][wire.target_index(header, engine_id)]
    except (KeyError, ValueError, TypeError, IndexError, AttributeError):
        return None
    return msg_id if isinstance(msg_id, str) else None


#: The reply fields of a task aborted before it started.
ABORTED = {Key.STATUS: "aborted", Key.ENAME: "TaskAborted", Key.EVALUE: "task aborted before it started",
           Key.TRACEBACK: "", Key.STARTED: None, Key.COMPLETED: None, Key.STDOUT: "", Key.STDERR: ""}


class Runner:
    def __init__(self, engine_id: int):
        self.engine_id = engine_id
        self.running: str | None = None
        #: Ids of tasks aborted before they started: an engine shares the set its
        #: heartbeat thread fills, so an abort that comes as a task starts is not lost.
        self.aborted: set[str] = set()
        self.namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
        self.functions = FunctionCache()
        ops.bind_namespace(self.namespace)

    def run(self, header: dict, content, buffers: list, task_id: str | None = None,
            sink: Callable[[str, str], None] | None = None) -> tuple[dict, bytes, list]:
        """Run one request; returns (reply header fields, content, buffers). With a
        ``sink``, output lines also go there while it runs (the reply has all of it).

        While it runs, ``running`` names the task: a KeyboardInterrupt raised then (an
        interrupt) fails this task alone.
        """
        stdout, stderr = _Capture("stdout", sink), _Capture("stderr", sink)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = stdout, stderr
        started = time.time()
        try:
            self.running = task_id
            if task_id in self.aborted:  # aborted (and maybe interrupted, seeing it run) as it started
                self.running = None
                self.aborted.discard(task_id)
                return dict(ABORTED), b"", []
            ops.bind_namespace(self.namespace)  # light engines: several runners in one process
            if header[Key.TYPE] == Msg.EXECUTE:
                result = self._execute(bytes(content).decode("utf-8"), bool(header.get(Key.SILENT, True)))
            else:
                result = self._apply(header, content, buffers)
            data, out_buffers = serialize.serialize(result)
            fields: dict = {Key.STATUS: "ok"}
        except EngineStop:
            raise
        except BaseException as exc:  # noqa: BLE001 - sys.exit() in a task is the task's error too
            data, out_buffers = b"", []
            fields = {Key.STATUS: "error", Key.ENAME: type(exc).__name__, Key.EVALUE: str(exc),
                      Key.TRACEBACK: _user_traceback(exc)}
        finally:
            self.running = None
            sys.stdout, sys.stderr = saved
        fields.update(started=started, completed=time.time(), out=stdout.getvalue(), err=stderr.getvalue())
        return fields, data, out_buffers

    def _execute(self, code: str, silent: bool) -> Any:
        body, last = _compile(code, silent)
        exec(body, self.namespace)
        return eval(last, self.namespace) if last is not None else None

    def _apply(self, header: dict, content, buffers) -> Any:
        data_for = header.get(Key.BUFFERS_FOR)
        if data_for is not None:  # buffers are raw data for one target, handed to f as frames
            frames, buffers = (buffers if data_for == self.engine_id else None), []
        try:
            f, args, kwargs = self.functions.load_call(content, buffers, header)
        except ImportError as exc:
            raise _describe_import_error(exc) from None
        ns = self.namespace
        f = bind_interactive(f, ns)
        args = [bind_interactive(_resolve(a, ns), ns) for a in args]
        kwargs = {k: bind_interactive(_resolve(v, ns), ns) for k, v in kwargs.items()}
        if data_for is not None:
            kwargs["frames"] = frames
        timeout = getattr(f, COLLECTIVE_ATTRIBUTE, _NOT_COLLECTIVE)
        if timeout is not _NOT_COLLECTIVE and timeout is not None:
            targets = wire.request_targets(header)
            engine_of = dict(zip(header.get(Key.RANKS, ()), targets))
            mpi_world.arrival_gate(getattr(f, "__name__", "collective"), timeout, task_id_for(header, targets[0]),
                                   engine_of)
        return f(*args, **kwargs)

"""Exceptions users see, named as ipyparallel users know them."""
from __future__ import annotations

import builtins


class MpihubError(Exception):
    """Base of every mpihub error."""


class TimeoutError(MpihubError, builtins.TimeoutError):
    """A wait ran out; the result stays retrievable later."""


class NoEnginesRegistered(MpihubError):
    """An operation needs engines and the controller has none."""


class EngineError(MpihubError):
    """The engine died or unregistered while the task was queued or running on it."""


class ControllerError(MpihubError):
    """A part of a split controller (its task scheduler or direct path) is gone, and
    the tasks it held with it."""


class BatchError(MpihubError):
    """The batch system refused a request, or a job of the cluster ended (cancelled,
    failed, out of walltime) before it did its part; the message names the job, its
    state and its log."""


class EngineRetired(EngineError):
    """The engine's batch job reached its walltime while the task was queued or running
    there; unlike an engine that died, this does not use up the task's ``retries``."""


class TaskAborted(MpihubError):
    """The task was aborted before it started."""


class ImpossibleDependency(MpihubError):
    """A dependency can never be met."""


class UnmetDependency(MpihubError):
    """Raised on an engine where a task's @require/@depend is not met; the controller
    then sends the task to another engine."""


class DependencyTimeout(MpihubError):
    """A dependency was not met within the task's timeout."""


class RemoteError(MpihubError):
    """An exception raised on an engine, with its name, value and traceback."""

    def __init__(self, ename: str, evalue: str, traceback: str = "", engine_info: dict | None = None):
        super().__init__(ename, evalue)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_info = engine_info or {}

    @property
    def engine_id(self) -> int | None:
        return self.engine_info.get("engine_id")

    def __str__(self) -> str:
        where = f"[engine {self.engine_id}] " if self.engine_id is not None else ""
        return f"{where}{self.ename}: {self.evalue}"

    def render_traceback(self) -> list[str]:
        return self.traceback.splitlines() if self.traceback else [str(self)]


class CompositeError(RemoteError):
    """Several engines raised; ``elist`` holds each error (a :class:`RemoteError`, or an
    :class:`EngineError` for an engine that died) in target order."""

    def __init__(self, message: str, elist: list[Exception]):
        first = elist[0]
        super().__init__(getattr(first, "ename", type(first).__name__), getattr(first, "evalue", str(first)),
                         getattr(first, "traceback", ""), getattr(first, "engine_info", {}))
        self.message = message
        self.elist = elist

    def __str__(self) -> str:
        lines = [self.message] + [f"  {e}" for e in self.elist]
        return "\n".join(lines)

    def raise_exception(self, index: int = 0):
        raise self.elist[index]

"""``view.executor``: a view as a :class:`concurrent.futures.Executor`.

Code written against the standard Executor interface (``submit``, ``map``,
``shutdown``, ``with``; ``concurrent.futures.wait`` and ``as_completed`` on the
futures) runs on engines unchanged. Each future follows one AsyncResult: it is done
when the reply is in, and its value is unpickled by whoever asks for it, as with
``ar.get()``, never on the client's receiving thread.
"""
from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable

from .asyncresult import AsyncResult


class TaskFuture(concurrent.futures.Future):
    """A Future over an AsyncResult. ``cancel()`` aborts the task where it has not
    started, but returns False: whether it did is known only from the result."""

    def __init__(self, ar: AsyncResult):
        super().__init__()
        self.async_result = ar
        self.set_running_or_notify_cancel()
        ar.add_done_callback(lambda _: self.set_result(None))

    def cancel(self) -> bool:
        self.async_result.abort()
        return False

    def result(self, timeout: float | None = None) -> Any:
        super().result(timeout)  # waits, with the standard TimeoutError
        return self.async_result.get(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        super().exception(timeout)
        try:
            self.async_result.get(0)
        except Exception as exc:  # noqa: BLE001 - the task's error is the answer
            return exc
        return None


class ViewExecutor(concurrent.futures.Executor):
    """Runs each call as one ``view.apply_async``: a task on one engine for a
    LoadBalancedView; on every target of a DirectView, whose result is then the list
    of the engines' results."""

    def __init__(self, view):
        self.view = view
        self._futures: set[TaskFuture] = set()
        self._lock = threading.Lock()
        self._shut = False

    def submit(self, fn: Callable, /, *args, **kwargs) -> TaskFuture:
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot submit to an executor that was shut down")
            future = TaskFuture(self.view.apply_async(fn, *args, **kwargs))
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._futures.discard(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; with ``wait``, return once every future is done; with
        ``cancel_futures``, abort the tasks that have not started."""
        with self._lock:
            self._shut = True
            pending = list(self._futures)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            concurrent.futures.wait(pending)

"""Which load-balanced tasks may run again after a failure, and where (pure bookkeeping).

A task sent with ``retries=n`` keeps its request here until it finishes for good. Each
time it raises, or its engine dies, it goes back to the scheduler with one retry fewer,
restricted to engines that have not failed it yet where any exist. A task whose
engine reached its batch job's end goes back without using up a retry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class _Retry:
    request: Any
    left: int
    only: frozenset[int] | None
    failed_on: set[int] = field(default_factory=set)


class RetryBook:
    def __init__(self):
        self._tasks: dict[str, _Retry] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def track(self, msg_id: str, request: Any, retries: int, only: Iterable[int] | None) -> None:
        if retries > 0:
            self._tasks[msg_id] = _Retry(request, retries, None if only is None else frozenset(only))

    def retry(self, msg_id: str, failed_on: int | None, engines: Iterable[int]) -> tuple[Any, frozenset[int]] | None:
        """After a failure on engine ``failed_on``: the request and the engines that may
        run it again, or None when it has no retries left (or no engine may run it)."""
        entry = self._tasks.get(msg_id)
        if entry is None:
            return None
        if failed_on is not None:
            entry.failed_on.add(failed_on)
        allowed = set(engines) if entry.only is None else entry.only & set(engines)
        if entry.left <= 0 or not allowed:
            del self._tasks[msg_id]
            return None
        entry.left -= 1
        return entry.request, frozenset(allowed - entry.failed_on or allowed)

    def requeue(self, msg_id: str, engines: Iterable[int]) -> tuple[Any, frozenset[int]] | None:
        """After its engine's batch job ended under it: the request and where it may run
        again, without using up a retry (None when it has none, or no engine may run it)."""
        entry = self._tasks.get(msg_id)
        if entry is None:
            return None
        allowed = set(engines) if entry.only is None else entry.only & set(engines)
        if not allowed:
            del self._tasks[msg_id]
            return None
        return entry.request, frozenset(allowed - entry.failed_on or allowed)

    def finished(self, msg_id: str) -> None:
        self._tasks.pop(msg_id, None)

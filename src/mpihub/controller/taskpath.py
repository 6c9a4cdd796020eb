"""The controller's load-balanced path: scheduling, dependencies, retries, and passing a
task on from an engine that does not meet its @require/@depend.

It decides where tasks go; the socket shell hands it requests and replies and gives it
two ways to act (send frames to an engine, fail a task with a made-up reply) and the
clock. The bookkeeping it drives (:mod:`.scheduler`, :mod:`.dependency_book`,
:mod:`.retries`) is pure.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from ..protocol import wire
from ..protocol.schema import Key
from .dependency_book import Condition, Decision, DependencyBook
from .hub import Hub
from .retries import RetryBook
from .scheduler import Scheduler

log = logging.getLogger("mpihub.controller")

#: ``fail(msg_id, engine_id, status, ename, evalue)``: answer for a task that will not run.
Fail = Callable[[str, "int | None", str, str, str], None]


class TaskPath:
    def __init__(self, hub: Hub, scheduler: Scheduler, signer: wire.Signer,
                 send: Callable[[int, list], None], fail: Fail, clock: Callable[[], float] = time.time,
                 outcome: Callable[[str], "tuple[str, int | None] | None"] | None = None):
        self.hub = hub
        self.clock = clock  # what dependency timeouts count from
        self.outcome = outcome or hub.outcome  # what a dependency finds (the Hub's memory, then the store)
        self.scheduler = scheduler
        self.signer = signer
        self.send = send
        self.fail = fail
        self.retries = RetryBook()
        self.deps = DependencyBook()
        self._waiting: dict[str, list] = {}  # requests queued in the scheduler
        self._held: dict[str, tuple[list, list | None]] = {}  # requests waiting on dependencies
        self._refused: dict[str, set[int]] = {}  # engines that did not meet a task's @require/@depend

    # -- from clients ---------------------------------------------------------------

    def check(self, msg: wire.Message) -> tuple[Condition | None, Condition | None]:
        """Refuse a malformed load-balanced request (ValueError/TypeError) before anything
        changes; returns its dependencies."""
        header = msg.header
        msg_id, only = header[Key.ID], header.get(Key.ONLY)
        retries, timeout = header.get(Key.RETRIES, 0), header.get(Key.DEPENDENCY_TIMEOUT)
        if not isinstance(msg_id, str) or msg_id in self.hub.tasks:
            raise ValueError(f"bad or duplicate task id {msg_id!r}")
        if only is not None and not (isinstance(only, list) and all(isinstance(t, int) for t in only)):
            raise TypeError("only must be a list of engine ids")
        if not isinstance(retries, int) or retries < 0:
            raise TypeError(f"re must be a non-negative int, not {retries!r}")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(f"to must be a positive number of seconds, not {timeout!r}")
        return Condition.from_header(header.get(Key.AFTER)), Condition.from_header(header.get(Key.FOLLOW))

    def submit(self, ident: bytes, msg: wire.Message) -> None:
        """A new load-balanced task (ValueError/TypeError for a malformed one)."""
        after, follow = self.check(msg)
        header = msg.header
        msg_id, only = header[Key.ID], header.get(Key.ONLY)
        retries, timeout = header.get(Key.RETRIES, 0), header.get(Key.DEPENDENCY_TIMEOUT)
        now = self.clock()
        self.hub.submit(msg_id, "task", ident, None, now, msg.frames, sum(len(f) for f in msg.frames))
        self.retries.track(msg_id, msg.frames, retries, only)
        self._admit(msg_id, msg.frames, only, after, follow, None if timeout is None else now + timeout)

    def restore(self, msg_id: str, msg: wire.Message) -> None:
        """Take back a task of the controller before a restart, whose record the Hub has
        again: queued anew if it had not gone to an engine, else awaiting that engine's
        return (its retries start afresh)."""
        header = msg.header
        only = header.get(Key.ONLY)
        self.retries.track(msg_id, msg.frames, header.get(Key.RETRIES, 0), only)
        if self.hub.tasks[msg_id].engine_id is None:
            timeout = header.get(Key.DEPENDENCY_TIMEOUT)
            self._admit(msg_id, msg.frames, only, Condition.from_header(header.get(Key.AFTER)),
                        Condition.from_header(header.get(Key.FOLLOW)),
                        None if timeout is None else self.clock() + timeout)

    def _admit(self, msg_id: str, frames: list, only: list | None, after: Condition | None,
               follow: Condition | None, deadline: float | None) -> None:
        """Queue a task, or hold it until its dependencies are decided."""
        decision = self.deps.decide(after, follow, self.outcome)
        if decision.state == "wait":
            self.deps.hold(msg_id, after, follow, deadline)
            self._held[msg_id] = (frames, only)
        else:
            self._run_when_decided(msg_id, decision, frames, only)

    def abort(self, msg_ids: list[str]) -> list[str]:
        """Take tasks that have not gone to an engine out of the path; returns them."""
        removed = self.scheduler.abort(msg_ids) + [m for m in msg_ids if self.deps.release(m)]
        for msg_id in removed:
            self._waiting.pop(msg_id, None)
            self._held.pop(msg_id, None)
        return removed

    # -- from engines -----------------------------------------------------------------

    def add_engine(self, engine_id: int, running: Iterable[str] = (), paused: bool = False) -> None:
        """An engine may take tasks (``paused``: not until it is added again); ``running``:
        those it has already, restored after a controller restart."""
        if engine_id in self.scheduler.paused and not paused:
            self._send_assigned(self.scheduler.resume(engine_id))
        else:
            self._send_assigned(self.scheduler.add_engine(engine_id, running, paused))

    def claim(self, msg_id: str, engine_id: int) -> bool:
        """A rejoining engine holds or answered a task that the restored store had as not
        yet sent (its assignment fell in the store's last commit window): take it out of
        the queue, or its dependency hold, as that engine's. False when it waits nowhere,
        or the engine is not one the scheduler knows (one back after it was lost)."""
        queued = msg_id in self._waiting
        if not (queued or msg_id in self._held) or not self.scheduler.take(msg_id, engine_id):
            return False
        if queued:
            del self._waiting[msg_id]
        else:
            self.deps.release(msg_id)
            del self._held[msg_id]
        self.hub.assign(msg_id, engine_id)
        return True

    def remove_engine(self, engine_id: int) -> list[str]:
        """Forget an engine; returns the queued tasks no other engine may run."""
        _, stranded = self.scheduler.remove_engine(engine_id)
        for msg_id in stranded:
            self._waiting.pop(msg_id, None)
        return stranded

    def reply(self, msg_id: str, engine_id: int, header: dict) -> bool:
        """An engine answered a load-balanced task. True when the task goes on (passed on,
        or retried) and the reply must not be delivered."""
        freed = self.scheduler.finished(msg_id)
        ename = header.get(Key.ENAME)
        going_on = header.get(Key.STATUS) == "error" and (
            (ename == "UnmetDependency" and self._pass_on(msg_id, engine_id))
            or self.retry(msg_id, engine_id, f"raised {ename}"))
        if not going_on:
            self.forget(msg_id)
        self._send_assigned(freed)
        return going_on

    def retry(self, msg_id: str, engine_id: int | None, why: str) -> bool:
        """Queue a failed task again if it has retries left."""
        return self._again(msg_id, self.retries.retry(msg_id, engine_id, self._working()),
                           f"{why} on engine {engine_id}; retrying")

    def requeue(self, msg_id: str, engine_id: int) -> bool:
        """Queue a task whose engine's batch job ended again, if it has retries (none is
        used up)."""
        return self._again(msg_id, self.retries.requeue(msg_id, self._working()),
                           f"lost with engine {engine_id} at the end of its job; running it again")

    def _working(self) -> list[int]:
        return [e for e, rec in self.hub.engines.items() if not rec.retired]

    def _again(self, msg_id: str, again, what: str) -> bool:
        if again is None:
            return False
        frames, allowed = again
        log.info("task %s %s on %s", msg_id, what, sorted(allowed))
        self.hub.requeue(msg_id)
        self._queue(msg_id, frames, allowed)
        return True

    # -- from anywhere ------------------------------------------------------------------

    def forget(self, msg_id: str) -> None:
        """A task is finished for good."""
        self.retries.finished(msg_id)
        self._refused.pop(msg_id, None)

    def finished(self, msg_id: str) -> None:
        """Any task (direct ones too) ended: release what waited for it."""
        for task, decision in self.deps.finished(msg_id, self.outcome):
            frames, only = self._held.pop(task)
            self._run_when_decided(task, decision, frames, only)

    def next_deadline(self) -> float | None:
        return self.deps.next_deadline()

    def expire(self) -> None:
        """Fail the held tasks whose dependency timeout has passed."""
        for msg_id in self.deps.expired(self.clock()):
            self._held.pop(msg_id, None)
            self.fail(msg_id, None, "error", "DependencyTimeout",
                      f"the dependencies of task {msg_id} were not met within its timeout")

    # -- internals ----------------------------------------------------------------------

    def _run_when_decided(self, msg_id: str, decision: Decision, frames: list, only: list | None) -> None:
        """Queue a task whose dependencies are met (where they allow), or fail it."""
        if decision.state == "impossible":
            return self.fail(msg_id, None, "error", "ImpossibleDependency",
                             f"task {msg_id} can never run: {decision.reason}")
        allowed = only
        if decision.engines is not None:
            allowed = [e for e in decision.engines if e in self.hub.engines and (only is None or e in only)]
            if not allowed:
                return self.fail(msg_id, None, "error", "ImpossibleDependency",
                                 f"task {msg_id} must follow tasks that ran on engines {sorted(decision.engines)}, "
                                 "which are gone or outside its view")
        self._queue(msg_id, frames, allowed)

    def _pass_on(self, msg_id: str, engine_id: int) -> bool:
        """Send a task an engine refused to one that has not refused it yet, or fail it as
        impossible when none is left."""
        frames = self.hub.request_frames(msg_id)
        if frames is None:
            return False  # released from the store: the engine's error stands
        refused = self._refused.setdefault(msg_id, set())
        refused.add(engine_id)
        only = wire.unpack(self.signer, frames).header.get(Key.ONLY)
        candidates = [e for e in (self.hub.engines if only is None else only)
                      if e in self.hub.engines and e not in refused]
        self.hub.requeue(msg_id)
        if not candidates:
            self.fail(msg_id, None, "error", "ImpossibleDependency",
                      f"no engine meets the dependencies of task {msg_id} (refused by engines {sorted(refused)})")
        else:
            self._queue(msg_id, frames, candidates)
        return True

    def _queue(self, msg_id: str, frames: list, only) -> None:
        self._waiting[msg_id] = frames
        try:
            assignments = self.scheduler.submit(msg_id, only)
        except LookupError as exc:
            del self._waiting[msg_id]
            return self.fail(msg_id, None, "error", "EngineError", str(exc))
        self._send_assigned(assignments)

    def _send_assigned(self, assignments: list[tuple[str, int]]) -> None:
        for msg_id, engine_id in assignments:
            frames = self._waiting.pop(msg_id)
            self.hub.assign(msg_id, engine_id)
            self.send(engine_id, frames)

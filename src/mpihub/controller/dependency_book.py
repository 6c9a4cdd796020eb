"""Load-balanced tasks held until their dependencies are met (pure bookkeeping).

A task may wait for others to finish (``after``: time) and run where others ran
(``follow``: location). Each is a condition over msg_ids: all of them or any, counting
a dependency as met when it succeeded (``success``) and/or failed (``failure``). A task
whose condition can no longer be met fails at once (ImpossibleDependency) and one past
its ``timeout`` fails with DependencyTimeout: nothing waits forever.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable

#: What the Hub says of a dependency: None if unknown, ``("pending", None)``, or
#: ``("ok" | "error" | ..., engine_id)`` once it finished.
Outcome = Callable[[str], "tuple[str, int | None] | None"]


@dataclass(frozen=True)
class Condition:
    ids: frozenset[str]
    all: bool = True
    success: bool = True
    failure: bool = False

    @classmethod
    def from_header(cls, spec) -> "Condition | None":
        """The condition a client sent (``{"ids": [...], "all": .., ...}``); ValueError if malformed."""
        if spec is None:
            return None
        ids = spec.get("ids") if isinstance(spec, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"a dependency needs a list of msg_ids, not {spec!r}")
        flags = [spec.get(name, default) for name, default in (("all", True), ("success", True), ("failure", False))]
        if not all(isinstance(flag, bool) for flag in flags):
            raise ValueError(f"all, success and failure must be booleans in {spec!r}")
        if not (flags[1] or flags[2]):
            raise ValueError("a dependency met by neither success nor failure can never be met")
        return cls(frozenset(ids), *flags)


@dataclass
class Decision:
    """``ready`` (with the engines allowed, None for any), ``wait``, or ``impossible``."""

    state: str
    engines: frozenset[int] | None = None
    reason: str = ""


def _judge(condition: Condition, outcome_of: Outcome, where: bool) -> Decision:
    met, unmet, waiting = [], [], 0
    for dep in condition.ids:
        outcome = outcome_of(dep)
        if outcome is None:
            unmet.append((dep, "is unknown to the Hub"))
        elif outcome[0] == "pending":
            waiting += 1
        elif (outcome[0] == "ok" and condition.success) or (outcome[0] != "ok" and condition.failure):
            met.append(outcome[1])
        else:
            unmet.append((dep, "succeeded" if outcome[0] == "ok" else f"ended with {outcome[0]}"))
    if condition.all and unmet or not condition.all and not met and not waiting and condition.ids:
        dep, why = unmet[0]
        return Decision("impossible", reason=f"dependency {dep} {why}, so the condition can never be met")
    if (waiting and condition.all) or (not met and waiting):
        return Decision("wait")
    if not where:
        return Decision("ready")
    engines = frozenset(e for e in met if e is not None)
    if condition.all and len(engines) > 1:
        return Decision("impossible", reason=f"it must follow tasks that ran on different engines {sorted(engines)}")
    return Decision("ready", engines)


class DependencyBook:
    """Held tasks and what they wait for."""

    def __init__(self):
        self._held: dict[str, tuple[Condition | None, Condition | None, float | None]] = {}
        self._dependents: dict[str, set[str]] = {}
        self._deadlines: list[tuple[float, str]] = []  # a heap; entries of released tasks linger

    def __len__(self) -> int:
        return len(self._held)

    def decide(self, after: Condition | None, follow: Condition | None, outcome_of: Outcome) -> Decision:
        """Whether a task with these conditions can run now, and where."""
        time_ok = _judge(after, outcome_of, where=False) if after else Decision("ready")
        place = _judge(follow, outcome_of, where=True) if follow else Decision("ready")
        for decision in (time_ok, place):
            if decision.state == "impossible":
                return decision
        if "wait" in (time_ok.state, place.state):
            return Decision("wait")
        return Decision("ready", place.engines)

    def hold(self, msg_id: str, after: Condition | None, follow: Condition | None, deadline: float | None) -> None:
        self._held[msg_id] = (after, follow, deadline)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, msg_id))
        for condition in (after, follow):
            for dep in condition.ids if condition else ():
                self._dependents.setdefault(dep, set()).add(msg_id)

    def finished(self, dep_id: str, outcome_of: Outcome) -> list[tuple[str, Decision]]:
        """A task ended: the held tasks that can now run, or never will."""
        decided = []
        for msg_id in sorted(self._dependents.pop(dep_id, ())):
            if msg_id not in self._held:
                continue
            after, follow, _ = self._held[msg_id]
            decision = self.decide(after, follow, outcome_of)
            if decision.state != "wait":
                self.release(msg_id)
                decided.append((msg_id, decision))
        return decided

    def expired(self, now: float) -> list[str]:
        """Held tasks past their deadline (released)."""
        late = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, msg_id = heapq.heappop(self._deadlines)
            if self.release(msg_id):
                late.append(msg_id)
        return late

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][1] not in self._held:
            heapq.heappop(self._deadlines)  # released meanwhile
        return self._deadlines[0][0] if self._deadlines else None

    def release(self, msg_id: str) -> bool:
        held = self._held.pop(msg_id, None)
        if held is None:
            return False
        for condition in held[:2]:
            for dep in condition.ids if condition else ():
                waiting = self._dependents.get(dep)
                if waiting is not None:
                    waiting.discard(msg_id)
                    if not waiting:
                        del self._dependents[dep]
        return True

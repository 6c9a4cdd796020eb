"""What becomes of an engine's tasks when it rejoins, retires or is lost: the plans of
:mod:`mpihub.controller.recovery`, on a real Hub and task path, without sockets.

Each case that tests/test_restart.py reaches end to end (a controller restart, a
network cut, a reply lost on the way) is here in milliseconds: the engine's report
(held, answered, kept) against what the controller had, and the plan that follows.
"""
import pytest

from mpihub.controller import recovery
from mpihub.controller.hub import Hub
from mpihub.controller.scheduler import LeastLoadScheduler
from mpihub.controller.taskpath import TaskPath
from mpihub.protocol import wire

pytestmark = pytest.mark.timeout(30)

SIGNER = wire.Signer("recovery")


class Cluster:
    """A Hub with engines 0 and 1 and a task path whose sends and failures are recorded,
    on a clock the test moves."""

    def __init__(self, store_limit: int = 1 << 20, engines: bool = True, hwm: int = 4):
        self.hub = Hub(store_limit)
        self.now = 100.0
        self.sent: list[tuple[int, str]] = []  # (engine, task) the task path sent
        self.failed: list[tuple[str, str]] = []  # (task, ename) the task path failed
        self.tasks = TaskPath(self.hub, LeastLoadScheduler(hwm), SIGNER, self._send, self._fail, lambda: self.now)
        for engine_id in (0, 1) if engines else ():
            self.hub.register_engine(f"uuid{engine_id}".encode(), engine_id, {}, 0.0)
            self.tasks.add_engine(engine_id)

    def _send(self, engine_id: int, frames: list) -> None:
        self.sent.append((engine_id, wire.unpack(SIGNER, frames).header["id"]))

    def _fail(self, msg_id, engine_id, status, ename, evalue) -> None:
        self.failed.append((msg_id, ename))
        self.hub.finish(msg_id, engine_id, {"st": status, "ename": ename}, [], 0, self.now)

    def direct(self, msg_id: str, engine_id: int, nbytes: int = 10) -> None:
        self.now += 1
        frames = wire.pack(SIGNER, {"t": "apply", "tg": [engine_id], "ids": [msg_id]})
        self.hub.submit(msg_id, "direct", b"client", engine_id, self.now, frames, nbytes)

    def balanced(self, msg_id: str, **header) -> int | None:
        """Submit a load-balanced task; returns the engine it went to."""
        self.now += 1
        self.sent.clear()
        self.tasks.submit(b"client", wire.unpack(SIGNER, wire.pack(SIGNER, {"t": "apply", "lb": True, "id": msg_id,
                                                                            **header})))
        return self.sent[-1][0] if self.sent else None


def report(**ids) -> dict:
    return {key: sorted(value) for key, value in ids.items()}


def test_a_task_the_engine_still_holds_is_left_to_it():
    c = Cluster()
    c.direct("d", 0)
    plan = recovery.rejoin(c.hub, c.tasks, 0, report(held={"d"}))
    assert plan.kept == ["d"] and plan.actions == [] and plan.answer() == {"skip": [], "replay": []}


def test_a_reply_the_engine_kept_is_asked_for_again():
    c = Cluster()
    c.direct("d", 0)
    plan = recovery.rejoin(c.hub, c.tasks, 0, report(answered={"d"}, kept={"d"}))
    assert plan.replay == ["d"] and plan.actions == []


def test_a_lost_reply_fails_a_direct_task_and_retries_a_balanced_one():
    c = Cluster()
    c.direct("d", 0)
    assert c.balanced("lb", re=1, only=[0, 1]) == 0
    plan = recovery.rejoin(c.hub, c.tasks, 0, report(answered={"d", "lb"}))
    assert plan.actions == [recovery.Fail("d", 0, "EngineError", "engine 0 ran task d, but its reply was lost with "
                                                                  "its connection to the controller")]
    assert plan.retried == ["lb"] and c.sent[-1] == (1, "lb")  # retried on the other engine
    assert "2 replies lost" in plan.summary()


def test_a_balanced_task_without_retries_fails_when_its_reply_is_lost():
    c = Cluster()
    c.balanced("lb")
    plan = recovery.rejoin(c.hub, c.tasks, 0, report(answered={"lb"}))
    assert plan.retried == [] and [(a.msg_id, a.ename) for a in plan.actions] == [("lb", "EngineError")]


def test_a_request_that_never_arrived_is_sent_again_in_submission_order():
    c = Cluster()
    for msg_id in ("first", "second", "third"):
        c.direct(msg_id, 0)
    plan = recovery.rejoin(c.hub, c.tasks, 0, report(held={"second"}))
    assert plan.actions == [recovery.Resend("first", 0), recovery.Resend("third", 0)]
    assert plan.kept == ["second"]


def test_a_request_too_large_to_keep_fails_instead_of_being_sent_again():
    c = Cluster(store_limit=200)  # 100 bytes of requests: the first is released for the second
    c.direct("big", 0, nbytes=150)
    c.direct("small", 0)
    plan = recovery.rejoin(c.hub, c.tasks, 0, report())
    assert plan.actions == [recovery.Fail("big", 0, "EngineError", "task big never reached engine 0, and its "
                                                                   "request was too large to keep"),
                            recovery.Resend("small", 0)]


def test_tasks_the_engine_holds_that_are_no_longer_its_own_are_skipped():
    c = Cluster()
    c.direct("mine", 0)
    plan = recovery.rejoin(c.hub, c.tasks, 0, report(held={"mine", "gone-elsewhere", "finished"}))
    assert plan.answer()["skip"] == ["finished", "gone-elsewhere"] and plan.kept == ["mine"]


def restarted() -> Cluster:
    """A cluster as a restored controller has it: engines 0 and 1 expected back (paused)."""
    c = Cluster(engines=False)
    for engine_id in (0, 1):
        c.hub.restore_engine(engine_id, f"uuid{engine_id}".encode(), {}, 0.0)
        c.tasks.add_engine(engine_id, paused=True)
    return c


def test_a_queued_task_the_engine_already_has_is_taken_back_not_run_twice():
    """The store's last commit window: the restored controller had the task as queued,
    but the engine holds it (or answered it). It becomes that engine's, and is not
    dispatched again."""
    c = restarted()
    for msg_id in ("held-there", "answered-there", "still-queued"):
        assert c.balanced(msg_id) is None  # every engine paused: queued
    c.hub.register_engine(b"uuid0", 0, {}, c.now)  # back
    plan = recovery.rejoin(c.hub, c.tasks, 0, report(held={"held-there"}, answered={"answered-there"},
                                                     kept={"answered-there"}))
    assert plan.claimed == ["answered-there", "held-there"]
    assert plan.kept == ["held-there"] and plan.replay == ["answered-there"] and plan.actions == []
    assert c.hub.engines[0].tasks == {"held-there", "answered-there"} and c.hub.unassigned == 1
    c.tasks.add_engine(0, c.hub.engines[0].tasks)  # resumed
    assert c.sent == [(0, "still-queued")]  # the claimed ones are not sent again


def test_a_queued_task_is_not_claimed_by_an_engine_back_after_it_was_lost():
    """An engine cut off and declared dead comes back under its id, holding a task that
    was queued again for a retry meanwhile: the scheduler no longer knows the engine, so
    the task stays queued for another, and the engine is told to skip it."""
    c = Cluster(hwm=1)
    assert c.balanced("lb", re=1) == 0
    assert c.balanced("busy") == 1
    assert recovery.lose(c.hub, c.tasks, 0, "died").failures == []  # retried: waits for engine 1
    c.hub.register_engine(b"uuid0", 0, {}, c.now)
    plan = recovery.rejoin(c.hub, c.tasks, 0, report(held={"lb"}))
    assert plan.claimed == [] and plan.answer()["skip"] == ["lb"]
    c.tasks.add_engine(0)
    assert c.tasks.reply("busy", 1, {"st": "ok"}) is False
    assert c.sent[-1] == (1, "lb")  # sent once, cleanly, where the retry may run


def test_a_lost_engine_fails_direct_work_retries_balanced_work_and_fails_what_it_stranded():
    c = Cluster(hwm=2)
    c.direct("d", 0)
    assert c.balanced("retry", re=1) == 0
    assert c.balanced("once", only=[0]) == 0
    assert c.balanced("stranded", only=[0]) is None  # engine 0 is full: it waits for engine 0
    loss = recovery.lose(c.hub, c.tasks, 0, "died")
    assert loss.unfinished == 4 and c.sent[-1] == (1, "retry")
    assert [(f.msg_id, f.engine_id, f.ename) for f in loss.failures] == [
        ("d", 0, "EngineError"), ("once", 0, "EngineError"), ("stranded", None, "EngineError")]
    assert loss.failures[-1].why == "engine 0 died; no other engine may run this task"
    assert recovery.lose(c.hub, c.tasks, 0, "died") == recovery.Loss()  # already gone


def test_a_lost_engines_balanced_task_goes_to_another_engine_while_it_has_retries():
    c = Cluster()
    assert c.balanced("retry", re=2, only=[0, 1]) == 0
    loss = recovery.lose(c.hub, c.tasks, 0, "died")
    assert loss.unfinished == 1 and loss.failures == [] and c.sent[-1] == (1, "retry")


def test_a_retired_engine_that_ends_requeues_balanced_work_without_using_a_retry():
    c = Cluster()
    c.direct("d", 0)
    assert c.balanced("lb", re=1) == 0
    assert recovery.retire(c.hub, c.tasks, 0) == [] and c.hub.engines[0].retired
    loss = recovery.lose(c.hub, c.tasks, 0, "ended")
    assert [(f.msg_id, f.ename) for f in loss.failures] == [("d", "EngineRetired")]
    assert c.sent[-1] == (1, "lb")
    assert c.tasks.retries.retry("lb", 1, [1]) is not None  # its one retry is still there


def test_retiring_fails_queued_work_that_only_the_retiring_engine_may_run():
    c = Cluster()
    for n in range(5):
        c.balanced(f"t{n}", only=[0])  # hwm 4: the fifth waits for engine 0
    failures = recovery.retire(c.hub, c.tasks, 0)
    assert [(f.msg_id, f.ename) for f in failures] == [("t4", "EngineRetired")]


def test_dependency_timeouts_count_on_the_clock_the_shell_passes_in():
    c = Cluster()
    c.direct("dep", 0)
    c.balanced("waits", after={"ids": ["dep"]}, to=5)
    assert c.tasks.next_deadline() == c.now + 5
    c.now += 4
    c.tasks.expire()
    assert c.failed == []
    c.now += 2
    c.tasks.expire()
    assert c.failed == [("waits", "DependencyTimeout")]

"""What becomes of an engine's tasks when it comes back, retires or is lost (pure).

Each function takes the event and the pure state it concerns (the :class:`~.hub.Hub`'s
records, the :class:`~.taskpath.TaskPath`'s queues) and returns a plan: the requests to
send again and the tasks to fail, in the order they were submitted. The socket shell
(:class:`~.router.Router`) carries the plan out. Retries and requeues of load-balanced
tasks happen inside the task path as it decides them, as for any failed task.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import wire
from ..protocol.schema import Key
from .hub import Hub
from .taskpath import TaskPath


@dataclass(frozen=True)
class Fail:
    """Answer for a task that will not run (or whose reply is gone) with this error."""

    msg_id: str
    engine_id: int | None
    ename: str
    why: str


@dataclass(frozen=True)
class Resend:
    """Send a task's request to its engine again (it never received it)."""

    msg_id: str
    engine_id: int


@dataclass
class Rejoin:
    """An engine back under its id: what the controller does, and what it tells the engine."""

    claimed: list[str] = field(default_factory=list)  # load-balanced tasks taken back from the queue
    kept: list[str] = field(default_factory=list)  # its tasks it still holds, to be answered as usual
    replay: list[str] = field(default_factory=list)  # replies it kept, asked of it again
    skip: list[str] = field(default_factory=list)  # tasks it holds that are no longer its own
    retried: list[str] = field(default_factory=list)  # replies lost, tasks queued again
    actions: list[Resend | Fail] = field(default_factory=list)

    def answer(self) -> dict[str, list[str]]:
        return {Key.SKIP: self.skip, Key.REPLAY: self.replay}

    def summary(self) -> str:
        resent = sum(isinstance(a, Resend) for a in self.actions)
        lost = len(self.retried) + sum(a.ename == "EngineError" and "reply was lost" in a.why
                                       for a in self.actions if isinstance(a, Fail))
        return (f"{len(self.kept)} of its tasks queued there, {resent} sent again, {len(self.replay)} replies asked "
                f"again, {lost} replies lost, {len(self.skip)} no longer its own, {len(self.claimed)} taken back "
                "from the queue")


def rejoin(hub: Hub, tasks: TaskPath | None, engine_id: int, report: dict) -> Rejoin:
    """Settle each unfinished task of an engine back under its id (after a controller
    restart or a network cut) by what it reports: ``held`` (queued or running there),
    ``answered`` (lately), ``kept`` (replies it can send again). One it holds will be
    answered; one whose reply was lost with the old connection is asked of it again when
    kept, else retried or failed; one it never received is sent again. A load-balanced
    task it has that the store still had as queued is taken back as its own first (its
    dispatch fell in the store's last commit window), so that none runs twice."""
    held, answered, kept = (wire.task_ids(report.get(k)) for k in (Key.HELD, Key.ANSWERED, Key.KEPT))
    record = hub.engines[engine_id]
    plan = Rejoin()
    for msg_id in sorted((held | answered) - record.tasks):
        task = hub.tasks.get(msg_id)
        if (tasks and task is not None and task.queue == "task" and task.engine_id is None
                and tasks.claim(msg_id, engine_id)):
            plan.claimed.append(msg_id)
    mine = record.queue | record.tasks
    plan.kept = sorted(mine & held)
    for msg_id in sorted(mine - held, key=lambda m: hub.tasks[m].submitted):
        if msg_id in kept:
            plan.replay.append(msg_id)
        elif msg_id in answered:
            lost = {"st": "error", "ename": "ReplyLost"}
            if hub.tasks[msg_id].queue == "task" and tasks and tasks.reply(msg_id, engine_id, lost):
                plan.retried.append(msg_id)
            else:
                plan.actions.append(Fail(msg_id, engine_id, "EngineError", f"engine {engine_id} ran task {msg_id}, "
                                         "but its reply was lost with its connection to the controller"))
        elif hub.request_frames(msg_id) is None:
            plan.actions.append(Fail(msg_id, engine_id, "EngineError", f"task {msg_id} never reached engine "
                                     f"{engine_id}, and its request was too large to keep"))
        else:
            plan.actions.append(Resend(msg_id, engine_id))
    plan.skip = sorted(held - mine)
    return plan


def retire(hub: Hub, tasks: TaskPath | None, engine_id: int) -> list[Fail]:
    """Near its job's end an engine takes no more load-balanced tasks: those that only it
    may run fail with EngineRetired. Direct requests still reach it."""
    hub.engines[engine_id].retired = True
    stranded = tasks.remove_engine(engine_id) if tasks else []
    return [Fail(msg_id, None, "EngineRetired", f"engine {engine_id} retired before its batch job's end; "
                 f"no other engine may run task {msg_id}") for msg_id in stranded]


@dataclass
class Loss:
    """An engine that died or left: how many of its tasks were unfinished, and which fail."""

    unfinished: int = 0
    failures: list[Fail] = field(default_factory=list)


def lose(hub: Hub, tasks: TaskPath | None, engine_id: int, why: str) -> Loss:
    """Forget an engine that died or left: each task it had is retried (a load-balanced
    one with retries left; at its batch job's end without using one up) or fails; a
    queued task that no other engine may run fails too."""
    record, lost = hub.remove_engine(engine_id)
    if record is None:
        return Loss()
    stranded = tasks.remove_engine(engine_id) if tasks else []
    loss = Loss(len(lost) + len(stranded))
    for task in lost:
        lb = task.queue == "task" and tasks is not None
        if record.retired:  # its job's walltime: not the task's fault, no retry used up
            if not (lb and tasks.requeue(task.msg_id, engine_id)):
                loss.failures.append(Fail(task.msg_id, engine_id, "EngineRetired", f"engine {engine_id} {why} at "
                                          f"the end of its batch job, before task {task.msg_id} finished"))
        elif not (lb and tasks.retry(task.msg_id, engine_id, why)):
            loss.failures.append(Fail(task.msg_id, engine_id, "EngineError",
                                      f"engine {engine_id} {why} before task {task.msg_id} finished"))
    loss.failures += [Fail(msg_id, None, "EngineError", f"engine {engine_id} {why}; no other engine may run this task")
                      for msg_id in stranded]
    return loss

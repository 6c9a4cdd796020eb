"""The records the Hub keeps and the task store writes: one engine, one task.

Their own module, so that the Hub (:mod:`.hub`) and the durable store (:mod:`.taskdb`)
share them without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

TASK_FIELDS = (
    "msg_id", "queue", "engine_id", "client", "submitted", "started", "completed", "received",
    "status", "stdout", "stderr", "ename", "resubmitted",
)


@dataclass
class EngineRecord:
    id: int
    uuid: bytes
    info: dict
    registered: float
    queue: set[str] = field(default_factory=set)  # direct tasks sent, not yet replied
    tasks: set[str] = field(default_factory=set)  # load-balanced tasks assigned, not yet replied
    completed: int = 0
    retired: bool = False  # near its batch job's end: no more load-balanced tasks
    rejoining: bool = False  # restored after a controller restart; has not registered again yet

    def describe(self) -> dict:
        return {"id": self.id, "uuid": self.uuid.hex(), "registered": self.registered, **self.info}


class TaskRecord:
    """What the Hub knows of one task; its payloads are in the stores under its msg_id.
    Kept lean: a busy Hub holds hundreds of thousands of these."""

    __slots__ = tuple(f for f in TASK_FIELDS if f != "client") + ("client_ident", "watchers", "targets", "fetched",
                                                                   "evicted")

    def __init__(self, msg_id: str, queue: str, client_ident: bytes, submitted: float, engine_id: int | None):
        self.msg_id = msg_id
        self.queue = queue
        self.client_ident = client_ident
        self.submitted = submitted
        self.engine_id = engine_id
        self.started = self.completed = self.received = None
        self.status = "pending"
        self.stdout = self.stderr = ""
        self.ename = None
        self.resubmitted = None
        self.watchers: tuple[bytes, ...] = ()  # other clients waiting for the reply
        self.targets = None
        self.fetched = False  # a client has the result
        self.evicted = False  # the result was dropped for the store's size limit

    @property
    def client(self) -> str:
        return self.client_ident.hex()

    def as_dict(self, keys: Iterable[str] | None = None) -> dict:
        return {key: getattr(self, key) for key in (keys or TASK_FIELDS)}

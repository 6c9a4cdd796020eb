"""What a controller process knows of a task: the Hub's memory first, then the durable store.

The :class:`~.hub.Hub` is pure: it holds live tasks and a bounded cache of finished
ones, and tells the store (``--db sqlite``) every event, but never reads it. Reads that
may reach past its memory (a dependency on a task finished long ago, ``get_result``,
``resubmit``, ``db_query``, ``purge``) come here. The store's writer commits in batches
a few milliseconds apart; a read of the store waits for it only while it is behind, and
dependencies on tasks that finished lately are decided from memory without reading it.
"""
from __future__ import annotations

from typing import Iterable

from .hub import Hub, compile_query, record_keys
from .records import TASK_FIELDS


class TaskLookup:
    def __init__(self, hub: Hub):
        self.hub = hub
        self.db = hub.db

    def outcome(self, msg_id: str) -> tuple[str, int | None] | None:
        """What a dependency on a task finds: ``("pending", None)``, ``(status,
        engine_id)`` once it finished, None if unknown. Memory and the Hub's recent
        outcomes answer for every task that finished lately, so a burst of dependent
        tasks never reads the store."""
        found = self.hub.outcome(msg_id)
        if found is not None or self.db is None:
            return found
        return self.db.outcome(msg_id)

    def stored_reply(self, msg_id: str) -> tuple[str, list | None]:
        """``(state, frames)`` of a task's reply (see :meth:`.Hub.stored_reply`), from the
        store when memory has let it go."""
        state, frames = self.hub.stored_reply(msg_id)
        if self.db is None or state in ("stored", "pending"):
            return state, frames
        return self.db.payload(msg_id, "reply")

    def stored_request(self, msg_id: str) -> tuple[str, list | None]:
        """``(state, frames)`` of a task's request, as :meth:`stored_reply`."""
        state, frames = self.hub.stored_request(msg_id)
        if self.db is None or state == "stored":
            return state, frames
        return self.db.payload(msg_id, "request")

    def query(self, query: dict, keys: Iterable[str] | None = None) -> list[dict]:
        """Task records matching a Mongo-style query: live ones from memory, finished ones
        from the store when there is one (it has them all), in submission order."""
        if self.db is None:
            return self.hub.query(query, keys)
        keys = record_keys(keys) or TASK_FIELDS
        tests = compile_query(query)
        live = [rec for rec in self.hub.tasks.values() if rec.completed is None and all(test(rec) for test in tests)]
        stored = [rec for rec in self.db.finished_records(query) if all(test(rec) for test in tests)]
        return [{key: getattr(rec, key) for key in keys} for rec in sorted([*live, *stored], key=lambda r: r.submitted)]

    def purge(self, msg_ids: Iterable[str] | None, engine_ids: Iterable[int] | None) -> list[str]:
        """Forget finished tasks in memory and in the store: the given ids, those of the
        given engines, or all; returns them."""
        stored = self.db.finished_ids(msg_ids, engine_ids) if self.db else ()
        return self.hub.purge(msg_ids, engine_ids, stored)

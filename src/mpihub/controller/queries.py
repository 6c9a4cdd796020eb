"""Every query a client may put to the controller, each defined once.

A query is a conversation (a generator): it reads its arguments from the client's
header, may ask the request paths (yield an :class:`Ask`: an op for every path, or for
some), and combines what they answer into its result. What one path answers to each op,
from its own records, is defined here too (:data:`ANSWERS`). The one-process controller
has one Router holding both paths, so it answers each Ask itself, at once
(:func:`answer_here`); a split controller's Hub sends each Ask to its path processes and
resumes the conversation once every path has answered (:mod:`.split_hub`). Both layouts
therefore answer from the same code. Queries on the engine table alone (``signal``,
``shutdown``) ask no path.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator, Protocol

from ..protocol import wire
from ..protocol.schema import CONTROL_SIGNAL, Key, Msg
from . import merge

if TYPE_CHECKING:
    from .registry import Registry
    from .router import Router

log = logging.getLogger("mpihub.controller")

#: What a query raises for arguments (or a path's answer) that do not fit: its message
#: becomes the client's error. Anything else is a bug, logged in full.
REFUSED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class UnknownQuery(LookupError):
    """A query op nobody answers."""


@dataclass(frozen=True)
class Ask:
    """A question for the request paths: ``op`` with ``args``, for the paths named in
    ``kinds`` (None: every path), with frames in ``buffers``."""

    op: str
    args: dict = field(default_factory=dict)
    kinds: tuple[str, ...] | None = None
    buffers: tuple = ()


@dataclass(frozen=True)
class Answer:
    """One path's answer to an Ask."""

    result: Any
    buffers: list


Conversation = Generator[Ask, "list[Answer]", Any]


class Desk(Protocol):
    """What a query may use besides the paths: the engine table's part, and a way to
    stop the controller once the reply is out."""

    registry: "Registry"

    def stop(self) -> None: ...


# -- the queries ------------------------------------------------------------------------


def _ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise TypeError(f"ids must be a list of task ids, not {value!r}")
    return value


def queue_status(desk: Desk, ident: bytes, header: dict) -> Conversation:
    answers = yield Ask("queue_status", {Key.ENGINE_IDS: header.get(Key.ENGINE_IDS),
                                         Key.VERBOSE: bool(header.get(Key.VERBOSE))})
    return merge.queue_status([a.result for a in answers])


def db_query(desk: Desk, ident: bytes, header: dict) -> Conversation:
    answers = yield Ask("db_query", {Key.RECORD_QUERY: header[Key.RECORD_QUERY],
                                     Key.RECORD_KEYS: header.get(Key.RECORD_KEYS)})
    return merge.records([a.result for a in answers])


def purge(desk: Desk, ident: bytes, header: dict) -> Conversation:
    answers = yield Ask("purge", {Key.IDS: header.get(Key.IDS), Key.ENGINE_IDS: header.get(Key.ENGINE_IDS)})
    return merge.joined([a.result for a in answers])


def result(desk: Desk, ident: bytes, header: dict) -> Conversation:
    """Stored replies go to the client at once, pending ones when they come; the result
    reports the rest by state (see :meth:`.Hub.stored_reply`)."""
    ids = _ids(header[Key.IDS])
    answers = yield Ask("result", {Key.IDS: ids, Key.WHO: ident})
    return merge.result_outcome([a.result for a in answers], ids)


def abort(desk: Desk, ident: bytes, header: dict) -> Conversation:
    answers = yield Ask("abort", {Key.IDS: _ids(header[Key.IDS])})
    desk.registry.interrupt(merge.by_engine([a.result["running"] for a in answers]), bool(header.get(Key.INTERRUPT)))
    return merge.joined([a.result["removed"] for a in answers])


def resubmit(desk: Desk, ident: bytes, header: dict) -> Conversation:
    """Run stored requests again as new load-balanced tasks with the given ids: fetch
    them from the paths that have them, hand them to the task path, then note the new
    ids in the old records."""
    renames = resubmit_renames(header)
    found: dict[str, list] = {}
    for answer in (yield Ask("requests", {Key.RENAMES: renames})):
        found.update(merge.frames_by_id(answer.result, answer.buffers))
    missing = [m for m in renames if m not in found]
    if missing:
        raise KeyError(f"no stored request for {missing}")
    runs = [[renames[old], len(found[old])] for old in renames]
    yield Ask("resubmit", {Key.RUNS: runs, Key.WHO: ident}, ("task",), tuple(f for old in renames for f in found[old]))
    yield Ask("resubmitted", {Key.RENAMES: renames})
    return list(renames.values())


def signal(desk: Desk, ident: bytes, header: dict) -> list[int]:
    """Send a signal to engines' processes (SIGINT interrupts the task running there)."""
    sig = header[Key.SIGNAL]
    if not isinstance(sig, int) or isinstance(sig, bool):
        raise TypeError(f"sig must be a signal number, not {sig!r}")
    registry = desk.registry
    chosen = registry.chosen(header.get(Key.ENGINE_IDS))
    for engine_id in chosen:
        registry.control(registry.hub.engines[engine_id].uuid,
                         {Key.TYPE: Msg.CONTROL, Key.OP: CONTROL_SIGNAL, Key.SIGNAL: sig})
    return chosen


def shutdown(desk: Desk, ident: bytes, header: dict) -> list[int]:
    """Stop engines, and with ``hub`` the controller too once the reply is out."""
    registry = desk.registry
    chosen = registry.chosen(header.get(Key.ENGINE_IDS))
    for engine_id in chosen:
        registry.shutdown_engine(registry.hub.engines[engine_id].uuid)
        registry.engine_gone(engine_id, "was shut down")
    if header.get(Key.STOP_HUB):
        desk.stop()
    return chosen


def stats(desk: Desk, ident: bytes, header: dict) -> Conversation:
    """What the dashboard shows of the paths (the controller's own question)."""
    answers = yield Ask("stats")
    return [a.result for a in answers]


#: The queries clients may ask, by ``op``.
QUERIES: dict[str, Callable[[Desk, bytes, dict], Any]] = {
    "queue_status": queue_status, "db_query": db_query, "purge": purge, "result": result, "abort": abort,
    "resubmit": resubmit, "signal": signal, "shutdown": shutdown,
}


def resubmit_renames(header: dict) -> dict[str, str]:
    """``{old_id: new_id}`` from a resubmit query (ValueError for a malformed one)."""
    old_ids, new_ids = header[Key.IDS], header[Key.NEW_IDS]
    if not isinstance(old_ids, list) or not isinstance(new_ids, list) or len(old_ids) != len(new_ids):
        raise ValueError("ids and new_ids must be lists of one length")
    if not all(isinstance(m, str) for m in (*old_ids, *new_ids)):
        raise TypeError("ids and new_ids must hold task ids (strings)")
    renames = dict(zip(old_ids, new_ids))
    if len(renames) != len(old_ids) or len(set(new_ids)) != len(new_ids):
        raise ValueError("ids and new_ids must not repeat")
    return renames


# -- what one path answers --------------------------------------------------------------


def _answer_result(router: "Router", args: dict, buffers: list) -> tuple[dict, list]:
    """Send this path's stored replies to ``who`` now, watch pending ones for it, and
    report the rest by state."""
    who, ids = args[Key.WHO], _ids(args[Key.IDS])
    hub = router.hub
    outcome: dict[str, list] = {state: [] for state in merge.RESULT_STATES}
    for msg_id in ids:
        state, frames = router.lookup.stored_reply(msg_id)
        if state == "pending":
            record = hub.tasks.get(msg_id)
            if record is not None and who != record.client_ident and who not in record.watchers:
                record.watchers += (who,)
        elif state == "stored" and Key.BULK_TOKEN in wire.unpack(router.signer, frames).header:
            state = "direct"
        elif state == "stored":
            router.clients.deliver(who, frames)
            hub.fetched(msg_id)
            continue
        outcome[state].append(msg_id)
    return outcome, []


def _answer_requests(router: "Router", args: dict, buffers: list) -> tuple[list, list]:
    """The stored requests of the tasks to run again (those this path has), as
    ``[[old_id, frame count], ...]`` and the frames; KeyError/ValueError naming those it
    has and cannot run again. Nothing changes yet."""
    renames = args[Key.RENAMES]
    stored = {m: router.lookup.stored_request(m) for m in renames}
    missing = [f"{m} ({state})" for m, (state, _) in stored.items() if state not in ("stored", "unknown")]
    if missing:
        raise KeyError(f"no stored request for {', '.join(missing)}")
    found = {m: frames for m, (state, frames) in stored.items() if state == "stored"}
    headers = {m: wire.unpack(router.signer, frames).header for m, frames in found.items()}
    direct = [m for m, header in headers.items() if Key.BULK_TOKEN in header]
    if direct:
        raise ValueError(f"the data of {direct} went straight to the engine and is not stored; submit them anew")
    collective = [m for m, header in headers.items() if Key.RANKS in header]
    if collective:
        raise ValueError(f"{collective} ran on a whole MPI world together; one engine cannot run it again alone")
    return [[old, len(frames)] for old, frames in found.items()], [f for frames in found.values() for f in frames]


def _answer_resubmit(router: "Router", args: dict, buffers: list) -> tuple[None, list]:
    """Queue stored requests as new load-balanced tasks under new ids; all or none:
    every one is checked before the first is queued."""
    if router.tasks is None:
        raise ValueError("only the task path runs tasks again")
    runs = list(merge.frames_by_id(args[Key.RUNS], buffers).items())
    new_ids = [new for new, _ in runs]
    if len(set(new_ids)) != len(new_ids):
        raise ValueError(f"new ids must be distinct, not {new_ids!r}")
    taken = [new for new in new_ids if new in router.hub.tasks]
    if taken:
        raise ValueError(f"ids already in use: {taken}")
    requests = []
    for new, frames in runs:
        stored = wire.unpack(router.signer, frames)
        request = {k: v for k, v in stored.header.items() if k not in (Key.TARGETS, Key.TARGET_RUNS, Key.IDS,
                                                                        Key.ID_BASE, Key.ONLY, Key.VERSION,
                                                                        Key.BUFFER_COUNT, Key.RESULT_BACK)}
        request.update({Key.ID: new, Key.LOAD_BALANCED: True})
        requests.append(wire.unpack(router.signer, wire.pack(router.signer, request, stored.content, stored.buffers)))
        router.tasks.check(requests[-1])
    for request in requests:
        router.tasks.submit(args[Key.WHO], request)
    return None, []


def _answer_resubmitted(router: "Router", args: dict, buffers: list) -> tuple[None, list]:
    renames = args[Key.RENAMES]
    if not isinstance(renames, dict) or not all(isinstance(v, str) for v in renames.values()):
        raise TypeError(f"renames must map task ids to task ids, not {renames!r}")
    for old, new in renames.items():
        router.hub.mark_resubmitted(old, new)
    return None, []


def _answer_abort(router: "Router", args: dict, buffers: list) -> tuple[dict, list]:
    removed, running = router.abort(_ids(args[Key.IDS]))
    return {"removed": removed, "running": running}, []


def _answer_stats(router: "Router", args: dict, buffers: list) -> tuple[dict, list]:
    if router.stats is None:
        raise ValueError("this controller serves no dashboard")
    return {"status": router.hub.queue_status(), "stats": router.stats.part(time.time())}, []


#: What one path answers to each op it may be asked: ``(result, frames)``.
ANSWERS: dict[str, Callable[["Router", dict, list], tuple[Any, list]]] = {
    "queue_status": lambda router, args, buffers: (router.hub.queue_status(args[Key.ENGINE_IDS],
                                                                           args[Key.VERBOSE]), []),
    "db_query": lambda router, args, buffers: (router.lookup.query(args[Key.RECORD_QUERY], args[Key.RECORD_KEYS]), []),
    "purge": lambda router, args, buffers: (router.lookup.purge(args[Key.IDS], args[Key.ENGINE_IDS]), []),
    "result": _answer_result,
    "abort": _answer_abort,
    "requests": _answer_requests,
    "resubmit": _answer_resubmit,
    "resubmitted": _answer_resubmitted,
    "stats": _answer_stats,
}


# -- running a conversation -------------------------------------------------------------


def start(desk: Desk, ident: bytes, header: dict) -> Any:
    """Begin the query ``header`` names: a conversation, or (asking no path) its result."""
    op = header.get(Key.OP)
    query = QUERIES.get(op) if isinstance(op, str) else None
    if query is None:
        raise UnknownQuery(f"unknown query {op!r}")
    return query(desk, ident, header)


def advance(conversation: Any, answers: list[Answer] | None = None) -> tuple[Ask | None, Any]:
    """The conversation's next Ask, or ``(None, result)`` once it has its result."""
    if not inspect.isgenerator(conversation):
        return None, conversation
    try:
        return conversation.send(answers), None
    except StopIteration as done:
        return None, done.value


def refusal(op: object, exc: Exception, where: str = "the controller") -> str:
    """The client's error for a query that raised ``exc``; a bug is logged in full."""
    if isinstance(exc, UnknownQuery):
        return str(exc)
    if isinstance(exc, REFUSED):
        return f"{type(exc).__name__}: {exc}"
    log.error("query %r failed", op, exc_info=exc)
    return f"internal error in {where}: {type(exc).__name__}: {exc}"


def answer(router: "Router", op: str, args: dict, buffers: list) -> tuple[Any, list]:
    """One path's answer to ``op`` (ValueError for an op no path answers)."""
    if op not in ANSWERS:
        raise ValueError(f"unknown question {op!r}")
    return ANSWERS[op](router, args, buffers)


def answer_here(router: "Router", desk: Desk, ident: bytes, header: dict) -> dict:
    """The reply to a query in the one-process controller, whose Router holds both
    paths: each Ask answered at once by that Router."""
    reply = {Key.TYPE: Msg.QUERY_REPLY, Key.REQUEST_ID: header.get(Key.REQUEST_ID), Key.OK: True}
    try:
        conversation = start(desk, ident, header)
        ask, found = advance(conversation)
        while ask is not None:
            ask, found = advance(conversation, [Answer(*answer(router, ask.op, ask.args, list(ask.buffers)))])
        reply[Key.RESULT] = found
    except Exception as exc:  # noqa: BLE001 - a bug here must answer, not leave the client waiting
        reply.update({Key.OK: False, Key.ERROR: refusal(header.get(Key.OP), exc)})
    return reply

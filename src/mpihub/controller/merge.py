"""How a split controller's Hub combines its paths' answers to one query (pure).

Each path (direct, task) keeps the records of the tasks it routes; the Hub asks every
path and merges what they say into the answer the single-process controller would give.
"""
from __future__ import annotations

from typing import Any


def queue_status(parts: list[dict]) -> dict:
    """Per engine: direct ``queue``, load-balanced ``tasks`` and ``completed``, summed
    (or, verbose, the id lists joined); ``unassigned`` summed."""
    merged: dict[Any, Any] = {"unassigned": 0}
    for part in parts:
        for key, value in part.items():
            if key == "unassigned":
                merged["unassigned"] += value
            elif key not in merged:
                merged[key] = dict(value)
            else:
                for field, amount in value.items():
                    merged[key][field] = merged[key][field] + amount
    for key, value in merged.items():
        if key != "unassigned":
            for field, amount in value.items():
                if isinstance(amount, list):
                    value[field] = sorted(amount)
    return dict(sorted(((k, v) for k, v in merged.items() if k != "unassigned"), key=lambda kv: kv[0]),
                unassigned=merged["unassigned"])


def records(parts: list[list[dict]]) -> list[dict]:
    """Task records from every path, in submission order."""
    joined = [rec for part in parts for rec in part]
    if all("submitted" in rec for rec in joined):
        joined.sort(key=lambda rec: rec["submitted"])
    return joined


def joined(parts: list[list]) -> list:
    """Lists from every path, one after the other (purged ids, aborted ids)."""
    return [item for part in parts for item in part]


#: How a ``result`` query reports each id it could not answer with the reply itself.
RESULT_STATES = ("pending", "unknown", "purged", "direct", "evicted", "unstored")


def result_outcome(parts: list[dict], ids: list[str]) -> dict[str, list]:
    """A ``result`` query's outcome: an id is unknown only when no path knows it (a path
    that sent the stored reply lists the id nowhere)."""
    where: dict[str, str] = {}
    unknown_to = dict.fromkeys(ids, 0)
    for part in parts:
        for msg_id in part.get("unknown", ()):
            unknown_to[msg_id] = unknown_to.get(msg_id, 0) + 1
        for state in RESULT_STATES:
            for msg_id in part.get(state, ()) if state != "unknown" else ():
                where[msg_id] = state
    outcome: dict[str, list] = {state: [] for state in RESULT_STATES}
    for msg_id in ids:
        if msg_id in where:
            outcome[where[msg_id]].append(msg_id)
        elif unknown_to[msg_id] == len(parts):
            outcome["unknown"].append(msg_id)
    return outcome


def by_engine(parts: list[dict]) -> dict[int, list[str]]:
    """``{engine_id: [msg_id, ...]}`` maps from every path, joined per engine."""
    merged: dict[int, list[str]] = {}
    for part in parts:
        for engine_id, ids in part.items():
            merged.setdefault(int(engine_id), []).extend(ids)
    return merged


def frames_by_id(counts: Any, buffers: list) -> dict[str, list]:
    """``{id: frames}`` from ``[[id, count], ...]`` and the frames one after the other
    (the stored requests a path sends); ValueError if they do not add up."""
    if not isinstance(counts, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], int)
            and not isinstance(pair[1], bool) and pair[1] >= 0 for pair in counts):
        raise ValueError(f"expected [[id, frame count], ...], not {counts!r}")
    if sum(count for _, count in counts) != len(buffers) or len({msg_id for msg_id, _ in counts}) != len(counts):
        raise ValueError(f"{len(buffers)} frames do not match {counts!r}")
    found, start = {}, 0
    for msg_id, count in counts:
        found[msg_id] = list(buffers[start:start + count])
        start += count
    return found

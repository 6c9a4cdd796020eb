"""``LoadBalancedView.imap``: results of a map whose input is read only as needed.

At most ``max_outstanding`` tasks are in flight: one more is sent as each result comes
back, so an endless generator works and memory stays flat. Leaving the loop early (or
``close()``) aborts the tasks still queued.
"""
from __future__ import annotations

import itertools
import queue
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from .asyncresult import AsyncResult


def chunks(seqs: tuple[Iterable, ...], size: int) -> Iterator[tuple[list, ...]]:
    """Successive ``size``-long slices of the zipped inputs, as one list per input."""
    rows = zip(*seqs)
    while True:
        block = list(itertools.islice(rows, size))
        if not block:
            return
        yield tuple(list(column) for column in zip(*block))


def lazy_map(submit: Callable[[tuple], AsyncResult], abort: Callable[[list[str]], None],
             seqs: tuple[Iterable, ...], chunksize: int, ordered: bool, max_outstanding: int) -> Iterator[Any]:
    """Yield ``f``'s results; ``submit(chunk)`` sends one task for a chunk of arguments."""
    pending = chunks(seqs, chunksize)
    in_flight: deque[AsyncResult] = deque()
    finished: queue.SimpleQueue[AsyncResult] = queue.SimpleQueue()

    def fill() -> None:
        while len(in_flight) < max_outstanding:
            chunk = next(pending, None)
            if chunk is None:
                return
            ar = submit(chunk)
            if not ordered:
                ar.add_done_callback(finished.put)
            in_flight.append(ar)

    try:
        fill()
        while in_flight:
            if ordered:
                ar = in_flight.popleft()
                ar.wait()
            else:
                ar = finished.get()
                in_flight.remove(ar)
            fill()  # keep the engines busy while this chunk is handed out
            yield from ar.get()
    finally:
        if in_flight:
            abort([msg_id for ar in in_flight for msg_id in ar.msg_ids])

"""How an engine asks for its id when hundreds start at once.

A registration storm (a batch job starting a thousand engines in the same second) can
keep the controller busy for a while; an engine that hears nothing asks again, after
a pause that doubles each time and is jittered, so that the retries of many engines
spread out instead of arriving together. The controller answers a repeated request of
the same engine (same uuid) with the same id, so a retry never makes a duplicate.
"""
from __future__ import annotations

import random
from typing import Iterator

from ..protocol.schema import Key

#: Seconds before the first retry, and the longest pause between two.
FIRST_PAUSE = 1.0
LONGEST_PAUSE = 8.0


def pauses(first: float = FIRST_PAUSE, longest: float = LONGEST_PAUSE) -> Iterator[float]:
    """Seconds to wait for an answer before each next try: growing, jittered."""
    pause = first
    while True:
        yield pause * random.uniform(0.75, 1.25)
        pause = min(2 * pause, longest)


def refusal(header: dict) -> str | None:
    """Why the controller refused a registration (its answer says), or None."""
    error = header.get(Key.ERROR)
    return error if isinstance(error, str) else None

"""``@mpihub.collective``: mark a function that calls MPI collectives on every rank.

Such a function only makes sense on a DirectView over a whole MPI world: the client
refuses any other view at once, and on the engines no rank enters the function until
every rank has started it, so a rank that never comes is named in an error after
``timeout`` seconds instead of leaving the others hanging in a collective.
"""
from __future__ import annotations

from typing import Callable

#: Attribute a collective function carries: its timeout in seconds (None: wait forever).
COLLECTIVE_ATTRIBUTE = "__mpihub_collective__"
DEFAULT_TIMEOUT = 60.0


def collective(f: Callable | None = None, *, timeout: float | None = DEFAULT_TIMEOUT):
    """Decorator, bare or with ``timeout=`` seconds for every rank to arrive."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")

    def mark(function: Callable) -> Callable:
        if not callable(function):
            raise TypeError(f"@collective needs a function, not {type(function).__name__}")
        setattr(function, COLLECTIVE_ATTRIBUTE, timeout)
        return function

    return mark if f is None else mark(f)


def is_collective(f: Callable) -> bool:
    return hasattr(f, COLLECTIVE_ATTRIBUTE)

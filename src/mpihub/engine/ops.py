"""Small functions that views apply on engines for push, pull, map and friends.

They are imported on the engine by reference (a few bytes on the wire) and work on the
namespace of the engine's request runner.
"""
from __future__ import annotations

import builtins
import operator
from typing import Any, Callable

import numpy as np

_namespace: dict = {}


def bind_namespace(namespace: dict) -> None:
    global _namespace
    _namespace = namespace


def namespace() -> dict:
    """The engine's user namespace."""
    return _namespace


def push(values: dict) -> None:
    _namespace.update(values)


def pull(names: str | list[str]) -> Any:
    def one(name: str) -> Any:
        try:
            return _namespace[name]
        except KeyError:
            raise NameError(f"name {name!r} is not defined on this engine") from None

    if isinstance(names, str):
        return one(names)
    return [one(name) for name in names]


def push_flat(key: str, part: list) -> None:
    """``scatter(flatten=True)``: a one-element part is stored as the element itself."""
    _namespace[key] = part[0] if len(part) == 1 else part


def map_chunk(f: Callable, *seqs) -> list:
    return list(map(f, *seqs))


def execute_code(code: str) -> None:
    exec(compile(code, "<mpihub-execute>", "exec"), _namespace)


#: What ``reduce``/``allreduce`` ops named by a string do, on the client (ZMQ path) and on
#: engines (MPI path) alike, so both give the same result.
REDUCERS: dict[str, Callable] = {
    "sum": operator.add,
    "prod": operator.mul,
    "min": lambda a, b: np.minimum(a, b) if isinstance(a, np.ndarray) else builtins.min(a, b),
    "max": lambda a, b: np.maximum(a, b) if isinstance(a, np.ndarray) else builtins.max(a, b),
    "land": lambda a, b: np.logical_and(a, b) if isinstance(a, np.ndarray) else (a and b),
    "lor": lambda a, b: np.logical_or(a, b) if isinstance(a, np.ndarray) else (a or b),
    "band": operator.and_,
    "bor": operator.or_,
}


def reducer(op: str | Callable) -> Callable:
    if callable(op):
        return op
    try:
        return REDUCERS[op.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown reduce op {op!r}; use one of {sorted(REDUCERS)} or a callable") from None

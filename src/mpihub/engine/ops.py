"""Small functions that views apply on engines for push, pull, map and friends.

They are imported on the engine by reference (a few bytes on the wire) and work on the
namespace of the engine's executor.
"""
from __future__ import annotations

from typing import Any, Callable

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

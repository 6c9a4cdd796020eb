"""Dependencies of load-balanced tasks: run ``after`` other tasks, or ``follow`` them to
the engine where they ran.

``lbview.set_flags(after=ar)``, ``follow=[ar1, ar2]``, or a :class:`Dependency` for
"any" instead of "all", or to count failures as met. ``timeout=`` seconds bounds the
wait (DependencyTimeout); a condition that can no longer be met fails at once
(ImpossibleDependency).
"""
from __future__ import annotations

from typing import Any, Iterable


def msg_ids_of(dependencies: Any) -> list[str]:
    """msg_ids from an AsyncResult, a msg_id, a Dependency, or an iterable of those."""
    if dependencies is None:
        return []
    if isinstance(dependencies, str):
        return [dependencies]
    if isinstance(dependencies, Dependency):
        return list(dependencies.msg_ids)
    if hasattr(dependencies, "msg_ids"):
        return list(dependencies.msg_ids)
    if isinstance(dependencies, Iterable):
        return [m for item in dependencies for m in msg_ids_of(item)]
    raise TypeError(f"a dependency is an AsyncResult, a msg_id or a list of them, not {type(dependencies).__name__}")


class Dependency:
    """A condition over other tasks: ``all`` of them (or any), met when they succeeded
    (``success``) and/or failed (``failure``)."""

    def __init__(self, dependencies: Any, all: bool = True, success: bool = True, failure: bool = False):
        if not (success or failure):
            raise ValueError("a dependency met by neither success nor failure can never be met")
        self.msg_ids = msg_ids_of(dependencies)
        self.all = bool(all)
        self.success = bool(success)
        self.failure = bool(failure)

    def __repr__(self) -> str:
        return (f"Dependency({self.msg_ids!r}, all={self.all}, success={self.success}, "
                f"failure={self.failure})")

    def as_header(self) -> dict:
        return {"ids": self.msg_ids, "all": self.all, "success": self.success, "failure": self.failure}


def as_header(value: Any) -> dict | None:
    """What a view sends for an ``after``/``follow`` flag (None: no dependency)."""
    dependency = value if isinstance(value, Dependency) else Dependency(value)
    return dependency.as_header() if dependency.msg_ids else None


class _Dependent:
    """A function that runs only where its dependencies are met; else it raises
    :class:`~mpihub.errors.UnmetDependency` and the controller sends it elsewhere."""

    def __init__(self, f, modules: tuple[str, ...] = (), pushed: dict | None = None, checks: tuple = ()):
        self.f = f
        self.modules = modules
        self.pushed = pushed or {}
        self.checks = checks
        self.__name__ = getattr(f, "__name__", "function")
        self.__doc__ = getattr(f, "__doc__", None)

    def __call__(self, *args, **kwargs):
        import importlib

        from .engine import ops
        from .engine.runner import bind_interactive
        from .errors import UnmetDependency

        namespace = ops.namespace()
        for name in self.modules:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise UnmetDependency(f"module {name!r} cannot be imported here ({exc})") from None
            top = name.split(".")[0]
            namespace[top] = importlib.import_module(top)
        for name, value in self.pushed.items():
            namespace[name] = bind_interactive(value, namespace)
        for check, check_args, check_kwargs in self.checks:
            if not bind_interactive(check, namespace)(*check_args, **check_kwargs):
                raise UnmetDependency(f"{getattr(check, '__name__', 'a check')} is not met here")
        return bind_interactive(self.f, namespace)(*args, **kwargs)


def _extend(f, **more) -> _Dependent:
    if isinstance(f, _Dependent):
        return _Dependent(f.f, f.modules + more.get("modules", ()), {**f.pushed, **more.get("pushed", {})},
                          f.checks + more.get("checks", ()))
    return _Dependent(f, **more)


def require(*requirements, **named):
    """Decorator: the task needs these modules (names, imported into the engine namespace)
    and objects (functions, pushed there under their names, or ``name=value``). An
    engine that cannot import a module passes the task on to another."""
    modules = tuple(r for r in requirements if isinstance(r, str))
    pushed = {getattr(r, "__name__", None): r for r in requirements if not isinstance(r, str)}
    if None in pushed:
        raise TypeError("require takes module names, named functions, or name=value")
    pushed.update(named)
    return lambda f: _extend(f, modules=modules, pushed=pushed)


def depend(check, *args, **kwargs):
    """Decorator: the task runs only on an engine where ``check(*args, **kwargs)`` is true
    (checked there, just before); elsewhere it is passed on to another engine."""
    if not callable(check):
        raise TypeError(f"depend needs a callable check, not {type(check).__name__}")
    return lambda f: _extend(f, checks=((check, args, kwargs),))

"""The functions of recent calls, loaded once per engine.

A map, or a call on all engines issued again and again, sends an engine the same
function bytes each time; loading a cloudpickled function (its code object, globals
and defaults) costs more than the rest of a small task. An engine keeps the functions
it loaded by their bytes, as dask's workers do, but only those that carry no state a
call could change: a function whose closure, attributes, defaults or shipped globals
hold something a call might alter (a list, say) is loaded afresh every time, as
without a cache, so that reuse cannot be seen. (A function from ``__main__`` is bound
to the engine's namespace anew at every call; see :func:`~.runner.bind_interactive`.)
"""
from __future__ import annotations

import sys
import types
from collections import OrderedDict
from typing import Any, Callable

from ..protocol import serialize
from ..protocol.schema import Key

#: Functions kept per engine, and the largest pickle kept (bigger ones are loaded each time).
FUNCTIONS_KEPT = 64
MAX_KEPT_BYTES = 64 << 10
#: Default values that no call can change.
_IMMUTABLE = frozenset({type(None), bool, int, float, complex, str, bytes})
#: What a shipped global of a ``__main__`` function may be, for the function to be kept:
#: values no call can change, and names the engine binds anew (modules, functions, classes).
_KEEPABLE_GLOBALS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def reusable(f: Any) -> bool:
    """Whether ``f`` may serve later calls as loaded: a plain function with no closure,
    attributes or mutable defaults, whose globals are its module's, or are rebound at
    each call (``__main__``) and hold nothing a call could change; or a built-in
    function of a module."""
    if isinstance(f, types.BuiltinFunctionType):
        return isinstance(f.__self__, types.ModuleType)
    if type(f) is not types.FunctionType or f.__closure__ or f.__dict__ or f.__kwdefaults__:
        return False
    if not all(type(value) in _IMMUTABLE for value in f.__defaults__ or ()):
        return False
    if f.__module__ == "__main__":
        return all(type(value) in _IMMUTABLE or isinstance(value, _KEEPABLE_GLOBALS)
                   for name, value in f.__globals__.items() if name != "__builtins__")
    module = sys.modules.get(f.__module__)
    return module is not None and f.__globals__ is vars(module)


class FunctionCache:
    """Loads calls (:func:`~mpihub.protocol.serialize.serialize_call`'s content),
    reusing the :func:`reusable` functions of the last :data:`FUNCTIONS_KEPT`."""

    def __init__(self) -> None:
        self._loaded: OrderedDict[bytes, Callable] = OrderedDict()

    def load_call(self, content, buffers: list, header: dict) -> tuple[Callable, tuple, dict]:
        split, function_buffers = header[Key.FUNCTION_BYTES], header[Key.FUNCTION_BUFFERS]
        if function_buffers or not isinstance(split, int) or split > MAX_KEPT_BYTES:
            return serialize.deserialize_call(content, buffers, header)
        view = memoryview(content)
        key = bytes(view[:split])
        f = self._loaded.get(key)
        if f is None:
            f = serialize.deserialize(key)
            if reusable(f):
                self._loaded[key] = f
                if len(self._loaded) > FUNCTIONS_KEPT:
                    self._loaded.popitem(last=False)
        else:
            self._loaded.move_to_end(key)
        args, kwargs = serialize.deserialize(view[split:], buffers)
        return f, args, kwargs

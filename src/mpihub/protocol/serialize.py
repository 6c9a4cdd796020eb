"""Python objects to a protocol-5 pickle plus out-of-band buffers, and back.

Functions, lambdas and closures go through cloudpickle. Contiguous buffers of at least
``config.ZERO_COPY_THRESHOLD`` bytes (numpy arrays anywhere inside the object) leave the
pickle as separate buffers, which travel as their own zero-copy ZMQ frames. On receipt
they become writable without a copy where the frame allows it.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Sequence

import cloudpickle
import numpy as np

from .. import config
from .schema import Key


class Reference:
    """A name to be looked up in the engine's namespace when a call runs there."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"Reference needs a Python identifier, not {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Reference({self.name!r})"

    def __reduce__(self):
        return (Reference, (self.name,))


def interactive(f: Callable) -> Callable:
    """Run ``f`` on the engine with the engine's namespace as its globals.

    Functions defined in ``__main__`` behave this way already; this gives a function
    defined in a module the same behaviour (it is then shipped by value).
    """
    f.__module__ = "__main__"
    return f


#: Types whose pickle is the same with or without cloudpickle, and which hold no buffer
#: to send apart: plain ``pickle`` does them without cloudpickle's per-call set-up.
PLAIN_TYPES = frozenset({type(None), bool, int, float, complex, str, bytes})


def serialize(obj: Any) -> tuple[bytes, list]:
    """Pickle ``obj``; large contiguous buffers come back separately, uncopied."""
    if type(obj) in PLAIN_TYPES:
        return pickle.dumps(obj, protocol=5), []
    buffers: list = []
    threshold = config.ZERO_COPY_THRESHOLD

    def keep_out_of_band(pickle_buffer: pickle.PickleBuffer) -> bool:
        raw = pickle_buffer.raw()
        if raw.nbytes < threshold:
            return True
        buffers.append(raw)
        return False

    data = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_out_of_band)
    return data, buffers


class _WritableFrame:
    """Exposes a received frame's memory as writable; the frame stays alive with it.

    A received ZMQ message owns its memory and nothing else reads it, so writing to it
    is safe; pyzmq only marks the view read-only by convention.
    """

    def __init__(self, frame):
        self.frame = frame
        view = np.frombuffer(frame.buffer, dtype=np.uint8)
        self.__array_interface__ = {
            "data": (view.ctypes.data, False),
            "shape": (view.size,),
            "typestr": "|u1",
            "version": 3,
        }


def writable(frame) -> memoryview:
    """A writable view of a received buffer, zero-copy for large zmq frames."""
    buffer = getattr(frame, "buffer", None)
    if buffer is None:
        view = memoryview(frame)
        return view if not view.readonly else memoryview(bytearray(view))
    if len(buffer) < config.ZERO_COPY_THRESHOLD:
        return memoryview(bytearray(buffer))
    return memoryview(np.asarray(_WritableFrame(frame)))


def deserialize(data, buffers: Sequence = ()) -> Any:
    """Inverse of :func:`serialize`; received buffers become writable."""
    return pickle.loads(data, buffers=[writable(b) for b in buffers])


def serialize_call(f_payload: tuple[bytes, list], args: tuple, kwargs: dict) -> tuple[bytes, list, dict]:
    """Content, buffers and header fields of a call of a pre-serialized function.

    The function is serialized once per map and reused for every task of it; its
    bytes lead the content, and ``fl``/``fb`` in the header say where they end.
    """
    f_bytes, f_buffers = f_payload
    args_bytes, arg_buffers = serialize((args, kwargs))
    fields = {Key.FUNCTION_BYTES: len(f_bytes), Key.FUNCTION_BUFFERS: len(f_buffers)}
    return f_bytes + args_bytes, [*f_buffers, *arg_buffers], fields


def deserialize_call(content, buffers: Sequence, header: dict) -> tuple[Callable, tuple, dict]:
    """Inverse of :func:`serialize_call`."""
    view = memoryview(content)
    split, n_f = header[Key.FUNCTION_BYTES], header[Key.FUNCTION_BUFFERS]
    f = deserialize(view[:split], buffers[:n_f])
    args, kwargs = deserialize(view[split:], buffers[n_f:])
    return f, args, kwargs

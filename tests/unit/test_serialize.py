"""Pickle-5 serialization: zero-copy buffers, writable arrays, functions by value."""
import pickle

import numpy as np
import pytest
import zmq

from mpihub import Reference, config, interactive
from mpihub.protocol import serialize


def over_zmq(data: bytes, buffers: list) -> tuple[bytes, list]:
    """Send through a real socket pair, as the engines receive them (zmq Frames)."""
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    port = a.bind_to_random_port("tcp://127.0.0.1")
    b.connect(f"tcp://127.0.0.1:{port}")
    a.send_multipart([data, *buffers], copy=False)
    frames = b.recv_multipart(copy=False)
    a.close()
    b.close()
    return frames[0].bytes, frames[1:]


def test_nested_arrays_travel_out_of_band_without_copies():
    big = np.arange(1_000_000, dtype=np.float64)
    obj = {"a": [big, {"b": big[::1]}], "small": np.arange(3)}
    data, buffers = serialize.serialize(obj)
    assert len(buffers) == 2
    assert len(data) < 10_000  # the 8 MB stayed out of the pickle
    assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.float64), big)


def test_received_arrays_are_writable_and_equal():
    arr = np.random.rand(300, 300)
    data, buffers = serialize.serialize({"x": arr, "l": [arr.T.copy()]})
    out = serialize.deserialize(*over_zmq(data, buffers))
    assert np.array_equal(out["x"], arr) and np.array_equal(out["l"][0], arr.T)
    out["x"][0, 0] = -1.0  # writable without a copy
    assert out["x"].flags.writeable and out["x"][0, 0] == -1.0


def test_small_buffers_stay_in_band():
    data, buffers = serialize.serialize(np.arange(10))
    assert buffers == []
    assert np.array_equal(serialize.deserialize(data), np.arange(10))


def test_lambdas_and_closures_serialize():
    k = 7
    data, buffers = serialize.serialize((lambda x: x + k, [lambda: k]))
    f, (g,) = serialize.deserialize(data, buffers)
    assert f(1) == 8 and g() == 7


def test_call_payload_round_trip():
    f_payload = serialize.serialize(lambda a, b=0: a + b)
    content, buffers, extra = serialize.serialize_call(f_payload, (np.ones(100_000),), {"b": 2})
    f, args, kwargs = serialize.deserialize_call(content, buffers, extra)
    assert np.all(f(*args, **kwargs) == 3)


def test_reference_and_interactive():
    assert pickle.loads(pickle.dumps(Reference("A"))).name == "A"
    with pytest.raises(ValueError):
        Reference("not a name")

    def f():
        return 1

    assert interactive(f).__module__ == "__main__"


def test_threshold_is_configurable(monkeypatch):
    monkeypatch.setattr(config, "ZERO_COPY_THRESHOLD", 16)
    _, buffers = serialize.serialize(np.arange(10))
    assert len(buffers) == 1

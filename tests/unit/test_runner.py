"""The runner: a task aborted as it starts is answered aborted and never runs (the
abort may come on the heartbeat thread after the engine last looked); the functions
of calls are loaded once when no call can tell."""
import types

import pytest

from mpihub.engine.function_cache import FUNCTIONS_KEPT, FunctionCache, reusable
from mpihub.engine.runner import Runner
from mpihub.protocol import serialize
from mpihub.protocol.schema import Key, Msg

pytestmark = pytest.mark.timeout(30)


def request(f, *args):
    content, buffers, fields = serialize.serialize_call(serialize.serialize(f), args, {})
    return {Key.TYPE: Msg.APPLY, **fields}, content, buffers


def from_main(f):
    """``f`` as a function of the user's script: shipped by value, bound to the namespace."""
    f.__module__ = "__main__"
    return f


def test_a_task_aborted_as_it_starts_does_not_run():
    runner = Runner(0)
    header, content, buffers = request(lambda: 1 / 0)  # an error, had it run
    runner.aborted.add("t1")
    fields, data, out = runner.run(header, content, buffers, "t1")
    assert fields[Key.STATUS] == "aborted" and fields[Key.ENAME] == "TaskAborted" and data == b"" and out == []
    assert runner.aborted == set() and runner.running is None
    fields, _, _ = runner.run(header, content, buffers, "t2")
    assert fields[Key.STATUS] == "error" and fields[Key.ENAME] == "ZeroDivisionError"


# -- functions loaded once -------------------------------------------------------------

def test_a_stateless_function_is_loaded_once_and_a_stateful_one_every_time():
    cache = FunctionCache()
    header, content, buffers = request(from_main(lambda x=1: x))
    first, _, _ = cache.load_call(content, buffers, header)
    assert cache.load_call(content, buffers, header)[0] is first
    acc: list = []
    header, content, buffers = request(from_main(lambda: acc.append(1) or len(acc)))  # a closure: state of its own
    assert cache.load_call(content, buffers, header)[0] is not cache.load_call(content, buffers, header)[0]


def collect(x, seen=[]):  # noqa: B006 - the mutable default is the point
    seen.append(x)
    return len(seen)


def tagged():
    return 1


tagged.calls = 0


def shipped(shipped_globals: dict):
    """A function of the user's script as an engine loads it, with the globals shipped beside it."""
    f = types.FunctionType(compile("lambda: 1", "<script>", "eval").co_consts[0], shipped_globals)
    return from_main(f)


@pytest.mark.parametrize("f, expected", [
    (shipped({"K": 3, "math": types, "helper": reusable, "__name__": "__main__"}), True),
    (shipped({"data": [1]}), False),  # a global a call could change: loaded afresh each time
    (types.FunctionType((lambda: 1).__code__, {}), False), (reusable, True), (collect, False), (tagged, False),
    (len, True), (str.upper, False), (lambda *, k=1: k, False), (Runner, False),
])
def test_only_functions_without_state_are_reusable(f, expected):
    assert reusable(f) is expected


def test_a_mutable_default_starts_afresh_at_every_call_as_without_a_cache():
    runner = Runner(0)
    collect.__module__ = "__main__"
    try:
        header, content, buffers = request(collect, "x")
    finally:
        collect.__module__ = __name__
    for _ in range(3):
        fields, data, _ = runner.run(header, content, buffers, "t")
        assert fields[Key.STATUS] == "ok" and serialize.deserialize(data) == 1


def test_the_cache_keeps_the_latest_functions_only():
    cache = FunctionCache()
    for n in range(FUNCTIONS_KEPT + 5):
        header, content, buffers = request(from_main(eval(f"lambda: {n}")))
        f, _, _ = cache.load_call(content, buffers, header)
        assert f() == n
    assert len(cache._loaded) == FUNCTIONS_KEPT


@pytest.mark.parametrize("value", [None, True, 7, 2**80, 1.5, 2j, "text", b"\x00bytes", [1, "a"], {"k": (1, 2)}])
def test_plain_values_round_trip(value):
    data, buffers = serialize.serialize(value)
    assert buffers == [] and serialize.deserialize(data) == value

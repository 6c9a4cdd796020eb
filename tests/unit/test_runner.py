"""The runner: a task aborted as it starts is answered aborted and never runs (the
abort may come on the heartbeat thread after the engine last looked)."""
import pytest

from mpihub.engine.runner import Runner
from mpihub.protocol import serialize
from mpihub.protocol.schema import Key, Msg

pytestmark = pytest.mark.timeout(30)


def request(f):
    content, buffers, fields = serialize.serialize_call(serialize.serialize(f), (), {})
    return {Key.TYPE: Msg.APPLY, **fields}, content, buffers


def test_a_task_aborted_as_it_starts_does_not_run():
    runner = Runner(0)
    header, content, buffers = request(lambda: 1 / 0)  # an error, had it run
    runner.aborted.add("t1")
    fields, data, out = runner.run(header, content, buffers, "t1")
    assert fields[Key.STATUS] == "aborted" and fields[Key.ENAME] == "TaskAborted" and data == b"" and out == []
    assert runner.aborted == set() and runner.running is None
    fields, _, _ = runner.run(header, content, buffers, "t2")
    assert fields[Key.STATUS] == "error" and fields[Key.ENAME] == "ZeroDivisionError"

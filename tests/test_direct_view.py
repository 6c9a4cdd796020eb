"""DirectView end to end on a real controller and two real engines."""
import os
import time

import numpy as np
import pytest

import mpihub
from mpihub import Reference

pytestmark = [pytest.mark.timeout(60), pytest.mark.layouts("one", "split")]


def test_ids_and_views(rc):
    assert rc.ids == [0, 1]
    assert rc[:].targets == [0, 1]
    assert rc[0].targets == 0 and rc[[1, 0]].targets == [1, 0] and rc[1:].targets == [1]
    with pytest.raises(IndexError):
        rc[7]
    with pytest.raises(TypeError):
        rc["x"]


def test_a_long_queue_behind_a_slow_task_loses_nothing(rc):
    """More requests queued for one engine than ZMQ's default high-water marks hold (a
    ROUTER drops what passes them, silently): every one arrives."""
    import operator

    view = rc[rc.ids[0]]
    slow = view.apply_async(time.sleep, 1.5)
    queued = [view.apply_async(operator.neg, i) for i in range(40_000)]
    assert rc.wait([slow, *queued], timeout=50), f"{sum(not ar.ready() for ar in queued)} of 40000 never came back"
    assert [ar.get() for ar in queued] == [-i for i in range(40_000)]


def test_push_pull_and_item_access(rc):
    dview = rc[:]
    dview.push({"a": 5, "b": [1, 2]}, block=True)
    assert dview.pull("a", block=True) == [5, 5]
    assert dview.pull(["a", "b"], block=True) == [[5, [1, 2]], [5, [1, 2]]]
    assert rc[0].pull("a", block=True) == 5
    dview["c"] = 3
    assert dview["c"] == [3, 3]
    dview.update({"d": 4})
    dview.wait()
    assert dview.get("d") == [4, 4]
    with pytest.raises(mpihub.CompositeError) as info:
        dview.pull("undefined_name", block=True)
    assert {e.ename for e in info.value.elist} == {"NameError"}


def test_apply_spellings_and_block_flag(rc):
    dview = rc[:]
    assert dview.apply_sync(lambda x, y=1: x + y, 1, y=2) == [3, 3]
    ar = dview.apply_async(os.getpid)
    assert isinstance(ar, mpihub.AsyncResult)
    assert len(set(ar.get(timeout=10))) == 2
    assert isinstance(dview.apply(lambda: 1), mpihub.AsyncResult)  # block defaults to False
    with dview.temp_flags(block=True):
        assert dview.apply(lambda: 2) == [2, 2]
    assert dview.block is False
    dview.set_flags(block=True)
    try:
        assert dview.apply(lambda: 3) == [3, 3]
    finally:
        dview.set_flags(block=False)
    with pytest.raises(KeyError):
        dview.set_flags(nonsense=1)
    with pytest.raises(TypeError):
        dview.apply(42)


def test_interactive_functions_see_the_engine_namespace(rc):
    # Functions in a test module are not interactive; @interactive makes them so,
    # exactly as defining them in __main__ would (see test_main_script_functions).
    dview = rc[:]
    dview.push({"pushed": 10}, block=True)
    names = dview.apply_sync(mpihub.interactive(lambda: globals().keys()))
    assert all("pushed" in n for n in names)

    @mpihub.interactive
    def uses_pushed(x):
        return x + pushed  # noqa: F821 - resolves on the engine

    assert dview.apply_sync(uses_pushed, 1) == [11, 11]

    @mpihub.interactive
    def sets_global():
        global made_remotely
        made_remotely = 42

    dview.apply_sync(sets_global)
    assert dview.pull("made_remotely", block=True) == [42, 42]


def test_a_function_sent_again_behaves_as_sent_afresh(rc):
    """Engines keep the functions they loaded (by their bytes) only where no call can
    tell: a changed function runs as changed, and a mutable default starts afresh."""
    dview = rc[:]

    def make(offset):
        return mpihub.interactive(eval(f"lambda x: x + {offset}"))

    for offset in (1, 1, 2, 1):
        assert dview.apply_sync(make(offset), 10) == [10 + offset] * 2

    @mpihub.interactive
    def count(seen=[]):  # noqa: B006 - its state must not outlive a call
        seen.append(1)
        return len(seen)

    assert [dview.apply_sync(count) for _ in range(3)] == [[1, 1]] * 3


MAIN_SCRIPT = """
import sys, mpihub
rc = mpihub.Client(sys.argv[1])
dview = rc[:]
dview.push({"pushed_from_script": 1}, block=True)
local_offset = 5

def script_helper(x):
    return x + local_offset

def uses_namespace(x):
    return script_helper(x) + pushed_from_script

keys = dview.apply_sync(lambda: globals().keys())
assert all("pushed_from_script" in k for k in keys), keys
assert dview.apply_sync(uses_namespace, 1) == [7, 7]
rc.close()
print("script ok")
"""


def test_main_script_functions(cluster, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "interactive_script.py"
    script.write_text(MAIN_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(cluster.cluster.client_file)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "script ok" in out.stdout


module_helper_offset = 100


def module_helper(x):
    return x + module_helper_offset


def test_interactive_helpers_and_globals_travel(rc):
    # module_helper and its offset live in this module (not __main__): shipped by value
    # only when marked interactive; the engine's own names win over shipped ones.
    f = mpihub.interactive(lambda x: module_helper(x))
    assert rc[0].apply_sync(mpihub.interactive(module_helper), 1) == 101
    assert rc[0].apply_sync(f, 2) == 102


def test_module_not_importable_names_module_and_fix(rc, tmp_path, monkeypatch):
    module = tmp_path / "only_on_client_mod.py"
    module.write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_client_mod

    with pytest.raises(mpihub.RemoteError) as info:
        rc[0].apply_sync(only_on_client_mod.f)
    assert "only_on_client_mod" in info.value.evalue
    assert "register_pickle_by_value" in info.value.evalue


def test_reference_resolves_on_engine(rc):
    A = np.random.rand(20, 20)
    B = np.random.rand(20, 20)
    rc[:].push({"A": A}, block=True)
    lbview = rc.load_balanced_view()
    assert np.allclose(lbview.apply_sync(np.dot, Reference("A"), B), A @ B)
    assert np.allclose(rc[1].apply_sync(lambda x, y: x @ y, B, y=Reference("A")), B @ A)
    with pytest.raises(mpihub.RemoteError) as info:
        rc[0].apply_sync(len, Reference("missing_name"))
    assert info.value.ename == "NameError"


def test_execute_and_run(rc, tmp_path):
    dview = rc[:]
    assert dview.execute("e = 2 * 21", block=True) == [None, None]
    assert dview.pull("e", block=True) == [42, 42]
    assert dview.execute("e + 1", silent=False, block=True) == [43, 43]
    assert dview.execute("positional = 1", [0], True) == [None]  # (code, targets, block) as in ipyparallel
    script = tmp_path / "script.py"
    script.write_text("from_script = 'yes'\n")
    dview.run(script, block=True)
    assert dview.pull("from_script", block=True) == ["yes", "yes"]
    with pytest.raises(mpihub.CompositeError) as info:
        dview.execute("1/0", block=True)
    assert [e.engine_id for e in info.value.elist] == [0, 1]
    assert all("ZeroDivisionError" in e.traceback for e in info.value.elist)
    with pytest.raises(TypeError):
        dview.execute(123)


def test_remote_errors_carry_details(rc):
    with pytest.raises(mpihub.RemoteError) as info:
        rc[1].apply_sync(lambda: int("x"))
    err = info.value
    assert err.ename == "ValueError" and "invalid literal" in err.evalue
    assert err.engine_id == 1 and "<lambda>" in err.traceback and "ValueError" in err.traceback
    assert "mpihub/engine" not in err.traceback  # the engine's own frames are left out
    ar = rc[:].apply_async(lambda: 1 / 0)
    assert ar.wait(10) and not ar.successful()


def test_stdout_stderr_and_metadata(rc):
    import sys

    ar = rc[:].apply_async(lambda: (print("to out"), print("to err", file=sys.stderr)))
    ar.get(timeout=10)
    assert ar.stdout == ["to out\n", "to out\n"] and ar.stderr == ["to err\n", "to err\n"]
    md = ar.metadata
    assert [m["engine_id"] for m in md] == [0, 1]
    for m in md:
        assert m["submitted"] <= m["started"] <= m["completed"] <= m["received"]
        assert m["status"] == "ok" and m.engine_id in (0, 1) and "mpi_rank" in m
    single = rc[0].apply_async(time.sleep, 0.2)
    single.get(timeout=10)
    assert single.metadata["engine_id"] == 0
    assert single.serial_time >= 0.2 and single.wall_time >= 0.2 and single.elapsed >= 0.2
    assert single.progress == 1 and len(single) == 1


def test_get_timeout_leaves_result_retrievable(rc):
    ar = rc[0].apply_async(time.sleep, 1)
    with pytest.raises(mpihub.TimeoutError):
        ar.get(timeout=0.05)
    assert not ar.ready() and not ar.wait(0.01)
    assert ar.get(timeout=10) is None and ar.ready()


def test_unpicklable_arguments_give_a_clear_error(rc):
    import threading

    with pytest.raises(TypeError, match="cannot serialize"):
        rc[:].apply_async(lambda x: x, threading.Lock())
    assert rc[:].apply_sync(lambda: "still fine") == ["still fine"] * 2


def test_map_on_direct_view(rc):
    dview = rc[:]
    assert dview.map_sync(lambda x: x * 2, range(10)) == list(range(0, 20, 2))
    assert dview.map_sync(lambda x, y: x + y, [1, 2, 3], [10, 20, 30]) == [11, 22, 33]
    assert dview.map_sync(lambda x: x, [1]) == [1]
    assert dview.map(lambda x: -x, range(5), dist="r", block=True) == [0, -1, -2, -3, -4]
    with pytest.raises(ValueError):
        dview.map(lambda x, y: x, [1], [1, 2])


def test_remote_and_parallel_decorators(rc):
    dview = rc[:]

    @dview.remote(block=True)
    def where():
        import os
        return os.getpid()

    assert len(set(where())) == 2

    @dview.parallel(block=True)
    def double(x):
        return x * 2

    assert double(range(6)) == [0, 2, 4, 6, 8, 10]


def test_sync_imports(rc, capsys):
    dview = rc[:]
    with dview.sync_imports():
        import json  # noqa: F401
    assert "importing json" in capsys.readouterr().out
    assert dview.apply_sync(lambda: json.dumps([1])) == ["[1]", "[1]"]  # noqa: F821


def test_track_and_wait_for_send(rc):
    data = np.ones(2_000_000)
    ar = rc[:].push({"tracked": data}, block=False, track=True)
    assert ar.wait_for_send(10)
    assert ar.sent
    ar.get(timeout=30)
    plain = rc[:].push({"x": 1}, block=False)
    assert plain.sent and plain.wait_for_send(1)
    plain.get(timeout=10)


def test_await_async_result(rc):
    import asyncio

    async def main():
        return await rc[0].apply_async(lambda: 5)

    assert asyncio.run(main()) == 5


def test_view_wait_covers_its_own_results(rc):
    dview, other = rc[0], rc[1]
    mine = [dview.apply_async(time.sleep, 0.3) for _ in range(2)]
    theirs = other.apply_async(time.sleep, 2)
    assert dview.wait(timeout=10)
    assert all(ar.ready() for ar in mine) and not theirs.ready()
    assert other.wait(timeout=10) and theirs.ready()


def test_iterating_results(rc):
    ar = rc[:].apply_async(lambda: 7)
    assert list(ar) == [7, 7]
    assert list(rc[0].apply_async(lambda: 8)) == [8]


def test_waiting_inside_a_done_callback_is_refused(rc):
    slow = rc[0].apply_async(time.sleep, 1)
    seen = []

    def callback(ar):
        try:
            slow.get(timeout=5)
        except RuntimeError as exc:
            seen.append(str(exc))

    quick = rc[1].apply_async(lambda: 1)
    quick.add_done_callback(callback)
    assert rc.wait([quick, slow], timeout=10)
    assert seen and "done-callback" in seen[0]


def test_blocking_calls_from_many_threads(rc):
    """Each thread's blocking calls use its own socket; async results still flow."""
    import threading

    results, failures = {}, []
    pending = rc[:].apply_async(lambda: time.sleep(0.3) or "async")

    def worker(n):
        try:
            results[n] = [rc[n % 2].apply_sync(lambda x: x * 10, n) for _ in range(30)]
            results[n].append(rc.load_balanced_view().map_sync(lambda x: -x, [n, n]))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert results == {n: [n * 10] * 30 + [[-n, -n]] for n in range(4)}
    assert pending.get(timeout=10) == ["async", "async"]


def test_a_blocking_call_never_overtakes_earlier_calls(rc):
    """An apply_async followed by an apply_sync from the same thread runs in that order
    on the engine, although blocking calls normally use the thread's own socket."""
    payload = np.zeros(60_000)  # a large request takes longer on the wire than the small one after it
    for i in range(200):
        rc[0].apply_async(mpihub.interactive(lambda v, _: globals().update(order_check=v)), i, payload)
        assert rc[0].apply_sync(mpihub.interactive(lambda: order_check)) == i  # noqa: F821
    assert rc[0].apply_sync(lambda: 1) == 1  # and back on the fast path

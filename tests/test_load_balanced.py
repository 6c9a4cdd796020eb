"""LoadBalancedView, data movement and Hub queries on a real two-engine cluster."""
import time

import numpy as np
import pytest

import mpihub

pytestmark = [pytest.mark.timeout(60), pytest.mark.layouts("one", "split")]


def test_lb_apply_and_map(rc):
    lbview = rc.load_balanced_view()
    assert lbview.apply_sync(lambda x: x + 1, 1) == 2
    ar = lbview.apply_async(lambda: 3)
    assert ar.get(timeout=10) == 3 and ar.metadata["engine_id"] in (0, 1)
    assert lbview.map_sync(lambda x: x * x, range(50)) == [x * x for x in range(50)]
    assert lbview.map(lambda x, y: x - y, range(7), range(7), chunksize=3, block=True) == [0] * 7
    result = lbview.map_async(lambda x: x, range(200))
    assert len(result) == 200 and result.get(timeout=30) == list(range(200))
    assert lbview.map_sync(lambda x: x, []) == []
    with pytest.raises(ValueError):
        lbview.map(lambda x: x, range(3), chunksize=0)


def test_lb_spreads_work_over_engines(rc):
    lbview = rc.load_balanced_view()
    ar = lbview.map_async(lambda x: time.sleep(0.05) or x, range(20))
    ar.get(timeout=30)
    engines = {md["engine_id"] for md in ar.metadata}
    assert engines == {0, 1}


def test_lb_restricted_targets(rc):
    only1 = rc.load_balanced_view([1])
    ar = only1.map_async(lambda x: x, range(10))
    ar.get(timeout=30)
    assert {md["engine_id"] for md in ar.metadata} == {1}
    with pytest.raises(mpihub.EngineError):
        rc.load_balanced_view([9]).apply_sync(lambda: 1)


def test_unordered_imap_yields_as_results_arrive(rc):
    lbview = rc.load_balanced_view()
    delays = [0.6, 0.0, 0.0, 0.0]
    started = time.monotonic()
    first = next(iter(lbview.map(lambda d: time.sleep(d) or d, delays, ordered=False, block=False)))
    assert first == 0.0 and time.monotonic() - started < 0.5
    assert sorted(lbview.imap(lambda x: -x, range(5), ordered=False)) == [-4, -3, -2, -1, 0]
    assert list(lbview.imap(lambda x: -x, range(5))) == [0, -1, -2, -3, -4]


def test_map_error_raises_remote_error(rc):
    lbview = rc.load_balanced_view()
    with pytest.raises(mpihub.RemoteError) as info:
        lbview.map_sync(lambda x: 1 / x, [1, 0, 2])
    assert info.value.ename == "ZeroDivisionError"


def test_wait_interactive_shows_progress(rc):
    import io

    out = io.StringIO()
    ar = rc.load_balanced_view().map_async(lambda x: time.sleep(0.01) or x, range(20))
    ar.wait_interactive(file=out)
    assert ar.ready() and "20/20" in out.getvalue()


def test_scatter_gather_arrays_and_lists(rc):
    dview = rc[:]
    data = np.arange(1001, dtype=np.float64)
    dview.scatter("part", data, block=True)
    parts = dview.pull("part", block=True)
    assert [len(p) for p in parts] == [501, 500]
    assert all(p.flags.writeable for p in parts)
    assert np.array_equal(dview.gather("part", block=True), data)
    dview.scatter("items", list(range(5)), block=True)
    assert dview.pull("items", block=True) == [[0, 1, 2], [3, 4]]
    assert dview.gather("items", block=True) == [0, 1, 2, 3, 4]
    dview.scatter("rr", list(range(5)), dist="r", block=True)
    assert dview.pull("rr", block=True) == [[0, 2, 4], [1, 3]]
    assert dview.gather("rr", dist="r", block=True) == [0, 1, 2, 3, 4]
    dview.scatter("one", [10, 20], flatten=True, block=True)
    assert dview.pull("one", block=True) == [10, 20]
    with pytest.raises(ValueError):
        dview.scatter("x", [1], dist="q")


def test_bcast_reduce_allreduce(rc):
    dview = rc[:]
    value = np.arange(10.0)
    dview.bcast("v", value, block=True)
    assert all(np.array_equal(v, value) for v in dview.pull("v", block=True))
    dview.scatter("r", np.array([1.0, 2.0, 3.0, 4.0]), block=True)  # engine 0: [1,2], engine 1: [3,4]
    assert np.array_equal(dview.reduce("r", "sum", block=True), [4.0, 6.0])
    assert np.array_equal(dview.reduce("r", "max", block=True), [3.0, 4.0])
    assert np.array_equal(dview.reduce("r", op=lambda a, b: a * b, block=True), [3.0, 8.0])
    dview.allreduce("r", "min", dest="rmin", block=True)
    assert all(np.array_equal(v, [1.0, 2.0]) for v in dview.pull("rmin", block=True))
    with pytest.raises(ValueError, match="MPI"):
        dview.bcast("x", 1, via="mpi")
    with pytest.raises(ValueError):
        dview.reduce("r", op="nonsense")
    with pytest.raises(ValueError):
        dview.gather("r", via="pigeon")


def test_large_push_pull_keeps_bits(rc):
    big = np.random.rand(4_000_000)  # 32 MB, zero-copy frames both ways
    rc[0].push({"big": big}, block=True)
    back = rc[0].pull("big", block=True)
    assert np.array_equal(back, big) and back.flags.writeable
    nested = rc[0].apply_sync(lambda x: {"a": [x, x[:10]]}, big)
    assert np.array_equal(nested["a"][0], big)


def test_queue_status_counts(rc):
    status = rc.queue_status()
    assert set(status) == {0, 1, "unassigned"}
    assert set(status[0]) == {"queue", "completed", "tasks"}
    before = status[0]["completed"]
    rc[0].apply_sync(lambda: None)
    assert rc.queue_status()[0]["completed"] == before + 1
    assert set(rc.queue_status(targets=[1])) == {1, "unassigned"}
    verbose = rc.queue_status(verbose=True)
    assert isinstance(verbose[0]["queue"], list)


def test_abort_queued_tasks(rc):
    blocker = rc[0].apply_async(time.sleep, 1.0)
    queued = [rc[0].apply_async(lambda: "ran") for _ in range(3)]
    time.sleep(0.2)
    rc.abort(queued[:2])
    blocker.get(timeout=10)
    for ar in queued[:2]:
        with pytest.raises(mpihub.TaskAborted):
            ar.get(timeout=10)
    assert queued[2].get(timeout=10) == "ran"
    lb_blockers = [rc.load_balanced_view().apply_async(time.sleep, 0.6) for _ in range(4)]
    lb_queued = rc.load_balanced_view().apply_async(lambda: "lb ran")
    lb_queued.abort()
    with pytest.raises(mpihub.TaskAborted):
        lb_queued.get(timeout=10)
    rc.wait(lb_blockers, timeout=10)


def test_get_result_from_another_client(rc, cluster):
    ar = rc[1].apply_async(lambda: "shared result")
    ar.get(timeout=10)
    pending = rc[1].apply_async(lambda: time.sleep(0.5) or "later")
    with mpihub.Client(cluster.cluster.client_file) as other:
        assert other.ids == rc.ids
        assert other.get_result(ar.msg_ids[0]).get(timeout=10) == "shared result"
        theirs = other.get_result(pending.msg_ids)
        assert theirs.get(timeout=10) == ["later"]
        assert theirs.metadata[0]["engine_id"] == 1
        with pytest.raises(KeyError, match="no-such-id"):
            other.get_result("no-such-id")
    assert rc.get_result(ar.msg_ids[0]) is ar


def test_db_query_and_purge(rc):
    ar = rc[0].apply_async(lambda: 1)
    ar.get(timeout=10)
    records = rc.db_query({"msg_id": ar.msg_ids[0]})
    assert len(records) == 1 and records[0]["engine_id"] == 0 and records[0]["status"] == "ok"
    assert rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["status"]) == [{"msg_id": ar.msg_ids[0], "status": "ok"}]
    assert rc.db_query({"completed": {"$gt": 0}, "engine_id": {"$in": [0]}})
    rc.purge_results(ar)
    assert rc.db_query({"msg_id": ar.msg_ids[0]}) == []
    with pytest.raises(ValueError, match="unknown"):
        rc.db_query({"no_such_key": 1})
    rc.purge_results("all")
    assert rc.db_query({"completed": {"$exists": True}}) == []


def test_resubmit_runs_again(rc):
    ar = rc[0].apply_async(lambda: 21 * 2)
    ar.get(timeout=10)
    again = rc.resubmit(ar)
    assert again.get(timeout=10) == 42 and again.msg_ids != ar.msg_ids


def test_client_wait_all(rc):
    ars = [rc.load_balanced_view().apply_async(time.sleep, 0.1) for _ in range(4)]
    assert rc.wait(timeout=10)
    assert all(ar.ready() for ar in ars)
    slow = rc[0].apply_async(time.sleep, 1)
    assert rc.wait([slow], timeout=0.05) is False
    assert rc.wait([slow.msg_ids[0]], timeout=10)


def test_lb_remote_and_parallel_decorators(rc):
    lbview = rc.load_balanced_view()

    @lbview.remote(block=True)
    def add(a, b):
        return a + b

    @lbview.parallel(block=True)
    def square(x):
        return x * x

    assert add(2, 3) == 5
    assert square(range(6)) == [0, 1, 4, 9, 16, 25]


def test_get_result_of_own_tasks_in_flight_and_done(rc):
    done = rc[0].apply_async(lambda: "done")
    done.get(timeout=10)
    running = rc[1].apply_async(lambda: time.sleep(0.5) or "running")
    both = rc.get_result(done.msg_ids + running.msg_ids)
    assert both.get(timeout=10) == ["done", "running"]
    assert rc.get_result(running.msg_ids[0]) is running

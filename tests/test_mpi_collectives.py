"""MPI collectives through the Client on MPI worlds of 2 and 4 engines, checked bit for bit
against the ZMQ path: scatter, gather, bcast/push, reduce and allreduce, and
@mpihub.collective."""
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

import mpihub
from support import run_cluster
from mpihub.client import mpi_plan

pytestmark = pytest.mark.timeout(180)

DTYPES = [np.int8, np.uint16, np.int32, np.int64, np.uint64, np.float16, np.float32, np.float64,
          np.complex64, np.complex128, np.bool_, np.dtype([("a", "<i4"), ("b", "<f8")]), np.dtype(">f8")]


@pytest.fixture(scope="module", params=[2, 4], ids=["2 ranks", "4 ranks"])
def mpi_world(request, layout):
    yield from run_cluster(request.param, layout, engines="mpi")


@pytest.fixture
def view(mpi_world):
    rc = mpi_world.client
    rc.wait(timeout=60)
    return rc[:]


def native(a: np.ndarray) -> np.ndarray:
    """In native byte order: pickle turns a strided big-endian slice native on the ZMQ path."""
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="), copy=False))


def same(a, b) -> bool:
    """Equal dtype (up to byte order), shape and bytes, NaNs included."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (type(a) is type(b) and native(a).dtype == native(b).dtype and a.shape == b.shape
                and native(a).tobytes() == native(b).tobytes())
    return type(a) is type(b) and a == b


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def pulled(view, key):
    return view.pull(key, block=True)


@pytest.mark.layouts("one", "split")
def test_scatter_gather_match_zmq_bit_for_bit(view):
    arrays = [sample(dt, (10,), i) for i, dt in enumerate(DTYPES)]
    arrays += [sample(np.float64, shape) for shape in [(0,), (1,), (3,), (7, 3), (5, 2, 3), (6, 0)]]
    base = sample(np.float32, (12, 4))
    arrays += [base[::2], base.T, np.asfortranarray(base)]  # not C-contiguous
    for arr in arrays:
        for dist in ("b", "r"):
            for flatten in (False, True):
                view.scatter("m", arr, dist=dist, flatten=flatten, via="mpi", block=True)
                view.scatter("z", arr, dist=dist, flatten=flatten, via="zmq", block=True)
                on_mpi, on_zmq = pulled(view, "m"), pulled(view, "z")
                assert all(same(m, z) for m, z in zip(on_mpi, on_zmq)), (arr.dtype, arr.shape, dist, flatten)
            if not flatten:
                gathered = view.gather("m", dist=dist, via="mpi", block=True)
                assert same(gathered, view.gather("z", dist=dist, via="zmq", block=True))
                assert same(gathered, np.ascontiguousarray(arr)), (arr.dtype, arr.shape, dist)


def test_gather_of_uneven_parts_made_on_the_engines(view):
    view.execute("import numpy as np\nparts = np.arange(rank * 3, dtype=np.int16).reshape(rank, 3)", block=True)
    for dist in ("b", "r"):
        assert same(view.gather("parts", dist=dist, via="mpi", block=True),
                    view.gather("parts", dist=dist, via="zmq", block=True))
    view.execute("mixed = np.arange(rank, dtype=np.int64 if rank % 2 else np.float32)", block=True)
    assert same(view.gather("mixed", via="mpi", block=True), view.gather("mixed", via="zmq", block=True))


def test_objects_travel_pickled(view):
    data = [{"i": i} for i in range(9)] + ["text", None, 3.5]
    for dist in ("b", "r"):
        view.scatter("obj", data, dist=dist, via="mpi", block=True)
        assert view.gather("obj", dist=dist, via="mpi", block=True) == view.gather("obj", dist=dist, via="zmq",
                                                                                  block=True)
    view.scatter("obj", data, via="mpi", block=True)
    assert view.gather("obj", via="mpi", block=True) == data
    view.bcast("o", {"nested": [1, np.arange(3)]}, via="mpi", block=True)
    assert all(o["nested"][0] == 1 and list(o["nested"][1]) == [0, 1, 2] for o in pulled(view, "o"))


def test_bcast_and_push_of_large_arrays(view):
    big = sample(np.float64, (1 << 18,))  # 2 MiB, over the auto threshold
    view.bcast("big", big, via="mpi", block=True)
    assert all(same(b, big) for b in pulled(view, "big"))
    view.push({"pushed": big[::-1], "small": 7}, block=True)
    assert all(same(p, big[::-1].copy()) for p in pulled(view, "pushed"))
    n = len(view.targets)
    assert pulled(view, "small") == [7] * n
    assert view.apply_sync(mpihub.interactive(lambda: pushed.flags.writeable)) == [True] * n  # noqa: F821


@pytest.mark.parametrize("op", ["sum", "prod", "min", "max"])
def test_reduce_and_allreduce_match_zmq_bit_for_bit(view, op):
    view.execute("import numpy as np\nrng = np.random.default_rng(rank)", block=True)
    makers = {
        "f64": "rng.standard_normal((5, 7)) * 1e3",
        "f32": "rng.standard_normal(1000).astype(np.float32)",
        "f16": "rng.standard_normal(33).astype(np.float16)",
        "c128": "rng.standard_normal(9) + 1j * rng.standard_normal(9)",
        "nan": "np.where(rng.random(20) < 0.2, np.nan, rng.random(20))",
        "i8": "rng.integers(-128, 127, 50, dtype=np.int8)",
        "u64": "rng.integers(0, 2**63, 50, dtype=np.uint64)",
        "empty": "np.zeros((0, 3))",
        "ints": "rank + 1",
    }
    for name, code in makers.items():
        view.execute(f"x = {code}", block=True)
        by_mpi = view.reduce("x", op, via="mpi", block=True)
        by_zmq = view.reduce("x", op, via="zmq", block=True)
        assert same(by_mpi, by_zmq), (name, op)
        assert view.allreduce("x", op, dest="all", via="mpi", block=True) == [None] * len(view.targets)
        assert all(same(a, by_zmq) for a in pulled(view, "all")), (name, op)
    assert view.allreduce("x", op, dest="all", via="zmq", block=True) == [None] * len(view.targets)


def test_reduce_with_callable_and_logical_ops(view):
    view.execute("import numpy as np\nv = np.arange(4) + rank\nflag = rank % 2 == 0", block=True)
    fold = lambda a, b: a * 2 + b  # noqa: E731 - order matters: shows the fold runs in target order
    assert same(view.reduce("v", fold, via="mpi", block=True), view.reduce("v", fold, via="zmq", block=True))
    for op in ("land", "lor", "band", "bor"):
        assert view.reduce("flag", op, via="mpi", block=True) == view.reduce("flag", op, via="zmq", block=True)
    with pytest.raises(ValueError, match="unknown reduce op"):
        view.reduce("v", "mean", via="mpi")


def test_subset_of_the_world_in_any_order(mpi_world):
    rc = mpi_world.client
    sub = rc.direct_view(rc.ids[::-2])  # [3, 1] of 4 ranks, [1] of 2
    for rows in (9, 8):
        arr = sample(np.float64, (rows, 2))
        for dist in ("b", "r"):
            sub.scatter("sub_part", arr, dist=dist, via="mpi", block=True)
            sub.scatter("t", arr, dist=dist, via="zmq", block=True)
            assert all(same(a, b) for a, b in zip(sub.pull("sub_part", block=True), sub.pull("t", block=True)))
            assert same(sub.gather("sub_part", dist=dist, via="mpi", block=True), arr)
    fold = lambda a, b: a - b  # noqa: E731
    assert same(sub.reduce("sub_part", fold, via="mpi", block=True),
                sub.reduce("sub_part", fold, via="zmq", block=True))
    with pytest.raises(mpihub.RemoteError, match="NameError"):
        rc[0].pull("sub_part", block=True)  # engines outside the view took no part


def test_errors_name_the_engine_and_lose_nothing(view, mpi_world):
    rc = mpi_world.client
    last = rc.ids[-1]
    rc[last].execute("only_here = 1", block=True)
    with pytest.raises(mpihub.CompositeError) as info:
        view.gather("only_here", via="mpi", block=True)
    names = {(e.engine_id, e.ename) for e in info.value.elist}
    assert names == {(e, "NameError") for e in rc.ids[:-1]}
    view.execute("odd = np.arange(3) if rank else 'text'", block=True)
    with pytest.raises(mpihub.CompositeError, match="reduce op raised"):
        view.reduce("odd", "sum", via="mpi", block=True)
    view.scatter("after", np.arange(8), via="mpi", block=True)  # the world still works
    assert same(view.gather("after", via="mpi", block=True), np.arange(8))


def test_auto_picks_mpi_for_large_arrays_on_one_world(mpi_world, fresh_cluster):
    rc = mpi_world.client
    threshold = mpihub.config.MPI_THRESHOLD
    assert mpi_plan.plan(rc, "auto", rc.ids, threshold) is not None
    assert mpi_plan.plan(rc, "auto", rc.ids, threshold - 1) is None
    assert mpi_plan.plan(rc, "auto", rc.ids) is not None  # data already on the engines
    assert mpi_plan.plan(rc, "auto", [0], threshold) is None
    assert mpi_plan.plan(rc, "zmq", rc.ids, threshold) is None
    with pytest.raises(ValueError, match="via must be"):
        rc[:].scatter("x", [1], via="tcp")
    local = fresh_cluster(2).client
    assert mpi_plan.plan(local, "auto", local.ids, threshold) is None


@mpihub.collective(timeout=1.5)
@mpihub.interactive
def psum(x):
    from mpi4py import MPI

    return comm.allreduce(x, op=MPI.SUM)  # noqa: F821


@pytest.mark.layouts("one", "split")
def test_collective_function_runs_on_the_whole_world(view, mpi_world):
    rc = mpi_world.client
    n = len(rc.ids)
    assert view.apply_sync(psum, 3) == [3 * n] * n
    with pytest.raises(ValueError, match=re.escape(f"ranks {list(range(1, n))} are not in it")):
        rc[0:1].apply(psum, 1)
    with pytest.raises(ValueError, match="mapping it"):
        view.map(psum, range(8))
    with pytest.raises(ValueError, match="mapping it"):
        rc.load_balanced_view().map(psum, range(8))
    with pytest.raises(ValueError, match="LoadBalancedView"):
        rc.load_balanced_view().apply(psum, 1)
    with pytest.raises(ValueError, match="positive number"):
        mpihub.collective(timeout=0)


@pytest.mark.parametrize("busy", ["last", "first"])
def test_collective_timeout_names_the_missing_rank(view, mpi_world, busy):
    rc = mpi_world.client
    busy = rc.ids[-1] if busy == "last" else rc.ids[0]
    sleeper = rc[busy].apply_async(time.sleep, 3)
    started = time.monotonic()
    with pytest.raises(mpihub.CompositeError) as info:
        view.apply_sync(psum, 1)
    assert time.monotonic() - started < 15
    sleeper.get(timeout=10)
    assert {e.ename for e in info.value.elist} == {"CollectiveTimeout"}
    assert f"rank {busy} (engine {busy})" in str(info.value)
    n = len(rc.ids)
    assert view.apply_sync(psum, 2) == [2 * n] * n  # nothing left over from the failed call


def test_a_collective_is_never_aborted_or_resubmitted_piecemeal(view, mpi_world):
    rc = mpi_world.client
    sleeper = rc[1].apply_async(time.sleep, 1)
    queued = view.apply_async(psum, 1)  # ranks 0, 2, 3 start it; rank 1 has it queued
    time.sleep(0.2)
    rc.abort(queued, block=True)
    assert queued.get(timeout=30) == [len(rc.ids)] * len(rc.ids)  # rank 1 ran it too, so nobody hangs
    sleeper.get(timeout=10)
    with pytest.raises(ValueError, match="whole MPI world"):
        rc.resubmit(queued)


@pytest.mark.timeout(300)
def test_bcast_past_2_gib(fresh_cluster):
    """One 2.1 GiB frame to the root, then one large-count Bcast."""
    rc = fresh_cluster(2, engines="mpi").client
    big = np.zeros((1 << 31) + 64, np.uint8)
    big[-1] = 9
    rc[:].bcast("huge", big, via="mpi", block=True)
    del big
    check = mpihub.interactive(lambda: (huge.size, int(huge[-1]), int(huge[:-1].any())))  # noqa: F821
    assert rc[:].apply_sync(check) == [((1 << 31) + 64, 9, 0)] * 2


def client_bytes_sent() -> int:
    """Bytes this process has sent on its TCP sockets, from ``ss -ti``, not counting
    TCP's own retransmissions."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10).stdout
    total, mine = 0, False
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            mine = f"pid={os.getpid()}," in line
        elif mine:
            for field, sign in (("bytes_sent", 1), ("bytes_retrans", -1)):
                if found := re.search(rf"{field}:(\d+)", line):
                    total += sign * int(found.group(1))
    return total


@pytest.mark.skipif(subprocess.run(["which", "ss"], capture_output=True).returncode != 0, reason="needs ss")
def test_bcast_sends_one_copy_whatever_the_engine_count(view, mpi_world):
    rc = mpi_world.client
    payload = sample(np.float64, (1 << 20,))  # 8 MiB
    for targets in ([rc.ids[0], rc.ids[-1]], rc.ids):
        before = client_bytes_sent()
        rc.direct_view(targets).bcast("copy", payload, via="mpi", block=True)
        sent = client_bytes_sent() - before
        assert payload.nbytes <= sent < payload.nbytes + 64 * 1024, (targets, sent)


@pytest.mark.timeout(120)
@pytest.mark.layouts("one", "split")
def test_a_rank_that_dies_fails_the_call_instead_of_hanging(fresh_cluster):
    running = fresh_cluster(4, engines="mpi")
    rc = running.client
    rc[1].apply_async(time.sleep, 5)
    ar = rc[:].gather("not_yet", via="mpi", block=False)  # ranks 0, 2, 3 wait in MPI for rank 1
    time.sleep(0.5)
    os.kill(rc.engines[2].pid, signal.SIGKILL)
    with pytest.raises(mpihub.CompositeError) as info:
        ar.get(timeout=30)  # the MPI job ends with the rank, and every engine's task fails
    assert {type(e) for e in info.value.elist} == {mpihub.EngineError}
    deadline = time.monotonic() + 10
    while rc.ids and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rc.ids == []

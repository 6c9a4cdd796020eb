"""MPI collectives through the Client on 4 MPI engines, checked bit for bit against the
ZMQ path: scatter, gather, bcast/push, reduce and allreduce, and @mpihub.collective."""
import time

import numpy as np
import pytest

import mpihub
from conftest import RunningCluster
from mpihub.client import collectives

pytestmark = pytest.mark.timeout(180)

DTYPES = [np.int8, np.uint16, np.int32, np.int64, np.uint64, np.float16, np.float32, np.float64,
          np.complex64, np.complex128, np.bool_, np.dtype([("a", "<i4"), ("b", "<f8")]), np.dtype(">f8")]


@pytest.fixture(scope="module")
def mpi_world():
    running = RunningCluster(4, engines="mpi")
    try:
        yield running
    finally:
        running.stop()


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
    assert pulled(view, "small") == [7] * 4
    assert view.apply_sync(mpihub.interactive(lambda: pushed.flags.writeable)) == [True] * 4  # noqa: F821


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
        assert view.allreduce("x", op, dest="all", via="mpi", block=True) == [None] * 4
        assert all(same(a, by_zmq) for a in pulled(view, "all")), (name, op)
    assert view.allreduce("x", op, dest="all", via="zmq", block=True) == [None] * 4


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
    sub = rc.direct_view([3, 1])
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
        rc[2].pull("sub_part", block=True)  # engines outside the view took no part


def test_errors_name_the_engine_and_lose_nothing(view, mpi_world):
    rc = mpi_world.client
    rc[2].execute("only_here = 1", block=True)
    with pytest.raises(mpihub.CompositeError) as info:
        view.gather("only_here", via="mpi", block=True)
    names = {(e.engine_id, e.ename) for e in info.value.elist}
    assert names == {(0, "NameError"), (1, "NameError"), (3, "NameError")}
    view.execute("odd = np.arange(3) if rank else 'text'", block=True)
    with pytest.raises(mpihub.CompositeError, match="reduce op raised"):
        view.reduce("odd", "sum", via="mpi", block=True)
    view.scatter("after", np.arange(8), via="mpi", block=True)  # the world still works
    assert same(view.gather("after", via="mpi", block=True), np.arange(8))


def test_auto_picks_mpi_for_large_arrays_on_one_world(mpi_world, fresh_cluster):
    rc = mpi_world.client
    threshold = mpihub.config.MPI_THRESHOLD
    assert collectives.plan(rc, "auto", rc.ids, threshold) is not None
    assert collectives.plan(rc, "auto", rc.ids, threshold - 1) is None
    assert collectives.plan(rc, "auto", rc.ids) is not None  # data already on the engines
    assert collectives.plan(rc, "auto", [0], threshold) is None
    assert collectives.plan(rc, "zmq", rc.ids, threshold) is None
    with pytest.raises(ValueError, match="via must be"):
        rc[:].scatter("x", [1], via="tcp")
    local = fresh_cluster(2).client
    assert collectives.plan(local, "auto", local.ids, threshold) is None


@mpihub.collective(timeout=1.5)
@mpihub.interactive
def psum(x):
    from mpi4py import MPI

    return comm.allreduce(x, op=MPI.SUM)  # noqa: F821


def test_collective_function_runs_on_the_whole_world(view, mpi_world):
    rc = mpi_world.client
    assert view.apply_sync(psum, 3) == [12] * 4
    with pytest.raises(ValueError, match=r"ranks \[2, 3\] are not in it"):
        rc[0:2].apply(psum, 1)
    with pytest.raises(ValueError, match="LoadBalancedView"):
        rc.load_balanced_view().apply(psum, 1)
    with pytest.raises(ValueError, match="positive number"):
        mpihub.collective(timeout=0)


@pytest.mark.parametrize("busy", [2, 0])
def test_collective_timeout_names_the_missing_rank(view, mpi_world, busy):
    rc = mpi_world.client
    sleeper = rc[busy].apply_async(time.sleep, 3)
    started = time.monotonic()
    with pytest.raises(mpihub.CompositeError) as info:
        view.apply_sync(psum, 1)
    assert time.monotonic() - started < 15
    sleeper.get(timeout=10)
    assert {e.ename for e in info.value.elist} == {"CollectiveTimeout"}
    assert f"rank {busy} (engine {busy})" in str(info.value)
    assert view.apply_sync(psum, 2) == [8] * 4  # nothing left over from the failed call


def test_a_collective_is_never_aborted_or_resubmitted_piecemeal(view, mpi_world):
    rc = mpi_world.client
    sleeper = rc[1].apply_async(time.sleep, 1)
    queued = view.apply_async(psum, 1)  # ranks 0, 2, 3 start it; rank 1 has it queued
    time.sleep(0.2)
    rc.abort(queued, block=True)
    assert queued.get(timeout=30) == [4] * 4  # rank 1 ran it too, so nobody hangs
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

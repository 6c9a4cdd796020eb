"""Rank-level tests of the engine side of MPI collectives, without client or controller.

Run under MPI: ``mpiexec -n 2 python -m pytest tests/ranks --with-mpi`` (``make test``
does). Every rank runs every test; each test works at any world size, 1 included.
"""
import time

import numpy as np
import pytest

from mpihub import config, partition
from mpihub.client import mpi_plan as client_side

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def comm():
    from mpihub.engine import mpi_world

    if mpi_world._internal is None:
        mpi_world.init_world()
    return mpi_world.internal_comm()


@pytest.fixture
def ns(comm):
    from mpihub.engine import ops

    namespace: dict = {}
    ops.bind_namespace(namespace)
    return namespace


def everyone(comm) -> list[int]:
    return list(range(comm.size))


def scatter_spec(comm, arr, dist, root=0, ranks=None, **extra):
    ranks = ranks or everyone(comm)
    fields, frames = client_side.scatter_payload(arr, len(ranks), dist)
    spec = {"ranks": ranks, "root": root, "key": "part", "dist": dist, "flatten": False, **fields, **extra}
    return spec, frames


def value_of(rank: int, shape=(1000,)) -> np.ndarray:
    """The float array rank ``rank`` holds; every rank can make every rank's value."""
    return np.random.default_rng(rank).standard_normal(shape) * 10.0 ** (rank % 5)


@pytest.mark.parametrize("dist", ["b", "r"])
@pytest.mark.parametrize("rows", [0, 1, 7])
def test_scatter_gives_each_rank_its_part(comm, ns, dist, rows):
    from mpihub.engine import mpi_collectives

    arr = np.arange(rows * 3, dtype=np.int32).reshape(rows, 3)
    root = comm.size - 1
    spec, frames = scatter_spec(comm, arr, dist, root=root)
    mpi_collectives.scatter(spec, frames if comm.rank == root else None)
    expected = partition.split(arr, comm.size, dist)[comm.rank]
    assert ns["part"].dtype == np.int32 and np.array_equal(ns["part"], expected)


@pytest.mark.parametrize("dist", ["b", "r"])
def test_gather_joins_on_the_root_only(comm, ns, dist):
    from mpihub.engine import mpi_collectives

    parts = [np.full((r + 1, 2), r, dtype=np.float32) for r in range(comm.size)]
    ns["g"] = parts[comm.rank]
    joined = mpi_collectives.gather({"ranks": everyone(comm), "root": 0, "key": "g", "dist": dist})
    if comm.rank == 0:
        expected = partition.join(parts, dist)
        assert joined.dtype == np.float32 and np.array_equal(joined, expected)
    else:
        assert joined is None


def test_bcast_of_any_object(comm, ns):
    from mpihub.engine import mpi_collectives

    value = {"array": np.arange(100_000, dtype=np.int64), "text": "hello", "list": [1, 2.5]}
    frames = client_side.pickled(value)
    mpi_collectives.bcast({"ranks": everyone(comm), "root": 0, "key": None}, frames if comm.rank == 0 else None)
    assert np.array_equal(ns["array"], value["array"]) and ns["text"] == "hello" and ns["list"] == [1, 2.5]
    assert ns["array"].flags.writeable


@pytest.mark.parametrize("chunk", [64, 4 << 20])
def test_float_reduce_is_a_left_fold_in_rank_order(comm, ns, monkeypatch, chunk):
    from mpihub.engine import mpi_collectives

    monkeypatch.setattr(config, "MPI_CHUNK_BYTES", chunk)
    ns["x"] = value_of(comm.rank)
    expected = value_of(0)
    for r in range(1, comm.size):
        expected = expected + value_of(r)
    spec = {"ranks": everyone(comm), "key": "x", "op": "sum", "dest": "total"}
    result = mpi_collectives.reduce(spec)
    last = comm.size - 1
    assert (result.tobytes() == expected.tobytes()) if comm.rank == last else result is None
    mpi_collectives.allreduce(spec)
    assert ns["total"].tobytes() == expected.tobytes()


def test_integer_reduce_wraps_like_numpy(comm, ns):
    from mpihub.engine import mpi_collectives

    ns["i"] = np.full(10, 100, dtype=np.int8)
    mpi_collectives.allreduce({"ranks": everyone(comm), "key": "i", "op": "sum", "dest": "i_sum"})
    expected = np.full(10, 100, dtype=np.int8)
    for _ in range(comm.size - 1):
        expected = expected + np.full(10, 100, dtype=np.int8)
    assert ns["i_sum"].dtype == np.int8 and np.array_equal(ns["i_sum"], expected)


def test_reverse_order_subset_uses_target_order(comm, ns):
    from mpihub.engine import mpi_collectives

    ranks = everyone(comm)[::-1]
    arr = np.arange(10.0)
    spec, frames = scatter_spec(comm, arr, "b", root=ranks.index(0), ranks=ranks)
    mpi_collectives.scatter(spec, frames if comm.rank == 0 else None)
    assert np.array_equal(ns["part"], partition.split(arr, comm.size, "b")[ranks.index(comm.rank)])
    if comm.rank == comm.size - 1:  # a world of one: only this rank takes part
        mpi_collectives.scatter(*scatter_spec(comm, arr, "b", root=0, ranks=[comm.rank]))
        assert np.array_equal(ns["part"], arr)


def test_a_root_without_data_fails_every_rank(comm, ns):
    from mpihub.engine import mpi_collectives

    spec, _ = scatter_spec(comm, np.arange(4), "b")
    with pytest.raises(mpi_collectives.CollectiveError, match="BulkMissing: gone"):
        mpi_collectives.scatter(spec, BulkMissingLike("gone") if comm.rank == 0 else None)
    with pytest.raises(mpi_collectives.CollectiveError, match="root"):
        mpi_collectives.bcast({"ranks": everyone(comm), "root": 0, "key": "b"}, None)


class BulkMissingLike(RuntimeError):
    pass


BulkMissingLike.__name__ = "BulkMissing"


def test_a_failing_combine_reaches_the_later_ranks(comm, ns):
    from mpihub.engine import mpi_collectives

    ns["v"] = comm.rank

    def picky(a, b):
        raise ArithmeticError("no")

    spec = {"ranks": everyone(comm), "key": "v", "op": picky}
    if comm.size == 1:
        assert mpi_collectives.reduce(spec) == 0
        return
    if comm.rank == 0:
        assert mpi_collectives.reduce(spec) is None
    else:
        with pytest.raises(mpi_collectives.CollectiveError, match="raised on rank 1: ArithmeticError"):
            mpi_collectives.reduce(spec)


def test_arrival_gate_names_a_late_rank(comm):
    from mpihub.engine import mpi_world

    engines = {r: 10 + r for r in range(comm.size)}
    mpi_world.arrival_gate("f", 5.0, "call-1", engines)  # everyone on time
    if comm.size == 1:
        return
    if comm.rank == 1:
        time.sleep(1.5)
    with pytest.raises(mpi_world.CollectiveTimeout, match=r"rank 1 \(engine 11\) never arrived within 1 s"):
        mpi_world.arrival_gate("f", 1.0, "call-2", engines)
    comm.Barrier()
    mpi_world.arrival_gate("f", 5.0, "call-3", engines)  # nothing left over


def test_arrays_past_2_gib_use_large_counts(comm, ns):
    from mpihub.engine import mpi_collectives

    if comm.size < 2:
        pytest.skip("needs a second rank to send to")
    big = (1 << 31) + 8
    counts = [8] * (comm.size - 1) + [big]
    frames = None
    if comm.rank == 0:
        whole = np.zeros(sum(counts), np.uint8)
        whole[-1] = 7
        frames = [memoryview(whole)]
    spec = {"ranks": everyone(comm), "root": 0, "key": "huge", "dist": "b", "flatten": False,
            "kind": "array", "dtype": np.uint8, "shape": (sum(counts),), "counts": counts}
    mpi_collectives.scatter(spec, frames)
    assert ns["huge"].size == counts[comm.rank]
    if comm.rank == comm.size - 1:
        assert ns["huge"][-1] == 7
    del ns["huge"]

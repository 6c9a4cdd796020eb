"""``python -m mpihub.demo``: start a local cluster, run the seed examples, stop it.

What `make demo` runs: push/pull, a load-balanced ``numpy.dot`` against a pushed
matrix through a ``Reference``, scatter/gather, with timings; then the same on MPI
engines: a ``@collective`` function, scatter/gather, push and allreduce over MPI.
Everything started is stopped before it returns.
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np

import mpihub
from mpihub import Reference


def timed(label: str, fn):
    start = time.perf_counter()
    value = fn()
    print(f"  {label:<52} {1000 * (time.perf_counter() - start):8.2f} ms")
    return value


def timed_warm(label: str, fn, calls: int = 7):
    """Time ``fn`` ``calls`` times; print the median of the warm calls, and the first call.

    The first two calls of a large transfer also fault in fresh memory, in every engine
    and here (the second arrives while the first one's array is still in use); from the
    third on, engines receive into buffers they keep. That is what a session that keeps
    working gets, and what the benchmarks' medians measure."""
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        value = fn()
        seconds.append(time.perf_counter() - start)
    print(f"  {label:<52} {1000 * statistics.median(seconds[2:]):8.2f} ms  (first call {1000 * seconds[0]:.0f} ms)")
    return value


def main(n: int = 4) -> int:
    print(f"mpihub {mpihub.__version__} demo: starting a controller and {n} local engines")
    started = time.perf_counter()
    cluster = mpihub.Cluster(n=n, engines="local")
    with cluster as rc:
        print(f"  cluster up in {time.perf_counter() - started:.2f} s, engines {rc.ids}")
        dview = rc[:]
        dview.block = True

        timed("push {'a': 5} to all engines", lambda: dview.push({"a": 5}))
        pulled = timed("pull 'a' from all engines", lambda: dview.pull("a"))
        print(f"    -> {pulled}")
        names = dview.apply(lambda: sorted(globals().keys()))
        print(f"    names on engine 0: {[k for k in names[0] if not k.startswith('__')]}")

        A = np.random.rand(400, 400)
        B = np.random.rand(400, 400)
        timed("push a 400x400 matrix A to all engines", lambda: dview.push({"A": A}))
        lbview = rc.load_balanced_view()
        product = timed("lbview.apply(numpy.dot, Reference('A'), B)",
                        lambda: lbview.apply_sync(np.dot, Reference("A"), B))
        print(f"    -> matches A @ B: {np.allclose(product, A @ B)}")
        squares = timed("lbview.map(lambda x: x**2, range(1000))",
                        lambda: lbview.map_sync(lambda x: x ** 2, range(1000)))
        print(f"    -> sum {sum(squares)}")

        data = np.arange(10_000_000, dtype=np.float64)
        print("  (large transfers run 7 times: the figure is the median of the last 5, warm; the first calls\n"
              "   also fault in fresh memory: see README)")
        timed_warm("scatter 80 MB over the engines", lambda: dview.scatter("x", data))
        sizes = dview.apply(lambda: len(x))  # noqa: F821 - x lives on the engines
        print(f"    -> part sizes {sizes}")
        timed("double each part remotely", lambda: dview.execute("x *= 2"))
        gathered = timed_warm("gather 80 MB back", lambda: dview.gather("x"))
        print(f"    -> gathered equals 2*data: {np.array_equal(gathered, 2 * data)}")
        total = timed("reduce('a', op='sum')", lambda: dview.reduce("a", op="sum"))
        print(f"    -> {total}")

        ok = np.allclose(product, A @ B) and np.array_equal(gathered, 2 * data) and pulled == [5] * n
    print("cluster stopped")
    ok = mpi_demo(n) and ok
    print(f"demo {'succeeded' if ok else 'FAILED'} in {time.perf_counter() - started:.2f} s")
    return 0 if ok else 1


@mpihub.collective(timeout=30)
def rank_sum() -> int:
    """Runs on every rank at once: a collective sum of rank + 1 over the engines' world."""
    from mpi4py import MPI

    import mpihub.engine

    return mpihub.engine.comm.allreduce(mpihub.engine.rank + 1, op=MPI.SUM)


def mpi_demo(n: int) -> bool:
    """The same engines as one MPI job: ids follow ranks, functions may call MPI."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        print("mpi4py is not installed: skipping the MPI part (pip install 'mpihub[mpi]')")
        return True
    print(f"starting a controller and {n} MPI engines (one mpiexec job)")
    with mpihub.Cluster(n=n, engines="mpi") as rc:
        ranks = rc[:].apply_sync(lambda: (rank, size))  # noqa: F821 - comm, rank, size live on MPI engines
        print(f"  (rank, size) per engine: {ranks}")
        total = timed("@collective comm.allreduce(rank + 1) on every rank", lambda: rc[:].apply_sync(rank_sum))
        print(f"    -> {total}")
        dview = rc[:]
        data = np.arange(50_000_000, dtype=np.float64)  # 400 MB
        timed_warm(f"scatter {data.nbytes / 1e6:.0f} MB via MPI (one send, then Scatterv)",
              lambda: dview.scatter("x", data, via="mpi", block=True))
        timed("x *= 2 on every engine", lambda: dview.execute("x *= 2", block=True))
        gathered = timed_warm(f"gather {data.nbytes / 1e6:.0f} MB via MPI (Gatherv, then one send)",
                               lambda: dview.gather("x", via="mpi", block=True))
        weights = data[:12_500_000]  # 100 MB
        timed_warm(f"push {weights.nbytes / 1e6:.0f} MB to all via MPI Bcast",
                    lambda: dview.push({"w": weights}, block=True))
        dview.execute("import numpy as np\nlocal = np.array([x.sum()])", block=True)
        timed("allreduce of per-engine sums via MPI", lambda: dview.allreduce("local", "sum", dest="total", block=True))
        totals = dview.pull("total", block=True)
        print(f"    -> gathered == 2 * data: {np.array_equal(gathered, 2 * data)}; "
              f"total on every engine: {totals[0][0]:.6g}")
        ok = (ranks == [(i, n) for i in range(n)] and total == [n * (n + 1) // 2] * n
              and np.array_equal(gathered, 2 * data)
              and all(np.isclose(t[0], 2 * data.sum()) for t in totals))
    print("MPI cluster stopped")
    return ok


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 4))

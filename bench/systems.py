"""The systems the bench scripts compare, one adapter each, with the same operations.

  IpLike   mpihub and ipyparallel (one client API): any Cluster options, optionally a
           second name for another adapter's cluster that calls with ``via=...``
  Dask     distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True)
  Pyzmq    raw pyzmq REQ/REP over tcp loopback to a second process: the ceiling for a hop

Every operation returns seconds (median seconds for the latencies) and checks what came
back outside the timed part; one that does not apply to a system raises Unsupported.

The functions sent to engines (``noop``, ``sleep_10ms``) are marked ``__main__``
functions, so that every serializer here ships them by value, as it does the functions
of the script being run: ipyparallel's canning, and cloudpickle in mpihub and dask,
would otherwise import this module by name on the engines, where bench/ is not on the path.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import statistics
import subprocess
import sys
from typing import Callable

import numpy as np

from harness import System, Unsupported, captured_output, median_time, perf


def interactive(f: Callable) -> Callable:
    """Mark ``f`` as defined in ``__main__`` (what ipyparallel's and mpihub's do)."""
    f.__module__ = "__main__"
    return f


@interactive
def noop(x=None):
    return x


@interactive
def sleep_10ms(x):
    import time  # runs with the engine's namespace as its globals

    time.sleep(0.01)
    return x


def _check_same(back, arr: np.ndarray, full: bool) -> None:
    """Size and last element always; every element when ``full``."""
    if (not isinstance(back, np.ndarray) or back.nbytes != arr.nbytes or back[-1] != arr[-1]
            or (full and not np.array_equal(back, arr))):
        raise AssertionError(f"the data that came back differs from what was sent ({type(back).__name__})")


class Adapter(System):
    """A system with ``n`` engines/workers and the operations the scripts time."""

    def __init__(self, name: str, n: int = 2):
        super().__init__()
        self.name, self.n = name, n

    def apply_latency(self, f: Callable, calls: int) -> float:
        """Median seconds of one call of ``f`` on one engine, result back."""
        raise Unsupported

    def apply_all_latency(self, f: Callable, calls: int) -> float:
        """Median seconds of one call of ``f`` on every engine, results back."""
        raise Unsupported

    def lb_latency(self, f: Callable, calls: int) -> float:
        """Median seconds of one load-balanced task, submission to result."""
        raise Unsupported

    def lb_map(self, f: Callable, n: int) -> float:
        """Seconds to map ``f`` over ``range(n)``, load-balanced, until every result is back."""
        raise Unsupported

    def push(self, arr: np.ndarray) -> float:
        """Seconds to send ``arr`` to one engine (as ``a``)."""
        raise Unsupported

    def pull(self, arr: np.ndarray, check: bool) -> float:
        """Seconds to fetch the pushed array back; ``check``: compare all of it with ``arr``."""
        raise Unsupported

    def push_pull(self, arr: np.ndarray, check: bool) -> tuple[float, float]:
        return self.push(arr), self.pull(arr, check)

    def scatter_gather(self, arr: np.ndarray, check: bool) -> tuple[float, float]:
        """Seconds to split ``arr`` over the engines (as ``x``) and to gather it back."""
        raise Unsupported

    def push_all(self, arr: np.ndarray) -> float:
        """Seconds to send ``arr`` to every engine (as ``y``)."""
        raise Unsupported

    def forget(self, *names: str) -> None:
        """Drop what the data operations left on the engines."""


def throughput(system: Adapter, tasks: int, f: Callable = noop) -> float:
    """Load-balanced tasks per second over ``tasks`` trivial tasks."""
    return tasks / system.lb_map(f, tasks)


def efficiency(system: Adapter, tasks: int = 1000) -> float:
    """Ideal time / measured time of ``tasks`` load-balanced tasks of 10 ms each."""
    return tasks * 0.01 / system.n / system.lb_map(sleep_10ms, tasks)


class IpLike(Adapter):
    """mpihub or ipyparallel: ``module.Cluster(n=n, **cluster_kwargs)``.

    With ``share``, the adapter uses that (earlier) adapter's cluster instead of starting
    one, and leaves stopping it to that one; ``via`` goes to scatter/gather/bcast.
    """

    def __init__(self, name: str, modname: str, n: int = 2, via: str | None = None,
                 share: IpLike | None = None, **cluster_kwargs):
        super().__init__(name, n)
        self.modname, self.share, self.cluster_kwargs = modname, share, cluster_kwargs
        self.via = {"via": via} if via else {}
        self.cluster = None
        self.rc = None

    def start(self) -> None:
        if self.share is not None:
            if self.share.start_s is None:
                raise RuntimeError(f"uses the cluster of {self.share.name}, which did not start")
            self.version, self.rc = self.share.version, self.share.rc
        else:
            mod = importlib.import_module(self.modname)
            self.version = getattr(mod, "__version__", "?")
            self.cluster = mod.Cluster(n=self.n, **self.cluster_kwargs)
            with captured_output():
                self.rc = self.cluster.start_and_connect_sync()
                self.rc.wait_for_engines(self.n, timeout=120)
        self.e0 = self.rc[sorted(self.rc.ids)[0]]
        self.dv = self.rc[:]
        self.lb = self.rc.load_balanced_view()

    def stop(self) -> None:
        if self.share is not None:
            return
        if self.rc is not None:
            with contextlib.suppress(Exception):
                self.rc.close()
        if self.cluster is not None:
            with captured_output():
                self.cluster.stop_cluster_sync()

    def apply_latency(self, f: Callable, calls: int) -> float:
        return median_time(lambda: self.e0.apply_sync(f), calls)

    def apply_all_latency(self, f: Callable, calls: int) -> float:
        last = None

        def call():
            nonlocal last
            last = self.dv.apply_sync(f)

        t = median_time(call, calls)
        if last is not None and len(last) != self.n:
            raise AssertionError(f"rc[:].apply_sync returned {len(last)} results, expected {self.n}")
        return t

    def lb_latency(self, f: Callable, calls: int) -> float:
        return median_time(lambda: self.lb.apply_sync(f), calls)

    def lb_map(self, f: Callable, n: int) -> float:
        t0 = perf()
        r = self.lb.map_async(f, range(n)).get()
        dt = perf() - t0
        r = list(r)
        if len(r) != n or r[-1] != n - 1:
            raise AssertionError(f"map returned {len(r)} results (last {r[-1:]}), expected {n}")
        return dt

    def push(self, arr: np.ndarray) -> float:
        t0 = perf()
        self.e0.push({"a": arr}, block=True)
        return perf() - t0

    def pull(self, arr: np.ndarray, check: bool) -> float:
        t0 = perf()
        b = self.e0.pull("a", block=True)
        dt = perf() - t0
        _check_same(b, arr, check)
        return dt

    def scatter_gather(self, arr: np.ndarray, check: bool) -> tuple[float, float]:
        t0 = perf()
        self.dv.scatter("x", arr, block=True, **self.via)
        t1 = perf()
        g = self.dv.gather("x", block=True, **self.via)
        t2 = perf()
        if check:
            g = np.asarray(g)
            if g.shape != arr.shape or not np.array_equal(g, arr):
                raise AssertionError(f"gather returned {g.shape}, differs from scattered {arr.shape}")
        return t1 - t0, t2 - t1

    def push_all(self, arr: np.ndarray) -> float:
        t0 = perf()
        if self.via:
            self.dv.bcast("y", arr, block=True, **self.via)
        else:
            self.dv.push({"y": arr}, block=True)
        return perf() - t0

    def forget(self, *names: str) -> None:
        self.dv.push(dict.fromkeys(names), block=True)


class Dask(Adapter):
    """dask.distributed: single-threaded worker processes; direct scatter/gather."""

    def __init__(self, n: int = 2):
        super().__init__("dask", n)
        self.cluster = None
        self.client = None
        self._pushed = None

    def start(self) -> None:
        import distributed
        from distributed import Client, LocalCluster

        self.version = distributed.__version__
        with captured_output():
            self.cluster = LocalCluster(n_workers=self.n, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
            self.client.wait_for_workers(self.n, timeout=60)
        self.workers = sorted(self.client.scheduler_info()["workers"])

    def stop(self) -> None:
        with captured_output():
            if self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.close(timeout=20)
            if self.cluster is not None:
                self.cluster.close(timeout=20)

    def apply_latency(self, f: Callable, calls: int) -> float:
        c, w0 = self.client, self.workers[:1]
        return median_time(lambda: c.submit(f, pure=False, workers=w0).result(), calls)

    def apply_all_latency(self, f: Callable, calls: int) -> float:
        c = self.client
        return median_time(lambda: c.gather([c.submit(f, pure=False, workers=[w], allow_other_workers=False)
                                             for w in self.workers]), calls)

    def lb_latency(self, f: Callable, calls: int) -> float:
        return median_time(lambda: self.client.submit(f, pure=False).result(), calls)

    def lb_map(self, f: Callable, n: int) -> float:
        c = self.client
        t0 = perf()
        futs = c.map(f, range(n), pure=False)
        r = c.gather(futs)
        dt = perf() - t0
        del futs
        if len(r) != n or r[-1] != n - 1:
            raise AssertionError(f"map returned {len(r)} results, expected {n}")
        return dt

    def push(self, arr: np.ndarray) -> float:
        t0 = perf()
        self._pushed = self.client.scatter(arr, workers=self.workers[:1], hash=False, direct=True)
        return perf() - t0

    def pull(self, arr: np.ndarray, check: bool) -> float:
        t0 = perf()
        b = self.client.gather(self._pushed, direct=True)
        dt = perf() - t0
        self._pushed = None
        _check_same(b, arr, check)
        return dt

    def scatter_gather(self, arr: np.ndarray, check: bool) -> tuple[float, float]:
        c = self.client
        chunks = np.array_split(arr, len(self.workers))
        t0 = perf()
        futs = c.scatter(chunks, workers=self.workers, hash=False, direct=True)
        t1 = perf()
        g = np.concatenate(c.gather(futs, direct=True))
        t2 = perf()
        if check:
            where = c.who_has(futs)
            if len({tuple(v) for v in where.values()}) != len(self.workers):
                raise AssertionError(f"chunks not spread over workers: {where}")
            if not np.array_equal(g, arr):
                raise AssertionError("gathered data differs from scattered")
        return t1 - t0, t2 - t1


ZMQ_SERVER = r"""
import sys, zmq, numpy as np
port, nbytes = int(sys.argv[1]), int(sys.argv[2])
ctx = zmq.Context()
s = ctx.socket(zmq.REP)
s.linger = 0
s.connect("tcp://127.0.0.1:%d" % port)
big = np.arange(nbytes // 8, dtype=np.float64)
while True:
    head = s.recv()
    if not s.getsockopt(zmq.RCVMORE):
        s.send(head)                      # 64-byte echo
        continue
    body = s.recv(copy=False)             # zero-copy receive
    if head == b"put":
        s.send(b"%d" % len(body.buffer))
    elif head == b"get":
        s.send(big, copy=False)           # zero-copy send
    else:
        s.send(b"bye")
        break
s.close()
ctx.term()
"""


class Pyzmq(Adapter):
    """The ceiling: one tcp loopback hop between two Python processes with pyzmq.

    The server holds an ``nbytes`` array, which a pull fetches whatever was pushed.
    """

    def __init__(self, nbytes: int):
        super().__init__("pyzmq", 1)
        self.nbytes = nbytes
        self.ctx = None
        self.proc = None

    def start(self) -> None:
        import zmq

        self.zmq = zmq
        self.version = zmq.__version__
        self.ctx = zmq.Context()
        self.req = self.ctx.socket(zmq.REQ)
        self.req.linger = 0
        port = self.req.bind_to_random_port("tcp://127.0.0.1")
        self.proc = subprocess.Popen([sys.executable, "-c", ZMQ_SERVER, str(port), str(self.nbytes)])
        self.payload = b"x" * 64
        self.req.send(self.payload)
        if not self.req.poll(30_000):
            raise RuntimeError("pyzmq echo server did not answer within 30 s")
        self.req.recv()

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.req.send(b"quit", self.zmq.SNDMORE)
                    self.req.send(b"")
                    if self.req.poll(2000):
                        self.req.recv()
                try:
                    self.proc.wait(3)
                except subprocess.TimeoutExpired:
                    self.proc.terminate()
                    try:
                        self.proc.wait(3)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
        finally:
            if self.ctx is not None:
                self.ctx.destroy(linger=0)

    def _wait_reply(self) -> None:
        """Poll in 1 s slices so that a dead server is an error, not a hang."""
        while not self.req.poll(1000):
            if self.proc.poll() is not None:
                raise RuntimeError(f"pyzmq server exited with code {self.proc.returncode}")

    def apply_latency(self, f: Callable, calls: int) -> float:
        """A 64-byte echo (``f`` is not sent); five times the calls, at least 500: cheap."""
        req, payload = self.req, self.payload
        req.send(payload)
        self._wait_reply()
        req.recv()
        ts = []
        for _ in range(max(calls * 5, 500)):
            t0 = perf()
            req.send(payload)
            req.recv()
            ts.append(perf() - t0)
        return statistics.median(ts)

    def push(self, arr: np.ndarray) -> float:
        req = self.req
        t0 = perf()
        req.send(b"put", self.zmq.SNDMORE)
        req.send(arr, copy=False)
        self._wait_reply()
        n = int(req.recv())
        dt = perf() - t0
        if n != arr.nbytes:
            raise AssertionError(f"pyzmq server received {n} bytes, not {arr.nbytes}")
        return dt

    def pull(self, arr: np.ndarray, check: bool) -> float:
        req = self.req
        t0 = perf()
        req.send(b"get", self.zmq.SNDMORE)
        req.send(b"")
        self._wait_reply()
        fr = req.recv(copy=False)
        b = np.frombuffer(fr.buffer, dtype=np.float64)
        dt = perf() - t0
        if b.nbytes != self.nbytes:
            raise AssertionError(f"pyzmq pulled {b.nbytes} bytes, not {self.nbytes}")
        return dt

#!/usr/bin/env python3
"""Side-by-side core benchmark: mpihub vs ipyparallel vs dask.distributed vs raw pyzmq.

Every system runs with 2 engines/workers on this machine, in ONE process run. All
clusters are up at the same time so that each metric can alternate between systems
(A B C A B C ..., with the starting system rotated every rep); the reported value is
the median over reps. Compare ratios taken in one run, not absolute numbers
(see shared/reference/peer-numbers.md: the machines are shared and noisy).

Columns
  mpihub      mpihub.Cluster(n=2, engines="local")              (the system under test)
  ipp         ipyparallel 9.2, ipp.Cluster(n=2), defaults        (targets are against this)
  ipp-nodb    ipyparallel with controller args --nodb --log-level=WARN   (fairer peer, info)
  dask        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)
  pyzmq       raw pyzmq REQ/REP over tcp loopback to a second process (the ceiling)

Usage: python bench/bench_core.py [--quick] [--json PATH] [--systems mpihub,ipp,...]
Any system that cannot be imported or started is shown as n/a; an error in one
metric of one system is printed and the run goes on. Every cluster is torn down in a
finally block and any process the run started that is still alive at the end is killed.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import warnings

try:
    import numpy as np
except ImportError:  # pragma: no cover
    sys.exit("bench_core.py needs numpy")

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with ipyparallel and distributed
    psutil = None

MB = 1e6  # decimal megabytes: MB/s = bytes / 1e6 / s
perf = time.perf_counter

ALL_SYSTEMS = ["mpihub", "ipp", "ipp-nodb", "dask", "pyzmq"]
LABELS = {  # column headers
    "mpihub": "mpihub",
    "ipp": "ipp",
    "ipp-nodb": "ipp-nodb",
    "dask": "dask",
    "pyzmq": "pyzmq",
}


def log(msg=""):
    print(msg, flush=True)


def short_exc(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}".strip()
    s = " ".join(s.split())
    return s if len(s) <= 300 else s[:297] + "..."


# --------------------------------------------------------------------------- timeouts


class BenchTimeout(Exception):
    pass


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP: stop measuring, tear down, print what was measured."""


INTERRUPTED = threading.Event()
TEARING_DOWN = threading.Event()


def _on_signal(signum, frame):
    first = not INTERRUPTED.is_set()
    INTERRUPTED.set()
    if TEARING_DOWN.is_set():
        return  # never abort the teardown itself
    if first:
        raise Interrupted(signal.Signals(signum).name)


def check_interrupted():
    # a signal exception can be swallowed when it lands in a gc callback or __del__
    if INTERRUPTED.is_set() and not TEARING_DOWN.is_set():
        raise Interrupted("signal")


@contextlib.contextmanager
def deadline(seconds: float, what: str = ""):
    """Raise BenchTimeout in the main thread after `seconds` (SIGALRM based).

    Blocking waits on locks/events and blocking zmq calls are interrupted by signals on
    POSIX, so a hung system costs at most `seconds` per call site.
    """
    if not seconds or seconds <= 0:
        yield
        return

    def _handler(signum, frame):
        raise BenchTimeout(f"timed out after {seconds:.0f} s{(' in ' + what) if what else ''}")

    old = signal.signal(signal.SIGALRM, _handler)
    # re-fires every 5 s: an exception raised inside a gc callback or __del__ is swallowed
    signal.setitimer(signal.ITIMER_REAL, seconds, 5.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def captured_output():
    """Swallow Python-level stdout/stderr (progress bars, banners); give it back on error."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    except BaseException:
        out = buf.getvalue().strip()
        if out:
            log("    captured output:\n      " + "\n      ".join(out.splitlines()[-20:]))
        raise


# --------------------------------------------------------------------------- processes


class ProcTracker:
    """Remembers every descendant process seen, so that nothing is left behind."""

    HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")

    def __init__(self):
        self.me = psutil.Process() if psutil else None
        self.seen: dict[int, tuple[float, str]] = {}  # pid -> (create_time, owner)
        self.quiet_wait = 0.0
        self.quiet_calls = 0
        self.unsettled = 0

    def snapshot(self, owner: str = "?"):
        if not self.me:
            return
        try:
            kids = self.me.children(recursive=True)
        except psutil.Error:
            return
        for p in kids:
            try:
                ct = p.create_time()
            except psutil.Error:
                continue
            if p.pid not in self.seen or self.seen[p.pid][0] != ct:
                self.seen[p.pid] = (ct, owner)

    def _cpu(self) -> float:
        """CPU seconds used so far by all descendants plus this process's other threads."""
        tot = 0.0
        me_tid = threading.get_native_id()
        try:
            for t in self.me.threads():
                if t.id != me_tid:
                    tot += t.user_time + t.system_time
            kids = self.me.children(recursive=True)
        except psutil.Error:
            return tot
        for p in kids:
            try:
                c = p.cpu_times()
                tot += c.user + c.system
            except psutil.Error:
                pass
        return tot

    def quiesce(self, window=0.1, max_frac=0.10, max_wait=10.0):
        """Wait until the run's processes use < max_frac of one core over `window` s.

        Keeps one system's deferred work (a hub catching up on monitor traffic, a data
        copy still being freed) out of the next system's timed rep.
        """
        if not self.me:
            return
        t0 = time.monotonic()
        prev = self._cpu()
        while True:
            time.sleep(window)
            cur = self._cpu()
            if cur - prev < window * max_frac:
                break
            if time.monotonic() - t0 > max_wait:
                self.unsettled += 1
                break
            prev = cur
        self.quiet_wait += time.monotonic() - t0
        self.quiet_calls += 1

    def alive(self, owner: str | None = None):
        out = []
        if not self.me:
            return out
        for pid, (ct, who) in list(self.seen.items()):
            if owner is not None and who != owner:
                continue
            try:
                p = psutil.Process(pid)
                if p.create_time() != ct or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                out.append((p, who))
            except psutil.Error:
                continue
        return out

    def reap(self, grace: float = 5.0):
        """Wait `grace` s for tracked processes to exit, then terminate/kill them."""
        if not self.me:
            return []
        t_end = time.monotonic() + grace
        left = self.alive()
        while left and time.monotonic() < t_end:
            time.sleep(0.2)
            left = self.alive()
        report = []
        for p, who in left:
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                cmd = "?"
            if not any(h in cmd for h in self.HELPERS):
                report.append(f"{who}: pid {p.pid} {cmd[:120]}")
            with contextlib.suppress(psutil.Error):
                p.terminate()
        procs = [p for p, _ in left]
        if procs:
            _, still = psutil.wait_procs(procs, timeout=3)
            for p in still:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(still, timeout=3)
        return report


# --------------------------------------------------------------------------- systems


class Unsupported(Exception):
    """This metric does not apply to this system (shown as '-')."""


class System:
    name = "?"
    version = "?"

    def __init__(self):
        self.start_s = None
        self.stop_s = None
        self.timeouts = 0
        self.disabled = None  # reason string when the system is out of the run

    def start(self):
        raise NotImplementedError

    def stop(self):
        pass

    # metric reps: each returns a dict {key: value}
    def latency(self, n):
        raise Unsupported

    def apply_all(self, n):
        raise Unsupported

    def lb_map(self, n):
        raise Unsupported

    def push_pull(self, arr, check):
        raise Unsupported

    def scatter_gather(self, arr, check):
        raise Unsupported

    def cleanup(self, group):
        pass


def _noop():
    return None


class IpLike(System):
    """mpihub and ipyparallel share the same client API."""

    def __init__(self, name, modname, cluster_kwargs):
        super().__init__()
        self.name = name
        self.modname = modname
        self.cluster_kwargs = cluster_kwargs
        self.cluster = None
        self.rc = None

    def start(self):
        mod = importlib.import_module(self.modname)
        self.version = getattr(mod, "__version__", "?")
        self.cluster = mod.Cluster(**self.cluster_kwargs)
        with captured_output():
            rc = self.cluster.start_and_connect_sync()
        self.rc = rc
        t_end = time.monotonic() + 60
        while len(rc.ids) < 2:
            if time.monotonic() > t_end:
                raise RuntimeError(f"only {len(rc.ids)} engines registered: ids={rc.ids}")
            time.sleep(0.1)
        ids = sorted(rc.ids)
        self.e0 = rc[ids[0]]
        self.dv = rc[:]
        self.lb = rc.load_balanced_view()

    def stop(self):
        if self.rc is not None:
            with contextlib.suppress(Exception):
                self.rc.close()
        if self.cluster is not None:
            with captured_output():
                self.cluster.stop_cluster_sync()

    def latency(self, n):
        f = lambda: None  # noqa: E731
        e0 = self.e0
        ts = []
        for _ in range(n):
            t0 = perf()
            e0.apply_sync(f)
            ts.append(perf() - t0)
        return {"apply_latency": statistics.median(ts)}

    def apply_all(self, n):
        f = lambda: None  # noqa: E731
        dv = self.dv
        ts = []
        r = None
        for _ in range(n):
            t0 = perf()
            r = dv.apply_sync(f)
            ts.append(perf() - t0)
        if r is not None and len(r) != 2:
            raise AssertionError(f"rc[:].apply_sync returned {len(r)} results, expected 2")
        return {"apply_all_latency": statistics.median(ts)}

    def lb_map(self, n):
        f = lambda x: x  # noqa: E731
        t0 = perf()
        r = self.lb.map_async(f, range(n)).get()
        dt = perf() - t0
        r = list(r)
        if len(r) != n or r[-1] != n - 1:
            raise AssertionError(f"map returned {len(r)} results (last {r[-1:]}), expected {n}")
        return {"lb_map_tps": n / dt}

    def push_pull(self, arr, check):
        t0 = perf()
        self.e0.push({"a": arr}, block=True)
        t1 = perf()
        b = self.e0.pull("a", block=True)
        t2 = perf()
        if check and not (isinstance(b, np.ndarray) and np.array_equal(b, arr)):
            raise AssertionError(f"pulled data differs from pushed ({type(b).__name__})")
        del b
        return {"push_MBps": arr.nbytes / MB / (t1 - t0), "pull_MBps": arr.nbytes / MB / (t2 - t1)}

    def scatter_gather(self, arr, check):
        t0 = perf()
        self.dv.scatter("x", arr, block=True)
        t1 = perf()
        g = self.dv.gather("x", block=True)
        t2 = perf()
        if check:
            g = np.asarray(g)
            if g.shape != arr.shape or not np.array_equal(g, arr):
                raise AssertionError(f"gather returned {g.shape}, differs from scattered {arr.shape}")
        del g
        return {
            "sg_total_s": t2 - t0,
            "scatter_MBps": arr.nbytes / MB / (t1 - t0),
            "gather_MBps": arr.nbytes / MB / (t2 - t1),
        }

    def cleanup(self, group):
        if group == "push_pull":
            self.e0.push({"a": None}, block=True)
        elif group == "scatter_gather":
            self.dv.push({"x": None}, block=True)


class DaskSystem(System):
    name = "dask"

    def __init__(self):
        super().__init__()
        self.cluster = None
        self.client = None
        self._held = []

    def start(self):
        import distributed
        from distributed import Client, LocalCluster

        self.version = distributed.__version__
        with captured_output():
            self.cluster = LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            self.client = Client(self.cluster)
            self.client.wait_for_workers(2, timeout=60)
        self.workers = sorted(self.client.scheduler_info()["workers"])

    def stop(self):
        with captured_output():
            if self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.close(timeout=20)
            if self.cluster is not None:
                self.cluster.close(timeout=20)

    def latency(self, n):
        c, w0 = self.client, self.workers[:1]
        f = lambda: None  # noqa: E731
        ts = []
        for _ in range(n):
            t0 = perf()
            c.submit(f, pure=False, workers=w0).result()
            ts.append(perf() - t0)
        return {"apply_latency": statistics.median(ts)}

    def apply_all(self, n):
        c = self.client
        f = lambda: None  # noqa: E731
        ts = []
        for _ in range(n):
            t0 = perf()
            futs = [c.submit(f, pure=False, workers=[w], allow_other_workers=False) for w in self.workers]
            c.gather(futs)
            ts.append(perf() - t0)
        return {"apply_all_latency": statistics.median(ts)}

    def lb_map(self, n):
        c = self.client
        f = lambda x: x  # noqa: E731
        t0 = perf()
        futs = c.map(f, range(n), pure=False)
        r = c.gather(futs)
        dt = perf() - t0
        del futs
        if len(r) != n or r[-1] != n - 1:
            raise AssertionError(f"map returned {len(r)} results, expected {n}")
        return {"lb_map_tps": n / dt}

    def push_pull(self, arr, check):
        c = self.client
        t0 = perf()
        fut = c.scatter(arr, workers=self.workers[:1], hash=False, direct=True)
        t1 = perf()
        b = c.gather(fut, direct=True)
        t2 = perf()
        if check and not np.array_equal(b, arr):
            raise AssertionError("gathered data differs from scattered")
        del b, fut
        return {"push_MBps": arr.nbytes / MB / (t1 - t0), "pull_MBps": arr.nbytes / MB / (t2 - t1)}

    def scatter_gather(self, arr, check):
        c = self.client
        chunks = np.array_split(arr, len(self.workers))
        t0 = perf()
        futs = c.scatter(chunks, workers=self.workers, hash=False, direct=True)
        t1 = perf()
        g = np.concatenate(c.gather(futs, direct=True))
        t2 = perf()
        if check:
            where = c.who_has(futs)
            holders = {tuple(v) for v in where.values()}
            if len(holders) != len(self.workers):
                raise AssertionError(f"chunks not spread over workers: {where}")
            if not np.array_equal(g, arr):
                raise AssertionError("gathered data differs from scattered")
        del g, futs, chunks
        return {
            "sg_total_s": t2 - t0,
            "scatter_MBps": arr.nbytes / MB / (t1 - t0),
            "gather_MBps": arr.nbytes / MB / (t2 - t1),
        }


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


class ZmqSystem(System):
    """The ceiling: one tcp loopback hop between two Python processes with pyzmq."""

    name = "pyzmq"

    def __init__(self, nbytes):
        super().__init__()
        self.nbytes = nbytes
        self.ctx = None
        self.proc = None

    def start(self):
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

    def stop(self):
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

    def _wait_reply(self):
        """Poll in 1 s slices so that a dead server is an error, not a hang."""
        while not self.req.poll(1000):
            if self.proc.poll() is not None:
                raise RuntimeError(f"pyzmq server exited with code {self.proc.returncode}")

    def latency(self, n):
        req, payload = self.req, self.payload
        n = max(n * 5, 500)  # cheap: more samples
        self.req.send(payload)
        self._wait_reply()
        self.req.recv()
        ts = []
        for _ in range(n):
            t0 = perf()
            req.send(payload)
            req.recv()
            ts.append(perf() - t0)
        return {"apply_latency": statistics.median(ts)}

    def push_pull(self, arr, check):
        zmq, req = self.zmq, self.req
        t0 = perf()
        req.send(b"put", zmq.SNDMORE)
        req.send(arr, copy=False)
        self._wait_reply()
        n = int(req.recv())
        t1 = perf()
        req.send(b"get", zmq.SNDMORE)
        req.send(b"")
        self._wait_reply()
        fr = req.recv(copy=False)
        b = np.frombuffer(fr.buffer, dtype=np.float64)
        t2 = perf()
        if n != arr.nbytes or b.nbytes != self.nbytes:
            raise AssertionError(f"pyzmq moved {n} / {b.nbytes} bytes")
        del b, fr
        return {"push_MBps": arr.nbytes / MB / (t1 - t0), "pull_MBps": self.nbytes / MB / (t2 - t1)}


# --------------------------------------------------------------------------- metrics

# (key, group, label, unit, scale, higher_is_better)
ROWS = [
    ("apply_latency", "latency", "apply round trip, 1 engine", "ms", 1e3, False),
    ("apply_all_latency", "apply_all", "apply on all (2) engines", "ms", 1e3, False),
    ("lb_map_tps", "lb_map", "LB map {tasks} trivial tasks", "tasks/s", 1, True),
    ("push_MBps", "push_pull", "push {push_mb} MB to 1 engine", "MB/s", 1, True),
    ("pull_MBps", "push_pull", "pull {push_mb} MB from 1 engine", "MB/s", 1, True),
    ("sg_total_s", "scatter_gather", "scatter+gather {sg_mb} MB, 2 engines", "s", 1, False),
    ("scatter_MBps", "scatter_gather", "  scatter part", "MB/s", 1, True),
    ("gather_MBps", "scatter_gather", "  gather part", "MB/s", 1, True),
]

# key -> (reference system, factor, description). Ratio is always mpihub/reference of the
# displayed quantity: for times lower is better (PASS if ratio <= factor), for rates
# higher is better (PASS if ratio >= factor).
TARGETS = {
    "apply_latency": ("ipp", 0.25, "<= 0.25x ipp"),
    "lb_map_tps": ("ipp", 5.0, ">= 5x ipp"),
    "push_MBps": ("pyzmq", 0.8, ">= 0.8x pyzmq"),
    "pull_MBps": ("pyzmq", 0.8, ">= 0.8x pyzmq"),
}

SYSTEM_NOTES = {
    "pyzmq": "pyzmq column: REQ/REP 64 B echo for latency; zero-copy 100 MB one way "
    "(client->server for push, server->client for pull), timed to the reply.",
    "dask": "dask column: submit(...).result() to one worker; map+gather; "
    "scatter(direct=True)/gather(direct=True); 2 chunks for scatter+gather.",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~1 minute smoke run (fewer reps, fewer calls)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS),
                   help="comma list from: " + ",".join(ALL_SYSTEMS) + " (default: all)")
    p.add_argument("--mpihub-engines", default="local", help='engines= for mpihub.Cluster (default "local")')
    p.add_argument("--reps", type=int, help="override the number of reps of every metric")
    p.add_argument("--tasks", type=int, help="number of tasks for the LB map (default 5000, quick 1000)")
    p.add_argument("--push-mb", type=float, default=100.0, help="push/pull array size in MB (default 100)")
    p.add_argument("--sg-mb", type=float, default=400.0, help="scatter+gather array size in MB (default 400)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds allowed per rep of one metric on one system (default 120, quick 60)")
    a = p.parse_args(argv)
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    bad = [s for s in a.systems if s not in ALL_SYSTEMS]
    if bad:
        p.error(f"unknown systems {bad}; choose from {ALL_SYSTEMS}")
    if a.quick:
        cfg = dict(lat_calls=50, lat_reps=3, all_calls=30, all_reps=3, tasks=1000, map_reps=2,
                   pp_reps=3, sg_reps=2, timeout=60, slow=20)
    else:
        cfg = dict(lat_calls=200, lat_reps=5, all_calls=100, all_reps=5, tasks=5000, map_reps=3,
                   pp_reps=7, sg_reps=5, timeout=120, slow=45)
    if a.reps:
        for k in ("lat_reps", "all_reps", "map_reps", "pp_reps", "sg_reps"):
            cfg[k] = a.reps
    if a.tasks:
        cfg["tasks"] = a.tasks
    if a.timeout:
        cfg["timeout"] = a.timeout
    cfg["push_bytes"] = int(a.push_mb * MB) // 8 * 8
    cfg["sg_bytes"] = int(a.sg_mb * MB) // 8 * 8
    a.cfg = cfg
    return a


def make_system(name, args):
    if name == "mpihub":
        return IpLike("mpihub", "mpihub", dict(n=2, engines=args.mpihub_engines))
    if name == "ipp":
        return IpLike("ipp", "ipyparallel", dict(n=2))
    if name == "ipp-nodb":
        return IpLike("ipp-nodb", "ipyparallel", dict(n=2, controller_args=["--nodb", "--log-level=WARN"]))
    if name == "dask":
        return DaskSystem()
    if name == "pyzmq":
        return ZmqSystem(args.cfg["push_bytes"])
    raise ValueError(name)


def run_group(group, systems, reps, rep_fn, warm_fn, cfg, results, tracker):
    """Run one metric group: warm up every system, then `reps` rounds, alternating systems.

    The warmup is untimed; for the data metrics it moves a small array (checked) and then
    the full-size one once, so that first-touch page faults and allocator growth on both
    sides are not in the first timed rep.
    """
    active = [s for s in systems if not s.disabled]
    timeout, slow = cfg["timeout"], cfg["slow"]
    state = {}  # name -> "ok" | "unsupported" | "error"

    def record_error(s, e, where):
        msg = short_exc(e)
        if isinstance(e, BenchTimeout):
            s.timeouts += 1
            if s.timeouts >= 2:
                s.disabled = f"disabled after {s.timeouts} timeouts"
        log(f"    {s.name}: {where} failed: {msg}")
        if not isinstance(e, (BenchTimeout, AssertionError)):
            tb = traceback.format_exc().strip().splitlines()
            log("      " + "\n      ".join(tb[-6:]))
        state[s.name] = "error"
        for key in group_keys(group):
            results.setdefault(key, {}).setdefault(s.name, {"reps": []})["error"] = f"{where}: {msg}"

    for s in active:
        check_interrupted()
        tracker.quiesce()
        try:
            with deadline(timeout, f"{s.name} {group} warmup"):
                warm_fn(s)
            state[s.name] = "ok"
        except Unsupported:
            state[s.name] = "unsupported"
        except Exception as e:  # noqa: BLE001
            record_error(s, e, "warmup")
    runners = [s for s in active if state.get(s.name) == "ok"]
    for r in range(reps):
        k = r % len(runners) if runners else 0
        for s in runners[k:] + runners[:k]:
            if state[s.name] != "ok" or s.disabled:
                continue
            check_interrupted()
            tracker.quiesce()
            t0 = perf()
            try:
                with deadline(timeout, f"{s.name} {group} rep {r + 1}"):
                    vals = rep_fn(s, r)
            except Exception as e:  # noqa: BLE001
                record_error(s, e, f"rep {r + 1}")
                continue
            for key, v in vals.items():
                results.setdefault(key, {}).setdefault(s.name, {"reps": []})["reps"].append(v)
            if perf() - t0 > slow and r + 1 < reps:
                log(f"    {s.name}: one rep took {perf() - t0:.0f} s; skipping its remaining reps")
                state[s.name] = "done"
        gc.collect()
    for s in active:
        if state.get(s.name) in ("ok", "done", "error") and not s.disabled:
            try:
                with deadline(timeout, f"{s.name} {group} cleanup"):
                    s.cleanup(group)
            except Exception as e:  # noqa: BLE001
                log(f"    {s.name}: cleanup after {group} failed: {short_exc(e)}")
    tracker.snapshot("?")
    gc.collect()
    for key in group_keys(group):
        summary = []
        for s in systems:
            d = results.get(key, {}).get(s.name)
            if d and d["reps"]:
                d["median"] = statistics.median(d["reps"])
                summary.append(f"{s.name}={fmt_val(key, d['median'])}")
        log(f"  {key}: " + (", ".join(summary) if summary else "no values"))


def group_keys(group):
    return [k for k, g, *_ in ROWS if g == group]


def fmt_num(x):
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_val(key, v):
    row = next(r for r in ROWS if r[0] == key)
    return fmt_num(v * row[4]) + ("" if row[3] in ("tasks/s", "MB/s") else " " + row[3])


def versions():
    out = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    for mod in ("mpihub", "ipyparallel", "distributed", "zmq", "numpy"):
        try:
            m = importlib.import_module(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            out[mod] = None
            out[mod + "_error"] = short_exc(e)
    if out.get("zmq"):
        import zmq

        out["libzmq"] = zmq.zmq_version()
    return out


def build_table(args, systems, results, cfg):
    names = [s.name for s in systems]
    sysmap = {s.name: s for s in systems}
    fmt_ctx = dict(tasks=cfg["tasks"], push_mb=f"{cfg['push_bytes'] / MB:.0f}", sg_mb=f"{cfg['sg_bytes'] / MB:.0f}")
    header = ["metric", "unit"] + [LABELS[n] for n in names]
    ratio_cols = [r for r in ("ipp", "ipp-nodb", "pyzmq") if r in names]
    header += [f"mpihub/{r}" for r in ratio_cols] + ["target", "result"]
    rows, ratios_json, footnotes = [], {}, []

    def cell(key, name, scale):
        s = sysmap[name]
        d = results.get(key, {}).get(name)
        if d and d.get("median") is not None:
            txt = fmt_num(d["median"] * scale)
            if d.get("error"):
                footnotes.append(f"{name} / {key}: {d['error']} (median of the reps that ran)")
                txt += "*"
            return txt, d["median"]
        if d and d.get("error"):
            footnotes.append(f"{name} / {key}: {d['error']}")
            return "ERR", None
        if s.disabled and s.start_s is None:
            return "n/a", None
        if s.disabled:
            return "skip", None
        return "-", None

    for key, group, label, unit, scale, higher in ROWS:
        vals = {}
        line = [label.format(**fmt_ctx), unit]
        for n in names:
            txt, v = cell(key, n, scale)
            vals[n] = v
            line.append(txt)
        ratios_json[key] = {}
        for r in ratio_cols:
            a, b = vals.get("mpihub"), vals.get(r)
            if a is not None and b is not None and b != 0 and not (r == "pyzmq" and key not in ("push_MBps", "pull_MBps")):
                ratio = a / b
                ratios_json[key][r] = ratio
                line.append(f"{ratio:.2f}x")
            else:
                line.append("")
        tgt = TARGETS.get(key)
        if tgt:
            ref, factor, desc = tgt
            ratio = ratios_json[key].get(ref)
            if ratio is None:
                status = "n/a"
            elif (ratio >= factor) if higher else (ratio <= factor):
                status = "PASS"
            else:
                status = "MISS"
            ratios_json[key]["target"] = {"vs": ref, "factor": factor, "desc": desc, "status": status}
            line += [desc, status]
        else:
            line += ["(info)", ""]
        rows.append(line)

    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def fmt_line(r):
        parts = []
        for i, c in enumerate(r):
            parts.append(str(c).ljust(widths[i]) if i < 2 else str(c).rjust(widths[i]))
        return " | ".join(parts)

    out = [fmt_line(header), "-+-".join("-" * w for w in widths)]
    out += [fmt_line(r) for r in rows]
    return out, ratios_json, list(dict.fromkeys(footnotes))


def main(argv=None):
    args = parse_args(argv)
    cfg = args.cfg
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    tracker = ProcTracker()
    t_run = perf()

    # SIGINT/SIGTERM/SIGHUP -> Interrupted, so that the finally block tears everything down.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    ver = versions()
    log("=" * 100)
    log("mpihub core benchmark: 2 engines each, one run, systems alternated per rep, medians")
    log(f"mode: {'QUICK (smoke)' if args.quick else 'full'}; python {ver['python']}; {ver['cpus']} CPUs; "
        f"load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for mod, label in (("mpihub", "mpihub"), ("ipyparallel", "ipyparallel"), ("distributed", "dask.distributed"),
                       ("zmq", "pyzmq"), ("numpy", "numpy")):
        v = ver.get(mod)
        extra = f" (libzmq {ver.get('libzmq')})" if mod == "zmq" and v else ""
        log(f"  {label:17s} {v + extra if v else 'n/a (' + ver.get(mod + '_error', '') + ')'}")
    ippv = ver.get("ipyparallel")
    if ippv and not ippv.startswith("9.2"):
        log(f"  NOTE: ipyparallel {ippv} is installed, not 9.2.x: the ipp columns are that version")
    log(f"  config: {cfg}")
    log("=" * 100)

    systems = [make_system(n, args) for n in args.systems]
    results: dict = {}
    try:
        # ---- start
        for s in systems:
            log(f"starting {s.name} ...")
            t0 = perf()
            try:
                with deadline(180, f"{s.name} start"):
                    s.start()
                s.start_s = perf() - t0
                log(f"  {s.name} up in {s.start_s:.1f} s")
            except ImportError as e:
                s.disabled = f"not importable: {short_exc(e)}"
                log(f"  {s.name}: n/a ({s.disabled})")
            except Exception as e:  # noqa: BLE001
                s.disabled = f"start failed: {short_exc(e)}"
                log(f"  {s.name}: {s.disabled}")
                if not isinstance(e, BenchTimeout):
                    log("    " + "\n    ".join(traceback.format_exc().strip().splitlines()[-8:]))
            tracker.snapshot(s.name)

        # ---- metrics
        push_arr = np.arange(cfg["push_bytes"] // 8, dtype=np.float64)
        small = np.arange(1 << 17, dtype=np.float64)  # 1 MiB, for warmups

        log("latency ...")
        run_group("latency", systems, cfg["lat_reps"],
                  lambda s, r: s.latency(cfg["lat_calls"]), lambda s: s.latency(max(cfg["lat_calls"] // 4, 10)),
                  cfg, results, tracker)
        log("apply on all engines ...")
        run_group("apply_all", systems, cfg["all_reps"],
                  lambda s, r: s.apply_all(cfg["all_calls"]), lambda s: s.apply_all(10),
                  cfg, results, tracker)
        log(f"LB map of {cfg['tasks']} tasks ...")
        run_group("lb_map", systems, cfg["map_reps"],
                  lambda s, r: s.lb_map(cfg["tasks"]), lambda s: s.lb_map(max(cfg["tasks"] // 20, 50)),
                  cfg, results, tracker)
        log(f"push/pull {cfg['push_bytes'] / MB:.0f} MB ...")
        run_group("push_pull", systems, cfg["pp_reps"],
                  lambda s, r: s.push_pull(push_arr, check=(r == 0)), lambda s: (s.push_pull(small, check=True), s.push_pull(push_arr, check=False)),
                  cfg, results, tracker)
        push_arr = None  # noqa: F841  (free 100 MB before the 400 MB test)
        gc.collect()
        sg_arr = np.arange(cfg["sg_bytes"] // 8, dtype=np.float64)
        log(f"scatter+gather {cfg['sg_bytes'] / MB:.0f} MB ...")
        run_group("scatter_gather", systems, cfg["sg_reps"],
                  lambda s, r: s.scatter_gather(sg_arr, check=(r == 0)),
                  lambda s: (s.scatter_gather(small, check=True), s.scatter_gather(sg_arr, check=False)),
                  cfg, results, tracker)
        sg_arr = None  # noqa: F841
        gc.collect()
    except (Interrupted, KeyboardInterrupt) as e:
        INTERRUPTED.set()
        log(f"interrupted ({e}): tearing down")
    finally:
        TEARING_DOWN.set()
        # ---- stop everything, whatever happened
        for s in systems:
            tracker.snapshot(s.name if s.start_s is not None else "?")
            if s.start_s is None and not getattr(s, "cluster", None) and not getattr(s, "proc", None):
                continue
            t0 = perf()
            try:
                with deadline(60, f"{s.name} stop"):
                    s.stop()
                s.stop_s = perf() - t0
            except BaseException as e:  # noqa: BLE001
                log(f"  stopping {s.name} failed: {short_exc(e)}")
        leftovers = tracker.reap(grace=5.0)

    # ---- report
    lines, ratios, footnotes = build_table(args, systems, results, cfg)
    log("")
    log("=" * 100)
    log(f"RESULTS ({'quick' if args.quick else 'full'} run; medians; ratio = mpihub / peer of the shown value)")
    for line in lines:
        log(line)
    log("")
    log("latency rows: lower is better (target ratio <= factor); rates: higher is better (ratio >= factor).")
    for n in [s.name for s in systems]:
        if n in SYSTEM_NOTES:
            log(SYSTEM_NOTES[n])
    for s in systems:
        if s.disabled:
            log(f"{s.name}: {s.disabled}")
    for f in footnotes:
        log(f"* {f}")
    log("")
    log("spread over reps (median [min - max], n):")
    for key, group, label, unit, scale, higher in ROWS:
        parts = []
        for s in systems:
            d = results.get(key, {}).get(s.name)
            if d and d["reps"]:
                rs = [x * scale for x in d["reps"]]
                parts.append(f"{s.name} {fmt_num(statistics.median(rs))} [{fmt_num(min(rs))}-{fmt_num(max(rs))}] n={len(rs)}")
        if parts:
            log(f"  {key:18s} {unit:8s} " + "; ".join(parts))
    log("start/stop seconds: " + ", ".join(
        f"{s.name} {fmt_num(s.start_s)}/{fmt_num(s.stop_s)}" for s in systems if s.start_s is not None))
    log(f"waited {tracker.quiet_wait:.1f} s in total for a quiet machine before {tracker.quiet_calls} reps/warmups"
        + (f"; {tracker.unsettled} times it did not settle within 10 s" if tracker.unsettled else ""))
    if leftovers:
        log("processes still alive after teardown (killed):")
        for line in leftovers:
            log("  " + line)
    else:
        log("no processes left behind")
    log(f"total run time {perf() - t_run:.0f} s")

    if args.json:
        doc = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "mode": "quick" if args.quick else "full",
            "config": cfg,
            "versions": ver,
            "systems": {
                s.name: {"label": LABELS[s.name], "version": s.version if s.start_s is not None else None,
                         "start_s": s.start_s, "stop_s": s.stop_s, "disabled": s.disabled}
                for s in systems
            },
            "units": {k: u for k, g, l, u, sc, h in ROWS},
            "scale_to_unit": {k: sc for k, g, l, u, sc, h in ROWS},
            "results": results,
            "ratios": ratios,
            "leftover_processes": leftovers,
            "quiesce": {"wait_s": tracker.quiet_wait, "calls": tracker.quiet_calls, "unsettled": tracker.unsettled},
            "table": lines,
        }
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        log(f"JSON written to {args.json}")
    return 130 if INTERRUPTED.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())

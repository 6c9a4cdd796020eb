#!/usr/bin/env python3
"""Load balancing, side by side: mpihub, ipyparallel and dask.distributed.

Two engines / single-threaded worker processes each, all up at once, systems alternating
within every rep:

  throughput   20,000 trivial tasks through the load-balanced view, chunksize 1 (tasks/s)
  latency      one trivial task, submission to result (median of 200, ms)
  efficiency   1,000 tasks of 10 ms each: ideal time (10 s / 2 engines) / measured time

dask: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``,
``client.map(f, ..., pure=False)`` + ``client.gather``; ``client.submit(f).result()``.

Usage: python bench/bench_lb.py [--reps N] [--tasks N] [--systems mpihub,ipp,dask]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import time

ENGINES = 2


def noop(x=None):
    return x


def sleep_10ms(x):
    import time  # ipyparallel runs __main__ functions in the engine namespace

    time.sleep(0.01)
    return x


class IpLike:
    """mpihub and ipyparallel share the client API."""

    def __init__(self, name: str, module, **cluster_kwargs):
        self.name = name
        self.cluster = module.Cluster(n=ENGINES, **cluster_kwargs)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(ENGINES, timeout=120)
        self.lbview = self.rc.load_balanced_view()

    def run_map(self, f, items) -> list:
        return list(self.lbview.map_async(f, items).get())

    def one(self, f):
        return self.lbview.apply_sync(f)

    def stop(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.rc.close()
            self.cluster.stop_cluster_sync()


class Dask:
    def __init__(self):
        from distributed import Client, LocalCluster

        self.name = "dask"
        self.cluster = LocalCluster(n_workers=ENGINES, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=logging.ERROR)
        self.client = Client(self.cluster)

    def run_map(self, f, items) -> list:
        return self.client.gather(self.client.map(f, items, pure=False))

    def one(self, f):
        return self.client.submit(f, pure=False).result()

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()


def start(name: str):
    if name == "mpihub":
        import mpihub

        return IpLike("mpihub", mpihub)
    if name == "ipp":
        import ipyparallel

        return IpLike("ipp", ipyparallel, log_level=40)
    return Dask()


def throughput(system, tasks: int, f=noop) -> float:
    started = time.perf_counter()
    results = system.run_map(f, range(tasks))
    elapsed = time.perf_counter() - started
    if len(results) != tasks or results[-1] != tasks - 1:
        raise AssertionError(f"{system.name}: {len(results)} results")
    return tasks / elapsed


def median_ms(call, calls: int) -> float:
    """The median time of ``calls`` calls of ``call()``, in ms."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def latency(system, calls: int = 200, f=noop) -> float:
    return median_ms(lambda: system.one(f), calls)


def efficiency(system, tasks: int = 1000, f=sleep_10ms) -> float:
    started = time.perf_counter()
    system.run_map(f, range(tasks))
    return tasks * 0.01 / ENGINES / (time.perf_counter() - started)


def side_by_side(names: list[str], start, metrics: dict, reps: int, warm_up) -> tuple[list[str], dict]:
    """Start each system (one that cannot start is reported and left out), warm it up,
    then measure every metric ``reps`` times, rotating the systems' order in each rep.
    Every system is stopped at the end. Returns the names measured and
    ``{(name, metric): [values]}``."""
    systems = []
    try:
        for name in names:
            try:
                systems.append(start(name))
            except Exception as exc:  # noqa: BLE001 - a missing peer is reported, not fatal
                print(f"{name} unavailable: {exc}")
        for s in systems:  # imports, connections, first pickles
            warm_up(s)
        values = {(s.name, m): [] for s in systems for m in metrics}
        for metric, measure in metrics.items():
            for rep in range(reps):
                for s in systems[rep % len(systems):] + systems[:rep % len(systems)]:
                    values[s.name, metric].append(measure(s))
        return [s.name for s in systems], values
    finally:
        for s in systems:
            with contextlib.suppress(Exception):
                s.stop()


def bench_args(doc: str, systems: str, reps: int = 3, **sizes: int) -> argparse.Namespace:
    """The side-by-side benchmarks' command line: ``--reps``, ``--systems`` (comma-
    separated) and an integer option per ``sizes`` entry (``tasks=20_000``: ``--tasks``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=reps)
    for name, default in sizes.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--systems", default=systems)
    return parser.parse_args()


def main() -> None:
    args = bench_args(__doc__, "mpihub,ipp,dask", tasks=20_000)
    metrics = {"throughput": lambda s: throughput(s, args.tasks), "latency": latency, "efficiency": efficiency}
    names, values = side_by_side(args.systems.split(","), start, metrics, args.reps, lambda s: throughput(s, 500))
    report(names, values, args)


def report(names, values, args) -> None:
    units = {"throughput": f"tasks/s ({args.tasks} tasks)", "latency": "ms, one task", "efficiency": "1000 x 10 ms"}
    print(f"\n{ENGINES} engines/workers, median of {args.reps} reps")
    print(f"{'metric':<34}" + "".join(f"{n:>10}" for n in names) + "".join(f"{'mpihub/' + n:>14}" for n in names[1:]))
    for metric, unit in units.items():
        medians = [statistics.median(values[n, metric]) for n in names]
        ratios = [medians[0] / m for m in medians[1:]] if names[0] == "mpihub" else []
        print(f"{metric + ' (' + unit + ')':<34}" + "".join(f"{m:>10.3g}" for m in medians)
              + "".join(f"{r:>13.2f}x" for r in ratios))
    for metric in units:
        print(f"  {metric:<11} " + "; ".join(f"{n} " + " ".join(f"{v:.3g}" for v in values[n, metric]) for n in names))


if __name__ == "__main__":
    main()

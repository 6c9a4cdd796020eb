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
import sys

from harness import Bench, bench_args, cell, ratio
from systems import Dask, IpLike, efficiency, noop, throughput

SYSTEMS = {
    "mpihub": lambda: IpLike("mpihub", "mpihub"),
    "ipp": lambda: IpLike("ipp", "ipyparallel", log_level=40),
    "dask": Dask,
}


def main() -> int:
    args = bench_args(__doc__, "mpihub,ipp,dask", tasks=20_000)
    bench = Bench([SYSTEMS[name]() for name in args.systems])
    with bench.running():
        bench.metrics({"throughput": lambda s: throughput(s, args.tasks),
                       "latency": lambda s: s.lb_latency(noop, 200) * 1e3,
                       "efficiency": efficiency},
                      args.reps, lambda s: throughput(s, 500))  # imports, connections, first pickles
    report(bench, args)
    bench.log_leftovers()
    return bench.exit_code


def report(bench: Bench, args: argparse.Namespace) -> None:
    names = bench.names()
    units = {"throughput": f"tasks/s ({args.tasks} tasks)", "latency": "ms, one task", "efficiency": "1000 x 10 ms"}
    print(f"\n2 engines/workers, median of {args.reps} reps")
    print(f"{'metric':<34}" + "".join(f"{n:>10}" for n in names) + "".join(f"{'mpihub/' + n:>14}" for n in names[1:]))
    for metric, unit in units.items():
        medians = [bench.median(metric, n) for n in names]
        ratios = [ratio(medians[0], m) for m in medians[1:]] if names[:1] == ["mpihub"] else []
        print(f"{metric + ' (' + unit + ')':<34}" + "".join(cell(m, 10, ".3g") for m in medians)
              + "".join(cell(r, 13, ".2f", "x") for r in ratios))
    for metric in units:
        print(bench.reps_line(metric, 11))


if __name__ == "__main__":
    sys.exit(main())

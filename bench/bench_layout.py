#!/usr/bin/env python3
"""The controller's layout: one process, or split (Hub, direct path, task scheduler),
and what the durable task store (``--db sqlite``) costs the one-process layout.

This is the benchmark that picks ``mpihub controller``'s default. Every system runs with
2 engines, up at once, alternating within every rep; ipyparallel 9.2 (its default,
multi-process controller) runs beside them as the reference:

  apply        DirectView apply round trip on one engine (median of 500, ms)
  apply all    DirectView apply on every engine (median of 200, ms)
  lb latency   one trivial load-balanced task, submission to result (median of 200, ms)
  throughput   20,000 trivial load-balanced tasks, chunksize 1 (tasks/s)
  efficiency   1,000 load-balanced tasks of 10 ms: ideal time / measured time

Usage: python bench/bench_layout.py [--reps N] [--tasks N] [--systems single,split,sqlite,ipp]
"""
from __future__ import annotations

import argparse
import functools
import sys

from harness import Bench, bench_args, cell, ratio
from systems import IpLike, efficiency, noop, throughput

CONTROLLER_ARGS = {"single": [], "split": ["--split"], "sqlite": ["--db", "sqlite"]}


def make_system(name: str) -> IpLike:
    if name == "ipp":
        return IpLike("ipp", "ipyparallel", log_level=40)
    return IpLike(name, "mpihub", controller_args=CONTROLLER_ARGS[name])


METRICS = {
    "apply, 1 engine (ms)": lambda s, args: s.apply_latency(noop, 500) * 1e3,
    "apply, all engines (ms)": lambda s, args: s.apply_all_latency(noop, 200) * 1e3,
    "lb latency, 1 task (ms)": lambda s, args: s.lb_latency(noop, 200) * 1e3,
    "lb throughput (tasks/s)": lambda s, args: throughput(s, args.tasks),
    "lb efficiency, 10 ms tasks": lambda s, args: efficiency(s),
}


def warm_up(system: IpLike) -> None:
    throughput(system, 500)
    system.apply_all_latency(noop, 50)


def main() -> int:
    args = bench_args(__doc__, "single,split,sqlite,ipp", tasks=20_000)
    bench = Bench([make_system(name) for name in args.systems])
    with bench.running():
        bench.metrics({metric: functools.partial(measure, args=args) for metric, measure in METRICS.items()},
                      args.reps, warm_up)
    report(bench, args)
    bench.log_leftovers()
    return bench.exit_code


def report(bench: Bench, args: argparse.Namespace) -> None:
    names = bench.names()
    print(f"\n2 engines, median of {args.reps} reps")
    ratios = [f"{other}/single" for other in ("split", "sqlite") if other in names]
    print(f"{'metric':<28}" + "".join(f"{n:>10}" for n in names) + "".join(f"{r:>14}" for r in ratios)
          + f"{'single/ipp':>12}")
    for metric in METRICS:
        medians = {n: bench.median(metric, n) for n in names}
        line = f"{metric:<28}" + "".join(cell(medians[n], 10, ".3g") for n in names)
        for other in ("split", "sqlite"):
            if "single" in medians and other in medians:
                line += cell(ratio(medians[other], medians["single"]), 13, ".2f", "x")
        if "single" in medians and "ipp" in medians:
            line += cell(ratio(medians["single"], medians["ipp"]), 11, ".2f", "x")
        print(line)
    print("ratios are of the values shown: for times lower is better, for rates and efficiency higher")
    for metric in METRICS:
        print(bench.reps_line(metric, 27))


if __name__ == "__main__":
    sys.exit(main())

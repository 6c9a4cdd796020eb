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

import functools
import statistics
import time

import bench_lb
from bench_lb import IpLike, bench_args, efficiency, latency, median_ms, side_by_side, throughput


def noop(x=None):  # defined here: __main__ functions travel by value, bench_lb's would not
    return x


def sleep_10ms(x):
    import time

    time.sleep(0.01)
    return x


def start(name: str) -> IpLike:
    if name == "ipp":
        import ipyparallel

        return IpLike("ipp", ipyparallel, log_level=40)
    import mpihub

    options = {"single": [], "split": ["--split"], "sqlite": ["--db", "sqlite"]}
    return IpLike(name, mpihub, controller_args=options[name])


def direct_latency(system: IpLike, calls: int, every: bool) -> float:
    view = system.rc[:] if every else system.rc[0]
    return median_ms(lambda: view.apply_sync(noop), calls)


METRICS = {
    "apply, 1 engine (ms)": lambda s, args: direct_latency(s, 500, every=False),
    "apply, all engines (ms)": lambda s, args: direct_latency(s, 200, every=True),
    "lb latency, 1 task (ms)": lambda s, args: latency(s, f=noop),
    "lb throughput (tasks/s)": lambda s, args: throughput(s, args.tasks, noop),
    "lb efficiency, 10 ms tasks": lambda s, args: efficiency(s, f=sleep_10ms),
}


def warm_up(system: IpLike) -> None:
    throughput(system, 500, noop)
    direct_latency(system, 50, every=True)


def main() -> None:
    args = bench_args(__doc__, "single,split,sqlite,ipp", tasks=20_000)
    metrics = {name: functools.partial(measure, args=args) for name, measure in METRICS.items()}
    names, values = side_by_side(args.systems.split(","), start, metrics, args.reps, warm_up)
    report(names, values, args)


def report(names: list[str], values: dict, args) -> None:
    print(f"\n{bench_lb.ENGINES} engines, median of {args.reps} reps")
    ratios = [f"{other}/single" for other in ("split", "sqlite") if other in names]
    print(f"{'metric':<28}" + "".join(f"{n:>10}" for n in names) + "".join(f"{r:>14}" for r in ratios)
          + f"{'single/ipp':>12}")
    for metric in METRICS:
        medians = {n: statistics.median(values[n, metric]) for n in names}
        line = f"{metric:<28}" + "".join(f"{medians[n]:>10.3g}" for n in names)
        for other in ("split", "sqlite"):
            if "single" in medians and other in medians:
                line += f"{medians[other] / medians['single']:>13.2f}x"
        if "single" in medians and "ipp" in medians:
            ratio = medians["single"] / medians["ipp"]
            line += f"{ratio:>11.2f}x"
        print(line)
    print("ratios are of the values shown: for times lower is better, for rates and efficiency higher")
    for metric in METRICS:
        print(f"  {metric:<27} " + "; ".join(f"{n} " + " ".join(f"{v:.3g}" for v in values[n, metric])
                                               for n in names))


if __name__ == "__main__":
    main()

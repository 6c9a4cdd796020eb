#!/usr/bin/env python3
"""What CurveZMQ encryption costs: mpihub with and without ``--curve``, beside
ipyparallel 9.2 with and without its ``enable_curve``.

Two engines, every system up at once, alternating within every rep:

  push      ``rc[0].push({"a": a}, block=True)`` of a 64 MiB float64 array (MB/s)
  pull      ``rc[0].pull("a", block=True)`` of it back (MB/s)
  apply     DirectView apply round trip on one engine (median of 300, ms)
  lb        5,000 trivial load-balanced tasks (tasks/s)

Usage: python bench/bench_curve.py [--reps N] [--mib N] [--systems plain,curve,ipp,ipp-curve]
"""
from __future__ import annotations

import functools
import statistics
import time

import numpy as np

from bench_lb import IpLike, bench_args, median_ms, side_by_side, throughput


def noop(x=None):  # defined here: __main__ functions travel by value
    return x


def start(name: str) -> IpLike:
    if name.startswith("ipp"):
        import ipyparallel

        curve = ["--IPController.enable_curve=True"] if name == "ipp-curve" else []
        return IpLike(name, ipyparallel, log_level=40, controller_args=curve)
    import mpihub

    return IpLike(name, mpihub, controller_args=["--curve"] if name == "curve" else [])


def push_rate(system: IpLike, array: np.ndarray) -> float:
    started = time.perf_counter()
    system.rc[0].push({"a": array}, block=True)
    return array.nbytes / (time.perf_counter() - started) / 1e6


def pull_rate(system: IpLike, array: np.ndarray) -> float:
    system.rc[0].push({"a": array}, block=True)
    started = time.perf_counter()
    back = system.rc[0].pull("a", block=True)
    elapsed = time.perf_counter() - started
    if back.nbytes != array.nbytes or back[-1] != array[-1]:
        raise AssertionError(f"{system.name}: pulled the wrong array")
    return array.nbytes / elapsed / 1e6


def main() -> None:
    args = bench_args(__doc__, "plain,curve,ipp,ipp-curve", reps=5, mib=64)
    array = np.arange(args.mib * (1 << 20) // 8, dtype=np.float64)
    metrics = {
        "push (MB/s)": functools.partial(push_rate, array=array),
        "pull (MB/s)": functools.partial(pull_rate, array=array),
        "apply, 1 engine (ms)": lambda s: median_ms(lambda: s.rc[0].apply_sync(noop), 300),
        "lb throughput (tasks/s)": lambda s: throughput(s, 5000, noop),
    }
    names, values = side_by_side(args.systems.split(","), start, metrics, args.reps,
                                 lambda s: (push_rate(s, array[:1 << 17]), throughput(s, 300, noop)))
    print(f"\n2 engines, {args.mib} MiB array, median of {args.reps} reps")
    print(f"{'metric':<26}" + "".join(f"{n:>11}" for n in names) + f"{'curve/plain':>13}")
    for metric in metrics:
        medians = {n: statistics.median(values[n, metric]) for n in names}
        line = f"{metric:<26}" + "".join(f"{medians[n]:>11.4g}" for n in names)
        if "plain" in medians and "curve" in medians:
            line += f"{medians['curve'] / medians['plain']:>12.2f}x"
        print(line)


if __name__ == "__main__":
    main()

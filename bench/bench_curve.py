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

import sys

import numpy as np

from harness import MB, Bench, bench_args, cell, ratio
from systems import IpLike, noop, throughput


def make_system(name: str) -> IpLike:
    if name.startswith("ipp"):
        curve = ["--IPController.enable_curve=True"] if name == "ipp-curve" else []
        return IpLike(name, "ipyparallel", log_level=40, controller_args=curve)
    return IpLike(name, "mpihub", controller_args=["--curve"] if name == "curve" else [])


def pull_rate(system: IpLike, array: np.ndarray) -> float:
    system.push(array)
    return array.nbytes / MB / system.pull(array, check=False)


def main() -> int:
    args = bench_args(__doc__, "plain,curve,ipp,ipp-curve", reps=5, mib=64)
    array = np.arange(args.mib * (1 << 20) // 8, dtype=np.float64)
    metrics = {
        "push (MB/s)": lambda s: array.nbytes / MB / s.push(array),
        "pull (MB/s)": lambda s: pull_rate(s, array),
        "apply, 1 engine (ms)": lambda s: s.apply_latency(noop, 300) * 1e3,
        "lb throughput (tasks/s)": lambda s: throughput(s, 5000),
    }
    bench = Bench([make_system(name) for name in args.systems])
    with bench.running():
        bench.metrics(metrics, args.reps, lambda s: (s.push(array[:1 << 17]), throughput(s, 300)))
    names = bench.names()
    print(f"\n2 engines, {args.mib} MiB array, median of {args.reps} reps")
    print(f"{'metric':<26}" + "".join(f"{n:>11}" for n in names) + f"{'curve/plain':>13}")
    for metric in metrics:
        medians = {n: bench.median(metric, n) for n in names}
        line = f"{metric:<26}" + "".join(cell(medians[n], 11, ".4g") for n in names)
        if "plain" in medians and "curve" in medians:
            line += cell(ratio(medians["curve"], medians["plain"]), 12, ".2f", "x")
        print(line)
    bench.log_leftovers()
    return bench.exit_code


if __name__ == "__main__":
    sys.exit(main())

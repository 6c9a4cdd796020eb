#!/usr/bin/env python3
"""MPI data movement, side by side: mpihub via MPI, mpihub via ZMQ, ipyparallel.

Four engines each, all clusters up at once, systems alternating within every rep:

  scatter+gather   400 MB (scatter a float64 array, gather it back, check it)
  push to all      100 MB (one array pushed to every engine: bcast for mpihub)

For each it reports the median seconds over reps and the bytes the client process put
on its TCP sockets (from ``ss -ti``: bytes_sent less bytes_retrans, over every socket this
process owns), so
"the client sends one copy" is measured, not assumed. Ratios are against ipyparallel.

Usage: python bench/bench_mpi.py [--reps N] [--sg-mb MB] [--push-mb MB] [--engines N]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

import numpy as np

from harness import MB, Bench, bench_args
from systems import Adapter, IpLike

def client_bytes_sent() -> int | None:
    """Bytes this process has sent on all its TCP sockets (None without ``ss``)."""
    try:
        out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total, mine = 0, False
    marker = f"pid={os.getpid()},"
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            mine = marker in line
        elif mine:  # what TCP sent, less its own retransmissions
            for field, sign in (("bytes_sent", 1), ("bytes_retrans", -1)):
                found = re.search(rf"{field}:(\d+)", line)
                total += sign * int(found.group(1)) if found else 0
    return total


def make_systems(wanted: list[str], engines: int) -> list[Adapter]:
    """Both mpihub columns on one cluster of MPI engines (the first one wanted starts it)."""
    systems: list[Adapter] = []
    owner = None
    for via in ("mpi", "zmq"):
        if f"mpihub-{via}" in wanted:
            s = IpLike(f"mpihub-{via}", "mpihub", n=engines, via=via, share=owner, engines="mpi")
            owner = owner or s
            systems.append(s)
    if "ipp" in wanted:
        systems.append(IpLike("ipp", "ipyparallel", n=engines, log_level=40))
    return systems


def measure(system: Adapter, op: str, arr: np.ndarray, check: bool) -> dict:
    """``{op: seconds, op + " bytes": client bytes sent}`` (no bytes without ``ss``)."""
    before = client_bytes_sent()
    if op == "scatter_gather":
        elapsed = sum(system.scatter_gather(arr, check))
    else:
        elapsed = system.push_all(arr)
    after = client_bytes_sent()
    system.forget("x", "y")
    out = {op: elapsed}
    if before is not None and after is not None:
        out[op + " bytes"] = after - before
    return out


def measure_op(bench: Bench, op: str, arr: np.ndarray, reps: int) -> None:
    bench.group([op, op + " bytes"], reps, lambda s, r: measure(s, op, arr, check=False),
                warm=lambda s: measure(s, op, arr, check=True))  # and a correctness check


def main() -> int:
    args = bench_args(__doc__, "mpihub-mpi,mpihub-zmq,ipp", reps=5, engines=4, sg_mb=400.0, push_mb=100.0)
    arrays = {"scatter_gather": np.random.default_rng(0).random(int(args.sg_mb * MB / 8)),
              "push_all": np.random.default_rng(1).random(int(args.push_mb * MB / 8))}
    bench = Bench(make_systems(args.systems, args.engines))
    with bench.running():
        for op, arr in arrays.items():
            measure_op(bench, op, arr, args.reps)
    report(bench, {op: arr.nbytes for op, arr in arrays.items()}, args)
    bench.log_leftovers()
    return bench.exit_code


def report(bench: Bench, nbytes: dict, args: argparse.Namespace) -> None:
    print(f"\n{args.engines} engines, median of {args.reps} reps; client MB = bytes the client sent "
          "(payload MB in brackets)")
    print(f"{'operation':<26}{'system':<13}{'seconds':>9}{'vs ipp':>9}{'client MB':>11}   [every rep]")
    for op in nbytes:
        label = f"{op.replace('_', ' ')} [{nbytes[op] / MB:.0f}]"
        base = bench.median(op, "ipp")
        for name in bench.names():
            times = bench.values(op, name)
            median = statistics.median(times) if times else None
            ratio = f"{base / median:.2f}x" if base and median else "n/a"
            sent = bench.values(op + " bytes", name)
            client = f"{sent[-1] / MB:.1f}" if sent else "n/a"
            spread = " ".join(f"{t:.2f}" for t in sorted(times))
            print(f"{label:<26}{name:<13}{f'{median:.3f}' if median is not None else '-':>9}{ratio:>9}"
                  f"{client:>11}   [{spread}]")
            label = ""


if __name__ == "__main__":
    sys.exit(main())

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
import contextlib
import io
import os
import re
import statistics
import subprocess
import time

import numpy as np

MB = 1e6


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


class System:
    """A started cluster with 4 engines and the two operations under test."""

    def __init__(self, name: str, engines: int):
        self.name, self.engines = name, engines

    def scatter_gather(self, arr: np.ndarray) -> np.ndarray:
        self.view.scatter("x", arr, block=True, **self.via)
        return self.view.gather("x", block=True, **self.via)

    def push_all(self, arr: np.ndarray) -> None:
        if self.via:
            self.view.bcast("y", arr, block=True, **self.via)
        else:
            self.view.push({"y": arr}, block=True)

    def clear(self) -> None:
        self.view.push({"x": None, "y": None}, block=True)


class Mpihub(System):
    """One of mpihub's two paths, on a shared cluster of MPI engines."""

    def __init__(self, name: str, engines: int, via: str, rc):
        super().__init__(name, engines)
        self.via = {"via": via}
        self.view = rc[:]

    def stop(self) -> None:
        pass


class Ipyparallel(System):
    def __init__(self, name: str, engines: int):
        super().__init__(name, engines)
        import ipyparallel as ipp

        self.via = {}
        self.cluster = ipp.Cluster(n=engines, log_level=40)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(engines, timeout=120)
        self.view = self.rc[:]

    def stop(self) -> None:
        self.rc.close()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.cluster.stop_cluster_sync()


def measure(system: System, op: str, arr: np.ndarray, check: bool) -> tuple[float, int | None]:
    before = client_bytes_sent()
    started = time.perf_counter()
    result = getattr(system, op)(arr)
    elapsed = time.perf_counter() - started
    after = client_bytes_sent()
    if check and op == "scatter_gather" and not np.array_equal(np.asarray(result), arr):
        raise AssertionError(f"{system.name}: gather returned different data")
    system.clear()
    return elapsed, (after - before if before is not None and after is not None else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--sg-mb", type=float, default=400.0)
    parser.add_argument("--push-mb", type=float, default=100.0)
    parser.add_argument("--systems", default="mpihub-mpi,mpihub-zmq,ipp")
    args = parser.parse_args()
    wanted = args.systems.split(",")
    systems: list[System] = []
    cluster = None
    try:
        if "mpihub-mpi" in wanted or "mpihub-zmq" in wanted:
            import mpihub

            cluster = mpihub.Cluster(n=args.engines, engines="mpi")
            rc = cluster.start_and_connect_sync()
            systems += [Mpihub(f"mpihub-{via}", args.engines, via, rc) for via in ("mpi", "zmq")
                        if f"mpihub-{via}" in wanted]
        if "ipp" in wanted:
            try:
                systems.append(Ipyparallel("ipp", args.engines))
            except Exception as exc:  # noqa: BLE001 - a missing peer is reported, not fatal
                print(f"ipyparallel unavailable: {exc}")
        arrays = {"scatter_gather": np.random.default_rng(0).random(int(args.sg_mb * MB / 8)),
                  "push_all": np.random.default_rng(1).random(int(args.push_mb * MB / 8))}
        times = {(s.name, op): [] for s in systems for op in arrays}
        sent = {}
        for op, arr in arrays.items():
            for s in systems:
                measure(s, op, arr, check=True)  # warm-up, and a correctness check
            for rep in range(args.reps):
                order = systems[rep % len(systems):] + systems[:rep % len(systems)]
                for s in order:
                    elapsed, nbytes = measure(s, op, arr, check=False)
                    times[s.name, op].append(elapsed)
                    sent[s.name, op] = nbytes
        report(systems, arrays, times, sent, args)
    finally:
        for s in reversed(systems):
            with contextlib.suppress(Exception):
                s.stop()
        if cluster is not None:
            cluster.stop_cluster_sync()


def report(systems, arrays, times, sent, args) -> None:
    print(f"\n{args.engines} engines, median of {args.reps} reps; client MB = bytes the client sent "
          "(payload MB in brackets)")
    print(f"{'operation':<26}{'system':<13}{'seconds':>9}{'vs ipp':>9}{'client MB':>11}   [every rep]")
    for op, arr in arrays.items():
        label = f"{op.replace('_', ' ')} [{arr.nbytes / MB:.0f}]"
        base = statistics.median(times["ipp", op]) if ("ipp", op) in times else None
        for s in systems:
            median = statistics.median(times[s.name, op])
            ratio = f"{base / median:.2f}x" if base else "n/a"
            nbytes = sent.get((s.name, op))
            client = f"{nbytes / MB:.1f}" if nbytes is not None else "n/a"
            spread = " ".join(f"{t:.2f}" for t in sorted(times[s.name, op]))
            print(f"{label:<26}{s.name:<13}{median:>9.3f}{ratio:>9}{client:>11}   [{spread}]")
            label = ""


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""mpihub at scale: thousands of engines on one controller, ipyparallel 9.2 beside it.

What has to hold at 1,000-4,000 engines is the controller's side: a registration storm,
heartbeats from every engine, one request fanned out to all of them and the replies
gathered, the engine table. Thousands of engine processes do not fit a 2-core machine,
so the first part uses **light engines** (``mpihub engine --many K``: K engines in one
process, each with its own sockets, registration, heartbeats and runner over the real
protocol; the controller cannot tell them from full engines), 512 to a host process by
default. Each size runs in two modes (``--modes``): ``direct``, every engine on task
and heartbeat connections of its own, and ``relay``, the task traffic of each host
process through one relay in it (``--relay``: one message per request to all its
engines, one per turn of their replies; heartbeats stay per engine). For every N (2
first, as the baseline, then ``--sizes``), one cluster at a time:

  registered     seconds from starting the host processes until all N engines are registered
  apply on all   ``rc[:].apply_sync(noop)``, median of at least ``--calls`` calls and 2 s; with the CPU ms
                 per call spent in the controller process and in this (client) process,
                 from /proc/<pid>/stat over those calls: on 2 cores the light engines
                 compete with both, so the CPU is what the controller and client would
                 cost with the engines on other nodes
  push 1 kB      ``rc[:].push({"y": <1,000 bytes>}, block=True)``, median of ``--calls``
  idle CPU       the controller's CPU (% of one core) over ``--idle`` s with the N engines idle
  LB map         ``rc.load_balanced_view()`` map of a no-op over ``--tasks`` items (tasks/s),
                 and its ratio to that of 2 light engines (one host) and to that of 2
                 engine processes (``mpihub.Cluster(n=2)``, measured first)
  rc.ids, rc.queue_status()   median latency of ``--calls`` calls
  stop           ``cluster.stop_cluster_sync()`` until the controller and every host exited

The second part starts ``--real`` engine **processes** (default 128) of mpihub, then of
mpihub behind their keeper's relay (``Cluster(n=N, relay=True)``), then of ipyparallel
9.2 (``ipp.Cluster(n=N)``), one system at a time (two at once would not fit 2 cores):
from ``Cluster(n=N)`` until all are registered, apply on all, a load-balanced map of
``--real-tasks`` no-ops, stop; and how many times better mpihub (without the relay) is
on each.

Every wait is bounded by ``--timeout``; one that runs out shows as ``timeout`` and the
run goes on. ``--plot PATH`` writes an SVG of apply-on-all and push against N.

Usage: python bench/bench_scale.py [--sizes 256,1024,4096] [--modes direct,relay] [--real 128] [--quick] [--no-ipp]
                                   [--plot docs/img/scale.svg]
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from harness import (INTERRUPTED, Bench, BenchTimeout, captured_output, deadline, log, median_time, perf,
                     pipe_table, short_exc)
from systems import IpLike, noop

CLOCK_TICK = 1 / os.sysconf("SC_CLK_TCK")
PUSH_PAYLOAD = np.arange(125, dtype=np.float64)  # 1,000 bytes
IPP_PUBLISHED_APPLY_1024_MS = 677.0  # ipyparallel's own figure for apply on 1,024 engines
HOST_EXIT_GRACE = 30.0  # seconds a light-engine host gets to exit after the controller stopped

Value = float | str  # a measured figure, or why there is none ("timeout", "failed")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid``, all its threads, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, indented, for a failure report."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError as e:
        return f"      ({path}: {short_exc(e)})"
    return "\n".join(f"      {line}" for line in text[-lines:]) or "      (empty)"


def host_sizes(n: int, per_process: int) -> list[int]:
    """``n`` engines over as few hosts of at most ``per_process`` as possible, evenly."""
    hosts = math.ceil(n / per_process)
    return [n // hosts + (i < n % hosts) for i in range(hosts)]


# --------------------------------------------------------------------------- the clusters


class Procs(IpLike):
    """``n`` engine processes of mpihub or ipyparallel. ``start()`` (which the harness
    bounds at 180 s) returns once the cluster is launched and a client connected;
    ``registered()`` waits, under the caller's own bound, for every engine."""

    def __init__(self, name: str, modname: str, n: int, **cluster_kwargs):
        super().__init__(name, modname, n, **cluster_kwargs)
        self.launched = 0.0

    def start(self) -> None:
        mod = importlib.import_module(self.modname)
        self.version = mod.__version__
        with captured_output():
            self.launch(mod)

    def launch(self, mod: ModuleType) -> None:
        """Start the controller and the engines, connect ``self.rc``; do not wait for the engines."""
        self.launched = perf()
        self.cluster = mod.Cluster(n=self.n, **self.cluster_kwargs)
        self.cluster.start_cluster_sync()
        if mod.__name__ == "mpihub":  # its connect_client_sync would wait for the engines
            self.rc = mod.Client(self.cluster.client_file)
        else:
            self.rc = self.cluster.connect_client_sync()

    def registered(self, timeout: float) -> dict[str, float]:
        """``{"start": seconds from launch until all n engines registered}``; then the views."""
        try:
            self.rc.wait_for_engines(self.n, timeout=timeout, interactive=False)
        except TimeoutError:
            self.report(f"{len(self.rc.ids)} of {self.n} engines registered within {timeout:.0f} s")
            raise
        seconds = perf() - self.launched
        self.e0 = self.rc[sorted(self.rc.ids)[0]]
        self.dv = self.rc[:]
        self.lb = self.rc.load_balanced_view()
        return {"start": seconds}

    def report(self, what: str) -> None:
        log(f"  {self.name}: {what}")


class LightCluster(Procs):
    """An mpihub controller (``Cluster(n=0)``) and ``n`` light engines in host processes;
    ``registered()`` counts from the start of the hosts."""

    def __init__(self, n: int, per_process: int, timeout: float, relay: bool = False):
        super().__init__(f"mpihub, {n} light{' behind relays' if relay else ''}", "mpihub", n)
        self.per_process, self.timeout, self.relay = per_process, timeout, relay
        self.hosts: list[subprocess.Popen] = []
        self.host_logs: list[Path] = []
        self.controller_pid = 0

    def launch(self, mod: ModuleType) -> None:
        self.cluster = mod.Cluster(n=0)
        self.rc = self.cluster.start_and_connect_sync()
        self.controller_pid = self.cluster._controller_process.pid
        self.launched = perf()
        for i, count in enumerate(host_sizes(self.n, self.per_process)):
            path = self.cluster.profile_dir / "log" / f"bench-scale-{self.cluster.cluster_id}-host{i}.log"
            with open(path, "wb") as out:
                self.hosts.append(subprocess.Popen(
                    [sys.executable, "-m", "mpihub", "engine", "--many", str(count), "--url-file",
                     str(self.cluster.engine_file), "--timeout", str(self.timeout),
                     *(["--relay"] if self.relay else [])],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            self.host_logs.append(path)

    def report(self, what: str) -> None:
        """Log ``what``, the hosts' exit codes and the tails of the hosts' and controller's logs."""
        super().report(what)
        for proc, path in zip(self.hosts, self.host_logs):
            log(f"    host pid {proc.pid}, exit code {proc.poll()}, {path}:\n{tail(path)}")
        controller = self.cluster._controller_process
        log(f"    controller pid {controller.pid}, exit code {controller.poll()}, {controller.log_path}:\n"
            f"{tail(controller.log_path)}")

    def stop(self) -> None:
        """Stop the cluster; the hosts exit when the controller tells their engines to.
        A host still alive after HOST_EXIT_GRACE s is killed and reported."""
        super().stop()
        end = time.monotonic() + HOST_EXIT_GRACE
        for proc in self.hosts:
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        stuck = [p for p in self.hosts if p.poll() is None]
        if stuck:
            self.report(f"{len(stuck)} host processes still alive {HOST_EXIT_GRACE:.0f} s after the "
                        "controller stopped: killed")
            for proc in stuck:
                proc.kill()
                proc.wait()


@dataclass
class Figures:
    """The figures of one system at one size: ``values[key]`` is a number or why there is none."""

    n: int
    values: dict[str, Value] = field(default_factory=dict)
    timeouts: int = 0

    def measure(self, key: str, timeout: float, call: Callable[[], dict[str, float]]) -> None:
        """Run ``call`` under a deadline of ``timeout`` s (and a little more, so that a wait
        inside it that is bounded by ``timeout`` itself runs out first and says why) and
        keep what it returns; after two timeouts at this size the remaining measures are
        skipped (the cluster is most likely stuck)."""
        if self.timeouts >= 2:
            self.values[key] = "skipped"
            return
        try:
            with deadline(timeout + 15, f"{key} at N={self.n}"):
                self.values.update(call())
        except (BenchTimeout, TimeoutError) as e:
            self.timeouts += 1
            self.values[key] = "timeout"
            log(f"    N={self.n} {key}: {short_exc(e)}")
        except Exception as e:  # noqa: BLE001 - report it and go on with the next measure
            self.values[key] = "failed"
            log(f"    N={self.n} {key} failed: {short_exc(e)}")

    def number(self, key: str) -> float | None:
        v = self.values.get(key)
        return v if isinstance(v, float) else None


def push_all_checked(system: LightCluster, calls: int) -> dict[str, float]:
    """Median ms of pushing 1 kB to every engine; then checks that every engine holds it."""
    median = statistics.median(system.push_all(PUSH_PAYLOAD) for _ in range(calls))
    back = system.dv.pull("y", block=True)
    if len(back) != system.n or not all(np.array_equal(b, PUSH_PAYLOAD) for b in back):
        raise AssertionError(f"pull after the push: {len(back)} values, not {system.n} copies of the payload")
    return {"push": median * 1e3}


def idle_cpu(system: LightCluster, seconds: float) -> dict[str, float]:
    """The controller's CPU, % of one core, over ``seconds`` with every engine idle."""
    time.sleep(1.0)  # let the last replies settle
    t0, c0 = perf(), cpu_seconds(system.controller_pid)
    time.sleep(seconds)
    return {"idle cpu": (cpu_seconds(system.controller_pid) - c0) / (perf() - t0) * 100}


def apply_ms(system: IpLike, calls: int) -> float:
    """Median ms of ``rc[:].apply_sync(noop)`` over ``calls`` calls, after 3 untimed ones."""
    system.apply_all_latency(noop, 3)
    return system.apply_all_latency(noop, calls) * 1e3


def apply_with_cpu(system: LightCluster, calls: int, least_s: float = 2.0) -> dict[str, float]:
    """The median ms of ``rc[:].apply_sync(noop)`` over at least ``calls`` calls and
    ``least_s`` seconds (after 3 untimed ones), and the CPU ms per call the controller and
    this (client) process spent; /proc counts CPU in 10 ms ticks, hence the seconds."""
    me = os.getpid()
    system.apply_all_latency(noop, 3)
    controller, client = cpu_seconds(system.controller_pid), cpu_seconds(me)
    times: list[float] = []
    started = perf()
    while len(times) < calls or perf() - started < least_s:
        t0 = perf()
        replies = system.dv.apply_sync(noop)
        times.append(perf() - t0)
    if len(replies) != system.n:
        raise AssertionError(f"rc[:].apply_sync returned {len(replies)} results, expected {system.n}")
    return {"apply": statistics.median(times) * 1e3,
            "apply ctl cpu": (cpu_seconds(system.controller_pid) - controller) * 1e3 / len(times),
            "apply client cpu": (cpu_seconds(me) - client) * 1e3 / len(times)}


def lb_rate(system: IpLike, tasks: int, reps: int) -> dict[str, float]:
    """Load-balanced no-op tasks per second, the median of ``reps`` maps of ``tasks``
    items, after an untimed map of 200."""
    system.lb_map(noop, 200)
    return {"lb": statistics.median(tasks / system.lb_map(noop, tasks) for _ in range(reps))}


def all_registered(figures: Figures, system: Procs, timeout: float) -> bool:
    """Time how long the started system takes to have all its engines registered;
    whether they all were (if not, nothing else is measured)."""
    if system.start_s is not None:
        figures.measure("start", timeout, lambda: system.registered(timeout))
    return isinstance(figures.values.get("start"), float)


def run_light(n: int, args: argparse.Namespace, relay: bool) -> Figures:
    """Start ``n`` light engines on a fresh controller (behind a relay per host process
    with ``relay``), measure, stop."""
    figures = Figures(n)
    system = LightCluster(n, args.per_process, args.timeout, relay)
    hosts = len(host_sizes(n, args.per_process))
    log(f"\nN={n}: {hosts} host process{'es' if hosts > 1 else ''} of light engines"
        f"{', each behind its relay' if relay else ''}")
    bench = Bench([system])
    with bench.running():
        if all_registered(figures, system, args.timeout):
            figures.measure("apply", args.timeout, lambda: apply_with_cpu(system, args.calls))
            figures.measure("push", args.timeout, lambda: push_all_checked(system, args.calls))
            figures.measure("ids", args.timeout,
                            lambda: {"ids": median_time(lambda: system.rc.ids, args.calls) * 1e3})
            figures.measure("queue_status", args.timeout,
                            lambda: {"queue_status": median_time(system.rc.queue_status, args.calls) * 1e3})
            figures.measure("idle cpu", args.timeout, lambda: idle_cpu(system, args.idle))
            figures.measure("lb", args.timeout, lambda: lb_rate(system, args.tasks, args.lb_reps))
        log("  " + ", ".join(f"{k} {fmt(v)}" for k, v in figures.values.items()))
    return finish(figures, system, bench)


def run_real(name: str, n: int, tasks: int, args: argparse.Namespace) -> Figures:
    """Start ``n`` engine processes of one system, measure (load-balanced maps of ``tasks``), stop."""
    figures = Figures(n)
    if name == "mpihub":
        system = Procs("mpihub", "mpihub", n)
    elif name == "relay":
        system = Procs("mpihub, relay", "mpihub", n, relay=True)
    else:
        system = Procs("ipp", "ipyparallel", n, log_level=40)
    log(f"\n{name}: {n} engine processes")
    bench = Bench([system])
    with bench.running():
        if all_registered(figures, system, args.timeout):
            figures.measure("apply", args.timeout, lambda: {"apply": apply_ms(system, args.calls)})
            figures.measure("lb", args.timeout, lambda: lb_rate(system, tasks, args.lb_reps))
        log(f"  {system.name} {system.version}: " + ", ".join(f"{k} {fmt(v)}" for k, v in figures.values.items()))
    return finish(figures, system, bench)


def finish(figures: Figures, system: Procs, bench: Bench) -> Figures:
    """After the teardown: the stop time, or why the start failed; the leftover processes."""
    if system.start_s is None:
        figures.values["start"] = "failed"
    figures.values["stop"] = system.stop_s if system.stop_s is not None else "failed"
    bench.log_leftovers()
    return figures


# --------------------------------------------------------------------------- tables


def fmt(v: Value | None) -> str:
    """Three significant digits (no exponent), the reason when there is no figure, '-' for none."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


@dataclass(frozen=True)
class Row:
    """A row of the light-engine table; ``limits`` maps N to the bound its value must meet
    (a floor when ``floor``, else a ceiling); no limits: information only."""

    key: str
    label: str
    unit: str
    limits: dict[int, float] = field(default_factory=dict)
    floor: bool = False

    def target(self) -> str:
        if not self.limits:
            return "(info)"
        bounds = sorted(set(self.limits.values()))
        op = ">=" if self.floor else "<="
        if len(bounds) == 1 and len(self.limits) > 1:
            return f"{op} {bounds[0]:g} at every N"
        return ", ".join(f"{op} {v:g} at {n:,}" for n, v in sorted(self.limits.items()))

    def result(self, by_size: dict[int, Figures]) -> str:
        """PASS/MISS over the sizes that were run; '' when no size with a bound was run."""
        judged = [(by_size[n].values.get(self.key), bound) for n, bound in self.limits.items() if n in by_size]
        if not judged:
            return ""
        ok = [isinstance(v, float) and (v >= bound if self.floor else v <= bound) for v, bound in judged]
        return "PASS" if all(ok) else "MISS"


def light_rows(sizes: list[int]) -> list[Row]:
    return [
        Row("start", "all registered after the hosts started", "s", {1024: 10.0, 4096: 30.0}),
        Row("apply", "rc[:].apply_sync(noop)", "ms", {1024: 50.0}),
        Row("apply ctl cpu", "  controller CPU per apply", "ms"),
        Row("apply client cpu", "  client CPU per apply", "ms"),
        Row("push", "rc[:].push(1 kB, block=True)", "ms", {1024: 50.0}),
        Row("idle cpu", "controller CPU, engines idle", "% core", {1024: 5.0}),
        Row("lb", "load-balanced map of no-ops", "tasks/s"),
        Row("lb vs light", "  vs 2 light engines (N=2)", "x", dict.fromkeys(sizes, 0.8), floor=True),
        Row("lb vs procs", "  vs 2 engine processes", "x", dict.fromkeys(sizes, 0.8), floor=True),
        Row("ids", "rc.ids", "ms"),
        Row("queue_status", "rc.queue_status()", "ms"),
        Row("stop", "stop the whole cluster", "s"),
    ]


def light_table(runs: list[Figures], sizes: list[int], procs: Figures) -> list[str]:
    """One column per N; the load-balanced rate also as a ratio to the first (2-engine)
    column and to 2 engine processes (``procs``)."""
    for key, base in (("lb vs light", runs[0].number("lb")), ("lb vs procs", procs.number("lb"))):
        for f in runs:
            lb = f.number("lb")
            f.values[key] = lb / base if lb is not None and base else None
    by_size = {f.n: f for f in runs}
    header = ["measure", "unit", *(f"N={f.n:,}" for f in runs), "target", "result"]
    rows = [[row.label, row.unit, *(fmt(f.values.get(row.key)) for f in runs), row.target(), row.result(by_size)]
            for row in light_rows(sizes)]
    return pipe_table(header, rows)


REAL_ROWS = [  # key, label, unit, lower is better
    ("start", "start N engines, all registered", "s", True),
    ("apply", "rc[:].apply_sync(noop)", "ms", True),
    ("lb", "load-balanced map of no-ops", "tasks/s", False),
    ("stop", "stop the whole cluster", "s", True),
]


def real_table(mpihub: Figures, ipp: Figures | None, relayed: Figures | None) -> list[str]:
    """mpihub (and its engines behind their keeper's relay) beside ipyparallel;
    ``better`` is how many times better mpihub is (without the relay)."""
    header = ["measure", "unit", "mpihub", "relay", "ipp", "better", "target", "result"]
    rows = []
    for key, label, unit, lower in REAL_ROWS:
        a, b = mpihub.number(key), ipp.number(key) if ipp else None
        better = (b / a if lower else a / b) if a and b else None
        targeted = key != "stop"
        rows.append([label, unit, fmt(mpihub.values.get(key)), fmt(relayed.values.get(key)) if relayed else "-",
                     fmt(ipp.values.get(key)) if ipp else "-", f"{better:.2f}x" if better is not None else "-",
                     ">= 5x" if targeted else "(info)",
                     ("PASS" if better >= 5 else "MISS") if targeted and better is not None else ""])
    return pipe_table(header, rows)


# --------------------------------------------------------------------------- plot


SERIES = {("direct", "apply"): ("#1f5fbf", "mpihub apply_sync, light"),
          ("direct", "push"): ("#2a9d3a", "mpihub push 1 kB, light"),
          ("relay", "apply"): ("#7aa7ef", "apply_sync, light, relays"),
          ("relay", "push"): ("#8fd19a", "push 1 kB, light, relays")}
MARK_COLORS = {"mpihub": "#0b2f6b", "relay": "#5b8fd9", "ipp": "#e07b00", "published": "#8a3ab9"}


def plot_svg(light: dict[str, list[Figures]], real: dict[str, Figures], path: Path, title: str) -> None:
    """Apply on all and push (ms) against N, log-log, as a hand-written SVG, for each
    mode of the light engines; the apply of the engine processes and ipyparallel's
    published 1,024-engine figure as marks."""
    series = {(mode, key): [(f.n, f.number(key)) for f in light.get(mode, []) if f.number(key)]
              for mode, key in SERIES}
    names = {"relay": "mpihub, relay,"}
    marks = [(f.n, f.number("apply"), MARK_COLORS[name], f"{names.get(name, name)} apply_sync, {f.n} processes")
             for name, f in real.items() if f.number("apply")]
    marks.append((1024, IPP_PUBLISHED_APPLY_1024_MS, MARK_COLORS["published"],
                  "ipyparallel, published (1,024 engines)"))
    xs = sorted({n for pts in series.values() for n, _ in pts} | {n for n, *_ in marks})
    ys = [v for pts in series.values() for _, v in pts] + [v for _, v, *_ in marks] + [50.0]
    width, height, left, right, top, bottom = 800, 440, 70, 300, 40, 50
    x_lo, x_hi = math.log10(xs[0]) - 0.15, math.log10(xs[-1]) + 0.25
    y_lo, y_hi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))

    def sx(n: float) -> float:
        return left + (math.log10(n) - x_lo) / (x_hi - x_lo) * (width - left - right)

    def sy(v: float) -> float:
        return height - bottom - (math.log10(v) - y_lo) / (y_hi - y_lo) * (height - top - bottom)

    def text(x: float, y: float, label: str, extra: str = "") -> str:
        return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{label}</text>'

    mid_x, mid_y = (left + width - right) / 2, (top + height - bottom) / 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           text(left, 22, title, ' font-size="14" font-weight="bold"')]
    for e in range(y_lo, y_hi + 1):
        y = sy(10 ** e)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(text(left - 6, y + 4, f"{10 ** e:g}", ' text-anchor="end"'))
    for n in xs:
        out.append(f'<line x1="{sx(n):.1f}" y1="{top}" x2="{sx(n):.1f}" y2="{height - bottom}" stroke="#eee"/>')
        out.append(text(sx(n), height - bottom + 16, f"{n:,}", ' text-anchor="middle"'))
    out += [f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
            'fill="none" stroke="#444"/>',
            text(mid_x, height - 12, "engines (N, log scale)", ' text-anchor="middle"'),
            text(16, mid_y, "ms per call (log scale)", f' text-anchor="middle" transform="rotate(-90 16 {mid_y})"'),
            f'<line x1="{left}" y1="{sy(50):.1f}" x2="{width - right}" y2="{sy(50):.1f}" stroke="#c00" '
            'stroke-dasharray="6 4"/>']
    legend = [("#c00", "target at 1,024 engines: 50 ms", "dash")]
    for key, pts in series.items():
        color, label = SERIES[key]
        if not pts:
            continue
        points = " ".join(f"{sx(n):.1f},{sy(v):.1f}" for n, v in pts)
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        for i, (n, v) in enumerate(pts):
            others = [p for other, opts in series.items() if other != key for m, p in opts if m == n]
            out.append(f'<circle cx="{sx(n):.1f}" cy="{sy(v):.1f}" r="3.5" fill="{color}"/>')
            # the upper value's label above and to the left of its point (off the rising lines, but
            # right of the first point, by the axis), the lower one's below and to the right
            if all(v > p or (v == p and key[1] == "apply") for p in others):
                place = (sx(n) + 6, sy(v) - 7, "") if i == 0 else (sx(n) - 6, sy(v) - 7, ' text-anchor="end"')
            else:
                place = (sx(n) + 6, sy(v) + 15, "")
            out.append(text(place[0], place[1], fmt(v), f' fill="{color}"{place[2]}'))
        legend.append((color, label, "line"))
    for n, v, color, label in marks:
        out.append(f'<rect x="{sx(n) - 4:.1f}" y="{sy(v) - 4:.1f}" width="8" height="8" fill="{color}"/>')
        out.append(text(sx(n) + 7, sy(v) - 6, fmt(v), f' fill="{color}"'))
        legend.append((color, label, "mark"))
    for i, (color, label, kind) in enumerate(legend):
        x, y = width - right + 14, top + 14 + 20 * i
        if kind == "mark":
            out.append(f'<rect x="{x + 8}" y="{y - 8}" width="8" height="8" fill="{color}"/>')
        else:
            dash = ' stroke-dasharray="6 4"' if kind == "dash" else ""
            out.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 24}" y2="{y - 4}" stroke="{color}" '
                       f'stroke-width="2"{dash}/>')
        out.append(text(x + 30, y, label))
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
    log(f"plot written to {path}")


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help="light-engine cluster sizes, comma separated "
                                                 "(default 256,1024,4096; quick 256,1024)")
    p.add_argument("--modes", default="direct,relay",
                   help="light-engine modes to run, comma separated: direct (each engine its own connections), "
                        "relay (one relay per host process) (default both)")
    p.add_argument("--per-process", type=int, default=512, help="light engines per host process (default 512)")
    p.add_argument("--real", type=int, default=None,
                   help="engine processes per system in the side-by-side part, 0 to skip (default 128; quick 32)")
    p.add_argument("--no-ipp", action="store_true", help="leave ipyparallel out of the side-by-side part")
    p.add_argument("--quick", action="store_true", help="a short run: smaller sizes, fewer calls and tasks")
    p.add_argument("--calls", type=int, default=None, help="calls per latency figure (default 20; quick 5)")
    p.add_argument("--tasks", type=int, default=None, help="load-balanced tasks per map, light engines "
                                                           "(default 5000; quick 1000)")
    p.add_argument("--real-tasks", type=int, default=None, help="load-balanced tasks per map, engine processes "
                                                                "(default 2000; quick 500)")
    p.add_argument("--lb-reps", type=int, default=None, help="maps per load-balanced figure (default 3; quick 1)")
    p.add_argument("--idle", type=float, default=None, help="seconds of idle controller CPU (default 10; quick 3)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds any one wait may take: start, registration, each measure (default 300; quick 120)")
    p.add_argument("--plot", type=Path, default=None, help="write an SVG plot of apply and push against N")
    args = p.parse_args()
    quick = args.quick
    defaults = {"sizes": "256,1024" if quick else "256,1024,4096", "real": 32 if quick else 128,
                "calls": 5 if quick else 20, "tasks": 1000 if quick else 5000, "real_tasks": 500 if quick else 2000,
                "lb_reps": 1 if quick else 3, "idle": 3.0 if quick else 10.0, "timeout": 120.0 if quick else 300.0}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        p.error(f"--sizes takes numbers separated by commas, not {args.sizes!r}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or not set(args.modes) <= {"direct", "relay"}:
        p.error(f"--modes takes direct and/or relay, not {','.join(args.modes)!r}")
    if any(n < 1 for n in args.sizes) or args.per_process < 1:
        p.error("sizes and --per-process must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    started = perf()
    log(f"bench_scale: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f} at the start")
    procs = run_real("mpihub", 2, args.tasks, args)  # the load-balanced baseline of 2 engine processes
    light: dict[str, list[Figures]] = {}
    for mode in args.modes:
        runs = light[mode] = []
        for n in [2] + [n for n in args.sizes if n != 2]:
            if INTERRUPTED.is_set():
                break
            runs.append(run_light(n, args, relay=mode == "relay"))
    real: dict[str, Figures] = {}
    for name in (["mpihub", "relay"] + ([] if args.no_ipp else ["ipp"])) if args.real else []:
        if INTERRUPTED.is_set():
            break
        real[name] = run_real(name, args.real, args.real_tasks, args)

    for mode, runs in light.items():
        how = ("each engine on connections of its own" if mode == "direct"
               else "the task traffic of each host process through its relay (--relay)")
        print(f"\nLIGHT ENGINES, {how}: one controller, N engines in host processes of up to "
              f"{args.per_process}, one N at a time;\nlatencies are medians of {args.calls} calls, load-balanced "
              f"maps of {args.tasks} tasks (median of {args.lb_reps}), idle CPU over {args.idle:g} s")
        if runs:
            print("\n".join(light_table(runs, args.sizes, procs)))
    print(f"apply: median of at least {args.calls} calls and 2 s; controller/client CPU: per apply on all, from "
          "/proc/<pid>/stat over those calls\n(the light engines share the cores with both); 2 engine processes "
          f"(mpihub.Cluster(n=2)): {fmt(procs.values.get('lb'))} tasks/s")
    if "mpihub" in real:
        then = "" if args.no_ipp else ", then ipyparallel"
        print(f"\nREAL ENGINE PROCESSES: {args.real} each, one system at a time (mpihub started, measured and "
              f"stopped, then mpihub with its engines behind their keeper's relay{then});\n"
              f"apply median of {args.calls} calls, load-balanced map of "
              f"{args.real_tasks} no-op tasks (median of {args.lb_reps}); better = ipp/mpihub for times, "
              "mpihub/ipp for rates")
        print("\n".join(real_table(real["mpihub"], real.get("ipp"), real.get("relay"))))
    if args.plot:
        plot_svg(light, real, args.plot,
                 f"mpihub, apply and push on all N light engines ({os.cpu_count()}-core VM)")
    log(f"load average {os.getloadavg()[0]:.2f} at the end; total run time {perf() - started:.0f} s")
    return 130 if INTERRUPTED.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())

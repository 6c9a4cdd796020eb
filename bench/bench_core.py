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
import gc
import importlib
import json
import os
import platform
import sys
import time
import warnings
from typing import Callable

try:
    import numpy as np
except ImportError:  # pragma: no cover
    sys.exit("bench_core.py needs numpy")

from harness import MB, Bench, Measure, fmt_num, log, parse_systems, perf, pipe_table, short_exc
from systems import Adapter, Dask, IpLike, Pyzmq, noop

ALL_SYSTEMS = ["mpihub", "ipp", "ipp-nodb", "dask", "pyzmq"]

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    a.systems = parse_systems(p, a.systems, ALL_SYSTEMS)
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


def make_system(name: str, args: argparse.Namespace) -> Adapter:
    if name == "mpihub":
        return IpLike("mpihub", "mpihub", engines=args.mpihub_engines)
    if name == "ipp":
        return IpLike("ipp", "ipyparallel")
    if name == "ipp-nodb":
        return IpLike("ipp-nodb", "ipyparallel", controller_args=["--nodb", "--log-level=WARN"])
    if name == "dask":
        return Dask()
    if name == "pyzmq":
        return Pyzmq(args.cfg["push_bytes"])
    raise ValueError(name)


def run_group(bench: Bench, group: str, reps: int, measure: Measure, warm: Callable[[Adapter], object],
              clear: Callable[[Adapter], object] | None = None) -> None:
    """One metric group through the harness, then its medians in one line per key.

    The warmup is untimed; for the data metrics it moves a small array (checked) and then
    the full-size one once, so that first-touch page faults and allocator growth on both
    sides are not in the first timed rep.
    """
    keys = [k for k, g, *_ in ROWS if g == group]
    bench.group(keys, reps, measure, warm, clear)
    for key in keys:
        summary = [f"{s.name}={fmt_val(key, bench.median(key, s.name))}" for s in bench.systems
                   if bench.median(key, s.name) is not None]
        log(f"  {key}: " + (", ".join(summary) if summary else "no values"))


def measure_calls(bench: Bench, cfg: dict) -> None:
    log("latency ...")
    run_group(bench, "latency", cfg["lat_reps"],
              lambda s, r: {"apply_latency": s.apply_latency(noop, cfg["lat_calls"])},
              lambda s: s.apply_latency(noop, max(cfg["lat_calls"] // 4, 10)))
    log("apply on all engines ...")
    run_group(bench, "apply_all", cfg["all_reps"],
              lambda s, r: {"apply_all_latency": s.apply_all_latency(noop, cfg["all_calls"])},
              lambda s: s.apply_all_latency(noop, 10))
    log(f"LB map of {cfg['tasks']} tasks ...")
    run_group(bench, "lb_map", cfg["map_reps"],
              lambda s, r: {"lb_map_tps": cfg["tasks"] / s.lb_map(noop, cfg["tasks"])},
              lambda s: s.lb_map(noop, max(cfg["tasks"] // 20, 50)))


def measure_push_pull(bench: Bench, cfg: dict, small: np.ndarray) -> None:
    arr = np.arange(cfg["push_bytes"] // 8, dtype=np.float64)

    def rep(s: Adapter, r: int) -> dict:
        push_s, pull_s = s.push_pull(arr, check=(r == 0))
        return {"push_MBps": arr.nbytes / MB / push_s, "pull_MBps": arr.nbytes / MB / pull_s}

    log(f"push/pull {cfg['push_bytes'] / MB:.0f} MB ...")
    run_group(bench, "push_pull", cfg["pp_reps"], rep,
              lambda s: (s.push_pull(small, check=True), s.push_pull(arr, check=False)),
              lambda s: s.forget("a"))


def measure_scatter_gather(bench: Bench, cfg: dict, small: np.ndarray) -> None:
    arr = np.arange(cfg["sg_bytes"] // 8, dtype=np.float64)

    def rep(s: Adapter, r: int) -> dict:
        scatter_s, gather_s = s.scatter_gather(arr, check=(r == 0))
        return {"sg_total_s": scatter_s + gather_s,
                "scatter_MBps": arr.nbytes / MB / scatter_s, "gather_MBps": arr.nbytes / MB / gather_s}

    log(f"scatter+gather {cfg['sg_bytes'] / MB:.0f} MB ...")
    run_group(bench, "scatter_gather", cfg["sg_reps"], rep,
              lambda s: (s.scatter_gather(small, check=True), s.scatter_gather(arr, check=False)),
              lambda s: s.forget("x"))


def fmt_val(key: str, v: float) -> str:
    row = next(r for r in ROWS if r[0] == key)
    return fmt_num(v * row[4]) + ("" if row[3] in ("tasks/s", "MB/s") else " " + row[3])


def versions() -> dict:
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


def build_table(bench: Bench, cfg: dict) -> tuple[list[str], dict, list[str]]:
    """The results table's lines, the ratios (with the targets' verdicts), the footnotes."""
    names = [s.name for s in bench.systems]
    sysmap = {s.name: s for s in bench.systems}
    fmt_ctx = dict(tasks=cfg["tasks"], push_mb=f"{cfg['push_bytes'] / MB:.0f}", sg_mb=f"{cfg['sg_bytes'] / MB:.0f}")
    header = ["metric", "unit"] + names
    ratio_cols = [r for r in ("ipp", "ipp-nodb", "pyzmq") if r in names]
    header += [f"mpihub/{r}" for r in ratio_cols] + ["target", "result"]
    rows, ratios_json, footnotes = [], {}, []

    def cell(key, name, scale):
        s = sysmap[name]
        d = bench.results.get(key, {}).get(name)
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
    return pipe_table(header, rows), ratios_json, list(dict.fromkeys(footnotes))


def log_banner(args: argparse.Namespace, ver: dict) -> None:
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
    log(f"  config: {args.cfg}")
    log("=" * 100)


def log_report(args: argparse.Namespace, bench: Bench, lines: list[str], footnotes: list[str], t_run: float) -> None:
    systems, tracker = bench.systems, bench.tracker
    log("")
    log("=" * 100)
    log(f"RESULTS ({'quick' if args.quick else 'full'} run; medians; ratio = mpihub / peer of the shown value)")
    for line in lines:
        log(line)
    log("")
    log("latency rows: lower is better (target ratio <= factor); rates: higher is better (ratio >= factor).")
    for s in systems:
        if s.name in SYSTEM_NOTES:
            log(SYSTEM_NOTES[s.name])
    for s in systems:
        if s.disabled:
            log(f"{s.name}: {s.disabled}")
    for f in footnotes:
        log(f"* {f}")
    log("")
    log("spread over reps (median [min - max], n):")
    for key, group, label, unit, scale, higher in ROWS:
        parts = bench.spread(key, scale)
        if parts:
            log(f"  {key:18s} {unit:8s} " + "; ".join(parts))
    log("start/stop seconds: " + ", ".join(
        f"{s.name} {fmt_num(s.start_s)}/{fmt_num(s.stop_s)}" for s in systems if s.start_s is not None))
    log(f"waited {tracker.quiet_wait:.1f} s in total for a quiet machine before {tracker.quiet_calls} reps/warmups"
        + (f"; {tracker.unsettled} times it did not settle within 10 s" if tracker.unsettled else ""))
    bench.log_leftovers()
    log(f"total run time {perf() - t_run:.0f} s")


def write_json(args: argparse.Namespace, bench: Bench, ver: dict, lines: list[str], ratios: dict) -> None:
    tracker = bench.tracker
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": "quick" if args.quick else "full",
        "config": args.cfg,
        "versions": ver,
        "systems": {
            s.name: {"label": s.name, "version": s.version if s.start_s is not None else None,
                     "start_s": s.start_s, "stop_s": s.stop_s, "disabled": s.disabled}
            for s in bench.systems
        },
        "units": {k: u for k, g, l, u, sc, h in ROWS},
        "scale_to_unit": {k: sc for k, g, l, u, sc, h in ROWS},
        "results": bench.results,
        "ratios": ratios,
        "leftover_processes": bench.leftovers,
        "quiesce": {"wait_s": tracker.quiet_wait, "calls": tracker.quiet_calls, "unsettled": tracker.unsettled},
        "table": lines,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    log(f"JSON written to {args.json}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = args.cfg
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    t_run = perf()
    ver = versions()
    log_banner(args, ver)
    bench = Bench([make_system(n, args) for n in args.systems], timeout=cfg["timeout"], slow=cfg["slow"],
                  quiesce=True)
    with bench.running():
        measure_calls(bench, cfg)
        small = np.arange(1 << 17, dtype=np.float64)  # 1 MiB, for warmups
        measure_push_pull(bench, cfg, small)
        gc.collect()  # free the push array before the scatter+gather one
        measure_scatter_gather(bench, cfg, small)
        gc.collect()
    lines, ratios, footnotes = build_table(bench, cfg)
    log_report(args, bench, lines, footnotes, t_run)
    if args.json:
        write_json(args, bench, ver, lines, ratios)
    return bench.exit_code


if __name__ == "__main__":
    sys.exit(main())

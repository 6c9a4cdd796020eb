"""The side-by-side harness every bench script uses.

All the systems of one run are up at the same time and every metric alternates between
them (A B C A B C ..., the starting system rotated every rep), so that the machine's
drift lands on every system alike; a script reports the median over reps, and the ratios
it prints come from one run. The harness also bounds every call with a deadline, turns
SIGINT/SIGTERM/SIGHUP into a clean teardown, and kills any process the run started that
is still alive at the end. What runs on each system is in systems.py.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import signal
import statistics
import threading
import time
import traceback
from typing import Callable, Iterator, Sequence

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with ipyparallel and distributed
    psutil = None

MB = 1e6  # decimal megabytes: MB/s = bytes / 1e6 / s
perf = time.perf_counter


def log(msg: str = "") -> None:
    print(msg, flush=True)


def short_exc(e: BaseException) -> str:
    """An exception as one line of at most 300 characters."""
    s = " ".join(f"{type(e).__name__}: {e}".split())
    return s if len(s) <= 300 else s[:297] + "..."


def median_time(call: Callable[[], object], calls: int) -> float:
    """The median time of ``calls`` calls of ``call()``, in seconds."""
    times = []
    for _ in range(calls):
        started = perf()
        call()
        times.append(perf() - started)
    return statistics.median(times)


# --------------------------------------------------------------------------- timeouts, signals


class BenchTimeout(Exception):
    """One call on one system ran past its deadline."""


class Unsupported(Exception):
    """This metric does not apply to this system (shown as '-')."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP: stop measuring, tear down, print what was measured."""


INTERRUPTED = threading.Event()
TEARING_DOWN = threading.Event()


def _on_signal(signum, frame):
    first = not INTERRUPTED.is_set()
    INTERRUPTED.set()
    if TEARING_DOWN.is_set():
        return  # never abort the teardown itself
    if first:
        raise Interrupted(signal.Signals(signum).name)


def check_interrupted() -> None:
    """Raise Interrupted if a signal came (its exception can be swallowed in a gc callback)."""
    if INTERRUPTED.is_set() and not TEARING_DOWN.is_set():
        raise Interrupted("signal")


@contextlib.contextmanager
def deadline(seconds: float | None, what: str = "") -> Iterator[None]:
    """Raise BenchTimeout in the main thread after ``seconds`` (SIGALRM based).

    Blocking waits on locks/events and blocking zmq calls are interrupted by signals on
    POSIX, so a hung system costs at most ``seconds`` per call site.
    """
    if not seconds or seconds <= 0:
        yield
        return

    def _handler(signum, frame):
        raise BenchTimeout(f"timed out after {seconds:.0f} s{(' in ' + what) if what else ''}")

    old = signal.signal(signal.SIGALRM, _handler)
    # re-fires every 5 s: an exception raised inside a gc callback or __del__ is swallowed
    signal.setitimer(signal.ITIMER_REAL, seconds, 5.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Swallow Python-level stdout/stderr (progress bars, banners); give it back on error."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    except BaseException:
        out = buf.getvalue().strip()
        if out:
            log("    captured output:\n      " + "\n      ".join(out.splitlines()[-20:]))
        raise


# --------------------------------------------------------------------------- processes


class ProcTracker:
    """Remembers every descendant process seen, so that nothing is left behind."""

    HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")

    def __init__(self):
        self.me = psutil.Process() if psutil else None
        self.seen: dict[int, tuple[float, str]] = {}  # pid -> (create_time, owner)
        self.quiet_wait = 0.0
        self.quiet_calls = 0
        self.unsettled = 0

    def snapshot(self, owner: str = "?") -> None:
        if not self.me:
            return
        try:
            kids = self.me.children(recursive=True)
        except psutil.Error:
            return
        for p in kids:
            try:
                ct = p.create_time()
            except psutil.Error:
                continue
            if p.pid not in self.seen or self.seen[p.pid][0] != ct:
                self.seen[p.pid] = (ct, owner)

    def _cpu(self) -> float:
        """CPU seconds used so far by all descendants plus this process's other threads."""
        tot = 0.0
        me_tid = threading.get_native_id()
        try:
            for t in self.me.threads():
                if t.id != me_tid:
                    tot += t.user_time + t.system_time
            kids = self.me.children(recursive=True)
        except psutil.Error:
            return tot
        for p in kids:
            try:
                c = p.cpu_times()
                tot += c.user + c.system
            except psutil.Error:
                pass
        return tot

    def quiesce(self, window: float = 0.1, max_frac: float = 0.10, max_wait: float = 10.0) -> None:
        """Wait until the run's processes use < max_frac of one core over ``window`` s.

        Keeps one system's deferred work (a hub catching up on monitor traffic, a data
        copy still being freed) out of the next system's timed rep.
        """
        if not self.me:
            return
        t0 = time.monotonic()
        prev = self._cpu()
        while True:
            time.sleep(window)
            cur = self._cpu()
            if cur - prev < window * max_frac:
                break
            if time.monotonic() - t0 > max_wait:
                self.unsettled += 1
                break
            prev = cur
        self.quiet_wait += time.monotonic() - t0
        self.quiet_calls += 1

    def alive(self) -> list:
        """(process, owner) of every tracked process still running."""
        out = []
        if not self.me:
            return out
        for pid, (ct, who) in list(self.seen.items()):
            try:
                p = psutil.Process(pid)
                if p.create_time() != ct or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                out.append((p, who))
            except psutil.Error:
                continue
        return out

    def reap(self, grace: float = 5.0) -> list[str]:
        """Wait ``grace`` s for tracked processes to exit, then terminate/kill them."""
        if not self.me:
            return []
        t_end = time.monotonic() + grace
        left = self.alive()
        while left and time.monotonic() < t_end:
            time.sleep(0.2)
            left = self.alive()
        report = []
        for p, who in left:
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                cmd = "?"
            if not any(h in cmd for h in self.HELPERS):
                report.append(f"{who}: pid {p.pid} {cmd[:120]}")
            with contextlib.suppress(psutil.Error):
                p.terminate()
        procs = [p for p, _ in left]
        if procs:
            _, still = psutil.wait_procs(procs, timeout=3)
            for p in still:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(still, timeout=3)
        return report


# --------------------------------------------------------------------------- the run


class System:
    """What the harness needs of a system: a name, start() and stop().

    stop() must also undo a start() that failed half way.
    """

    name = "?"
    version = "?"

    def __init__(self):
        self.start_s: float | None = None
        self.stop_s: float | None = None
        self.timeouts = 0
        self.disabled: str | None = None  # why the system is out of the run

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass


Measure = Callable[[System, int], dict]


class Bench:
    """One run: start the systems, measure them alternately, tear everything down.

    ``timeout`` bounds every warmup, rep and clear of one system; a rep longer than
    ``slow`` s ends that system's reps of the metric; with ``quiesce`` every warmup and
    rep waits for the run's processes to go idle first. ``results[key][system]`` holds
    ``reps`` (the values), ``median`` and ``error`` (why values are missing).
    """

    def __init__(self, systems: Sequence[System], *, timeout: float | None = 600, slow: float | None = None,
                 quiesce: bool = False):
        self.systems = list(systems)
        self.timeout, self.slow, self.quiesce = timeout, slow, quiesce
        self.tracker = ProcTracker()
        self.results: dict = {}
        self.leftovers: list[str] = []

    @contextlib.contextmanager
    def running(self) -> Iterator[Bench]:
        """Start every system; whatever happens in the block, stop them all after it.

        A signal ends the block early (it is not raised further): report what was measured.
        """
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _on_signal)
        try:
            self._start_all()
            yield self
        except (Interrupted, KeyboardInterrupt) as e:
            INTERRUPTED.set()
            log(f"interrupted ({e}): tearing down")
        finally:
            self._stop_all()

    def _start_all(self) -> None:
        for s in self.systems:
            log(f"starting {s.name} ...")
            t0 = perf()
            try:
                with deadline(180, f"{s.name} start"):
                    s.start()
                s.start_s = perf() - t0
                log(f"  {s.name} up in {s.start_s:.1f} s")
            except ImportError as e:
                s.disabled = f"not importable: {short_exc(e)}"
                log(f"  {s.name}: n/a ({s.disabled})")
            except Exception as e:  # noqa: BLE001 - a peer that cannot start is reported
                s.disabled = f"start failed: {short_exc(e)}"
                log(f"  {s.name}: {s.disabled}")
                if not isinstance(e, BenchTimeout):
                    log("    " + "\n    ".join(traceback.format_exc().strip().splitlines()[-8:]))
            self.tracker.snapshot(s.name)

    def _stop_all(self) -> None:
        TEARING_DOWN.set()
        for s in self.systems:
            self.tracker.snapshot(s.name if s.start_s is not None else "?")
            t0 = perf()
            try:
                with deadline(60, f"{s.name} stop"):
                    s.stop()
                if s.start_s is not None:
                    s.stop_s = perf() - t0
            except BaseException as e:  # noqa: BLE001
                log(f"  stopping {s.name} failed: {short_exc(e)}")
        self.leftovers = self.tracker.reap(grace=5.0)

    def _settle(self) -> None:
        check_interrupted()
        if self.quiesce:
            self.tracker.quiesce()

    def group(self, keys: Sequence[str], reps: int, measure: Measure,
              warm: Callable[[System], object] | None = None,
              clear: Callable[[System], object] | None = None) -> None:
        """Warm up every system (untimed), then ``reps`` rounds of ``measure(system, rep)``,
        the systems alternating and the first of each round rotated; then ``clear``.

        ``measure`` returns ``{key: value}`` for some of ``keys``. An error (or timeout) is
        printed and recorded for every key; that system's remaining reps are skipped.
        """
        active = [s for s in self.systems if s.start_s is not None and not s.disabled]
        state = {}  # name -> "ok" | "unsupported" | "error" | "done"

        def record_error(s: System, e: Exception, where: str) -> None:
            msg = short_exc(e)
            if isinstance(e, BenchTimeout):
                s.timeouts += 1
                if s.timeouts >= 2:
                    s.disabled = f"disabled after {s.timeouts} timeouts"
            log(f"    {s.name}: {where} failed: {msg}")
            if not isinstance(e, (BenchTimeout, AssertionError)):
                log("      " + "\n      ".join(traceback.format_exc().strip().splitlines()[-6:]))
            state[s.name] = "error"
            for key in keys:
                self._cell(key, s.name)["error"] = f"{where}: {msg}"

        for s in active:
            state[s.name] = "ok"
            if warm is None:
                continue
            self._settle()
            try:
                with deadline(self.timeout, f"{s.name} {keys[0]} warmup"):
                    warm(s)
            except Unsupported:
                state[s.name] = "unsupported"
            except Exception as e:  # noqa: BLE001
                record_error(s, e, "warmup")
        runners = [s for s in active if state[s.name] == "ok"]
        for r in range(reps):
            k = r % len(runners) if runners else 0
            for s in runners[k:] + runners[:k]:
                if state[s.name] != "ok" or s.disabled:
                    continue
                self._settle()
                t0 = perf()
                try:
                    with deadline(self.timeout, f"{s.name} {keys[0]} rep {r + 1}"):
                        values = measure(s, r)
                except Unsupported:
                    state[s.name] = "unsupported"
                    continue
                except Exception as e:  # noqa: BLE001
                    record_error(s, e, f"rep {r + 1}")
                    continue
                for key, v in values.items():
                    self._cell(key, s.name)["reps"].append(v)
                if self.slow and perf() - t0 > self.slow and r + 1 < reps:
                    log(f"    {s.name}: one rep took {perf() - t0:.0f} s; skipping its remaining reps")
                    state[s.name] = "done"
            gc.collect()
        for s in active:
            if clear is not None and state[s.name] != "unsupported" and not s.disabled:
                try:
                    with deadline(self.timeout, f"{s.name} {keys[0]} cleanup"):
                        clear(s)
                except Exception as e:  # noqa: BLE001
                    log(f"    {s.name}: cleanup after {keys[0]} failed: {short_exc(e)}")
        self.tracker.snapshot("?")
        gc.collect()
        for key in keys:
            for d in self.results.get(key, {}).values():
                if d["reps"]:
                    d["median"] = statistics.median(d["reps"])

    def metric(self, key: str, reps: int, measure: Callable[[System], float],
               warm: Callable[[System], object] | None = None) -> None:
        """A group of one key whose measure returns the value itself."""
        self.group([key], reps, lambda s, r: {key: measure(s)}, warm)

    def metrics(self, measures: dict[str, Callable[[System], float]], reps: int,
                warm: Callable[[System], object] | None = None) -> None:
        """One metric per entry, in order; ``warm`` runs once per system, before the first."""
        for i, (key, measure) in enumerate(measures.items()):
            self.metric(key, reps, measure, warm if i == 0 else None)

    def _cell(self, key: str, name: str) -> dict:
        return self.results.setdefault(key, {}).setdefault(name, {"reps": []})

    # ---- reading the results

    def names(self) -> list[str]:
        """The systems that started, in order."""
        return [s.name for s in self.systems if s.start_s is not None]

    def values(self, key: str, name: str) -> list:
        return self.results.get(key, {}).get(name, {}).get("reps", [])

    def median(self, key: str, name: str) -> float | None:
        return self.results.get(key, {}).get(name, {}).get("median")

    def spread(self, key: str, scale: float = 1) -> list[str]:
        """``name median [min-max] n=reps`` for every system with values for ``key``."""
        parts = []
        for s in self.systems:
            rs = [x * scale for x in self.values(key, s.name)]
            if rs:
                parts.append(f"{s.name} {fmt_num(statistics.median(rs))} [{fmt_num(min(rs))}-{fmt_num(max(rs))}]"
                             f" n={len(rs)}")
        return parts

    def reps_line(self, key: str, width: int) -> str:
        """``  key  name v v v; name v v v``: every rep of every started system."""
        return f"  {key:<{width}} " + "; ".join(f"{n} " + " ".join(f"{v:.3g}" for v in self.values(key, n))
                                               for n in self.names())

    def log_leftovers(self) -> None:
        if self.leftovers:
            log("processes still alive after teardown (killed):")
            for line in self.leftovers:
                log("  " + line)
        else:
            log("no processes left behind")

    @property
    def exit_code(self) -> int:
        return 130 if INTERRUPTED.is_set() else 0


# --------------------------------------------------------------------------- command line, tables


def bench_args(doc: str, systems: str, reps: int = 3, **sizes: float) -> argparse.Namespace:
    """The side-by-side scripts' command line: ``--reps``, ``--systems`` (a comma list from
    the default's names) and an option per ``sizes`` entry, of its default's type
    (``tasks=20_000``: ``--tasks N``; ``sg_mb=400.0``: ``--sg-mb MB``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=reps)
    for name, default in sizes.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--systems", default=systems)
    args = parser.parse_args()
    args.systems = parse_systems(parser, args.systems, systems.split(","))
    return args


def parse_systems(parser: argparse.ArgumentParser, text: str, choices: list[str]) -> list[str]:
    """The names of a ``--systems`` comma list; a usage error for one not in ``choices``."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in choices]
    if bad:
        parser.error(f"unknown systems {bad}; choose from {choices}")
    return names


def fmt_num(x: float | None) -> str:
    """About three significant digits, '-' for None."""
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def cell(value: float | None, width: int, spec: str, suffix: str = "") -> str:
    """``value`` right-aligned in ``width`` (with ``suffix`` after it), or '-' when missing."""
    if value is None:
        return f"{'-':>{width + len(suffix)}}"
    return f"{value:>{width}{spec}}{suffix}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def pipe_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a ``a | b | c`` table: the first two columns left-aligned, the rest right."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def fmt_line(r):
        return " | ".join(str(c).ljust(widths[i]) if i < 2 else str(c).rjust(widths[i]) for i, c in enumerate(r))

    return [fmt_line(header), "-+-".join("-" * w for w in widths)] + [fmt_line(r) for r in rows]

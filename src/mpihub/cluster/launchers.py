"""Launchers start processes and stop exactly those they started.

Each launcher records the PIDs it started; stopping signals only those PIDs, and only
while they still run the command it started (a recycled PID is left alone).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..process import pid_alive


def mpihub_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mpihub", *args]


def pid_runs_mpihub(pid: int) -> bool:
    """True if ``pid`` is alive and its command line is an mpihub process."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the recorded PID
    return b"mpihub" in b" ".join(cmdline)


def stop_pids(pids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left. Returns killed PIDs."""
    ours = [pid for pid in pids if pid_runs_mpihub(pid)]
    for pid in ours:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while any(pid_alive(p) for p in ours) and time.monotonic() < deadline:
        _reap(ours)
        time.sleep(0.05)
    killed = []
    for pid in ours:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    _reap(ours)
    return killed


def _reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


class LocalLauncher:
    """Runs mpihub processes on this machine, each with its own log file."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []
        self.forked: list[int] = []  # engines forked by a keeper among ``processes``

    def start(self, args: list[str], name: str, env: dict | None = None, prefix: list[str] = (),
              pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
        """Run ``mpihub ARGS`` (after ``prefix``, e.g. an mpiexec command line)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [*prefix, *mpihub_command(*args)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True, pass_fds=pass_fds,
            )
        process.log_path = log_path
        self.processes.append(process)
        return process

    def start_forks(self, args: list[str], n: int, name: str, env: dict | None = None) -> subprocess.Popen:
        """Run ``mpihub ARGS --fork n``: one keeper that imports once and forks ``n``
        engines (:mod:`mpihub.engine.forks`), each logging to ``<name>-<pid>.log``.
        Returns the keeper once every engine is forked; their PIDs join ``pids``."""
        read_end, write_end = os.pipe()
        try:
            keeper = self.start([*args, "--fork", str(n), "--fork-logs", str(self.log_dir / f"{name}-"),
                                 "--fork-report-fd", str(write_end)], name, env, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        with os.fdopen(read_end) as report:  # ends when the keeper has forked them all (or exited)
            self.forked.extend(int(line) for line in report)
        return keeper

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes] + self.forked

    def running(self) -> list[subprocess.Popen]:
        return [p for p in self.processes if p.poll() is None]

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop(self, grace: float = 5.0) -> None:
        """Signal what still runs; a keeper passes it on to its engines, and any engine
        that outlives its keeper is signalled itself."""
        stop_pids([p.pid for p in self.running()], grace)
        stop_pids([pid for pid in self.forked if pid_alive(pid)], grace)
        for process in self.processes:
            try:
                process.wait(1)
            except subprocess.TimeoutExpired:
                pass


#: Lets Open MPI's mpiexec run as root (CI and containers); MPICH ignores them.
OPEN_MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
#: Make waiting ranks yield the CPU often (MPICH; Open MPI's own switch), for more ranks
#: than cores: MPI waits by spinning, and spinning ranks starve the rank doing the work.
YIELD_WHEN_OVERSUBSCRIBED = {"MPIR_CVAR_POLLS_BEFORE_YIELD": "10", "OMPI_MCA_mpi_yield_when_idle": "1"}


def mpi_environment(ranks: int) -> dict[str, str]:
    """Variables for a local ``mpiexec`` job of ``ranks``; the user's own settings win."""
    wanted = dict(OPEN_MPI_AS_ROOT)
    if ranks > (os.cpu_count() or 1):
        wanted.update(YIELD_WHEN_OVERSUBSCRIBED)
    return {name: value for name, value in wanted.items() if name not in os.environ}


def find_mpiexec(explicit: str | None = None) -> str:
    """``explicit``, else ``$MPIHUB_MPIEXEC``, else the mpiexec beside this Python (the
    ``mpich`` wheel's), else the first on PATH (a site MPI)."""
    import shutil

    for candidate in (explicit, os.environ.get("MPIHUB_MPIEXEC")):
        if candidate:
            found = shutil.which(candidate)
            if not found:
                raise FileNotFoundError(f"mpiexec {candidate!r} not found or not executable")
            return found
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpiexec found: install mpihub[mpi] (it brings MPICH), load your site's "
                                "MPI, or pass mpiexec=PATH / set MPIHUB_MPIEXEC")
    return found

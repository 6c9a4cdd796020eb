"""Many full engines from one process: pay for Python and the imports once, then fork.

Most of an engine's start is Python's own start and the imports of numpy, pyzmq and
mpihub: about a quarter of a CPU-second, so 128 engines on a 2-core machine take 16 s
before the first one registers. ``mpihub engine --fork N`` pays it once: this process
imports the engine, then forks ``N`` children, each a full engine of its own (its own
process, sockets, heartbeat thread, namespace and signals), as if started alone.

This process stays as their **keeper**: it passes SIGTERM and SIGINT on to them, reaps
them, and exits when the last one has, with the first failing exit code among theirs.
Each child asks the kernel to kill it when its keeper dies (Linux), so killing the
keeper never leaves an engine behind. Before the forks no zmq context and no thread may
exist here (neither survives a fork): each child makes its own. Each child reseeds
numpy's global random generator (Python's ``random`` reseeds itself), or every engine
would draw the same numbers.

With ``--relay`` the keeper is also its engines' relay (:mod:`.relay`): they connect
their task sockets to it, over a Unix socket in a directory only this user can enter,
and it holds the one task connection to the controller. It starts the relay after the
forks (no zmq before a fork) and serves it until the last engine has exited.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import tempfile
import traceback
from typing import Callable

from . import keeper_relay

#: prctl(2) option: the signal a process gets when the thread that forked it dies.
PR_SET_PDEATHSIG = 1


def run(n: int, start_engine: Callable[[str | None], int], log_prefix: str | None = None,
        report_fd: int | None = None, relay_to: dict | None = None) -> int:
    """Fork ``n`` engines that each run ``start_engine(relay_url)`` (its return value is
    the child's exit code), wait for them all, and return the keeper's exit code.

    With ``log_prefix``, each child writes its output to ``<log_prefix><pid>.log``; with
    ``report_fd``, the keeper writes each child's PID there, one a line, and closes it
    once all are forked (a launcher reads them to know every process it started). With
    ``relay_to`` (the engine connection info), the keeper relays its engines' task
    traffic to that controller; ``relay_url`` is then where they reach it, else None.
    """
    if n < 1:
        raise ValueError(f"--fork starts at least one engine, not {n}")
    relay_dir = tempfile.mkdtemp(prefix="mpihub-relay-") if relay_to is not None else None  # mode 0700
    relay_url = f"ipc://{relay_dir}/relay" if relay_dir else None
    children: dict[int, int | None] = {}  # pid -> exit code, None while it runs
    stopping: list[int] = []

    def pass_on(signum, frame):
        stopping.append(signum)
        for pid, code in children.items():
            if code is None:
                _signal(pid, signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    keeper = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    for _ in range(n):
        if stopping:
            break
        pid = os.fork()
        if pid == 0:
            os._exit(_child(keeper, lambda: start_engine(relay_url), log_prefix, report_fd))
        children[pid] = None
        if report_fd is not None:
            os.write(report_fd, b"%d\n" % pid)
    if report_fd is not None:
        os.close(report_fd)
    if children:
        print(f"mpihub engine --fork: started {len(children)} engines, pids {min(children)} to {max(children)}",
              file=sys.stderr, flush=True)
    try:
        if relay_to is not None and children:
            keeper_relay.serve(relay_to, relay_url, lambda: _reap(children, os.WNOHANG))
        _reap(children, 0)
    finally:
        if relay_dir:
            shutil.rmtree(relay_dir, ignore_errors=True)
    failed = [code for code in children.values() if code]
    if failed:
        print(f"mpihub engine --fork: {len(failed)} of {len(children)} engines failed "
              f"(exit codes {sorted(set(failed))})", file=sys.stderr, flush=True)
    return _exit_status(failed[0]) if failed else 0


def _reap(children: dict[int, int | None], flags: int) -> bool:
    """Note the exit codes of children that ended (all of them, waiting, when ``flags``
    is 0; those that have, with ``os.WNOHANG``); whether any still runs."""
    while any(code is None for code in children.values()):
        try:
            pid, status = os.waitpid(-1, flags)
        except ChildProcessError:
            break
        if pid == 0:
            return True
        if pid in children:
            children[pid] = os.waitstatus_to_exitcode(status)
    return False


def _child(keeper: int, start_engine: Callable[[], int], log_prefix: str | None, report_fd: int | None) -> int:
    """In a forked child: become an engine of its own; returns its exit code."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if report_fd is not None:
            os.close(report_fd)
        _die_with(keeper)
        if log_prefix is not None:
            _log_to(f"{log_prefix}{os.getpid()}.log")
        _reseed()
        code = start_engine()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child's last word, in its log
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _die_with(keeper: int) -> None:
    """SIGKILL this process when its keeper dies (Linux; elsewhere the engine still
    leaves once its controller is gone)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != keeper:  # the keeper died before the prctl
        os._exit(1)


def _log_to(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _reseed() -> None:
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _exit_status(code: int) -> int:
    """A child's exit code as the keeper's (killed by signal N: 128 + N, as a shell says)."""
    return 128 - code if code < 0 else code

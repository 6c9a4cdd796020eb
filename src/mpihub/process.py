"""Process liveness (shared by the launchers and the controller's owner watch), and limits."""
from __future__ import annotations

import os
import resource
import signal
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


_wakeup_writers: list[socket.socket] = []


def signal_wakeup() -> socket.socket:
    """A socket that becomes readable when a signal arrives, to poll beside zmq sockets.

    A signal may be delivered to any thread; while the main thread sits in a C-level
    poll, Python's handler would wait for its next message. Polling this socket wakes it
    at once, so SIGTERM stops a process promptly. Main thread only.
    """
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    _wakeup_writers.append(writer)  # set_wakeup_fd holds only the number: keep the socket open
    return reader


def drain(reader: socket.socket) -> None:
    """Empty a :func:`signal_wakeup` socket (Python runs the handlers itself)."""
    try:
        while reader.recv(4096):
            pass
    except BlockingIOError:
        pass


def raise_fd_limit(needed: int = 0, what: str = "this process") -> int:
    """Raise this process's file-descriptor limit to its hard limit (where allowed);
    returns the limit now. A clear error names both limits when ``needed`` is more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if needed > soft:
        raise RuntimeError(fd_limit_message(needed, what, soft, hard))
    return soft


def fd_hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def fd_limit_message(needed: int, what: str, soft: int, hard: int) -> str:
    return (f"{what} needs about {needed} file descriptors, but may open only {soft} (`ulimit -n`; hard limit "
            f"{'unlimited' if hard < 0 else hard}): raise the hard limit (/etc/security/limits.conf, or the "
            "batch system's settings), or run fewer engines per process")

"""Process liveness, shared by the launchers and the controller's owner watch."""
from __future__ import annotations

import os
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

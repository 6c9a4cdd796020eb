"""Ports from a fixed set, for sites whose firewalls open only some.

By default every socket binds a random free port, which a firewall between the login
and the compute nodes blocks. ``mpihub controller --ports 50000-50009`` (or
``$MPIHUB_PORTS``) makes each controller socket take the first free port of the set
instead; ``mpihub engine --data-ports`` (``$MPIHUB_DATA_PORTS``) does the same for the
engines' data links. A port some other process holds is skipped, so the processes of
a split controller can share one set; a set that runs out is an error that says how
many ports are needed and which ones were taken.
"""
from __future__ import annotations

import logging
import os

import zmq

log = logging.getLogger("mpihub.ports")

#: The environment variables that carry a port set to child processes and batch jobs.
CONTROLLER_PORTS_ENV = "MPIHUB_PORTS"
DATA_PORTS_ENV = "MPIHUB_DATA_PORTS"

#: Ports a controller binds: client, engine, heartbeat; a split one adds the Hub's path
#: port and a client and an engine port for each of its two paths.
CONTROLLER_PORTS_NEEDED = {"one process": 3, "--split": 8}


class PortsExhausted(RuntimeError):
    """No free port is left in the set for a socket."""


def parse(spec: str) -> list[int]:
    """``"50000-50004,50010"`` -> the ports in that order; ValueError says what is wrong."""
    ports: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise ValueError(f"port set {spec!r}: {part!r} is not a port or a range like 50000-50009") from None
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"port set {spec!r}: {part!r} is not a range of ports between 1 and 65535, low to high")
        ports.extend(p for p in range(low, high + 1) if p not in ports)
    if not ports:
        raise ValueError(f"port set {spec!r} names no port")
    return ports


class PortSet:
    """The ports a process may bind, from a spec like ``50000-50009,50020``."""

    def __init__(self, spec: str, flag: str = "--ports"):
        self.spec = spec
        self.flag = flag
        self.ports = parse(spec)
        self.bound: dict[int, str] = {}  # port -> the socket here that has it
        self.taken: set[int] = set()  # held by another process when tried

    @classmethod
    def from_env(cls, name: str, flag: str) -> "PortSet | None":
        spec = os.environ.get(name)
        return cls(spec, flag) if spec else None

    def bind(self, sock: zmq.Socket, bind_ip: str, what: str) -> int:
        """Bind ``sock`` on the first free port of the set; returns the port."""
        for port in self.ports:
            if port in self.bound:
                continue
            try:
                sock.bind(f"tcp://{bind_ip}:{port}")
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE:
                    raise
                if port not in self.taken:  # by a sibling of a split controller, or by another program
                    log.debug("port %d of %s %s is in use; trying the next", port, self.flag, self.spec)
                self.taken.add(port)
                continue
            self.taken.discard(port)
            self.bound[port] = what
            return port
        here = ", ".join(f"{port} ({name})" for port, name in self.bound.items()) or "none"
        taken = ", ".join(str(p) for p in sorted(self.taken)) or "none"
        raise PortsExhausted(
            f"no free port left for the {what} socket in {self.flag} {self.spec} ({len(self.ports)} ports): "
            f"bound here {here}; in use by other processes {taken}. A controller needs "
            f"{CONTROLLER_PORTS_NEEDED['one process']} ports ({CONTROLLER_PORTS_NEEDED['--split']} with --split), "
            "an engine one data port: widen the set or free those ports")

"""The connection files a controller writes, and removes when it stops cleanly.

Each is written atomically (temp file, then rename), mode 0600, with the format version,
the key, and every candidate address of each channel: ``engine`` (for engines),
``client`` (for clients) and, for a split controller, ``hub`` (for its paths). With
CURVE, each role's file carries only the keys that role needs.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..protocol import connection, wire
from ..protocol.curve import ClusterKeys


@dataclass
class Where:
    """Which cluster a controller process serves, and where it listens."""

    ip: str
    cluster_id: str
    profile_dir: object
    owner_pid: int | None = None


class ConnectionFiles:
    def __init__(self, where: Where, key: str, cluster_keys: ClusterKeys | None):
        self.where = where
        self.key = key
        self.cluster_keys = cluster_keys
        self.written: list[Path] = []

    def write(self, role: str, info: dict) -> Path:
        path = connection.connection_file(role, self.where.cluster_id, self.where.profile_dir)
        if self.cluster_keys:
            info = {**info, "curve": self.cluster_keys.for_role("server" if role == "hub" else role).as_info()}
        connection.write_atomic(path, {
            "version": connection.FILE_FORMAT_VERSION, "cluster_id": self.where.cluster_id,
            "signature_scheme": wire.SIGNATURE_SCHEME, "key": self.key, "location": socket.gethostname(),
            "controller_pid": os.getpid(), **info})
        if path not in self.written:
            self.written.append(path)
        return path

    def write_engine_and_client(self, ports: dict[str, int], dashboard_url: str | None) -> None:
        """The engine and client files: every candidate address of each channel. The
        client file comes last, so whoever waits for it finds the engine file too."""
        ip = self.where.ip
        primary, candidates = connection.channel_urls(ip, ports)
        self.write("engine", {
            "engine": primary["engine"],
            "heartbeat": primary["heartbeat"],
            "candidates": {k: candidates[k] for k in ("engine", "heartbeat")},
            "heartbeat_period": config.HEARTBEAT_PERIOD,
            # engines listen for direct data links on loopback only when everything is local
            "engine_bind_ip": "127.0.0.1" if ip.startswith("127.") else "*",
        })
        self.write("client", {"client": primary["client"], "candidates": {"client": candidates["client"]},
                              **({"dashboard": dashboard_url} if dashboard_url else {})})

    def remove(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written.clear()


def public_host(ip: str) -> str:
    """The host name others use for a process bound on ``ip``."""
    return socket.gethostname() if ip in ("0.0.0.0", "*") else ip

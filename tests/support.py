"""Helpers for end-to-end tests: real clusters that always tear down, and leak checks.

Tests import them from here (``from support import ...``); the fixtures that use them
live in conftest.py.
"""
from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from pathlib import Path

import mpihub
from mpihub.process import pid_alive
from mpihub.protocol import connection


def assert_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if pid_alive(p)]
    assert not left, f"processes still running after teardown: {left}"


def children_of(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def free_run(n: int) -> int:
    """The first of ``n`` consecutive ports that are free on 127.0.0.1 just now."""
    for base in range(42000, 60000, 97):
        probes = []
        try:
            for port in range(base, base + n):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError(f"no {n} consecutive free ports")


#: The controller layouts end-to-end tests run on, and the controller options of each.
LAYOUTS = {"one": [], "split": ["--split"]}


class RunningCluster:
    """A started cluster (on a controller ``layout``) and its client; records PIDs for
    the leak check."""

    def __init__(self, n: int, layout: str = "one", **kwargs):
        kwargs["controller_args"] = [*LAYOUTS[layout], *kwargs.get("controller_args", ())]
        self.cluster = mpihub.Cluster(n=n, **kwargs)
        self.client = self.cluster.start_and_connect_sync()
        self.pids = list(self.cluster.launcher.pids) + [e.pid for e in self.client.engines.values()]
        self.pids += children_of(self.cluster._controller_process.pid)  # a split controller's paths

    def stop(self) -> None:
        self.cluster.stop_cluster_sync()
        assert_gone(self.pids)
        assert not self.cluster.client_file.exists()
        assert not self.cluster.engine_file.exists()


def run_cluster(n: int, layout: str = "one", **kwargs):
    """Start a cluster for a fixture to yield; it is always stopped and leak-checked after."""
    running = RunningCluster(n, layout, **kwargs)
    try:
        yield running
    finally:
        running.stop()


def split_paths(cluster) -> dict:
    """A split controller's paths and their addresses (none for a single process)."""
    hub_file = connection.connection_file("hub", cluster.cluster.cluster_id, cluster.cluster.profile_dir)
    return json.loads(hub_file.read_text()) if hub_file.exists() else {"paths": {}}


def request_urls(cluster) -> list[str]:
    """Where clients send requests: the controller, or a split one's Hub, direct and task path."""
    info = json.loads(cluster.cluster.client_file.read_text())
    return [info["client"]] + [where["client"][0] for where in split_paths(cluster)["paths"].values()]


class Relay:
    """A TCP relay to ``target`` that records every byte passing through it (a wiretap)
    and can cut the line: :meth:`cut` drops every connection and refuses new ones (the
    peers see them close and keep dialling) until :meth:`mend`; :meth:`swallow` keeps
    them open but drops what the dialling side sends (a blackhole: its peer believes
    it delivered)."""

    def __init__(self, target: str):
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen = bytearray()
        self.cuts = 0
        self._cut = threading.Event()
        self._swallow = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def cut(self) -> None:
        self._cut.set()
        self.cuts += 1

    def swallow(self) -> None:
        self._swallow.set()

    def mend(self) -> None:
        self._cut.clear()
        self._swallow.clear()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        dialling: set[socket.socket] = set()

        def hang_up(sock: socket.socket) -> None:
            other = peers.pop(sock)
            peers.pop(other, None)
            for s in (sock, other):
                dialling.discard(s)
                selector.unregister(s)
                s.close()

        while not self._stop.is_set():
            if self._cut.is_set():
                for sock in list(peers):
                    if sock in peers:
                        hang_up(sock)
            for key, _ in selector.select(0.05):
                sock = key.fileobj
                if sock is self.listener:
                    inside, _ = self.listener.accept()
                    if self._cut.is_set():
                        inside.close()
                        continue
                    try:
                        outside = socket.create_connection(self.target)
                    except OSError:  # nobody listens there (yet): the peer dials again
                        inside.close()
                        continue
                    dialling.add(inside)
                    peers[inside], peers[outside] = outside, inside
                    selector.register(inside, selectors.EVENT_READ)
                    selector.register(outside, selectors.EVENT_READ)
                    continue
                if sock not in peers:
                    continue
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    data = b""
                if not data or self._cut.is_set():
                    hang_up(sock)
                    continue
                self.seen += data
                if not (self._swallow.is_set() and sock in dialling):
                    peers[sock].sendall(data)
        for sock in [*peers, self.listener]:
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

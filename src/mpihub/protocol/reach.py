"""Which of a peer's candidate addresses answer from here, found at once.

A controller on a compute node lists every address it has (the management Ethernet,
the fast fabric, loopback); from the login node some have no route, or a firewall
drops them. Waiting for an answer on each in turn costs the whole wait on every dead
one, so before the hello a client or engine opens a plain TCP connection to every
candidate at the same moment and tries first the ones that accepted. (ZeroMQ drops a
connection that closes before its greeting: the probe costs the peer nothing.)
"""
from __future__ import annotations

import errno
import selectors
import socket
import time

#: Seconds to wait for the candidates' TCP handshakes (a dropped SYN answers never).
PROBE_TIMEOUT = 2.0


def _host_port(url: str) -> tuple[str, int] | None:
    """``tcp://10.0.0.5:5000`` -> ("10.0.0.5", 5000); None for what is not tcp."""
    if not url.startswith("tcp://"):
        return None
    host, _, port = url[len("tcp://"):].rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def reachable_first(urls: list[str], timeout: float = PROBE_TIMEOUT) -> list[str]:
    """``urls`` reordered: those that accept a TCP connection from here first, then
    those still silent at ``timeout``, then those refused or unroutable; each group in
    the given order. Returns at once when the first URL given accepts."""
    if len(urls) < 2:
        return list(urls)
    accepted, failed = set(), set()
    pending: dict[socket.socket, str] = {}
    with selectors.DefaultSelector() as selector:
        for url in urls:
            address = _host_port(url)
            if address is None:
                continue
            try:
                sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
            except OSError:
                failed.add(url)
                continue
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code in (0, errno.EINPROGRESS):
                pending[sock] = url
                selector.register(sock, selectors.EVENT_WRITE)
            else:
                failed.add(url)
                sock.close()
        deadline = time.monotonic() + timeout
        try:
            while pending and urls[0] not in accepted and (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    sock = key.fileobj
                    url = pending.pop(sock)
                    selector.unregister(sock)
                    (failed if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) else accepted).add(url)
                    sock.close()
        finally:
            for sock in pending:
                sock.close()
    return ([u for u in urls if u in accepted] + [u for u in urls if u not in accepted and u not in failed]
            + [u for u in urls if u in failed])

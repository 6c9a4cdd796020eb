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
from dataclasses import dataclass

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


#: Connect errors that say this host has no way to the address at all (no route, no
#: such local address), as opposed to a peer that refused or has not answered yet.
NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})


@dataclass(frozen=True)
class Probed:
    """What a probe found: the URLs in the order to try them, and those this host has
    no route to."""

    order: list[str]
    no_route: frozenset[str]

    @property
    def none_routable(self) -> bool:
        """Every URL is one this host has no route to: waiting for an answer is futile."""
        return bool(self.order) and set(self.order) <= self.no_route


def probe(urls: list[str], timeout: float = PROBE_TIMEOUT) -> Probed:
    """Open a TCP connection to every URL at once. ``order``: those that accepted first,
    then those still silent at ``timeout``, then those refused or unroutable, each group
    in the given order. Returns at once when the first URL given accepts."""
    accepted, failed, no_route = set(), set(), set()
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
                if code in NO_ROUTE:
                    no_route.add(url)
                sock.close()
        deadline = time.monotonic() + timeout
        try:
            while pending and urls[0] not in accepted and (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    sock = key.fileobj
                    url = pending.pop(sock)
                    selector.unregister(sock)
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    (failed if code else accepted).add(url)
                    if code in NO_ROUTE:
                        no_route.add(url)
                    sock.close()
        finally:
            for sock in pending:
                sock.close()
    order = ([u for u in urls if u in accepted] + [u for u in urls if u not in accepted and u not in failed]
             + [u for u in urls if u in failed])
    return Probed(order, frozenset(no_route))


def reachable_first(urls: list[str], timeout: float = PROBE_TIMEOUT) -> list[str]:
    """``urls`` in the order of :func:`probe` (a single URL is not probed)."""
    if len(urls) < 2:
        return list(urls)
    return probe(urls, timeout).order


def no_route_error(what: str, urls: list[str]) -> str:
    """The message for a peer none of whose addresses this host can route to."""
    return (f"{what} cannot be reached from this host ({socket.gethostname()}): it has no route to any of "
            f"{', '.join(urls)}. The controller listens only on networks this host is not on: bind it where "
            "this host can reach it (--ip 0.0.0.0 for every interface, or --interface NAME)")

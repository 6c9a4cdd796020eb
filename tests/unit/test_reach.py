"""Candidate addresses: those that accept a connection from here are tried first."""
import socket
import time

import pytest

from mpihub.protocol import connection, reach

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def listening():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def refused():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # bound, never listened: nothing accepts there now
    return f"tcp://127.0.0.1:{port}"


def test_an_address_that_accepts_goes_before_one_that_refuses(listening, refused):
    started = time.monotonic()
    assert reach.reachable_first([refused, listening]) == [listening, refused]
    assert time.monotonic() - started < 1


def test_the_given_order_stands_among_those_that_accept(listening, refused):
    second = socket.socket()
    second.bind(("127.0.0.1", 0))
    second.listen()
    try:
        other = f"tcp://127.0.0.1:{second.getsockname()[1]}"
        assert reach.reachable_first([refused, other, "ipc:///nowhere", listening]) == \
            [other, listening, "ipc:///nowhere", refused]  # accepted, then unknown, then refused
    finally:
        second.close()


def test_a_single_address_is_not_probed(refused):
    assert reach.reachable_first([refused]) == [refused]


def test_a_host_bound_to_all_interfaces_names_each_interface_address():
    ips = connection.candidate_ips("0.0.0.0")
    assert ips[-1] == "127.0.0.1"
    assert set(connection.interface_ips()) <= set(ips)
    assert len(ips) == len(set(ips))

"""Port sets for firewalls: specs parse or say what is wrong; sockets take the first
free port of the set, skip ports other processes hold, and name what ran out."""
import socket

import pytest
import zmq
from support import free_run

from mpihub.protocol import ports


@pytest.mark.parametrize("spec, expected", [
    ("50000", [50000]),
    ("50000-50003", [50000, 50001, 50002, 50003]),
    ("50010, 50000-50001,50010", [50010, 50000, 50001]),
])
def test_specs_parse_in_order_without_repeats(spec, expected):
    assert ports.parse(spec) == expected


@pytest.mark.parametrize("spec, says", [
    ("", "names no port"),
    ("abc", "'abc' is not a port"),
    ("50010-50000", "low to high"),
    ("0-10", "between 1 and 65535"),
    ("65530-65536", "between 1 and 65535"),
    ("5000-x", "is not a port or a range"),
])
def test_bad_specs_say_what_is_wrong(spec, says):
    with pytest.raises(ValueError, match=says):
        ports.parse(spec)


def test_sockets_take_the_first_free_ports_and_skip_those_held_elsewhere(context):
    base = free_run(4)
    held = socket.socket()  # another process's listener on the second port
    held.bind(("127.0.0.1", base + 1))
    held.listen()
    try:
        port_set = ports.PortSet(f"{base}-{base + 3}")
        sockets = [context.socket(zmq.ROUTER) for _ in range(3)]  # kept: a closed socket frees its port
        got = [port_set.bind(sock, "127.0.0.1", name) for sock, name in zip(sockets, ("client", "engine"))]
        assert got == [base, base + 2]
        assert port_set.taken == {base + 1}
        other_process = ports.PortSet(f"{base}-{base + 3}")  # a split controller's path shares the set
        assert other_process.bind(sockets[2], "127.0.0.1", "heart") == base + 3
    finally:
        held.close()


def test_a_set_that_runs_out_names_what_is_bound_and_what_is_taken(context):
    base = free_run(2)
    held = socket.socket()
    held.bind(("127.0.0.1", base + 1))
    held.listen()
    try:
        port_set = ports.PortSet(f"{base}-{base + 1}")
        client = context.socket(zmq.ROUTER)
        port_set.bind(client, "127.0.0.1", "client")
        with pytest.raises(ports.PortsExhausted) as raised:
            port_set.bind(context.socket(zmq.ROUTER), "127.0.0.1", "engine")
    finally:
        held.close()
    text = str(raised.value)
    assert f"no free port left for the engine socket in --ports {base}-{base + 1} (2 ports)" in text
    assert f"bound here {base} (client)" in text and f"other processes {base + 1}" in text
    assert "needs 3 ports (8 with --split)" in text

"""Relays: the routing frames round-trip and bad ones raise ProtocolError; the
controller's engine port learns each engine's route and sends a request for many
engines once per relay; a relay carries replies up in one message and a request down to
every engine it names. Real ZMQ sockets over inproc; no controller."""
from __future__ import annotations

import logging

import msgpack
import pytest
import zmq

from mpihub.controller.engine_port import EnginePort
from mpihub.engine import relay as relay_module
from mpihub.engine.relay import Relay
from mpihub.protocol import relay, wire

pytestmark = pytest.mark.timeout(30)

UUIDS = [b"a" * 32, b"b" * 32, b"c" * 32]


def test_up_and_down_round_trip():
    large = b"L" * (wire.PACKED_MAX + 1)
    messages = [(UUIDS[0], [b"env-a"]), (UUIDS[1], [b"env-b", b"buffer"]), (UUIDS[2], [large]), (UUIDS[0], [b"e"])]
    frames = relay.pack_up(messages)
    assert frames[0] == relay.RELAYED
    assert frames[2:] == [b"env-ae", b"env-b", b"buffer", large]  # the small ones packed in one frame
    assert list(relay.unpack_up(frames)) == messages
    assert relay.unpack_down(relay.pack_down(UUIDS, [b"env", b"buf"])) == (UUIDS, [b"env", b"buf"])


@pytest.mark.parametrize("routing", [
    b"\xc1",  # not msgpack
    msgpack.packb({"a": 1}),  # not a list
    msgpack.packb([UUIDS[0], 2]),  # more frames announced than came
    msgpack.packb([UUIDS[0], 0]),  # an empty message
    msgpack.packb([UUIDS[0]]),  # a uuid without its count
    msgpack.packb(["text", 1]),  # a uuid that is not bytes
    msgpack.packb([b"", 1]),  # an empty uuid
    msgpack.packb([UUIDS[0], -6]),  # more packed bytes announced than came
    msgpack.packb([UUIDS[0], -4]),  # fewer
    msgpack.packb([UUIDS[0], -5, UUIDS[1], 1]),  # a framed message announced, none after the packed frame
    msgpack.packb([UUIDS[0], 1.5]),  # a count that is not an int
])
def test_bad_up_routing_raises_before_anything_is_handed_on(routing):
    with pytest.raises(wire.ProtocolError):
        list(relay.unpack_up([relay.RELAYED, routing, b"frame"]))


@pytest.mark.parametrize("frames", [
    [relay.RELAYED, msgpack.packb([]), b"env"],  # nobody to send to
    [relay.RELAYED, msgpack.packb([UUIDS[0]])],  # nothing to send
    [relay.RELAYED, msgpack.packb([1, 2]), b"env"],  # not uuids
    [relay.RELAYED, b"\xc1", b"env"],
])
def test_bad_down_routing_raises(frames):
    with pytest.raises(wire.ProtocolError):
        relay.unpack_down(frames)


def socket(context, kind, routing_id=None):
    sock = context.socket(kind)
    sock.linger = 0
    if routing_id is not None:
        sock.routing_id = routing_id
    return sock


def recv(sock, timeout_ms=2000) -> list:
    assert sock.poll(timeout_ms), "nothing came"
    return sock.recv_multipart()


def test_the_engine_port_routes_by_the_way_each_engine_came(context):
    controller = socket(context, zmq.ROUTER)
    controller.bind("inproc://port")
    direct = socket(context, zmq.DEALER, UUIDS[0])
    relay_sock = socket(context, zmq.DEALER, b"relay-1")
    for sock in (direct, relay_sock):
        sock.connect("inproc://port")
    port = EnginePort(controller, wire.DropLog(logging.getLogger("test"), "test"))
    handled = []

    def signed(frames: list) -> bool:  # as the controller's handler says of a message that verified
        handled.append(frames)
        return True

    direct.send_multipart([b"hello-direct"])
    relay_sock.send_multipart(relay.pack_up([(UUIDS[1], [b"hello-1"]), (UUIDS[2], [b"hello-2", b"buf"])]))
    for _ in range(2):
        port.on_frames(recv(controller), signed)
    assert sorted(handled) == sorted([[UUIDS[0], b"hello-direct"], [UUIDS[1], b"hello-1"],
                                      [UUIDS[2], b"hello-2", b"buf"]])
    assert port.relay_of == {UUIDS[1]: b"relay-1", UUIDS[2]: b"relay-1"}

    port.send_many(UUIDS, [b"request"])  # one message to the direct engine, one for both behind the relay
    assert recv(direct) == [b"request"]
    assert relay.unpack_down(recv(relay_sock)) == ([UUIDS[1], UUIDS[2]], [b"request"])
    assert not relay_sock.poll(100)
    port.send(UUIDS[2], [b"only-2"])
    assert relay.unpack_down(recv(relay_sock)) == ([UUIDS[2]], [b"only-2"])

    # an engine that speaks for itself again is sent to directly; one that left is forgotten
    again = socket(context, zmq.DEALER, UUIDS[1])
    again.connect("inproc://port")
    again.send_multipart([b"direct-now"])
    port.on_frames(recv(controller), signed)
    port.forget(UUIDS[2])
    assert port.relay_of == {}
    port.send(UUIDS[1], [b"to-1"])
    assert recv(again) == [b"to-1"]


def test_a_message_that_is_not_signed_changes_no_route(context):
    """Routing is unsigned: a claim to speak for an engine, relayed or direct, counts
    only once the message it came with verifies."""
    controller = socket(context, zmq.ROUTER)
    controller.bind("inproc://claims")
    relay_sock = socket(context, zmq.DEALER, b"relay-1")
    forger = socket(context, zmq.DEALER, b"relay-forger")
    impostor = socket(context, zmq.DEALER, UUIDS[0])
    for sock in (relay_sock, forger, impostor):
        sock.connect("inproc://claims")
    port = EnginePort(controller, wire.DropLog(logging.getLogger("test"), "test"))
    relay_sock.send_multipart(relay.pack_up([(UUIDS[0], [b"signed"])]))
    port.on_frames(recv(controller), lambda frames: True)
    forger.send_multipart(relay.pack_up([(UUIDS[0], [b"forged"]), (UUIDS[1], [b"forged"])]))
    port.on_frames(recv(controller), lambda frames: False)
    impostor.send_multipart([b"forged"])
    port.on_frames(recv(controller), lambda frames: False)
    assert port.relay_of == {UUIDS[0]: b"relay-1"}


def test_a_malformed_relayed_message_is_dropped_whole(context, caplog):
    controller = socket(context, zmq.ROUTER)
    controller.bind("inproc://bad")
    sender = socket(context, zmq.DEALER, b"relay-x")
    sender.connect("inproc://bad")
    port = EnginePort(controller, wire.DropLog(logging.getLogger("test.relay"), "the engine socket"))
    sender.send_multipart([relay.RELAYED, msgpack.packb([UUIDS[0], 1, UUIDS[1], 5]), b"a", b"b"])
    handled = []
    with caplog.at_level(logging.WARNING, "test.relay"):
        port.on_frames(recv(controller), lambda frames: handled.append(frames) or True)
    assert handled == [] and port.relay_of == {}
    assert "does not match" in caplog.text


def relay_between(context, name: str) -> tuple[zmq.Socket, Relay, list[zmq.Socket]]:
    """A controller's engine port, a relay to it, and an engine behind it per uuid of UUIDS."""
    controller = socket(context, zmq.ROUTER)
    controller.bind(f"inproc://{name}")
    hub = Relay(context, f"inproc://{name}", f"inproc://relay-{name}")
    engines = [socket(context, zmq.DEALER, uuid) for uuid in UUIDS]
    for sock in engines:
        sock.connect(hub.local_url)
    return controller, hub, engines


def test_a_relay_gathers_replies_and_hands_requests_to_each_engine(context):
    controller, hub, engines = relay_between(context, "gathers")
    for sock in engines:
        sock.send_multipart([b"reply-" + sock.routing_id[:1], b"data"])
    assert hub.pump()  # inproc: every message is at the relay once sent
    assert hub.gathered == len(UUIDS)
    frames = recv(controller)
    relay_ident, up = frames[0], frames[1:]
    assert relay_ident == hub.up.routing_id
    assert sorted(relay.unpack_up(up)) == [(u, [b"reply-" + u[:1], b"data"]) for u in UUIDS]
    assert not controller.poll(50), "the replies of one turn go up as one message"

    controller.send_multipart([relay_ident, *relay.pack_down(UUIDS[:2], [b"request", b"buf"])])
    controller.send_multipart([relay_ident, relay.RELAYED, b"\xc1", b"junk"])  # dropped, the relay goes on
    controller.send_multipart([relay_ident, *relay.pack_down(UUIDS[2:], [b"third"])])
    for _ in range(100):
        if hub.pump() and hub.delivered == len(UUIDS):
            break
        hub.up.poll(10)  # until the requests reach the relay
    assert recv(engines[0]) == [b"request", b"buf"]
    assert recv(engines[1]) == [b"request", b"buf"]
    assert recv(engines[2]) == [b"third"]
    hub.close()


def test_a_relay_sends_up_at_most_its_bound_of_bytes_in_one_message(context, monkeypatch):
    monkeypatch.setattr(relay_module, "MAX_GATHERED_BYTES", 1500)
    controller, hub, engines = relay_between(context, "bounded")
    for sock in engines:
        sock.send(b"x" * 1000)
    assert hub.pump() and hub.gathered == 3
    sizes = [len(list(relay.unpack_up(recv(controller)[1:]))) for _ in range(2)]
    assert sizes == [2, 1]  # the second reply took the first past 1,500 bytes
    hub.close()


def test_an_owner_that_counts_gets_the_engines_handed_to_and_takes_what_it_counted(context):
    """A light-engine host reads what it counted instead of asking the sockets."""
    controller, hub, engines = relay_between(context, "counted")
    hub.deliveries = []
    for sock in engines:
        sock.send(b"reply-" + sock.routing_id[:1])
    assert hub.carry_up(2) == 2 and hub.carry_up(5) == 1 and hub.carry_up(1) == 0  # none left: no wait
    assert [len(list(relay.unpack_up(recv(controller)[1:]))) for _ in range(2)] == [2, 1]
    relay_ident = hub.up.routing_id
    controller.send_multipart([relay_ident, *relay.pack_down([UUIDS[2], UUIDS[0]], [b"request"])])
    for _ in range(100):
        if hub.carry_down():
            break
        hub.up.poll(10)
    assert hub.deliveries == [UUIDS[2], UUIDS[0]]
    assert engines[2].recv(zmq.NOBLOCK) == b"request" and engines[0].recv(zmq.NOBLOCK) == b"request"
    hub.close()

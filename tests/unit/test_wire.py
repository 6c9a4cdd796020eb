"""Framing and signing: good messages round-trip, bad ones raise ProtocolError; the
wire schema declares every key once."""
from pathlib import Path

import msgpack
import pytest
import zmq

from mpihub.protocol import schema, wire

SIGNER = wire.Signer("secret-key")


def test_round_trip_keeps_header_content_and_buffers():
    frames = wire.pack(SIGNER, {"t": "apply", "id": "m1"}, b"payload", [b"buf1", memoryview(b"buf2")])
    msg = wire.unpack(SIGNER, frames)
    assert msg.type == "apply"
    assert msg.header["id"] == "m1"
    assert msg.header["v"] == wire.PROTOCOL_VERSION
    assert bytes(msg.content) == b"payload"
    assert [bytes(b) for b in msg.buffers] == [b"buf1", b"buf2"]


def test_zmq_frames_are_accepted():
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://wire-test")
    b.connect("inproc://wire-test")
    a.send_multipart(wire.pack(SIGNER, {"t": "x"}, b"c", [b"z" * 100_000]), copy=False)
    msg = wire.unpack(SIGNER, b.recv_multipart(copy=False))
    assert bytes(msg.content) == b"c" and len(msg.buffers[0]) == 100_000
    a.close()
    b.close()


def flip_last_byte(envelope: bytes) -> bytes:
    return envelope[:-1] + bytes([envelope[-1] ^ 1])


@pytest.mark.parametrize("mangle", [
    lambda f: [b"\0" * 32 + f[0][32:], *f[1:]],             # wrong signature
    lambda f: [f[0][:20], *f[1:]],                            # truncated envelope
    lambda f: [flip_last_byte(f[0]), *f[1:]],                 # content changed after signing
    lambda f: [*f, b"extra buffer"],                          # buffer count mismatch
    lambda f: f[1:],                                          # envelope missing
    lambda f: [],                                             # nothing at all
])
def test_tampered_messages_are_refused(mangle):
    frames = wire.pack(SIGNER, {"t": "apply"}, b"payload", [b"buf"])
    with pytest.raises(wire.ProtocolError):
        wire.unpack(SIGNER, mangle(frames))


def test_other_key_is_refused():
    frames = wire.pack(wire.Signer("other-key"), {"t": "apply"}, b"")
    with pytest.raises(wire.ProtocolError, match="bad signature"):
        wire.unpack(SIGNER, frames)


def envelope(header: bytes, declared_length: int | None = None) -> list:
    length = len(header) if declared_length is None else declared_length
    body = length.to_bytes(4, "big") + header
    return [SIGNER.sign(body) + body]


@pytest.mark.parametrize("frames", [
    envelope(msgpack.packb([1, 2, 3])),                       # not a map
    envelope(msgpack.packb({"v": 1, "nb": 0})),               # no type
    envelope(msgpack.packb({"v": 99, "t": "x", "nb": 0})),    # other protocol version
    envelope(b"\xc1 not msgpack"),                            # undecodable
    envelope(msgpack.packb({"v": 1, "t": "x", "nb": 0}), 10_000),  # length past the end
])
def test_signed_but_malformed_headers_are_refused(frames):
    with pytest.raises(wire.ProtocolError):
        wire.unpack(SIGNER, frames)


def test_fast_send_and_recv_keep_frames_together():
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://wire-fast")
    b.connect("inproc://wire-fast")
    wire.send(a, wire.pack(SIGNER, {"t": "x"}, b"c", [b"1", b"2"]))
    wire.send(a, wire.pack(SIGNER, {"t": "y"}))
    first, second = wire.unpack(SIGNER, wire.recv(b)), wire.unpack(SIGNER, wire.recv(b))
    assert first.type == "x" and [bytes(x) for x in first.buffers] == [b"1", b"2"]
    assert second.type == "y" and second.buffers == []
    a.close()
    b.close()


def test_empty_key_is_rejected():
    with pytest.raises(ValueError):
        wire.Signer("")


KINDS = {"task_id", "task_ids", "engine_id", "engine_ids", "bool", "int", "number", "str", "strs", "bytes", "map", "any"}


def test_the_schema_declares_every_key_once_and_the_docs_list_every_message():
    """Each header key has one name and one declaration; each message names only
    declared keys; docs/architecture.md lists every message of the schema."""
    keys = {name: value for name, value in vars(schema.Key).items() if not name.startswith("_")}
    assert len(set(keys.values())) == len(keys) and set(keys.values()) == set(schema.FIELDS)
    assert all(field.kind in KINDS for field in schema.FIELDS.values())
    for message in schema.MESSAGES:
        assert set(message.required) | set(message.optional) <= set(schema.FIELDS), message.type
        assert message.type in vars(schema.Msg).values()
    docs = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    assert all(f"| `{message.type}` | {message.channel} |" in docs for message in schema.MESSAGES)

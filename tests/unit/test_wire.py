"""Framing and signing: good messages round-trip, bad ones raise ProtocolError; the
wire schema declares every key once."""
import hashlib
from pathlib import Path

import msgpack
import pytest
import zmq

from mpihub.protocol import schema, wire

KEY = "secret-key"
SIGNER = wire.Signer(KEY)


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


def test_the_signature_is_keyed_blake2b_of_the_envelope_and_long_keys_count_whole():
    frames = wire.pack(SIGNER, {"t": "apply"}, b"payload")
    body = frames[0][32:]
    assert frames[0][:32] == hashlib.blake2b(body, key=KEY.encode(), digest_size=32).digest()
    long_key = "k" * 100  # past BLAKE2b's 64-byte key: hashed to one, every byte of it counting
    signed = wire.pack(wire.Signer(long_key), {"t": "apply"}, b"")
    assert wire.unpack(wire.Signer(long_key), signed).type == "apply"
    with pytest.raises(wire.ProtocolError, match="bad signature"):
        wire.unpack(wire.Signer("k" * 99 + "j"), signed)


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


# -- many engines: batches, numbered ids, target runs ------------------------------------


def test_a_batch_carries_messages_in_order_each_verified():
    big = wire.pack(SIGNER, {"t": "reply", "id": "big"}, b"r" * (wire.PACKED_MAX + 1))
    inner = [wire.pack(SIGNER, {"t": "reply", "id": f"m{i}"}, b"r", [b"x" * i] if i else []) for i in range(4)]
    inner += [big, wire.pack(SIGNER, {"t": "reply", "id": "last"})]
    frames = wire.batch(SIGNER, inner)
    batch = wire.unpack(SIGNER, frames)
    small = [-len(inner[0][0]), -len(inner[5][0])]
    assert batch.type == schema.Msg.BATCH and batch.header[schema.Key.PARTS] == [small[0], 2, 2, 2, 1, small[1]]
    assert len(frames) == 1 + 1 + 3 * 2 + 1  # the envelope, the packed frame (m0, last), m1-m3, big
    out = list(wire.unbatch(SIGNER, batch))
    assert [m.header["id"] for m in out] == ["m0", "m1", "m2", "m3", "big", "last"]
    assert [bytes(b) for b in out[3].buffers] == [b"xxx"] and bytes(out[4].content) == b"r" * (wire.PACKED_MAX + 1)
    assert all(type(f) is bytes for m in out for f in m.frames)  # nothing pins the packed frame


def test_a_batch_that_lies_or_carries_a_forgery_is_refused():
    good = wire.pack(SIGNER, {"t": "reply", "id": "ok"})
    forged = wire.pack(wire.Signer("other-key"), {"t": "reply", "id": "evil"})
    for parts, buffers in (([5], [good[0]]), ([-len(good[0]) - 1], [good[0]]), ([-len(good[0]), 1], [good[0]])):
        lying = wire.pack(SIGNER, {"t": schema.Msg.BATCH, schema.Key.PARTS: parts}, b"", buffers)
        with pytest.raises(wire.ProtocolError, match="do not add up"):
            list(wire.unbatch(SIGNER, wire.unpack(SIGNER, lying)))
    for parts in ([0], [1.5], "1", [True]):
        bad = wire.pack(SIGNER, {"t": schema.Msg.BATCH, schema.Key.PARTS: parts}, b"", [good[0]])
        with pytest.raises(wire.ProtocolError, match="not counts of frames"):
            list(wire.unbatch(SIGNER, wire.unpack(SIGNER, bad)))
    delivered = []
    with pytest.raises(wire.ProtocolError, match="bad signature"):
        for msg in wire.unbatch(SIGNER, wire.unpack(SIGNER, wire.batch(SIGNER, [good, forged]))):
            delivered.append(msg.header["id"])
    assert delivered == ["ok"]
    nested = wire.batch(SIGNER, [wire.batch(SIGNER, [good, good])])
    with pytest.raises(wire.ProtocolError, match="inside a batch"):
        list(wire.unbatch(SIGNER, wire.unpack(SIGNER, nested)))


def test_pending_hands_out_the_messages_of_a_batch_one_by_one():
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://wire-batch")
    b.connect("inproc://wire-batch")
    try:
        a.send_multipart(wire.batch(SIGNER, [wire.pack(SIGNER, {"t": "reply", "id": str(i)}) for i in range(3)]))
        a.send_multipart(wire.pack(SIGNER, {"t": "reply", "id": "3"}))
        assert b.poll(1000)
        drops = []
        assert [m.header["id"] for m in wire.pending(b, SIGNER, drops.append)] == ["0", "1", "2", "3"]
        assert not drops
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("targets", [[0, 1, 2, 3], [5, 6, 7, 1, 2, 9], [3], list(range(4096))])
def test_targets_as_runs_name_the_same_engines_and_ids(targets):
    runs = wire.target_runs(targets)
    header = {schema.Key.TARGET_RUNS: runs, schema.Key.ID_BASE: "c-7"}
    assert wire.request_targets(header) == targets
    assert wire.request_ids(header) == [f"c-7/{i}" for i in range(len(targets))]
    assert [wire.target_index(header, t) for t in targets] == list(range(len(targets)))
    with pytest.raises(ValueError):
        wire.target_index(header, 10_000)
    assert len(runs) <= 6


@pytest.mark.parametrize("runs", [[0], [0, -1], "01", [0, 1.5], [0, wire.MAX_TARGETS + 1]])
def test_malformed_target_runs_are_refused(runs):
    with pytest.raises(ValueError):
        wire.request_targets({schema.Key.TARGET_RUNS: runs})
    with pytest.raises(ValueError):  # an engine looking for itself in them refuses them too
        wire.target_index({schema.Key.TARGET_RUNS: runs}, 1)

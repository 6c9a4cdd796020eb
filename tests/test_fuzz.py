"""Fuzzing with hypothesis: the decoder and every controller handler take whatever bytes
and (validly signed) headers arrive, truncated, oversized, reordered or wrongly typed,
and neither crash nor let anything in.

The handlers run in this process on a real controller object (its sockets bound, no
loop), so thousands of inputs take seconds; an exception escaping a handler is what
would end a controller's loop. Then a burst of the same inputs goes to a running
cluster's every port, which must still answer, with its memory bounded.
"""
import json
import os
import random

import msgpack
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpihub
from mpihub.controller.hubserver import HubServer
from mpihub.controller.pathserver import PathServer
from mpihub.controller.server import Controller
from mpihub.engine.app import Engine
from mpihub.engine.datalink import DataLink
from mpihub.engine.executor import Executor
from mpihub.protocol import connection, wire

pytestmark = pytest.mark.timeout(300)

KEY = "fuzz-key"
SIGNER = wire.Signer(KEY)
EXAMPLES = int(os.environ.get("MPIHUB_FUZZ_EXAMPLES", "1000"))  # more: MPIHUB_FUZZ_EXAMPLES=100000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

TYPES = ["apply", "execute", "query", "connect", "close", "register", "unregister", "reply", "hello", "join",
         "ping", "engine_ready", "answer", "ask", "engine_gone", "pong", "stop", "bulk", "who"]
OPS = ["queue_status", "db_query", "purge", "result", "abort", "resubmit", "requests", "signal", "shutdown", "nope"]
FIELDS = ["id", "ids", "tg", "lb", "only", "re", "to", "after", "follow", "bt", "bulk", "rk", "rid", "op",
          "query", "keys", "targets", "verbose", "new_ids", "sig", "hub", "send_as", "info", "want_id", "st",
          "ename", "path", "client", "engine", "qid", "ok", "result", "renames", "who", "runs", "retire_at"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                    st.text(max_size=12), st.binary(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)
headers = st.fixed_dictionaries({"t": st.sampled_from(TYPES)}, optional={
    **{name: values for name in FIELDS}, "op": st.sampled_from(OPS), "ids": st.lists(st.text(max_size=8), max_size=3),
    "tg": st.lists(st.integers(-1, 3), max_size=3), "id": st.text(max_size=8)})
raw_frames = st.lists(st.binary(max_size=200), max_size=5)


@st.composite
def signed_messages(draw):
    """A validly signed message with an arbitrary header, content and buffers, then
    maybe mangled: truncated, reordered, a frame dropped or added."""
    frames = wire.pack(SIGNER, draw(headers), draw(st.binary(max_size=64)), draw(st.lists(st.binary(max_size=32),
                                                                                          max_size=3)))
    mangle = draw(st.sampled_from(["none", "truncate", "reorder", "drop", "add", "oversize"]))
    if mangle == "truncate":
        frames[0] = frames[0][:draw(st.integers(0, len(frames[0])))]
    elif mangle == "reorder":
        frames = list(reversed(frames))
    elif mangle == "drop" and len(frames) > 1:
        frames.pop(draw(st.integers(0, len(frames) - 1)))
    elif mangle == "add":
        frames.append(draw(st.binary(max_size=16)))
    elif mangle == "oversize":
        frames.append(b"\0" * 300_000)
    return frames


@FUZZ
@given(st.one_of(raw_frames, signed_messages()))
def test_the_decoder_raises_only_protocol_errors(frames):
    try:
        msg = wire.unpack(SIGNER, frames)
    except wire.ProtocolError:
        return
    assert isinstance(msg.header, dict) and isinstance(msg.type, str)


def test_a_header_that_is_not_a_map_or_lies_about_its_length_is_refused():
    for header in (msgpack.packb([1, 2]), msgpack.packb({"t": 5}), b"\xc1", msgpack.packb({"t": "x", "v": 99})):
        body = len(header).to_bytes(4, "big") + header
        with pytest.raises(wire.ProtocolError):
            wire.unpack(SIGNER, [SIGNER.sign(body) + body])
    body = (10**6).to_bytes(4, "big") + b"{}"
    with pytest.raises(wire.ProtocolError, match="runs past"):
        wire.unpack(SIGNER, [SIGNER.sign(body) + body])


@pytest.fixture(scope="module")
def controllers(tmp_path_factory):
    """A single-process controller, a split Hub and a task path, sockets bound, no loop."""
    profile = tmp_path_factory.mktemp("fuzz-profile")
    single = Controller(cluster_id="fuzz1", profile_dir=profile, key=KEY)
    single.start()
    hub = HubServer(cluster_id="fuzz2", profile_dir=profile, key=KEY)
    hub._ports = hub._bind_routers("127.0.0.1", ("client", "engine", "path"))
    hub._ports["heartbeat"] = hub._start_heartbeat()
    path = PathServer({"key": KEY, "hub": "tcp://127.0.0.1:1"}, "task")
    path._bind_routers("127.0.0.1", ("client", "engine"))
    sink = path.context.socket(zmq.PAIR)  # where the path's answers to "its Hub" go, unread
    path.hub_sock = path.context.socket(zmq.PAIR)
    for sock in (sink, path.hub_sock):
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 0
    sink.bind("inproc://fuzz-hub")
    path.hub_sock.connect("inproc://fuzz-hub")
    yield single, hub, path
    sink.close()
    path.hub_sock.close()
    for server in (single, hub, path):
        server.close()


@FUZZ
@given(st.one_of(raw_frames, signed_messages()), st.sampled_from([b"client-a", b"engine-b", b""]))
def test_no_handler_lets_an_exception_out(controllers, frames, ident):
    """What would stop a controller's loop is an exception escaping a handler."""
    single, hub, path = controllers
    routed = [ident, *frames]
    for handle in (single._on_client, single._on_engine, hub._on_client, hub._on_engine, hub._on_path,
                   path._on_client, path._on_engine):
        handle(list(routed))
    path._on_hub(list(frames))
    single._on_pipe([b"dead", ident])


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """An engine object with its executor and data link, fed through an inproc pair."""
    eng = Engine({"version": connection.FILE_FORMAT_VERSION, "signature_scheme": wire.SIGNATURE_SCHEME, "key": KEY,
                  "engine": "tcp://127.0.0.1:1", "heartbeat": "tcp://127.0.0.1:1"})
    eng.id = 0
    eng.data = DataLink(eng.context, eng.signer, "127.0.0.1")
    eng.executor = Executor(0)
    feed, sock = eng.context.socket(zmq.PAIR), eng.context.socket(zmq.PAIR)
    feed.bind("inproc://fuzz-engine")
    sock.connect("inproc://fuzz-engine")
    for s in (feed, sock):
        s.linger = 0
        s.sndhwm = s.rcvhwm = 0
    yield eng, feed, sock
    for s in (feed, sock):
        s.close()
    eng.data.close()


#: Engine requests that wait (for MPI peers, or direct-link data) are not fuzzed here:
#: the MPI and data-link tests cover what they do with bad input.
WAITING_FIELDS = ("rk", "bt", "bulk")


@FUZZ
@given(st.one_of(raw_frames, signed_messages()))
def test_the_engine_takes_any_request(engine, frames):
    eng, feed, sock = engine
    try:
        header = wire.unpack(SIGNER, frames).header
    except wire.ProtocolError:
        header = {}
    if any(field in header for field in WAITING_FIELDS):
        return
    if header.get("t") == "execute":  # code is run, by design, for a signed request: keep it harmless
        frames = wire.pack(SIGNER, {k: v for k, v in header.items() if k not in ("v", "nb")}, b"x = (1 +")
    feed.send_multipart(frames or [b""])
    eng._handle_requests(eng.executor, sock)
    while feed.poll(0):
        wire.unpack(SIGNER, feed.recv_multipart())  # whatever the engine answers is well formed


def burst(seed: int, count: int) -> list[list[bytes]]:
    """Fuzzed messages for a live cluster, signed with the test key: random frames,
    and signed headers of every type with fields of the wrong types."""
    rng = random.Random(seed)
    junk = [None, True, -1, 2**40, 1.5, "", "x" * 50, b"\x00", [], [1, "a"], {"k": [None]}, {}]
    out = []
    for _ in range(count):
        if rng.random() < 0.3:
            out.append([rng.randbytes(rng.randint(0, 80)) for _ in range(rng.randint(1, 4))])
            continue
        header = {"t": rng.choice(LIVE_TYPES)}
        for name in rng.sample(FIELDS, rng.randint(0, 6)):
            header[name] = rng.choice(junk)
        if header["t"] == "query":
            header["op"] = rng.choice([op for op in OPS if op not in ("shutdown", "signal")])
        out.append(wire.pack(SIGNER, header, b"", [rng.randbytes(8)] * rng.randint(0, 2)))
    return out


#: Signed requests that legitimately change a live cluster (register an engine, stop or
#: signal engines, run code) are left out of the live burst: they are authenticated work.
LIVE_TYPES = [t for t in TYPES if t not in ("register", "execute")]


def test_a_running_cluster_survives_a_fuzz_burst_on_every_port(tmp_path):
    """Thousands of fuzzed messages at every port of a live cluster (its key is the
    test key, so signed ones reach the handlers): it still answers, its engines are
    still there, and the controller's memory stays bounded."""
    cluster = mpihub.Cluster(n=2, cluster_id="fuzzed")
    rc = cluster.start_and_connect_sync()
    try:
        info = json.loads(cluster.client_file.read_text())
        engine_info = json.loads(cluster.engine_file.read_text())
        key = info["key"]
        urls = [info["client"], engine_info["engine"], engine_info["heartbeat"]]
        urls += [engine["data"][0] for engine in rc._engines.values() if engine.get("data")]
        controller = psutil.Process(cluster._controller_process.pid)
        before = controller.memory_info().rss
        resign = wire.Signer(key)
        ctx = zmq.Context.instance()
        for index, url in enumerate(urls):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(url)
            for frames in burst(index, 2000):
                try:
                    msg = wire.unpack(SIGNER, frames)
                    frames = wire.pack(resign, {k: v for k, v in msg.header.items() if k not in ("v", "nb")}, b"",
                                       msg.buffers)
                except wire.ProtocolError:
                    pass
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            sock.close()
        assert rc.ids == [0, 1]
        assert rc[:].apply_sync(lambda: "still here") == ["still here", "still here"]
        assert rc.load_balanced_view().map_sync(lambda x: x + 1, range(20)) == list(range(1, 21))
        assert controller.memory_info().rss - before < 200 * 2**20
        assert all(p.poll() is None for p in cluster.launcher.processes)
    finally:
        cluster.stop_cluster_sync()

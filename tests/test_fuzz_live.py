"""A running cluster under a burst of fuzzed messages at every port: random frames, and
headers of every message type signed with its key (so that they reach the handlers),
with fields of the wrong types. It still answers, its engines are still there, and the
controller's memory stays bounded. (The handlers fuzzed in process, message by message:
tests/unit/test_fuzz.py.)"""
import json
import random

import psutil
import pytest
import zmq

import mpihub
from mpihub.controller import queries
from mpihub.protocol import schema, wire
from mpihub.protocol.schema import Key, Msg

pytestmark = pytest.mark.timeout(300)

#: Signed requests that legitimately change a live cluster (register an engine, stop or
#: signal engines, run code) are left out of the burst: they are authenticated work.
LIVE_TYPES = [t for t in schema.TYPES if t not in (Msg.REGISTER, Msg.EXECUTE)]
OPS = [op for op in sorted(queries.QUERIES) if op not in ("shutdown", "signal")]
JUNK = [None, True, -1, 2**40, 1.5, "", "x" * 50, b"\x00", [], [1, "a"], {"k": [None]}, {}]


def burst(signer: wire.Signer, seed: int, count: int) -> list[list[bytes]]:
    """Fuzzed messages: random frames, and signed headers of every type with fields of
    the wrong types."""
    rng = random.Random(seed)
    fields = sorted(set(schema.FIELDS) - {Key.TYPE, Key.VERSION, Key.BUFFER_COUNT})
    out = []
    for _ in range(count):
        if rng.random() < 0.3:
            out.append([rng.randbytes(rng.randint(0, 80)) for _ in range(rng.randint(1, 4))])
            continue
        header = {Key.TYPE: rng.choice(LIVE_TYPES)}
        for name in rng.sample(fields, rng.randint(0, 6)):
            header[name] = rng.choice(JUNK)
        if header[Key.TYPE] == Msg.QUERY:
            header[Key.OP] = rng.choice(OPS)
        out.append(wire.pack(signer, header, b"", [rng.randbytes(8)] * rng.randint(0, 2)))
    return out


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
        urls += [engine.data_urls[0] for engine in rc.engines.values() if engine.data_urls]
        controller = psutil.Process(cluster._controller_process.pid)
        before = controller.memory_info().rss
        signer = wire.Signer(key)
        ctx = zmq.Context.instance()
        for index, url in enumerate(urls):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(url)
            for frames in burst(signer, index, 2000):
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

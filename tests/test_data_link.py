"""Direct data links: large buffers skip the controller; everything still works when
a link is missing, and the engines' data ports withstand garbage."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

import mpihub
from mpihub import config
from mpihub.protocol import wire

pytestmark = [pytest.mark.timeout(120), pytest.mark.layouts("one", "split")]

BIG = 3 * 1024 * 1024 // 8  # 3 MB of float64: above the direct-link threshold


def test_links_come_up_for_every_engine(rc):
    for engine_id in rc.ids:
        assert rc.core.io.linked(engine_id, wait=True)


def test_large_push_pull_and_apply_use_the_link(rc):
    data = np.random.rand(BIG)
    assert rc.core.io.linked(0, wait=True)
    before = rc.db_query({"engine_id": 0}, keys=["msg_id"])
    rc[0].push({"linked": data}, block=True)
    back = rc[0].pull("linked", block=True)
    assert np.array_equal(back, data) and back.flags.writeable
    doubled = rc[0].apply_sync(lambda x: x * 2, data)
    assert np.array_equal(doubled, data * 2)
    after = rc.db_query({"engine_id": 0}, keys=["msg_id"])
    assert len(after) == len(before) + 3


def test_bulk_results_are_not_kept_by_the_hub(rc, cluster):
    ar = rc[1].apply_async(lambda: np.ones(BIG))
    ar.get(timeout=30)
    with mpihub.Client(cluster.cluster.client_file) as other:
        with pytest.raises(KeyError, match="went straight"):
            other.get_result(ar.msg_ids[0])
    push = rc[1].push({"p": np.ones(BIG)}, block=False)
    push.get(timeout=30)
    with pytest.raises(ValueError, match="not stored"):
        rc.resubmit(push)


def test_scatter_gather_of_large_arrays(rc):
    data = np.random.rand(4 * BIG)
    rc[:].scatter("sg", data, block=True)
    assert np.array_equal(rc[:].gather("sg", block=True), data)


RELAY_SCRIPT = """
import sys, numpy as np, mpihub
rc = mpihub.Client(sys.argv[1])
assert not rc.core.io.links, "links were opened although MPIHUB_MAX_DATA_LINKS=0"
data = np.random.rand(3 * 1024 * 1024 // 8)
rc[0].push({"relayed": data}, block=True)
back = rc[0].pull("relayed", block=True)
assert np.array_equal(back, data) and back.flags.writeable
rc.close()
print("relay ok")
"""


def test_without_links_everything_relays(cluster, tmp_path):
    script = tmp_path / "relay.py"
    script.write_text(RELAY_SCRIPT)
    env = {**os.environ, "MPIHUB_MAX_DATA_LINKS": "0"}
    out = subprocess.run([sys.executable, str(script), str(cluster.cluster.client_file)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "relay ok" in out.stdout


def test_unreachable_link_falls_back_to_relay(cluster):
    with mpihub.Client(cluster.cluster.client_file) as other:
        other.core.io.unlink(0)
        time.sleep(0.1)
        other.core.io.link(0, ["tcp://127.0.0.1:1"])  # nothing listens there
        assert not other.core.io.linked(0, wait=True)
        data = np.random.rand(BIG)
        other[0].push({"fallback": data}, block=True)
        assert np.array_equal(other[0].pull("fallback", block=True), data)


def test_a_link_takes_the_address_that_answers_without_waiting_on_a_silent_one(cluster):
    """Every candidate is dialled at once: a first address that takes the TCP connection
    but never answers (a fabric the client's node does not route) costs no LINK_TIMEOUT."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        with mpihub.Client(cluster.cluster.client_file) as other:
            real = list(other.engines[0].data_urls)
            other.core.io.unlink(0)
            time.sleep(0.1)
            started = time.monotonic()
            other.core.io.link(0, [f"tcp://127.0.0.1:{silent.getsockname()[1]}", *real])
            assert other.core.io.linked(0, wait=True)
            assert time.monotonic() - started < config.LINK_TIMEOUT / 2
            data = np.random.rand(BIG)
            other[0].push({"raced": data}, block=True)
            assert np.array_equal(other[0].pull("raced", block=True), data)
    finally:
        silent.close()


def test_garbage_on_engine_data_ports(rc, cluster):
    ctx = zmq.Context.instance()
    for engine_id in rc.ids:
        for url in rc.engines[engine_id].data_urls:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(url)
            for frames in ([b""], [os.urandom(40)], [os.urandom(32), b"\x81\xa1t\xa4bulk", b""],
                           wire.pack(wire.Signer("wrong"), {"t": "bulk", "tok": "x"}, b"", [b"y" * 100])):
                sock.send_multipart(frames)
            signed = wire.Signer(rc.core.info["key"])
            sock.send_multipart(wire.pack(signed, {"t": "unknown-kind"}))
            time.sleep(0.05)
            sock.close()
    assert rc[:].apply_sync(lambda: "alive") == ["alive", "alive"]
    data = np.random.rand(BIG)
    rc[0].push({"after_garbage": data}, block=True)
    assert np.array_equal(rc[0].pull("after_garbage", block=True), data)

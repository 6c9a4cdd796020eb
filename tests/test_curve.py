"""CurveZMQ (``--curve``): everything still works, the bytes on the wire are unreadable,
and a peer without the cluster's keys is refused before any message is read."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

import mpihub
from mpihub.protocol import curve, wire

from support import Relay, request_urls, run_cluster

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not curve.available(), reason="this libzmq has no CURVE")]

MARKER = b"plain-text-marker-7f3a9c"


def wiretapped_client(cluster) -> tuple[mpihub.Client, Relay]:
    """A client whose connection to the controller goes through a relay."""
    info = json.loads(cluster.cluster.client_file.read_text())
    relay = Relay(info["client"])
    info["client"] = relay.url
    info["candidates"] = {"client": [relay.url]}
    return mpihub.Client(info, timeout=10), relay


def traffic_seen(cluster) -> bytes:
    """What a wiretap sees of a push and a task whose bytes hold ``MARKER``."""
    client, relay = wiretapped_client(cluster)
    try:
        client[0].push({"secret": MARKER * 4}, block=True)
        assert client.load_balanced_view().apply_sync(lambda m: m.upper(), MARKER) == MARKER.upper()
    finally:
        client.close()
        relay.close()
    return bytes(relay.seen)


@pytest.fixture(scope="module", params=[[], ["--split"]], ids=["one-process", "split"])
def curve_cluster(request):
    yield from run_cluster(2, controller_args=["--curve", *request.param])


def test_every_file_carries_only_its_share_of_the_keys(curve_cluster):
    client_info = json.loads(curve_cluster.cluster.client_file.read_text())
    engine_info = json.loads(curve_cluster.cluster.engine_file.read_text())
    assert set(client_info["curve"]) == {"server_public", "public", "secret"}
    assert engine_info["curve"]["server_public"] == client_info["curve"]["server_public"]
    assert engine_info["curve"]["allowed"] == [client_info["curve"]["public"]]
    for path in (curve_cluster.cluster.client_file, curve_cluster.cluster.engine_file):
        assert path.stat().st_mode & 0o777 == 0o600


def test_work_runs_encrypted(curve_cluster):
    rc = curve_cluster.client
    rc.wait_for_engines(2, timeout=10, interactive=False)
    dview = rc[:]
    assert dview.apply_sync(lambda: 1) == [1, 1]
    big = np.arange(1 << 19, dtype=np.float64)  # 4 MiB: takes the engine's direct data link
    rc[0].push({"big": big}, block=True)
    assert np.array_equal(rc[0].pull("big", block=True), big)
    assert rc.load_balanced_view().map_sync(lambda x: x * x, range(20)) == [x * x for x in range(20)]
    dview.scatter("part", big, block=True)
    assert np.array_equal(dview.gather("part", block=True), big)


def test_a_wiretap_sees_no_plain_text(curve_cluster):
    assert MARKER not in traffic_seen(curve_cluster)


def test_a_wiretap_sees_plain_text_without_curve(cluster):
    """The check above can fail: without --curve the marker is right there."""
    assert MARKER in traffic_seen(cluster)


def test_a_peer_without_the_cluster_keys_is_refused(curve_cluster):
    """Right HMAC key, but no CURVE keys or keys of its own: nothing answers, and the
    cluster goes on."""
    info = json.loads(curve_cluster.cluster.client_file.read_text())
    urls = request_urls(curve_cluster)
    signer = wire.Signer(info["key"])
    stranger_keys = zmq.curve_keypair()
    context = zmq.Context()
    try:
        for url in urls:
            for keys in (None, stranger_keys):
                sock = context.socket(zmq.DEALER)
                sock.linger = 0
                if keys:
                    sock.curve_serverkey = info["curve"]["server_public"].encode()
                    sock.curve_publickey, sock.curve_secretkey = keys
                sock.connect(url)
                sock.send_multipart(wire.pack(signer, {"t": "connect", "rid": "x", "send_as": "stranger"}))
                assert not sock.poll(1500), f"{url} answered a peer without the cluster's keys"
                sock.close()
    finally:
        context.destroy(linger=0)
    info.pop("curve")
    with pytest.raises(mpihub.TimeoutError):
        mpihub.Client(info, timeout=1.5)
    assert curve_cluster.client[:].apply_sync(lambda: 2) == [2, 2]


def test_light_engines_behind_a_relay_work_encrypted(curve_cluster):
    """The relay encrypts what leaves its process, as each engine would (its engines
    reach it in process, so they reach the cluster through it or not at all)."""
    rc = curve_cluster.client
    host = subprocess.Popen([sys.executable, "-m", "mpihub", "engine", "--many", "4", "--relay", "--url-file",
                             str(curve_cluster.cluster.engine_file)])
    try:
        rc.wait_for_engines(6, timeout=30, interactive=False)
        relayed = [e for e, info in rc.engines.items() if info.pid == host.pid]
        assert len(relayed) == 4
        assert rc[relayed].apply_sync(lambda x: x + 1, 41) == [42] * 4
        rc[relayed].push({"secret": MARKER}, block=True)
        assert rc[relayed].pull("secret", block=True) == [MARKER] * 4
    finally:
        host.terminate()
        host.wait(timeout=10)
    deadline = time.monotonic() + 10
    while len(rc.ids) > 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(rc.ids) == 2, "the relayed engines said goodbye as their host stopped"

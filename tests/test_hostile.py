"""Hostile input: garbage and forged messages on every port are logged and dropped;
they never crash a process, never change state, and the cluster keeps answering."""
import json
import os
import socket
import time

import msgpack
import pytest
import zmq

import mpihub
from mpihub.protocol import wire

from support import request_urls, split_paths

pytestmark = [pytest.mark.timeout(90), pytest.mark.layouts("one", "split")]


def ports_of(cluster):
    """Every port of the controller: of a split one, its Hub's and each path's too."""
    urls = []
    for path in (cluster.cluster.client_file, cluster.cluster.engine_file):
        info = json.loads(path.read_text())
        urls += [info[k] for k in ("client", "engine", "heartbeat") if k in info]
    hub = split_paths(cluster)
    urls += [hub["hub"]] if "hub" in hub else []
    urls += [where[channel][0] for where in hub["paths"].values() for channel in ("client", "engine")]
    return urls


def direct_url(cluster) -> str:
    """Where DirectView requests go."""
    paths = split_paths(cluster)["paths"]
    return paths["direct"]["client"][0] if paths else request_urls(cluster)[0]


GARBAGE = [
    [b""],
    [b"\x00" * 3],
    [os.urandom(64)],
    [os.urandom(32), b"\x81\xa1t\xa5apply", b"x"],  # random signature, msgpack-ish header
    [os.urandom(32)] * 40,
    [b"\xff" * 100_000],
    # as if from a relay: undecodable routing, routing that does not match its frames,
    # and well-framed messages whose envelopes are not signed
    [b"", b"\xc1", b"x"],
    [b"", msgpack.packb([b"u" * 32, 5]), b"x"],
    [b"", msgpack.packb([b"u" * 32, 1, b"v" * 32, 1]), os.urandom(64), os.urandom(32) + b"\x81\xa1t\xa5apply"],
]


def assert_still_working(rc, cluster):
    assert rc.ids == [0, 1]
    assert rc[:].apply_sync(lambda: "alive") == ["alive", "alive"]
    assert all(p.poll() is None for p in cluster.cluster.launcher.processes)


def test_garbage_frames_on_every_port(rc, cluster):
    ctx = zmq.Context.instance()
    for url in ports_of(cluster):
        for kind in (zmq.DEALER, zmq.REQ, zmq.PUSH):
            sock = ctx.socket(kind)
            sock.linger = 0
            sock.connect(url)
            for frames in GARBAGE[: 1 if kind == zmq.REQ else None]:
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            time.sleep(0.05)
            sock.close()
    time.sleep(0.3)
    assert_still_working(rc, cluster)


def test_raw_tcp_garbage_on_every_port(rc, cluster):
    for url in ports_of(cluster):
        host, port = url.replace("tcp://", "").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\n\r\n" + os.urandom(4096))
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + os.urandom(2048))  # ZMTP-looking greeting
    time.sleep(0.3)
    assert_still_working(rc, cluster)


def signed_dealer(url, key, identity=None):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    if identity:
        sock.routing_id = identity
    sock.connect(url)
    return sock, wire.Signer(key)


def test_forged_requests_run_nothing(rc, cluster):
    info = json.loads(cluster.cluster.client_file.read_text())
    rc[:].execute("forged = 'no'", block=True)
    sock, signer = signed_dealer(direct_url(cluster), "not-the-key")
    sock.send_multipart(wire.pack(signer, {"t": "execute", "tg": [0, 1], "ids": ["f1", "f2"]}, b"forged = 'yes'"))
    good = wire.Signer(info["key"])
    (signed,) = wire.pack(good, {"t": "execute", "tg": [0, 1], "ids": ["f3", "f4"]}, b"forged = 'no!'")
    sock.send_multipart([signed.replace(b"forged = 'no!'", b"forged = 'yes'")])  # changed after signing
    time.sleep(0.5)
    sock.close()
    assert rc[:].pull("forged", block=True) == ["no", "no"]
    assert rc.db_query({"msg_id": {"$in": ["f1", "f2", "f3", "f4"]}}) == []


def test_malformed_but_signed_requests_are_dropped(rc, cluster):
    info = json.loads(cluster.cluster.client_file.read_text())
    bad_headers = [
        {"t": "apply", "tg": "all", "ids": ["a"]},
        {"t": "apply", "tg": [0, 1], "ids": ["only-one"]},
        {"t": "apply", "tg": ["zero"], "ids": ["x"]},
        {"t": "apply", "lb": True, "id": 5},
        {"t": "apply", "lb": True, "id": "y", "only": "zero"},
        {"t": "apply", "lb": True, "id": "r1", "re": -1},
        {"t": "apply", "lb": True, "id": "d1", "after": {"ids": "not-a-list"}},
        {"t": "apply", "lb": True, "id": "d2", "follow": {"ids": ["a"], "all": "yes"}},
        {"t": "apply", "lb": True, "id": "d3", "after": {"ids": ["a"]}, "to": -5},
        {"t": "apply", "tg": [0, 1], "ids": ["b1", "b2"], "bt": 7},
        {"t": "apply", "tg": [0], "ids": ["b3"], "bt": 0, "nb": 3},
        {"t": "query", "op": "signal", "sig": "TERM", "rid": "q3"},
        {"t": "query", "op": "db_query", "query": "not a dict", "rid": "q1"},
        {"t": "query", "op": "no_such_query", "rid": "q2"},
        {"t": "who_knows"},
    ]
    for url in request_urls(cluster):
        sock, signer = signed_dealer(url, info["key"])
        for header in bad_headers:
            sock.send_multipart(wire.pack(signer, header))
        time.sleep(0.3)
        sock.close()
    assert_still_working(rc, cluster)


def test_signed_apply_with_garbage_payload_fails_cleanly(rc, cluster):
    """A well-signed request whose pickle is garbage becomes a RemoteError, not a crash."""
    info = json.loads(cluster.cluster.client_file.read_text())
    sock, signer = signed_dealer(direct_url(cluster), info["key"])
    sock.send_multipart(wire.pack(signer, {"t": "connect", "rid": "r"}))
    assert sock.poll(5000)
    sock.recv_multipart()
    sock.send_multipart(wire.pack(signer, {"t": "apply", "tg": [0], "ids": ["garbage-1"], "fl": 3, "fb": 0},
                                  b"\x80\x05junk"))
    assert sock.poll(10000)
    reply = wire.unpack(signer, sock.recv_multipart())
    sock.close()
    assert reply.header["id"] == "garbage-1" and reply.header["st"] == "error"
    assert_still_working(rc, cluster)


def test_fake_engine_with_wrong_key_is_not_registered(rc, cluster):
    info = json.loads(cluster.cluster.engine_file.read_text())
    sock, signer = signed_dealer(info["engine"], "wrong-key", identity=b"fake-engine")
    sock.send_multipart(wire.pack(signer, {"t": "register", "info": {"hostname": "evil"}}))
    assert not sock.poll(1000)
    sock.close()
    assert rc.ids == [0, 1]


def test_client_with_wrong_key_is_refused(cluster):
    info = json.loads(cluster.cluster.client_file.read_text())
    info["key"] = "0" * 64
    started = time.monotonic()
    with pytest.raises(mpihub.TimeoutError, match="another key is refused"):
        mpihub.Client(info, timeout=1)
    assert time.monotonic() - started < 5

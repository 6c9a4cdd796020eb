"""An engine's watch on its connection file for a controller restored elsewhere."""
import json
import socket

import pytest

from mpihub.engine import follow
from mpihub.protocol.wire import SIGNATURE_SCHEME


def info(ip: str, key: str = "k" * 64, port: int = 5001) -> dict:
    return {"version": 1, "signature_scheme": SIGNATURE_SCHEME, "key": key, "location": ip,
            "engine": f"tcp://{ip}:{port}", "heartbeat": f"tcp://{ip}:{port + 1}",
            "candidates": {"engine": [f"tcp://{ip}:{port}", f"tcp://127.0.0.1:{port}"],
                           "heartbeat": [f"tcp://{ip}:{port + 1}", f"tcp://127.0.0.1:{port + 1}"]}}


@pytest.fixture(autouse=True)
def look_every_time(monkeypatch):
    monkeypatch.setattr(follow, "LOOK_EVERY", 0.0)


def rewrite(path, content) -> None:
    """Replace the file as a controller does (a new inode: temp + rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(content if isinstance(content, str) else json.dumps(content))
    tmp.replace(path)


def test_a_file_unchanged_or_naming_the_same_addresses_is_no_move(tmp_path):
    path = tmp_path / "engine.json"
    rewrite(path, info("10.0.0.1"))
    watched = follow.ControllerFile(path, info("10.0.0.1"))
    assert watched.moved() is None
    rewrite(path, info("10.0.0.1"))  # the same controller restored where it was
    assert watched.moved() is None


def test_new_addresses_under_the_same_key_are_a_move_seen_once(tmp_path):
    path = tmp_path / "engine.json"
    rewrite(path, info("10.0.0.1"))
    watched = follow.ControllerFile(path, info("10.0.0.1"))
    rewrite(path, info("10.0.0.2", port=6001))
    move = watched.moved()
    assert move is not None and move.info["location"] == "10.0.0.2"
    assert move.engine_url.endswith(":6001") and move.heartbeat_url.endswith(":6002")
    assert move.heartbeat_url.rsplit(":", 1)[0] == move.engine_url.rsplit(":", 1)[0]  # one host
    assert watched.moved() is None  # the same move is not handed out twice


def test_a_file_of_another_key_gone_or_half_written_is_no_move(tmp_path):
    path = tmp_path / "engine.json"
    rewrite(path, info("10.0.0.1"))
    watched = follow.ControllerFile(path, info("10.0.0.1"))
    rewrite(path, info("10.0.0.2", key="z" * 64))  # a new cluster, not this one restored
    assert watched.moved() is None
    path.unlink()
    assert watched.moved() is None
    rewrite(path, '{"version": 1, "key": ')
    assert watched.moved() is None
    rewrite(path, info("10.0.0.3"))  # the real one, afterwards, is still seen
    assert watched.moved().info["location"] == "10.0.0.3"


def test_looks_at_most_once_a_period(tmp_path, monkeypatch):
    monkeypatch.setattr(follow, "LOOK_EVERY", 60.0)
    path = tmp_path / "engine.json"
    rewrite(path, info("10.0.0.1"))
    watched = follow.ControllerFile(path, info("10.0.0.1"))
    assert watched.moved() is None  # looked: unchanged
    rewrite(path, info("10.0.0.2"))
    assert watched.moved() is None  # too soon to look again


def test_the_address_that_accepts_is_chosen(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        port = listener.getsockname()[1]
        moved = info("192.0.2.1", port=port)  # TEST-NET-1: never answers
        assert follow.choose(moved, probe_timeout=1.0).engine_url == f"tcp://127.0.0.1:{port}"
        assert follow.choose(moved, probe_timeout=1.0).heartbeat_url == f"tcp://127.0.0.1:{port + 1}"
    finally:
        listener.close()

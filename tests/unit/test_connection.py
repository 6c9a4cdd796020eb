"""Connection files: atomic, private, versioned, every candidate address."""
import json
import os
import stat

import pytest

from mpihub.protocol import connection, wire


def info(**extra):
    return {"version": connection.FILE_FORMAT_VERSION, "signature_scheme": wire.SIGNATURE_SCHEME, "key": "k", **extra}


def test_written_atomically_with_mode_0600(tmp_path):
    path = connection.connection_file("client", "c1", tmp_path)
    connection.write_atomic(path, info(client="tcp://127.0.0.1:1"))
    assert path.name == "mpihub-client-c1.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text())["client"] == "tcp://127.0.0.1:1"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_read_checks_version_scheme_and_key(tmp_path):
    path = tmp_path / "f.json"
    for bad in (info(version=99), info(signature_scheme="md5"), info(key="")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            connection.read(path)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="mpihub cluster start"):
        connection.read(tmp_path / "nope.json", timeout=0.1)


def test_candidates_cover_every_address():
    primary, candidates = connection.channel_urls("0.0.0.0", {"client": 5555})
    assert "tcp://127.0.0.1:5555" in candidates["client"]
    assert primary["client"] == candidates["client"][0]
    primary, candidates = connection.channel_urls("127.0.0.1", {"client": 5555})
    assert candidates["client"] == ["tcp://127.0.0.1:5555"]


def test_interface_names_and_addresses_resolve():
    assert connection.interface_ip("lo") == "127.0.0.1"
    assert connection.interface_ip("tcp://127.0.0.1") == "127.0.0.1"
    assert connection.interface_ip("10.1.2.3") == "10.1.2.3"
    with pytest.raises(ValueError, match="no-such-if"):
        connection.interface_ip("no-such-if")

"""Fixed ports for firewalls: a controller (one process or split) and its engines bind
only the ports they are given, work through them, and say clearly when too few are free."""
from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest
from support import RunningCluster, assert_gone, free_run

pytestmark = [pytest.mark.timeout(90), pytest.mark.layouts("one", "split")]

#: Ports a controller of each layout binds.
NEEDED = {"one": 3, "split": 8}


def ports_in(path) -> set[int]:
    return {int(port) for port in re.findall(r"tcp://[^\"]+:(\d+)", path.read_text())}


def test_the_controller_and_engines_bind_only_the_ports_given(layout, monkeypatch):
    base = free_run(NEEDED[layout] + 2 + 4)
    controller_ports = set(range(base, base + NEEDED[layout] + 2))  # two to spare
    data_ports = set(range(base + NEEDED[layout] + 2, base + NEEDED[layout] + 6))
    monkeypatch.setenv("MPIHUB_DATA_PORTS", f"{min(data_ports)}-{max(data_ports)}")
    running = RunningCluster(2, layout, controller_args=["--ports", f"{min(controller_ports)}-{max(controller_ports)}"])
    try:
        cluster, rc = running.cluster, running.client
        bound = ports_in(cluster.client_file) | ports_in(cluster.engine_file)
        assert bound and bound <= controller_ports, f"bound {sorted(bound)}, allowed {sorted(controller_ports)}"
        engine_ports = {int(url.rsplit(":", 1)[1]) for e in rc.engines.values() for url in e.data_urls}
        assert len(engine_ports) == 2 and engine_ports <= data_ports
        assert rc[:].apply_sync(lambda x: x + 1, 1) == [2, 2]
        assert rc.load_balanced_view().map_sync(abs, [-1, -2, -3]) == [1, 2, 3]
    finally:
        running.stop()


def test_too_few_ports_is_a_clear_error_that_leaves_nothing(layout, tmp_path):
    base = free_run(NEEDED[layout])
    held = socket.socket()  # another program holds the last port of the set
    held.bind(("127.0.0.1", base + NEEDED[layout] - 1))
    held.listen()
    split = ["--split"] if layout == "split" else []
    try:
        done = subprocess.run([sys.executable, "-m", "mpihub", "controller", *split, "--profile-dir", str(tmp_path),
                               "--ports", f"{base}-{base + NEEDED[layout] - 1}"],
                              capture_output=True, text=True, timeout=60)
    finally:
        held.close()
    assert done.returncode != 0
    in_use = re.search(r"no free port left for the \w+ socket in --ports .*in use by other processes ([\d, ]+)\.",
                       done.stderr)
    assert in_use, done.stderr
    assert str(base + NEEDED[layout] - 1) in in_use.group(1).split(", ")  # the program's port, named
    assert "needs 3 ports (8 with --split)" in done.stderr
    assert not list(tmp_path.glob("security/*.json")), "a controller that did not start left connection files"


def test_a_bad_port_set_is_refused_before_anything_starts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mpihub", "controller", "--profile-dir", str(tmp_path),
                           "--ports", "50010-50000"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "low to high" in done.stderr


def test_an_engine_without_a_free_data_port_says_so(tmp_path):
    running = RunningCluster(0)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        port = held.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "mpihub", "engine", "--url-file", str(running.cluster.engine_file),
                               "--data-ports", str(port), "--timeout", "10"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert f"no free port left for the data link socket in --data-ports {port}" in done.stderr
        assert running.client.ids == []
    finally:
        held.close()
        running.stop()
    assert_gone(running.pids)

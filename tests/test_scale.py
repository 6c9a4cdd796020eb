"""Hundreds of engines at once: a registration storm, one request fanned out to all and
the replies coming back in batches, a heartbeat period that grows with the engines,
deaths still found, limits named, and a quick stop.

The engines are light ones (``mpihub engine --many N``: many engines in one process,
each with its own sockets, speaking the real protocol), so that 300 fit this machine.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import zmq
from support import RunningCluster, assert_gone

import mpihub
from mpihub.protocol import connection, wire
from mpihub.protocol.schema import Key, Msg

pytestmark = [pytest.mark.timeout(120), pytest.mark.layouts("one", "split")]

HOSTS, PER_HOST = 3, 100
#: The last two hosts' engines reach the controller through a relay (in process: they
#: cannot reach it any other way); the first host's each on connections of their own.
RELAYED_HOSTS = 2
ENGINES = HOSTS * PER_HOST
#: Heartbeats a second the controller takes: with 300 engines, a period of 3 s.
RATE = 100
PERIOD = 3.0


def start_hosts(engine_file, hosts: int, per_host: int, relayed: int = 0, **popen) -> list[subprocess.Popen]:
    """``hosts`` light-engine hosts, the last ``relayed`` of them through a relay."""
    return [subprocess.Popen([sys.executable, "-m", "mpihub", "engine", "--many", str(per_host), "--url-file",
                              str(engine_file), *(["--relay"] if i >= hosts - relayed else [])], **popen)
            for i in range(hosts)]


@pytest.fixture(scope="module")
def crowd(layout):
    """A controller (``layout``) and 300 light engines in 3 processes, all started at
    the same instant, those of the last two through a relay each; the controller's
    heartbeat rate is capped so that the period grows."""
    saved = os.environ.get("MPIHUB_HEARTBEAT_RATE")
    os.environ["MPIHUB_HEARTBEAT_RATE"] = str(RATE)
    try:
        running = RunningCluster(0, layout)
    finally:
        os.environ.pop("MPIHUB_HEARTBEAT_RATE") if saved is None else os.environ.update(MPIHUB_HEARTBEAT_RATE=saved)
    hosts = start_hosts(running.cluster.engine_file, HOSTS, PER_HOST, relayed=RELAYED_HOSTS)
    running.pids += [host.pid for host in hosts]
    started = time.monotonic()
    try:
        running.client.wait_for_engines(ENGINES, timeout=60, interactive=False)
        running.registered_in = time.monotonic() - started
        running.hosts = hosts
        yield running
    finally:
        running.stop()
        for host in hosts:
            host.wait(timeout=10)


def test_a_storm_of_engines_all_register_once_each(crowd):
    rc = crowd.client
    assert rc.ids == list(range(ENGINES))
    engines = rc.engines
    assert {engine.pid for engine in engines.values()} == {host.pid for host in crowd.hosts}
    assert crowd.registered_in < 30, f"{ENGINES} engines took {crowd.registered_in:.1f} s to register"


def test_one_call_on_all_engines_comes_back_in_batches_naming_each_engine(crowd, monkeypatch):
    """The client receives a few messages for a call on all engines, not one an engine
    (the best of three calls: a busy moment on this 2-core machine can split a batch)."""
    rc = crowd.client
    received = []
    recv = wire.recv

    def counting(sock, flags=0):
        frames = recv(sock, flags)
        received.append(len(frames))
        return frames

    monkeypatch.setattr(wire, "recv", counting)
    counts = []
    for _ in range(3):
        received.clear()
        ar = rc[:].apply_async(os.getpid)
        pids = ar.get(timeout=30)
        counts.append(len(received))
        assert ar.engine_id == rc.ids
        assert pids == [rc.engines[e].pid for e in rc.ids]
    assert min(counts) < ENGINES // 4, f"messages received for one call on {ENGINES} engines: {counts}"

    with pytest.raises(mpihub.CompositeError) as raised:
        rc[:].apply_sync(lambda: 1 / 0)
    assert [e.engine_info["engine_id"] for e in raised.value.elist] == rc.ids
    assert {e.ename for e in raised.value.elist} == {"ZeroDivisionError"}


def test_push_pull_execute_and_scatter_reach_every_engine(crowd):
    view = crowd.client[:]
    view.push({"a": b"x" * 1000}, block=True)
    assert view.pull("a", block=True) == [b"x" * 1000] * ENGINES
    view.execute("b = len(a)", block=True)
    assert set(view.pull("b", block=True)) == {1000}
    view.scatter("part", list(range(2 * ENGINES)), block=True)
    assert view.gather("part", block=True) == list(range(2 * ENGINES))


def test_queries_and_load_balancing_at_size(crowd):
    rc = crowd.client
    status = rc.queue_status()
    assert set(status) >= set(rc.ids)
    squares = rc.load_balanced_view().map_sync(lambda x: x * x, range(2000))
    assert squares == [x * x for x in range(2000)]


def test_the_heartbeat_period_grows_with_the_engines(crowd):
    """A ping's answer names the period; 300 engines at 100 beats a second: 3 s."""
    info = connection.read(crowd.cluster.engine_file)
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(info["heartbeat"])
        signer = wire.Signer(info["key"])
        sock.send_multipart(wire.pack(signer, {Key.TYPE: Msg.PING}))
        assert sock.poll(5000), "no answer to a ping"
        pong = wire.unpack(signer, sock.recv_multipart())
    finally:
        sock.close()
    assert pong.type == Msg.PONG and pong.header[Key.UNKNOWN] is True
    assert pong.header[Key.HEARTBEAT_PERIOD] == pytest.approx(PERIOD)


def test_a_dead_host_is_found_and_the_others_are_not(crowd):
    """Its 100 engines (behind its relay) are reported dead within the timeout of a 3 s
    period (9 s); the 200 others, beating every 3 s, stay."""
    rc = crowd.client
    victim = crowd.hosts[-1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    started = time.monotonic()
    deadline = started + 3 * PERIOD + 6
    while len(rc.ids) > ENGINES - PER_HOST and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(rc.ids) == ENGINES - PER_HOST, f"{len(rc.ids)} engines left after {time.monotonic() - started:.1f} s"
    time.sleep(PERIOD)
    assert len(rc.ids) == ENGINES - PER_HOST
    assert len(rc[:].apply_sync(os.getpid)) == ENGINES - PER_HOST


def test_a_cluster_of_hundreds_stops_quickly(layout):
    running = RunningCluster(0, layout)
    hosts = start_hosts(running.cluster.engine_file, 2, 100)
    running.pids += [host.pid for host in hosts]
    try:
        running.client.wait_for_engines(200, timeout=60, interactive=False)
    finally:
        started = time.monotonic()
        running.stop()
        for host in hosts:
            assert host.wait(timeout=10) == 0
    assert time.monotonic() - started < 10


def low_fd_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


@pytest.mark.layouts("one")
def test_too_low_a_file_limit_is_named(fresh_cluster):
    """Light engines that cannot open their sockets say which limit to raise."""
    running = fresh_cluster(0)
    host = start_hosts(running.cluster.engine_file, 1, 1000, preexec_fn=low_fd_limit(256), stderr=subprocess.PIPE,
                       text=True)[0]
    _, err = host.communicate(timeout=30)
    assert host.returncode == 1
    assert "1000 light engines needs about" in err and "ulimit -n" in err and "256" in err


@pytest.mark.layouts("one")
def test_a_controller_short_of_file_descriptors_refuses_engines_clearly(tmp_path):
    """Past its file-descriptor limit the controller refuses further engines, naming
    the limit, and keeps those it has."""
    controller = subprocess.Popen([sys.executable, "-m", "mpihub", "controller", "--profile-dir", str(tmp_path)],
                                  preexec_fn=low_fd_limit(300), stderr=subprocess.PIPE, text=True)
    engine_file = tmp_path / "security" / "mpihub-engine.json"
    host = None
    try:
        deadline = time.monotonic() + 30
        while not engine_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        host = start_hosts(engine_file, 1, 40, stderr=subprocess.PIPE, text=True)[0]
        _, err = host.communicate(timeout=60)
        assert host.returncode == 1
        assert "the controller refused" in err and "file descriptors" in err and "300" in err
    finally:
        controller.send_signal(signal.SIGTERM)
        _, log = controller.communicate(timeout=30)
        pids = [controller.pid] + ([host.pid] if host else [])
        assert_gone(pids)
    assert "engine refused" in log


@pytest.mark.layouts("one")
def test_an_engine_holding_the_gil_in_c_code_is_not_declared_dead(fresh_cluster):
    """A C call that keeps the GIL for ten heartbeat periods (conftest: 0.25 s; timeout
    3 s) silences the engine's heartbeat thread, within the timeout: it stays."""
    running = fresh_cluster(1)
    rc = running.client

    def hold_the_gil(seconds: float) -> str:
        import ctypes

        ctypes.PyDLL(None).usleep(int(seconds * 1e6))  # PyDLL keeps the GIL during the call
        return "done"

    assert rc[:].apply_sync(hold_the_gil, 2.5) == ["done"]
    time.sleep(1)
    assert rc.ids == [0]

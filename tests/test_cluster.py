"""Cluster and CLI: start, connect, status, stop; nothing left behind."""
import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

import mpihub
from support import assert_gone
from mpihub.cluster.cluster import state_file

pytestmark = pytest.mark.timeout(90)


def mpihub_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "mpihub", *args], capture_output=True, text=True, timeout=timeout)


def test_context_manager_starts_and_stops_everything():
    cluster = mpihub.Cluster(n=2)
    with cluster as rc:
        assert rc.ids == [0, 1]
        pids = cluster.launcher.pids
        assert len(cluster.launcher.processes) == 2  # the controller and the engines' keeper
        assert sorted(pids[2:]) == sorted(e.pid for e in rc.engines.values())  # the engines, forked by it
        for path in (cluster.client_file, cluster.engine_file):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            info = json.loads(path.read_text())
            assert info["version"] == 1 and info["signature_scheme"] == "blake2b-256" and len(info["key"]) >= 32
            assert all(url.startswith("tcp://127.0.0.1:") for urls in info["candidates"].values() for url in urls)
        assert rc[:].apply_sync(lambda: 1) == [1, 1]
    assert_gone(pids)
    assert not cluster.client_file.exists() and not cluster.engine_file.exists()


def test_sync_and_async_start_stop():
    cluster = mpihub.Cluster(n=1, cluster_id="sync-async")
    rc = cluster.start_and_connect_sync()
    assert rc.cluster_id == "sync-async" and rc.ids == [0]
    cluster.stop_cluster_sync()
    assert_gone(cluster.launcher.pids)

    async def run():
        other = mpihub.Cluster(n=1)
        client = await other.start_and_connect()
        result = await client[0].apply_async(lambda: "async")
        await other.stop_cluster()
        return other, result

    other, result = asyncio.run(run())
    assert result == "async"
    assert_gone(other.launcher.pids)


def test_unsupported_kinds_and_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        mpihub.Cluster(n=1, engines="condor")
    with pytest.raises(ValueError, match="controller must be one of"):
        mpihub.Cluster(n=1, controller="lsf")
    with pytest.raises(ValueError, match="runs its engines there too"):
        mpihub.Cluster(n=1, engines="local", controller="slurm")
    with pytest.raises(ValueError, match="srun"):
        mpihub.Cluster(n=1, engines="slurm", engine_launch="aprun")
    with pytest.raises(ValueError, match="no batch job"):
        mpihub.Cluster(n=1).job_script()
    with pytest.raises(ValueError):
        mpihub.Cluster(n=-1)


def test_client_without_controller_explains():
    with pytest.raises(FileNotFoundError, match="mpihub cluster start"):
        mpihub.Client(cluster_id="nobody-home", timeout=0.2)


def test_cli_cluster_start_status_list_stop(profile_dir):
    started = mpihub_cli("cluster", "start", "-n", "2", "--daemonize", "--cluster-id", "cli")
    assert started.returncode == 0, started.stderr
    assert "2 engines running" in started.stdout
    state = json.loads(state_file("cli").read_text())
    pids = [state["controller_pid"], *state["engine_pids"]]
    try:
        status = mpihub_cli("status", "--cluster-id", "cli")
        assert status.returncode == 0, status.stderr
        assert "2 engines" in status.stdout and [line.split()[0] for line in status.stdout.splitlines()[2:]] == ["0", "1"]
        listing = mpihub_cli("cluster", "list")
        assert "cli" in listing.stdout and "2 engines, 4/4 processes running" in listing.stdout  # and their keeper
        with mpihub.Client(cluster_id="cli") as rc:
            assert rc[:].apply_sync(lambda: 2) == [2, 2]
    finally:
        stopped = mpihub_cli("cluster", "stop", "--cluster-id", "cli")
    assert stopped.returncode == 0, stopped.stderr
    assert_gone(pids)
    assert not state_file("cli").exists()
    assert not (profile_dir / "security" / "mpihub-client-cli.json").exists()
    again = mpihub_cli("cluster", "stop", "--cluster-id", "cli")
    assert again.returncode == 1 and "no running cluster" in again.stderr
    assert mpihub_cli("status", "--cluster-id", "cli", "--timeout", "0.2").returncode == 1


def test_cli_foreground_cluster_stops_on_sigterm(profile_dir):
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "mpihub", "cluster", "start", "-n", "1", "--cluster-id", "fg"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not state_file("fg").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with mpihub.Client(cluster_id="fg", timeout=30) as rc:
            rc.wait_for_engines(1, timeout=30, interactive=False)
        state = json.loads(state_file("fg").read_text())
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert_gone([state["controller_pid"], *state["engine_pids"]])
    assert not state_file("fg").exists()


def test_second_controller_for_same_cluster_is_refused():
    cluster = mpihub.Cluster(n=0, cluster_id="twice")
    cluster.start_controller()
    try:
        with pytest.raises(RuntimeError, match="running already"):
            mpihub.Cluster(n=0, cluster_id="twice").start_controller()
    finally:
        cluster.stop_cluster_sync()
    assert_gone(cluster.launcher.pids)


def test_stop_after_client_closed_is_prompt_and_clean():
    import time

    cluster = mpihub.Cluster(n=2)
    rc = cluster.start_and_connect_sync()
    rc.close()
    started = time.monotonic()
    cluster.stop_cluster_sync()
    took = time.monotonic() - started
    codes = [p.returncode for p in cluster.launcher.processes]  # the controller, the engines' keeper (0: all did)
    logs = "\n".join(f"--- {p.log_path} (exit {p.returncode})\n{p.log_path.read_text()[-1500:]}"
                     for p in cluster.launcher.processes)
    assert took < 3 and codes == [0, 0], f"stop took {took:.1f} s, exits {codes}\n{logs}"  # clean, no kill


def test_client_connection_spellings():
    cluster = mpihub.Cluster(n=1, cluster_id="spell")
    cluster.start_cluster_sync()
    try:
        for client in (mpihub.Client(url_file=str(cluster.client_file)),
                       mpihub.Client(cluster_id="spell", timeout=30),
                       mpihub.Client(json.loads(cluster.client_file.read_text())),
                       mpihub.Client(profile_dir=os.environ["MPIHUB_DIR"], cluster_id="spell")):
            with client:
                client.wait_for_engines(1, timeout=30, interactive=False)
                assert client[0].apply_sync(lambda: 5) == 5
                ar = client[0].apply_async(lambda: 6)
                assert ar.r == 6 and ar.result == 6
    finally:
        cluster.stop_cluster_sync()
    assert_gone(cluster.launcher.pids)


def test_controller_on_all_interfaces_lists_every_address():
    # No engines here: they would dial the machine's own non-loopback address, and tests
    # send traffic to loopback only.
    cluster = mpihub.Cluster(n=0, controller_ip="0.0.0.0")
    cluster.start_cluster_sync()
    try:
        for path in (cluster.client_file, cluster.engine_file):
            info = json.loads(path.read_text())
            for channel, urls in info["candidates"].items():
                port = info[channel].rsplit(":", 1)[1]
                assert f"tcp://127.0.0.1:{port}" in urls and info[channel] == urls[0]
        engine_info = json.loads(cluster.engine_file.read_text())
        assert engine_info["engine_bind_ip"] == "*"
        info = json.loads(cluster.client_file.read_text())
        info["candidates"]["client"] = [u for u in info["candidates"]["client"] if "127.0.0.1" in u]
        info["client"] = info["candidates"]["client"][0]
        with mpihub.Client(info) as rc:
            assert rc.ids == [] and rc.queue_status() == {"unassigned": 0}
    finally:
        cluster.stop_cluster_sync()
    assert_gone(cluster.launcher.pids)


def test_engines_try_every_address_in_the_file(fresh_cluster, tmp_path):
    """An engine whose first address does not answer registers at the next one."""
    running = fresh_cluster(0)
    info = json.loads(running.cluster.engine_file.read_text())
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
    info["candidates"]["engine"] = [dead, info["engine"]]
    info["engine"] = dead
    path = tmp_path / "engine.json"
    path.write_text(json.dumps(info))
    engine = subprocess.Popen([sys.executable, "-m", "mpihub", "engine", "--url-file", str(path), "--timeout", "8"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        running.client.wait_for_engines(1, timeout=20, interactive=False)
        assert running.client[:].apply_sync(lambda: "registered at the second address") == [
            "registered at the second address"]
    finally:
        engine.terminate()
        engine.wait(10)


OWNER_SCRIPT = """
import time, mpihub
cluster = mpihub.Cluster(n=1)
cluster.start_and_connect_sync()
print(" ".join(str(pid) for pid in cluster.launcher.pids), flush=True)
time.sleep(300)
"""


def test_cluster_ends_with_a_killed_owner(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(OWNER_SCRIPT)
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 3  # the controller, the engines' keeper, the engine
    finally:
        owner.kill()
        owner.wait(10)
    assert_gone(pids, timeout=15)


def test_waiting_for_a_connection_file_shows_progress(tmp_path, capsys, monkeypatch):
    """A Client started before its batch job's controller is up waits for the file,
    with a progress bar in a terminal."""
    from mpihub.client.connectioninfo import wait_with_progress

    path = tmp_path / "mpihub-client-later.json"
    threading.Timer(0.6, path.write_text, ("{}",)).start()
    started = time.monotonic()
    wait_with_progress(path, timeout=10)
    assert path.exists() and 0.5 < time.monotonic() - started < 5
    assert "waiting for mpihub-client-later.json" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with pytest.raises(FileNotFoundError, match="no connection file"):
        mpihub.Client(cluster_id="never-started", timeout=0.3)
    assert "waiting for mpihub-client-never-started.json" in capsys.readouterr().err

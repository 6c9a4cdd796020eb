"""Dead engines, busy engines and a vanished controller, on real processes."""
import os
import signal
import subprocess
import sys
import time

import pytest

import mpihub
from support import assert_gone


def engine_pid(client, engine_id):
    return client.engines[engine_id].pid


@pytest.mark.timeout(90)
@pytest.mark.layouts("one", "split")
def test_killed_engine_fails_its_tasks_and_leaves_ids(fresh_cluster):
    running = fresh_cluster(3)
    rc = running.client
    with mpihub.Client(running.cluster.client_file) as watcher:
        victim = 1
        running_task = rc[victim].apply_async(time.sleep, 30)
        queued_task = rc[victim].apply_async(lambda: "never")
        lb_task = rc.load_balanced_view([victim]).apply_async(time.sleep, 30)
        fanout = rc[:].apply_async(lambda: "fan")
        time.sleep(0.3)
        killed_at = time.monotonic()
        os.kill(engine_pid(rc, victim), signal.SIGKILL)
        for ar in (running_task, queued_task, lb_task):
            with pytest.raises(mpihub.EngineError):
                ar.get(timeout=15)
        assert time.monotonic() - killed_at < 10
        with pytest.raises(mpihub.CompositeError) as info:
            fanout.get(timeout=15)
        assert len(info.value.elist) == 1 and isinstance(info.value.elist[0], mpihub.EngineError)
        assert rc.ids == [0, 2]
        deadline = time.monotonic() + 5
        while watcher.ids != [0, 2] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.ids == [0, 2]
        assert rc[:].apply_sync(lambda: "ok") == ["ok", "ok"]
        assert rc.load_balanced_view().map_sync(lambda x: x, range(10)) == list(range(10))
        with pytest.raises(mpihub.EngineError):
            rc.direct_view(1).apply_sync(lambda: 1)


@pytest.mark.timeout(150)
def test_busy_engine_is_not_declared_dead(fresh_cluster):
    """A 60 s pure-Python loop holds the GIL in bursts; heartbeats must keep flowing."""
    running = fresh_cluster(1)
    rc = running.client

    def spin(seconds):
        import time
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
        return n

    assert rc[0].apply_sync(spin, 60) > 0
    assert rc.ids == [0]


@pytest.mark.timeout(60)
def test_engine_exits_when_controller_is_gone(tmp_path):
    env = {**os.environ, "MPIHUB_ENGINE_CONTROLLER_TIMEOUT": "2", "MPIHUB_DIR": str(tmp_path)}
    controller = subprocess.Popen([sys.executable, "-m", "mpihub", "controller", "--cluster-id", "lost"],
                                  env=env, stderr=subprocess.DEVNULL)
    engine_file = tmp_path / "security" / "mpihub-engine-lost.json"
    engine = None
    try:
        deadline = time.monotonic() + 20
        while not engine_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        engine = subprocess.Popen([sys.executable, "-m", "mpihub", "engine", "--url-file", str(engine_file)],
                                  env=env, stderr=subprocess.PIPE, text=True)
        with mpihub.Client(tmp_path / "security" / "mpihub-client-lost.json") as rc:
            rc.wait_for_engines(1, timeout=20, interactive=False)
        controller.kill()
        controller.wait(10)
        assert engine.wait(20) == 1
        assert "controller silent" in engine.stderr.read()
    finally:
        for process in (controller, engine):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(5)


@pytest.mark.timeout(60)
@pytest.mark.layouts("one", "split")
def test_shutdown_of_some_engines(fresh_cluster):
    running = fresh_cluster(2)
    rc = running.client
    pid = engine_pid(rc, 0)
    rc.shutdown(targets=[0], block=True)
    assert rc.ids == [1]
    assert_gone([pid])
    assert rc[:].apply_sync(lambda: 1) == [1]
    rc.shutdown(targets="all")
    assert rc.ids == []
    with pytest.raises(mpihub.NoEnginesRegistered):
        rc.direct_view().apply_sync(lambda: 1)


@pytest.mark.timeout(90)
@pytest.mark.layouts("one", "split")
def test_hub_store_is_bounded(fresh_cluster, monkeypatch):
    """Payloads the Hub keeps for get_result stay within MPIHUB_STORE_BYTES."""
    import numpy as np

    monkeypatch.setenv("MPIHUB_STORE_BYTES", str(8 * 1024 * 1024))
    monkeypatch.setattr(mpihub.config, "MAX_DATA_LINKS", 0)  # results relay through the Hub
    running = fresh_cluster(2)
    rc = running.client
    ars = [rc[:].apply_async(lambda i: np.full(250_000, i), i) for i in range(12)]  # 2 MB results, relayed
    rc.wait(ars, timeout=60)
    ids = {m for ar in ars for m in ar.msg_ids}
    records = [r for r in rc.db_query({"received": {"$exists": True}}, keys=["received"]) if r["msg_id"] in ids]
    by_arrival = [r["msg_id"] for r in sorted(records, key=lambda r: r["received"])]
    with mpihub.Client(running.cluster.client_file) as other:
        with pytest.raises(KeyError, match="purged"):
            other.get_result(by_arrival[0])
        latest = other.get_result(by_arrival[-1]).get(timeout=10)
        assert len(latest) == 250_000
    assert len(rc.db_query({"completed": {"$exists": True}}, keys=["status"])) >= 24


@pytest.mark.timeout(60)
def test_wait_for_engines_shows_progress_and_times_out(fresh_cluster, capsys):
    running = fresh_cluster(1)
    running.client.wait_for_engines(1, timeout=5, interactive=True)
    assert "waiting for engines" in capsys.readouterr().err
    with pytest.raises(mpihub.TimeoutError, match="1 of 3 engines"):
        running.client.wait_for_engines(3, timeout=0.5, interactive=False)


@pytest.mark.timeout(120)
def test_records_and_memory_stay_bounded(fresh_cluster, monkeypatch):
    """Many tiny tasks: the Hub keeps the newest MPIHUB_MAX_RECORDS records, forgets the
    oldest, and the controller's memory stops growing with them."""
    monkeypatch.setenv("MPIHUB_MAX_RECORDS", "2000")
    running = fresh_cluster(2)
    rc = running.client
    controller_pid = running.cluster.launcher.pids[0]

    def rss_mb() -> float:
        with open(f"/proc/{controller_pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    lbview = rc.load_balanced_view()
    first = lbview.map_async(lambda x: x, range(3000))
    first.get(timeout=60)
    settled = rss_mb()
    for _ in range(3):
        assert lbview.map_sync(lambda x: x, range(3000)) == list(range(3000))
    assert rss_mb() - settled < 30  # 9,000 more tasks, no more records kept
    assert len(rc.db_query({"completed": {"$exists": True}}, keys=["status"])) <= 2000
    with mpihub.Client(running.cluster.client_file) as other, pytest.raises(KeyError, match="unknown"):
        other.get_result(first.msg_ids[0])  # forgotten by the Hub (this client still holds it)

"""The durable task store end to end: ``--db sqlite`` on a real cluster whose memory
cache keeps only 5 finished records, so every answer about older tasks comes from SQLite,
for another client, and for a later controller of the same cluster."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

import mpihub
from mpihub.controller.taskdb import db_path

pytestmark = pytest.mark.timeout(120)


@mpihub.interactive
def nap(i):
    import time

    time.sleep(0.2)
    return i


@mpihub.interactive
def shout(i):
    print(f"task {i} says hello")
    return i * 10


@pytest.fixture
def small_memory(monkeypatch):
    """Controllers started from here keep 5 finished records in memory."""
    monkeypatch.setenv("MPIHUB_MAX_RECORDS", "5")


@pytest.mark.layouts("one", "split")
def test_another_client_gets_results_from_the_store(fresh_cluster, small_memory):
    running = fresh_cluster(2, controller_args=["--db", "sqlite"])
    rc = running.client
    ar = rc.load_balanced_view().map_async(shout, range(30))
    assert ar.get(timeout=60) == [i * 10 for i in range(30)]
    direct = rc[0].apply_async(shout, 99)
    assert direct.get(timeout=30) == 990
    with mpihub.Client(running.cluster.client_file) as other:
        old = other.get_result(ar.msg_ids[0])
        assert old.get(timeout=10) == [0]
        assert "task 0 says hello" in old.stdout
        assert other.get_result(direct.msg_ids[0]).get(timeout=10) == 990
        records = other.db_query({"msg_id": {"$in": ar.msg_ids}}, keys=["status", "engine_id", "stdout", "submitted"])
        assert [r["msg_id"] for r in records] == ar.msg_ids
        assert all(r["status"] == "ok" and r["engine_id"] in rc.ids for r in records)
        assert "task 7 says hello" in records[7]["stdout"]
        late = other.db_query({"submitted": {"$gte": records[0]["submitted"]}, "queue": {"$ne": "direct"}},
                              keys=["queue"])
        assert [r["msg_id"] for r in late] == ar.msg_ids
        assert other.resubmit(ar.msg_ids[1]).get(timeout=30) == [10]
        [marked] = other.db_query({"msg_id": ar.msg_ids[1]}, keys=["resubmitted"])
        assert marked["resubmitted"]
    files = list((running.cluster.profile_dir / "db").glob(f"mpihub-tasks-{running.cluster.cluster_id}*.sqlite"))
    assert files


def test_a_later_controller_answers_from_the_same_store(fresh_cluster, small_memory):
    first = fresh_cluster(2, controller_args=["--db", "sqlite"], cluster_id="durable")
    ar = first.client.load_balanced_view().map_async(shout, range(12))
    assert ar.get(timeout=60) == [i * 10 for i in range(12)]
    first.stop()
    path = db_path(first.cluster.profile_dir, "durable")
    stored = sqlite3.connect(path).execute("SELECT COUNT(*) FROM tasks WHERE status = 'ok'").fetchone()[0]
    assert stored == 12
    later = fresh_cluster(1, controller_args=["--db", "sqlite"], cluster_id="durable")
    assert later.client.get_result(ar.msg_ids[3]).get(timeout=10) == [30]
    assert len(later.client.db_query({"msg_id": {"$in": ar.msg_ids}})) == 12
    later.client.purge_results(ar.msg_ids[:2])
    assert len(later.client.db_query({"msg_id": {"$in": ar.msg_ids}})) == 10


def test_memory_only_says_a_result_was_evicted_unfetched(fresh_cluster, small_memory):
    """Without a durable store, a result dropped before anyone fetched it is named as such."""
    running = fresh_cluster(1)
    rc = running.client
    lost = mpihub.Client(running.cluster.client_file)
    ar = lost.load_balanced_view().map_async(nap, range(8))
    lost.close()  # the results arrive with nobody there to take them: 8 unfetched, 5 kept
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
            v["tasks"] or v["queue"] for k, v in rc.queue_status().items() if k != "unassigned"):
        time.sleep(0.1)
    with pytest.raises(KeyError, match="evicted .* before anyone fetched it"):
        rc.get_result(ar.msg_ids[0])
    assert rc.get_result(ar.msg_ids[-1]).get(timeout=10) == [7]


@pytest.mark.layouts("one", "split")
def test_the_results_of_blocking_calls_count_as_fetched(fresh_cluster, small_memory):
    """A blocking call's reply comes back on the calling thread's own socket, which never
    says connect: its results are fetched all the same, so the records forgotten to stay
    within the limit are those, with no warning of a result lost unfetched."""
    running = fresh_cluster(1)
    rc = running.client
    for i in range(20):
        assert rc[:].apply_sync(shout, i) == [i * 10]
    log = Path(running.cluster._controller_process.log_path).read_text()
    assert "before anyone fetched it" not in log


def test_batch_clusters_store_tasks_in_sqlite():
    script = mpihub.Cluster(n=2, engines="slurm", controller="slurm").job_script()
    assert "--db sqlite" in script
    kept = mpihub.Cluster(n=2, engines="slurm", controller="slurm", controller_args=["--db", "memory"]).job_script()
    assert "--db memory" in kept and "--db sqlite" not in kept
    assert "--db" not in mpihub.Cluster(n=2).controller_args

"""The Hub as a pure state machine: ids, task records, queries, purging, the store."""
import pytest

from mpihub.controller.hub import Hub
from mpihub.controller.store import PayloadStore


def hub_with_engines(n=2):
    hub = Hub(store_limit=1 << 20)
    for i in range(n):
        hub.register_engine(f"uuid{i}".encode(), None, {"hostname": "h"}, now=0.0)
    return hub


def test_ids_count_up_and_are_never_reused():
    hub = hub_with_engines(2)
    assert sorted(hub.engines) == [0, 1]
    hub.remove_engine(1)
    assert hub.register_engine(b"new", None, {}, 0.0)[0].id == 2
    assert hub.register_engine(b"uuid0", None, {}, 0.0)[0].id == 0  # same uuid: same record


def test_requested_ids_are_honoured_when_free():
    hub = Hub(store_limit=100)
    assert hub.register_engine(b"a", 5, {}, 0.0)[0].id == 5
    assert hub.register_engine(b"b", 5, {}, 0.0)[0].id == 6  # taken: next free
    assert hub.register_engine(b"c", 1, {}, 0.0)[0].id == 7  # below the counter: never reused


def test_a_path_mirrors_the_ids_its_hub_gave():
    hub = Hub(store_limit=100)
    assert hub.mirror_engine(7, b"seven", {}, 0.0).id == 7
    assert hub.mirror_engine(7, b"seven", {}, 1.0).registered == 0.0  # a repeated hello: the same record
    with pytest.raises(ValueError, match="another uuid"):
        hub.mirror_engine(7, b"impostor", {}, 0.0)
    assert hub.by_uuid == {b"seven": 7}
    hub.remove_engine(7)
    assert hub.mirror_engine(7, b"impostor", {}, 0.0).uuid == b"impostor"  # gone: the id may come back


def test_task_lifecycle_and_queue_status():
    hub = hub_with_engines(2)
    client = b"client-1"
    hub.submit("d1", "direct", client, 0, 1.0, ["req"], 10)
    hub.submit("t1", "task", client, None, 1.0, ["req"], 10)
    assert hub.queue_status() == {0: {"queue": 1, "completed": 0, "tasks": 0},
                                  1: {"queue": 0, "completed": 0, "tasks": 0}, "unassigned": 1}
    hub.assign("t1", 1)
    assert hub.queue_status([1]) == {1: {"queue": 0, "completed": 0, "tasks": 1}, "unassigned": 0}
    rec = hub.finish("t1", 1, {"st": "ok", "started": 2.0, "completed": 3.0, "out": "hi"}, ["reply"], 5, 9.0)
    assert rec.status == "ok" and rec.stdout == "hi" and rec.completed == 3.0
    assert hub.stored_reply("t1") == ("stored", ["reply"])
    assert hub.finish("t1", 1, {}, [], 0, 9.0) is None  # a second reply changes nothing
    assert hub.queue_status(verbose=True)[0]["queue"] == ["d1"]


def test_a_retried_task_waits_again_then_finishes_elsewhere():
    hub = hub_with_engines(2)
    hub.submit("t1", "task", b"c", None, 1.0, ["req"], 10)
    hub.assign("t1", 0)
    hub.requeue("t1")
    assert hub.queue_status() == {0: {"queue": 0, "completed": 0, "tasks": 0},
                                  1: {"queue": 0, "completed": 0, "tasks": 0}, "unassigned": 1}
    assert hub.tasks["t1"].engine_id is None and hub.tasks["t1"].status == "pending"
    hub.assign("t1", 1)
    assert hub.finish("t1", 1, {"st": "ok"}, ["reply"], 5, 2.0).engine_id == 1
    assert hub.queue_status()[1]["completed"] == 1 and hub.queue_status()["unassigned"] == 0


def test_removed_engine_hands_back_unfinished_tasks():
    hub = hub_with_engines(2)
    hub.submit("d1", "direct", b"c", 0, 1.0, [], 0)
    hub.submit("t1", "task", b"c", None, 1.0, [], 0)
    hub.assign("t1", 0)
    record, lost = hub.remove_engine(0)
    assert record.id == 0 and sorted(r.msg_id for r in lost) == ["d1", "t1"]
    assert hub.remove_engine(0) == (None, [])


def test_queries_with_operators_and_keys():
    hub = hub_with_engines(2)
    for i in range(4):
        hub.submit(f"m{i}", "direct", b"c", i % 2, float(i), [], 0)
    hub.finish("m0", 0, {"st": "ok", "completed": 5.0}, [], 0, 9.0)
    hub.finish("m1", 1, {"st": "error", "ename": "ValueError", "completed": 6.0}, [], 0, 9.0)
    assert [r["msg_id"] for r in hub.query({"engine_id": 1})] == ["m1", "m3"]
    assert [r["msg_id"] for r in hub.query({"submitted": {"$gt": 1.0}})] == ["m2", "m3"]
    assert [r["msg_id"] for r in hub.query({"submitted": {"$gte": 1.0, "$lt": 3.0}})] == ["m1", "m2"]
    assert [r["msg_id"] for r in hub.query({"completed": {"$exists": True}})] == ["m0", "m1"]
    assert [r["msg_id"] for r in hub.query({"ename": {"$in": ["ValueError"]}})] == ["m1"]
    assert [r["msg_id"] for r in hub.query({"msg_id": {"$glob": "m[23]"}})] == ["m2", "m3"]
    assert hub.query({"status": "ok"}, keys=["status"]) == [{"msg_id": "m0", "status": "ok"}]
    with pytest.raises(KeyError):
        hub.query({"bogus": 1})
    with pytest.raises(ValueError):
        hub.query({"submitted": {"$regex": "x"}})


def test_purge_forgets_only_finished_tasks():
    hub = hub_with_engines(1)
    hub.submit("done", "direct", b"c", 0, 0.0, ["r"], 1)
    hub.submit("running", "direct", b"c", 0, 0.0, ["r"], 1)
    hub.finish("done", 0, {"st": "ok"}, ["x"], 1, 9.0)
    assert hub.purge(None, None) == ["done"]
    assert list(hub.tasks) == ["running"] and hub.stored_reply("done") == ("unknown", None)


def test_store_releases_oldest_payloads_past_its_limit():
    store = PayloadStore(limit=100)
    store.put("a", "A", 60)
    store.put("b", "B", 30)
    assert store.put("c", "C", 50) == ["a"]
    assert store.get("a") is None and store.get("b") == "B" and store.nbytes == 80
    store.put("b", "B2", 10)  # replacing re-counts
    assert store.nbytes == 60 and len(store) == 2


def test_finished_records_are_bounded_oldest_first():
    hub = Hub(store_limit=1 << 20, record_limit=2)
    hub.register_engine(b"e", None, {}, 0.0)
    for i in range(4):
        hub.submit(f"m{i}", "direct", b"c", 0, 0.0, ["r"], 1)
    for i in range(3):
        hub.finish(f"m{i}", 0, {"st": "ok"}, ["x"], 1, 9.0)
    assert sorted(hub.tasks) == ["m1", "m2", "m3"]  # m0 forgotten; unfinished m3 kept
    assert hub.stored_reply("m0") == ("evicted", None) and hub.tasks["m2"].received == 9.0


def test_mpi_worlds_get_consecutive_ids_in_rank_order():
    hub = Hub(store_limit=100)
    hub.register_engine(b"plain", None, {}, 0.0)  # id 0
    world = {"mpi_world": "w1", "mpi_size": 3}
    for rank in (2, 0, 1):  # registration order does not matter
        hub.register_engine(f"w1-{rank}".encode(), None, {**world, "mpi_rank": rank}, 0.0)
    assert {hub.by_uuid[f"w1-{r}".encode()]: r for r in range(3)} == {1: 0, 2: 1, 3: 2}
    hub.register_engine(b"w2-1", None, {"mpi_world": "w2", "mpi_size": 2, "mpi_rank": 1}, 0.0)
    assert hub.by_uuid[b"w2-1"] == 5  # the second world's block starts after the first
    assert hub.register_engine(b"late", None, {}, 0.0)[0].id == 6
    odd, _ = hub.register_engine(b"odd", None, {"mpi_world": "w3", "mpi_size": 2, "mpi_rank": 7}, 0.0)
    assert odd.id == 7  # a nonsensical rank gets an ordinary id


def test_an_engine_declared_dead_gets_its_id_back_under_its_uuid_only():
    hub = hub_with_engines(2)
    hub.remove_engine(1)
    assert hub.register_engine(b"stranger", 1, {}, 0.0)[0].id == 2  # another uuid: a new id
    record, how = hub.register_engine(b"uuid1", 1, {"hostname": "back"}, 1.0)
    assert (record.id, how, record.info) == (1, "rejoined", {"hostname": "back"})
    assert hub.register_engine(b"uuid1", 1, {}, 2.0) == (record, "again")  # a repeated registration
    hub.remove_engine(1)
    assert hub.register_engine(b"uuid1", None, {}, 3.0)[0].id == 3  # asking for no id: a new one


def test_a_restored_hub_waits_for_its_engines_with_their_tasks():
    hub = Hub(store_limit=1 << 20)
    hub.restore_engine(4, b"four", {"hostname": "h"}, 0.0)
    hub.restore_next_id(7)
    direct = hub.restore_task("d", "direct", b"client", 1.0, 4, [b"request"], 7)
    assigned = hub.restore_task("t", "task", b"client", 2.0, 4, [b"request"], 7)
    queued = hub.restore_task("q", "task", b"client", 3.0, None, [b"request"], 7)
    orphan = hub.restore_task("o", "direct", b"client", 4.0, 9, None, 0)  # its engine is not in the table
    record = hub.engines[4]
    assert record.rejoining and record.queue == {"d"} and record.tasks == {"t"}
    assert (direct.engine_id, assigned.engine_id, queued.engine_id, orphan.engine_id) == (4, 4, None, None)
    assert hub.unassigned == 2 and hub.request_frames("t") == [b"request"]
    assert hub.register_engine(b"new", None, {}, 5.0)[0].id == 7  # new ids start past every old one
    back, how = hub.register_engine(b"four", 4, {"hostname": "h2"}, 5.0)
    assert (back, how) == (record, "rejoined") and not back.rejoining and back.tasks == {"t"}

"""The task stores: the durable SQLite one (``--db sqlite``) fed by a Hub, and the
bounded memory one; what they keep, what they evict first, and how they say so."""
from __future__ import annotations

import logging
import sqlite3
import threading

import pytest

from mpihub.controller.hub import Hub
from mpihub.controller.lookup import TaskLookup
from mpihub.controller.taskdb import TaskDB, pack_frames, sql_prefilter, unpack_frames
from mpihub.protocol import wire

pytestmark = pytest.mark.timeout(60)

KEY = "k" * 64


@pytest.fixture
def db(tmp_path):
    store = TaskDB(tmp_path / "db" / "tasks.sqlite", byte_limit=1 << 30, payload_limit=1 << 20, key=KEY)
    yield store
    store.close()


def run_tasks(hub: Hub, count: int, fetched=lambda i: True, prefix: str = "m") -> None:
    """``count`` tasks on two engines: odd ones fail, every third stays pending."""
    if not hub.engines:
        for i in range(2):
            hub.register_engine(f"uuid{i}".encode(), None, {}, 0.0)
    for i in range(count):
        msg_id = f"{prefix}{i}"
        hub.submit(msg_id, "task", b"client", None, float(i), [b"request-" + msg_id.encode()], 20)
        hub.assign(msg_id, i % 2)
        if i % 3 != 2:
            header = {"st": "ok" if i % 2 == 0 else "error", "ename": None if i % 2 == 0 else "ValueError",
                      "started": i + 0.5, "completed": i + 0.7, "out": f"line {i}\n"}
            hub.finish(msg_id, i % 2, header, [b"reply-" + msg_id.encode(), b"buffer"], 30, i + 1.0, fetched(i))


QUERIES = [
    {}, {"engine_id": 1}, {"status": "ok"}, {"submitted": {"$lt": 5}}, {"submitted": {"$gt": 3, "$lte": 9}},
    {"completed": {"$gte": 4.7}}, {"ename": {"$eq": "ValueError"}}, {"ename": {"$ne": "ValueError"}},
    {"engine_id": {"$in": [0]}}, {"status": {"$nin": ["ok", "pending"]}}, {"completed": {"$exists": False}},
    {"started": {"$exists": True}, "engine_id": 0}, {"msg_id": {"$glob": "m1*"}}, {"stdout": "line 4\n"},
]


@pytest.mark.parametrize("query", QUERIES, ids=[str(q) for q in QUERIES])
def test_the_store_answers_queries_as_memory_does(db, query):
    """The same events into a memory-only Hub and a Hub whose memory keeps only 3 finished
    records: every query has the same answer, the stored part coming from SQLite."""
    memory, durable = Hub(1 << 20), Hub(1 << 20, record_limit=3, db=db)
    run_tasks(memory, 20)
    run_tasks(durable, 20)
    assert len(durable.tasks) < len(memory.tasks)
    stored = TaskLookup(durable)
    assert stored.query(query) == memory.query(query)
    assert stored.query(query, keys=["status"]) == memory.query(query, keys=["status"])


def test_the_sql_prefilter_keeps_a_superset():
    where, params = sql_prefilter({"submitted": {"$gt": 3, "$nin": [1]}, "stdout": {"$glob": "x*"}, "status": "ok"})
    assert where == "submitted > ? AND status = ?" and params == [3, "ok"]
    assert sql_prefilter({"completed": {"$exists": True}, "bogus": 1}) == ("1", [])


def test_results_and_requests_outlive_the_memory_cache_and_the_process(db, tmp_path):
    hub = Hub(1 << 20, record_limit=2, db=db)
    run_tasks(hub, 10)
    look = TaskLookup(hub)
    assert "m0" not in hub.tasks
    assert look.stored_reply("m0") == ("stored", [b"reply-m0", b"buffer"])
    assert look.stored_request("m0") == ("stored", [b"request-m0"])
    assert look.stored_reply("m2") == ("pending", None)
    assert look.stored_reply("nope") == ("unknown", None)
    hub.mark_resubmitted("m0", "m0-again")
    db.close()
    later = TaskLookup(Hub(1 << 20, db=TaskDB(db.path, 1 << 30, 1 << 20, KEY)))  # a later controller, same file
    try:
        assert later.stored_reply("m4") == ("stored", [b"reply-m4", b"buffer"])
        assert later.outcome("m1") == ("error", 1) and later.outcome("m2") is None  # finished before; pending
        assert later.query({"msg_id": "m0"}, keys=["resubmitted"]) == [{"msg_id": "m0", "resubmitted": "m0-again"}]
        assert db.path.stat().st_mode & 0o777 == 0o600
    finally:
        later.db.close()


def test_one_direct_request_to_many_engines_is_stored_once(db):
    hub = Hub(1 << 20, record_limit=0, db=db)
    for i in range(3):
        hub.register_engine(f"u{i}".encode(), None, {}, 0.0)
    first = None
    for i in range(3):
        hub.submit(f"d{i}", "direct", b"c", i, 1.0, [b"shared request"], 14 if first is None else 0, first)
        first = first or f"d{i}"
        hub.finish(f"d{i}", i, {"st": "ok"}, [b"r"], 1, 2.0, True)
    assert [TaskLookup(hub).stored_request(f"d{i}") for i in range(3)] == [("stored", [b"shared request"])] * 3
    blobs = sqlite3.connect(db.path).execute("SELECT COUNT(request) FROM tasks").fetchone()[0]
    assert blobs == 1


def test_eviction_takes_fetched_results_first_and_says_when_it_takes_others(tmp_path, caplog):
    blob = len(pack_frames([b"reply-m0", b"buffer"])) + len(pack_frames([b"request-m0"]))
    db = TaskDB(tmp_path / "small.sqlite", byte_limit=blob * 10, payload_limit=1 << 20, key=KEY)
    try:
        hub = Hub(0, record_limit=0, db=db)  # nothing in memory: every answer comes from SQLite
        look = TaskLookup(hub)
        run_tasks(hub, 15, fetched=lambda i: i >= 4)  # the oldest four results nobody fetched
        db.flush()
        fetched_gone = [f"m{i}" for i in (4, 6, 7) if look.stored_reply(f"m{i}")[0] == "evicted"]
        assert fetched_gone and all(look.stored_reply(f"m{i}")[0] == "stored" for i in (0, 1, 3))
        with caplog.at_level(logging.WARNING, "mpihub.controller.taskdb"):
            run_tasks(hub, 40, fetched=lambda i: False, prefix="n")
            db.flush()
        assert "nobody had fetched" in caplog.text
        assert look.stored_reply("m0") == ("evicted", None)
        assert db.nbytes <= blob * 10
        assert look.query({"msg_id": "m0"}, keys=["status"]) == [{"msg_id": "m0", "status": "ok"}]  # the record stays
    finally:
        db.close()


def test_a_payload_above_the_limit_keeps_its_record_only(tmp_path):
    db = TaskDB(tmp_path / "t.sqlite", byte_limit=1 << 30, payload_limit=100, key=KEY)
    try:
        hub = Hub(0, record_limit=0, db=db)
        hub.register_engine(b"u", None, {}, 0.0)
        hub.submit("big", "task", b"c", None, 1.0, [b"x"], 1)
        hub.assign("big", 0)
        hub.finish("big", 0, {"st": "ok"}, [b"y" * 1000], 1000, 2.0)
        look = TaskLookup(hub)
        assert look.stored_reply("big") == ("unstored", None)
        assert look.stored_request("big") == ("stored", [b"x"])
    finally:
        db.close()


def test_purge_removes_stored_tasks_too(db):
    hub = Hub(1 << 20, record_limit=2, db=db)
    run_tasks(hub, 9)
    look = TaskLookup(hub)
    assert sorted(look.purge(["m0", "m2"], None)) == ["m0"]  # m2 is pending
    assert look.stored_reply("m0") == ("unknown", None) and look.outcome("m0") is None
    assert set(look.purge(None, [1])) == {"m1", "m3", "m7"}
    assert {r["msg_id"] for r in look.query({"completed": {"$exists": True}})} == {"m4", "m6"}


def test_reads_wait_for_the_writer_only_while_it_is_behind(db, monkeypatch):
    """A dependency on a task memory let go is decided from the Hub's recent outcomes,
    without reading the store; a read of the store waits for the writer while it has
    events to commit, and not at all once it has caught up."""
    hub = Hub(1 << 20, record_limit=2, db=db)
    look = TaskLookup(hub)
    run_tasks(hub, 9)
    reads = []
    monkeypatch.setattr(db, "outcome", lambda msg_id: reads.append(msg_id))
    assert "m1" not in hub.tasks and look.outcome("m1") == ("error", 1) and reads == []
    assert look.outcome("elsewhere") is None and reads == ["elsewhere"]
    run_tasks(hub, 1, prefix="late")  # just enqueued: a read sees it all the same
    hub.replies.drop("late0")  # as if memory had let the bytes go
    assert look.stored_reply("late0") == ("stored", [b"reply-late0", b"buffer"])
    db.flush()
    waits = []
    monkeypatch.setattr(threading, "Event", lambda: waits.append(1))  # what a wait for the writer makes
    assert look.stored_reply("m0") == ("stored", [b"reply-m0", b"buffer"]) and waits == []  # caught up: no wait


def test_frames_pack_and_unpack():
    for frames in ([b""], [b"a", b"", b"xyz" * 1000], b"single"):
        expected = frames if isinstance(frames, list) else [frames]
        assert unpack_frames(pack_frames(frames)) == expected


# -- the memory store -----------------------------------------------------------------


def test_memory_forgets_fetched_records_first(caplog):
    hub = Hub(1 << 20, record_limit=4)
    with caplog.at_level(logging.WARNING, "mpihub.controller"):
        run_tasks(hub, 9, fetched=lambda i: i in (0, 1, 4))
    assert sorted(m for m, rec in hub.tasks.items() if rec.completed is not None) == ["m3", "m4", "m6", "m7"]
    assert hub.dropped_unfetched == 0 and "before anyone fetched it" not in caplog.text


def test_memory_says_when_it_drops_an_unfetched_result(caplog):
    hub = Hub(1 << 20, record_limit=2)
    with caplog.at_level(logging.WARNING, "mpihub.controller"):
        run_tasks(hub, 6, fetched=lambda i: False)
    assert hub.dropped_unfetched == 2 and "before anyone fetched it" in caplog.text
    assert hub.stored_reply("m0") == ("evicted", None)  # forgotten, and get_result says why
    hub.fetched("m4")
    hub.submit("late", "task", b"c", None, 9.0, [b"r"], 1)
    hub.assign("late", 0)
    hub.finish("late", 0, {"st": "ok"}, [b"x"], 1, 10.0, True)
    assert "m4" not in hub.tasks and "m3" in hub.tasks  # the fetched one went first
    assert hub.dropped_unfetched == 2


def test_memory_evicts_fetched_payloads_first():
    hub = Hub(store_limit=2 * 60, record_limit=100)  # replies get 60 bytes: two of 30
    run_tasks(hub, 5, fetched=lambda i: i == 1)
    assert hub.stored_reply("m1") == ("purged", None)  # fetched: released first, its record stays
    assert hub.stored_reply("m0") == ("evicted", None)  # then the oldest unfetched, said aloud
    assert [hub.stored_reply(m)[0] for m in ("m3", "m4")] == ["stored", "stored"]


def test_a_later_controller_with_a_new_key_hands_out_old_payloads_signed_anew(db):
    old = Hub(0, record_limit=0, db=db)
    old.register_engine(b"u", None, {}, 0.0)
    old.submit("t", "task", b"c", None, 1.0, wire.pack(wire.Signer(KEY), {"t": "apply"}), 1)
    old.assign("t", 0)
    old.finish("t", 0, {"st": "ok"}, wire.pack(wire.Signer(KEY), {"t": "reply", "id": "t"}, b"42", [b"buf"]), 9, 2.0)
    db.close()
    later = TaskDB(db.path, 1 << 30, 1 << 20, "new-key")
    try:
        state, frames = TaskLookup(Hub(0, db=later)).stored_reply("t")
        msg = wire.unpack(wire.Signer("new-key"), frames)
        assert state == "stored" and msg.header["id"] == "t" and msg.content == b"42"
        assert [bytes(b) for b in msg.buffers] == [b"buf"]
    finally:
        later.close()


def test_the_store_keeps_what_a_restore_takes_back(db):
    hub = Hub(0, record_limit=0, db=db)
    signer = wire.Signer(KEY)
    hub.register_engine(b"u0", None, {"hostname": "h", "data": ["tcp://x:1"]}, 1.0)
    hub.register_engine(b"u1", None, {}, 2.0)
    hub.remove_engine(1)
    hub.submit("done", "task", b"\x01c", None, 1.0, wire.pack(signer, {"t": "apply", "id": "done"}), 1)
    hub.assign("done", 0)
    hub.finish("done", 0, {"st": "ok"}, wire.pack(signer, {"t": "reply"}), 1, 2.0)
    hub.submit("queued", "task", b"\x01c", None, 3.0, wire.pack(signer, {"t": "apply", "id": "queued"}), 1)
    hub.submit("sent", "task", b"\x01c", None, 4.0, wire.pack(signer, {"t": "apply", "id": "sent"}), 1)
    hub.assign("sent", 0)
    shared = wire.pack(signer, {"t": "apply", "ids": ["d0", "d1"], "tg": [0, 5]})
    hub.submit("d0", "direct", b"\x01c", 0, 5.0, shared, 1)
    hub.submit("d1", "direct", b"\x01c", None, 5.0, shared, 0, shares="d0")
    db.set_meta("controller", "{}")
    assert [(e.id, e.uuid, e.info) for e in db.engines()] == [(0, b"u0", {"hostname": "h", "data": ["tcp://x:1"]})]
    assert db.meta("next_engine_id") == "2" and db.meta("controller") == "{}"
    pending = {task.msg_id: task for task in db.pending_tasks()}
    assert list(pending) == ["queued", "sent", "d0", "d1"]
    assert (pending["sent"].engine_id, pending["queued"].engine_id, pending["d0"].engine_id) == (0, None, 0)
    assert pending["d1"].request == pending["d0"].request and bytes.fromhex(pending["sent"].client) == b"\x01c"
    assert wire.unpack(signer, pending["queued"].request).header["id"] == "queued"
    assert hub.outcome("done") == ("ok", 0) and "done" not in hub.tasks  # from the store, for dependencies
    assert hub.outcome("sent") == ("pending", None) and hub.outcome("nowhere") is None


def test_a_store_of_another_protocol_version_is_refused_by_name(tmp_path):
    path = tmp_path / "old.sqlite"
    TaskDB(path, 1 << 30, 1 << 20, KEY).close()  # a new file is of this version, and opens again
    TaskDB(path, 1 << 30, 1 << 20, KEY).close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM meta WHERE name = 'protocol'")  # as a file from before the row was kept
        db.execute("INSERT INTO engines VALUES (0, x'00', x'00', 0)")
    with pytest.raises(RuntimeError, match=f"protocol 1; this mpihub speaks {wire.PROTOCOL_VERSION}"):
        TaskDB(path, 1 << 30, 1 << 20, KEY)

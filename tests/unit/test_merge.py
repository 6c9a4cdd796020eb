"""How a split controller's Hub merges its paths' answers (pure, no sockets)."""
from mpihub.controller import merge


def test_queue_status_adds_up_direct_and_load_balanced_work():
    direct = {0: {"queue": 2, "completed": 5, "tasks": 0}, 1: {"queue": 0, "completed": 1, "tasks": 0},
              "unassigned": 0}
    task = {1: {"queue": 0, "completed": 7, "tasks": 2}, 0: {"queue": 0, "completed": 3, "tasks": 1},
            "unassigned": 4}
    assert merge.queue_status([direct, task]) == {
        0: {"queue": 2, "completed": 8, "tasks": 1}, 1: {"queue": 0, "completed": 8, "tasks": 2}, "unassigned": 4}
    verbose = merge.queue_status([{0: {"queue": ["b"], "completed": 1, "tasks": []}, "unassigned": 0},
                                  {0: {"queue": [], "completed": 0, "tasks": ["z", "a"]}, "unassigned": 1}])
    assert verbose == {0: {"queue": ["b"], "completed": 1, "tasks": ["a", "z"]}, "unassigned": 1}
    assert list(merge.queue_status([{3: {"queue": 0, "completed": 0, "tasks": 0}, "unassigned": 0},
                                    {1: {"queue": 0, "completed": 0, "tasks": 0}, "unassigned": 0}])) == [
        1, 3, "unassigned"]


def test_records_come_in_submission_order():
    direct = [{"msg_id": "d1", "submitted": 2.0}, {"msg_id": "d2", "submitted": 4.0}]
    task = [{"msg_id": "t1", "submitted": 1.0}, {"msg_id": "t2", "submitted": 3.0}]
    assert [r["msg_id"] for r in merge.records([direct, task])] == ["t1", "d1", "t2", "d2"]
    keyed = [[{"msg_id": "x"}], [{"msg_id": "a"}]]  # keys without submitted: path order
    assert [r["msg_id"] for r in merge.records(keyed)] == ["x", "a"]
    assert merge.records([[], []]) == []


def test_an_id_is_unknown_only_when_no_path_knows_it():
    ids = ["sent", "waiting", "gone", "nowhere", "bulk", "dropped"]
    direct = {"pending": [], "unknown": ["waiting", "gone", "nowhere", "bulk", "dropped"], "purged": [], "direct": []}
    task = {"pending": ["waiting"], "unknown": ["sent", "nowhere"], "purged": ["gone"], "direct": ["bulk"],
            "evicted": ["dropped"]}
    assert merge.result_outcome([direct, task], ids) == {
        "pending": ["waiting"], "unknown": ["nowhere"], "purged": ["gone"], "direct": ["bulk"],
        "evicted": ["dropped"], "unstored": []}


def test_lists_and_engine_maps_join():
    assert merge.joined([["a"], [], ["b", "c"]]) == ["a", "b", "c"]
    assert merge.by_engine([{0: ["a"], 1: ["b"]}, {1: ["c"]}, {}]) == {0: ["a"], 1: ["b", "c"]}

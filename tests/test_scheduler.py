"""The least-load scheduler as a pure state machine: events in, assignments out."""
import pytest

from mpihub.controller.scheduler import LeastLoadScheduler


def test_tasks_wait_for_engines_then_spread_by_load():
    s = LeastLoadScheduler(hwm=1)
    assert s.submit("t1") == []
    assert s.submit("t2") == []
    assert s.add_engine(0) == [("t1", 0)]
    assert s.add_engine(1) == [("t2", 1)]
    assert s.submit("t3") == []  # both at hwm
    assert s.finished("t2") == [("t3", 1)]


def test_ties_go_to_least_recently_used_engine():
    s = LeastLoadScheduler(hwm=2)
    for e in (0, 1, 2):
        s.add_engine(e)
    assert [a for t in ("a", "b", "c") for a in s.submit(t)] == [("a", 0), ("b", 1), ("c", 2)]
    assert s.submit("d") == [("d", 0)]  # all at load 1; engine 0 waited longest
    s.finished("b")
    assert s.submit("e") == [("e", 1)]  # engine 1 now least loaded


def test_hwm_bounds_tasks_per_engine():
    s = LeastLoadScheduler(hwm=3)
    s.add_engine(0)
    out = [a for t in "abcde" for a in s.submit(t)]
    assert out == [("a", 0), ("b", 0), ("c", 0)]
    assert len(s.pending) == 2
    with pytest.raises(ValueError):
        LeastLoadScheduler(hwm=0)


def test_restricted_tasks_skip_ahead_without_reordering_others():
    s = LeastLoadScheduler(hwm=1)
    s.add_engine(0)
    s.add_engine(1)
    s.submit("busy0", [0])
    s.submit("busy1", [1])
    s.submit("only0", [0])
    s.submit("free")
    assert s.finished("busy1") == [("free", 1)]  # only0 cannot use engine 1; free may
    assert s.finished("busy0") == [("only0", 0)]


def test_unknown_targets_are_refused():
    s = LeastLoadScheduler()
    s.add_engine(0)
    with pytest.raises(LookupError):
        s.submit("t", [5])


def test_removed_engine_returns_lost_and_stranded_tasks():
    s = LeastLoadScheduler(hwm=1)
    s.add_engine(0)
    s.add_engine(1)
    s.submit("run0", [0])
    s.submit("run1", [1])
    s.submit("wait0", [0])
    s.submit("anywhere")
    lost, stranded = s.remove_engine(0)
    assert lost == ["run0"] and stranded == ["wait0"]
    assert [t for t, _ in s.pending] == ["anywhere"]
    assert s.finished("run1") == [("anywhere", 1)]
    assert s.remove_engine(0) == ([], [])


def test_abort_drops_only_queued_tasks():
    s = LeastLoadScheduler(hwm=1)
    s.add_engine(0)
    s.submit("running")
    s.submit("queued")
    assert s.abort(["running", "queued", "unknown"]) == ["queued"]
    assert s.finished("running") == []

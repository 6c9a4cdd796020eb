"""The least-load scheduler as a pure state machine: events in, assignments out."""
import pytest

from mpihub.controller.hub import Hub
from mpihub.controller.scheduler import SCHEDULERS, LeastLoadScheduler, LRUScheduler, RandomScheduler, WeightedScheduler
from mpihub.controller.taskpath import TaskPath
from mpihub.protocol import wire


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


def two_busy_engines() -> LeastLoadScheduler:
    """Engines 0 and 1, one task in flight at most, running "busy0" and "busy1"."""
    s = LeastLoadScheduler(hwm=1)
    for engine in (0, 1):
        s.add_engine(engine)
        s.submit(f"busy{engine}", [engine])
    return s


def test_restricted_tasks_skip_ahead_without_reordering_others():
    s = two_busy_engines()
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
    s = two_busy_engines()
    s.submit("wait0", [0])
    s.submit("anywhere")
    lost, stranded = s.remove_engine(0)
    assert lost == ["busy0"] and stranded == ["wait0"]
    assert [t for t, _ in s.pending] == ["anywhere"]
    assert s.finished("busy1") == [("anywhere", 1)]
    assert s.remove_engine(0) == ([], [])


def test_abort_drops_only_queued_tasks():
    s = LeastLoadScheduler(hwm=1)
    s.add_engine(0)
    s.submit("running")
    s.submit("queued")
    assert s.abort(["running", "queued", "unknown"]) == ["queued"]
    assert s.finished("running") == []


@pytest.fixture(params=sorted(SCHEDULERS))
def policy(request):
    return SCHEDULERS[request.param]


def test_every_policy_keeps_hwm_and_restrictions(policy):
    s = policy(hwm=2)
    for e in (0, 1, 2):
        s.add_engine(e)
    out = [a for t in range(6) for a in s.submit(f"t{t}")]
    assert len(out) == 6 and set(s.load.values()) == {2}
    assert s.submit("only-1", targets=[1]) == []
    assert s.submit("t6") == []
    on = {e: [t for t, engine in out if engine == e] for e in (0, 1, 2)}
    assert s.finished(on[0][0]) == [("t6", 0)]  # only-1 cannot use engine 0; t6 goes past it
    assert [t for t, _ in s.pending] == ["only-1"]
    assert s.finished(on[1][0]) == [("only-1", 1)]
    lost, stranded = s.remove_engine(2)
    assert sorted(lost) == sorted(on[2]) and stranded == []


def test_every_policy_waits_for_engines_and_drops_stranded_tasks(policy):
    s = policy(hwm=1)
    assert s.submit("a") == []
    assert s.add_engine(5) == [("a", 5)]
    s.add_engine(6)
    assert s.submit("b") == [("b", 6)]
    assert s.submit("c", targets=[6]) == []
    assert s.remove_engine(6) == (["b"], ["c"])
    with pytest.raises(LookupError):
        s.submit("d", targets=[6])
    with pytest.raises(ValueError):
        policy(hwm=0)


def test_lru_goes_round_robin_whatever_the_load():
    picks = {}
    for policy in (LRUScheduler, LeastLoadScheduler):
        s = policy(hwm=3)
        s.add_engine(0)
        s.add_engine(1)
        assert [e for t in "abc" for _, e in s.submit(t)] == [0, 1, 0]
        s.finished("a")
        s.finished("c")  # engine 0 idle, engine 1 busy
        picks[policy] = s.submit("d")[0][1]
    assert picks == {LRUScheduler: 1, LeastLoadScheduler: 0}


def test_random_is_repeatable_and_uses_every_engine():
    picks = []
    for _ in range(2):
        s = RandomScheduler(hwm=1000, seed=7)
        for e in range(4):
            s.add_engine(e)
        picks.append([e for t in range(400) for _, e in s.submit(str(t))])
    assert picks[0] == picks[1]
    assert all(60 < picks[0].count(e) < 140 for e in range(4))


def test_weighted_favours_engines_with_room():
    s = WeightedScheduler(hwm=100, seed=3)
    s.add_engine(0)
    s.add_engine(1)
    for t in range(90):
        s.pending.append((f"pre{t}", frozenset([0])))
    s._drain()  # engine 0 now has 10 free slots, engine 1 has 100
    assert s.load[0] == 90
    picks = [e for t in range(50) for _, e in s.submit(str(t))]
    assert picks.count(1) > 40


@pytest.mark.parametrize("policy", sorted(SCHEDULERS))
def test_a_paused_engine_counts_as_registered_but_takes_nothing_until_resumed(policy):
    s = SCHEDULERS[policy](hwm=2)
    assert s.add_engine(0, running=["old"], paused=True) == []
    assert s.submit("only-0", [0]) == []  # waits for it rather than failing as unregistered
    s.add_engine(1)
    assert s.submit("any") == [("any", 1)]
    assert s.finished("old") == []  # its load goes down, still paused
    assert s.resume(0) == [("only-0", 0)]
    assert s.load == {0: 1, 1: 1} and s.resume(0) == []


def test_an_engine_back_with_running_tasks_has_that_load():
    s = LeastLoadScheduler(hwm=2)
    s.add_engine(0, running=["a", "b"])
    s.add_engine(1)
    assert s.submit("c") == [("c", 1)]
    assert s.finished("a") == []  # its room goes to what waits: nothing
    assert s.submit("d") == [("d", 1)]  # both at load 1: engine 1 has waited longer
    assert s.submit("e") == [("e", 0)]
    assert s.remove_engine(0) == (["b", "e"], [])


@pytest.mark.parametrize("policy", sorted(SCHEDULERS))
def test_a_queued_task_taken_out_of_turn_counts_on_its_engine(policy):
    s = SCHEDULERS[policy](hwm=1)
    s.add_engine(0, paused=True)
    assert s.submit("a") == [] and s.submit("b") == []
    assert s.take("b", 0) and s.assigned == {"b": 0} and s.load == {0: 1}
    assert not s.take("b", 0) and not s.take("a", 7)
    assert list(s.pending) == [("a", None)]
    assert s.resume(0) == []  # full with "b"
    assert s.finished("b") == [("a", 0)]
    s.add_engine(1)
    assert s.submit("c") == [("c", 1)]
    assert s.submit("d") == [] and s.take("d", 1)  # past its hwm: it has the task already
    assert s.take("never-queued", 1) and s.load == {0: 1, 1: 3} and list(s.pending) == []
    assert s.finished("c") == [] and s.finished("d") == [] and s.finished("never-queued") == []
    assert s.submit("e") == [("e", 1)]


def test_a_rejoining_engine_claims_tasks_the_store_had_as_waiting():
    """A restored task path takes back as an engine's own the tasks it has that the store
    still had queued or held on a dependency (their assignment was not committed)."""
    hub = Hub(store_limit=1 << 20)
    hub.restore_engine(0, b"zero", {"hostname": "h"}, 0.0)
    signer = wire.Signer("key")
    sent, failed = [], []
    path = TaskPath(hub, LeastLoadScheduler(hwm=2), signer, lambda e, frames: sent.append(e), failed.append)
    path.add_engine(0, paused=True)
    requests = {"dep": None, "queued": None, "held": {"ids": ["dep"]}, "other": None}
    for msg_id, after in requests.items():
        frames = wire.pack(signer, {"t": "apply", "id": msg_id, **({"after": after} if after else {})})
        hub.restore_task(msg_id, "task", b"client", 1.0, None, frames, 10)
        path.restore(msg_id, wire.unpack(signer, frames))
    assert hub.unassigned == 4 and sent == []
    assert path.claim("queued", 0) and path.claim("held", 0)
    assert not path.claim("queued", 0) and not path.claim("unknown", 0)
    assert hub.engines[0].tasks == {"queued", "held"} and hub.unassigned == 2
    assert [task for task, _ in path.scheduler.pending] == ["dep", "other"]
    path.add_engine(0)  # back: full with the two it claimed
    assert sent == [] and failed == []
    assert path.reply("queued", 0, {"st": "ok"}) is False
    assert sent == [0] and hub.engines[0].tasks == {"queued", "held", "dep"}  # room again: "dep" goes out


@pytest.mark.parametrize("policy", sorted(SCHEDULERS))
def test_the_engines_a_policy_picks_from_are_exactly_those_with_room(policy):
    """Whatever happens, a policy's own books of engines with room (its buckets or
    pools, which spare it a scan of every engine per task) agree with the loads."""
    import random as stdlib_random

    rng = stdlib_random.Random(11)
    s = SCHEDULERS[policy](hwm=3)
    running: list[str] = []
    for step in range(3000):
        action = rng.random()
        if action < 0.1 or not s.load:
            s.add_engine(len(s.load) + step * 1000, paused=rng.random() < 0.2)
        elif action < 0.15:
            s.remove_engine(rng.choice(sorted(s.load)))
        elif action < 0.2 and s.paused:
            s.resume(rng.choice(sorted(s.paused)))
        elif action < 0.6:
            s.submit(f"t{step}", None if rng.random() < 0.8 else rng.sample(sorted(s.load), 1))
        elif running:
            s.finished(running.pop(rng.randrange(len(running))))
        running = list(s.assigned)
        with_room = {e for e, load in s.load.items() if load < s.hwm and e not in s.paused}
        assert s._has_room() == bool(with_room)
        if with_room and not s.pending:
            assert s._choose(None) in with_room
    assert all(s.load[e] <= s.hwm for e in s.load)

"""Task dependencies: after (time), follow (location), all/any, success/failure, timeout.
Nothing hangs: a condition that can no longer be met fails at once."""
import time

import pytest

import mpihub
from mpihub.dependency import Dependency

pytestmark = [pytest.mark.timeout(60), pytest.mark.layouts("one", "split")]


@mpihub.interactive
def stamp(label):
    import os
    import time

    time.sleep(0.2)
    return label, time.time(), os.getpid()


def test_after_waits_and_follow_goes_where_they_ran(rc):
    lbview = rc.load_balanced_view()
    first = lbview.apply_async(stamp, "first")
    with lbview.temp_flags(after=first):
        second = lbview.apply_async(stamp, "second")
    assert second.get(timeout=10)[1] >= first.get()[1] + 0.15  # started only once first was done
    anchor = rc.load_balanced_view([1]).apply_async(stamp, "anchor")
    with lbview.temp_flags(follow=anchor):
        followers = [lbview.apply_async(stamp, f"f{i}") for i in range(4)]
    assert {ar.get(timeout=10)[2] for ar in followers} == {anchor.get()[2]}
    assert {ar.metadata["engine_id"] for ar in followers} == {1}


def test_a_dependency_that_cannot_be_met_fails_at_once(rc):
    lbview = rc.load_balanced_view()
    failed = lbview.apply_async(lambda: 1 / 0)
    with pytest.raises(mpihub.RemoteError):
        failed.get(timeout=10)
    started = time.monotonic()
    with lbview.temp_flags(after=failed):
        with pytest.raises(mpihub.ImpossibleDependency, match="ended with error"):
            lbview.apply_sync(lambda: "never")
    with lbview.temp_flags(after=Dependency(failed, success=False, failure=True)):
        assert lbview.apply_sync(lambda: "cleanup") == "cleanup"
    with lbview.temp_flags(after=["no-such-task"]):
        with pytest.raises(mpihub.ImpossibleDependency, match="unknown"):
            lbview.apply_sync(lambda: "never")
    assert time.monotonic() - started < 5


def test_a_pending_dependency_that_then_fails_releases_its_dependents(rc):
    lbview = rc.load_balanced_view()
    slow_failure = lbview.apply_async(lambda: (__import__("time").sleep(0.5), 1 / 0))
    with lbview.temp_flags(after=slow_failure):
        waiting = lbview.apply_async(lambda: "never")
    with lbview.temp_flags(after=waiting):
        chained = lbview.apply_async(lambda: "never either")
    with pytest.raises(mpihub.ImpossibleDependency):
        waiting.get(timeout=10)
    with pytest.raises(mpihub.ImpossibleDependency):
        chained.get(timeout=10)  # the impossibility runs down the chain


def test_dependency_timeout_and_abort_of_held_tasks(rc):
    lbview = rc.load_balanced_view()
    slow = rc.load_balanced_view([0]).apply_async(time.sleep, 3)
    with lbview.temp_flags(after=slow, timeout=0.5):
        started = time.monotonic()
        with pytest.raises(mpihub.DependencyTimeout):
            lbview.apply_sync(lambda: "late")
        assert time.monotonic() - started < 2.5
    with lbview.temp_flags(after=slow):
        held = lbview.apply_async(lambda: "held")
    held.abort()
    with pytest.raises(mpihub.TaskAborted):
        held.get(timeout=5)
    assert rc.queue_status()["unassigned"] == 0
    slow.get(timeout=10)
    with pytest.raises(ValueError, match="timeout"):
        with lbview.temp_flags(timeout=-1):
            lbview.apply(lambda: 1)


def test_require_imports_and_pushes_before_the_task(rc):
    @mpihub.interactive  # as if typed at the prompt: runs in the engine namespace
    def helper(x):
        return x + 1

    @mpihub.require("json", helper)
    @mpihub.interactive
    def uses_them(x):
        return json.dumps(helper(x))  # noqa: F821 - json and helper come with @require

    assert rc.load_balanced_view().apply_sync(uses_them, 1) == "2"
    assert rc[:].apply_sync(uses_them, 2) == ["3", "3"]


def test_a_task_goes_where_its_dependencies_are_met(rc):
    rc[:].execute("special = False", block=True)
    rc[1].execute("special = True", block=True)

    @mpihub.depend(mpihub.interactive(lambda: special))  # noqa: F821 - checked in the engine namespace
    def picky(i):
        return i

    ars = [rc.load_balanced_view().apply_async(picky, i) for i in range(6)]
    assert [ar.get(timeout=10) for ar in ars] == list(range(6))
    assert {ar.metadata["engine_id"] for ar in ars} == {1}


def test_dependencies_no_engine_meets_fail_at_once(rc):
    lbview = rc.load_balanced_view()
    started = time.monotonic()
    with pytest.raises(mpihub.ImpossibleDependency, match="refused by engines"):
        lbview.apply_sync(mpihub.require("no_such_module_xyz")(lambda: 1))
    with pytest.raises(mpihub.ImpossibleDependency):
        lbview.apply_sync(mpihub.depend(lambda: False)(lambda: 1))
    assert time.monotonic() - started < 5
    with pytest.raises(mpihub.RemoteError, match="UnmetDependency"):
        rc[0].apply_sync(mpihub.depend(lambda: False)(lambda: 1))  # a direct call just reports it
    assert rc.queue_status()["unassigned"] == 0
    assert all(status["tasks"] == 0 for engine, status in rc.queue_status().items() if engine != "unassigned")



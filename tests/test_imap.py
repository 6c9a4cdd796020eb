"""LoadBalancedView.imap reads its input lazily, keeps a bounded number of tasks in
flight, yields in order or as results arrive, and cancels what is queued when left."""
import gc
import itertools
import time

import pytest

pytestmark = [pytest.mark.timeout(60), pytest.mark.layouts("one", "split")]


def test_an_endless_generator_with_bounded_tasks_in_flight(rc):
    consumed = []

    def numbers():
        for i in itertools.count():
            consumed.append(i)
            yield i

    results = rc.load_balanced_view().imap(lambda x: x * 2, numbers(), max_outstanding=4, chunksize=2)
    assert list(itertools.islice(results, 50)) == [2 * i for i in range(50)]
    assert len(consumed) <= 50 + 4 * 2 + 2  # what was yielded, the tasks in flight, one chunk read ahead
    results.close()
    rc.wait(timeout=10)
    assert rc.queue_status()["unassigned"] == 0


def test_unordered_imap_yields_in_completion_order(rc):
    durations = [0.6] + [0.01] * 6
    nap = lambda d: (time.sleep(d), d)[1]  # noqa: E731
    order = list(rc.load_balanced_view().imap(nap, durations, ordered=False))
    assert sorted(order) == sorted(durations) and order[0] == 0.01  # the long one did not hold the rest
    assert list(rc.load_balanced_view().imap(nap, durations)) == durations


def test_leaving_the_loop_aborts_the_queued_tasks(rc):
    started = time.monotonic()
    for value in rc.load_balanced_view().imap(lambda x: (time.sleep(0.2), x)[1], range(100), max_outstanding=6):
        if value == 1:
            break
    gc.collect()
    rc.wait(timeout=10)
    assert time.monotonic() - started < 5  # not 100 x 0.2 s / 2 engines
    assert rc.queue_status()["unassigned"] == 0


def test_imap_checks_its_arguments_and_raises_remote_errors(rc):
    lbview = rc.load_balanced_view()
    with pytest.raises(ValueError, match="max_outstanding"):
        lbview.imap(abs, [1], max_outstanding=0)
    with pytest.raises(ValueError, match="chunksize"):
        lbview.imap(abs, [1], chunksize=0)
    results = lbview.imap(lambda x: 1 / x, [1, 0, 2])
    assert next(results) == 1.0
    with pytest.raises(Exception, match="ZeroDivisionError"):
        next(results)


def test_map_progress_counts_items(rc):
    ar = rc.load_balanced_view().map_async(abs, range(10), chunksize=3)
    ar.get(timeout=10)
    assert ar.progress == 10 and len(ar) == 10

"""Stopping running work: rc.send_signal(SIGINT) and ar.abort(interrupt=True) fail the
running task with KeyboardInterrupt; the engine lives on with its namespace."""
import signal
import time

import pytest

import mpihub

pytestmark = [pytest.mark.timeout(60), pytest.mark.layouts("one", "split")]


@mpihub.interactive  # shipped by value: the engines cannot import this test module
def spin(seconds):
    """A busy pure-Python loop: an interrupt must reach it."""
    end = time.time() + seconds
    while time.time() < end:
        pass
    return "finished"


def test_send_signal_interrupts_the_running_task_only(rc):
    rc[0].execute("kept = 42", block=True)
    running = rc[0].apply_async(spin, 30)
    queued = rc[0].apply_async(lambda: "next")
    time.sleep(0.5)
    started = time.monotonic()
    assert rc.send_signal(signal.SIGINT, targets=[0]) == [0]
    with pytest.raises(mpihub.RemoteError) as info:
        running.get(timeout=10)
    assert info.value.ename == "KeyboardInterrupt" and time.monotonic() - started < 5
    assert queued.get(timeout=10) == "next"  # the queue goes on
    assert rc[0].pull("kept", block=True) == 42  # same engine, same namespace
    assert rc.ids == [0, 1]


def test_sigint_to_an_idle_engine_is_harmless(rc):
    rc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert rc[:].apply_sync(lambda: 1) == [1, 1]
    with pytest.raises(ValueError, match="not a signal"):
        rc.send_signal(12345)


def test_abort_with_interrupt_stops_running_and_drops_queued(rc):
    lbview = rc.load_balanced_view([1])
    running = lbview.apply_async(spin, 30)
    time.sleep(0.5)  # running: a split controller's two paths keep no order between them
    queued = rc[1].apply_async(lambda: "never")
    other = rc[0].apply_async(spin, 1)  # not aborted: must finish normally
    queued.abort()  # first: once the running task is interrupted, the engine takes the next at once
    running.abort(interrupt=True)
    with pytest.raises(mpihub.RemoteError, match="KeyboardInterrupt"):
        running.get(timeout=10)
    with pytest.raises(mpihub.TaskAborted):
        queued.get(timeout=10)
    assert other.get(timeout=10) == "finished"
    assert rc[1].apply_sync(lambda: "alive") == "alive"

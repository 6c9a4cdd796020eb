"""retries=n: a load-balanced task that raises, or whose engine dies, runs again on
another engine where one exists (its bookkeeping: tests/unit/test_retry_book.py)."""
import os
import signal
import time

import pytest

import mpihub

pytestmark = pytest.mark.timeout(60)


@mpihub.interactive
def flaky(path, failures):
    """Fails the first ``failures`` calls (counted in a file); returns the pids it ran in."""
    import os

    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        pids = [int(line) for line in f]
    if len(pids) <= failures:
        raise RuntimeError(f"failure {len(pids)}")
    return pids


@pytest.mark.layouts("one", "split")
def test_a_failing_task_runs_again_elsewhere(rc, tmp_path):
    lbview = rc.load_balanced_view()
    with lbview.temp_flags(retries=2):
        pids = lbview.apply_sync(flaky, str(tmp_path / "a"), 2)
    assert len(pids) == 3 and pids[0] != pids[1]  # the retry went to the other engine
    with lbview.temp_flags(retries=1):
        with pytest.raises(mpihub.RemoteError, match="failure 2"):
            lbview.apply_sync(flaky, str(tmp_path / "b"), 2)
    with pytest.raises(mpihub.RemoteError, match="failure 1"):
        lbview.apply_sync(flaky, str(tmp_path / "c"), 1)  # no retries by default
    with pytest.raises(ValueError, match="retries"):
        lbview.set_flags(retries=-1).apply(flaky, "x", 0)
    lbview.set_flags(retries=0)


@mpihub.interactive
def fail_once(i, marker):
    """Element 3 raises the first time it is seen (a marker file remembers)."""
    import os

    if i == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first try")
    return i


def test_map_with_retries(rc, tmp_path):
    lbview = rc.load_balanced_view()
    with lbview.temp_flags(retries=1):
        assert lbview.map_sync(fail_once, range(6), [str(tmp_path / "m")] * 6) == list(range(6))
    with pytest.raises(mpihub.RemoteError, match="first try"):
        lbview.map_sync(fail_once, range(6), [str(tmp_path / "n")] * 6)


@pytest.mark.layouts("one", "split")
def test_a_task_whose_engine_dies_runs_again(fresh_cluster):
    rc = fresh_cluster(2).client
    lbview = rc.load_balanced_view()
    with lbview.temp_flags(retries=1):
        saved = lbview.apply_async(time.sleep, 2)
    time.sleep(0.3)
    victim = rc.db_query({"msg_id": saved.msg_ids[0]}, keys=["engine_id"])[0]["engine_id"]
    lost = rc.load_balanced_view([victim]).apply_async(time.sleep, 2)  # no retries
    os.kill(rc.engines[victim].pid, signal.SIGKILL)
    assert saved.get(timeout=30) is None  # finished on the surviving engine
    assert saved.metadata["engine_id"] != victim
    with pytest.raises(mpihub.EngineError):
        lost.get(timeout=30)

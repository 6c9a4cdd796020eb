"""The interfaces people already use, on a real cluster: ``view.executor`` as a
``concurrent.futures.Executor``, ``await`` on AsyncResults inside asyncio, and joblib's
``Parallel`` through ``mpihub.register_joblib_backend()``."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time

import joblib
import pytest

import mpihub

pytestmark = pytest.mark.timeout(120)


@mpihub.interactive
def where(x):
    import os

    return x, os.getpid()


@mpihub.interactive
def fail(x):
    raise ValueError(f"bad {x}")


@mpihub.interactive
def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def engine_pids(rc) -> set[int]:
    return {e.pid for e in rc.engines.values()}


def test_a_view_is_an_executor(rc):
    with rc.load_balanced_view().executor as pool:
        futures = [pool.submit(where, i) for i in range(20)]
        done, not_done = concurrent.futures.wait(futures, timeout=30)
        assert not not_done and len(done) == 20
        assert [f.result()[0] for f in futures] == list(range(20))
        assert {f.result()[1] for f in futures} <= engine_pids(rc)
        assert sorted(f.result()[0] for f in concurrent.futures.as_completed(futures)) == list(range(20))
        assert [x for x, _ in pool.map(where, range(7))] == list(range(7))
        assert pool.submit(lambda a, b=1: a + b, 2, b=5).result(10) == 7
        broken = pool.submit(fail, 3)
        assert isinstance(broken.exception(10), mpihub.RemoteError)
        with pytest.raises(mpihub.RemoteError, match="bad 3"):
            broken.result()
        assert futures[0].exception() is None
        slow = pool.submit(nap, 2)
        with pytest.raises(concurrent.futures.TimeoutError):
            slow.result(timeout=0.1)
    assert slow.done()  # leaving the with-block waited for it
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(where, 0)


def test_a_direct_view_executor_runs_each_call_on_every_target(rc):
    pool = rc[:].executor
    assert sorted(pid for _, pid in pool.submit(where, 1).result(10)) == sorted(engine_pids(rc))
    pool.shutdown()


def test_shutdown_can_abort_what_has_not_started(rc):
    pool = rc.load_balanced_view().executor
    running = [pool.submit(nap, 1) for _ in range(2)]
    waiting = [pool.submit(nap, 1) for _ in range(6)]
    time.sleep(0.3)
    started = time.monotonic()
    pool.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 2.5  # did not run the six waiting ones one second each
    assert [f.result() for f in running] == [1, 1]
    aborted = [f for f in waiting if isinstance(f.exception(), mpihub.TaskAborted)]
    assert len(aborted) >= 4


def test_await_in_asyncio(rc):
    lb = rc.load_balanced_view()

    async def main():
        single = await lb.apply_async(where, 5)
        together = await asyncio.gather(*(lb.apply_async(where, i) for i in range(6)))
        mapped = await lb.map_async(lambda x: x * 3, range(5))
        return single, together, mapped

    single, together, mapped = asyncio.run(main())
    assert single[0] == 5 and [x for x, _ in together] == list(range(6)) and mapped == [0, 3, 6, 9, 12]


def test_joblib_runs_on_the_engines(rc):
    mpihub.register_joblib_backend()
    view = rc.load_balanced_view()
    with joblib.parallel_config("mpihub", view=view):
        results = joblib.Parallel()(joblib.delayed(where)(i) for i in range(50))
    assert [x for x, _ in results] == list(range(50))
    assert {pid for _, pid in results} <= engine_pids(rc) and os.getpid() not in {pid for _, pid in results}
    with joblib.parallel_config("mpihub", view=view), pytest.raises(mpihub.RemoteError, match="bad 7"):
        joblib.Parallel()(joblib.delayed(fail if i == 7 else where)(i) for i in range(20))
    with joblib.parallel_config("mpihub", view=view):
        assert joblib.Parallel(return_as="generator")(joblib.delayed(where)(i) for i in range(5)).__next__()[0] == 0


def test_joblib_connects_a_client_of_its_own(rc, cluster):
    mpihub.register_joblib_backend("mpihub-own", url_file=str(cluster.cluster.client_file))
    with joblib.parallel_config("mpihub-own", n_jobs=-1):
        assert joblib.Parallel()(joblib.delayed(pow)(i, 2) for i in range(10)) == [i * i for i in range(10)]

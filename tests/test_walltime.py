"""Walltime without a batch system: engines that know their job's end (as mpihub's job
scripts tell them) retire a margin before it, and work lost with them at the end fails
with EngineRetired without using up retries."""
import os
import signal
import subprocess
import sys
import time

import pytest

import mpihub
from support import assert_gone

pytestmark = pytest.mark.timeout(90)


@mpihub.interactive
def lives_until_the_walltime_or_fails_once(flag):
    """Sleeps on an engine whose job ends (it will be killed there); elsewhere fails on
    its first run and succeeds on the second."""
    import os
    import time

    if os.environ.get("MPIHUB_JOB_END"):
        time.sleep(60)
    if not os.path.exists(flag):
        open(flag, "w").close()
        raise RuntimeError("the first run elsewhere fails")
    return "done"


def test_retired_engines_take_no_tasks_and_lost_work_fails_with_engine_retired(fresh_cluster, monkeypatch,
                                                                            tmp_path):
    monkeypatch.setenv("MPIHUB_JOB_END", str(time.time() + 60))
    monkeypatch.setenv("MPIHUB_RETIRE_MARGIN", "56")  # retires 4 s from now
    running = fresh_cluster(1)
    rc = running.client
    assert rc.engines[0].retire_at == pytest.approx(time.time() + 4, abs=2)
    lbview = rc.load_balanced_view()
    retried = lbview.set_flags(retries=1).apply_async(lives_until_the_walltime_or_fails_once, str(tmp_path / "f"))
    plain = rc.load_balanced_view().apply_async(time.sleep, 60)
    env = {k: v for k, v in os.environ.items() if k not in ("MPIHUB_JOB_END", "MPIHUB_RETIRE_MARGIN")}
    second = subprocess.Popen([sys.executable, "-m", "mpihub", "engine", "--url-file", str(running.cluster.engine_file)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rc.wait_for_engines(2, timeout=30, interactive=False)
        time.sleep(max(0.0, rc.engines[0].retire_at - time.time()) + 0.5)
        after = [rc.load_balanced_view().apply_async(os.getpid) for _ in range(4)]
        assert {ar.get(timeout=10) for ar in after} == {second.pid}  # the retired engine takes none
        queued_direct = rc[0].apply_async(lambda: "never")  # direct requests still reach it
        os.kill(rc.engines[0].pid, signal.SIGKILL)  # what the walltime does
        for lost in (plain, queued_direct):
            with pytest.raises(mpihub.EngineRetired, match="end of its batch job"):
                lost.get(timeout=20)
        assert retried.get(timeout=30) == "done"  # ran again, failed once, and still had its retry
        assert retried.metadata["engine_id"] == 1
    finally:
        second.terminate()
        second.wait(10)
    assert_gone([second.pid])

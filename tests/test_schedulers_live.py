"""Each scheduler and the in-flight limit on a real controller (`--scheduler`, `--hwm`)."""
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("scheduler", ["leastload", "lru", "random", "weighted"])
def test_each_scheduler_runs_a_map(fresh_cluster, scheduler):
    rc = fresh_cluster(2, controller_args=["--scheduler", scheduler, "--hwm", "8"]).client
    lbview = rc.load_balanced_view()
    ar = lbview.map_async(lambda x: x * x, range(40))
    assert ar.get(timeout=30) == [x * x for x in range(40)]
    assert {md["engine_id"] for md in ar.metadata} == {0, 1}  # every policy used both engines
    assert rc.load_balanced_view([1]).apply_sync(lambda: 7) == 7
    if scheduler == "lru":  # strictly in turn while every engine has room
        in_turn = lbview.map_async(lambda x: time.sleep(0.01), range(6))
        in_turn.get(timeout=30)
        engines = [md["engine_id"] for md in in_turn.metadata]
        assert engines in ([0, 1] * 3, [1, 0] * 3)


@pytest.mark.parametrize("hwm, in_flight", [(1, 2), (3, 6)])
def test_hwm_limits_tasks_in_flight_per_engine(fresh_cluster, hwm, in_flight):
    rc = fresh_cluster(2, controller_args=["--hwm", str(hwm)]).client
    ar = rc.load_balanced_view().map_async(time.sleep, [0.5] * 8)
    time.sleep(0.2)
    assert rc.queue_status()["unassigned"] == 8 - in_flight
    ar.get(timeout=30)


def test_bad_scheduler_options_are_refused():
    for args in (["--scheduler", "fastest"], ["--hwm", "0"]):
        out = subprocess.run([sys.executable, "-m", "mpihub", "controller", *args], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 2 and ("invalid choice" in out.stderr or "at least 1" in out.stderr)

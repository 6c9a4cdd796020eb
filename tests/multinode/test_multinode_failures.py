"""Nodes lost across the network: a compute node unplugged while it runs work
(node_loss_session.py, run on the login node)."""
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

HERE = Path(__file__).resolve().parent
#: The stated bound for a few engines (docs/scale.md): the heartbeat timeout and one check.
DEAD_WITHIN_S = 6.0


def on_login_json(multinode, script: str, *args: str) -> dict:
    done = multinode.on_login(sys.executable, str(HERE / script), *args, timeout=200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("launch", ["srun", "mpiexec"])
def test_a_node_unplugged_fails_its_work_in_the_bound_and_its_engines_rejoin(multinode, shared_dir, launch):
    seen = on_login_json(multinode, "node_loss_session.py", str(shared_dir), launch)
    assert seen["cut_ids"] and seen["kept_ids"], seen
    assert seen["declared_dead_s"] is not None and seen["declared_dead_s"] <= DEAD_WITHIN_S + 1, seen
    assert seen["false_deaths"] == [], "engines of the nodes still up were declared dead"
    assert seen["direct_error"] and "EngineError" in seen["direct_error"] and "heartbeats" in seen["direct_error"]
    # load-balanced work went on, on the node still up, and none of it was lost
    assert seen["lb_in_order"] and seen["lb_failed"] == 0
    kept_hosts = {seen["hosts"][str(i)] for i in seen["kept_ids"]}
    assert seen["lb_hosts_after_cut"] and set(seen["lb_hosts_after_cut"]) <= kept_hosts, seen
    # the plug back in: the same processes, under the same ids
    assert seen["same_ids"] and seen["same_pids"], seen
    assert seen["lb_after"] == [2 * x for x in range(8)]


def test_a_controller_lost_with_its_node_is_restored_on_another_and_takes_its_engines_back(multinode, shared_dir):
    seen = on_login_json(multinode, "restore_session.py", str(shared_dir))
    assert seen["restored_on"] != seen["lost_node"] and seen["restored_on"] in seen["engine_hosts"], seen
    # the restored controller lists the new node's addresses; the engines dial its fabric one
    assert seen["engines_dial"].startswith("tcp://10.78.0.1" + seen["restored_on"][-1] + ":"), seen
    assert any(c.startswith("tcp://10.77.0.1" + seen["restored_on"][-1] + ":") for c in seen["client_candidates"])
    # every engine is back under its id, the same process, with the results of before
    assert seen["same_ids"] and seen["same_pids"] and seen["before_kept"], seen
    assert seen["lb_after"] == [x * x for x in range(8)]
    assert seen["restored_exit"] == 0 and "4 engines expected back" in seen["restored_log"], seen["restored_log"]
    assert seen["restored_log"].count("is back (") == 4, seen["restored_log"]

"""The whole batch path across nodes: a Client on the login node submits a controller
job and an engines job; the controller lands on one compute node, the engines on the
two others; the client and the engines each find an address they can reach; MPI and
ZeroMQ scatter/gather come back bit-identical."""
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

SESSION = Path(__file__).with_name("login_session.py")


@pytest.mark.parametrize("launch", ["srun", "mpiexec"])
def test_a_login_node_session_across_three_nodes(multinode, shared_dir, launch):
    done = multinode.on_login(sys.executable, str(SESSION), str(shared_dir), launch, "8", timeout=200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    controller = seen["controller_host"]
    assert controller in multinode.nodes and seen["login"] == multinode.login
    assert sorted(set(seen["engine_hosts"])) == sorted(set(multinode.nodes) - {controller})
    assert seen["mpi_ranks"] == [0, 1, 2, 3]
    # the node's name resolves to its fabric address, listed first; the login node cannot
    # reach it and took the management address instead
    candidates = seen["client_candidates"]
    assert candidates[0].startswith("tcp://10.78.") and any(c.startswith("tcp://10.77.") for c in candidates)
    assert seen["client_connected_to"].startswith("tcp://10.77.")
    assert seen["identical_mpi"] and seen["identical_zmq"]
    assert seen["allreduce"] == [[4.0, 4.0, 4.0]] * 4
    assert not list(shared_dir.glob("**/security/*.json")), "connection files left after a clean stop"
    for job_id in seen["job_ids"]:
        state = multinode.on_login("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
        assert state in ("", "COMPLETING", "COMPLETED"), f"job {job_id} still {state}"

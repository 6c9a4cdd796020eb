"""The whole batch path across nodes: a Client on the login node submits a controller
job and an engines job; the controller lands on one compute node, the engines on the
two others; the client and the engines each find an address they can reach; MPI and
ZeroMQ scatter/gather come back bit-identical."""
import json
import sys
import time
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
    assert seen["identical_mpi"] and seen["identical_zmq"] and seen["bcast_identical"]
    assert seen["allreduce"] == [[4.0, 4.0, 4.0]] * 4
    assert not list(shared_dir.glob("**/security/*.json")), "connection files left after a clean stop"
    for job_id in seen["job_ids"]:
        state = multinode.on_login("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
        assert state in ("", "COMPLETING", "COMPLETED"), f"job {job_id} still {state}"


def test_engines_behind_a_relay_on_each_node(multinode, shared_dir):
    """``engine_launch="relay"``: one keeper per engine node forks its 2 engines and
    carries their task traffic to the controller on the third node; they reach the
    login node's client, take data and load-balanced work; the jobs end with the stop."""
    done = multinode.on_login(sys.executable, str(SESSION), str(shared_dir), "relay", "8", timeout=200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    controller = seen["controller_host"]
    engine_nodes = sorted(set(multinode.nodes) - {controller})
    assert sorted(set(seen["engine_hosts"])) == engine_nodes and seen["mpi_ranks"] == []
    assert len(seen["keepers"]) == 4, f"4 engines, not {len(seen['keepers'])}"
    keepers = {tuple(pair) for pair in seen["keepers"]}
    assert sorted(host for host, _ in keepers) == engine_nodes, f"one keeper per node: {seen['keepers']}"
    assert seen["identical_zmq"] and seen["pulled"] == ["x" * 100] * 4
    assert seen["lb"] == [k * k for k in range(50)]
    assert not list(shared_dir.glob("**/security/*.json")), "connection files left after a clean stop"
    for job_id in seen["job_ids"]:
        state = multinode.on_login("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
        assert state in ("", "COMPLETING", "COMPLETED"), f"job {job_id} still {state}"


def test_a_controller_bound_to_the_management_interface_is_reached_by_everyone(multinode, shared_dir):
    done = multinode.on_login(sys.executable, str(SESSION), str(shared_dir), "srun", "8", "eth0", timeout=200,
                              check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen["client_candidates"]) == 1 and seen["client_candidates"][0].startswith("tcp://10.77."), seen
    assert seen["identical_mpi"] and seen["identical_zmq"] and seen["allreduce"] == [[4.0, 4.0, 4.0]] * 4


def test_a_controller_bound_to_the_fabric_alone_is_refused_at_once_from_the_login_node(multinode, shared_dir):
    """The classic mistake: the controller binds the fast fabric, which only the compute
    nodes are on. The login node has no route there: it says so at once, not after the
    connect timeout, and the cluster's jobs are cancelled."""
    started = time.monotonic()
    done = multinode.on_login(sys.executable, str(SESSION), str(shared_dir), "srun", "8", "fab0", timeout=200,
                              check=False)
    assert done.returncode != 0 and time.monotonic() - started < 60
    assert "cannot be reached from this host (mh-login): it has no route to any of tcp://10.78." in done.stderr, \
        done.stderr[-3000:]
    assert "--interface" in done.stderr
    deadline = time.monotonic() + 30
    while (left := multinode.on_login("squeue", "-h", "-o", "%i %T").stdout.strip()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == "", f"jobs left behind: {left}"

def test_engines_started_before_the_controller_wait_for_it_within_their_bound(multinode, shared_dir):
    done = multinode.on_login(sys.executable, str(SESSION.with_name("early_engines_session.py")), str(shared_dir),
                              timeout=200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # with no controller at all, the job gives up at its bound and says what it waited for
    assert seen["alone_state"] == "FAILED" and seen["alone_s"] < 30, seen
    assert "waiting up to 3s for the controller's connection file" in seen["alone_log"]
    assert "no controller connection file" in seen["alone_log"] and "after 3s" in seen["alone_log"]
    # started first, the engines waited, then registered with the controller's job
    assert seen["early_state"] == "RUNNING"
    assert "waiting up to 120s" in seen["early_log"], seen["early_log"]
    assert seen["ids"] == [0, 1, 2, 3]
    assert len(seen["engine_hosts"]) == 2 and seen["controller_host"] not in seen["engine_hosts"], seen
    # the node names resolve to the fabric, which the engines reach: they register there
    assert seen["early_log"].count("registered as engine") == 4
    assert all("at tcp://10.78." in line for line in seen["early_log"].splitlines() if "registered as engine" in line)
    assert seen["jobs_after"] == ["COMPLETED", "COMPLETED"], seen

"""The multi-node Slurm itself: separate hosts, private /tmp, two networks of which the
login node sees one, and MPI across the nodes."""
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

PYTHON = sys.executable  # the project's venv: the nodes share the file system


def test_srun_from_the_login_node_lands_on_three_hosts(multinode):
    out = multinode.on_login("srun", "-N", "3", "-t", "1", "hostname").stdout.split()
    assert sorted(out) == list(multinode.nodes)
    assert multinode.on_login("hostname").stdout.strip() == multinode.login


def test_each_node_has_a_tmp_of_its_own(multinode):
    first, second = multinode.nodes[:2]
    multinode.on_node(first, "sh", "-c", "echo here > /tmp/mpihub-private-tmp-probe")
    try:
        assert multinode.on_node(first, "cat", "/tmp/mpihub-private-tmp-probe").stdout.strip() == "here"
        assert multinode.on_node(second, "test", "-e", "/tmp/mpihub-private-tmp-probe", check=False).returncode == 1
        assert not Path("/tmp/mpihub-private-tmp-probe").exists()  # nor this machine's
    finally:
        multinode.on_node(first, "rm", "-f", "/tmp/mpihub-private-tmp-probe")


CONNECT = """
import socket, sys
s = socket.socket(); s.settimeout(3)
try:
    s.connect((sys.argv[1], 6828)); print("reached")
except OSError as exc:
    print("unreachable", exc.errno)
"""


@pytest.mark.parametrize("address, from_login, from_node1", [
    ("10.77.0.12", "reached", "reached"),        # mh-node2's slurmd on the management network
    ("10.78.0.12", "unreachable", "reached"),    # and on the fabric: compute nodes only
])
def test_the_fabric_joins_only_the_compute_nodes(multinode, address, from_login, from_node1):
    assert multinode.on_login(PYTHON, "-c", CONNECT, address).stdout.split()[0] == from_login
    assert multinode.on_node("mh-node1", PYTHON, "-c", CONNECT, address).stdout.split()[0] == from_node1


def test_mpi_runs_across_the_nodes(multinode):
    program = ("from mpi4py import MPI; import socket; c = MPI.COMM_WORLD; "
               "print(c.rank, socket.gethostname(), c.allreduce(c.rank + 1))")
    out = multinode.on_login("env", "MPIR_CVAR_PMI_VERSION=1", "srun", "-N", "3", "-n", "3", "--mpi=pmi2", "-t", "1",
                             PYTHON, "-c", program, timeout=90).stdout
    rows = sorted(line.split() for line in out.splitlines())
    assert [row[1] for row in rows] == list(multinode.nodes) and {row[2] for row in rows} == {"6"}

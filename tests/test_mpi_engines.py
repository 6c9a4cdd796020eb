"""MPI engines: one mpiexec job of N ranks, engine ids in rank order, comm/rank/size."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mpihub
from support import assert_gone, run_cluster
from mpihub.cluster.cluster import state_file

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def mpi_cluster():
    yield from run_cluster(4, engines="mpi")


@mpihub.interactive  # shipped by value: the engines cannot import this test module
def psum(x):
    """The collective every rank runs: a sum across the whole world."""
    from mpi4py import MPI

    import mpihub.engine

    return mpihub.engine.comm.allreduce(x, op=MPI.SUM)


def test_ids_follow_ranks(mpi_cluster):
    rc = mpi_cluster.client
    assert rc.ids == [0, 1, 2, 3]
    assert [rc.engines[i].mpi_rank for i in rc.ids] == [0, 1, 2, 3]
    assert len(mpi_cluster.cluster.launcher.processes) == 2  # the controller and one mpiexec


def test_comm_rank_size_on_every_engine(mpi_cluster):
    rc = mpi_cluster.client
    assert rc[:].apply_sync(mpihub.interactive(lambda: (rank, size))) == [(0, 4), (1, 4), (2, 4), (3, 4)]  # noqa: F821
    names = rc[:].apply_sync(lambda: __import__("mpihub.engine").engine.comm.Get_size())
    assert names == [4, 4, 4, 4]
    ar = rc[2].apply_async(lambda: None)
    ar.get(timeout=10)
    assert ar.metadata["mpi_rank"] == 2


def test_functions_may_call_collectives(mpi_cluster):
    rc = mpi_cluster.client
    assert rc[:].apply_sync(psum, 5) == [20, 20, 20, 20]
    rc[:].scatter("part", list(range(8)), block=True)
    total = rc[:].apply_sync(mpihub.interactive(lambda: __import__("mpihub.engine").engine.comm.allreduce(sum(part))))  # noqa: F821
    assert total == [28] * 4


def test_a_second_mpi_job_gets_its_own_consecutive_ids(fresh_cluster):
    running = fresh_cluster(2, engines="mpi")
    running.cluster.start_engines(2)
    rc = running.client
    rc.wait_for_engines(4, timeout=60, interactive=False)
    assert rc.ids == [0, 1, 2, 3]
    assert [rc.engines[i].mpi_rank for i in rc.ids] == [0, 1, 0, 1]
    assert rc[:].apply_sync(psum, 1) == [2, 2, 2, 2]  # each job sums over its own world
    running.pids = running.cluster.launcher.pids + [rc.engines[i].pid for i in rc.ids]  # checked at teardown


def test_via_mpi_checks_the_world_first(mpi_cluster, fresh_cluster):
    rc = mpi_cluster.client
    rc[:].scatter("z", list(range(8)), block=True, via="auto")  # the ZMQ path, same result
    assert rc[:].gather("z", block=True, via="zmq") == list(range(8))
    rc[:].bcast("z", 1, via="mpi", block=True)
    assert rc[:].pull("z", block=True) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="distinct targets"):
        rc.direct_view([0, 0]).gather("z", via="mpi")
    local = fresh_cluster(1).client
    sent = len(local.core.results)
    with pytest.raises(ValueError, match="one MPI world"):
        local[:].scatter("z", [1, 2], via="mpi")
    assert len(local.core.results) == sent  # nothing was sent


def test_module_entry_point_and_bad_mpiexec(mpi_cluster):
    out = subprocess.run([sys.executable, "-m", "mpihub.engine", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--mpi" in out.stdout
    with pytest.raises(FileNotFoundError, match="not found"):
        mpihub.Cluster(n=1, engines="mpi", mpiexec="/no/such/mpiexec")


def test_cli_mpi_cluster(profile_dir):
    cli = [sys.executable, "-m", "mpihub"]
    started = subprocess.run([*cli, "cluster", "start", "-n", "2", "--engines", "mpi", "--daemonize",
                              "--cluster-id", "mpicli"], capture_output=True, text=True, timeout=90)
    assert started.returncode == 0, started.stderr
    state = json.loads(state_file("mpicli").read_text())
    try:
        status = subprocess.run([*cli, "status", "--cluster-id", "mpicli"], capture_output=True, text=True, timeout=30)
        ranks = [line.split()[3] for line in status.stdout.splitlines()[2:]]
        assert ranks == ["0/2", "1/2"], status.stdout
        with mpihub.Client(cluster_id="mpicli") as rc:
            engine_pids = [rc.engines[i].pid for i in rc.ids]
            assert rc[:].apply_sync(psum, 2) == [4, 4]
    finally:
        stopped = subprocess.run([*cli, "cluster", "stop", "--cluster-id", "mpicli"], capture_output=True,
                                 text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert_gone([state["controller_pid"], *state["engine_pids"], *engine_pids])


def test_a_rank_that_never_starts_ends_the_job_at_the_mpi_init_timeout(tmp_path):
    """MPI_Init waits for every rank, holding the GIL: rank 1 starting 60 s late would hold
    rank 0 (and a batch job) that long. Past MPIHUB_MPI_INIT_TIMEOUT rank 0 exits with a
    traceback at init_world, and mpiexec ends the late rank too."""
    ranks = ("import os, time\n"
             "if os.environ.get('PMI_RANK') == '1': time.sleep(60)\n"
             "from mpihub.engine import mpi_world\n"
             "mpi_world.init_world()\n"
             "print('initialised', flush=True)\n")
    script = tmp_path / "late_rank.py"
    script.write_text(ranks)
    mpiexec = str(Path(sys.executable).with_name("mpiexec"))
    env = {**os.environ, "MPIHUB_MPI_INIT_TIMEOUT": "2"}
    started = time.monotonic()
    step = subprocess.run([mpiexec, "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=50, env=env)
    assert time.monotonic() - started < 30
    assert step.returncode != 0 and "initialised" not in step.stdout
    assert "Timeout (0:00:02)" in step.stderr and "init_world" in step.stderr, step.stderr

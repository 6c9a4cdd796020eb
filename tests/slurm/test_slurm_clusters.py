"""mpihub clusters on the real Slurm: the shipped templates submitted as they are, a
Client in this process as the login node, MPI between the engines, and nothing left
behind by a stop, a scancel or a qdel."""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import mpihub

pytestmark = pytest.mark.timeout(240)


def batch_cluster(**kwargs) -> mpihub.Cluster:
    kwargs.setdefault("engines", "slurm")
    kwargs.setdefault("controller", kwargs["engines"])
    kwargs.setdefault("walltime", "00:10:00")
    kwargs.setdefault("start_timeout", 120)
    return mpihub.Cluster(n=kwargs.pop("n", 2), controller_ip="127.0.0.1", poll_interval=0.5, **kwargs)


def scatter_compute_gather(rc: mpihub.Client) -> None:
    dv = rc[:]
    x = np.arange(1_000_000, dtype=np.float64)
    dv.scatter("x", x, via="mpi", block=True)
    dv.execute("y = 2 * x + rank", block=True)
    y = dv.gather("y", via="mpi", block=True)
    half = len(x) // 2
    assert np.array_equal(y, np.concatenate([2 * x[:half], 2 * x[half:] + 1]))
    dv.push({"ones": np.ones(3)}, block=True)
    dv.allreduce("ones", op="sum", dest="twos", via="mpi", block=True)
    assert [a.tolist() for a in dv.pull("twos", block=True)] == [[2.0, 2.0, 2.0]] * 2


def started(cluster: mpihub.Cluster) -> mpihub.Client:
    try:
        return cluster.start_and_connect_sync()
    except BaseException:
        for job in cluster.batch.jobs:  # the log says why
            if os.path.exists(job.log_path):
                print(f"--- {job.log_path}\n{open(job.log_path).read()[-3000:]}")
        raise


def test_one_job_runs_controller_then_mpi_engines(slurm):
    cluster = batch_cluster()
    rc = started(cluster)
    job = cluster.batch.jobs[0]
    try:
        assert job.role == "job" and sorted(e.mpi_rank for e in rc.engines.values()) == [0, 1]
        assert rc[:].apply_sync(lambda: __import__("os").environ["SLURM_JOB_ID"]) == [job.job_id] * 2
        scatter_compute_gather(rc)
    finally:
        cluster.stop_cluster_sync()
    slurm.wait_gone(job.job_id)
    assert not cluster.client_file.exists() and "controller ready" in open(job.log_path).read()


def test_controller_job_and_engines_job_with_mpiexec(slurm):
    cluster = batch_cluster(separate_jobs=True, engine_launch="mpiexec")
    rc = started(cluster)
    controller_job, engines_job = cluster.batch.jobs
    try:
        assert (controller_job.role, engines_job.role) == ("controller", "engines")
        assert set(rc[:].apply_sync(lambda: __import__("os").environ["SLURM_JOB_ID"])) == {engines_job.job_id}
        scatter_compute_gather(rc)
    finally:
        cluster.stop_cluster_sync()
    for job in (controller_job, engines_job):
        slurm.wait_gone(job.job_id)


def test_scancel_of_the_engines_reaches_the_client(slurm):
    """A login-node controller, engines in a job: scancel fails the waiting task with a
    BatchError that names the job, its state and its log, and leaves no process."""
    cluster = batch_cluster(controller="local")
    rc = started(cluster)
    job = cluster.batch.jobs[0]
    try:
        pids = [e.pid for e in rc.engines.values()]
        waiting = rc.load_balanced_view().apply_async(time.sleep, 60)
        time.sleep(0.5)
        subprocess.run(["scancel", job.job_id], check=True, timeout=30)
        with pytest.raises((mpihub.BatchError, mpihub.EngineError)) as failure:
            waiting.get(timeout=30)
        slurm.wait_gone(job.job_id)
        assert not any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
                       for pid in pids)
        deadline = time.monotonic() + 15
        while True:  # once the watch has seen the job end, a call that finds no engines says why
            try:
                rc.load_balanced_view().apply_async(lambda: 1)
            except mpihub.BatchError as exc:
                assert re.search(f"job {job.job_id} \\(engines\\) is CANCELLED.*its log: ", str(exc)), exc
                break
            except mpihub.NoEnginesRegistered:
                assert time.monotonic() < deadline, "the client never named the cancelled job"
                time.sleep(0.2)
        if isinstance(failure.value, mpihub.BatchError):
            assert "CANCELLED" in str(failure.value)
    finally:
        cluster.stop_cluster_sync()


def test_a_job_that_fails_at_once_is_reported_with_its_log(slurm):
    cluster = batch_cluster(prologue="echo 'no such module: mpi/7' >&2; exit 3")
    with pytest.raises(mpihub.BatchError, match="is FAILED.*exit code 3.*its log: .*-job-.*\\.out") as failure:
        cluster.start_and_connect_sync()
    log_path = str(failure.value).rsplit("its log: ", 1)[1]
    assert "no such module" in open(log_path).read()
    cluster.stop_cluster_sync()
    slurm.wait_gone(cluster.batch.jobs[0].job_id)


def test_engines_that_do_not_come_in_time_are_reported_with_their_jobs_state_and_log(slurm):
    cluster = batch_cluster(controller="local", start_timeout=8,
                            prologue="echo 'waiting for the licence server'; sleep 120")
    with pytest.raises(mpihub.TimeoutError, match=r"0 of 2 engines registered within 8 s: job \d+ RUNNING") as late:
        cluster.start_and_connect_sync()
    job = cluster.batch.jobs[0]
    assert f"engines job {job.job_id}, log {job.log_path}" in str(late.value)
    assert "waiting for the licence server" in str(late.value)
    slurm.wait_gone(job.job_id)


@pytest.mark.parametrize("flavor", ["torque", "pro"])
def test_pbs_templates_through_qsub_and_qdel(slurm, flavor):
    """The PBS one-job template on this Slurm through its qsub (which reads #PBS lines and,
    with the set-up's prolog, gives the job a PBS_NODEFILE)."""
    cluster = batch_cluster(engines="pbs", pbs_flavor=flavor)
    rc = started(cluster)
    job = cluster.batch.jobs[0]
    try:
        nodefile = rc[0].apply_sync(lambda: open(__import__("os").environ["PBS_NODEFILE"]).read().split())
        assert len(nodefile) == 2
        scatter_compute_gather(rc)
    finally:
        cluster.stop_cluster_sync()
    slurm.wait_gone(job.job_id)


def test_submit_command_connect_from_the_login_node_and_stop(slurm, profile_dir):
    cid = "submitted"
    out = subprocess.run([sys.executable, "-m", "mpihub", "submit", "slurm", "-n", "2", "--walltime", "00:10:00",
                          "--ip", "127.0.0.1", "--cluster-id", cid, "--profile-dir", str(profile_dir)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split("submitted slurm job ", 1)[1].split()[0]
    try:
        rc = mpihub.Client(cluster_id=cid, profile_dir=profile_dir, timeout=120)
        rc.wait_for_engines(2, timeout=120, interactive=False)
        assert rc[:].pull("rank", block=True) == [0, 1]
        rc.close()
    finally:
        stop = subprocess.run([sys.executable, "-m", "mpihub", "cluster", "stop", "--cluster-id", cid,
                               "--profile-dir", str(profile_dir)], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    slurm.wait_gone(job_id)


def test_walltime_retires_engines_and_lost_work_fails_with_engine_retired(slurm):
    """A 1-minute job: its engines stop taking load-balanced work 40 s before the end, and
    the task still running when the walltime kills the job fails with EngineRetired."""
    cluster = batch_cluster(controller="local", walltime="00:01:00", retire_margin=40)
    rc = started(cluster)
    job = cluster.batch.jobs[0]
    try:
        lbview = rc.load_balanced_view()
        long_task = lbview.apply_async(time.sleep, 300)
        time.sleep(25)  # past the retirement (20 s into the job)
        late = lbview.apply_async(lambda: "never")
        time.sleep(1)
        assert not late.ready() and rc.queue_status()["unassigned"] == 1  # no engine takes it
        with pytest.raises(mpihub.EngineRetired, match="end of its batch job"):
            long_task.get(timeout=150)
        deadline = time.monotonic() + 30
        while (state := cluster.batch.states()[job.job_id]).state == "COMPLETING" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert state.state == "TIMEOUT"
        late.abort()
    finally:
        cluster.stop_cluster_sync()
    slurm.wait_gone(job.job_id)


def test_qdel_of_a_one_job_cluster_fails_what_waits_and_leaves_nothing(slurm):
    """qdel ends the PBS job that holds the controller and the engines: the result still
    waiting fails at once with a BatchError naming the job (no controller is left to
    answer), and none of the job's processes survives."""
    cluster = batch_cluster(engines="pbs", pbs_flavor="torque")
    rc = started(cluster)
    job = cluster.batch.jobs[0]
    try:
        waiting = rc[:].apply_async(time.sleep, 60)
        time.sleep(0.5)
        subprocess.run(["qdel", job.job_id], check=True, timeout=30)
        with pytest.raises(mpihub.CompositeError) as failure:
            waiting.get(timeout=30)
        assert all(isinstance(e, mpihub.BatchError) for e in failure.value.elist)
        message = str(failure.value.elist[0])
        assert message.startswith(f"pbs job {job.job_id} (job) is "), message
        log_path = message.split("its log: ")[1].split(";")[0]
        assert "controller ready" in open(log_path).read()
        slurm.wait_gone(job.job_id)
    finally:
        cluster.stop_cluster_sync()


def test_a_refused_submission_says_why(slurm):
    cluster = batch_cluster(queue="no-such-partition")
    with pytest.raises(mpihub.BatchError, match="sbatch .* failed .*[Ii]nvalid partition"):
        cluster.start_and_connect_sync()
    assert cluster.batch.jobs == [] and not cluster.client_file.exists()


@pytest.mark.parametrize("jobs", ["one", "separate"])
def test_what_a_dry_run_printed_runs_under_sbatch_unchanged(slurm, cancel_after, tmp_path, jobs):
    """`mpihub submit slurm --dry-run > job.sh && sbatch job.sh` works: sbatch --test-only
    accepts every script as printed (or written by --output), sbatch runs them, the login
    node's Client connects, and `mpihub cluster stop` (no state file: it asks the
    controller) ends the jobs. A fresh profile: the dry run makes the log folder that
    Slurm writes the jobs' logs into."""
    profile, cid = tmp_path / "profile", f"dry-{jobs}"
    out = subprocess.run([sys.executable, "-m", "mpihub", "submit", "slurm", "-n", "2", "--jobs", jobs,
                          "--walltime", "00:10:00", "--ip", "127.0.0.1", "--cluster-id", cid, "--profile-dir",
                          str(profile), "--dry-run", "--output", str(tmp_path / "jobs")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (tmp_path / "job.sh").write_text(out.stdout)
    scripts = [tmp_path / "job.sh"] if jobs == "one" else [tmp_path / "jobs" / f"mpihub-{cid}-{role}.sbatch"
                                                          for role in ("controller", "engines")]
    for script in scripts:
        test_only = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True,
                                   timeout=30, cwd=tmp_path)
        assert test_only.returncode == 0 and "to start at" in test_only.stderr, test_only.stderr
    job_ids = [cancel_after(subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                                           timeout=30, cwd=tmp_path, check=True).stdout.strip())
               for script in scripts]
    with mpihub.Client(cluster_id=cid, profile_dir=profile, timeout=120) as rc:
        rc.wait_for_engines(2, timeout=120, interactive=False)
        assert rc[:].apply_sync(lambda: __import__("os").environ["SLURM_JOB_ID"]) == [job_ids[-1]] * 2
        assert rc[:].pull("rank", block=True) == [0, 1]
    stop = subprocess.run([sys.executable, "-m", "mpihub", "cluster", "stop", "--cluster-id", cid, "--profile-dir",
                           str(profile)], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and "asked cluster" in stop.stdout, stop.stderr
    for job_id in job_ids:
        slurm.wait_gone(job_id)
    role = "job" if jobs == "one" else "controller"
    [log] = (profile / "log").glob(f"*-{role}-{job_ids[0]}.out")
    assert "controller ready" in log.read_text()


def test_an_mpi_engine_rank_that_ends_normally_does_not_wait_for_one_that_left_at_once(slurm):
    """Under srun, MPI_Finalize waits for every rank: an engine that returns normally from
    a shutdown while its neighbour was ended at once by its heartbeat thread (os._exit)
    would hold the job forever. MPI engines skip MPI_Finalize, so the step ends."""
    ranks = ("from mpihub.engine import mpi_world; import os, mpihub.engine as e; mpi_world.init_world(); "
             "e.comm.Barrier(); os._exit(0) if e.rank == 0 else print('rank', e.rank, 'returns', flush=True)")
    step = subprocess.run(["srun", "-n", "2", "--mpi=pmi2", "--time=1", sys.executable, "-c", ranks],
                          capture_output=True, text=True, timeout=30)
    assert step.returncode == 0 and "rank 1 returns" in step.stdout, step.stderr

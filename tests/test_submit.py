"""`mpihub submit` without a batch system: what a dry run prints and writes, a bad
template refused on the command line, and the rendered PBS engines script run as PBS
would run it, against a real controller (on a real Slurm: tests/slurm/)."""
import os
import signal
import socket
import subprocess
import sys

import pytest

import mpihub
from support import assert_gone

pytestmark = pytest.mark.timeout(120)


def dry_run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "mpihub", "submit", *args, "--dry-run"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out


def test_a_dry_run_prints_exactly_the_first_script_and_the_rest_on_stderr(profile_dir):
    one = dry_run("slurm", "-n", "2", "--cluster-id", "dry")
    assert one.stdout == mpihub.Cluster(n=2, engines="slurm", controller="slurm", cluster_id="dry",
                                        profile_dir=profile_dir).job_script()
    assert one.stdout.startswith("#!/bin/bash\n#SBATCH ") and one.stdout.count("#!") == 1
    assert "nothing submitted" in one.stderr and "cluster_id='dry'" in one.stderr
    two = dry_run("pbs", "-n", "2", "--jobs", "separate", "--walltime", "00:20:00", "--queue", "short",
                  "--cluster-id", "dry")
    assert two.stdout.startswith("#!/bin/bash\n#PBS ") and two.stdout.count("#!") == 1
    assert "#PBS -q short" in two.stdout and "mpihub-controller" in two.stdout
    assert "the engines job's script" in two.stderr and "mpihub-engines\" -n 2" in two.stderr


def test_a_dry_run_writes_every_script_with_output(tmp_path, profile_dir):
    out = dry_run("slurm", "-n", "3", "--jobs", "separate", "--cluster-id", "dry", "--output", str(tmp_path / "jobs"))
    written = {path.name: path.read_text() for path in (tmp_path / "jobs").iterdir()}
    assert sorted(written) == ["mpihub-dry-controller.sbatch", "mpihub-dry-engines.sbatch"]
    assert written["mpihub-dry-controller.sbatch"] == out.stdout
    assert "#SBATCH --ntasks=3" in written["mpihub-dry-engines.sbatch"]
    assert str(tmp_path / "jobs" / "mpihub-dry-engines.sbatch") in out.stderr
    refused = subprocess.run([sys.executable, "-m", "mpihub", "submit", "slurm", "-n", "2", "--output", "x"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "--output DIR is where --dry-run writes" in refused.stderr


def test_rendered_pbs_engines_script_in_a_pbs_like_environment(fresh_cluster, tmp_path):
    """The PBS engines job's body, run as PBS would (PBS_NODEFILE, PBS_O_WORKDIR, $HOME as
    the working directory, qdel as SIGTERM to the job's process group), against a real
    controller: its engines start with mpiexec over the nodefile and register."""
    running = fresh_cluster(0)
    rc = running.client
    jobs = mpihub.Cluster(n=2, engines="pbs", controller="local", cluster_id=running.cluster.cluster_id,
                          profile_dir=running.cluster.profile_dir)
    script = tmp_path / "engines.pbs"
    script.write_text(jobs.job_script("engines"))
    nodefile = tmp_path / "nodefile"
    nodefile.write_text(f"{socket.gethostname()}\n" * 2)
    env = {**os.environ, "PBS_JOBID": "1.fake", "PBS_JOBNAME": "mpihub", "PBS_O_WORKDIR": str(tmp_path),
           "PBS_NODEFILE": str(nodefile), "PBS_NP": "2", "PBS_ENVIRONMENT": "PBS_BATCH", "PBS_QUEUE": "batch"}
    job = subprocess.Popen(["bash", str(script)], cwd=os.path.expanduser("~"), env=env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rc.wait_for_engines(2, timeout=60, interactive=False)
        assert sorted(e.mpi_rank for e in rc.engines.values()) == [0, 1]
        assert rc[:].apply_sync(lambda: __import__("os").environ.get("PBS_JOBID")) == ["1.fake"] * 2
        engine_pids = [e.pid for e in rc.engines.values()]
    finally:
        os.killpg(job.pid, signal.SIGTERM)  # qdel
        try:
            job.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(5)
    output = job.stdout.read()
    assert "starting 2 engines" in output and "with mpiexec" in output, output
    assert_gone(engine_pids)


def test_a_bad_template_is_refused_on_the_command_line(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\necho {{engines}}\n")
    out = subprocess.run([sys.executable, "-m", "mpihub", "submit", "slurm", "-n", "2", "--template", str(bad),
                          "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "never uses" in out.stderr


def test_the_relay_launch_needs_engines_that_divide_over_the_nodes(profile_dir):
    launcher = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launchers", "mpihub-engines")
    done = subprocess.run(["bash", launcher, "-n", "5", "--launch", "relay"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "MPIHUB_CLUSTER_ID": "x", "SLURM_JOB_NUM_NODES": "2"})
    assert done.returncode == 2 and "5 is not a multiple of 2" in done.stderr

"""The one-node Slurm of tests/slurm/setup.sh is real and behaves as the suite expects:
partitions, batch jobs, scancel, Torque-style qsub/qdel with a PBS_NODEFILE."""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

PBS_SPOOL = Path("/var/spool/mpihub-slurm/pbs")  # where the TaskProlog writes PBS_NODEFILEs


def unique_name() -> str:
    return f"mh-{uuid.uuid4().hex[:8]}"  # short: Torque allows 15 characters


def sh(*cmd: str, timeout: float = 30, **kwargs) -> str:
    """Run a command; its stdout, or an assertion error with its output."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert r.returncode == 0, f"{' '.join(cmd)} -> rc={r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


def wait_for(what: str, predicate: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def sbatch_wait(script: Path, cwd: Path, **kwargs) -> str:
    """Submit with ``sbatch --wait`` (it exits with the job's status); the job id. A job left
    behind by a failure or a timeout here is cancelled by its unique name."""
    name = unique_name()
    done = False
    try:
        job_id = sh("sbatch", "--wait", "--parsable", "-J", name, "-o", str(cwd / "%j.out"), str(script),
                    cwd=cwd, **kwargs).strip()
        done = True
        return job_id
    finally:
        if not done:
            subprocess.run(["scancel", "--name", name], capture_output=True, timeout=10)


def job_state(job_id: str) -> str:
    return sh("squeue", "-h", "-j", job_id, "-o", "%T").strip()


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def env_without_pbs() -> dict[str, str]:
    """The environment for a submission (sbatch exports it all), minus any PBS_* of our own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PBS_")}


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.mark.timeout(60, func_only=True)
def test_node_is_idle_in_debug_and_batch(slurm):
    def rows() -> dict[str, tuple[str, str]]:
        out = sh("sinfo", "-h", "-o", "%P %N %T")
        return {part: (node, state) for part, node, state in (line.split() for line in out.splitlines())}

    def settled() -> bool:  # idle, unless jobs of another test run are on the node right now
        states = {state for _, state in rows().values()}
        return states == {"idle"} or (states <= {"mixed", "allocated"} and bool(sh("squeue", "-h").strip()))

    wait_for("the node to be idle", settled, timeout=20)
    assert set(rows()) == {"debug*", "batch"}  # '*': the default partition
    assert {node for node, _ in rows().values()} == {slurm.node}
    debug = sh("scontrol", "show", "partition", "debug")
    assert "Default=YES" in debug and "MaxTime=UNLIMITED" in debug
    assert "Default=NO" in sh("scontrol", "show", "partition", "batch")
    # a controller job and a 2-task engines job must fit at once, on a 2-core machine
    assert int(sh("sinfo", "-h", "-n", slurm.node, "-o", "%c").split()[0]) >= 3


@pytest.mark.timeout(60, func_only=True)
def test_controller_job_and_two_engines_run_at_once(slurm, cancel_after, tmp_path):
    controller = cancel_after(sh("sbatch", "--parsable", "-n", "1", "-J", unique_name(), "-o", "/dev/null",
                                 "--wrap", "sleep 300", cwd=tmp_path).strip())
    wait_for("the controller job to run", lambda: job_state(controller) == "RUNNING")
    # --immediate: fail instead of queueing behind the controller job
    out = sh("srun", "--immediate=20", "-n", "2", "-J", unique_name(), "hostname", cwd=tmp_path)
    assert out.split() == [slurm.node, slurm.node]


@pytest.mark.timeout(60, func_only=True)
def test_sbatch_wait_job_writes_a_file(slurm, tmp_path):
    result = tmp_path / "result.txt"
    script = write_script(tmp_path / "job.sh", f"""#!/bin/bash
#SBATCH --ntasks=1
#SBATCH --time=1
echo "$SLURM_JOB_ID $(hostname -s) $SLURM_JOB_PARTITION" > {result}
""")
    job_id = sbatch_wait(script, tmp_path)
    assert result.read_text().split() == [job_id, slurm.node, "debug"]
    slurm.wait_gone(job_id)


@pytest.mark.timeout(60, func_only=True)
def test_scancel_removes_the_job_and_its_processes(slurm, cancel_after, tmp_path):
    job_id = cancel_after(sh("sbatch", "--parsable", "-J", unique_name(), "-o", "/dev/null",
                             "--wrap", "sleep 300", cwd=tmp_path).strip())
    wait_for("the job to run", lambda: job_state(job_id) == "RUNNING")
    wait_for("the job's processes", lambda: slurm.job_pids(job_id))
    sh("scancel", job_id)
    slurm.wait_gone(job_id, timeout=30)  # squeue forgot it, and no process has its SLURM_JOB_ID


@pytest.mark.timeout(60, func_only=True)
def test_qsub_pbs_script_gets_a_nodefile_and_qdel_removes_it(slurm, cancel_after, tmp_path):
    name = unique_name()
    script = write_script(tmp_path / "job.pbs", f"""#!/bin/bash
#PBS -N {name}
#PBS -q batch
#PBS -l nodes=1:ppn=2
#PBS -l walltime=00:05:00
cd "$PBS_O_WORKDIR"
cp "$PBS_NODEFILE" nodefile.txt
env | grep '^PBS_' > pbs-env.tmp && mv pbs-env.tmp pbs-env.txt
sleep 300
""")
    out = sh("qsub", str(script), cwd=tmp_path, env=env_without_pbs()).strip()
    job_id = cancel_after(out.split(".")[0])  # this qsub prints "123", Torque "123.server"
    wait_for("the job's PBS environment", (tmp_path / "pbs-env.txt").exists)

    assert (tmp_path / "nodefile.txt").read_text().splitlines() == [slurm.node] * 2
    env = read_env(tmp_path / "pbs-env.txt")
    nodefile = Path(env["PBS_NODEFILE"])
    assert nodefile.parent == PBS_SPOOL
    assert env["PBS_JOBID"].split(".")[0] == job_id
    assert (env["PBS_JOBNAME"], env["PBS_QUEUE"], env["PBS_O_WORKDIR"]) == (name, "batch", str(tmp_path))
    assert (env["PBS_NP"], env["PBS_NUM_NODES"], env["PBS_NUM_PPN"]) == ("2", "1", "2")
    assert env["PBS_ENVIRONMENT"] == "PBS_BATCH"

    sh("qdel", job_id)
    slurm.wait_gone(job_id, timeout=30)
    wait_for("the Epilog to remove the nodefile", lambda: not nodefile.exists(), timeout=10)


@pytest.mark.timeout(60, func_only=True)
def test_job_without_pbs_lines_gets_no_pbs_environment(slurm, cancel_after, tmp_path):
    script = write_script(tmp_path / "job.sh", f"""#!/bin/bash
#SBATCH --ntasks=2
# a #PBS that does not start a line does not count
env > {tmp_path}/env.txt
srun env > {tmp_path}/srun-env.txt
""")
    job_id = cancel_after(sh("sbatch", "--parsable", "-J", unique_name(), "-o", str(tmp_path / "%j.out"),
                             str(script), cwd=tmp_path, env=env_without_pbs()).strip())
    slurm.wait_gone(job_id)  # polls faster than sbatch --wait (2 s, then 8 s more)
    for name in ("env.txt", "srun-env.txt"):
        text = (tmp_path / name).read_text()
        assert f"SLURM_JOB_ID={job_id}\n" in text
        assert not [line for line in text.splitlines() if line.startswith("PBS_")], name
    assert not (PBS_SPOOL / f"nodefile.{job_id}").exists()


def test_the_shared_memory_sweep_removes_only_segments_no_process_holds():
    """What a killed MPI engine leaves in /dev/shm goes; a live job's segment stays."""
    tag = uuid.uuid4().hex[:8]
    stale, live = (Path(f"/dev/shm/mpich_shm_mpihubtest{tag}_{i}") for i in range(2))
    stale.write_bytes(b"\0" * 4096)
    live.write_bytes(b"\0" * 4096)
    try:
        with live.open("rb"):
            out = sh("bash", str(Path(__file__).parents[1] / "sweep_mpi_shm.sh"))
            assert not stale.exists()
            assert live.exists()
            assert "swept" in out and "stale MPICH shared-memory segments" in out
    finally:
        stale.unlink(missing_ok=True)
        live.unlink(missing_ok=True)

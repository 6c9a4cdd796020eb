"""Job scripts without a batch system: rendering, directives, user templates, a PBS
directive lint, and the rendered PBS engines script run in a PBS-like environment."""
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

import mpihub
from support import assert_gone
from mpihub.cluster.batch import PBS, Slurm
from mpihub.cluster.jobscript import (JobOptions, TemplateError, check_directive_order, check_template, render,
                                      template_path)

pytestmark = pytest.mark.timeout(120)

PBS_OPTIONS = {"-N", "-l", "-q", "-o", "-e", "-j", "-V", "-v", "-A", "-m", "-M", "-W", "-J", "-t", "-r", "-k", "-S"}


def lint_pbs(script: str) -> list[str]:
    """What a PBS server would object to: directives after the first command, unknown
    options, bad -l resources, walltimes or job names. Returns the problems."""
    problems, seen_command = [], False
    for number, line in enumerate(script.splitlines()[1:], start=2):
        if line.startswith("#PBS"):
            if seen_command:
                problems.append(f"line {number}: #PBS after the first command is ignored")
            option, _, value = line[4:].strip().partition(" ")
            if option not in PBS_OPTIONS:
                problems.append(f"line {number}: unknown option {option}")
            if option == "-l" and not re.fullmatch(
                    r"(select=\d+:ncpus=\d+(:mpiprocs=\d+)?(:mem=\w+)?|nodes=\d+(:ppn=\d+)?|walltime=(\d+:)?(\d+:)?\d+)",
                    value):
                problems.append(f"line {number}: bad resource {value}")
            if option == "-N" and not re.fullmatch(r"[A-Za-z][\w.-]{0,14}", value):
                problems.append(f"line {number}: bad job name {value}")
        elif line.strip() and not line.startswith("#"):
            seen_command = True
    return problems


def cluster(system="slurm", **kwargs):
    kwargs.setdefault("cluster_id", "js1")
    return mpihub.Cluster(n=kwargs.pop("n", 4), engines=system, controller=kwargs.pop("controller", system), **kwargs)


def test_slurm_directives_follow_the_options():
    script = cluster(walltime="01:30:00", queue="debug", account="proj7", nodes=2, job_name="run-a").job_script()
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives[:6] == ["#SBATCH --job-name=run-a", "#SBATCH --ntasks=4", "#SBATCH --nodes=2",
                              "#SBATCH --time=01:30:00", "#SBATCH --partition=debug", "#SBATCH --account=proj7"]
    assert directives[6].startswith("#SBATCH --output=") and directives[6].endswith("run-a-job-%j.out")
    assert 'mpihub-engines" -n 4 --launch srun' in script and "--cluster-id" not in script.split("mpihub-engines")[1]
    assert script.index("mpihub-controller") < script.index("mpihub-engines")  # controller first in the batch step
    separate = cluster(separate_jobs=True, engine_launch="mpiexec")
    assert "#SBATCH --ntasks=1" in separate.job_script("controller")
    assert "--launch mpiexec" in separate.job_script("engines")


def test_extra_and_skipped_directives():
    script = cluster(walltime="00:10:00", account="a1", extra_directives=["--mem=2G", "#SBATCH --exclusive"],
                     skip_directives=["--account", "--output"]).job_script()
    assert "--account" not in script and "--output" not in script
    assert "#SBATCH --mem=2G\n#SBATCH --exclusive\n" in script


def test_pbs_pro_and_torque_resources_pass_the_lint():
    pro = cluster("pbs", n=8, nodes=2, walltime="02:00:00", queue="workq", account="p1").job_script()
    assert "#PBS -l select=2:ncpus=4:mpiprocs=4" in pro and 'cd "${PBS_O_WORKDIR:-.}"' in pro
    torque = cluster("pbs", n=6, nodes=3, walltime="10:00", pbs_flavor="torque", separate_jobs=True)
    assert "#PBS -l nodes=3:ppn=2" in torque.job_script("engines")
    assert "#PBS -l nodes=1:ppn=1" in torque.job_script("controller")
    for script in (pro, torque.job_script("engines"), torque.job_script("controller")):
        assert lint_pbs(script) == [], script
    assert lint_pbs("#!/bin/bash\necho hi\n#PBS -N late\n#PBS -x 1\n#PBS -l nodes=two\n") == [
        "line 3: #PBS after the first command is ignored", "line 4: #PBS after the first command is ignored",
        "line 4: unknown option -x", "line 5: #PBS after the first command is ignored", "line 5: bad resource nodes=two"]
    with pytest.raises(ValueError, match="15 characters"):
        cluster("pbs", job_name="a-very-long-job-name").job_script()


def test_user_templates_are_checked(tmp_path):
    good = tmp_path / "mine.sh"
    good.write_text("#!/bin/bash\n#SBATCH --time={{walltime}}\nmodule load x\n"
                    "MPIHUB_DIR={{profile_dir}} MPIHUB_CLUSTER_ID={{cluster_id}} srun -n {{engines}} run\n")
    script = cluster(templates={"job": str(good)}, walltime="00:05:00").job_script()
    assert "#SBATCH --time=00:05:00" in script and "srun -n 4 run" in script
    for text, why in [("#!/bin/bash\n{{engines}} {{cluster_id}} {{profile_dir}} {{colour}}\n", "unknown placeholders"),
                      ("#!/bin/bash\n{{engines}} {{cluster_id}}\n", "never uses \\['profile_dir'\\]"),
                      ("{{engines}} {{cluster_id}} {{profile_dir}}\n", "#! line")]:
        with pytest.raises(TemplateError, match=why):
            check_template(text, "job")
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\necho {{engines}}\n")
    out = subprocess.run([sys.executable, "-m", "mpihub", "submit", "slurm", "-n", "2", "--template", str(bad),
                          "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "never uses" in out.stderr


def test_values_are_shell_quoted_and_shipped_templates_render_fully():
    assert render("x={{queue}}", {"queue": "a b; rm -rf /"}) == "x='a b; rm -rf /'"
    for system in ("slurm", "pbs"):
        for role in ("job", "controller", "engines"):
            text = template_path(system, role).read_text()
            check_template(text, role, f"{system} {role}")
            assert "{{" not in cluster(system, separate_jobs=role != "job", prologue="module load mpi",
                                       controller="local" if role == "engines" else system).job_script(role)


def test_directive_blocks_for_each_role():
    options = JobOptions(engines=3, walltime="1:00:00")
    assert Slurm().directives(options, "controller").splitlines()[1] == "#SBATCH --ntasks=1"
    assert PBS("torque").directives(options, "engines").splitlines()[1] == "#PBS -l nodes=1:ppn=3"
    with pytest.raises(ValueError, match="flavor"):
        PBS("lsf")


def dry_run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "mpihub", "submit", *args, "--dry-run"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out


def test_a_dry_run_prints_exactly_the_first_script_and_the_rest_on_stderr(profile_dir):
    one = dry_run("slurm", "-n", "2", "--cluster-id", "dry")
    assert one.stdout == cluster(n=2, cluster_id="dry", profile_dir=profile_dir).job_script()
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


def test_a_directive_after_the_first_command_is_refused(tmp_path):
    check_directive_order("#!/bin/bash\n#SBATCH -n 2\n# a comment\n\n#SBATCH -t 5\nsrun x\n# after\n", "#SBATCH")
    with pytest.raises(TemplateError, match="'#SBATCH --time=5' on line 4 comes after the first command"):
        check_directive_order("#!/bin/bash\n#SBATCH -n 2\nmodule load mpi\n#SBATCH --time=5\n", "#SBATCH")
    late = tmp_path / "late.sh"
    late.write_text("#!/bin/bash\nmodule load mpi\n{{directives}}\n"
                    "MPIHUB_DIR={{profile_dir}} MPIHUB_CLUSTER_ID={{cluster_id}} srun -n {{engines}} run\n")
    with pytest.raises(TemplateError, match="#SBATCH --job-name=.* comes after the first command"):
        cluster(templates={"job": str(late)}).job_script()


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

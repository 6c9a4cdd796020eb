"""Job scripts as mpihub renders them, with no batch system and no process: directives
from the options, user templates and their checks, shell quoting, and a PBS directive
lint (submitting them: tests/test_submit.py and tests/slurm/)."""
import re

import pytest

import mpihub
from mpihub.cluster.batch import PBS, Slurm
from mpihub.cluster.jobscript import (JobOptions, TemplateError, check_directive_order, check_template, render,
                                      template_path)

pytestmark = pytest.mark.timeout(30)

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


def test_engines_behind_a_relay_per_node_are_a_slurm_launch():
    assert "--launch relay" in cluster(nodes=2, engine_launch="relay", separate_jobs=True).job_script("engines")
    with pytest.raises(ValueError, match="engine_launch='relay' starts a keeper per node with srun"):
        cluster("pbs", engine_launch="relay")
    with pytest.raises(ValueError, match="'srun', 'mpiexec' or 'relay'"):
        cluster(engine_launch="ssh")


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


def test_a_directive_after_the_first_command_is_refused(tmp_path):
    check_directive_order("#!/bin/bash\n#SBATCH -n 2\n# a comment\n\n#SBATCH -t 5\nsrun x\n# after\n", "#SBATCH")
    with pytest.raises(TemplateError, match="'#SBATCH --time=5' on line 4 comes after the first command"):
        check_directive_order("#!/bin/bash\n#SBATCH -n 2\nmodule load mpi\n#SBATCH --time=5\n", "#SBATCH")
    late = tmp_path / "late.sh"
    late.write_text("#!/bin/bash\nmodule load mpi\n{{directives}}\n"
                    "MPIHUB_DIR={{profile_dir}} MPIHUB_CLUSTER_ID={{cluster_id}} srun -n {{engines}} run\n")
    with pytest.raises(TemplateError, match="#SBATCH --job-name=.* comes after the first command"):
        cluster(templates={"job": str(late)}).job_script()

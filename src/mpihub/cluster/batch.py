"""Batch systems: how to ask Slurm or PBS for a job, follow it, and end it.

Each system makes its directive block from :class:`~.jobscript.JobOptions`, submits a
script and returns the job id, reads a job's state (so a job that was cancelled, failed
or ran out of walltime is reported, not waited on), and cancels. Any launcher (srun,
mpiexec) runs inside any system's job: that choice lives in the templates.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import errors
from .jobscript import JobOptions, select_directives

#: States in which a job will never run (again); the rest mean pending or running.
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"}


BatchError = errors.BatchError


@dataclass
class JobState:
    job_id: str
    state: str  # Slurm's words (PBS states are mapped onto them)
    reason: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def _run(command: list[str], what: str, cwd: Path | None = None) -> str:
    if shutil.which(command[0]) is None:
        raise BatchError(f"{command[0]} not found: {what} needs the batch system's commands on PATH")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise BatchError(f"{' '.join(command)} did not answer within 60 s") from None
    if done.returncode != 0:
        raise BatchError(f"{' '.join(command)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done.stdout


class BatchSystem:
    name = ""
    prefix = ""
    #: How each optional job option is spelled as a directive.
    options: dict[str, str] = {}

    def _directive_block(self, options: JobOptions, lines: list[str]) -> str:
        """``lines``, then a directive for each optional option that is set, prefixed."""
        lines = lines + [spelling.format(getattr(options, name)) for name, spelling in self.options.items()
                         if getattr(options, name)]
        return select_directives([f"{self.prefix} {line}" for line in lines], self.prefix, options)

    def directives(self, options: JobOptions, role: str) -> str:
        """The directive block for a job of ``role`` ("job", "controller", "engines")."""
        raise NotImplementedError

    def submit(self, script: Path) -> str:
        """Submit ``script`` from its own directory; returns the job id."""
        raise NotImplementedError

    def state(self, job_id: str) -> JobState | None:
        """The job's state, or None once the batch system has forgotten it."""
        raise NotImplementedError

    def cancel(self, job_id: str) -> None:
        raise NotImplementedError


class Slurm(BatchSystem):
    name = "slurm"
    prefix = "#SBATCH"
    options = {"walltime": "--time={}", "queue": "--partition={}", "account": "--account={}",
               "output": "--output={}"}

    def directives(self, options: JobOptions, role: str) -> str:
        tasks = 1 if role == "controller" else options.engines
        lines = [f"--job-name={options.job_name}", f"--ntasks={tasks}"]
        if options.nodes and role != "controller":
            lines.append(f"--nodes={options.nodes}")
        return self._directive_block(options, lines)

    def submit(self, script: Path) -> str:
        out = _run(["sbatch", "--parsable", f"--chdir={script.parent}", str(script)], "submitting a job")
        return out.strip().split(";")[0]

    def state(self, job_id: str) -> JobState | None:
        try:
            out = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], "reading a job's state")
        except BatchError:
            out = ""  # squeue refuses ids it no longer lists: scontrol may still know the job
        if out.strip():
            state, _, reason = out.strip().splitlines()[0].partition("|")
            return JobState(job_id, state, "" if reason == "None" else reason)
        try:
            shown = _run(["scontrol", "show", "job", "-o", job_id], "reading a job's state")
        except BatchError:
            return None
        fields = dict(item.split("=", 1) for item in shown.split() if "=" in item)
        if "JobState" not in fields:
            return None
        reason = fields.get("Reason", "None")
        exit_code = fields.get("ExitCode", "0:0")
        detail = "" if reason == "None" else reason
        if exit_code != "0:0":
            detail = f"{detail} exit code {exit_code}".strip()
        return JobState(job_id, fields["JobState"], detail)

    def cancel(self, job_id: str) -> None:
        _run(["scancel", job_id], "cancelling a job")


#: PBS job states, in Slurm's words.
PBS_STATES = {"Q": "PENDING", "W": "PENDING", "H": "PENDING", "T": "PENDING", "S": "SUSPENDED", "R": "RUNNING",
              "B": "RUNNING", "E": "COMPLETING", "C": "COMPLETED", "F": "COMPLETED", "X": "COMPLETED"}


class PBS(BatchSystem):
    """PBS Pro (``-l select=``) or Torque (``-l nodes=:ppn=``) resource syntax."""

    name = "pbs"
    prefix = "#PBS"
    options = {"walltime": "-l walltime={}", "queue": "-q {}", "account": "-A {}", "output": "-o {}"}

    def __init__(self, flavor: str = "pro"):
        if flavor not in ("pro", "torque"):
            raise ValueError(f"PBS flavor is 'pro' or 'torque', not {flavor!r}")
        self.flavor = flavor

    def directives(self, options: JobOptions, role: str) -> str:
        if not re.fullmatch(r"[A-Za-z][\w.-]{0,14}", options.job_name):
            raise ValueError(f"PBS job names start with a letter and have at most 15 characters: "
                             f"{options.job_name!r}")
        nodes, ppn = (1, 1) if role == "controller" else (options.nodes or 1, options.ppn)
        if self.flavor == "pro":
            resources = f"-l select={nodes}:ncpus={ppn}:mpiprocs={ppn}"
        else:
            resources = f"-l nodes={nodes}:ppn={ppn}"
        return self._directive_block(options, [f"-N {options.job_name}", resources, "-j oe"])

    def submit(self, script: Path) -> str:
        out = _run(["qsub", str(script)], "submitting a job", cwd=script.parent)  # some qsubs put logs in cwd
        return out.strip().splitlines()[-1].strip()

    def state(self, job_id: str) -> JobState | None:
        try:
            out = _run(["qstat", "-f", job_id], "reading a job's state")
        except BatchError:
            return None
        found = re.search(r"job_state\s*=\s*(\w)", out)
        if not found:
            return None
        state = PBS_STATES.get(found.group(1), found.group(1))
        status = re.search(r"exit_status\s*=\s*(-?\d+)", out)
        if state == "COMPLETED" and status and status.group(1) != "0":
            return JobState(job_id, "FAILED", f"exit status {status.group(1)}")
        return JobState(job_id, state)

    def cancel(self, job_id: str) -> None:
        _run(["qdel", job_id], "cancelling a job")


def batch_system(name: str, **options) -> BatchSystem:
    if name == "slurm":
        return Slurm()
    if name == "pbs":
        return PBS(**options)
    raise ValueError(f"batch system is 'slurm' or 'pbs', not {name!r}")

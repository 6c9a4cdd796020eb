"""The batch jobs of one cluster: scripts rendered, submitted, followed and cancelled.

A cluster on Slurm or PBS is one job (controller first in the batch step, then every
engine as one MPI step) or two (a controller job and an engines job), or an engines
job beside a controller on the login node. :class:`BatchJobs` renders each job's script
from its template, writes it next to the job's log under ``<profile>/log/``, submits it,
and reports a job that ended (cancelled, failed, out of walltime) as a
:class:`~.batch.BatchError` that names the job, its state and its log.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from .batch import BatchError, BatchSystem, JobState
from .jobscript import (SUFFIX, JobOptions, check_directive_order, check_template, launchers_dir, render,
                        template_path, walltime_seconds)

log = logging.getLogger("mpihub.cluster")


@dataclass
class Job:
    role: str
    job_id: str
    script: Path
    log_path: str

    def log(self) -> str:
        """Its log: where the script asked, or where a qsub that ignores ``-o`` wrote it."""
        if not Path(self.log_path).exists():
            fallback = Path(f"{self.script}.o{self.job_id.split('.')[0]}")
            if fallback.exists():
                return str(fallback)
        return self.log_path


@dataclass
class JobSpec:
    """Everything a cluster's job scripts are made from."""

    system: BatchSystem
    cluster_id: str
    profile_dir: Path
    options: JobOptions
    python: str = sys.executable
    prologue: str = ""
    engine_launch: str = "srun"
    controller_options: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)  # role -> a user's template file


class BatchJobs:
    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.jobs: list[Job] = []

    def _log_path(self, role: str) -> str:
        name = f"{self.spec.options.job_name}-{role}"
        suffix = "-%j.out" if self.spec.system.name == "slurm" else ".out"  # PBS has no job-id pattern
        return str(self.spec.profile_dir / "log" / f"{name}{suffix}")

    def make_log_dir(self) -> Path:
        """The folder of the jobs' logs, made if need be: the batch system writes a job's
        log there before the job runs, and fails the job when it cannot."""
        log_dir = self.spec.profile_dir / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        return log_dir

    def script(self, role: str) -> str:
        """The exact script a job of ``role`` runs."""
        spec = self.spec
        source = spec.templates.get(role)
        path = Path(source) if source else template_path(spec.system.name, role)
        text = path.read_text()
        if source:
            check_template(text, role, f"template {source}")
        options = spec.options
        if options.output is None:
            options = JobOptions(**{**options.__dict__, "output": self._log_path(role)})
        variables = dict(spec.environment)
        if options.walltime:  # when the job ends, counted from when it starts
            variables["MPIHUB_JOB_END"] = f"$(( $(date +%s) + {walltime_seconds(options.walltime)} ))"
        environment = "\n".join(f"export {name}={value}" for name, value in sorted(variables.items()))
        script = render(text, {
            "directives": spec.system.directives(options, role), "engines": options.engines,
            "nodes": options.nodes or 1, "ppn": options.ppn, "walltime": options.walltime, "queue": options.queue,
            "account": options.account, "job_name": options.job_name, "output": options.output,
            "profile_dir": spec.profile_dir, "cluster_id": spec.cluster_id, "python": spec.python,
            "prologue": spec.prologue, "environment": environment, "launchers": launchers_dir(),
            "engine_launch": spec.engine_launch, "controller_options": spec.controller_options,
        })
        check_directive_order(script, spec.system.prefix, f"the {role} script from {path}")
        return script

    def submit(self, role: str) -> Job:
        text = self.script(role)
        script = self.make_log_dir() / f"{self.spec.options.job_name}-{role}.{SUFFIX[self.spec.system.name]}"
        script.write_text(text)
        job_id = self.spec.system.submit(script)
        job = Job(role, job_id, script, self._log_path(role).replace("%j", job_id))
        self.jobs.append(job)
        log.info("submitted %s job %s (%s), log %s", self.spec.system.name, job_id, role, job.log_path)
        return job

    def ended(self) -> list[tuple[Job, JobState | None]]:
        """The jobs of this cluster that have ended, with their last state."""
        found = []
        for job in self.jobs:
            state = self.spec.system.state(job.job_id)
            if state is None or state.ended:
                found.append((job, state))
        return found

    def check(self) -> None:
        """Raise BatchError for a job of this cluster that has ended."""
        for job, state in self.ended()[:1]:
            raise BatchError(describe_end(self.spec.system.name, job, state))

    def states(self) -> dict[str, JobState | None]:
        return {job.job_id: self.spec.system.state(job.job_id) for job in self.jobs}

    def describe_states(self) -> str:
        """``job 12 PENDING (Priority), job 13 RUNNING``: for messages."""
        return ", ".join(f"job {job_id} {state.state if state else 'gone'}"
                         f"{f' ({state.reason})' if state and state.reason else ''}"
                         for job_id, state in self.states().items())

    def describe_logs(self, lines: int = 8) -> str:
        """Each job's log and its last ``lines`` lines: what a timeout's message shows,
        so that why the engines never came is read where the wait failed."""
        parts = []
        for job in self.jobs:
            path = Path(job.log())
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log yet)"]
            parts.append(f"{job.role} job {job.job_id}, log {path}:\n" + "\n".join(f"    {line}" for line in tail))
        return "\n".join(parts)

    def cancel(self, wait: float = 30.0) -> None:
        """Cancel every job still queued or running, and wait until they have ended."""
        for job in self.jobs:
            state = self.spec.system.state(job.job_id)
            if state is not None and not state.ended:
                try:
                    self.spec.system.cancel(job.job_id)
                except BatchError as exc:
                    log.warning("could not cancel job %s: %s", job.job_id, exc)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            states = self.states().values()
            if all(s is None or s.ended for s in states):
                return
            time.sleep(0.25)
        log.warning("jobs %s have not ended %g s after being cancelled", [j.job_id for j in self.jobs], wait)


def describe_end(system: str, job: Job, state: JobState | None) -> str:
    what = "is no longer known to the batch system" if state is None else f"is {state.state}"
    reason = f" ({state.reason})" if state is not None and state.reason else ""
    return f"{system} job {job.job_id} ({job.role}) {what}{reason}; its log: {job.log()}"


class JobWatch(threading.Thread):
    """Follows a connected cluster's jobs, so that a job's end reaches the client.

    When the controller's job ends, every result still waiting fails at once with
    :class:`~mpihub.BatchError` naming the job (nothing else would ever answer). When
    only an engines job ends, the controller (alive elsewhere) fails the engines' tasks
    itself, with ``EngineRetired`` at the walltime or ``EngineError``; what still waits
    after a grace period fails with the BatchError, and the client names the job when
    a later call finds no engines.
    """

    def __init__(self, jobs: BatchJobs, client, interval: float, grace: float = config.HEARTBEAT_TIMEOUT + 2):
        super().__init__(name="mpihub-job-watch", daemon=True)
        self.jobs = jobs
        self.client = client
        self.interval = interval
        self.grace = grace
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                ended = self.jobs.ended()
            except Exception as exc:  # noqa: BLE001 - a failed poll is retried, not fatal
                log.warning("could not read the jobs' state: %s", exc)
                continue
            if not ended:
                continue
            job, state = ended[0]
            why = describe_end(self.jobs.spec.system.name, job, state)
            log.error("%s", why)
            if job.role == "engines" and self._done.wait(self.grace):
                return
            self.client.core.lose(None, why, "BatchError", refuse=job.role != "engines")
            return

    def stop(self) -> None:
        self._done.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=5)

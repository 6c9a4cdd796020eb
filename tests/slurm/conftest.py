"""The real one-node Slurm for the tests in this folder (started by tests/slurm/setup.sh).

Every test here is marked ``slurm`` and gets the session fixture ``slurm`` automatically: it
uses a Slurm that is already up, or runs setup.sh (as root), or skips -- and fails instead of
skipping when ``CI=true``. Nothing here tears Slurm down; ``make test`` runs teardown.sh.

Job helpers (tests cannot import a conftest, so the fixture's ``Slurm`` object carries them):
``slurm.wait_gone(job_id, timeout=30)`` waits until a job has left squeue and none of its
processes is left; ``slurm.job_pids(job_id)`` lists those processes. The ``cancel_after``
fixture scancels the job ids handed to it when the test ends, and waits until they are gone.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

HERE = Path(__file__).resolve().parent
SETUP = HERE / "setup.sh"
SETUP_TIMEOUT = 300
UP_STATES = {"idle", "mixed", "allocated"}
NODE = socket.gethostname().split(".")[0]  # what `hostname -s` prints: the node's name


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.startswith("slurm:") for line in config.getini("markers")):  # pyproject may have it
        config.addinivalue_line("markers", "slurm: needs the real one-node Slurm of tests/slurm/setup.sh")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # the hook sees the whole session: mark only this folder's tests
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slurm)


def run(*cmd: str, timeout: float = 30, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command, text output captured; raise with its output when it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> rc={result.returncode}\n{result.stdout}{result.stderr}")
    return result


def node_states() -> set[str]:
    """The node's state in each partition; empty when Slurm does not answer. (scontrol ping
    first: against a stopped slurmctld it fails at once, sinfo only after ~9 s of retries.)"""
    try:
        if " is UP" not in run("scontrol", "ping", timeout=10, check=False).stdout:
            return set()
        out = run("sinfo", "-h", "-n", NODE, "-o", "%T", timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):  # not installed, or hanging
        return set()
    return set(out.split())


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Slurm unavailable under CI=true (Slurm tests must not be skipped): {reason}")
    pytest.skip(f"Slurm unavailable: {reason}")


def job_pids(job_id: str) -> list[int]:
    """PIDs of the processes whose environment has SLURM_JOB_ID=job_id (what root can read)."""
    needle = f"\0SLURM_JOB_ID={job_id}\0".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as fh:
                    if needle in b"\0" + fh.read():
                        pids.append(int(entry.name))
            except OSError:  # gone meanwhile, or not readable (PID 1 here)
                pass
    return pids


def in_squeue(job_id: str) -> bool:
    """Whether squeue still lists the job (pending, running, completing, ...)."""
    result = run("squeue", "-h", "-j", job_id, "-o", "%i", timeout=10, check=False)
    if result.returncode != 0 and "Invalid job id" in result.stderr:
        return False  # already purged from slurmctld
    if result.returncode != 0:
        raise AssertionError(f"squeue failed: {result.stderr.strip()}")
    return bool(result.stdout.strip())


def wait_gone(job_id: str, timeout: float = 30) -> None:
    """Wait until the job has left squeue and none of its processes is left; fail after timeout."""
    deadline = time.monotonic() + timeout
    while in_squeue(job_id) or job_pids(job_id):
        if time.monotonic() > deadline:
            state = run("squeue", "-h", "-j", job_id, "-o", "%T", timeout=10, check=False).stdout.strip()
            raise AssertionError(f"job {job_id} not gone after {timeout}s: squeue state {state or '-'},"
                                 f" processes {job_pids(job_id)}")
        time.sleep(0.1)


@dataclass(frozen=True)
class Slurm:
    """What the ``slurm`` fixture gives: the one node (every partition uses it), and the job
    helpers, since tests cannot import this conftest."""

    node: str
    started_here: bool  # True when this session ran setup.sh
    job_pids = staticmethod(job_pids)
    in_squeue = staticmethod(in_squeue)
    wait_gone = staticmethod(wait_gone)


@pytest.fixture(scope="session")
def slurm() -> Slurm:
    """A running Slurm: reuse one that is up, else start it with setup.sh (root only)."""
    states = node_states()
    if states and states <= UP_STATES:
        return Slurm(NODE, started_here=False)
    if os.geteuid() != 0:
        _unavailable(f"not running (sinfo: {sorted(states) or 'no answer'}) and not root, so {SETUP} cannot start it")
    try:
        result = run("bash", str(SETUP), timeout=SETUP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        _unavailable(f"{SETUP} did not finish within {SETUP_TIMEOUT}s")
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or lines[-1] != "slurm ready":
        _unavailable(f"{SETUP} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return Slurm(NODE, started_here=True)


@pytest.fixture(autouse=True)
def _needs_slurm(slurm: Slurm) -> None:
    """Every test in this folder needs Slurm."""


@pytest.fixture
def cancel_after() -> Iterator[Callable[[str], str]]:
    """``cancel_after(job_id)`` registers a job; when the test ends, it is scancelled and
    waited for (squeue and processes). Returns the job id, for chaining."""
    jobs: list[str] = []

    def register(job_id: str) -> str:
        jobs.append(job_id)
        return job_id

    yield register
    if jobs:
        run("scancel", *jobs, check=False)
        for job_id in jobs:
            wait_gone(job_id)

"""The multi-node Slurm on one machine (tests/multinode/setup.sh): a login node and three
compute nodes as network namespaces, a management network and a fabric.

Every test here is marked ``multinode`` and gets the session fixture ``multinode``: it
uses a cluster that is up, or runs setup.sh (as root), or skips -- and fails instead of
skipping when ``CI=true``. Nothing here tears it down; ``make test`` runs teardown.sh.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SETUP = HERE / "setup.sh"
CONF = "/etc/mpihub-multinode/slurm.conf"
NODES = ("mh-node1", "mh-node2", "mh-node3")
#: Where profile directories go: a directory every node sees (not /tmp, which each node
#: has of its own).
SHARED = Path("/var/tmp")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "multinode: needs the multi-node Slurm of tests/multinode/setup.sh")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.multinode)


def run(cmd: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> rc={result.returncode}\n{result.stdout}{result.stderr}")
    return result


@dataclass(frozen=True)
class MultiNode:
    """What the ``multinode`` fixture gives: the nodes, and commands run on them."""

    nodes: tuple[str, ...] = NODES
    login: str = "mh-login"

    @staticmethod
    def on_login(*cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on the login node (SLURM_CONF set to this cluster)."""
        return run([str(HERE / "on-login.sh"), *cmd], timeout, check)

    @staticmethod
    def on_node(node: str, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on compute node ``node``, in its namespaces."""
        return run([str(HERE / "on-node.sh"), node, *cmd], timeout, check)


def _up() -> bool:
    try:
        ping = run([str(HERE / "on-login.sh"), "scontrol", "ping"], timeout=15, check=False)
        nodes = run([str(HERE / "on-login.sh"), "sinfo", "-h", "-N", "-o", "%T"], timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return " is UP" in ping.stdout and sorted(nodes.stdout.split()) == ["idle"] * len(NODES)


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"the multi-node Slurm is unavailable under CI=true (these tests must not be skipped): {reason}")
    pytest.skip(f"the multi-node Slurm is unavailable: {reason}")


@pytest.fixture(scope="session")
def multinode() -> MultiNode:
    """A running multi-node Slurm: reuse one that is up, else start it (root only)."""
    if Path(CONF).exists() and _up():
        return MultiNode()
    if os.geteuid() != 0:
        _unavailable(f"not running, and not root, so {SETUP} cannot start it")
    try:
        result = run(["bash", str(SETUP)], timeout=300, check=False)
    except subprocess.TimeoutExpired:
        _unavailable(f"{SETUP} did not finish within 300 s")
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or lines[-1] != "multinode ready":
        _unavailable(f"{SETUP} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return MultiNode()


@pytest.fixture(autouse=True)
def _needs_multinode(multinode: MultiNode) -> None:
    """Every test in this folder needs the cluster."""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh directory on the file system every node shares, removed afterwards."""
    path = SHARED / f"mpihub-multinode-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)

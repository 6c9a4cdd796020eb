"""Shared fixtures: a private profile dir, fast heartbeats, real clusters that always
tear down, and a check that every process a test started is gone afterwards."""
from __future__ import annotations

import os

import pytest

# Fast failure detection for the whole test session; set before mpihub is imported so
# both this process and every controller and engine it starts see them.
os.environ.setdefault("MPIHUB_HEARTBEAT_PERIOD", "0.25")
os.environ.setdefault("MPIHUB_HEARTBEAT_TIMEOUT", "3")

from support import RunningCluster, module_kwargs, run_cluster  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def profile_dir(tmp_path_factory):
    """Every test runs against a private profile directory."""
    path = tmp_path_factory.mktemp("profile")
    os.environ["MPIHUB_DIR"] = str(path)
    return path


@pytest.fixture(scope="module")
def cluster(request):
    """A controller and 2 engines shared by one test module, always torn down."""
    yield from run_cluster(2, **module_kwargs(request))


@pytest.fixture
def rc(cluster):
    """The module cluster's client, with both engines present and idle."""
    client = cluster.client
    client.wait_for_engines(2, timeout=10, interactive=False)
    client.wait(timeout=30)
    return client


@pytest.fixture
def fresh_cluster(request):
    """A cluster of its own, for tests that kill or stop parts of it."""
    started: list[RunningCluster] = []

    def start(n: int = 2, **kwargs) -> RunningCluster:
        running = RunningCluster(n, **module_kwargs(request, **kwargs))
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            running.stop()

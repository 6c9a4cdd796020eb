"""Shared fixtures: a private profile dir, fast heartbeats, real clusters that always
tear down, and a check that every process a test started is gone afterwards.

End-to-end tests run on the one-process controller (test ids ``[one]``); those marked
``@pytest.mark.layouts("one", "split")`` (a test, or a module's ``pytestmark``) run once
on each controller layout named, as ``[one]`` and ``[split]``: the ``layout`` fixture,
which the cluster fixtures read, is parametrized with them. Unit tests (tests/unit/)
start no cluster.
"""
from __future__ import annotations

import os

import pytest

# Fast failure detection for the whole test session; set before mpihub is imported so
# both this process and every controller and engine it starts see them.
os.environ.setdefault("MPIHUB_HEARTBEAT_PERIOD", "0.25")
os.environ.setdefault("MPIHUB_HEARTBEAT_TIMEOUT", "3")

from support import LAYOUTS, RunningCluster, run_cluster  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "layouts(*names): run this end-to-end test on each controller layout "
                                       f"named ({', '.join(LAYOUTS)}); unmarked tests run on 'one'")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "layout" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("layouts")
    names = marker.args if marker is not None else ("one",)
    unknown = set(names) - LAYOUTS.keys()
    if unknown:
        raise ValueError(f"{metafunc.definition.nodeid}: unknown layouts {sorted(unknown)}")
    metafunc.parametrize("layout", names, indirect=True, scope="module")


@pytest.fixture(scope="module")
def layout(request) -> str:
    """The controller layout this test's clusters run (see the module docstring)."""
    return request.param


@pytest.fixture(scope="session", autouse=True)
def profile_dir(tmp_path_factory):
    """Every test runs against a private profile directory."""
    path = tmp_path_factory.mktemp("profile")
    os.environ["MPIHUB_DIR"] = str(path)
    return path


@pytest.fixture(scope="module")
def cluster(layout):
    """A controller and 2 engines shared by one test module, always torn down."""
    yield from run_cluster(2, layout)


@pytest.fixture
def rc(cluster):
    """The module cluster's client, with both engines present and idle."""
    client = cluster.client
    client.wait_for_engines(2, timeout=10, interactive=False)
    client.wait(timeout=30)
    return client


@pytest.fixture
def fresh_cluster(layout):
    """A cluster of its own, for tests that kill or stop parts of it."""
    started: list[RunningCluster] = []

    def start(n: int = 2, **kwargs) -> RunningCluster:
        running = RunningCluster(n, layout, **kwargs)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            running.stop()

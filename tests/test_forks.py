"""Engines forked by one keeper (``mpihub engine --fork N``): each is an engine of its
own, the keeper passes signals on, and no engine outlives it."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mpihub
from support import assert_gone

pytestmark = pytest.mark.timeout(90)


@mpihub.interactive
def draw():
    import os

    import numpy
    return os.getpid(), os.getppid(), float(numpy.random.random())


def test_forked_engines_are_engines_of_their_own():
    cluster = mpihub.Cluster(n=3)
    with cluster as rc:
        keeper = cluster.launcher.processes[1]
        pids, parents, draws = zip(*rc[:].apply_sync(draw))
        assert len(set(pids)) == 3 and set(parents) == {keeper.pid}
        assert len(set(draws)) == 3  # numpy reseeded in each, not one stream copied three times
        logs = sorted(p.name for p in cluster.launcher.log_dir.glob("engine-*-*.log"))
        assert len(logs) >= 3 and all(f"{pid}.log" in " ".join(logs) for pid in pids)
        all_pids = cluster.launcher.pids
    assert keeper.returncode == 0
    assert_gone(all_pids)


def test_killing_the_keeper_takes_its_engines_with_it():
    cluster = mpihub.Cluster(n=2)
    with cluster as rc:
        keeper = cluster.launcher.processes[1]
        engine_pids = [e.pid for e in rc.engines.values()]
        os.kill(keeper.pid, signal.SIGKILL)
        assert_gone(engine_pids, timeout=10)  # PR_SET_PDEATHSIG
        all_pids = cluster.launcher.pids
    assert_gone(all_pids)


@pytest.mark.parametrize("flag", [["--many", "4"], ["--mpi"], ["--id", "3"]])
def test_fork_refuses_options_that_do_not_go_with_it(flag):
    done = subprocess.run([sys.executable, "-m", "mpihub", "engine", "--fork", "2", *flag],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--fork starts engines of their own" in done.stderr
    assert flag[0] in done.stderr


def test_fork_needs_at_least_one_engine():
    done = subprocess.run([sys.executable, "-m", "mpihub", "engine", "--fork", "0"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "at least one engine" in done.stderr


def test_forked_engines_behind_their_keepers_relay():
    """``relay=True``: the keeper carries its engines' task traffic on one connection
    (they reach the controller only through it); large data still takes each engine's
    own data link; an engine that dies is still found by its heartbeat; the relay's
    private directory goes when the keeper exits."""
    cluster = mpihub.Cluster(n=4, relay=True)
    with cluster as rc:
        keeper = cluster.launcher.processes[1]
        relay_dir = re.search(r"relay for the engines at ipc://(\S+)/relay", keeper.log_path.read_text()).group(1)
        assert os.stat(relay_dir).st_mode & 0o777 == 0o700
        pids, parents, _ = zip(*rc[:].apply_sync(draw))
        assert set(parents) == {keeper.pid}
        big = np.arange(1 << 20, dtype=np.float64)  # 8 MiB: the data links
        rc[:].scatter("part", big, block=True)
        assert np.array_equal(rc[:].gather("part", block=True), big)
        rc[:].push({"small": "x" * 100}, block=True)
        assert rc[:].pull("small", block=True) == ["x" * 100] * 4
        assert rc.load_balanced_view().map_sync(lambda x: x + 1, range(100)) == list(range(1, 101))

        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len(rc.ids) == 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(rc.ids) == 3, "the dead engine behind the relay was not found"
        assert sorted(rc[:].apply_sync(os.getpid)) == sorted(pids[1:])
        all_pids = cluster.launcher.pids
    assert_gone(all_pids)
    assert not os.path.exists(relay_dir)


def test_relay_goes_with_fork_or_many():
    done = subprocess.run([sys.executable, "-m", "mpihub", "engine", "--relay"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "--relay goes with --fork or --many" in done.stderr
    with pytest.raises(ValueError, match="relay=True is for local engines forked"):
        mpihub.Cluster(n=2, relay=True, fork_engines=False)

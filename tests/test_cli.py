"""The command line: ``mpihub --version`` and ``mpihub status`` as a table."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mpihub

pytestmark = pytest.mark.timeout(60)


def mpihub_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpihub", *args], capture_output=True, text=True, timeout=30,
                          env=os.environ)


def test_version():
    done = mpihub_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"mpihub {mpihub.__version__}"


def test_status_is_a_table_of_engines(rc, cluster):
    rc.load_balanced_view().map_sync(lambda x: x, range(6))
    done = mpihub_cli("status", "--cluster-id", cluster.cluster.cluster_id, "--timeout", "10")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"cluster {cluster.cluster.cluster_id}: 2 engines, 0 load-balanced tasks waiting for one"
    assert lines[1].split() == ["ENGINE", "HOST", "PID", "MPI", "RANK", "STATE", "QUEUED", "RUNNING", "DONE"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["0", "1"]
    assert {int(row[2]) for row in rows} == {e.pid for e in rc.engines.values()}
    assert sum(int(row[-1]) for row in rows) >= 6 and all(row[3:5] == ["-", "running"] for row in rows)
    assert done.stderr == ""  # not a terminal: no progress bar, no noise


def test_status_without_a_cluster_says_so(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mpihub", "status", "--cluster-id", "nowhere", "--timeout", "0"],
                          capture_output=True, text=True, timeout=30, env={**os.environ, "MPIHUB_DIR": str(tmp_path)})
    assert done.returncode == 1 and "mpihub status:" in done.stderr and "nowhere" in done.stderr


def test_waiting_for_engines_shows_progress_in_a_terminal_only(capsys, monkeypatch):
    with mpihub.Cluster(n=1) as rc:
        assert rc.ids == [0]
    assert "waiting for engines" not in capsys.readouterr().err  # not a terminal: quiet
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with mpihub.Cluster(n=1) as rc:
        assert rc.ids == [0]
    assert "waiting for engines" in capsys.readouterr().err

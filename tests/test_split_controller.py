"""The split controller: the Hub, the direct path and the task scheduler as processes.

The end-to-end suites that must hold on both layouts say so themselves
(``@pytest.mark.layouts("one", "split")``, see conftest.py); here is what only a split
controller has: its processes, a task scheduler started on its own ("another host"), a
lost scheduler, and paths that end with their Hub.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import mpihub
from support import assert_gone, children_of
from mpihub.protocol import connection

pytestmark = [pytest.mark.timeout(120), pytest.mark.layouts("split")]


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def path_pids(cluster) -> dict[str, int]:
    hub_file = connection.connection_file("hub", cluster.cluster.cluster_id, cluster.cluster.profile_dir)
    assert hub_file.exists() and oct(hub_file.stat().st_mode & 0o777) == "0o600"
    children = children_of(cluster.cluster._controller_process.pid)
    assert len(children) == 2
    by_path = {}
    for pid in children:
        cmdline = open(f"/proc/{pid}/cmdline").read().split("\0")
        by_path[cmdline[cmdline.index("--path") + 1]] = pid
    return by_path


def test_three_processes_and_requests_bypass_the_hub(rc, cluster):
    """Clients talk to each path directly: a burst of tasks costs the Hub (almost) nothing."""
    pids = path_pids(cluster)
    assert set(pids) == {"direct", "task"}
    assert len({front.url for front in rc.core.fronts.values()}) == 3
    hub = cluster.cluster._controller_process.pid
    before = {name: cpu_seconds(pid) for name, pid in {"hub": hub, **pids}.items()}
    lbview = rc.load_balanced_view()
    assert lbview.map_sync(lambda x: x, range(3000)) == list(range(3000))
    assert rc[:].apply_sync(lambda: 1) == [1, 1]
    used = {name: cpu_seconds(pid) - before[name] for name, pid in {"hub": hub, **pids}.items()}
    assert used["hub"] < 0.1 * used["task"], used
    status = rc.queue_status()
    assert status["unassigned"] == 0 and sum(status[e]["completed"] for e in rc.ids) >= 3002


def test_status_command_on_a_split_controller(rc, cluster):
    out = subprocess.run([sys.executable, "-m", "mpihub", "status", "--cluster-id", cluster.cluster.cluster_id,
                          "--profile-dir", str(cluster.cluster.profile_dir)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "2 engines" in out.stdout, out.stderr


def test_a_lost_task_scheduler_fails_its_tasks_and_the_rest_goes_on(fresh_cluster):
    running = fresh_cluster(2)
    rc = running.client
    task_path = path_pids(running)["task"]
    blocked: dict = {}

    def blocking_call():
        try:
            rc.load_balanced_view().apply_sync(time.sleep, 3)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            blocked["error"] = exc

    waiter = threading.Thread(target=blocking_call)
    waiter.start()
    slow = rc.load_balanced_view().apply_async(time.sleep, 3)
    time.sleep(0.3)
    os.kill(task_path, signal.SIGKILL)
    with pytest.raises(mpihub.ControllerError, match="task path is gone"):
        slow.get(timeout=15)
    waiter.join(10)
    assert isinstance(blocked.get("error"), mpihub.ControllerError)
    with pytest.raises(mpihub.ControllerError, match="task path is gone"):
        rc.load_balanced_view().apply_async(lambda: 1)
    assert rc[:].apply_sync(lambda: "direct still works") == ["direct still works"] * 2
    assert set(rc.queue_status()) == {0, 1, "unassigned"}


def test_paths_end_with_a_killed_hub(fresh_cluster):
    running = fresh_cluster(2)
    pids = list(path_pids(running).values())
    os.kill(running.cluster._controller_process.pid, signal.SIGKILL)
    assert_gone(pids, timeout=5)
    running.client.close()  # nothing left to ask for a shutdown: the engines get SIGTERM
    for engine in running.client.engines.values():
        os.kill(engine.pid, signal.SIGTERM)


def mpihub_cmd(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mpihub", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_a_scheduler_started_on_its_own_joins_over_tcp(profile_dir):
    """``--remote-scheduler``: the Hub waits for ``mpihub scheduler`` (on another host in
    real life), then writes the client and engine files; a second scheduler is refused."""
    cid = "remote-sched"
    where = ["--cluster-id", cid, "--profile-dir", str(profile_dir)]
    hub_file = connection.connection_file("hub", cid, profile_dir)
    client_file = connection.connection_file("client", cid, profile_dir)
    processes = [mpihub_cmd("controller", "--split", "--remote-scheduler", *where)]
    try:
        deadline = time.monotonic() + 30
        while not hub_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        assert hub_file.exists() and not client_file.exists()  # not ready without its scheduler
        processes.append(mpihub_cmd("scheduler", "--url-file", str(hub_file), "--scheduler", "lru", "--hwm", "1",
                                    start_new_session=True))
        rc = mpihub.Client(client_file, timeout=30)
        processes += [mpihub_cmd("engine", "--url-file", str(connection.connection_file("engine", cid, profile_dir)))
                      for _ in range(2)]
        rc.wait_for_engines(2, timeout=30, interactive=False)
        assert json.loads(hub_file.read_text())["paths"]["task"]["client"][0].startswith("tcp://127.0.0.1:")
        ar = rc.load_balanced_view().map_async(lambda x: x + 1, range(100))
        assert ar.get(timeout=30) == list(range(1, 101))
        second = subprocess.run([sys.executable, "-m", "mpihub", "scheduler", "--url-file", str(hub_file)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "refused" in second.stderr and "joined already" in second.stderr
        rc.shutdown(hub=True)
        rc.close()
        for process in processes:
            process.wait(15)
        assert not hub_file.exists() and not client_file.exists()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(5)


def test_scheduler_command_errors():
    out = subprocess.run([sys.executable, "-m", "mpihub", "scheduler", "--url-file", "/nonexistent/hub.json",
                          "--timeout", "0.2"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "no connection file" in out.stderr
    out = subprocess.run([sys.executable, "-m", "mpihub", "controller", "--remote-scheduler"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "needs --split" in out.stderr

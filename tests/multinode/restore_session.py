"""The controller's node lost, and the controller restored on another node, as seen from
the login node. The controller job (``--db sqlite`` in the shared profile) runs on one
node and the engines on the two others. The controller's node is unplugged
(tests/multinode/link.sh). A new controller with ``--restore`` then starts as a step of the
engines' job, on one of the engines' nodes, and rewrites the connection files. The engines
follow it there, and a new Client finds them under their ids, with the results computed
before. Prints one JSON object of what it saw, and when.

    tests/multinode/on-login.sh .venv/bin/python tests/multinode/restore_session.py PROFILE_DIR
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mpihub
from mpihub.protocol import connection

LINK = Path(__file__).with_name("link.sh")


def link(node: str, state: str) -> None:
    subprocess.run([str(LINK), node, state], check=True, timeout=30)


def client_file_of(path: Path, host: str, timeout: float) -> dict:
    """The client connection file once the controller on ``host`` has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = json.loads(path.read_text())
            if info.get("location") == host:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"no connection file from a controller on {host} at {path} within {timeout} s")


def main(profile_dir: str) -> dict:
    cluster = mpihub.Cluster(n=4, nodes=2, engines="slurm", controller="slurm", separate_jobs=True,
                             engine_launch="srun", profile_dir=profile_dir, walltime="00:10:00",
                             start_timeout=120, poll_interval=0.2, extra_directives=["--exclusive"])
    rc = cluster.start_and_connect_sync()
    out: dict = {}
    lost = restored = None
    try:
        ids = list(rc.ids)
        pids = dict(zip(ids, rc[ids].apply_sync(os.getpid)))
        hosts = dict(zip(ids, rc[ids].apply_sync(socket.gethostname)))
        lost = json.loads(cluster.client_file.read_text())["location"]
        new_home = hosts[min(ids)]
        out.update(lost_node=lost, restored_on=new_home, engine_hosts=sorted(set(hosts.values())))
        before = rc[:].apply_async(lambda: __import__("socket").gethostname())
        out["before"] = before.get(30)
        rc.close()
        link(lost, "down")
        lost_at = time.monotonic()
        engines_job = cluster.batch.jobs[-1].job_id
        restored = subprocess.Popen(
            ["srun", f"--jobid={engines_job}", "--overlap", "-N1", "-n1", f"--nodelist={new_home}",
             sys.executable, "-m", "mpihub", "controller", "--restore", "--db", "sqlite", "--ip", "0.0.0.0",
             "--cluster-id", cluster.cluster_id, "--profile-dir", profile_dir],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        info = client_file_of(cluster.client_file, new_home, 60)
        out["restored_file_s"] = time.monotonic() - lost_at
        out["client_candidates"] = info["candidates"]["client"]
        with mpihub.Client(info, timeout=30) as again:
            again.wait_for_engines(len(ids), timeout=60, interactive=False)
            out["same_pids"] = dict(zip(ids, again[ids].apply_sync(os.getpid))) == pids
            out["engines_back_s"] = time.monotonic() - lost_at
            out["same_ids"] = sorted(again.ids) == sorted(ids)
            out["before_kept"] = again.get_result(before.msg_ids).get(30) == out["before"]
            out["lb_after"] = again.load_balanced_view().map_sync(lambda x: x * x, range(8))
            engine_info = json.loads(connection.connection_file("engine", cluster.cluster_id, profile_dir).read_text())
            out["engines_dial"] = engine_info["engine"]
            again.shutdown(hub=True, block=True)
        out["restored_exit"] = restored.wait(30)
    finally:
        if restored is not None and restored.poll() is None:
            restored.terminate()
        if restored is not None:
            out["restored_log"] = restored.communicate(timeout=30)[0][-3000:]
        if lost is not None:
            link(lost, "up")
        cluster.stop_cluster_sync()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)

"""A compute node lost and found again, as seen from the login node: engines on two nodes,
work running on both, then one node's links go down (tests/multinode/link.sh) for
``CUT_S`` seconds and come back. Prints one JSON object of what the client saw, and when.

    tests/multinode/on-login.sh .venv/bin/python tests/multinode/node_loss_session.py \\
        PROFILE_DIR {srun|mpiexec}
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

LINK = Path(__file__).with_name("link.sh")
#: How long the node stays unplugged: past the controller's heartbeat timeout (its
#: engines are declared dead), short of the engines' own controller timeout (they wait).
CUT_S = 12.0
NAP_S = 0.4


def link(node: str, state: str) -> None:
    subprocess.run([str(LINK), node, state], check=True, timeout=30)


@mpihub.interactive
def nap(i: int, seconds: float) -> tuple[int, str, float]:
    """A load-balanced task: which host ran it, and when it started (one clock: one machine)."""
    import socket
    import time

    started = time.time()
    time.sleep(seconds)
    return i, socket.gethostname(), started


def watch_ids(rc: mpihub.Client, kept: set[int], cut: set[int], until: float) -> tuple[float | None, list[int]]:
    """Until ``until`` (monotonic): when the ``cut`` engines were all gone from ``rc.ids``
    (seconds from now), and any of the ``kept`` that went missing on the way."""
    start = time.monotonic()
    gone_after = None
    missing: set[int] = set()
    while time.monotonic() < until:
        ids = set(rc.ids)
        missing |= kept - ids
        if gone_after is None and not cut & ids:
            gone_after = time.monotonic() - start
        time.sleep(0.05)
    return gone_after, sorted(missing)


def main(profile_dir: str, launch: str) -> dict:
    cluster = mpihub.Cluster(n=4, nodes=2, engines="slurm", controller="slurm", separate_jobs=True,
                             engine_launch=launch, profile_dir=profile_dir, walltime="00:10:00",
                             start_timeout=120, poll_interval=0.2, extra_directives=["--exclusive"])
    rc = cluster.start_and_connect_sync()
    out: dict = {}
    cut_node = None
    try:
        ids = list(rc.ids)
        hosts = dict(zip(ids, rc[ids].apply_sync(socket.gethostname)))
        pids = dict(zip(ids, rc[ids].apply_sync(os.getpid)))
        ranks = {i: rc.engines[i].mpi_rank for i in ids}
        # the node of the last rank: not the one that runs the engines job's script
        cut_node = hosts[max(ids, key=ranks.get)]
        cut = {i for i in ids if hosts[i] == cut_node}
        kept = set(ids) - cut
        out.update(cut_node=cut_node, cut_ids=sorted(cut), kept_ids=sorted(kept), hosts=hosts)
        lb = rc.load_balanced_view()
        lb.set_flags(retries=2)
        tasks = [lb.apply_async(nap, i, NAP_S) for i in range(24)]
        direct = rc[min(cut)].apply_async(time.sleep, 10)  # still running when its node is lost
        time.sleep(0.5)
        link(cut_node, "down")
        cut_at = time.time()
        mend_at = time.monotonic() + CUT_S
        out["declared_dead_s"], out["false_deaths"] = watch_ids(rc, kept, cut, mend_at)
        try:
            direct.get(5)
            out["direct_error"] = None
        except mpihub.EngineError as exc:
            out["direct_error"] = f"{type(exc).__name__}: {exc}"
        link(cut_node, "up")
        mended = time.monotonic()
        rc.wait_for_engines(len(ids), timeout=45, interactive=False)
        out["rejoined_s"] = time.monotonic() - mended
        results = [t.get(60) for t in tasks]
        out["lb_in_order"] = [i for i, _, _ in results] == list(range(len(tasks)))
        out["lb_hosts_after_cut"] = sorted({host for _, host, started in results if started > cut_at + 1})
        out["lb_failed"] = sum(1 for t in tasks if not t.successful())
        out["same_ids"] = sorted(rc.ids) == sorted(ids)
        out["same_pids"] = dict(zip(ids, rc[ids].apply_sync(os.getpid))) == pids
        out["lb_after"] = lb.map_sync(lambda x: 2 * x, range(8))
    finally:
        if cut_node is not None:
            link(cut_node, "up")
        cluster.stop_cluster_sync()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)

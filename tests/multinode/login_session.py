"""What a scientist on the login node does, run there by the tests (and by hand, to
measure): submit a controller job and an engines job to the multi-node Slurm, connect,
compute across the nodes, stop. Prints one JSON object of what it saw and how long
each step took.

    tests/multinode/on-login.sh .venv/bin/python tests/multinode/login_session.py \\
        PROFILE_DIR {srun|mpiexec|relay} MEGABYTES [INTERFACE]

With INTERFACE (a compute node's interface name), the controller binds that interface
alone (``--interface``) instead of every one. With ``relay`` the engines are no MPI
ranks: a keeper on each node forks them and relays their task traffic, so the session
moves data by ZeroMQ only and reports each engine's parent (its keeper) instead.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

import numpy as np

import mpihub


def scatter_gather(rc: mpihub.Client, x: np.ndarray, via: str) -> tuple[bool, float]:
    """Scatter ``x`` to all engines and gather it back ``via`` mpi or zmq: whether it
    came back bit-identical, and the seconds it took."""
    dv = rc[:]
    started = time.perf_counter()
    dv.scatter("x", x, via=via, block=True)
    back = dv.gather("x", via=via, block=True)
    took = time.perf_counter() - started
    dv.execute("del x", block=True)
    return bool(np.array_equal(back, x)) and back.dtype == x.dtype, took


def main(profile_dir: str, launch: str, megabytes: float, interface: str | None = None) -> dict:
    cluster = mpihub.Cluster(n=4, nodes=2, engines="slurm", controller="slurm", separate_jobs=True,
                             engine_launch=launch, profile_dir=profile_dir, walltime="00:10:00",
                             start_timeout=120, poll_interval=0.2, extra_directives=["--exclusive"],
                             controller_args=["--interface", interface] if interface else None)
    started = time.perf_counter()
    rc = cluster.start_and_connect_sync()
    out: dict = {"ready_s": time.perf_counter() - started, "login": socket.gethostname()}
    try:
        info = json.loads(cluster.client_file.read_text())
        out["client_candidates"] = info["candidates"]["client"]
        out["client_connected_to"] = rc.core.fronts["hub"].url
        out["controller_host"] = info["location"]
        out["engine_hosts"] = sorted(rc[:].apply_sync(socket.gethostname))
        out["mpi_ranks"] = sorted(e.mpi_rank for e in rc.engines.values() if e.mpi_rank is not None)
        x = np.random.default_rng(7).standard_normal(int(megabytes * 2 ** 20 / 8))
        for via in ("zmq",) if launch == "relay" else ("mpi", "zmq"):
            out[f"identical_{via}"], out[f"scatter_gather_{via}_s"] = scatter_gather(rc, x, via)
        dv = rc[:]
        if launch == "relay":
            out["keepers"] = rc[:].apply_sync(lambda: (socket.gethostname(), os.getppid()))
            dv.push({"small": "x" * 100}, block=True)
            out["pulled"] = dv.pull("small", block=True)
            out["lb"] = rc.load_balanced_view().map_sync(lambda k: k * k, range(50))
            out["job_ids"] = [job.job_id for job in cluster.batch.jobs]
            return out
        dv.bcast("y", x, via="mpi", block=True)
        out["bcast_identical"] = all(bool(np.array_equal(y, x)) for y in dv.pull("y", block=True))
        dv.execute("del y", block=True)
        dv.push({"ones": np.ones(3)}, block=True)
        dv.allreduce("ones", op="sum", dest="total", via="mpi", block=True)
        out["allreduce"] = [a.tolist() for a in dv.pull("total", block=True)]
        out["job_ids"] = [job.job_id for job in cluster.batch.jobs]
    finally:
        cluster.stop_cluster_sync()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), *sys.argv[4:5])), flush=True)

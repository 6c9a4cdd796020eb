"""Defaults for timeouts, thresholds and paths, each overridable from the environment.

Values are read when this module is imported; tests and launchers set the
``MPIHUB_*`` variables before starting a process to change them there.
"""
from __future__ import annotations

import os
from pathlib import Path


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


#: Seconds between engine heartbeats, at least (more with many engines: see ``HEARTBEAT_RATE``).
HEARTBEAT_PERIOD = _float("MPIHUB_HEARTBEAT_PERIOD", 1.0)
#: Seconds of silence after which the controller declares an engine dead, at least.
HEARTBEAT_TIMEOUT = _float("MPIHUB_HEARTBEAT_TIMEOUT", 5.0)
#: Heartbeats a second the controller takes from all its engines together, at most: the
#: period grows with the number of engines to keep to it (as dask's does).
HEARTBEAT_RATE = _float("MPIHUB_HEARTBEAT_RATE", 200.0)
#: Heartbeat periods an engine may miss before it is declared dead (a busy node, a task
#: that holds the GIL in C code for a while, a stalled file system).
HEARTBEAT_MISSES = _float("MPIHUB_HEARTBEAT_MISSES", 3.0)
#: Seconds without an answer from the controller after which an engine exits.
ENGINE_CONTROLLER_TIMEOUT = _float("MPIHUB_ENGINE_CONTROLLER_TIMEOUT", 30.0)
#: Bytes of request and result payload the Hub's result store keeps alive.
STORE_BYTES = _int("MPIHUB_STORE_BYTES", 1 << 30)
#: Finished task records the Hub keeps for queries (the oldest are forgotten first). A
#: record of a tiny task costs the controller about 2 KB, payloads included.
MAX_RECORDS = _int("MPIHUB_MAX_RECORDS", 100_000)
#: Bytes of payloads the durable task store (``--db sqlite``) keeps on disk.
DB_BYTES = _int("MPIHUB_DB_BYTES", 8 << 30)
#: Larger payloads keep their record in the durable store, not their bytes.
DB_PAYLOAD_BYTES = _int("MPIHUB_DB_PAYLOAD_BYTES", 256 << 20)
#: Bytes of its last replies an engine keeps, to send again those lost in a controller
#: restart or a network cut (one of more than a 64th of this, or with zero-copy
#: buffers, is not kept: lost, it is retried or fails).
REPLAY_BYTES = _int("MPIHUB_ENGINE_REPLAY_BYTES", 64 << 20)
#: Seconds before its batch job's end (walltime) at which an engine stops taking
#: load-balanced tasks, so that work does not start where it cannot finish.
RETIRE_MARGIN = _float("MPIHUB_RETIRE_MARGIN", 60.0)
#: Load-balanced tasks in flight per engine (1 keeps uneven tasks balanced).
SCHEDULER_HWM = _int("MPIHUB_SCHEDULER_HWM", 2)
#: Seconds an MPI engine may take to initialise MPI and meet its world. Past them it
#: exits, so that a rank that failed to start (or an MPI bug at MPI_Init) ends the job
#: step instead of holding its batch job until the walltime.
MPI_INIT_TIMEOUT = _float("MPIHUB_MPI_INIT_TIMEOUT", 300.0)
#: Numpy arrays of at least this many bytes use MPI collectives with via="auto".
MPI_THRESHOLD = _int("MPIHUB_MPI_THRESHOLD", 1 << 20)
#: Largest message of mpihub's pipelined MPI reductions (chunks overlap along the ranks).
MPI_CHUNK_BYTES = _int("MPIHUB_MPI_CHUNK_BYTES", 4 << 20)
#: Bytes of MPI receive buffers an engine keeps for reuse by later collectives.
MPI_POOL_BYTES = _int("MPIHUB_MPI_POOL_BYTES", 1 << 30)
#: Buffers of at least this many bytes travel as separate zero-copy frames.
ZERO_COPY_THRESHOLD = _int("MPIHUB_ZERO_COPY_THRESHOLD", 64 * 1024)
#: Results and single-engine payloads of at least this many bytes take the direct link.
BULK_THRESHOLD = _int("MPIHUB_BULK_THRESHOLD", 1 << 20)
#: Seconds an engine waits for the direct-link data a request announced.
BULK_TIMEOUT = _float("MPIHUB_BULK_TIMEOUT", 60.0)
#: Engines a client opens direct data links to (the rest relay through the controller).
MAX_DATA_LINKS = _int("MPIHUB_MAX_DATA_LINKS", 256)
#: Seconds a client waits for an engine to answer on its direct link before relaying.
LINK_TIMEOUT = _float("MPIHUB_LINK_TIMEOUT", 2.0)


def heartbeat_period(engines: int) -> float:
    """Seconds between the heartbeats of each of ``engines`` engines."""
    return max(HEARTBEAT_PERIOD, round(engines / HEARTBEAT_RATE, 1))


def heartbeat_timeout(period: float) -> float:
    """Seconds of silence after which an engine told to beat every ``period`` is dead."""
    return max(HEARTBEAT_TIMEOUT, HEARTBEAT_MISSES * period)


def job_end() -> float | None:
    """When this process's batch job ends (epoch seconds): ``$MPIHUB_JOB_END``, which
    mpihub's job scripts set from the walltime, else Slurm's ``$SLURM_JOB_END_TIME``."""
    for name in ("MPIHUB_JOB_END", "SLURM_JOB_END_TIME"):
        value = os.environ.get(name)
        if value:
            try:
                return float(value)
            except ValueError:
                continue
    return None


def default_profile_dir() -> Path:
    """``$MPIHUB_DIR`` or ``~/.mpihub/profile_default``."""
    env = os.environ.get("MPIHUB_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".mpihub" / "profile_default"

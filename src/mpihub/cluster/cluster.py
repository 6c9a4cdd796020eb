"""Cluster: start a controller and engines, connect a Client, stop them all.

The state of a running cluster (its PIDs and files) is saved as
``<profile>/security/cluster-<id>.json``, so ``mpihub cluster stop`` in another
process stops exactly what ``mpihub cluster start`` started.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shlex
import sys
import time
from pathlib import Path

from .. import config, errors
from ..client.client import Client
from ..protocol import connection
from ..process import pid_alive
from .batch import BatchError, batch_system
from .batchjobs import BatchJobs, JobSpec, JobWatch
from .jobscript import JobOptions, walltime_seconds
from .launchers import LocalLauncher, find_mpiexec, mpi_environment, stop_pids

log = logging.getLogger("mpihub.cluster")

ENGINE_KINDS = ("local", "mpi", "slurm", "pbs")
CONTROLLER_KINDS = ("local", "slurm", "pbs")
BATCH_KINDS = ("slurm", "pbs")


def state_file(cluster_id: str, profile_dir=None) -> Path:
    return connection.security_dir(profile_dir) / f"cluster-{cluster_id or 'default'}.json"


class Cluster:
    """A controller plus ``n`` engines, as a context manager or with explicit start/stop."""

    def __init__(self, n: int | None = None, engines: str = "local", controller: str = "local",
                 walltime: str | None = None, queue: str | None = None, account: str | None = None,
                 cluster_id: str | None = None, profile_dir=None, controller_ip: str | None = None,
                 controller_args: list[str] | None = None, start_timeout: float = 60,
                 detach: bool = False, mpiexec: str | None = None, mpiexec_args: list[str] | None = None,
                 nodes: int | None = None, job_name: str | None = None, prologue: str = "",
                 engine_launch: str | None = None, separate_jobs: bool = False,
                 templates: dict[str, str] | None = None, extra_directives: list[str] | None = None,
                 skip_directives: list[str] | None = None, pbs_flavor: str = "pro", python: str | None = None,
                 poll_interval: float = 2.0, retire_margin: float | None = None, fork_engines: bool = True,
                 relay: bool = False):
        """``detach=True`` leaves the cluster running after this process exits (as
        ``mpihub cluster start --daemonize`` does); otherwise it stops with it.
        ``engines="mpi"`` starts the engines as one ``mpiexec -n N`` job (``mpiexec``
        and ``mpiexec_args`` choose a site MPI). ``engines="slurm"|"pbs"`` submits them
        as a batch job; with ``controller`` on the same system the controller runs in
        that job too (or, ``separate_jobs=True``, in a job of its own). The batch
        options (``walltime``, ``queue``, ``account``, ``nodes``, ``job_name``,
        ``prologue``, ``engine_launch`` srun|mpiexec|relay (Slurm: one keeper per node,
        forking its engines and relaying for them; no MPI), ``templates`` per role,
        ``extra_directives``, ``skip_directives``, ``pbs_flavor`` pro|torque) fill the
        job templates; see docs/hpc.md. A batch cluster's controller keeps its task
        records and results in SQLite (``--db sqlite``) unless ``controller_args`` say
        otherwise. Engines stop taking load-balanced tasks
        ``retire_margin`` seconds (default ``MPIHUB_RETIRE_MARGIN``, 60) before the
        walltime. Local engines (``engines="local"``) are forked from one process that
        imports Python's and mpihub's modules once (``mpihub engine --fork``: 128 engines
        start in seconds, not minutes); ``fork_engines=False`` starts each as a fresh
        Python process instead. ``relay=True`` makes that process their relay too
        (``--relay``: their task traffic on one connection to the controller)."""
        if engines not in ENGINE_KINDS:
            raise ValueError(f"engines must be one of {ENGINE_KINDS}, not {engines!r}")
        if controller not in CONTROLLER_KINDS:
            raise ValueError(f"controller must be one of {CONTROLLER_KINDS}, not {controller!r}")
        if controller != "local" and engines != controller:
            raise ValueError(f"a controller on {controller} runs its engines there too: engines={controller!r}, "
                             f"not {engines!r}")
        if n is not None and (not isinstance(n, int) or n < 0):
            raise ValueError(f"n must be a non-negative number of engines, not {n!r}")
        if relay and not (engines == "local" and fork_engines):
            raise ValueError("relay=True is for local engines forked from one process (engines='local', "
                             "fork_engines=True); in a batch job, run `mpihub engine --fork N --relay` per node")
        if engine_launch not in (None, "srun", "mpiexec", "relay"):
            raise ValueError(f"engine_launch is 'srun', 'mpiexec' or 'relay', not {engine_launch!r}")
        if engine_launch == "relay" and engines != "slurm":
            raise ValueError(f"engine_launch='relay' starts a keeper per node with srun: engines='slurm', "
                             f"not {engines!r}")
        self.n = (os.cpu_count() or 1) if n is None else n
        self.engines = engines
        self.controller = controller
        self.walltime, self.queue, self.account = walltime, queue, account
        self.cluster_id = secrets.token_hex(4) if cluster_id is None else cluster_id
        self.profile_dir = Path(profile_dir or config.default_profile_dir())
        self.controller_ip = controller_ip or ("127.0.0.1" if controller == "local" else "0.0.0.0")
        self.controller_args = list(controller_args or [])
        if engines in BATCH_KINDS and "--db" not in self.controller_args:
            self.controller_args += ["--db", "sqlite"]  # a batch job's work outlives a client's session
        self.mpiexec = find_mpiexec(mpiexec) if engines == "mpi" else None
        self.mpiexec_args = list(mpiexec_args or [])
        self.start_timeout = start_timeout
        self.detach = detach
        self.separate_jobs = separate_jobs
        self.poll_interval = poll_interval
        self.fork_engines = fork_engines
        self.relay = relay
        self.launcher = LocalLauncher(self.profile_dir / "log")
        self.batch: BatchJobs | None = None
        if engines in BATCH_KINDS:
            options = JobOptions(engines=self.n, nodes=nodes, walltime=walltime, queue=queue, account=account,
                                 job_name=job_name or f"mpihub-{self.cluster_id}"[:15],
                                 extra_directives=list(extra_directives or []),
                                 skip_directives=list(skip_directives or []))
            self.batch = BatchJobs(JobSpec(
                batch_system(engines, **({"flavor": pbs_flavor} if engines == "pbs" else {})), self.cluster_id,
                self.profile_dir, options, python or sys.executable, prologue,
                engine_launch or ("srun" if engines == "slurm" else "mpiexec"),
                shlex.join(["--ip", self.controller_ip, *self.controller_args]),
                {} if retire_margin is None else {"MPIHUB_RETIRE_MARGIN": f"{float(retire_margin):g}"},
                dict(templates or {})))
            if walltime:
                walltime_seconds(walltime)  # a bad one is refused now, not by the batch system later
        self.client: Client | None = None
        self._controller_process = None
        self._watch: JobWatch | None = None
        self._expected = 0  # engines started so far

    def __repr__(self) -> str:
        return f"<Cluster {self.cluster_id or 'default'}: {self.n} {self.engines} engines>"

    # -- files ------------------------------------------------------------------------

    @property
    def client_file(self) -> Path:
        return connection.connection_file("client", self.cluster_id, self.profile_dir)

    @property
    def engine_file(self) -> Path:
        return connection.connection_file("engine", self.cluster_id, self.profile_dir)

    def _save_state(self) -> None:
        connection.write_atomic(state_file(self.cluster_id, self.profile_dir), {
            "cluster_id": self.cluster_id, "profile_dir": str(self.profile_dir), "engines": self.engines,
            "controller_pid": self._controller_process.pid if self._controller_process else None,
            "engine_pids": [pid for pid in self.launcher.pids if pid != getattr(self._controller_process, "pid", None)],
            "engine_count": self._expected,
            "jobs": [{"system": self.engines, "id": j.job_id, "role": j.role} for j in self.batch.jobs]
            if self.batch else [],
            "started": time.time(),
        })

    def job_script(self, role: str | None = None) -> str:
        """The exact batch script this cluster submits (for ``role`` "job", "controller"
        or "engines"; by default the first one it would submit)."""
        if self.batch is None:
            raise ValueError(f"a cluster with {self.engines} engines submits no batch job")
        return self.batch.script(role or self.job_roles[0])

    def submit_jobs(self) -> list:
        """Submit this cluster's batch jobs and return at once (``mpihub submit``); the
        state is saved, so ``mpihub cluster stop`` cancels them."""
        if self.batch is None:
            raise ValueError(f"a cluster with {self.engines} engines submits no batch job")
        for role in self.job_roles:
            self.batch.submit(role)
        self._expected += self.n
        self._save_state()
        return list(self.batch.jobs)

    @property
    def job_roles(self) -> list[str]:
        """The batch jobs this cluster submits, in order ("job"; "controller", "engines";
        or "engines" beside a local controller)."""
        if self.batch is None:
            return []
        if self.controller == "local":
            return ["engines"]
        return ["controller", "engines"] if self.separate_jobs else ["job"]

    # -- starting ---------------------------------------------------------------------

    def start_controller(self) -> None:
        if self.client_file.exists():
            raise RuntimeError(f"a controller for cluster {self.cluster_id!r} seems to be running already "
                               f"({self.client_file} exists); stop it with `mpihub cluster stop "
                               f"--cluster-id {self.cluster_id}` or remove the file if it is stale")
        if self.controller != "local":
            self.batch.submit(self.job_roles[0])
            self._save_state()
            self._wait_for_controller_job()
            return
        args = ["controller", "--ip", self.controller_ip, "--cluster-id", self.cluster_id,
                "--profile-dir", str(self.profile_dir), *self.controller_args]
        if not self.detach:  # the cluster ends with this process, even if it is killed
            args += ["--owner-pid", str(os.getpid())]
        self._controller_process = self.launcher.start(args, f"controller-{self.cluster_id or 'default'}")
        deadline = time.monotonic() + self.start_timeout
        while not self.client_file.exists():
            if self._controller_process.poll() is not None:
                raise RuntimeError(f"the controller exited with code {self._controller_process.returncode}; "
                                   f"see {self._controller_process.log_path}")
            if time.monotonic() > deadline:
                raise errors.TimeoutError(f"no controller connection file after {self.start_timeout} s")
            time.sleep(0.02)
        self._save_state()

    def _wait_for_controller_job(self) -> None:
        """Wait for the controller job's connection file; its job ending first is an error."""
        deadline = time.monotonic() + self.start_timeout
        next_check = 0.0
        while not self.client_file.exists():
            now = time.monotonic()
            if now >= next_check:
                self.batch.check()
                next_check = now + self.poll_interval
            if now > deadline:
                raise errors.TimeoutError(f"no controller connection file after {self.start_timeout} s: "
                                          f"{self.batch.describe_states()}")
            time.sleep(0.05)

    def start_engines(self, n: int | None = None) -> None:
        """Start ``n`` more engines: processes of their own, or one MPI job of n ranks."""
        count = self.n if n is None else n
        if self.batch is not None:
            if "engines" in self.job_roles and count:
                self.batch.spec.options.engines = count
                self.batch.submit("engines")
            self._expected += count
            self._save_state()
            return
        first = len(self.launcher.processes)
        name = f"engine-{self.cluster_id or 'default'}-{first}"
        args = ["engine", "--url-file", str(self.engine_file)]
        if self.engines == "mpi":
            if count:
                prefix = [self.mpiexec, "-n", str(count), *self.mpiexec_args]
                self.launcher.start([*args, "--mpi"], name, env=mpi_environment(count), prefix=prefix)
        elif self.fork_engines:
            if count:
                self.launcher.start_forks([*args, "--relay"] if self.relay else args, count, name)
        else:
            for i in range(count):
                self.launcher.start(args, f"engine-{self.cluster_id or 'default'}-{first + i}")
        self._expected += count
        self._save_state()

    def start_cluster_sync(self) -> None:
        self.start_controller()
        self.start_engines()

    def connect_client_sync(self, **kwargs) -> Client:
        client = Client(self.client_file, timeout=self.start_timeout, **kwargs)
        try:
            if self.batch is not None:
                self._wait_for_batch_engines(client)
                self._watch = JobWatch(self.batch, client, self.poll_interval)
                self._watch.start()
            else:
                client.wait_for_engines(self._expected, timeout=self.start_timeout)  # a bar in a terminal
        except BatchError:
            client.close()
            raise
        except errors.TimeoutError as exc:
            client.close()
            if self.batch is not None:
                raise errors.TimeoutError(f"{exc}\n{self.batch.describe_logs()}") from None
            dead = [p for p in self.launcher.processes if p.poll() is not None]
            hint = f"; {len(dead)} processes exited, see {dead[0].log_path}" if dead else ""
            raise errors.TimeoutError(f"{len(client.ids)} of {self._expected} engines registered within "
                                      f"{self.start_timeout} s{hint}") from None
        self.client = client
        return client

    def _wait_for_batch_engines(self, client: Client) -> None:
        """Wait for the batch jobs' engines, following the jobs' states; in a terminal,
        with a progress bar that names them (a queue may hold the jobs for a while)."""
        deadline = time.monotonic() + self.start_timeout
        bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            bar = tqdm(total=self._expected, unit="engine", desc="waiting for engines", file=sys.stderr)
        try:
            while len(client.ids) < self._expected:
                self.batch.check()
                if bar is not None:
                    bar.set_postfix_str(self.batch.describe_states(), refresh=False)
                    bar.update(len(client.ids) - bar.n)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.TimeoutError(f"{len(client.ids)} of {self._expected} engines registered within "
                                              f"{self.start_timeout} s: {self.batch.describe_states()}")
                try:
                    client.wait_for_engines(self._expected, timeout=min(left, self.poll_interval), interactive=False)
                except errors.TimeoutError:
                    continue
        finally:
            if bar is not None:
                bar.update(len(client.ids) - bar.n)
                bar.close()

    def start_and_connect_sync(self) -> Client:
        """Start controller and engines, then return a Client once all engines registered."""
        try:
            self.start_cluster_sync()
            return self.connect_client_sync()
        except BaseException:
            self.stop_cluster_sync()
            raise

    # -- stopping ---------------------------------------------------------------------

    def stop_cluster_sync(self, grace: float = 5.0) -> None:
        """Shut down through the controller, then make sure every started PID is gone."""
        client, self.client = self.client, None
        controller = self._controller_process
        if self._watch is not None:
            self._watch.stop()
        if client is not None and not client.closed:
            try:
                client.shutdown(hub=True, block=False)
            except Exception as exc:  # noqa: BLE001 - fall through to signals
                log.info("shutdown request failed (%s); signalling processes", exc)
            client.close()
        elif controller is not None and controller.poll() is None:
            controller.terminate()  # a controller stopping cleanly stops its engines
        if self.batch is not None:
            self.batch.cancel()
        if not self.launcher.wait(grace):
            self.launcher.stop(grace)
        for path in (self.client_file, self.engine_file, state_file(self.cluster_id, self.profile_dir)):
            path.unlink(missing_ok=True)

    async def start_cluster(self) -> None:
        await asyncio.to_thread(self.start_cluster_sync)

    async def start_and_connect(self) -> Client:
        return await asyncio.to_thread(self.start_and_connect_sync)

    async def stop_cluster(self) -> None:
        await asyncio.to_thread(self.stop_cluster_sync)

    def __enter__(self) -> Client:
        return self.start_and_connect_sync()

    def __exit__(self, *exc) -> None:
        self.stop_cluster_sync()


def stop_saved(cluster_id: str, profile_dir=None, grace: float = 5.0) -> list[int]:
    """Stop a cluster (``mpihub cluster stop``) and return the PIDs its state file named.

    A cluster started by hand (a dry run's script given to sbatch, a controller started
    on its own) has no state file: its controller is asked to shut down through the
    client connection file, which ends its engines and, with them, its batch job."""
    path = state_file(cluster_id, profile_dir)
    client_file = connection.connection_file("client", cluster_id, profile_dir)
    if not path.exists() and not client_file.exists():
        raise FileNotFoundError(f"no running cluster {cluster_id or 'default'!r} in "
                                f"{connection.security_dir(profile_dir)}")
    state = json.loads(path.read_text()) if path.exists() else {}
    pids = [p for p in [state.get("controller_pid"), *state.get("engine_pids", [])] if p]
    if client_file.exists():
        try:
            with Client(client_file, timeout=3) as client:
                client.shutdown(hub=True, block=False)
        except Exception as exc:  # noqa: BLE001 - fall back to signals
            if not state:
                raise FileNotFoundError(f"cluster {cluster_id or 'default'!r} has no state file and its "
                                        f"controller does not answer ({exc}); cancel its batch job") from exc
            log.info("could not ask the controller to shut down (%s); signalling processes", exc)
    deadline = time.monotonic() + grace
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_pids(pids, grace)
    for job in state.get("jobs", []):
        system = batch_system(job["system"])
        found = system.state(job["id"])
        if found is not None and not found.ended:
            system.cancel(job["id"])
    for role in ("client", "engine"):
        connection.connection_file(role, cluster_id, profile_dir).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    return pids


def saved_clusters(profile_dir=None) -> list[dict]:
    """State of every cluster started from this profile, with liveness."""
    out = []
    for path in sorted(connection.security_dir(profile_dir).glob("cluster-*.json")):
        state = json.loads(path.read_text())
        pids = [p for p in [state.get("controller_pid"), *state.get("engine_pids", [])] if p]
        state["running"] = sum(pid_alive(p) for p in pids)
        out.append(state)
    return out

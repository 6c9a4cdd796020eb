"""``mpihub`` on the command line: controller, engine, cluster, status."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from . import __version__, config
from .controller.scheduler import SCHEDULERS

if TYPE_CHECKING:
    from .client.client import EngineInfo


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port_set(text: str) -> str:
    """A port set like ``50000-50009,50020``, checked here; it travels in the environment."""
    from .protocol import ports

    try:
        ports.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _use_port_set(spec: str | None, name: str) -> None:
    """Hand a port set to this process's sockets and to the processes it starts."""
    if spec:
        os.environ[name] = spec


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def _cmd_controller(args) -> int:
    from .protocol import connection, ports

    _use_port_set(args.ports, ports.CONTROLLER_PORTS_ENV)
    ip = connection.interface_ip(args.interface) if args.interface else args.ip
    options = dict(ip=ip, cluster_id=args.cluster_id, profile_dir=args.profile_dir, scheduler=args.scheduler,
                   owner_pid=args.owner_pid, hwm=args.hwm, curve=args.curve, db=args.db)
    if args.remote_scheduler and not args.split:
        print("mpihub controller: --remote-scheduler needs --split", file=sys.stderr)
        return 2
    from .controller.restore import RestoreError

    try:
        if args.split:
            from .controller.split_hub import SplitHub

            controller = SplitHub(remote_scheduler=args.remote_scheduler, restore=args.restore,
                                  dashboard=args.dashboard, **options)
        else:
            from .controller.one_process import Controller

            controller = Controller(restore=args.restore, dashboard=args.dashboard, **options)
    except RestoreError as exc:
        print(f"mpihub controller: {exc}", file=sys.stderr)
        return 2
    try:
        controller.start()
    except (RuntimeError, OSError) as exc:  # a restored or dashboard port that is taken
        print(f"mpihub controller: {exc}", file=sys.stderr)
        return 2
    controller.serve_forever()
    return getattr(controller, "exit_code", 0)


def _cmd_scheduler(args) -> int:
    from .controller.split_path import main
    from .protocol import connection, ports

    _use_port_set(args.ports, ports.CONTROLLER_PORTS_ENV)
    ip = connection.interface_ip(args.interface) if args.interface else args.ip
    return main(args.url_file, args.cluster_id, args.profile_dir, args.path, ip, args.scheduler, args.hwm,
                args.owner_pid, args.timeout, args.restore)


def _cmd_engine(args) -> int:
    from .engine.app import main
    from .protocol import ports

    _use_port_set(args.data_ports, ports.DATA_PORTS_ENV)
    if args.relay and args.many is None and args.fork is None:
        print("mpihub engine: --relay goes with --fork or --many (a relay for the engines it starts)",
              file=sys.stderr)
        return 2
    if args.fork is None:
        return main(args.url_file, args.cluster_id, args.profile_dir, args.id, args.timeout, use_mpi=args.mpi,
                    many=args.many, relay=args.relay)
    clashing = [flag for flag, given in (("--id", args.id is not None), ("--mpi", args.mpi),
                                         ("--many", args.many is not None)) if given]
    if clashing:
        print(f"mpihub engine: --fork starts engines of their own; it does not go with {', '.join(clashing)}",
              file=sys.stderr)
        return 2
    from .engine import forks

    relay_to = _relay_info(args) if args.relay else None
    if args.relay and relay_to is None:
        return 1
    return forks.run(args.fork, lambda relay_url: main(args.url_file, args.cluster_id, args.profile_dir, None,
                                                       args.timeout, relay_url=relay_url),
                     args.fork_logs, args.fork_report_fd, relay_to)


def _relay_info(args) -> dict | None:
    """The connection info a keeper's relay needs, read before the forks (None: said why)."""
    from .engine.app import load_info

    try:
        return load_info(args.url_file, args.cluster_id, args.profile_dir, args.timeout)[0]
    except (TimeoutError, OSError, ValueError) as exc:
        print(f"mpihub engine --relay: {exc}", file=sys.stderr)
        return None


def _cmd_cluster(args) -> int:
    from .cluster.cluster import Cluster, saved_clusters, stop_saved

    if args.action == "list":
        clusters = saved_clusters(args.profile_dir)
        if not clusters:
            print("no clusters")
        for state in clusters:
            total = 1 + len(state.get("engine_pids", []))
            engines = state.get("engine_count", len(state.get("engine_pids", [])))
            print(f"{state['cluster_id'] or 'default':<16} {state['engines']:<6} "
                  f"{engines} engines, {state['running']}/{total} processes running")
        return 0
    if args.action == "stop":
        try:
            pids = stop_saved(args.cluster_id, args.profile_dir)
        except FileNotFoundError as exc:
            print(exc, file=sys.stderr)
            return 1
        name = args.cluster_id or "default"
        print(f"stopped cluster {name} ({len(pids)} processes)" if pids else
              f"asked cluster {name}'s controller to shut down, and with it its engines")
        return 0
    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    cluster = Cluster(n=args.n, engines=args.engines, cluster_id=args.cluster_id, profile_dir=args.profile_dir,
                      controller_ip=args.ip, detach=args.daemonize, mpiexec=args.mpiexec,
                      controller_args=[flag for flag, on in (("--split", args.split), ("--curve", args.curve)) if on])
    keep_running = False
    try:
        cluster.start_cluster_sync()
        client = cluster.connect_client_sync()
        print(f"cluster {cluster.cluster_id or 'default'}: controller and {len(client.ids)} engines running "
              f"(connection file {cluster.client_file})", flush=True)
        if args.daemonize:
            client.close()
            cluster.client = None
            keep_running = True
            return 0
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping cluster", flush=True)
        return 0
    finally:
        if not keep_running:
            cluster.stop_cluster_sync()


def _cmd_submit(args) -> int:
    from .cluster.cluster import Cluster
    from .cluster.jobscript import TemplateError
    from .errors import BatchError

    controller = "local" if args.jobs == "engines" else args.system
    templates = {}
    if args.template:
        templates[{"one": "job", "separate": "controller", "engines": "engines"}[args.jobs]] = args.template
    if args.engines_template:
        templates["engines"] = args.engines_template
    try:
        cluster = Cluster(n=args.n, engines=args.system, controller=controller, walltime=args.walltime,
                          queue=args.queue, account=args.account, nodes=args.nodes, job_name=args.job_name,
                          cluster_id=args.cluster_id or None, profile_dir=args.profile_dir, prologue=args.prologue,
                          engine_launch=args.launch, separate_jobs=args.jobs == "separate", templates=templates,
                          extra_directives=args.directive, skip_directives=args.skip_directive,
                          pbs_flavor=args.pbs_flavor, controller_ip=args.ip, controller_args=args.controller_arg)
        if args.dry_run:
            return _dry_run(cluster, args.system, args.output)
        if args.output:
            raise ValueError("--output DIR is where --dry-run writes its scripts; without --dry-run the jobs' "
                             "scripts are kept beside their logs")
        jobs = cluster.submit_jobs()
    except (ValueError, TemplateError, BatchError, OSError) as exc:
        print(f"mpihub submit: {exc}", file=sys.stderr)
        return 1
    for job in jobs:
        print(f"submitted {args.system} job {job.job_id} ({job.role}); log {job.log_path}")
    print(f"cluster {cluster.cluster_id}: connect with mpihub.Client(cluster_id={cluster.cluster_id!r}); "
          f"stop with: mpihub cluster stop --cluster-id {cluster.cluster_id}")
    return 0


def _dry_run(cluster, system: str, output_dir: str | None) -> int:
    """Standard output is exactly the first job's script, ready for sbatch or qsub; what
    else a person needs (a second job's script, where files went, how to connect) goes to
    standard error, and with ``output_dir`` every script is also written there."""
    from .cluster.jobscript import SUFFIX

    scripts = {role: cluster.job_script(role) for role in cluster.job_roles}
    cluster.batch.make_log_dir()
    sys.stdout.write(next(iter(scripts.values())))
    sys.stdout.flush()
    name = cluster.cluster_id
    if output_dir:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for role, text in scripts.items():
            path = folder / f"mpihub-{name}-{role}.{SUFFIX[system]}"
            path.write_text(text)
            print(f"wrote the {role} job's script to {path}", file=sys.stderr)
    else:
        for role, text in list(scripts.items())[1:]:
            print(f"# the {role} job's script (standard output has the {cluster.job_roles[0]} job's; "
                  f"--output DIR writes each to a file):\n{text}", file=sys.stderr)
    jobs = {"job": "the cluster's job", "controller": "the controller job", "engines": "the engines job"}
    submit = "sbatch" if system == "slurm" else "qsub"
    print(f"dry run, nothing submitted: {submit} {', then '.join(jobs[r] for r in cluster.job_roles)}; connect "
          f"with mpihub.Client(cluster_id={name!r}); stop with: mpihub cluster stop --cluster-id {name}",
          file=sys.stderr)
    return 0


def _cmd_status(args) -> int:
    from .client.client import Client

    try:
        client = Client(cluster_id=args.cluster_id, profile_dir=args.profile_dir, timeout=args.timeout)
    except (FileNotFoundError, TimeoutError) as exc:
        print(f"mpihub status: {exc}", file=sys.stderr)
        return 1
    with client:
        print(status_table(client.cluster_id, client.engines, client.queue_status()))
    return 0


def status_table(cluster_id: str | None, engines: Mapping[int, EngineInfo], status: dict) -> str:
    """``mpihub status``: a line on the cluster, then one row per engine."""
    rows = [("ENGINE", "HOST", "PID", "MPI RANK", "STATE", "QUEUED", "RUNNING", "DONE")]
    for engine_id, engine in sorted(engines.items()):
        counts = status.get(engine_id, {})
        rows.append((str(engine_id), str(engine.host or "?"), str(engine.pid or "?"),
                     "-" if engine.mpi_rank is None else f"{engine.mpi_rank}/{engine.mpi_size}", engine.state,
                     str(counts.get("queue", 0)), str(counts.get("tasks", 0)), str(counts.get("completed", 0))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"cluster {cluster_id or 'default'}: {len(engines)} engines, "
             f"{status.get('unassigned', 0)} load-balanced tasks waiting for one"]
    if engines:
        lines += ["  ".join(cell.rjust(w) if i not in (1, 4) else cell.ljust(w)
                            for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpihub", description="Interactive parallel computing on HPC clusters.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    parser.add_argument("--version", action="version", version=f"mpihub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p, cluster_id_default=""):
        p.add_argument("--cluster-id", default=cluster_id_default, help="name of the cluster (default: none)")
        p.add_argument("--profile-dir", default=None, help=f"profile directory (default {config.default_profile_dir()})")

    p = commands.add_parser("controller", help="run a controller (Hub + schedulers)")
    p.add_argument("--ip", default=None,
                   help="address to bind (0.0.0.0 for all interfaces; default 127.0.0.1, or with --restore "
                        "the address it had: give one to restore it on another node)")
    p.add_argument("--interface", default=None, help="bind this interface: a name (ib0) or address (tcp://10.0.0.5)")
    p.add_argument("--ports", type=_port_set, default=None, metavar="SET",
                   help="bind only these ports, for a firewall: a list and/or ranges, e.g. 50000-50009 "
                        "(3 needed, 8 with --split; default $MPIHUB_PORTS, else random free ports)")
    p.add_argument("--scheduler", default="leastload", choices=sorted(SCHEDULERS),
                   help="how load-balanced tasks pick an engine (default leastload)")
    p.add_argument("--hwm", type=_positive_int, default=None,
                   help=f"load-balanced tasks in flight per engine (default {config.SCHEDULER_HWM}, "
                        "$MPIHUB_SCHEDULER_HWM)")
    p.add_argument("--owner-pid", type=int, default=None, help="stop when this process is gone")
    p.add_argument("--split", action="store_true",
                   help="run the Hub, the direct path and the task scheduler as three processes")
    p.add_argument("--remote-scheduler", action="store_true",
                   help="with --split: start no task scheduler here and wait for `mpihub scheduler` on another host")
    p.add_argument("--curve", action="store_true",
                   help="encrypt every connection with CurveZMQ (keys go into the 0600 connection files)")
    p.add_argument("--db", choices=["memory", "sqlite"], default="memory",
                   help="where task records and results are kept: a bounded cache in memory (default), or also "
                        "in SQLite under <profile>/db/, for later clients and restarts")
    p.add_argument("--dashboard", type=int, default=None, metavar="PORT",
                   help="serve a live dashboard (engines, throughput, failures; and its JSON) on PORT of the "
                        "controller's address (0: any free port); its URL, with a token, goes into the client file")
    p.add_argument("--restore", action="store_true",
                   help="with --db sqlite: take over from a controller of this cluster that stopped (same keys and "
                        "ports; its engines register again, its results and unfinished tasks are kept)")
    common(p)
    p.set_defaults(func=_cmd_controller)

    p = commands.add_parser("scheduler", help="run a split controller's task scheduler (or direct path), "
                                              "possibly on another host than its Hub")
    p.add_argument("--url-file", default=None, help="the Hub's mpihub-hub connection file")
    p.add_argument("--path", default="task", choices=["task", "direct"], help="which path to run (default task)")
    p.add_argument("--ip", default="127.0.0.1", help="address to bind (0.0.0.0 for all interfaces)")
    p.add_argument("--interface", default=None, help="bind this interface: a name (ib0) or address")
    p.add_argument("--ports", type=_port_set, default=None, metavar="SET",
                   help="bind only these ports (shared with the Hub's --ports; default $MPIHUB_PORTS)")
    p.add_argument("--scheduler", default="leastload", choices=sorted(SCHEDULERS),
                   help="how load-balanced tasks pick an engine (default leastload)")
    p.add_argument("--hwm", type=_positive_int, default=None,
                   help=f"load-balanced tasks in flight per engine (default {config.SCHEDULER_HWM})")
    p.add_argument("--owner-pid", type=int, default=None, help="stop when this process (the Hub) is gone")
    p.add_argument("--timeout", type=float, default=30, help="seconds to wait for the file and the Hub")
    p.add_argument("--restore", action="store_true",
                   help="take over from a path of this cluster that stopped (its ports, engines and tasks)")
    common(p)
    p.set_defaults(func=_cmd_scheduler)

    p = commands.add_parser("engine", help="run one engine")
    p.add_argument("--url-file", default=None, help="engine connection file")
    p.add_argument("--id", type=int, default=None, help="ask for this engine id")
    p.add_argument("--mpi", action="store_true", help="one engine per MPI rank (run under mpiexec/srun)")
    p.add_argument("--many", type=int, default=None, metavar="N",
                   help="run N light engines in this process, to test or measure a controller at scale "
                        "(short tasks only; no MPI)")
    p.add_argument("--relay", action="store_true",
                   help="with --fork or --many: the engines' task traffic goes through one relay in this process, "
                        "on one connection to the controller (one message per request to all of them, one per "
                        "turn of their replies); heartbeats stay per engine")
    p.add_argument("--fork", type=int, default=None, metavar="N",
                   help="start N full engines as forks of this process, which imports everything once "
                        "(128 engines on 2 cores: about 2 s, not 16 s) and stays to pass signals on")
    p.add_argument("--fork-logs", default=None, metavar="PREFIX",
                   help="with --fork: each engine writes its output to PREFIX<pid>.log")
    p.add_argument("--data-ports", type=_port_set, default=None, metavar="SET",
                   help="bind the engine's data link (clients send large buffers there) on the first free port of "
                        "this set, e.g. 51000-51063 (default $MPIHUB_DATA_PORTS, else a random free port)")
    p.add_argument("--fork-report-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=30, help="seconds to wait for file and controller")
    common(p)
    p.set_defaults(func=_cmd_engine)

    p = commands.add_parser("cluster", help="start, stop or list clusters")
    p.add_argument("action", choices=["start", "stop", "list"])
    p.add_argument("-n", type=int, default=None, help="number of engines (default: one per core)")
    p.add_argument("--engines", default="local", help="local or mpi (slurm, pbs: later versions)")
    p.add_argument("--mpiexec", default=None, help="mpiexec to use for --engines mpi (default $MPIHUB_MPIEXEC "
                   "or the one beside this Python)")
    p.add_argument("--ip", default="127.0.0.1", help="controller address to bind")
    p.add_argument("--daemonize", action="store_true", help="return once started, leave the cluster running")
    p.add_argument("--split", action="store_true", help="a controller of three processes (see mpihub controller)")
    p.add_argument("--curve", action="store_true", help="encrypt every connection with CurveZMQ")
    common(p)
    p.set_defaults(func=_cmd_cluster)

    p = commands.add_parser("submit", help="submit a cluster as Slurm or PBS batch jobs")
    p.add_argument("system", choices=["slurm", "pbs"])
    p.add_argument("-n", type=_positive_int, required=True, help="number of engines (MPI ranks)")
    p.add_argument("--jobs", choices=["one", "separate", "engines"], default="one",
                   help="one job (controller, then engines; default), separate controller and engines jobs, "
                        "or an engines job for a controller that runs elsewhere")
    p.add_argument("--walltime", default=None, help="time limit, HH:MM:SS")
    p.add_argument("--queue", default=None, help="Slurm partition or PBS queue")
    p.add_argument("--account", default=None, help="account / project to charge")
    p.add_argument("--nodes", type=_positive_int, default=None, help="number of nodes")
    p.add_argument("--job-name", default=None, help="job name (default mpihub-<cluster id>)")
    p.add_argument("--prologue", default="", help="shell lines run first in the job, e.g. 'module load mpi'")
    p.add_argument("--launch", choices=["srun", "mpiexec", "relay"], default=None,
                   help="how engines start (default srun on Slurm, mpiexec on PBS); relay (Slurm): a keeper per "
                        "node forks its engines and carries their task traffic on one connection (no MPI)")
    p.add_argument("--template", default=None, help="your own template for the first job")
    p.add_argument("--engines-template", default=None, help="your own template for the engines job")
    p.add_argument("--directive", action="append", default=[], help="an extra directive (repeatable)")
    p.add_argument("--skip-directive", action="append", default=[],
                   help="leave out directives that start with this, e.g. --account (repeatable)")
    p.add_argument("--pbs-flavor", choices=["pro", "torque"], default="pro",
                   help="PBS resource syntax: pro (-l select=) or torque (-l nodes=:ppn=)")
    p.add_argument("--ip", default=None, help="address the job's controller binds (default 0.0.0.0)")
    p.add_argument("--controller-arg", action="append", default=[], help="an option for the controller (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="submit nothing: print the first job's script (exactly what sbatch/qsub takes) on "
                        "standard output, the rest on standard error")
    p.add_argument("--output", default=None, metavar="DIR", help="with --dry-run, also write every job's script "
                   "into DIR as mpihub-<cluster id>-<role>.sbatch/.pbs")
    common(p)
    p.set_defaults(func=_cmd_submit)

    p = commands.add_parser("status", help="engines, ranks and queues of a running cluster")
    p.add_argument("--timeout", type=float, default=5)
    common(p)
    p.set_defaults(func=_cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130

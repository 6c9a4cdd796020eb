"""The Client: the user's handle on one controller, its engines and its Hub.

It keeps the user API (views, results, Hub queries, the engine table as
``rc.engines``); the connection and the bookkeeping behind it are its
:class:`~.core.ClientCore`. Engine ids stay current passively: the controller pushes
registration and unregistration notices, which the receiving thread applies.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Iterable, Mapping

import zmq

from .. import errors
from .asyncresult import AsyncResult
from .connectioninfo import connection_info_from
from ..protocol.schema import Key
from .core import ClientCore

if TYPE_CHECKING:
    from .view import DirectView, LoadBalancedView


#: Why the controller has no result to send, by the state its answer names.
_RESULT_GONE = {
    "unknown": "unknown to the controller",
    "purged": "purged from the controller's store",
    "direct": "its data went straight to the client that submitted it",
    "evicted": "evicted from the controller's store for its size limit before anyone fetched it "
               "(MPIHUB_STORE_BYTES, MPIHUB_MAX_RECORDS; with --db sqlite, MPIHUB_DB_BYTES)",
    "unstored": "larger than the store keeps per result (MPIHUB_DB_PAYLOAD_BYTES)",
}


@dataclass(frozen=True)
class EngineInfo:
    """One registered engine, as ``rc.engines`` shows it."""

    id: int
    host: str | None
    pid: int | None
    mpi_rank: int | None  # its rank in its MPI world (None: not an MPI engine)
    mpi_size: int | None
    state: str  # "running", or "retired" once its batch job is near its end
    retire_at: float | None  # when it stops taking load-balanced tasks (batch jobs with a walltime)
    data_urls: tuple[str, ...]  # where clients link to it for large data

    @classmethod
    def from_description(cls, engine: dict, now: float) -> "EngineInfo":
        retire_at = engine.get("retire_at")
        retired = isinstance(retire_at, (int, float)) and retire_at <= now
        return cls(engine["id"], engine.get("hostname"), engine.get("pid"), engine.get("mpi_rank"),
                   engine.get("mpi_size"), "retired" if retired else "running", retire_at,
                   tuple(engine.get("data") or ()))


class Client:
    """Connect to a running controller.

    ``connection_info`` is a path to ``mpihub-client[-<cluster_id>].json`` or its
    contents as a dict; by default the file of ``cluster_id`` in ``profile_dir`` is used,
    waited for up to ``timeout`` seconds.
    """

    def __init__(self, connection_info: str | os.PathLike | dict | None = None, *, url_file=None,
                 profile_dir=None, cluster_id: str | None = None, timeout: float = 10,
                 context: zmq.Context | None = None):
        info = connection_info_from(connection_info, url_file, profile_dir, cluster_id, timeout)
        self.cluster_id = info.get("cluster_id") or None
        #: The connection, the engine table and what this client waits for (see :mod:`.core`).
        self.core = ClientCore(info, timeout, context)
        if "IPython" in sys.modules:
            from .magics import activate_if_in_ipython

            activate_if_in_ipython(self)

    @property
    def closed(self) -> bool:
        return self.core.closed

    # -- engines ----------------------------------------------------------------------

    @property
    def engines(self) -> Mapping[int, EngineInfo]:
        """The registered engines by id, as they are now (a read-only snapshot)."""
        now = time.time()
        with self.core.engines_changed:
            return MappingProxyType({engine_id: EngineInfo.from_description(engine, now)
                                     for engine_id, engine in sorted(self.core.engines.items())})

    @property
    def ids(self) -> list[int]:
        """Ids of the registered engines, sorted (kept current by the controller)."""
        return self.core.ids()

    def __len__(self) -> int:
        return len(self.core.engines)

    def wait_for_engines(self, n: int | None = None, timeout: float = -1, interactive: bool | None = None) -> None:
        """Block until ``n`` engines are registered (a progress bar when in a terminal)."""
        target = n if n is not None else max(len(self.core.engines), 1)
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        show = sys.stderr.isatty() if interactive is None else interactive
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=target, unit="engine", desc="waiting for engines", file=sys.stderr)
        try:
            with self.core.engines_changed:
                while len(self.core.engines) < target:
                    if bar is not None:
                        bar.update(len(self.core.engines) - bar.n)
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise errors.TimeoutError(f"{len(self.core.engines)} of {target} engines registered "
                                                  f"after {timeout} s")
                    self.core.engines_changed.wait(left if left is None else min(left, 1.0))
                if bar is not None:
                    bar.update(len(self.core.engines) - bar.n)
        finally:
            if bar is not None:
                bar.close()

    def __getitem__(self, key) -> "DirectView":
        from .view import DirectView

        if isinstance(key, int):
            if key not in self.core.engines:
                raise IndexError(f"no engine with id {key}; registered: {self.ids}")
            return DirectView(self, key)
        if isinstance(key, slice):
            ids = self.ids[key]
            if not ids:
                raise self.core.no_engines(f"no engines in {key} of {self.ids}")
            return DirectView(self, ids)
        if isinstance(key, (list, tuple)):
            missing = [t for t in key if t not in self.core.engines]
            if missing:
                raise IndexError(f"no engines with ids {missing}; registered: {self.ids}")
            return DirectView(self, list(key))
        raise TypeError(f"index engines with an int, slice or list, not {type(key).__name__}")

    def activate(self, targets="all", suffix: str = ""):
        """Give IPython ``%px``, ``%%px``, ``%autopx`` and ``%pxresult`` (each with
        ``suffix``) on a DirectView of ``targets`` (see :mod:`.magics`)."""
        from .magics import activate

        return activate(self.direct_view(targets), suffix)

    def direct_view(self, targets="all") -> "DirectView":
        from .view import DirectView

        return DirectView(self, targets)

    def load_balanced_view(self, targets=None) -> "LoadBalancedView":
        from .view import LoadBalancedView

        return LoadBalancedView(self, targets)

    # -- results and the Hub ------------------------------------------------------------

    def _outstanding(self) -> list[AsyncResult]:
        return list({id(ar): ar for ar, _ in list(self.core.pending.values())}.values())

    def _as_results(self, jobs) -> list[AsyncResult]:
        if jobs is None:
            return self._outstanding()
        if isinstance(jobs, (AsyncResult, str)):
            jobs = [jobs]
        out = []
        for job in jobs:
            if isinstance(job, AsyncResult):
                out.append(job)
            elif isinstance(job, str):
                out.append(self.core.results[job] if job in self.core.results else self.get_result(job))
            else:
                raise TypeError(f"jobs are AsyncResults or msg_ids, not {type(job).__name__}")
        return out

    @staticmethod
    def _msg_ids(jobs) -> list[str]:
        if isinstance(jobs, (AsyncResult, str)):
            jobs = [jobs]
        ids: list[str] = []
        for job in jobs:
            ids.extend(job.msg_ids if isinstance(job, AsyncResult) else [job])
        return ids

    def wait(self, jobs=None, timeout: float = -1) -> bool:
        """Wait for the given results (default: all of this client's); False on timeout."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        for ar in self._as_results(jobs):
            left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            if not ar.wait(left):
                return False
        return True

    def get_result(self, indices_or_msg_ids, block: bool | None = None) -> AsyncResult:
        """An AsyncResult for tasks by msg_id, including other clients' tasks."""
        ids = [indices_or_msg_ids] if isinstance(indices_or_msg_ids, str) else list(indices_or_msg_ids)
        known = [self.core.results.get(m) for m in ids]
        if len(ids) == 1 and known[0] is not None and known[0].msg_ids == ids:
            return known[0]
        ar = AsyncResult(self, ids, fname="get_result", single=isinstance(indices_or_msg_ids, str))
        missing = self.core.adopt(ar)
        if missing:
            outcome = self.core.query("result", {Key.IDS: missing})
            gone = {m: why for state, why in _RESULT_GONE.items() for m in outcome.get(state, ())}
            if gone:
                self.core.forget(missing)
                raise KeyError("no result for " + ", ".join(f"{m!r} ({why})" for m, why in gone.items()))
        if block:
            return ar.get()
        return ar

    def queue_status(self, targets=None, verbose: bool = False) -> dict:
        """``{engine_id: {"queue", "completed", "tasks"}, "unassigned": n}``."""
        if targets is not None:
            targets = self.core.resolve_targets(targets)
        status = self.core.query("queue_status", {Key.ENGINE_IDS: targets, Key.VERBOSE: verbose})
        return {int(k) if not isinstance(k, int) and k != "unassigned" else k: v for k, v in status.items()}

    def send_signal(self, sig: int, targets=None) -> list[int]:
        """Send ``sig`` to engine processes; ``signal.SIGINT`` interrupts the task running
        there (it fails with KeyboardInterrupt) and the engine goes on. Returns the ids
        of the engines signalled."""
        try:
            number = int(signal.Signals(sig))
        except ValueError:
            raise ValueError(f"{sig!r} is not a signal") from None
        chosen = None if targets is None else self.core.resolve_targets(targets)
        return self.core.query("signal", {Key.SIGNAL: number, Key.ENGINE_IDS: chosen})

    def abort(self, jobs=None, targets=None, block: bool = True, interrupt: bool = False) -> None:
        """Drop queued tasks (of this client, or the given jobs) before they start; with
        ``interrupt=True`` also interrupt those already running (KeyboardInterrupt)."""
        if jobs is None:
            ids = list(self.core.pending)
        else:
            ids = self._msg_ids(jobs)
        if targets is not None:
            wanted = set(self.core.resolve_targets(targets))
            status = self.queue_status(list(wanted), verbose=True)
            ids += [m for eid in wanted if eid in status for m in status[eid]["queue"] + status[eid]["tasks"]]
        self.core.query("abort", {Key.IDS: ids, Key.INTERRUPT: bool(interrupt)})

    def resubmit(self, jobs) -> AsyncResult:
        """Run the given tasks again, load-balanced, as new tasks."""
        old = self._msg_ids(jobs)
        new = [self.core.new_id() for _ in old]
        ar = AsyncResult(self, new, fname="resubmit", single=isinstance(jobs, str) or len(old) == 1)
        self.core.expect(ar)
        try:
            self.core.query("resubmit", {Key.IDS: old, Key.NEW_IDS: new})
        except Exception:
            self.core.forget(new)
            raise
        return ar

    def purge_results(self, jobs=None, targets=None) -> None:
        """Forget finished results here and in the Hub (``jobs="all"`` for every one)."""
        if jobs == "all":
            ids = None
            self.core.drop_results([m for m, ar in list(self.core.results.items()) if ar.ready()])
        elif jobs is None and targets is None:
            raise ValueError("name jobs, targets, or pass jobs='all'")
        else:
            ids = self._msg_ids(jobs) if jobs is not None else []
            self.core.drop_results(ids)
        engine_ids = self.core.resolve_targets(targets) if targets is not None else None
        self.core.query("purge", {Key.IDS: ids, Key.ENGINE_IDS: engine_ids})

    def db_query(self, query: dict, keys: Iterable[str] | None = None) -> list[dict]:
        """Task records from the Hub matching a Mongo-style query, e.g.
        ``{"engine_id": 0, "completed": {"$ne": None}}``."""
        return self.core.query("db_query", {Key.RECORD_QUERY: query, Key.RECORD_KEYS: list(keys) if keys else None})

    def shutdown(self, targets="all", hub: bool = False, block: bool = True) -> None:
        """Stop engines (``targets``), and with ``hub=True`` the controller too."""
        engine_ids = None if targets == "all" else self.core.resolve_targets(targets)
        self.core.reconnector.stopping = hub
        stopped = self.core.query("shutdown", {Key.ENGINE_IDS: engine_ids, Key.STOP_HUB: hub})
        if block:
            deadline = time.monotonic() + 10
            with self.core.engines_changed:
                while any(t in self.core.engines for t in stopped) and time.monotonic() < deadline:
                    self.core.engines_changed.wait(0.5)

    def close(self) -> None:
        self.core.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mpihub.Client cluster={self.cluster_id or 'default'} engines={self.ids}>"

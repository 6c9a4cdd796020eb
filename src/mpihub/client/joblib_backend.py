"""A joblib backend, so ``joblib.Parallel`` (and scikit-learn's ``n_jobs``) run on engines.

``mpihub.register_joblib_backend()`` makes ``"mpihub"`` a joblib backend name::

    with joblib.parallel_config("mpihub", view=rc.load_balanced_view()):
        results = joblib.Parallel()(joblib.delayed(f)(x) for x in data)

Each batch joblib makes is one load-balanced task; joblib's auto-batching sizes the
batches from their durations. Without a view, the backend connects a Client of its own
(the default profile and cluster, or ``Client`` keyword arguments given to
``register_joblib_backend``) and closes it when joblib is done with the backend.
"""
from __future__ import annotations

from typing import Any, Callable

from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend

from .asyncresult import AsyncResult


class MpihubBackend(AutoBatchingMixin, ParallelBackendBase):
    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1  # every engine, unless n_jobs says fewer

    def __init__(self, view=None, client_options: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self._view = view
        self._client_options = client_options or {}
        self._own_client = None
        self._outstanding: set[AsyncResult] = set()

    @property
    def view(self):
        if self._view is None:
            from .client import Client

            self._own_client = Client(**self._client_options)
            self._view = self._own_client.load_balanced_view()
        return self._view

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """As many workers as engines (at most ``n_jobs`` when it is positive)."""
        engines = max(len(self.view.client.ids), 1)
        return engines if n_jobs is None or n_jobs < 0 else min(n_jobs, engines)

    def submit(self, func: Callable, callback: Callable | None = None) -> AsyncResult:
        ar = self.view.apply_async(func)
        self._outstanding.add(ar)
        ar.add_done_callback(self._outstanding.discard)
        if callback is not None:
            ar.add_done_callback(callback)
        return ar

    def retrieve_result_callback(self, out: AsyncResult) -> Any:
        return out.get(0)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: drop the batches that have not started."""
        waiting = [ar for ar in list(self._outstanding) if not ar.ready()]
        if waiting:
            self.view.client.abort(waiting)
        if not ensure_ready:
            self.terminate()

    def terminate(self) -> None:
        if self._own_client is not None:
            self._own_client.close()
            self._own_client = self._view = None


def register_joblib_backend(name: str = "mpihub", make_default: bool = False, **client_options) -> None:
    """Make ``name`` a joblib backend that runs on mpihub engines (see module doc)."""
    def backend(**kwargs) -> MpihubBackend:
        return MpihubBackend(client_options=client_options, **kwargs)

    register_parallel_backend(name, backend, make_default=make_default)

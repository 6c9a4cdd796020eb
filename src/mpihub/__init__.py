"""mpihub: interactive parallel computing on HPC clusters, MPI-native and batch-native.

The client side (``Client``, ``Cluster``, views, results) is imported on first use, so
that an engine or a controller, which import this package too, do not pay for it: an
engine process starts in half the time, which counts when a job starts a thousand.
"""
import importlib
from typing import TYPE_CHECKING, Any

from . import config
from .collective_function import collective
from .dependency import Dependency, depend, require
from .errors import (
    BatchError,
    CompositeError,
    ControllerError,
    DependencyTimeout,
    EngineError,
    EngineRetired,
    ImpossibleDependency,
    NoEnginesRegistered,
    RemoteError,
    TaskAborted,
    TimeoutError,
    UnmetDependency,
)
from .protocol.serialize import Reference, interactive

if TYPE_CHECKING:
    from .client.asyncresult import AsyncMapResult, AsyncResult
    from .client.client import Client
    from .client.view import DirectView, LoadBalancedView
    from .cluster import Cluster

#: Public names imported when first asked for, and their modules.
_ON_FIRST_USE = {"AsyncMapResult": ".client.asyncresult", "AsyncResult": ".client.asyncresult",
                 "Client": ".client.client", "DirectView": ".client.view", "LoadBalancedView": ".client.view",
                 "Cluster": ".cluster"}


def __getattr__(name: str) -> Any:
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'mpihub' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(module, __name__), name)
    return value


def register_joblib_backend(name: str = "mpihub", make_default: bool = False, **client_options) -> None:
    """Make ``name`` a joblib backend running on engines (needs joblib; see
    :mod:`mpihub.client.joblib_backend`)."""
    from .client.joblib_backend import register_joblib_backend as register

    register(name, make_default, **client_options)


__version__ = "0.1.0"

__all__ = [
    "AsyncMapResult", "AsyncResult", "BatchError", "Client", "Cluster", "CompositeError", "ControllerError", "Dependency", "DependencyTimeout",
    "DirectView", "EngineError", "EngineRetired", "ImpossibleDependency", "LoadBalancedView", "NoEnginesRegistered",
    "Reference", "RemoteError", "TaskAborted", "TimeoutError", "collective", "config", "depend", "interactive",
    "register_joblib_backend", "require", "UnmetDependency",
]

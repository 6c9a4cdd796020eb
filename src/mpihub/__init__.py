"""mpihub: interactive parallel computing on HPC clusters, MPI-native and batch-native."""
from . import config
from .client.asyncresult import AsyncMapResult, AsyncResult
from .client.client import Client
from .client.view import DirectView, LoadBalancedView
from .cluster import Cluster
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
